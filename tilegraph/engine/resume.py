"""Resume: what a run still has to do, and tasks that record what they made durable.

A fresh run computes every window and writes every chunk. A resumed run (``resume=True`` over the
manifest an interrupted run left, see :mod:`tilegraph.engine.destination`) skips the output chunks
recorded as durable and computes only the windows that the remaining chunks need and the tile store
does not hold (:func:`plan_work`). Stages that need every window's small results (colour statistics
before the reconcile solve, output kinds that reduce results) recompute every window unless the
stage's own result was recorded.

Tasks record their ids *after* their data write returned (:func:`recorded`): a record always means
durable, a missing record means "do it again".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tilegraph.blend.abc import Blender
from tilegraph.engine.executor import TaskFailure
from tilegraph.plan.plan import Plan
from tilegraph.sink.abc import OutputLayout
from tilegraph.sink.builtin import ZarrWriter, scratch_writer
from tilegraph.sink.manifest import RecordWriter, resume_work
from tilegraph.sink.tile_store import TileStore

__all__ = [
    "Recorder",
    "Work",
    "recorded",
    "with_records",
    "plan_work",
    "task_groups",
    "tile_store",
    "reopen_writer",
    "zarr_matches",
]


@dataclass(frozen=True)
class Recorder:
    """What :func:`recorded` needs: the record writer, the record kind and the task's function."""

    writer: RecordWriter
    kind: str
    fn: Callable[..., Any]


def recorded(rec: Recorder, ids: Sequence[int], *args: Any) -> Any:
    """Task: ``rec.fn(*args)``, then record ``ids`` of ``rec.kind`` as durable (after the write returned)."""
    out = rec.fn(*args)
    if not isinstance(out, TaskFailure):
        rec.writer.add(rec.kind, [int(i) for i in ids])
    return out


def with_records(
    writer: RecordWriter | None,
    fn: Callable[..., Any],
    kind: str,
    ids: Sequence[Sequence[int]],
    columns: list,
) -> tuple[Callable[..., Any], list]:
    """``(function, argument columns)`` for ``Executor.map``: ``fn`` wrapped by :func:`recorded` if recording."""
    if writer is None:
        return fn, columns
    rec = Recorder(writer, kind, fn)
    return recorded, [[rec] * len(ids), [tuple(int(i) for i in g) for g in ids], *columns]


@dataclass(frozen=True)
class Work:
    """What a resumed run computes (``None`` in :class:`~tilegraph.engine.context.PreparedRun` means all).

    Attributes
    ----------
    windows : tuple of int
        Windows to run the model on.
    chunks : frozenset of int
        Output chunks (``cy * n_chunk_cols + cx``) still to write.
    durable_windows, durable_chunks : int
        What the interrupted runs left durable.
    """

    windows: tuple[int, ...]
    chunks: frozenset[int]
    durable_windows: int
    durable_chunks: int

    def describe(self) -> str:
        """One line for the progress display."""
        return (
            f"resuming: {len(self.windows)} windows to compute ({self.durable_windows} durable), "
            f"{len(self.chunks)} chunks to write ({self.durable_chunks} done)"
        )


def chunk_windows(plan: Plan, blender: Blender) -> Callable[[int], list[int]]:
    """Flat chunk index -> windows its blend reads."""
    nx = plan.chunk_grid[1]

    def windows(c: int) -> list[int]:
        cy, cx = divmod(int(c), nx)
        return list(blender.windows_for_box(plan, plan.chunk_box(cy, cx)))

    return windows


def plan_work(guard: Any, plan: Plan, blender: Blender, *, every_window: bool) -> Work | None:
    """What this run computes, from the manifest's durable sets; ``None`` for a fresh run (everything).

    ``every_window``: the run needs every window's small results (statistics for a solve not yet
    recorded, an output kind reducing results), so durable windows are computed again.
    """
    if guard is None or not guard.resumed:
        return None
    n_chunks = plan.chunk_grid[0] * plan.chunk_grid[1]
    durable_w, durable_c = guard.durable("windows"), guard.durable("chunks")
    work = resume_work(
        n_windows=plan.n_windows,
        n_chunks=n_chunks,
        windows_for_chunk=chunk_windows(plan, blender),
        durable_windows=durable_w,
        durable_chunks=durable_c,
    )
    windows = list(work.windows)
    if every_window:
        windows = list(range(plan.n_windows))
    elif blender.strip_pass and work.chunks:  # strips read every overlap: every window must be stored
        windows = durable_w.missing(plan.n_windows)
    return Work(
        windows=tuple(windows),
        chunks=frozenset(work.chunks),
        durable_windows=work.durable_windows,
        durable_chunks=work.durable_chunks,
    )


def task_groups(groups: list[list[int]], work: Work | None) -> list[list[int]]:
    """The model tasks' windows: ``groups`` as planned, or only the windows a resumed run still computes."""
    if work is None:
        return groups
    left = set(work.windows)
    return [kept for g in groups if (kept := [i for i in g if i in left])]


def zarr_matches(path: str, shape: tuple[int, ...], dtype: str) -> bool:
    """Is there a readable Zarr array of ``shape`` and ``dtype`` at ``path``?"""
    import numpy as np
    import zarr

    try:
        arr = zarr.open_array(path, mode="r")
    except Exception:
        return False
    return tuple(arr.shape) == tuple(shape) and np.dtype(arr.dtype) == np.dtype(dtype)


def tile_store(guard: Any, path: str, shape: tuple[int, int, int, int], dtype: str) -> TileStore:
    """The per-window store: the interrupted run's on resume (if it fits the plan), else a new one."""
    if guard is not None and guard.resumed:
        if zarr_matches(path, shape, dtype):
            return TileStore(path=path, shape=tuple(int(v) for v in shape), dtype=str(dtype))  # type: ignore[arg-type]
        guard.forget("windows")
    return TileStore.create(path, shape, dtype)


def reopen_writer(guard: Any, path: str, layout: OutputLayout, kind: str) -> ZarrWriter:
    """A scratch array (blend before passes, a pass's output): reopened on resume if it fits, else new.

    A new array means its records of ``kind`` (if any) no longer hold: they are forgotten.
    """
    if (
        guard is not None
        and guard.resumed
        and zarr_matches(path, layout.full_dims(*layout.shape), layout.dtype)
    ):
        return ZarrWriter(path, layout)
    if guard is not None and guard.resumed and kind:
        guard.forget(kind)
    return scratch_writer(path, layout)
