"""Blend weights along one axis (pure numpy, plan geometry: the blend modes and the QA share them).

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

__all__ = [
    "axis_weights",
    "heaviside_profile",
    "normalized_axis_weights",
    "ramp",
    "routed_profile",
    "step_profile",
]


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


def heaviside_profile(half: int) -> np.ndarray:
    """A cut on the seam line: ``2 half`` samples, 0 before the line and 1 from it (float64)."""
    return (np.arange(2 * half) >= half).astype(np.float64)


def routed_profile(axis: AxisGrid, half: int) -> np.ndarray:
    """A cut somewhere in the overlap (``seam``, ``poisson``): 0 before the overlap, 1 after it and NaN
    (unknown) across it, ``2 half`` samples centred on the seam line."""
    s = heaviside_profile(half)
    reach = -(-axis.out_overlap // 2)
    s[max(0, half - reach) : half + reach] = np.nan
    return s


def step_profile(axis: AxisGrid, mode: str, half: int) -> np.ndarray:
    """Response of ``crop``, ``linear``, ``cosine`` or ``gaussian`` to a unit step between two windows.

    ``s[half + v]`` (``v = -half .. half - 1``) is the output at offset ``v`` from the middle seam line of
    ``axis`` when the window before it outputs 0 and the one after it 1 (float64).
    """
    if axis.count < 2 or mode == "crop":
        return heaviside_profile(half)
    line = (axis.count - 1) // 2
    idx = np.arange(axis.cut(line) - half, axis.cut(line) + half)
    w = normalized_axis_weights(axis, line + 1, mode)
    rel = idx - axis.out_start(line + 1)
    ok = (rel >= 0) & (rel < w.size)
    s = np.where(rel >= w.size, 1.0, 0.0)
    s[ok] = w[rel[ok]]
    return s.astype(np.float64)
