"""The one documented exception tree of tilegraph.

Every error tilegraph raises on purpose derives from :class:`TilegraphError` and carries the
context a person needs to act: the file (``path``), the window (``window``) and a hint.

::

    TilegraphError
    ├── InputError                 bad user input (also a ValueError)
    │   ├── PlanError              impossible geometry: tile <= overlap, zero size, bad scale
    │   ├── SourceError            the source cannot be read as an image
    │   │   ├── SourceNotFoundError
    │   │   ├── CorruptSourceError
    │   │   ├── UnsupportedSourceError   dtype, layout, colour space, compression
    │   │   ├── ImageTooLargeError       header claims more pixels than allowed
    │   │   └── IncompleteOutputError    a tilegraph output whose run never finished
    │   ├── DestinationError       the destination is refused (exists, equals the source, ...)
    │   │   └── DestinationClaimedError  another run holds the destination (names it)
    │   └── ResumeMismatchError    resume=True, but the plan, model or options changed
    ├── ModelError                 the model cannot be loaded or broke its contract
    │   ├── ModelLoadError
    │   ├── ModelOutputError       wrong shape / dtype / NaN / Inf, or the model raised
    │   ├── OutOfMemoryError       one window alone does not fit in the device's memory
    │   └── WindowTimeoutError     a forward pass ran longer than window_timeout (names the window)
    ├── TileStoreError             a window missing or unreadable in the tile store
    │   └── MissingWindowError
    ├── SinkError                  writing the output failed (disk full, permission, ...)
    │   ├── ClaimLostError         this run no longer holds its destination's claim
    │   └── InsufficientSpaceError the plan needs more disk space than is free (says how much)
    └── ClusterError               the cluster cannot run the job as asked
        ├── ResourceRestrictionError   GPU restrictions did not reach the scheduler
        ├── ClusterConnectionError     the scheduler refused the connection, or TLS failed
        ├── SchedulerLostError         the connection to the scheduler was lost mid-run
        └── WorkerLostError            a task kept killing its workers (names its windows)

What a run does that will likely show in its output (per-window normalisation) is a
:class:`TilegraphWarning` (a ``UserWarning``), not an error.
"""

from __future__ import annotations

__all__ = [
    "TilegraphError",
    "InputError",
    "PlanError",
    "SourceError",
    "SourceNotFoundError",
    "CorruptSourceError",
    "UnsupportedSourceError",
    "ImageTooLargeError",
    "IncompleteOutputError",
    "DestinationError",
    "DestinationClaimedError",
    "ResumeMismatchError",
    "ModelError",
    "ModelLoadError",
    "ModelOutputError",
    "OutOfMemoryError",
    "WindowTimeoutError",
    "TileStoreError",
    "MissingWindowError",
    "SinkError",
    "ClaimLostError",
    "InsufficientSpaceError",
    "ClusterError",
    "ResourceRestrictionError",
    "TilegraphWarning",
    "ClusterConnectionError",
    "SchedulerLostError",
    "WorkerLostError",
    "RESUME_HINT",
]

#: What every error that stops a run part way says: the work done so far is kept.
RESUME_HINT = "run again with resume=True (CLI --resume) to continue where it stopped"


class TilegraphError(Exception):
    """Base of every error tilegraph raises on purpose.

    Parameters
    ----------
    message
        What is wrong.
    path
        The file or URL concerned, if any.
    window
        The window concerned as ``(row, col)`` in the tile grid, if any.
    hint
        What the user can do next.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        window: tuple[int, int] | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.window = None if window is None else tuple(int(v) for v in window)
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}: ")
        if self.window is not None:
            parts.append(f"window {self.window}: ")
        parts.append(self.message)
        if self.hint:
            parts.append(f" ({self.hint})")
        return "".join(parts)

    def __reduce__(self):  # errors cross process boundaries on a cluster, with their cause
        return (
            _rebuild,
            (type(self), self.message, self.path, self.window, self.hint, _portable(self.__cause__)),
        )


def _portable(cause: BaseException | None) -> BaseException | None:
    """``cause`` if it pickles, else a ``RuntimeError`` carrying its repr (never fails)."""
    if cause is None:
        return None
    import pickle

    try:
        pickle.dumps(cause)
        return cause
    except Exception:
        return RuntimeError(repr(cause))


def _rebuild(cls, message, path, window, hint, cause=None):
    exc = cls(message, path=path, window=window, hint=hint)
    exc.__cause__ = cause
    return exc


class InputError(TilegraphError, ValueError):
    """Bad input given by the user."""


class PlanError(InputError):
    """The requested geometry is impossible (tile not larger than overlap, zero size, ...)."""


class SourceError(InputError):
    """The source cannot be read as an image."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The source file or URL does not exist."""


class CorruptSourceError(SourceError):
    """The source exists but its content is damaged or truncated."""


class UnsupportedSourceError(SourceError):
    """The source is valid but uses something tilegraph does not support (yet)."""


class ImageTooLargeError(SourceError):
    """The file claims more pixels than the configured limit; refused before allocating."""


class IncompleteOutputError(SourceError):
    """A tilegraph output whose run did not finish (its completion marker is missing)."""


class DestinationError(InputError):
    """The destination is refused: it exists, equals the source, or cannot be written."""


class DestinationClaimedError(DestinationError):
    """Another run holds the destination's claim; the message names it (run id, host, pid, heartbeat).

    ``holder`` (a :class:`tilegraph.sink.claim.ClaimInfo`) is set where the claim was read; it is not
    carried across processes.
    """

    holder: object = None


class ResumeMismatchError(InputError):
    """``resume=True`` on a destination whose interrupted run had another plan, model or options."""


class ModelError(TilegraphError):
    """The model cannot be loaded, or it broke the model contract."""


class ModelLoadError(ModelError):
    """The model could not be imported, built or given its weights."""


class ModelOutputError(ModelError):
    """The model returned the wrong shape or dtype, NaN or Inf, or raised."""


class OutOfMemoryError(ModelError):
    """A single window runs out of memory on the model's device, even alone in its batch.

    Raised by :func:`tilegraph.infer.oom.run_splitting` once splitting the batch cannot help, and by
    :func:`tilegraph.infer.autotile.choose_tile` when even the smallest candidate window does not fit.
    The remedy is a smaller ``tile`` (or ``tile="auto"``), a lower precision, or a less busy device.
    """


class WindowTimeoutError(ModelError):
    """A forward pass ran longer than ``window_timeout`` seconds; ``window`` names (the first of) its windows."""


class TileStoreError(TilegraphError):
    """The tile store is missing a window or cannot be read."""


class MissingWindowError(TileStoreError):
    """A blend task needed a window that was never written to the tile store."""


class SinkError(TilegraphError):
    """Writing the output failed (disk full, permission denied, ...)."""


class ClaimLostError(SinkError):
    """This run no longer holds its destination's claim (taken over after its heartbeat stopped)."""


class InsufficientSpaceError(SinkError):
    """The file systems a run writes to lack the space the plan estimates (the message says how much)."""


class ClusterError(TilegraphError):
    """The cluster cannot run the job as asked."""


class ResourceRestrictionError(ClusterError):
    """Tasks that need a GPU reached the scheduler without their resource restriction."""


class TilegraphWarning(UserWarning):
    """Something a run does that will likely show in its output (normalisation that seams, ...)."""


class ClusterConnectionError(ClusterError):
    """The scheduler cannot be reached: connection refused, timed out, or a TLS failure."""


class SchedulerLostError(ClusterError):
    """The connection to the scheduler was lost during the run (the scheduler died or the network failed)."""


class WorkerLostError(ClusterError):
    """A task's workers died too often (distributed's ``KilledWorker``); ``window`` names its first window."""
