"""Executors: the :class:`Executor` protocol the stages use, and the in-process executor.

``InProcessExecutor`` runs each task immediately in this process (tests, notebooks without a
cluster); :class:`~tilegraph.engine.dask_executor.DaskExecutor` submits to a ``distributed``
client. Both return handles with ``.result()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tilegraph.engine.progress import Progress, tally

__all__ = ["Executor", "InProcessExecutor", "Done", "TaskFailure", "raise_failure"]


class Executor(Protocol):
    """What the stages need from an executor (in-process or Dask).

    Attributes
    ----------
    model_resources : dict or None
        Restriction for exclusive model work (the probe, ``tile="auto"``).
    infer_resources : dict or None
        Restriction of each model task.
    dashboard_link : str or None
    """

    model_resources: dict | None
    infer_resources: dict | None
    dashboard_link: str | None

    def share(self, obj: Any, *, model_only: bool = False) -> Any:
        """Send ``obj`` to the workers once; returns what tasks take in its place."""
        ...

    def submit(self, fn: Callable, *args: Any, key: str, resources: dict | None = None) -> Any:
        """Run ``fn(*args)`` as one task; returns a handle with ``result()``."""
        ...

    def map(
        self,
        fn: Callable,
        *iterables: Sequence,
        keys: Sequence[str],
        resources: dict | None = None,
        after: Sequence[Sequence] | None = None,
        lanes: Sequence[Sequence[int]] | None = None,
    ) -> list:
        """One task per key over zipped arguments; ``after``: handles each task must wait for;
        ``lanes``: task indices in order, one list per model worker (:meth:`model_workers`)."""
        ...

    def model_workers(self) -> int:
        """How many workers run model tasks now (the lanes :meth:`map` deals)."""
        ...

    def wait(
        self,
        handles: Sequence,
        *,
        progress: Progress | None = None,
        label: str | Sequence[str] = "",
        units: Sequence[int] | None = None,
    ) -> list:
        """Results of ``handles``, in order; the first failure cancels the rest and raises.

        ``label`` names the work for the progress display, one for all or one per handle;
        ``units`` weighs each handle (windows per model task), default one.
        """
        ...

    def check_restrictions(self, handles: Sequence, want: dict | None = None) -> None:
        """Raise if model tasks reached the scheduler without their resource restriction."""
        ...

    def cancel(self, handles: Sequence) -> None:
        """Cancel what still runs."""
        ...

    def close(self) -> None:
        """Release the cluster if this executor started it."""
        ...


class TaskFailure:
    """A task's error returned as its result, so that the scheduler does not retry the task.

    Used for errors that a retry would only repeat (a forward pass past ``window_timeout``); the
    executors raise :attr:`error` on the client when they see one.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error

    def __reduce__(self):
        return (TaskFailure, (self.error,))


def raise_failure(value: Any) -> Any:
    """``value``, or raise the error it carries if it is a :class:`TaskFailure`."""
    if isinstance(value, TaskFailure):
        raise value.error
    return value


class Done:
    """Result holder of the in-process executor (mimics a future)."""

    __slots__ = ("value", "key")

    def __init__(self, value, key: str):
        self.value, self.key = value, key

    def result(self):
        return self.value


class InProcessExecutor:
    """Run tasks immediately, in submission order, in this process."""

    model_resources: dict | None = None
    infer_resources: dict | None = None
    dashboard_link: str | None = None

    def share(self, obj, *, model_only: bool = False):
        """Objects are used as they are."""
        return obj

    def submit(self, fn: Callable, *args, key: str, resources: dict | None = None):
        args = tuple(a.value if isinstance(a, Done) else a for a in args)
        return Done(raise_failure(fn(*args)), key)

    def map(
        self,
        fn: Callable,
        *iterables,
        keys: Sequence[str],
        resources: dict | None = None,
        after: Sequence[Sequence] | None = None,
        lanes: Sequence[Sequence[int]] | None = None,
    ) -> list:
        """Run ``fn`` over zipped arguments (one task per key); ``after`` already ran here. With ``lanes``
        the tasks run lane after lane in each lane's order (the order the tasks planned their reads ahead
        and their chunk releases for), else in submission order; the handles are in submission order."""
        rows = list(zip(keys, *iterables, strict=True))
        order = [i for lane in lanes or () for i in lane]
        order += sorted(set(range(len(rows))) - set(order))
        out: list = [None] * len(rows)
        for i in order:
            k, *args = rows[i]
            out[i] = self.submit(fn, *args, key=k)
        return out

    def model_workers(self) -> int:
        """One: this process."""
        return 1

    def wait(
        self,
        handles: Sequence,
        *,
        progress: Progress | None = None,
        label: str | Sequence[str] = "",
        units: Sequence[int] | None = None,
    ) -> list:
        if progress is not None:
            for name, (_, total) in tally(handles, label, units).items():
                progress.update(name, total, total)
        return [raise_failure(h.result()) for h in handles]

    def check_restrictions(self, handles: Sequence, want: dict | None = None) -> None:
        """Nothing is restricted here."""

    def cancel(self, handles) -> None:
        """Nothing runs in the background."""

    def close(self) -> None:
        """Nothing to release."""


def __getattr__(name: str):
    """``DaskExecutor`` and ``Deferred`` live in :mod:`tilegraph.engine.dask_executor` (imported on use)."""
    if name in ("DaskExecutor", "Deferred", "model_resources"):
        from tilegraph.engine import dask_executor

        return getattr(dask_executor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
