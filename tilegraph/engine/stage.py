"""Staging: the source as worker tasks can read it."""

from __future__ import annotations

import numpy as np

from tilegraph.engine.executor import Executor, InProcessExecutor
from tilegraph.engine.progress import Progress
from tilegraph.source.abc import Source

__all__ = ["source_bytes", "stage_source"]


def stage_source(
    source: Source, scratch: str, executor: Executor, progress: Progress | None, token: str
) -> Source:
    """The source as tasks can read it: as it is when shareable with cheap region reads, else staged.

    In-memory arrays are written from this process (their pixels live here); striped TIFFs and
    decoded-once PNG/JPEG files are staged by worker tasks into a chunked Zarr in scratch space.
    """
    inprocess = isinstance(executor, InProcessExecutor)
    if (source.shareable or inprocess) and source.region_reads:
        return source
    tasks, staged = source.stage_tasks(f"{scratch}/source.zarr")
    if not source.shareable:  # pixels live in this process: write them from here
        for i, task in enumerate(tasks):
            task()
            if progress is not None:
                progress.update("stage", i + 1, len(tasks))
        return staged
    handles = [executor.submit(t, key=f"tg-stage-{token}-{i}") for i, t in enumerate(tasks)]
    executor.wait(handles, progress=progress, label="stage")
    return staged


def source_bytes(source: Source) -> int:
    """Bytes of the source's pixels (what staging writes)."""
    rows, cols = source.shape[:2]
    return int(rows) * int(cols) * int(source.channels) * np.dtype(source.dtype).itemsize
