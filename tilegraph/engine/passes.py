"""The pass stage: the run's passes after blending, each one task per output chunk, in order.

Blending writes float32 into scratch space when passes follow; each pass reads its input box plus
halo and writes its output box once; the last pass writes the destination (rounding and clipping
there, once). Then the arrays the sink derives from the finished output (an OME-Zarr pyramid:
:meth:`tilegraph.sink.abc.Sink.derived`) are made the same way, each by its pass from the previous one.
Each finished pass but the last is recorded in the resume manifest: a resumed run continues at the
pass it stopped in.

A pass prepares on the client with the engine's :class:`~tilegraph.passes.abc.PassContext`: the
run's thumbnail inference, the source at the output's scale, a reader of the run's window outputs, and
:meth:`_PassContext.infer`, which runs the model over windows of another grid (a shifted plan) as
ordinary model tasks (:func:`~tilegraph.engine.infer_task.infer_windows` with the run's context on that
plan, an image kind and a second per-window store in scratch space) and hands back a reader of that store.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tilegraph.engine.context import PreparedRun
from tilegraph.engine.executor import Executor
from tilegraph.engine.infer_task import infer_windows
from tilegraph.engine.progress import Progress
from tilegraph.engine.resume import zarr_matches
from tilegraph.outputs.image import ImageKind, TileStoreReader
from tilegraph.passes import get_pass
from tilegraph.passes.abc import Pass
from tilegraph.plan.plan import Plan
from tilegraph.sink.abc import ChunkWriter
from tilegraph.sink.builtin import ZarrWriter, scratch_writer
from tilegraph.sink.tile_store import TileStore
from tilegraph.source.abc import Source

__all__ = ["OutputScaleSource", "StoreWindows", "run_passes", "pass_box"]


@dataclass(frozen=True)
class OutputScaleSource:
    """The run's source read at the output's scale (:class:`tilegraph.passes.abc.SourceView`)."""

    source: Source
    plan: Plan

    @property
    def shape(self) -> tuple[int, int]:
        return self.plan.out_shape

    @property
    def channels(self) -> int:
        return int(self.source.channels)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.source.dtype)

    def read(self, box: tuple[int, int, int, int]) -> np.ndarray:
        y0, y1, x0, x1 = box
        s = self.plan.scale_fraction
        if s == 1:
            return self.source.read(y0, y1, x0, x1)
        if s > 1:  # every output pixel repeats the source pixel it lies in
            k = int(s)
            block = self.source.read(y0 // k, -(-y1 // k), x0 // k, -(-x1 // k))
            full = block.repeat(k, axis=0).repeat(k, axis=1)
            oy, ox = y0 - (y0 // k) * k, x0 - (x0 // k) * k
            return full[oy : oy + (y1 - y0), ox : ox + (x1 - x0)]
        k = s.denominator  # down-scale: the mean of each k x k block (the last ones clipped)
        h, w = self.source.shape
        block = self.source.read(y0 * k, min(h, y1 * k), x0 * k, min(w, x1 * k)).astype(np.float32)
        ph, pw = (y1 - y0) * k - block.shape[0], (x1 - x0) * k - block.shape[1]
        block = np.pad(block, ((0, ph), (0, pw), (0, 0)), mode="edge")
        return block.reshape(y1 - y0, k, x1 - x0, k, -1).mean(axis=(1, 3))


class StoreWindows:
    """A :class:`~tilegraph.passes.abc.WindowOutputs` over a per-window store (opened on first use).

    ``channels`` first channels are returned (a confidence channel kept in the store is not);
    ``transform``: the run's colour correction, applied per region when given.
    """

    def __init__(self, plan: Plan, tiles: TileStore, channels: int, transform: Any = None) -> None:
        self.plan, self.tiles, self.channels, self.transform = plan, tiles, channels, transform
        self._reader: TileStoreReader | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}

    def __call__(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        if self._reader is None:
            self._reader = TileStoreReader(self.plan, self.tiles)
        region = self._reader(index, rows, cols)
        if region.shape[0] != self.channels:
            region = region[: self.channels]
        if self.transform is not None:
            region = self.transform(index, region, (rows, cols))
        return region


@dataclass
class _PassContext:
    """The engine's side of :class:`tilegraph.passes.abc.PassContext`."""

    run: PreparedRun
    executor: Executor
    progress: Progress | None
    corrections: Any = None
    out_dtype: str = "float32"
    runs: int = 0

    @property
    def plan(self) -> Plan:
        return self.run.plan

    def thumbnail(self) -> tuple[np.ndarray, float]:
        return self.run.thumbnails.get()

    def source(self) -> OutputScaleSource:
        return OutputScaleSource(self.run.context.source, self.run.plan)

    def windows(self) -> StoreWindows | None:
        ctx = self.run.context
        if ctx.tile_store is None:
            return None
        transform = self.corrections.transform if self.corrections is not None else None
        return StoreWindows(ctx.plan, ctx.tile_store, int(ctx.plan.out_channels or 0), transform)

    def infer(self, plan: Plan, windows: Sequence[int] | None = None) -> StoreWindows:
        run, executor = self.run, self.executor
        self.runs += 1
        plan = replace(plan, store_dtype="float32", reconcile=None)
        channels = int(plan.out_channels or 0)
        stored = channels + int(getattr(run.context, "confidence", False))
        oy, ox = plan.out_window_shape
        tiles = TileStore.create(
            f"{run.scratch}/pass-windows-{self.runs}.zarr", (plan.n_windows, stored, oy, ox), "float32"
        )
        ctx = replace(run.context, plan=plan, kind=ImageKind(), tile_store=tiles, writer=None, reconcile=None)
        wanted = sorted(set(range(plan.n_windows) if windows is None else (int(i) for i in windows)))
        per = plan.batch_size * plan.batches_per_task
        groups = [wanted[i : i + per] for i in range(0, len(wanted), per)]
        shared = executor.share(ctx)
        handles = executor.map(
            infer_windows,
            [shared] * len(groups),
            groups,
            [run.payload] * len(groups),
            keys=[f"tg-pass-infer{self.runs}-{run.token}-{g}" for g in range(len(groups))],
            resources=executor.infer_resources,
        )
        executor.wait(handles, progress=self.progress, label="pass windows", units=[len(g) for g in groups])
        return StoreWindows(plan, tiles, channels)


def pass_box(shared: tuple, box: tuple[int, int, int, int]) -> dict:
    """Task: one output box of a pass, from its input box plus halo, written once."""
    t0 = time.perf_counter()
    p: Pass = shared[0]
    plan, source, target, state = shared[1:]
    in_box = p.in_box(plan, box, source.layout.shape)
    block = source.read(in_box)
    if block.dtype != np.float32:
        block = block.astype(np.float32)
        if source.layout.dtype in ("uint8", "uint16"):
            block *= np.float32(1.0 / np.iinfo(source.layout.dtype).max)
    out = p.apply(plan, box, block, in_box, state)
    clipped = target.write(box, out)
    return {"clipped": clipped, "seconds": time.perf_counter() - t0}


def _boxes(shape: tuple[int, int], chunks: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    return [
        (y, min(shape[0], y + chunks[0]), x, min(shape[1], x + chunks[1]))
        for y in range(0, shape[0], chunks[0])
        for x in range(0, shape[1], chunks[1])
    ]


def _run_pass(
    run: PreparedRun,
    executor: Executor,
    progress: Progress | None,
    p: Pass,
    source: ChunkWriter,
    target: ChunkWriter,
    key: str,
    corrections: Any = None,
) -> list[dict]:
    """One pass from ``source`` into ``target``, one task per output chunk (or shard); their results."""
    state = p.prepare(_PassContext(run, executor, progress, corrections, target.layout.dtype))
    chunks = target.layout.shards or target.layout.chunks
    boxes = _boxes(p.out_shape(source.layout.shape), chunks)
    shared = executor.share((p, run.plan, source, target, state))
    handles = executor.map(
        pass_box,
        [shared] * len(boxes),
        boxes,
        keys=[f"tg-{key}-{p.name}-{run.token}-{i}" for i in range(len(boxes))],
    )
    return executor.wait(handles, progress=progress, label=p.name or key)


def run_passes(
    run: PreparedRun, executor: Executor, progress: Progress | None, *, corrections: Any = None
) -> tuple[int, float]:
    """Run every pass of ``run`` in order, then the sink's derived arrays (pyramid levels).

    Returns the values clipped at the final write and the task seconds. ``corrections``: the run's
    colour corrections (what :meth:`_PassContext.windows` applies).
    """
    clipped, seconds = 0, 0.0
    source: ChunkWriter | None = run.context.writer
    for k, p in enumerate(run.passes):
        assert source is not None and run.final_writer is not None
        last = k == len(run.passes) - 1
        shape = p.out_shape(source.layout.shape)
        name = f"pass-{k}-{p.name or 'unnamed'}"
        if last:
            target = run.final_writer
        else:
            layout = replace(source.layout, shape=shape, dtype="float32")
            path = f"{run.scratch}/pass-{k}.zarr"
            done = run.guard is not None and run.guard.pass_result(name)[0]
            if done and zarr_matches(path, layout.full_dims(*layout.shape), layout.dtype):
                source = ZarrWriter(path, layout)  # finished by an interrupted run
                continue
            target = scratch_writer(path, layout)
        results = _run_pass(run, executor, progress, p, source, target, f"pass{k}", corrections)
        seconds += sum(r["seconds"] for r in results)
        if last:
            clipped = int(sum(r["clipped"] for r in results))
        elif run.guard is not None:
            run.guard.pass_done(name)
        source = target
    if run.final_writer is not None:  # levels of a pyramid: each from the previous, once the output is whole
        previous = run.final_writer
        for k, (name, target) in enumerate(run.sink.derived(run.final_writer)):
            results = _run_pass(run, executor, progress, get_pass(name), previous, target, f"level{k + 1}")
            seconds += sum(r["seconds"] for r in results)
            previous = target
    return clipped, seconds
