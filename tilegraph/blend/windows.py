"""Blend weights along one axis (pure numpy).

``linear`` and ``cosine`` are ramps across each actual overlap with ``r(t) + r(1 - t) = 1`` (a
partition of unity when overlap <= tile / 2; the merge normalises the weights anyway), with
weight 1 toward image borders. ``gaussian`` follows MONAI: ``exp(-x^2 / 2 sigma^2)`` about the window
centre, ``sigma = 0.125 * tile``, floored at 1e-3. ``crop`` is 1 on the kept interval, 0 elsewhere.

:func:`normalized_axis_weights` divides a window's weights by the sum over all windows covering each
output position. The 2-D weight of a window is the outer product of its two axis weights and the
windows form a grid, so the 2-D sum of weights is the product of the two axis sums: normalising each
axis makes the 2-D weights sum to one, and the merge needs no division.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tilegraph.plan.grid import AxisGrid

__all__ = ["axis_weights", "normalized_axis_weights", "ramp"]


def ramp(n: int, mode: str) -> np.ndarray:
    """Rising ramp over ``n`` pixels, ``r((u + 1/2) / n)``."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    if mode == "linear":
        return t
    if mode == "cosine":
        return np.sin(np.pi * t / 2) ** 2
    raise ValueError(f"no ramp for mode {mode!r}")


def axis_weights(axis: AxisGrid, i: int, mode: str) -> np.ndarray:
    """Weights of window ``i`` over its output footprint (length ``axis.out_tile``), float32."""
    n = axis.out_tile
    if mode == "crop":
        w = np.zeros(n, dtype=np.float32)
        lo, hi = axis.keep(i)
        start = axis.out_start(i)
        w[max(0, lo - start) : max(0, hi - start)] = 1.0
        return w
    if mode == "gaussian":
        sigma = 0.125 * n
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        w = np.exp(-(x**2) / (2 * sigma**2))
        return np.maximum(w, 1e-3).astype(np.float32)
    w = np.ones(n, dtype=np.float64)
    o = axis.out_overlap
    if o > 0:
        r = ramp(o, mode)
        if i > 0:
            w[:o] *= r
        if i < axis.count - 1:
            w[n - o :] *= r[::-1]
    return w.astype(np.float32)


@lru_cache(maxsize=4096)
def normalized_axis_weights(axis: AxisGrid, i: int, mode: str) -> np.ndarray:
    """Weights of window ``i`` divided by the summed weights of every window at each position.

    Length ``axis.out_tile``, float32, read-only (cached). Positions no window weights (beyond the
    output in ``crop`` mode) get 0.
    """
    n = axis.out_tile
    lo = axis.out_start(i)
    total = np.zeros(n, dtype=np.float64)
    for j in axis.covering(lo, lo + n, crop=False):
        oj = axis.out_start(j)
        a, b = max(lo, oj), min(lo + n, oj + n)
        if a < b:
            total[a - lo : b - lo] += axis_weights(axis, j, mode)[a - oj : b - oj]
    w = axis_weights(axis, i, mode).astype(np.float64)
    out = np.divide(w, total, out=np.zeros(n, dtype=np.float64), where=total > 0).astype(np.float32)
    out.flags.writeable = False
    return out
