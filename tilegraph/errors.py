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
    │   └── DestinationError       the destination is refused (exists, equals the source, ...)
    ├── ModelError                 the model cannot be loaded or broke its contract
    │   ├── ModelLoadError
    │   ├── ModelOutputError       wrong shape / dtype / NaN / Inf, or the model raised
    │   └── OutOfMemoryError       one window alone does not fit in the device's memory
    ├── TileStoreError             a window missing or unreadable in the tile store
    │   └── MissingWindowError
    ├── SinkError                  writing the output failed (disk full, permission, ...)
    └── ClusterError               the cluster cannot run the job as asked
        └── ResourceRestrictionError   GPU restrictions did not reach the scheduler

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
    "ModelError",
    "ModelLoadError",
    "ModelOutputError",
    "OutOfMemoryError",
    "TileStoreError",
    "MissingWindowError",
    "SinkError",
    "ClusterError",
    "ResourceRestrictionError",
    "TilegraphWarning",
]


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


class TileStoreError(TilegraphError):
    """The tile store is missing a window or cannot be read."""


class MissingWindowError(TileStoreError):
    """A blend task needed a window that was never written to the tile store."""


class SinkError(TilegraphError):
    """Writing the output failed (disk full, permission denied, ...)."""


class ClusterError(TilegraphError):
    """The cluster cannot run the job as asked."""


class ResourceRestrictionError(ClusterError):
    """Tasks that need a GPU reached the scheduler without their resource restriction."""


class TilegraphWarning(UserWarning):
    """Something a run does that will likely show in its output (normalisation that seams, ...)."""
