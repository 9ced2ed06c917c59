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

__all__ = ["is_oom", "run_splitting", "run_window_split", "SplitResult", "free_device_cache"]

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
    single: Callable[[int, np.ndarray], np.ndarray | tuple] | None = None,
    per_window: Sequence | None = None,
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
    single
        ``single(i, raw[i:i + 1])`` computes window ``i`` alone another way (split into sub-windows,
        :func:`run_window_split`) when it does not fit even alone; without it that is final.
    per_window
        One item per window; when given, ``fn`` is called as ``fn(part, per_window[start:stop])``.

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
        return SplitResult(fn(raw) if per_window is None else fn(raw, per_window), 0, 0)  # type: ignore[call-arg]
    size = n if max_batch is None else max(1, min(n, int(max_batch)))
    parts: list = []
    start = splits = largest = 0
    while start < n:
        stop = min(n, start + size)
        try:
            y = fn(raw[start:stop]) if per_window is None else fn(raw[start:stop], per_window[start:stop])  # type: ignore[call-arg]
        except Exception as exc:
            if not is_oom(exc):
                element = getattr(exc, "element", None)
                if isinstance(element, int) and not isinstance(element, bool) and start:
                    exc.element = element + start  # type: ignore[attr-defined]
                raise
            if stop - start <= min_batch:
                if single is None or stop - start != 1:
                    raise _final_error(raw, start, stop, exc, windows, device) from exc
                failed: int | None = start  # not the exception: its traceback holds device memory
            else:
                failed = None
        else:
            parts.append(y)
            largest = max(largest, stop - start)
            start = stop
            continue
        if failed is not None:  # one window alone does not fit: the caller splits it (outside the except)
            assert single is not None
            free_device_cache()
            parts.append(single(failed, raw[failed : failed + 1]))
            splits += 1
            start += 1
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


def _axis_parts(length: int, halo: int, align: int) -> list[tuple[int, int, int, int]] | None:
    """Split ``[0, length)`` in two: ``(read_lo, read_hi, keep_lo, keep_hi)`` per part, or ``None``.

    Cuts, reads and keeps fall on multiples of ``align``; each part reads ``halo`` (rounded up to
    ``align``) beyond what it keeps, inside the window.
    """
    h = -(-halo // align) * align
    cut = (length // 2) // align * align
    if cut <= 0 or cut >= length or (cut + h >= length and cut - h <= 0):
        return None  # no smaller part than the window itself
    return [(0, min(length, cut + h), 0, cut), (max(0, cut - h), length, cut, length)]


def run_window_split(
    fn: Callable[[np.ndarray, tuple[slice, slice] | None], tuple],
    raw: np.ndarray,
    *,
    halo: int,
    align: int,
    scale,
    count_box: tuple[slice, slice] | None = None,
    window: tuple[int, int] | None = None,
    device: str | None = None,
    exc: BaseException | None = None,
) -> tuple:
    """Run one window ``raw`` ``(1, H, W, C)`` that does not fit, as overlapping sub-windows.

    The window is cut in two along its longer axis (then again, recursively, while a part still runs
    out of memory); each part reads ``halo`` source pixels of context beyond the part it keeps, and
    the kept parts of the outputs are stitched as ``crop`` stitches windows. The result equals the
    whole window's output wherever the model's receptive field fits in ``halo`` (exact for ``crop``
    when the declared halo, or half the overlap, covers it).

    Parameters
    ----------
    fn
        ``fn(part, count_box)`` runs one raw part ``(1, h, w, C)`` and returns ``(y, clipped)`` with
        ``y`` ``(1, C', h*s, w*s)``, counting clipped values inside ``count_box`` (output slices of
        the part) when it is not ``None`` (``BatchRunner.run_raw`` with its options bound).
    halo
        Context in source pixels (the model's declared halo, else half the overlap).
    count_box
        Output slices of the whole window where clipped values count (``None``: everywhere).
    align
        Sub-window starts and sizes are multiples of this (the model's stride and down-scale).
    scale
        Output pixels per source pixel (a :class:`fractions.Fraction` or number).

    Returns
    -------
    tuple
        ``(y, clipped)`` for the whole window; ``clipped`` sums the parts' counts.

    Raises
    ------
    tilegraph.errors.OutOfMemoryError
        Parts as small as the alignment allows still do not fit.
    """
    _, h, w, _ = raw.shape
    axis = 1 if h >= w else 2
    parts = _axis_parts(raw.shape[axis], halo, align)
    if parts is None:
        err = _final_error(
            raw, 0, 1, exc or MemoryError("out of memory"), [window] if window else None, device
        )
        raise err
    outs = []
    clipped = 0
    for r0, r1, k0, k1 in parts:
        part = raw[:, r0:r1] if axis == 1 else raw[:, :, r0:r1]
        part = np.ascontiguousarray(part)
        a, b = int((k0 - r0) * scale), int((k1 - r0) * scale)
        box = None
        if count_box is not None:  # the window's box, cut to what this part keeps, in the part's coordinates
            along = count_box[axis - 1]
            lo, hi, _ = along.indices(1 << 62)
            off = int(r0 * scale)
            cut = slice(max(lo - off, a), max(min(hi - off, b), max(lo - off, a)))
            box = (cut, count_box[1]) if axis == 1 else (count_box[0], cut)
        else:
            box = (slice(a, b), slice(None)) if axis == 1 else (slice(None), slice(a, b))
        try:
            y, c = fn(part, box)
        except Exception as inner:
            if not is_oom(inner):
                raise
            y = None
            failure = inner
        if y is None:
            free_device_cache()
            y, c = run_window_split(
                fn,
                part,
                halo=halo,
                align=align,
                scale=scale,
                count_box=box,
                window=window,
                device=device,
                exc=failure,
            )
        outs.append(y[:, :, a:b] if axis == 1 else y[:, :, :, a:b])
        clipped += int(c)
    return np.concatenate(outs, axis=axis + 1), clipped
