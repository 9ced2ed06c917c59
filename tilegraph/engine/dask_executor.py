"""The Dask executor: the one place that talks to ``distributed``.

Tasks are submitted with explicit keys and resource restrictions given to ``Client.submit`` directly
(never through graph annotations, which graph fusion drops).

Ordering without data: a task given ``after=`` handles must only start once those finished, but
needs none of their results (pixels travel through storage). A Dask dependency would copy every
result to the dependent task's worker, one peer-to-peer transfer per dependency and task, which
measured about half of the workers' CPU per window on 2 cores. So :class:`DaskExecutor` keeps such
tasks on the client (:class:`Deferred`) and submits each as soon as the tasks it waits for have
finished, from :meth:`DaskExecutor.wait`.

Worker deaths: a task counts as finished once it was *seen* finished. Its result is fetched then and
its future released, so a result lost with a worker is not recomputed (the pixels it wrote are in
storage already), and the tasks deferred after it are released even though its future is gone. A
task that keeps killing workers fails with distributed's ``KilledWorker`` once it was on more than
``allowed-failures`` dying workers (the scheduler's setting, 3 by default;
:meth:`DaskExecutor.set_allowed_failures`); the engine reports it by window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tilegraph.engine.dask_resources import (
    _restrictions_on_scheduler,
    _worker_info,
    _workers_with,
    model_resources,
)
from tilegraph.engine.dispatch import Deferred, Dispatcher, Queued
from tilegraph.engine.executor import raise_failure
from tilegraph.engine.progress import Progress, tally
from tilegraph.errors import ClusterError, ResourceRestrictionError

__all__ = ["DaskExecutor", "Deferred", "Queued", "model_resources"]


class DaskExecutor:
    """Submit tasks to a ``distributed.Client``.

    Parameters
    ----------
    client
        A connected client.
    own_cluster
        Close the client (and its cluster) in :meth:`close`.
    model_tasks_per_worker
        Model tasks that may run at once on a worker (each asks for this fraction of the worker's
        ``GPU`` or ``MODEL`` resource). Their forward passes take turns on the worker's model (a
        lock in :class:`~tilegraph.infer.runner.BatchRunner`), so the device runs one batch at a
        time while the other task reads its next batch and writes its last: with 2 (the default)
        the device never waits for a task to start, and about two batches are in flight per worker.
        Exclusive model work (the probe, ``tile="auto"``) asks for the whole resource.

    Attributes
    ----------
    model_resources : dict or None
        The whole model resource (``{"GPU": 1}`` or ``{"MODEL": 1}``), for exclusive model work.
    infer_resources : dict or None
        What each model task asks for, ``{name: 1 / model_tasks_per_worker}``.
    """

    def __init__(self, client, *, own_cluster: bool = False, model_tasks_per_worker: int = 2):
        self.client = client
        self.own_cluster = own_cluster
        self.model_resources = model_resources(client)
        if int(model_tasks_per_worker) < 1:
            raise ValueError(f"model_tasks_per_worker must be at least 1, got {model_tasks_per_worker!r}")
        self.infer_resources = (
            {name: 1 / int(model_tasks_per_worker) for name in self.model_resources}
            if self.model_resources
            else None
        )
        self.dashboard_link = getattr(client, "dashboard_link", None)
        #: Called by :meth:`close` after the cluster closed (e.g. restoring the console's logging).
        self.on_close: list[Callable[[], None]] = []
        #: Debug log of the embedded cluster's distributed records, if it has one.
        self.log_path: str | None = None
        self._results: dict = {}  # key -> result of every task seen finished (their futures are released)
        self._shared: list = []  # futures of shared objects (cancelled with the run)
        self._workers_checked = 0.0
        self._no_workers_since: float | None = None
        self._dispatch = Dispatcher(int(model_tasks_per_worker))
        self._dispatched = 0.0  # when the model workers were last topped up without a task finishing
        self._model_workers_seen: dict = {}  # resource -> (when, {address: threads})
        self._no_model_workers_since: float | None = None
        self._helpers_seen: tuple[float, list[str]] | None = None
        self._spread_next = 0

    def _finished(self, handle) -> bool:
        """Was ``handle`` seen finished (its result kept), or is it finished now?"""
        return handle.key in self._results or handle.status == "finished"

    def set_allowed_failures(self, n: int) -> None:
        """Set the scheduler's ``allowed_failures`` (worker deaths per task before ``KilledWorker``; all clients')."""

        def apply(dask_scheduler, n):
            dask_scheduler.allowed_failures = int(n)

        self.client.run_on_scheduler(apply, n=int(n))

    def share(self, obj, *, model_only: bool = False):
        """Make ``obj`` available to tasks; returns a future that tasks take in its place.

        ``obj`` travels inside a task (held by the scheduler), not scattered: scattered data is lost
        for good with the last worker holding it (distributed's memory manager keeps one replica of
        broadcast data), while a task's result is recomputed. Each worker fetches it once for the
        tasks it runs. ``model_only`` is accepted for the protocol (only model workers fetch it).
        """
        import uuid

        fut = self.client.submit(_shared, obj, key=f"tg-shared-{uuid.uuid4().hex}", pure=False)
        self._shared.append(fut)
        return fut

    def submit(self, fn: Callable, *args, key: str, resources: dict | None = None):
        return self.client.submit(fn, *args, key=key, resources=resources, pure=False, retries=1)

    def map(
        self,
        fn: Callable,
        *iterables,
        keys: Sequence[str],
        resources: dict | None = None,
        after: Sequence[Sequence] | None = None,
        lanes: Sequence[Sequence[int]] | None = None,
    ) -> list:
        """Submit many tasks in one message (``Client.map``).

        With ``after`` (one list of handles per task), each task is a :class:`Deferred` submitted
        once its handles have finished (see the module notes): at once for those whose handles
        are already done, the others from :meth:`wait`. Resource-restricted (model) tasks are
        :class:`~tilegraph.engine.dispatch.Queued`: lane ``i`` of ``lanes`` (task indices, in
        order; :meth:`model_workers` lanes) dealt to the ``i``-th model worker, round-robin
        without, and submitted as slots free.
        """
        if not keys:
            return []
        keys = list(keys)
        if after is not None:
            deferred = [
                Deferred(fn, tuple(args), k, resources, deps, self)
                for k, deps, *args in zip(keys, after, *iterables, strict=True)
            ]
            self._release(deferred)
            return deferred
        workers = self._model_workers(resources) if resources else {}
        if not workers:
            return self.client.map(
                fn, *iterables, key=keys, resources=resources, pure=False, retries=1, batch_size=None
            )
        # model tasks: dealt to the model workers and submitted as slots free (see tilegraph.engine.dispatch);
        # the workers are those model_workers() just counted for the lanes (asked at most twice a second)
        tasks = [
            Queued(fn, tuple(args), k, resources, [], self) for k, *args in zip(keys, *iterables, strict=True)
        ]
        self._dispatch.assign(tasks, sorted(workers), lanes)
        self._top_up()
        return tasks

    def model_workers(self) -> int:
        """How many workers run model tasks now (lanes for :meth:`map`)."""
        if not self.infer_resources:
            return 1
        self._model_workers_seen.clear()
        return max(1, len(self._model_workers(self.infer_resources)))

    def _model_workers(self, resources: dict) -> dict[str, int]:
        """Live workers declaring the model resource, with their thread counts (asked at most twice a second).

        Raises :class:`NoWorkersError` when model tasks wait and no model worker was seen for
        ``tilegraph.lost-workers-timeout`` seconds.
        """
        import dask

        name = next(iter(resources))
        now = time.monotonic()
        cached = self._model_workers_seen.get(name)
        if cached is not None and now - cached[0] < 0.5:
            return cached[1]
        workers = _workers_with(self.client, name)
        self._model_workers_seen[name] = (now, workers)
        if workers:
            self._no_model_workers_since = None
        elif self._no_model_workers_since is None:
            self._no_model_workers_since = now
        elif now - self._no_model_workers_since > float(
            dask.config.get("tilegraph.lost-workers-timeout", 60)
        ):
            raise NoWorkersError(now - self._no_model_workers_since)
        return workers

    def _top_up(self) -> list:
        """Submit queued model tasks to the model workers with a free slot; returns the new futures."""
        if not self._dispatch:
            return []
        self._dispatched = time.monotonic()
        resources = next(iter(t for q in self._dispatch.queues.values() for t in q)).resources
        futures = []
        for worker, tasks in self._dispatch.take(self._model_workers(resources)).items():
            futures.extend(self._submit_queued(tasks, worker))
        return futures

    def _submit_queued(self, tasks: Sequence[Queued], worker: str | None) -> list:
        groups: dict = {}
        for t in tasks:
            groups.setdefault(t.fn, []).append(t)
        out = []
        for fn, ts in groups.items():
            columns = list(zip(*(t.args for t in ts), strict=True)) if ts[0].args else []
            futures = self.client.map(
                fn,
                *columns,
                key=[t.key for t in ts],
                resources=ts[0].resources,
                workers=None if worker is None else [worker],
                allow_other_workers=worker is not None,
                pure=False,
                retries=1,
                batch_size=None,
            )
            for t, f in zip(ts, futures, strict=True):
                t.future = f
            out.extend(futures)
        return out

    def _dispatch_now(self, tasks: Sequence[Queued]) -> list:
        """Submit ``tasks`` at once, to any model worker (a handle's ``result()`` outside :meth:`wait`)."""
        self._dispatch.drop(tasks)
        return self._submit_queued([t for t in tasks if t.future is None and not t.cancelled], None)

    def _release(self, deferred: Sequence[Deferred]) -> list:
        """Submit the deferred tasks whose ``after`` handles have all finished; returns their futures."""
        ready = [
            d
            for d in deferred
            if d.future is None
            and not d.cancelled
            and not isinstance(d, Queued)
            and all(self._finished(h) for h in d.after)
        ]
        groups: dict = {}
        for d in ready:  # one Client.map per function, restriction and worker
            worker = None
            if not d.resources and (spread := self._helpers()):  # restricted tasks: the scheduler places them
                worker = spread[self._spread_next % len(spread)]
                self._spread_next += 1
            groups.setdefault((d.fn, tuple(sorted((d.resources or {}).items())), worker), []).append(d)
        futures = []
        for (fn, _, worker), ds in groups.items():
            columns = list(zip(*(d.args for d in ds), strict=True)) if ds[0].args else []
            out = self.client.map(
                fn,
                *columns,
                key=[d.key for d in ds],
                resources=ds[0].resources,
                workers=None if worker is None else [worker],
                allow_other_workers=worker is not None,
                pure=False,
                retries=1,
                batch_size=None,
                priority=1,  # before model tasks waiting on the same worker: outputs finish as they can
            )
            for d, f in zip(ds, out, strict=True):
                d.future = f
            futures.extend(out)
        return futures

    def _helpers(self) -> list[str]:
        """Workers that deferred tasks (blends) are dealt to in turn: those without the model resource if
        any, else all. Left to the scheduler, every one would go to the one worker holding the shared
        object they take."""
        if self._helpers_seen is None or time.monotonic() - self._helpers_seen[0] > 2.0:
            workers = _worker_info(self.client)
            names = set(self.model_resources or {})
            cpu = [a for a, w in workers.items() if not names & set(w.get("resources") or {})]
            self._helpers_seen = (time.monotonic(), sorted(cpu or workers))
        return self._helpers_seen[1]

    def check_restrictions(self, handles: Sequence, want: dict | None = None) -> None:
        """Raise :class:`ResourceRestrictionError` if model tasks reached the scheduler unrestricted.

        ``want`` is the restriction they were submitted with (default :attr:`infer_resources`).
        """
        want = self.infer_resources if want is None else want
        if not want or not handles:
            return
        keys = [h.key for h in handles if not isinstance(h, Deferred) or h.future is not None][:4]
        seen: dict = {}
        deadline = time.monotonic() + 30
        while len(seen) < len(keys) and time.monotonic() < deadline:  # submissions arrive asynchronously
            seen = self.client.run_on_scheduler(_restrictions_on_scheduler, keys=keys)
            if len(seen) < len(keys):
                time.sleep(0.05)
        if not seen:
            raise ResourceRestrictionError(
                "model tasks did not reach the scheduler within 30 s", hint="check the scheduler connection"
            )
        missing = [k for k in keys if k in seen and seen[k] != want]
        if missing:
            raise ResourceRestrictionError(
                f"model tasks reached the scheduler with restrictions {seen[missing[0]]!r}, expected {want!r}",
                hint="a graph optimisation dropped them; report this as a tilegraph bug",
            )

    def wait(
        self,
        handles: Sequence,
        *,
        progress: Progress | None = None,
        label: str | Sequence[str] = "",
        units: Sequence[int] | None = None,
    ) -> list:
        """Wait for ``handles`` (futures and :class:`Deferred`), submitting deferred tasks as they become ready.

        ``units`` counts each handle's work for the progress display (windows per model task);
        default one per handle. The first task to fail cancels the others and raises its own
        exception. Each result is fetched as its task finishes and the task's future released (see
        the module notes); a handle without a result raises, never returns ``None``.
        """
        from distributed import as_completed

        deferred = [h for h in handles if isinstance(h, Deferred)]
        waiting: dict = {}  # key of a handle -> deferred tasks that wait for it
        for d in deferred:
            for h in d.after:
                waiting.setdefault(h.key, []).append(d)
        watched: dict = {}
        for h in handles:
            if not isinstance(h, Deferred) and h.key not in self._results:
                watched[h.key] = h
            elif isinstance(h, Queued) and h.future is not None and h.key not in self._results:
                watched[h.key] = h.future
        for d in deferred:
            for h in d.after:
                if h.key not in self._results:
                    if isinstance(h, Deferred):
                        if h.future is not None:
                            watched.setdefault(h.key, h.future)
                    else:
                        watched.setdefault(h.key, h)
        labels = [label] * len(handles) if isinstance(label, str) else list(label)
        weight = {
            h.key: (lab, 1 if units is None else int(u))
            for h, lab, u in zip(handles, labels, units or [1] * len(handles), strict=True)
        }
        counts = {name: [0, total] for name, (_, total) in tally(handles, label, units).items()}
        counted: set = set()

        def count(key) -> None:
            if key in weight and key not in counted:
                counted.add(key)
                name, w = weight[key]
                counts[name][0] += w
                if progress is not None:
                    progress.update(name, counts[name][0], counts[name][1])

        if progress is not None:
            for name, (done, of) in counts.items():
                progress.update(name, done, of)
        try:
            for h in handles:
                if h.key in self._results:
                    raise_failure(self._results[h.key])
                    count(h.key)
            self._release(deferred)
            for d in deferred:
                if d.future is not None and d.key not in self._results:
                    watched.setdefault(d.key, d.future)
            pending = as_completed(
                list(watched.values()), loop=self.client.loop, with_results=True, raise_errors=False
            )
            ready = iter(pending)
            for f in self._top_up():
                pending.add(f)
            while not pending.is_empty() or self._dispatch:
                if not pending.has_ready():
                    self._check_workers()
                    if time.monotonic() - self._dispatched > 0.5:  # workers that joined or came back
                        for f in self._top_up():
                            pending.add(f)
                    time.sleep(0.02)
                    continue
                fut, result = next(ready)
                self._take(fut, result)
                if self._dispatch.finished(fut.key):
                    for f in self._top_up():
                        pending.add(f)
                for f in self._release(waiting.pop(fut.key, ())):
                    pending.add(f)
                count(fut.key)
        except BaseException:
            self.cancel(handles)
            raise
        out = []
        for h in handles:
            if h.key not in self._results:
                raise ClusterError(
                    f"task {h.key} finished without a result",
                    hint="report this as a tilegraph bug; resume=True continues the run",
                )
            out.append(self._results[h.key])
        return out

    def _check_workers(self) -> None:
        """Raise :class:`NoWorkersError` when the cluster has had no worker for too long.

        A worker process killed before its nanny saw it start is never restarted (distributed
        2026.8), so a model that crashes every worker it reaches can leave no worker at all, and a
        run would wait for ever. The limit is dask's ``tilegraph.lost-workers-timeout`` (seconds,
        default 60).
        """
        import dask

        now = time.monotonic()
        if now - self._workers_checked < 1.0:
            return
        self._workers_checked = now
        if self.client.scheduler_info().get("workers"):
            self._no_workers_since = None
            return
        if self._no_workers_since is None:
            self._no_workers_since = now
        limit = float(dask.config.get("tilegraph.lost-workers-timeout", 60))
        if now - self._no_workers_since > limit:
            raise NoWorkersError(now - self._no_workers_since)

    def _take(self, fut, result) -> None:
        """Keep a finished task's result and release its future; raise a failed task's error."""
        from concurrent.futures import CancelledError

        if fut.status == "error" and isinstance(result, tuple) and len(result) == 3:
            _, exc, tb = result
            raise exc.with_traceback(tb)
        if isinstance(result, CancelledError) or fut.status == "cancelled":
            raise result if isinstance(result, BaseException) else CancelledError(fut.key)
        self._results[fut.key] = result
        fut.release()
        raise_failure(result)

    def cancel(self, handles) -> None:
        futures = list(self._shared)
        self._dispatch.drop([h for h in handles if isinstance(h, Queued)])
        for h in handles:
            if isinstance(h, Deferred):
                h.cancelled = True
                if h.future is not None:
                    futures.append(h.future)
            else:
                futures.append(h)
        if getattr(self.client, "status", "running") != "running":
            return  # no scheduler to tell (lost connection, closing): never block on it
        try:
            self.client.cancel(futures, force=True)
        except Exception:  # cancelling during shutdown must not hide the original error
            pass

    def close(self) -> None:
        try:
            if self.own_cluster:
                cluster = getattr(self.client, "cluster", None)
                self.client.close()
                if cluster is not None:
                    cluster.close()
        finally:
            for fn in self.on_close:
                fn()
            self.on_close.clear()


class NoWorkersError(RuntimeError):
    """The cluster lost every worker and none came back (the engine reports it by window)."""

    def __init__(self, seconds: float):
        super().__init__(f"no worker for {seconds:.0f} s")
        self.seconds = seconds


def _shared(obj):
    """Task: ``obj`` itself (see :meth:`DaskExecutor.share`)."""
    return obj
