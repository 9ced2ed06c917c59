"""The ``image`` output kind: window outputs kept per window, blended per output chunk, written once.

Model tasks write each window's full output into the per-window store (and, when reconciling,
return a few hundred bytes of colour statistics per window); then one task per output chunk reads
the windows covering it, applies the correction, blends them with the run's
:class:`~tilegraph.blend.Blender` and writes the chunk once through the sink's writer. A blender
with a strip pass first gets one task per overlap strip.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tilegraph._cast import astype_float
from tilegraph.blend.abc import Blender, Box, Strip, overlap_strips
from tilegraph.errors import MissingWindowError, SinkError
from tilegraph.outputs.abc import Assembly, KindResult, OutputKind, Step, WindowContext
from tilegraph.plan.plan import Plan
from tilegraph.plan.resample import to_output_scale
from tilegraph.sink.tile_store import TileStore

__all__ = ["ImageKind", "ReconcileContext", "TileStoreReader", "chunk_boxes"]


@dataclass(frozen=True)
class ReconcileContext:
    """What model tasks need to gather colour statistics per window.

    Attributes
    ----------
    reference : {"input", "thumbnail"} or None
        The anchor of the statistics.
    sigma : float
        Low-pass of the statistics, output pixels.
    thumbnail : numpy.ndarray or None
        ``(h, w, C')`` model output on the thumbnail (``reference="thumbnail"``).
    factor : float or None
        Output pixels per thumbnail pixel.
    """

    reference: str | None
    sigma: float
    thumbnail: np.ndarray | None = None
    factor: float | None = None


class TileStoreReader:
    """A :class:`~tilegraph.blend.abc.WindowReader` over the per-window store.

    A window never written is a :class:`~tilegraph.errors.MissingWindowError` naming it, never zeros.
    """

    def __init__(self, plan: Plan, tiles: TileStore) -> None:
        self.plan = plan
        self.tiles = tiles
        self.dtype = np.dtype(tiles.dtype)
        self._array = None if tiles.direct else tiles.open("r")

    def raw(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        region = self.tiles.read(index, rows, cols, array=self._array)
        if region is None:
            w = self.plan.window(index)
            raise MissingWindowError(
                f"window {index} was never written to the tile store (or was lost)",
                window=(w.row, w.col),
                path=self.tiles.path,
                hint="rerun the job; if it recurs, check the storage every worker writes to",
            )
        return region

    def __call__(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        region = self.raw(index, rows, cols)
        return region if region.dtype == np.float32 else astype_float(region, np.float32)


def chunk_boxes(plan: Plan) -> list[tuple[tuple[int, int], Box]]:
    """``((cy, cx), box)`` of every output chunk, raster order."""
    return [
        ((cy, cx), plan.chunk_box(cy, cx))
        for cy in range(plan.chunk_grid[0])
        for cx in range(plan.chunk_grid[1])
    ]


class ImageKind(OutputKind):
    """An image blended per output chunk (see the module notes)."""

    name: ClassVar[str] = "image"

    def consume(
        self, ctx: WindowContext, indices: Sequence[int], raw: np.ndarray, y: np.ndarray, pool: Executor
    ) -> Any:
        stats = _window_stats(ctx.plan, ctx.reconcile, raw, indices, y) if ctx.reconcile is not None else []
        tiles = ctx.tile_store
        assert tiles is not None  # this kind always has a store
        array = None if tiles.direct else tiles.open()
        try:
            list(pool.map(lambda k: tiles.write(indices[k], y[k], array=array), range(len(indices))))
        except OSError as exc:
            raise SinkError(f"cannot write the tile store: {exc.strerror or exc}", path=tiles.path) from exc
        return stats

    def assemble(self, job: Assembly) -> Generator[Step, list, KindResult]:
        plan, blender = job.plan, job.blender
        strips_state = None
        t = 0.0
        if blender.strip_pass:
            strips = overlap_strips(plan)
            results = yield Step(
                "strips",
                measure_strip,
                [(s,) for s in strips],
                shared=(job.context, job.corrections),
                after=[(s.a, s.b) for s in strips],
            )
            strips_state = blender.combine_strips(
                plan, {(s.a, s.b): r for s, r in zip(strips, results, strict=True)}
            )
        chunks = chunk_boxes(plan)
        nx = plan.chunk_grid[1]
        results = yield Step(
            "blend",
            blend_chunk,
            [(box,) for _, box in chunks],
            shared=(job.context, job.corrections, strips_state),
            after=[blender.windows_for_box(plan, box) for _, box in chunks],
            record="chunks",
            ids=[cy * nx + cx for (cy, cx), _ in chunks],
        )
        done = [r for r in results if r is not None]  # None: written by an interrupted run (resume)
        t += sum(r["seconds"] for r in done)
        return KindResult(clipped=int(sum(r["clipped"] for r in done)), seconds=t)


def measure_strip(shared: tuple, strip: Strip) -> Any:
    """Task: the blender's small result of one overlap strip."""
    ctx, corrections = shared
    reader = TileStoreReader(ctx.plan, ctx.tile_store)
    transform = corrections.transform if corrections is not None else None
    return ctx.blender.measure_strip(ctx.plan, strip, reader, transform)


def blend_chunk(shared: tuple, box: Box) -> dict:
    """Task: build one output chunk from the per-window store and write it once (no read-modify-write)."""
    t0 = time.perf_counter()
    ctx, corrections, strips = shared
    blender: Blender = ctx.blender
    reader = TileStoreReader(ctx.plan, ctx.tile_store)
    transform = corrections.transform if corrections is not None else None
    block = blender.blend(ctx.plan, box, reader, transform=transform, strips=strips)
    clipped = ctx.writer.write(box, block, integer_scaled=reader.dtype.kind == "f" or block.dtype.kind == "f")
    return {"clipped": clipped, "seconds": time.perf_counter() - t0}


def _window_stats(
    plan: Plan, opts: ReconcileContext, raw: np.ndarray, batch: Sequence[int], y: np.ndarray
) -> list:
    """Colour statistics of each window's output (and of its reference), a few hundred bytes each."""
    from tilegraph.reconcile.stats import window_stats

    reference = to_output_scale(plan, raw, 0) if opts.reference == "input" else None
    ref_sigma = None
    out = []
    for k, index in enumerate(batch):
        ref = None if reference is None else reference[k]
        if opts.reference == "thumbnail":
            assert opts.thumbnail is not None and opts.factor is not None
            ref, ref_sigma = thumbnail_region(plan, index, opts.thumbnail, opts.factor), opts.factor
        yk = y[k].astype(np.float32)  # reconciling keeps a float store
        out.append(window_stats(plan, index, yk, ref, sigma=opts.sigma, ref_sigma=ref_sigma))
    return out


def thumbnail_region(plan: Plan, index: int, thumb: np.ndarray, factor: float) -> np.ndarray:
    """The thumbnail output bilinearly up-sampled over window ``index``'s output footprint, ``(C', H', W')``.

    ``thumb`` is ``(h, w, C')`` where one thumbnail pixel spans ``factor`` output pixels.
    """
    w = plan.window(index)
    oy, ox = plan.out_window_shape
    y0, x0 = plan.y.out_start(w.row), plan.x.out_start(w.col)
    ty = np.clip((np.arange(y0, y0 + oy) + 0.5) / factor - 0.5, 0, thumb.shape[0] - 1)
    tx = np.clip((np.arange(x0, x0 + ox) + 0.5) / factor - 0.5, 0, thumb.shape[1] - 1)
    iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
    iy1, ix1 = np.minimum(iy + 1, thumb.shape[0] - 1), np.minimum(ix + 1, thumb.shape[1] - 1)
    fy, fx = (ty - iy)[:, None, None], (tx - ix)[None, :, None]
    top = thumb[iy][:, ix] * (1 - fx) + thumb[iy][:, ix1] * fx
    bottom = thumb[iy1][:, ix] * (1 - fx) + thumb[iy1][:, ix1] * fx
    return np.moveaxis((top * (1 - fy) + bottom * fy).astype(np.float32), -1, 0)
