"""Out-of-memory recovery: recognise out-of-memory errors and split a batch until it fits.

Runs on workers, inside a model task. torch is never imported here; it is used only when the caller
already imported it (a torch model is running).

Typical use, in the task that runs one batch of raw windows ``(N, H, W, C)``::

    res = run_splitting(lambda part: runner.run_raw(part, channels=c, out_dtype=dt), raw,
                        max_batch=limit, windows=[(row, col), ...], device=runner.device)
    y, clipped = res.output   # what run_raw returns, for the whole batch: (N, C', H', W'), summed clips
    if res.splits:            # remember what fitted, so the next batches do not fail first
        limit = res.batch
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from tilegraph.errors import OutOfMemoryError

__all__ = ["is_oom", "run_splitting", "SplitResult", "free_device_cache"]

# Messages of out-of-memory errors raised as plain RuntimeError (older torch, MPS, cuBLAS/cuDNN
# workspaces, torch's CPU allocator). Compared in lower case.
_OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


class SplitResult(NamedTuple):
    """What :func:`run_splitting` returns (a named tuple: ``y, splits, batch = run_splitting(...)``).

    Attributes
    ----------
    output : numpy.ndarray or tuple
        What ``fn`` returns, for the whole batch: its array (or, for a tuple, each array item)
        concatenated along axis 0 in input order; numbers in a tuple are summed over the chunks.
    splits : int
        How many times a failing chunk was halved (0: the first call ran the whole batch).
    batch : int
        The largest chunk that ran; pass it as ``max_batch`` to later batches of the same window size
        so that they do not fail first.
    """

    output: np.ndarray | tuple
    splits: int
    batch: int


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of the model's device or of the host.

    True for :class:`torch.OutOfMemoryError` (``torch.cuda.OutOfMemoryError`` is the same class),
    :class:`MemoryError` (numpy included), and a :class:`RuntimeError` whose message says so
    (``"out of memory"``, torch's CPU allocator ``"can't allocate memory"``, cuBLAS/cuDNN
    ``*_STATUS_ALLOC_FAILED``). False for :class:`tilegraph.errors.OutOfMemoryError`, which is the final
    verdict after splitting, not something to retry.

    Parameters
    ----------
    exc
        The exception to classify.
    """
    if isinstance(exc, OutOfMemoryError):
        return False
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None:
        classes = (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if any(c is not None and isinstance(exc, c) for c in classes):
            return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(m in text for m in _OOM_MESSAGES)
    return False


def free_device_cache() -> None:
    """Collect garbage and return cached, unused CUDA memory to the driver (no-op without CUDA)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_splitting(
    fn: Callable[[np.ndarray], np.ndarray | tuple],
    raw: np.ndarray,
    *,
    min_batch: int = 1,
    max_batch: int | None = None,
    windows: Sequence[tuple[int, int]] | None = None,
    device: str | None = None,
) -> SplitResult:
    """Call ``fn`` on ``raw``; on an out-of-memory error, halve the batch and go on, in order.

    ``fn(raw)`` is tried first (in chunks of ``max_batch`` when given). When a chunk of ``n`` windows
    runs out of memory (:func:`is_oom`), the CUDA cache is emptied and that chunk and all later ones
    are run in chunks of ``ceil(n / 2)``; this repeats until chunks fit. Every window runs exactly once
    successfully and the outputs are concatenated along axis 0 in input order. Chunks are views of
    ``raw`` along axis 0 (contiguous when ``raw`` is). A chunk that fits is never retried larger.

    The retry happens after the ``except`` clause has ended, so the failed attempt's traceback (and the
    device tensors its frames hold) is gone before the next try.

    Parameters
    ----------
    fn
        The batch function, e.g. ``lambda part: runner.run_raw(part, channels=c, out_dtype=dt)``.
        It returns an array whose axis 0 matches its input's, or a tuple of such arrays and numbers
        (``run_raw``'s ``(y, clipped)``): arrays are concatenated, numbers summed.
    raw
        Windows ``(N, H, W, C)`` (the layout of :meth:`BatchRunner.run_raw`; only ``H`` and ``W`` are
        read, for the error message).
    min_batch
        Chunks of at most this many windows are not split further: their out-of-memory error is final.
    max_batch
        Largest chunk to try first (``None``: the whole batch), typically a previous call's
        :attr:`SplitResult.batch`.
    windows
        Grid position ``(row, col)`` of each window, used as the error's ``window``.
    device
        Device name, used in the error message only.

    Returns
    -------
    SplitResult
        ``(output, splits, batch)``.

    Raises
    ------
    tilegraph.errors.OutOfMemoryError
        A chunk of ``min_batch`` windows or fewer (a single window by default) still runs out of memory;
        the message gives the window size. Chained to the original error.
    Exception
        Any other error of ``fn`` propagates unchanged, except that an integer ``element`` attribute
        (:class:`tilegraph.infer.runner.BadOutput`) is shifted to index the whole batch, not the chunk.
    """
    if min_batch < 1:
        raise ValueError(f"min_batch must be >= 1, got {min_batch}")
    n = int(raw.shape[0])
    if n == 0:
        return SplitResult(fn(raw), 0, 0)
    size = n if max_batch is None else max(1, min(n, int(max_batch)))
    parts: list[np.ndarray] = []
    start = splits = largest = 0
    while start < n:
        stop = min(n, start + size)
        try:
            y = fn(raw[start:stop])
        except Exception as exc:
            if not is_oom(exc):
                element = getattr(exc, "element", None)
                if isinstance(element, int) and not isinstance(element, bool) and start:
                    exc.element = element + start
                raise
            if stop - start <= min_batch:
                raise _final_error(raw, start, stop, exc, windows, device) from exc
        else:
            parts.append(y)
            largest = max(largest, stop - start)
            start = stop
            continue
        # out of memory, and the chunk can still be split: retry outside the except clause
        free_device_cache()
        size = max(min_batch, (stop - start + 1) // 2)
        splits += 1
    return SplitResult(_combine(parts), splits, largest)


def _combine(parts: list):
    """Concatenate chunk outputs: arrays along axis 0; in tuples, arrays concatenated, numbers summed."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(
            _combine(list(items)) if isinstance(items[0], np.ndarray) else sum(items)
            for items in zip(*parts, strict=True)
        )
    return np.concatenate(parts, axis=0)


def _final_error(raw, start, stop, exc, windows, device) -> OutOfMemoryError:
    shape = tuple(int(v) for v in raw.shape)
    size = f"{shape[1]} x {shape[2]}" if len(shape) >= 3 else " x ".join(map(str, shape[1:]))
    count = stop - start
    what = f"a single {size} window" if count == 1 else f"a batch of {count} windows of {size}"
    where = f" on {device}" if device else ""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    window = None
    if windows is not None and start < len(windows):
        window = tuple(windows[start])
    return OutOfMemoryError(
        f"{what} ran out of memory{where} ({detail[:300]})",
        window=window,
        hint='use a smaller tile, or tile="auto" to size windows and batches to the device',
    )
