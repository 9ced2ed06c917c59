"""The ``image`` output kind: window outputs kept per window, blended per output chunk, written once.

Model tasks write each window's full output into the per-window store (and, when reconciling,
return a few hundred bytes of colour statistics per window); then one task per output chunk reads
the windows covering it, applies the correction, blends them with the run's
:class:`~tilegraph.blend.Blender` and writes the chunk once through the sink's writer. A blender
with a strip pass first gets one task per overlap strip; each blend task then receives only the
strip results its box needs (:meth:`~tilegraph.blend.Blender.strips_for_task`). A model that declares
a confidence channel has it kept in the store (last channel) and multiplying the blend weights
(:mod:`tilegraph.blend.confidence`); it is never written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tilegraph._cast import astype_float, to_output_dtype
from tilegraph.blend.abc import Blender, Box, Strip, overlap_strips
from tilegraph.blend.confidence import confident_blend, confident_strip
from tilegraph.errors import MissingWindowError, SinkError
from tilegraph.outputs.abc import Assembly, KindResult, OutputKind, Step, WindowContext
from tilegraph.outputs.masking import masked_reader
from tilegraph.plan.plan import Plan
from tilegraph.plan.resample import to_output_scale
from tilegraph.sink.tile_store import TileStore

__all__ = [
    "DirectCropKind",
    "ImageKind",
    "ReconcileContext",
    "TileStoreReader",
    "chunk_boxes",
    "direct_crop_possible",
]


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
    choice : dict or None
        How ``reference="auto"`` chose (the measured difference and why), for the metadata.
    """

    reference: str | None
    sigma: float
    thumbnail: np.ndarray | None = None
    factor: float | None = None
    choice: dict | None = None


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


def direct_crop_possible(plan: Plan) -> bool:
    """Whether each window's ``crop`` kept region is exactly one output chunk (cuts on the chunk grid)."""
    for axis, chunk in ((plan.y, plan.out_chunks[0]), (plan.x, plan.out_chunks[1])):
        s_out = axis.stride * axis.scale
        if axis.count > 1 and (s_out != chunk or axis.origin != -(axis.overlap // 2)):
            return False
        if axis.count == 1 and chunk < axis.out_size:
            return False
        if any(axis.keep(i) != (i * chunk, min(axis.out_size, (i + 1) * chunk)) for i in range(axis.count)):
            return False
    return True


class ImageKind(OutputKind):
    """An image blended per output chunk (see the module notes)."""

    name: ClassVar[str] = "image"

    def specialise(
        self, plan: Plan, blender: Blender, *, corrected: bool, passes: bool, masked: bool = False
    ) -> OutputKind:
        if blender.name == "crop" and not (corrected or passes or masked) and direct_crop_possible(plan):
            return DirectCropKind()
        return self

    def chunk_task(self) -> Callable[..., dict]:
        """The task that builds and writes one output chunk: ``fn((ctx, corrections, strips), box, strips=None)``
        (the per-task ``strips``, what :meth:`~tilegraph.blend.Blender.strips_for_task` selects for the box,
        win over the shared ones)."""
        return blend_chunk

    def consume(
        self, ctx: WindowContext, indices: Sequence[int], raw: np.ndarray, y: np.ndarray, pool: Executor
    ) -> Any:
        kept = _without_confidence(ctx, y)
        stats = (
            _window_stats(ctx.plan, ctx.reconcile, raw, indices, kept) if ctx.reconcile is not None else []
        )
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
            self.chunk_task(),
            [
                (box, None if strips_state is None else blender.strips_for_task(plan, box, strips_state))
                for _, box in chunks
            ],
            shared=(job.context, job.corrections, None),  # each task carries its own strips
            after=[blender.windows_for_box(plan, box) for _, box in chunks],
            record="chunks",
            ids=[cy * nx + cx for (cy, cx), _ in chunks],
        )
        done = [r for r in results if r is not None]  # None: written by an interrupted run (resume)
        t += sum(r["seconds"] for r in done)
        return KindResult(clipped=int(sum(r["clipped"] for r in done)), seconds=t)


class DirectCropKind(ImageKind):
    """``crop`` whose cuts fall on the output chunks: each model task writes its windows' kept regions,
    one output chunk each, straight to the output (no per-window store, no blend tasks).

    Chosen by :meth:`ImageKind.specialise` when the grid starts at minus half the overlap and the
    output chunks equal the stride at the output scale (``out_chunks="auto"`` does this for ``crop``).
    """

    uses_tile_store: ClassVar[bool] = False
    needs_all_results: ClassVar[bool] = True  # the values clipped at the writes are summed from them

    def consume(
        self, ctx: WindowContext, indices: Sequence[int], raw: np.ndarray, y: np.ndarray, pool: Executor
    ) -> Any:
        plan, writer = ctx.plan, ctx.writer
        assert writer is not None
        y = _without_confidence(ctx, y)

        def put(k: int) -> int:
            w = plan.window(indices[k])
            (y0, y1), (x0, x1) = plan.y.keep(w.row), plan.x.keep(w.col)
            oy, ox = plan.y.out_start(w.row), plan.x.out_start(w.col)
            block = np.moveaxis(y[k][:, y0 - oy : y1 - oy, x0 - ox : x1 - ox], 0, -1)
            return writer.write((y0, y1, x0, x1), block, integer_scaled=block.dtype.kind == "f")

        return {"clipped": int(sum(pool.map(put, range(len(indices)))))}

    def assemble(self, job: Assembly) -> Generator[Step, list, KindResult]:
        clipped = sum(r["clipped"] for task in job.results for r in task)
        return KindResult(clipped=int(clipped), extra={"direct_crop": True})
        yield  # a generator without steps: every chunk is written already


def measure_strip(shared: tuple, strip: Strip) -> Any:
    """Task: the blender's small result of one overlap strip."""
    ctx, corrections = shared
    reader = masked_reader(ctx, TileStoreReader(ctx.plan, ctx.tile_store))
    transform = corrections.transform if corrections is not None else None
    if getattr(ctx, "confidence", False):
        return confident_strip(ctx.blender, ctx.plan, strip, reader, transform)
    return ctx.blender.measure_strip(ctx.plan, strip, reader, transform)


def blend_chunk(shared: tuple, box: Box, strips: Any = None) -> dict:
    """Task: build one output chunk from the per-window store and write it once (no read-modify-write).

    ``strips``: what the blender's strip pass gave for this box (only its own strips); else the shared ones.
    """
    t0 = time.perf_counter()
    ctx, corrections, shared_strips = shared
    strips = strips if strips is not None else shared_strips
    blender: Blender = ctx.blender
    reader = TileStoreReader(ctx.plan, ctx.tile_store)
    transform = corrections.transform if corrections is not None else None
    mask = getattr(ctx, "mask", None)
    masked = masked_reader(ctx, reader)
    if getattr(ctx, "confidence", False):
        block = confident_blend(blender, ctx.plan, box, masked, transform=transform, strips=strips)
    else:
        block = blender.blend(ctx.plan, box, masked, transform=transform, strips=strips)
    scaled = reader.dtype.kind == "f" or block.dtype.kind == "f"
    if mask is not None and mask.fill is not None:  # outside the mask: the fill, exactly
        inside = mask.out_mask(ctx.plan, box)[..., None]
        out, clipped = to_output_dtype(
            np.where(inside, block, 0), ctx.writer.layout.dtype, integer_scaled=scaled
        )
        ctx.writer.write(box, mask.fill_box(ctx.plan, box, out), integer_scaled=False)
        return {"clipped": clipped, "seconds": time.perf_counter() - t0}
    clipped = ctx.writer.write(box, block, integer_scaled=scaled)
    return {"clipped": clipped, "seconds": time.perf_counter() - t0}


def _without_confidence(ctx: Any, y: np.ndarray) -> np.ndarray:
    """``y`` ``(N, C, h, w)`` less the model's confidence channel (kept last in the store), if it has one."""
    return y[:, :-1] if getattr(ctx, "confidence", False) else y


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
