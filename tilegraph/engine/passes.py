"""The pass stage: the run's passes after blending, each one task per output chunk, in order.

Blending writes float32 into scratch space when passes follow; each pass reads its input box plus
halo and writes its output box once; the last pass writes the destination (rounding and clipping
there, once). Each finished pass but the last is recorded in the resume manifest: a resumed run
continues at the pass it stopped in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tilegraph.engine.context import PreparedRun
from tilegraph.engine.executor import Executor
from tilegraph.engine.progress import Progress
from tilegraph.engine.resume import zarr_matches
from tilegraph.passes.abc import Pass
from tilegraph.plan.plan import Plan
from tilegraph.sink.abc import ChunkWriter
from tilegraph.sink.builtin import ZarrWriter, scratch_writer

__all__ = ["run_passes", "pass_box"]


@dataclass(frozen=True)
class _PassContext:
    """The engine's side of :class:`tilegraph.passes.abc.PassContext`."""

    plan: Plan
    thumbnails: Any

    def thumbnail(self) -> tuple[np.ndarray, float]:
        return self.thumbnails.get()


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


def run_passes(run: PreparedRun, executor: Executor, progress: Progress | None) -> tuple[int, float]:
    """Run every pass of ``run`` in order; returns the values clipped at the final write and task seconds."""
    if not run.passes:
        return 0, 0.0
    source: ChunkWriter | None = run.context.writer
    assert source is not None and run.final_writer is not None
    clipped, seconds = 0, 0.0
    ctx = _PassContext(run.plan, run.thumbnails)
    for k, p in enumerate(run.passes):
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
        state = p.prepare(ctx)
        chunks = target.layout.shards or target.layout.chunks
        boxes = _boxes(shape, chunks)
        shared = executor.share((p, run.plan, source, target, state))
        handles = executor.map(
            pass_box,
            [shared] * len(boxes),
            boxes,
            keys=[f"tg-pass{k}-{p.name}-{run.token}-{i}" for i in range(len(boxes))],
        )
        results = executor.wait(handles, progress=progress, label=p.name or f"pass {k}")
        seconds += sum(r["seconds"] for r in results)
        if last:
            clipped = int(sum(r["clipped"] for r in results))
        elif run.guard is not None:
            run.guard.pass_done(name)
        source = target
    return clipped, seconds
