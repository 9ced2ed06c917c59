"""Build one output box from the windows that cover it (pure numpy, no I/O).

The weighted sum runs in a fixed order (ascending window index) in float32, with weights normalised
per axis to sum to one, so the result does not depend on task order or placement.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tilegraph.blend.windows import normalized_axis_weights
from tilegraph.plan.plan import Plan

__all__ = ["blend_box", "crop_box", "window_region"]


def window_region(plan: Plan, index: int, y0: int, y1: int, x0: int, x1: int):
    """Slices of window ``index``'s output and of the box ``[y0:y1, x0:x1]`` where they intersect.

    Returns ``None`` when they do not intersect, else ``(win_slices, box_slices)`` where
    ``win_slices`` index the window's ``(rows, cols)`` and ``box_slices`` the box's.
    """
    w = plan.window(index)
    wy0, wx0 = plan.y.out_start(w.row), plan.x.out_start(w.col)
    oy, ox = plan.out_window_shape
    a0, a1 = max(y0, wy0), min(y1, wy0 + oy)
    b0, b1 = max(x0, wx0), min(x1, wx0 + ox)
    if a0 >= a1 or b0 >= b1:
        return None
    return (
        (slice(a0 - wy0, a1 - wy0), slice(b0 - wx0, b1 - wx0)),
        (slice(a0 - y0, a1 - y0), slice(b0 - x0, b1 - x0)),
    )


def blend_box(
    plan: Plan,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    read: Callable[[int, slice, slice], np.ndarray],
    *,
    transform: Callable[[int, np.ndarray, tuple[slice, slice]], np.ndarray] | None = None,
    mode: str | None = None,
) -> np.ndarray:
    """Blend the output box ``[y0:y1, x0:x1]``; returns ``(rows, cols, C')`` float32.

    Each window's region is weighted by its normalised axis weights
    (:func:`~tilegraph.blend.windows.normalized_axis_weights`), which sum to one over the windows,
    so the sum needs no division; only the rows and columns whose weight differs from 1 (the
    overlap bands) are multiplied. Regions from ``read`` are never modified.

    Parameters
    ----------
    plan
        The run's plan (its ``blend`` mode decides the weights).
    read
        ``read(index, rows, cols)`` returns window ``index``'s output region as ``(C', rows, cols)``
        float32 (rows/cols are slices in the window's output coordinates).
    transform
        Optional per-window correction ``transform(index, region, (rows, cols))`` applied before
        weighting (colour reconciliation).
    mode
        ``"crop"``, ``"linear"``, ``"cosine"`` or ``"gaussian"`` (default: the plan's).
    """
    mode = mode or plan.blend
    indices = plan.windows_for_box(y0, y1, x0, x1, crop=mode == "crop")
    acc: np.ndarray | None = None
    for index in indices:  # fixed ascending order
        sl = window_region(plan, index, y0, y1, x0, x1)
        if sl is None:
            continue
        (wr, wc), (br, bc) = sl
        w = plan.window(index)
        wy = normalized_axis_weights(plan.y, w.row, mode)[wr]
        wx = normalized_axis_weights(plan.x, w.col, mode)[wc]
        if not wy.any() or not wx.any():
            continue
        region = read(index, wr, wc)
        if transform is not None:
            region = transform(index, region, (wr, wc))
        if acc is None:
            acc = np.zeros((region.shape[0], y1 - y0, x1 - x0), dtype=np.float32)
        target: np.ndarray = acc
        if mode == "crop":
            mask = (wy[:, None] > 0) & (wx[None, :] > 0)
            target[:, br, bc] = np.where(mask, region, target[:, br, bc])
            continue
        for r0, r1, fy in _runs(wy):
            for c0, c1, fx in _runs(wx):
                dst = target[:, br.start + r0 : br.start + r1, bc.start + c0 : bc.start + c1]
                src = region[:, r0:r1, c0:c1]
                if fy is None and fx is None:
                    dst += src
                elif fx is None:
                    assert fy is not None
                    dst += src * fy[:, None]
                elif fy is None:
                    assert fx is not None
                    dst += src * fx[None, :]
                else:
                    dst += src * (fy[:, None] * fx[None, :])
    if acc is None:
        raise RuntimeError(f"no window covers output box {(y0, y1, x0, x1)}")
    return np.moveaxis(acc, 0, -1)


def _runs(weights: np.ndarray) -> list[tuple[int, int, np.ndarray | None]]:
    """Split axis weights into ``(lo, hi, factor)`` pieces; ``factor`` is ``None`` on the run of ones.

    Overlap bands (weights below 1) are multiplied; the interior, where a window alone covers the
    output, is added as is.
    """
    ones = np.flatnonzero(weights == 1)
    n = weights.size
    if ones.size == 0 or ones[-1] - ones[0] + 1 != ones.size:  # no single run of ones: weight it all
        return [(0, n, weights)]
    a, b = int(ones[0]), int(ones[-1]) + 1
    pieces = [(0, a, weights[:a]), (a, b, None), (b, n, weights[b:])]
    return [p for p in pieces if p[0] < p[1]]


def crop_box(
    plan: Plan,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    read: Callable[[int, slice, slice], np.ndarray],
) -> np.ndarray:
    """``crop`` mode without weights: copy each window's kept rectangle; returns ``(rows, cols, C')``.

    The kept parts of the windows tile the output exactly, so each output pixel is copied once, in
    the dtype ``read`` returns (no float round trip). ``read(index, rows, cols)`` returns ``(C', r, c)``.
    """
    out = None
    for index in plan.windows_for_box(y0, y1, x0, x1, crop=True):
        w = plan.window(index)
        ky0, ky1 = plan.y.keep(w.row)
        kx0, kx1 = plan.x.keep(w.col)
        a0, a1, b0, b1 = max(y0, ky0), min(y1, ky1), max(x0, kx0), min(x1, kx1)
        if a0 >= a1 or b0 >= b1:
            continue
        wy, wx = plan.y.out_start(w.row), plan.x.out_start(w.col)
        region = read(index, slice(a0 - wy, a1 - wy), slice(b0 - wx, b1 - wx))
        if out is None:
            out = np.empty((y1 - y0, x1 - x0, region.shape[0]), dtype=region.dtype)
        dst = out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0]
        # a plane at a time: numpy's transposing copy is several times slower
        for c in range(region.shape[0]):
            dst[..., c] = region[c]
    if out is None:
        raise RuntimeError(f"no window covers output box {(y0, y1, x0, x1)}")
    return out
