"""Window-level helpers for tests that drive stages without the engine (pure numpy, in process).

* :func:`grid_plan`: a square plan of ``n x n`` windows that tile the image exactly;
* :func:`window_inputs`: every window of an image, padded as the plan pads, ``(N, C, h, w)``;
* :func:`window_outputs`: a model run over those windows;
* :class:`ArrayReader`: a :class:`~tilegraph.blend.abc.WindowReader` over in-memory outputs;
* :func:`blend_windows`: a whole image from window outputs through a registered blend mode;
* :func:`srgb_icc`: a real sRGB ICC profile (built once).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tilegraph.plan import Plan, make_plan

__all__ = ["ArrayReader", "blend_windows", "grid_plan", "srgb_icc", "window_inputs", "window_outputs"]


def grid_plan(n: int, *, tile: int = 64, overlap: int = 16, blend: str = "cosine", channels: int = 3) -> Plan:
    """A plan of ``n x n`` windows whose grid fits the image: no far padding for the weighted modes; for
    ``crop`` (whose grid starts at minus half the overlap) an image of ``n`` strides, so that every
    window keeps exactly one stride."""
    size = n * (tile - overlap) if blend == "crop" else (n - 1) * (tile - overlap) + tile
    return make_plan(
        (size, size), tile=tile, overlap=overlap, channels=channels, dtype="float32", blend=blend
    )


def window_inputs(plan: Plan, image: np.ndarray) -> np.ndarray:
    """Every window of ``image`` ``(H, W, C)``, padded as ``plan`` pads, as ``(N, C, h, w)``."""
    (top, bottom), (left, right) = plan.pad_widths
    mode: Any = plan.pad_mode
    pad = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode=mode)
    return np.stack(
        [np.moveaxis(pad[w.y0 + top : w.y1 + top, w.x0 + left : w.x1 + left], -1, 0) for w in plan.windows()]
    )


def window_outputs(model: Any, plan: Plan, image: np.ndarray) -> np.ndarray:
    """``model`` (a torch module or a numpy callable) over every window of ``image``, ``(N, C', h', w')``."""
    x = np.ascontiguousarray(window_inputs(plan, image).astype(np.float32))
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    return np.asarray(model(x))


class ArrayReader:
    """A :class:`~tilegraph.blend.abc.WindowReader` over window outputs held in memory ``(N, C', h', w')``."""

    def __init__(self, outputs: np.ndarray) -> None:
        self.outputs = outputs
        self.dtype = np.dtype(outputs.dtype)

    def raw(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        return self.outputs[index][:, rows, cols]

    def __call__(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        return self.raw(index, rows, cols).astype(np.float32, copy=False)


def blend_windows(
    plan: Plan, outputs: np.ndarray, *, mode: str | None = None, transform: Any = None
) -> np.ndarray:
    """The whole output ``(H', W', C')`` blended from ``outputs`` by the blend mode (default the plan's)."""
    from tilegraph.blend import get_blender
    from tilegraph.blend.abc import overlap_strips

    blender = get_blender(mode or plan.blend)
    reader = ArrayReader(outputs)
    h, w = plan.out_shape
    strips = None
    if blender.strip_pass:
        results = {
            (s.a, s.b): blender.measure_strip(plan, s, reader, transform) for s in overlap_strips(plan)
        }
        strips = blender.combine_strips(plan, results)
    return blender.blend(plan, (0, h, 0, w), reader, transform=transform, strips=strips)


@functools.lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """A real sRGB ICC profile (its header holds a creation time: built once per process)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
