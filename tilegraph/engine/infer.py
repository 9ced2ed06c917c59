"""The infer stage (client side): one model task per group of windows, then their reports gathered."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tilegraph.engine.context import PreparedRun
from tilegraph.engine.dispatch import bands, deal, stripes
from tilegraph.engine.executor import Executor
from tilegraph.engine.infer_task import TaskReport, infer_windows
from tilegraph.engine.progress import Progress
from tilegraph.engine.resume import task_groups, with_records
from tilegraph.source.padding import padded_box

__all__ = [
    "STRIPE_CHUNKS",
    "Inference",
    "InferenceReport",
    "chunk_releases",
    "submit_inference",
    "gather_inference",
    "model_tasks",
    "place",
    "summarise",
    "touching_mask",
]

#: Source chunk rows of the stripes a model worker sweeps its band in (:func:`~tilegraph.engine.dispatch.bands`):
#: the chunks it keeps decoded are a stripe's (about ``STRIPE_CHUNKS + 2`` rows of three or four), and a chunk row
#: at the boundary of two stripes is decoded by both (``1 / STRIPE_CHUNKS`` more decoding than one sweep of
#: the whole band, which on a 16384^2 image kept the whole cache budget decoded and still decoded more).
STRIPE_CHUNKS = 3


@dataclass(frozen=True)
class Inference:
    """Submitted model tasks: their handles, the windows of each, and when they started."""

    handles: tuple
    groups: tuple[tuple[int, ...], ...]
    started: float

    def handles_for(self, windows) -> list:
        """Handles of the model tasks holding ``windows`` (for ordering later tasks after them).

        Windows no task of this run computes (durable from an interrupted run) need no waiting.
        """
        task_of = {}
        for g, group in enumerate(self.groups):
            for i in group:
                task_of[i] = g
        return [self.handles[g] for g in sorted({task_of[int(i)] for i in windows if int(i) in task_of})]

    @property
    def units(self) -> list[int]:
        """Windows per model task (what the progress counts)."""
        return [len(g) for g in self.groups]


@dataclass(frozen=True)
class InferenceReport:
    """What every model task returned, summed; ``results`` keeps each task's output-kind results."""

    tasks: int
    windows: int
    read_s: float
    model_s: float
    model_wait_s: float
    write_s: float
    clipped: int
    oom_splits: int
    devices: tuple[str, ...]
    results: tuple


def submit_inference(run: PreparedRun, executor: Executor) -> Inference:
    """Submit one model task per group of windows (resource-restricted on GPU/model workers).

    Each model worker is dealt a band of the image, swept left to right in stripes of
    :data:`STRIPE_CHUNKS` source chunk rows and cut into tasks along the sweep (:func:`model_tasks`), and each task is told
    the windows its worker runs next (read ahead while its last batch is on the model) and which
    decoded source chunks its stripe no longer needs once it is done (:func:`chunk_releases`).

    A resumed run computes only the windows its work names; each task records its windows as durable
    in the manifest once they are in the tile store.
    """
    started = time.perf_counter()
    ctx_h = executor.share(run.context)
    rows = run.context.source.cache_rows
    stripe = STRIPE_CHUNKS * rows if rows else None
    groups, lanes, task_stripes = model_tasks(run, executor.model_workers(), stripe)
    writer = run.guard.writer() if run.guard is not None else None
    n = len(groups)
    ahead: list[tuple[int, ...]] = [()] * n  # the windows each task's worker runs next (read ahead)
    for lane in lanes:
        for this, following in zip(lane, lane[1:], strict=False):
            ahead[this] = tuple(groups[following])
    release = chunk_releases(run, groups, lanes, task_stripes)
    fn, columns = with_records(
        writer, infer_windows, "windows", groups, [[ctx_h] * n, groups, [run.payload] * n, ahead, release]
    )
    handles = executor.map(
        fn,
        *columns,
        keys=[f"tg-infer-{run.token}-{g}" for g in range(n)],
        resources=executor.infer_resources,
        lanes=lanes,
    )
    executor.check_restrictions(handles)
    return Inference(tuple(handles), tuple(tuple(g) for g in groups), started)


def model_tasks(
    run: PreparedRun, workers: int, stripe: float | None
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """The windows of each model task, each model worker's tasks in order, and each task's stripe.

    The windows the run computes (all, or what a resumed run has left, those touching the mask) are
    dealt by place (:func:`~tilegraph.engine.dispatch.deal`) and cut into tasks of ``batch_size x
    batches_per_task`` along each worker's sweep, unless the output kind groups them itself
    (:meth:`~tilegraph.outputs.abc.OutputKind.task_groups`): then its groups are dealt whole.
    """
    plan = run.plan
    own = run.context.kind.task_groups(plan)
    # a resumed run: what is left; then only the windows touching the mask
    groups = touching_mask(
        task_groups(own if own is not None else [list(range(plan.n_windows))], run.work), run
    )
    if own is not None:
        places = [place(plan, g) for g in groups]
        lanes = bands(places, workers, stripe)
        return groups, lanes, stripes(places, lanes, stripe)
    windows = [i for g in groups for i in g]
    dealt = deal(
        [place(plan, [i]) for i in windows], workers, plan.batch_size * plan.batches_per_task, stripe
    )
    return [[windows[p] for p in g] for g in dealt.groups], dealt.lanes, dealt.stripes


def touching_mask(groups: list[list[int]], run: PreparedRun) -> list[list[int]]:
    """``groups`` with only the windows that touch the run's mask (all without one), empty groups dropped."""
    mask = run.context.mask
    if mask is None:
        return groups
    return [kept for g in groups if (kept := [i for i in g if i in mask.windows])]


def chunk_releases(run: PreparedRun, groups: list, lanes: list[list[int]], stripes: list[int]) -> list[tuple]:
    """What each model task tells the chunk cache once done (:meth:`ChunkCache.release`): ``(key, left)``
    for each source chunk it reads, ``left`` how many tasks after it in its lane's stripe read it too
    (``()``: reads are not cached).

    A chunk read again only in the next stripe (the row of chunks at a stripe boundary) is let go with
    the stripe and decoded again: what a worker keeps is one stripe's working set.
    """
    source, plan = run.context.source, run.plan
    out: list[tuple] = [()] * len(groups)
    if source.cache_rows is None:
        return out
    for lane in lanes:
        keys = []
        last: dict[tuple, int] = {}  # (stripe, key) -> position in the lane of its last reader
        for p, t in enumerate(lane):
            read: set = set()
            for i in groups[t]:
                w = plan.window(int(i))
                read.update(
                    source.cache_keys(*padded_box(source.shape, w.y0, w.y1, w.x0, w.x1, plan.pad_mode))
                )
            keys.append(sorted(read))
            for key in read:
                last[stripes[t], key] = p
        for p, t in enumerate(lane):
            out[t] = tuple((key, last[stripes[t], key] - p) for key in keys[p])
    return out


def place(plan, windows) -> tuple[float, float]:
    """Where a group of windows lies: the mean of their top-left corners ``(y, x)`` in source pixels."""
    ws = [plan.window(int(i)) for i in windows]
    return sum(w.y0 for w in ws) / len(ws), sum(w.x0 for w in ws) / len(ws)


def summarise(reports: list[TaskReport]) -> InferenceReport:
    """Sum the model tasks' reports."""
    return InferenceReport(
        tasks=len(reports),
        windows=sum(r.windows for r in reports),
        read_s=float(sum(r.read_s for r in reports)),
        model_s=float(sum(r.model_s for r in reports)),
        model_wait_s=float(sum(r.model_wait_s for r in reports)),
        write_s=float(sum(r.write_s for r in reports)),
        clipped=int(sum(r.clipped for r in reports)),
        oom_splits=int(sum(r.oom_splits for r in reports)),
        devices=tuple(sorted({r.device for r in reports})),
        results=tuple(tuple(r.results) for r in reports),
    )


def gather_inference(inference: Inference, executor: Executor, progress: Progress | None) -> InferenceReport:
    """Wait for every model task (progress counts windows) and sum their reports."""
    reports = executor.wait(
        list(inference.handles), progress=progress, label="windows", units=inference.units
    )
    return summarise(reports)
