"""``detail="preserve"`` for the averaging modes: texture keeps its contrast where windows are mixed.

Averaging two windows whose fine detail is independent (invented texture, noise) with weights ``alpha``
and ``1 - alpha`` scales the detail's standard deviation by ``sqrt(alpha^2 + (1 - alpha)^2)`` (0.71 mid
overlap): a soft band along every seam. With ``detail="preserve"`` each window is split into a low-pass
``G_sigma * y_i`` and its high-pass remainder; the low-pass is blended as before and the high-pass with
weights normalised to keep its variance (after Heitz and Neyret's variance-preserving blending)::

    out = sum_i w_i y_i + (f - 1) sum_i w_i HP_i,
    f^2 = sum_i w_i V_i / sum_ij w_i w_j C_ij   (clipped to [1, 1 / sum_i w_i^2])

with ``V_i``, ``C_ij`` the local (Gaussian-weighted) variances and covariances of the high-passes: for
independent detail ``f = 1 / sqrt(alpha^2 + (1 - alpha)^2)``; where windows agree ``C_ij = V_i`` and
``f = 1`` (windows that agree are left as they are). Beyond its footprint a window is continued by its
neighbours (the crop composite), so its high-pass near its own edge is not invented. The box is computed
with a halo of ``4 sigma + 4 sigma_m`` px, so the result does not depend on the output chunking.

The classes here are the built-in ``linear``, ``cosine`` and ``gaussian`` modes with that option; with
``detail="none"`` (the default) they are exactly the built-in ones.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from scipy.ndimage import gaussian_filter

from tilegraph.blend.abc import Box, WindowReader, WindowTransform
from tilegraph.blend.builtin import CosineBlender, GaussianBlender, LinearBlender, WeightedBlender
from tilegraph.blend.merge import blend_box
from tilegraph.blend.seam import read_region
from tilegraph.blend.windows import normalized_axis_weights
from tilegraph.errors import InputError
from tilegraph.plan.grid import AxisGrid
from tilegraph.plan.plan import Plan

__all__ = [
    "DetailMixin",
    "DetailLinearBlender",
    "DetailCosineBlender",
    "DetailGaussianBlender",
    "variance_factor",
    "detail_mode",
]

DETAIL_MODES = ("none", "preserve")


def detail_mode(options: Any) -> str:
    """The ``detail`` option of blend options (``"none"`` until :class:`BlendOptions` has the field)."""
    mode = getattr(options, "detail", "none") or "none"
    if mode not in DETAIL_MODES:
        raise InputError(f"blend detail must be one of {DETAIL_MODES}, got {mode!r}")
    return str(mode)


def variance_factor(weights: list[np.ndarray], rho: dict[tuple[int, int], float]) -> np.ndarray:
    """Per-pixel factor ``f`` restoring the high-pass variance of a weighted mix (module notes).

    ``weights``: normalised ``(h, w)`` weights of the windows (same order as the indices of ``rho``);
    ``rho[i, j]``: correlation of the high-passes of windows ``i < j`` (missing pairs do not overlap).
    ``f^2 = 1 / (sum_i w_i^2 + sum_{i != j} w_i w_j rho_ij)``, at least 1; exactly 1 where that is
    within float rounding of 1 (windows that agree).
    """
    shape = weights[0].shape
    den = np.zeros(shape)
    total = np.zeros(shape)
    for i, wi in enumerate(weights):
        w64 = wi.astype(np.float64)
        den += w64 * w64
        total += w64
        for j in range(i + 1, len(weights)):
            r = rho.get((i, j))
            if r is not None:
                den += 2.0 * r * w64 * weights[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        f2 = np.where(den > 0, total * total / den, 1.0)
    f2 = np.maximum(f2, 1.0)
    f2 = np.where(f2 <= 1.0 + 1e-5, 1.0, f2)
    return np.sqrt(f2).astype(np.float32)


class DetailMixin:
    """Adds ``detail="preserve"`` to a :class:`~tilegraph.blend.builtin.WeightedBlender` (module notes).

    Attributes
    ----------
    detail_sigma : float
        Gaussian sigma (px) splitting low-pass from high-pass.
    """

    name: ClassVar[str]
    detail_sigma: float = 4.0
    options: Any

    def _detail_halo(self) -> int:
        return math.ceil(4 * self.detail_sigma)

    def halo(self, plan: Plan) -> int:
        """The high-pass filter's support when ``detail="preserve"`` (and the mode's own halo)."""
        own = int(super().halo(plan))  # type: ignore[misc]
        return max(own, self._detail_halo()) if detail_mode(self.options) == "preserve" else own

    def detail_weights(self, axis: AxisGrid, i: int) -> np.ndarray:
        """Weights of window ``i`` over its footprint along ``axis`` for mixing the high-pass."""
        return normalized_axis_weights(axis, i, self.name)

    def describe(self) -> dict:
        d: dict = {**super().describe(), "detail": detail_mode(self.options)}  # type: ignore[misc]
        if d["detail"] == "preserve":
            d.update(detail_sigma=self.detail_sigma)
        return d

    def blend(
        self,
        plan: Plan,
        box: Box,
        read: WindowReader,
        *,
        transform: WindowTransform | None = None,
        strips: Any = None,
    ) -> np.ndarray:
        base = super().blend(plan, box, read, transform=transform, strips=strips)  # type: ignore[misc]
        if detail_mode(self.options) != "preserve":
            return base
        y0, y1, x0, x1 = box
        h = self._detail_halo()
        oh, ow = plan.out_shape
        ey0, ey1, ex0, ex1 = max(0, y0 - h), min(oh, y1 + h), max(0, x0 - h), min(ow, x1 + h)
        mosaic = np.moveaxis(
            blend_box(plan, ey0, ey1, ex0, ex1, read, transform=transform, mode="crop"), -1, 0
        )
        bh, bw = y1 - y0, x1 - x0
        wins = []  # (index, (a0, a1, b0, b1) inside the box, weight, high-pass) of windows weighting the box
        for index in plan.windows_for_box(y0, y1, x0, x1, crop=False):
            win = plan.window(index)
            fy0, fy1 = plan.y.footprint(win.row)
            fx0, fx1 = plan.x.footprint(win.col)
            a0, a1, b0, b1 = max(y0, fy0), min(y1, fy1), max(x0, fx0), min(x1, fx1)
            if a0 >= a1 or b0 >= b1:
                continue
            sy, sx = plan.y.out_start(win.row), plan.x.out_start(win.col)
            wy = self.detail_weights(plan.y, win.row)[a0 - sy : a1 - sy]
            wx = self.detail_weights(plan.x, win.col)[b0 - sx : b1 - sx]
            if not (wy.any() and wx.any()):
                continue
            # the window continued by the crop composite beyond its footprint, over its part of the box
            # plus the filter's support (inside the halo)
            g0, g1, k0, k1 = max(ey0, a0 - h), min(ey1, a1 + h), max(ex0, b0 - h), min(ex1, b1 + h)
            ext = mosaic[:, g0 - ey0 : g1 - ey0, k0 - ex0 : k1 - ex0].copy()
            f0, f1, q0, q1 = max(g0, fy0), min(g1, fy1), max(k0, fx0), min(k1, fx1)
            ext[:, f0 - g0 : f1 - g0, q0 - k0 : q1 - k0] = read_region(
                plan, read, transform, index, f0, f1, q0, q1
            )
            low = gaussian_filter(ext, (0, self.detail_sigma, self.detail_sigma), mode="reflect")
            hp = (ext - low)[:, a0 - g0 : a1 - g0, b0 - k0 : b1 - k0].astype(np.float32)
            wins.append((index, (a0, a1, b0, b1), (wy[:, None] * wx[None, :]).astype(np.float32), hp))
        if len(wins) < 2:
            return base
        total = np.zeros((bh, bw))
        den = np.zeros((bh, bw))
        mix = np.zeros((base.shape[-1], bh, bw), dtype=np.float32)
        for _, (a0, a1, b0, b1), w, hp in wins:
            sl = (slice(a0 - y0, a1 - y0), slice(b0 - x0, b1 - x0))
            total[sl] += w
            den[sl] += w.astype(np.float64) ** 2
            mix[(slice(None), *sl)] += w[None] * hp
        for i in range(len(wins)):
            for j in range(i + 1, len(wins)):
                (ia, (a0, a1, b0, b1), wa, _), (ib, (c0, c1, d0, d1), wb, _) = wins[i], wins[j]
                r0, r1, s0, s1 = max(a0, c0), min(a1, c1), max(b0, d0), min(b1, d1)
                if r0 >= r1 or s0 >= s1:
                    continue
                rho = self._pair_correlation(plan, ia, ib, read, transform)
                if rho is None or rho == 0.0:
                    continue
                pa = wa[r0 - a0 : r1 - a0, s0 - b0 : s1 - b0].astype(np.float64)
                pb = wb[r0 - c0 : r1 - c0, s0 - d0 : s1 - d0]
                den[r0 - y0 : r1 - y0, s0 - x0 : s1 - x0] += 2.0 * rho * pa * pb
        with np.errstate(divide="ignore", invalid="ignore"):
            f2 = np.where(den > 0, total * total / den, 1.0)
        f2 = np.maximum(f2, 1.0)
        f2 = np.where(f2 <= 1.0 + 1e-5, 1.0, f2)  # windows that agree (up to float rounding): untouched
        f = np.sqrt(f2).astype(np.float32)
        if not (f != 1.0).any():
            return base
        return base + np.moveaxis((f - 1.0)[None] * mix, 0, -1).astype(np.float32)

    def _pair_correlation(
        self, plan: Plan, a: int, b: int, read: WindowReader, transform: WindowTransform | None
    ) -> float | None:
        """Correlation (clipped to [0, 1]) of two windows' high-passes over their shared footprint, less
        ``max(2, overlap / 8)`` px at every end (where windows show their own borders); ``None`` if they
        do not overlap. Depends only on the pair, so every box gets the same value."""
        wa, wb = plan.window(a), plan.window(b)
        ky = max(2, plan.y.out_overlap // 8)
        kx = max(2, plan.x.out_overlap // 8)
        y0 = max(plan.y.footprint(wa.row)[0], plan.y.footprint(wb.row)[0])
        y1 = min(plan.y.footprint(wa.row)[1], plan.y.footprint(wb.row)[1])
        x0 = max(plan.x.footprint(wa.col)[0], plan.x.footprint(wb.col)[0])
        x1 = min(plan.x.footprint(wa.col)[1], plan.x.footprint(wb.col)[1])
        if y1 <= y0 or x1 <= x0:
            return None
        if y1 - y0 > 2 * ky + 2:
            y0, y1 = y0 + ky, y1 - ky
        if x1 - x0 > 2 * kx + 2:
            x0, x1 = x0 + kx, x1 - kx
        hp = []
        for index in (a, b):
            region = read_region(plan, read, transform, index, y0, y1, x0, x1).astype(np.float64)
            hp.append(
                region - gaussian_filter(region, (0, self.detail_sigma, self.detail_sigma), mode="reflect")
            )
        saa, sbb, sab = float((hp[0] ** 2).sum()), float((hp[1] ** 2).sum()), float((hp[0] * hp[1]).sum())
        if saa <= 0 or sbb <= 0:
            return 1.0
        return float(min(1.0, max(0.0, sab / math.sqrt(saa * sbb))))


class DetailLinearBlender(DetailMixin, LinearBlender):
    """``linear`` with the ``detail`` option."""


class DetailCosineBlender(DetailMixin, CosineBlender):
    """``cosine`` with the ``detail`` option."""


class DetailGaussianBlender(DetailMixin, GaussianBlender):
    """``gaussian`` with the ``detail`` option."""


_ = WeightedBlender  # the base these modes share
