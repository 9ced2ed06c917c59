"""``multiband``: Laplacian-pyramid blending (Burt and Adelson) of the windows covering a box.

Each seam is a Burt-Adelson blend of the two windows with the crop mask (a straight cut at the plan's
seam line): band ``k`` of the Laplacian pyramid is cross-faded with the mask's Gaussian pyramid level
``k`` (a transition of about ``2^k`` px), so fine detail switches sharply and keeps its contrast while
low frequencies fade over the overlap. ``L = floor(log2(overlap / 8))`` levels (1 to 6) keep the widest
transition inside the overlap. Windows of a row are blended across the vertical seams first, then the
rows across the horizontal seams (a separable composition: exactly Burt-Adelson along every seam, a
blend of blends where four windows meet).

Outside its footprint a window is continued by its neighbours (the crop composite), so the blend of
two windows is the crop composite plus a correction computed from ``D = b - a`` on the overlap only::

    out = crop + collapse_k(W_k * L_k(D)) - D * [x >= cut],   W_k = G_k(mask)

``D`` is zero outside the overlap, so the pyramids are exact on the overlap plus ``2^(L+2)`` px of zeros
and the correction vanishes away from the overlap; windows that agree get no correction at all (exact).
Decimation grids are anchored at multiples of ``2^L`` in output coordinates and the vertical seams are
solved over whole window rows, so the result does not depend on the output chunking; along a horizontal
seam the pyramid needs :meth:`MultibandBlender.halo` px beyond the box.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from tilegraph.blend.abc import Blender, Box, WindowReader, WindowTransform
from tilegraph.blend.seam import read_region
from tilegraph.plan.grid import AxisGrid
from tilegraph.plan.plan import Plan

__all__ = ["MultibandBlender", "levels_for_overlap", "pyramid_correction"]

_W = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


def levels_for_overlap(overlap: int) -> int:
    """Pyramid levels for an overlap of ``overlap`` output px: ``floor(log2(overlap / 8))`` in ``[1, 6]``."""
    if overlap < 16:
        return 1
    return int(min(6, max(1, math.floor(math.log2(overlap / 8)))))


def _pad(a: np.ndarray, axis: int, n: int, mode: str) -> np.ndarray:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (n, n)
    if mode == "zero":
        return np.pad(a, widths)
    return np.pad(a, widths, mode="symmetric" if mode == "symmetric" else "edge")


def _reduce(a: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """Burt-Adelson REDUCE along ``axis`` (binomial 5-tap, keep even samples); length ``ceil(n / 2)``."""
    n = a.shape[axis]
    p = _pad(a, axis, 2, mode)
    m = (n + 1) // 2

    def sl(start: int) -> np.ndarray:
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, start + 2 * m - 1, 2)
        return p[tuple(idx)]

    return (
        (sl(0) + sl(4)) * np.float32(_W[0]) + (sl(1) + sl(3)) * np.float32(_W[1]) + sl(2) * np.float32(_W[2])
    )


def _expand(a: np.ndarray, axis: int, n: int, mode: str) -> np.ndarray:
    """Burt-Adelson EXPAND along ``axis`` to length ``n`` (polyphase form of 2 x the 5-tap kernel)."""
    p = _pad(a, axis, 1, mode)
    m = a.shape[axis]

    def sl(start: int, length: int) -> np.ndarray:
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, start + length)
        return p[tuple(idx)]

    even = (sl(0, m) + sl(2, m)) * np.float32(1.0 / 8) + sl(1, m) * np.float32(6.0 / 8)
    odd = (sl(1, m) + sl(2, m)) * np.float32(0.5)
    shape = list(a.shape)
    shape[axis] = 2 * m
    out = np.empty(shape, dtype=a.dtype)
    idx_e = [slice(None)] * a.ndim
    idx_o = [slice(None)] * a.ndim
    idx_e[axis] = slice(0, 2 * m, 2)
    idx_o[axis] = slice(1, 2 * m, 2)
    out[tuple(idx_e)] = even
    out[tuple(idx_o)] = odd
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(0, n)
    return out[tuple(idx)]


def pyramid_correction(d: np.ndarray, cut: int, levels: int, *, along_mode: str = "symmetric") -> np.ndarray:
    """Correction ``collapse_k(W_k L_k(d)) - d [x >= cut]`` of a two-window blend across the last axis.

    ``d`` is ``(C, n_along, n_across)`` float32, zero outside the overlap and beyond its ends across
    (padded with zeros there: exact); ``cut`` indexes the first column of the second window. The mask
    pyramid ``W_k`` is 1-D (the cut is straight). Along the seam the array is continued by
    ``along_mode`` (``"symmetric"``) at its ends, which the caller keeps beyond the pixels it uses.
    """
    n_across = d.shape[2]
    mask = (np.arange(n_across) >= cut).astype(np.float32)
    gs, ws = [d], [mask]
    for _ in range(levels):
        g = _reduce(_reduce(gs[-1], 2, "zero"), 1, along_mode)
        gs.append(g)
        ws.append(_reduce(ws[-1], 0, "edge"))
    c = gs[-1] * ws[-1][None, None, :]
    for k in range(levels - 1, -1, -1):
        shape = gs[k].shape
        up_g = _expand(_expand(gs[k + 1], 2, shape[2], "zero"), 1, shape[1], along_mode)
        up_c = _expand(_expand(c, 2, shape[2], "zero"), 1, shape[1], along_mode)
        c = (gs[k] - up_g) * ws[k][None, None, :] + up_c
    return c - d * mask[None, None, :]


def _seam_domain(axis: AxisGrid, i: int, levels: int) -> tuple[int, int, int, int, int]:
    """``(d0, d1, o0, o1, cut)``: the aligned domain across seam ``i``, its overlap and cut (output px)."""
    o0, o1 = axis.out_start(i + 1), min(axis.footprint(i)[1], axis.out_size)
    step = 2**levels
    margin = 4 * step
    d0 = ((o0 - margin) // step) * step
    d1 = o1 + margin
    return d0, d1, o0, o1, axis.cut(i)


class MultibandBlender(Blender):
    """Laplacian-pyramid blending along every seam (see the module notes).

    Attributes
    ----------
    levels : int or None
        Pyramid levels (default: from the overlap, :func:`levels_for_overlap`).
    """

    name: ClassVar[str] = "multiband"
    levels: int | None = None

    def _levels(self, axis: AxisGrid) -> int:
        return self.levels if self.levels is not None else levels_for_overlap(axis.out_overlap)

    def halo(self, plan: Plan) -> int:
        """Pyramid support along a horizontal seam (``8 * 2^L``) plus the reach of seam corrections."""
        ly, lx = self._levels(plan.y), self._levels(plan.x)
        return max(8 * 2**ly, 4 * 2**lx + plan.x.out_overlap, 4 * 2**ly + plan.y.out_overlap)

    def describe(self) -> dict:
        return {"mode": self.name, "levels": self.levels}

    # ------------------------------------------------------------------ step 1: one window row
    def _row(
        self,
        plan: Plan,
        r: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        read: WindowReader,
        transform: WindowTransform | None,
        cache: dict[tuple[int, int], np.ndarray | None],
    ) -> np.ndarray:
        """Window row ``r`` blended across its vertical seams over ``rows`` x ``cols``: ``(C, h, w)``."""
        (ya, yb), (xa, xb) = rows, cols
        ncols = plan.x.count
        out: np.ndarray | None = None
        for c in plan.x.covering(xa, xb, crop=True):
            k0, k1 = plan.x.keep(c)
            a, b = max(xa, k0), min(xb, k1)
            if a >= b:
                continue
            part = read_region(plan, read, transform, r * ncols + c, ya, yb, a, b)
            if out is None:
                out = np.empty((part.shape[0], yb - ya, xb - xa), dtype=np.float32)
            out[:, :, a - xa : b - xa] = part
        assert out is not None
        lx = self._levels(plan.x)
        fy0, fy1 = plan.y.footprint(r)
        for j in range(ncols - 1):
            d0, d1, o0, o1, cut = _seam_domain(plan.x, j, lx)
            lo, hi = max(d0, 0), min(d1, plan.x.out_size)
            if hi <= xa or lo >= xb:
                continue
            key = (r, j)
            if key not in cache:  # the whole window row's seam: the same whatever the box
                left = read_region(plan, read, transform, r * ncols + j, fy0, fy1, o0, o1)
                right = read_region(plan, read, transform, r * ncols + j + 1, fy0, fy1, o0, o1)
                diff = np.asarray(right, dtype=np.float32) - np.asarray(left, dtype=np.float32)
                if not diff.any():
                    cache[key] = None
                else:
                    d = np.zeros((diff.shape[0], fy1 - fy0, d1 - d0), dtype=np.float32)
                    d[:, :, o0 - d0 : o1 - d0] = diff
                    cache[key] = pyramid_correction(d, cut - d0, lx)
            q = cache[key]
            if q is None:
                continue
            a, b = max(xa, lo), min(xb, hi)
            out[:, :, a - xa : b - xa] += q[:, ya - fy0 : yb - fy0, a - d0 : b - d0]
        return out

    # ------------------------------------------------------------------ step 2: rows
    def blend(
        self,
        plan: Plan,
        box: Box,
        read: WindowReader,
        *,
        transform: WindowTransform | None = None,
        strips: Any = None,
    ) -> np.ndarray:
        y0, y1, x0, x1 = box
        ly = self._levels(plan.y)
        step = 2**ly
        hx = 8 * step
        xa = max(0, ((x0 - hx) // step) * step)
        xb = min(plan.x.out_size, x1 + hx)
        rows_n = plan.y.count
        cache: dict[tuple[int, int], np.ndarray | None] = {}
        out: np.ndarray | None = None
        for r in plan.y.covering(y0, y1, crop=True):
            k0, k1 = plan.y.keep(r)
            a, b = max(y0, k0), min(y1, k1)
            if a >= b:
                continue
            part = self._row(plan, r, (a, b), (x0, x1), read, transform, cache)
            if out is None:
                out = np.empty((part.shape[0], y1 - y0, x1 - x0), dtype=np.float32)
            out[:, a - y0 : b - y0] = part
        assert out is not None
        for r in range(rows_n - 1):
            d0, d1, o0, o1, cut = _seam_domain(plan.y, r, ly)
            lo, hi = max(d0, 0), min(d1, plan.y.out_size)
            if hi <= y0 or lo >= y1:
                continue
            upper = self._row(plan, r, (o0, o1), (xa, xb), read, transform, cache)
            lower = self._row(plan, r + 1, (o0, o1), (xa, xb), read, transform, cache)
            diff = lower - upper
            if not diff.any():
                continue
            d = np.zeros((diff.shape[0], xb - xa, d1 - d0), dtype=np.float32)
            d[:, :, o0 - d0 : o1 - d0] = np.swapaxes(diff, 1, 2)
            q = np.swapaxes(pyramid_correction(d, cut - d0, ly), 1, 2)  # (C, rows, cols)
            a, b = max(y0, lo), min(y1, hi)
            out[:, a - y0 : b - y0] += q[:, a - d0 : b - d0, x0 - xa : x1 - xa]
        return np.moveaxis(out, 0, -1)
