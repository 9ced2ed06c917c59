"""The ``probabilities`` output kind (semantic segmentation) and coarse-to-fine inputs.

The model returns per-class probabilities ``(N, K, H, W)``; they are kept per window in a float32
store and blended per output chunk with the run's blend mode, like an image, into a float output
of ``K`` channels. With ``argmax=True`` the chunk task writes the index of the largest blended
probability instead (one channel, ``uint8`` for up to 256 classes, else ``uint16``).

**Coarse-to-fine** (``coarse=``): the run's one thumbnail inference (the model on a thumbnail of the
whole image) is the coarse segmentation; each window receives it bilinearly up-sampled over its
source pixels, ``(N, K, H, W)`` float32, either as a keyword argument the model declares
(``coarse_keyword``, default ``"coarse"``; the thumbnail pass itself calls the model without it) or
as ``K`` extra input channels after the image's (the thumbnail pass then gets a flat prior
``1 / K``). :func:`window_priors` computes it on the worker from the small thumbnail in the run's
context.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tilegraph.blend.abc import Blender
from tilegraph.errors import InputError
from tilegraph.options import ProbabilityOptions
from tilegraph.outputs.abc import OutputKind
from tilegraph.outputs.image import ImageKind, TileStoreReader
from tilegraph.outputs.masking import masked_reader
from tilegraph.plan.plan import Plan
from tilegraph.sink.zarr_sink import output_layout

__all__ = ["CoarseContext", "ProbabilitiesKind", "argmax_dtype", "blend_argmax_chunk", "window_priors"]


@dataclass(frozen=True)
class CoarseContext:
    """What model tasks need for coarse-to-fine (small: the thumbnail output).

    Attributes
    ----------
    thumbnail : numpy.ndarray
        ``(h, w, K)`` the model's output on the run's thumbnail.
    factor : float
        Source pixels per thumbnail (output) pixel.
    mode : {"keyword", "channel"}
    keyword : str or None
        The keyword the model takes the prior as (``mode="keyword"``).
    """

    thumbnail: np.ndarray = field(repr=False)
    factor: float
    mode: str
    keyword: str | None = None


def window_priors(plan: Plan, indices, coarse: CoarseContext) -> np.ndarray:
    """The coarse output bilinearly up-sampled over each window's source box: ``(N, K, H, W)`` float32.

    Window boxes may reach into the padding before 0 and past the far edges; positions there take the
    nearest thumbnail pixel.
    """
    thumb, f = coarse.thumbnail, float(coarse.factor)
    th, tw = plan.window_shape
    out = np.empty((len(indices), thumb.shape[-1], th, tw), np.float32)
    for k, index in enumerate(indices):
        w = plan.window(int(index))
        out[k] = _bilinear(thumb, np.arange(w.y0, w.y1), np.arange(w.x0, w.x1), f)
    return out


def _bilinear(thumb: np.ndarray, rows: np.ndarray, cols: np.ndarray, factor: float) -> np.ndarray:
    """``thumb`` ``(h, w, K)`` sampled at source pixel centres ``rows`` x ``cols``: ``(K, r, c)``."""
    ty = np.clip((rows + 0.5) / factor - 0.5, 0, thumb.shape[0] - 1)
    tx = np.clip((cols + 0.5) / factor - 0.5, 0, thumb.shape[1] - 1)
    iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
    iy1, ix1 = np.minimum(iy + 1, thumb.shape[0] - 1), np.minimum(ix + 1, thumb.shape[1] - 1)
    fy, fx = (ty - iy)[:, None, None], (tx - ix)[None, :, None]
    t = thumb.astype(np.float32, copy=False)
    top = t[iy][:, ix] * (1 - fx) + t[iy][:, ix1] * fx
    bottom = t[iy1][:, ix] * (1 - fx) + t[iy1][:, ix1] * fx
    return np.moveaxis(top * (1 - fy) + bottom * fy, -1, 0).astype(np.float32)


def argmax_dtype(classes: int) -> str:
    """Smallest unsigned dtype holding class indices ``0..classes - 1``."""
    return "uint8" if classes <= 256 else "uint16" if classes <= 65536 else "uint32"


class ProbabilitiesKind(ImageKind):
    """Per-class probabilities blended into a float output, or their argmax (see the module notes)."""

    name: ClassVar[str] = "probabilities"
    passthrough: ClassVar[bool] = False

    def __init__(self, options: ProbabilityOptions | None = None, *, requested: str | None = None) -> None:
        self.options = options if options is not None else ProbabilityOptions()
        self.requested = requested

    def configure(self, options: Any) -> OutputKind:
        return ProbabilitiesKind(options.probabilities, requested=options.output.dtype)

    def output_dtype(self, requested: str | None, source_dtype: str) -> str:
        if requested is not None and np.dtype(requested).kind != "f" and not self.options.argmax:
            raise InputError(
                f"probabilities are floats, not {requested}",
                hint="leave output_dtype unset (float32), or pass argmax=True for class indices",
            )
        return str(np.dtype(requested)) if requested else "float32"

    def store_dtype(self, out_dtype: str) -> str | None:
        return "float32"  # probabilities are blended, never rounded per window

    def output_layout(self, plan: Plan, source_layout: str) -> tuple[int, str, str]:
        classes = int(plan.out_channels or 0)
        if self.options.argmax:
            return 1, self.requested or argmax_dtype(classes), "YX"
        return classes, str(plan.out_dtype), output_layout(source_layout, classes)

    def specialise(
        self, plan: Plan, blender: Blender, *, corrected: bool, passes: bool, masked: bool = False
    ) -> OutputKind:
        return self  # always blended from the float store

    def chunk_task(self) -> Callable[..., dict]:
        return blend_argmax_chunk if self.options.argmax else super().chunk_task()


def blend_argmax_chunk(shared: tuple, box: tuple[int, int, int, int], strips: Any = None) -> dict:
    """Task: blend one output chunk's probabilities, write the index of the largest (once).

    ``strips``: the box's own strip results (:meth:`~tilegraph.outputs.image.ImageKind.chunk_task`).
    """
    t0 = time.perf_counter()
    ctx, corrections, shared_strips = shared
    strips = strips if strips is not None else shared_strips
    blender: Blender = ctx.blender
    reader = masked_reader(ctx, TileStoreReader(ctx.plan, ctx.tile_store))
    transform = corrections.transform if corrections is not None else None
    block = blender.blend(ctx.plan, box, reader, transform=transform, strips=strips)
    index = np.argmax(block, axis=-1)[..., None].astype(ctx.writer.layout.dtype)
    if ctx.mask is not None:
        index = ctx.mask.fill_box(ctx.plan, box, index)
    ctx.writer.write(box, index, integer_scaled=False)
    return {"clipped": 0, "seconds": time.perf_counter() - t0}
