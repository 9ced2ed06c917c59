"""Tasks held on the client: after other tasks (:class:`Deferred`), or until a model slot frees (:class:`Queued`).

Model tasks are not all submitted at once. The scheduler neither queues resource-restricted tasks
nor knows where their pixels are: given all of them, it piles them on workers before it knows their
duration, and every worker then reads every part of the image (each decoding every source chunk,
N times the decoding work on N workers), while tasks submitted later (blends) wait behind them.

:class:`Dispatcher` deals the model tasks to the model workers by place (each worker a band of the
image, swept left to right in stripes of a few source chunk rows, so workers decode mostly their own
source chunks, keep few of them decoded at a time, and finish the same columns of output chunks
together) and keeps each worker only one task beyond what it can run
at once. When a worker's band is done, it takes tasks from the far end of the longest band left;
workers that join later or come back take tasks the same way, and a dead worker's band is taken
over by the others.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tilegraph.engine.executor import raise_failure

__all__ = ["Deferred", "Queued", "Dispatcher", "Dealt", "bands", "deal", "stripes", "stripe_of"]


class Deferred:
    """A task held on the client until the tasks it comes ``after`` have finished (:meth:`DaskExecutor.wait`
    submits it; :meth:`result` waits for it, submitting it first if nothing did)."""

    __slots__ = ("fn", "args", "key", "resources", "after", "future", "cancelled", "executor")

    def __init__(self, fn: Callable, args: tuple, key: str, resources: dict | None, after: list, executor):
        self.fn, self.args, self.key, self.resources = fn, args, key, resources
        self.after = list(after)
        self.future = None
        self.cancelled = False
        self.executor = executor

    @property
    def status(self) -> str:
        if self.cancelled:
            return "cancelled"
        return "pending" if self.future is None else self.future.status

    def result(self):
        if self.cancelled:
            raise RuntimeError(f"task {self.key} was cancelled before it was submitted")
        if self.key in self.executor._results:
            return raise_failure(self.executor._results[self.key])
        if self.future is None:
            for h in self.after:
                if not self.executor._finished(h):
                    h.result()  # raises a predecessor's error
            self.executor._release([self])
        assert self.future is not None
        return raise_failure(self.future.result())


class Queued(Deferred):
    """A model task held on the client until its worker has a free slot (:class:`Dispatcher`)."""

    __slots__ = ()

    def result(self):
        if self.future is None and not self.cancelled and self.key not in self.executor._results:
            self.executor._dispatch_now([self])
        return super().result()


def bands(near: Sequence[tuple[float, float]], n: int, stripe: float | None = None) -> list[list[int]]:
    """Split task indices into ``n`` bands of near-equal count by row, each ordered by column.

    ``near`` gives each task's place ``(y, x)`` in the image. A worker given a band decodes mostly
    the source chunks of its rows, and all workers sweep their bands left to right at about the
    same pace, so the output chunks of a column are finished together.

    ``stripe`` (source rows): a band taller than that is swept as stripes of ``stripe`` rows from the
    band's top (:func:`stripes`), each left to right before the next. A sweep reads each source chunk
    again at its next column, so what a worker must keep decoded is its band's height in chunks: with
    stripes, a stripe's, whatever the image size (:mod:`tilegraph.source.chunk_cache`). A band no
    taller than a stripe is swept in one, wherever it lies.
    """
    order = sorted(range(len(near)), key=lambda i: (near[i][0], near[i][1]))
    out: list[list[int]] = []
    start = 0
    for b in range(n):
        stop = start + (len(order) - start) // (n - b)
        part = order[start:stop]
        top = min((near[i][0] for i in part), default=0.0)
        out.append(sorted(part, key=lambda i: (stripe_of(near[i][0] - top, stripe), near[i][1], near[i][0])))
        start = stop
    return out


def stripes(
    near: Sequence[tuple[float, float]], lanes: Sequence[Sequence[int]], stripe: float | None
) -> list[int]:
    """The stripe each task is swept in (:func:`bands`): counted from its band's top; 0 without ``stripe``."""
    out = [0] * len(near)
    for lane in lanes:
        top = min((near[i][0] for i in lane), default=0.0)
        for i in lane:
            out[i] = stripe_of(near[i][0] - top, stripe)
    return out


@dataclass(frozen=True)
class Dealt:
    """What :func:`deal` returns: tasks by window position, each worker's tasks in order, each task's stripe."""

    groups: list[list[int]]
    lanes: list[list[int]]
    stripes: list[int]


def deal(near: Sequence[tuple[float, float]], n: int, size: int, stripe: float | None = None) -> Dealt:
    """Windows dealt to ``n`` workers by place, then cut into tasks of ``size`` along each worker's sweep.

    ``near`` gives each window's place ``(y, x)``. The windows are split into :func:`bands` and each
    band's sweep order (stripe by stripe, column by column, top to bottom within a column) is cut into
    groups of ``size`` consecutive windows. A task then covers a few neighbouring columns of its band,
    not a stretch of one grid row that wraps to the next (whose windows at both image edges would hold
    back the output chunks at both edges until the band's sweep is over), and every band ends
    at the image's right edge with only the last column of output chunks left to blend.

    Returns the window positions (in ``near``) of each task, each worker's task indices in the order
    it runs them, and the stripe of each task (its first window's, :func:`stripes`).
    """
    size = max(1, int(size))
    lanes_w = bands(near, n, stripe)
    of_window = stripes(near, lanes_w, stripe)
    groups: list[list[int]] = []
    lanes: list[list[int]] = []
    for band in lanes_w:
        first = len(groups)
        groups.extend(band[k : k + size] for k in range(0, len(band), size))
        lanes.append(list(range(first, len(groups))))
    return Dealt(groups, lanes, [of_window[g[0]] for g in groups])


def stripe_of(y: float, stripe: float | None) -> int:
    """The stripe (of ``stripe`` rows, counted from ``y = 0``) that a place at row ``y`` falls in; 0 without."""
    return int(max(0.0, y) // stripe) if stripe else 0


class Dispatcher:
    """Per-worker queues of :class:`Queued` model tasks, each worker kept one task ahead.

    Parameters
    ----------
    slots
        Model tasks a worker may run at once (the executor's ``model_tasks_per_worker``); a worker
        holds at most ``min(slots, threads) + 1`` submitted, unfinished model tasks.
    """

    def __init__(self, slots: int, ahead: int = 1):
        self.slots = int(slots)
        self.ahead = int(ahead)
        self.queues: dict[str, deque] = {}
        self.inflight: dict[str, str] = {}  # key -> worker it was dealt to

    def __bool__(self) -> bool:
        return any(self.queues.values())

    def assign(self, tasks: Sequence[Queued], workers: Sequence[str], lanes=None) -> None:
        """Deal ``tasks`` to ``workers``: lane ``i`` (task indices, in order) to worker ``i``, else round-robin.

        Lanes beyond the workers wait in the queues of workers that are gone: live workers take
        them over (:meth:`take`).
        """
        workers = sorted(workers)
        if lanes is None:
            n = max(1, len(workers))
            lanes = [list(range(w, len(tasks), n)) for w in range(n)]
        for i, lane in enumerate(lanes):
            owner = workers[i] if i < len(workers) else f"(lane {i})"
            self.queues.setdefault(owner, deque()).extend(tasks[j] for j in lane)

    def finished(self, key) -> bool:
        """Note a dealt task finished; True if it was one (its worker has a free slot now)."""
        return self.inflight.pop(key, None) is not None

    def take(self, threads: dict[str, int]) -> dict[str, list[Queued]]:
        """Tasks to submit now, by worker (the one with the most tasks queued first), for the live model
        workers ``{address: threads}``."""
        held: dict[str, int] = {}
        for w in self.inflight.values():
            held[w] = held.get(w, 0) + 1
        out: dict[str, list[Queued]] = {}
        # the worker with the most tasks left first: at the start, when all workers get their first tasks at
        # once (one message each), the longest lane's first read is not the one that waits behind the others
        for worker in sorted(threads, key=lambda w: (-len(self.queues.get(w, ())), w)):
            depth = min(self.slots, max(1, int(threads[worker]))) + self.ahead
            while held.get(worker, 0) < depth:
                task = self._next(worker)
                if task is None:
                    break
                out.setdefault(worker, []).append(task)
                held[worker] = held.get(worker, 0) + 1
                self.inflight[task.key] = worker
        return out

    def drop(self, tasks: Sequence[Queued]) -> None:
        """Forget ``tasks`` (submitted directly, or cancelled)."""
        gone = {t.key for t in tasks}
        for q in self.queues.values():
            kept = [t for t in q if t.key not in gone]
            q.clear()
            q.extend(kept)

    def _next(self, worker: str) -> Queued | None:
        own = self.queues.get(worker)
        while own:
            task = own.popleft()
            if not task.cancelled and task.future is None:
                return task
        while True:  # its band is done: the far end of the longest band left
            longest = max(self.queues.values(), key=len, default=None)
            if not longest:
                return None
            task = longest.pop()
            if not task.cancelled and task.future is None:
                return task
