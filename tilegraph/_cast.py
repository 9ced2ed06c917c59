"""Casts shared by the stages (private): fast float16 <-> float32, and the one final conversion to the output dtype.

numpy converts float16 one element at a time (2 to 4 ns per element on the CI machine); torch uses
the CPU's F16C instructions (about 0.1 ns). The tile store of 8-bit outputs is float16, so every
window crosses this conversion once on the way in and once or more on the way out. torch is used
when the process has already imported it (a worker running a torch model has); it is never
imported for this alone (about 3 s and 200 MB in a fresh worker), and numpy gives the same results.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["astype_float", "c_contiguous", "to_output_dtype"]

_GRAIN = 32768  # at::internal::GRAIN_SIZE


def _torch():
    """torch if this process imported it already, else ``None``."""
    return sys.modules.get("torch")


def astype_float(a: np.ndarray, dtype) -> np.ndarray:
    """``a.astype(dtype)`` for float16 <-> float32, bit-identical to numpy, faster through torch.

    Always returns a new, writable array (other dtype pairs go through numpy's ``astype``).
    """
    dtype = np.dtype(dtype)
    pair = {a.dtype.name, dtype.name}
    torch = _torch() if pair == {"float16", "float32"} and a.size >= 4096 else None
    if torch is None:
        return a.astype(dtype)
    if not a.flags.writeable:  # torch.from_numpy warns on read-only arrays
        a = np.array(a)
    out = np.empty(a.shape, dtype=dtype)
    src = torch.from_numpy(np.ascontiguousarray(a)).reshape(-1)
    dst = torch.from_numpy(out).reshape(-1)
    # pieces no larger than torch's parallel grain (32768) run on this thread: a parallel copy wakes
    # the OpenMP pool, whose threads then spin, measured at 6x the CPU of the copy itself
    for i in range(0, src.numel(), _GRAIN):
        dst[i : i + _GRAIN].copy_(src[i : i + _GRAIN])
    return out


def to_output_dtype(block: np.ndarray, dtype, *, integer_scaled: bool = True) -> tuple[np.ndarray, int]:
    """Round and clip a float block to ``dtype``; returns ``(array, n_clipped)``.

    Integer outputs are ``round(y * max)`` when the model works in ``[0, 1]`` (``integer_scaled``),
    else ``round(y)``. Clipping happens only here, and the number of clipped values is returned.
    A block already in ``dtype`` is returned as it is.
    """
    dtype = np.dtype(dtype)
    if block.dtype == dtype:
        return block, 0
    if dtype.kind == "f":
        out = block.astype(dtype)
        return out, int(np.count_nonzero(~np.isfinite(out) & np.isfinite(block)))
    info = np.iinfo(dtype)
    # one temporary, rounded and clipped in place; the values are counted only when some lie outside
    x = np.multiply(block, np.float32(info.max if integer_scaled else 1), dtype=np.float32)
    np.rint(x, out=x)
    clipped = 0
    if x.size and (float(x.min()) < info.min or float(x.max()) > info.max):
        clipped = int(np.count_nonzero((x < info.min) | (x > info.max)))
        np.clip(x, info.min, info.max, out=x)
    return x.astype(dtype), clipped


def c_contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` in C order: itself if it is, else a copy made one channel plane at a time.

    Blends build channels-first blocks and hand over their channels-last view (and the reverse for
    channels-first outputs); numpy's generic transposing copy of such a view runs at 3 to 4 ns per
    element, a plane at a time at about 0.5 (and a codec handed the view makes the slow copy itself).
    The channel axis is the first or last of a 3-D block, whichever is short.
    """
    if a.flags.c_contiguous:
        return a
    if a.ndim != 3 or min(a.shape[0], a.shape[2]) > 64:
        return np.ascontiguousarray(a)
    out = np.empty(a.shape, dtype=a.dtype)
    if a.shape[2] <= a.shape[0]:
        for c in range(a.shape[2]):
            out[..., c] = a[..., c]
    else:
        for c in range(a.shape[0]):
            out[c] = a[c]
    return out
