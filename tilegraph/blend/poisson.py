"""``poisson``: optimal cuts (``seam``), then the mismatch along every cut removed by a membrane per window.

The strip pass is :class:`~tilegraph.blend.seam.SeamBlender`'s, and also records the mismatch
``D = b - a`` along each cut (averaged over the feather width across it). Every window ``i`` then gets a
smooth correction ``delta_i``: the harmonic function (Laplace's equation, as in Poisson image editing's
correction form) on the window's crop rectangle whose values just outside each side shared with a
neighbour are half the mismatch with that neighbour (``+D/2`` toward ``b``, ``-D/2`` toward ``a``, so both
sides meet half-way), with zero flux across sides on the image border. The mismatch is low-passed along
the cut (``smooth`` px) first, so only shading is corrected: texture that differs between windows stays
single-source. Each solve is one rectangle (DST-I per Dirichlet axis, DCT-II per Neumann axis, a mirrored
DST-I for a mixed axis): O(S^2 log S) per window, no solve spans the image, and a blend task solves only
the windows its box needs. Outside its rectangle (the feather and where a cut bends into the neighbour's
rectangle) a window's correction is continued by its nearest value.

Windows that agree have no mismatch and are left as they are; the result does not depend on the output
chunking.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy import fft
from scipy.ndimage import gaussian_filter1d

from tilegraph.blend.abc import Box, Strip, WindowReader, WindowTransform, overlap_strips
from tilegraph.blend.seam import SeamBlender, SeamPath, compose, read_region, seam_layout
from tilegraph.plan.plan import Plan

__all__ = ["PoissonBlender", "membrane"]


def _eig_dst(n: int) -> np.ndarray:
    return 2.0 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1)) - 2.0


def _eig_dct(n: int) -> np.ndarray:
    return 2.0 * np.cos(np.pi * np.arange(n) / n) - 2.0


def membrane(
    shape: tuple[int, int],
    *,
    top: np.ndarray | None,
    bottom: np.ndarray | None,
    left: np.ndarray | None,
    right: np.ndarray | None,
) -> np.ndarray:
    """Harmonic ``(C, ny, nx)`` on a rectangle from the values just outside its sides.

    ``top``/``bottom`` are ``(C, nx)`` values on the rows just above/below, ``left``/``right`` ``(C, ny)``
    on the columns just left/right of the rectangle (Dirichlet); ``None`` is a side without flux
    (Neumann). The discrete 5-point Laplacian is solved exactly (float64).
    """
    ny, nx = shape
    sides = [s for s in (top, bottom, left, right) if s is not None]
    if not sides:
        c = 1
        return np.zeros((c, ny, nx))
    c = sides[0].shape[0]
    # a mixed axis (one Dirichlet side, one Neumann) is mirrored about its Neumann side
    flip_y = (top is None) != (bottom is None)
    flip_x = (left is None) != (right is None)
    my, mx = (2 * ny if flip_y else ny), (2 * nx if flip_x else nx)

    def along_x(v: np.ndarray | None) -> np.ndarray | None:
        if v is None or not flip_x:
            return v
        return (
            np.concatenate([v, v[:, ::-1]], axis=1)
            if left is not None
            else np.concatenate([v[:, ::-1], v], axis=1)
        )

    def along_y(v: np.ndarray | None) -> np.ndarray | None:
        if v is None or not flip_y:
            return v
        return (
            np.concatenate([v, v[:, ::-1]], axis=1)
            if top is not None
            else np.concatenate([v[:, ::-1], v], axis=1)
        )

    t, b = along_x(top), along_x(bottom)
    lft, rgt = along_y(left), along_y(right)
    if flip_y:  # the Dirichlet side is duplicated at the mirrored end
        t, b = (t, t) if t is not None else (b, b)
    if flip_x:
        lft, rgt = (lft, lft) if lft is not None else (rgt, rgt)
    rhs = np.zeros((c, my, mx))
    if t is not None:
        rhs[:, 0, :] -= t
    if b is not None:
        rhs[:, -1, :] -= b
    if lft is not None:
        rhs[:, :, 0] -= lft
    if rgt is not None:
        rhs[:, :, -1] -= rgt
    dir_y, dir_x = t is not None, lft is not None
    ty = (
        (lambda a: fft.dst(a, type=1, axis=1, norm="ortho"))
        if dir_y
        else (lambda a: fft.dct(a, type=2, axis=1, norm="ortho"))
    )
    tyi = (
        (lambda a: fft.dst(a, type=1, axis=1, norm="ortho"))
        if dir_y
        else (lambda a: fft.idct(a, type=2, axis=1, norm="ortho"))
    )
    tx = (
        (lambda a: fft.dst(a, type=1, axis=2, norm="ortho"))
        if dir_x
        else (lambda a: fft.dct(a, type=2, axis=2, norm="ortho"))
    )
    txi = (
        (lambda a: fft.dst(a, type=1, axis=2, norm="ortho"))
        if dir_x
        else (lambda a: fft.idct(a, type=2, axis=2, norm="ortho"))
    )
    ly = _eig_dst(my) if dir_y else _eig_dct(my)
    lx = _eig_dst(mx) if dir_x else _eig_dct(mx)
    lam = ly[:, None] + lx[None, :]
    hat = tx(ty(rhs))
    zero = lam == 0
    lam = np.where(zero, 1.0, lam)
    hat = np.where(zero[None], 0.0, hat / lam[None])
    out = tyi(txi(hat))
    y_sl = slice(0, ny) if not flip_y or top is not None else slice(ny, 2 * ny)
    x_sl = slice(0, nx) if not flip_x or left is not None else slice(nx, 2 * nx)
    return out[:, y_sl, x_sl]


class PoissonBlender(SeamBlender):
    """``seam``, then a harmonic correction per window removing the mismatch along the cuts.

    Attributes
    ----------
    smooth : float
        Low-pass (Gaussian sigma, px) of the mismatch along each cut before it is spread.
    """

    name: ClassVar[str] = "poisson"
    record_mismatch: ClassVar[bool] = True
    smooth: float = 4.0

    def strips_for_box(self, plan: Plan, box: Box) -> list[Strip]:
        """Every strip touching a window of the box: a window's membrane needs all four of its sides."""
        windows = set(self.windows_for_box(plan, box))
        return [s for s in overlap_strips(plan) if s.a in windows or s.b in windows]

    def correction(self, plan: Plan, index: int, strips: Any) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Window ``index``'s correction over its crop rectangle: ``((y0, y1, x0, x1), (C, h, w) float32)``."""
        rows, cols = plan.grid
        r, c = divmod(index, cols)
        y0, y1 = plan.y.keep(r)
        x0, x1 = plan.x.keep(c)

        def side(key: tuple[int, int], sign: float, n: int) -> np.ndarray:
            path: SeamPath = strips[key]
            if path.mismatch is None:
                raise ValueError("poisson needs the strip pass of PoissonBlender (mismatch along the cut)")
            d = path.mismatch.astype(np.float64)
            if self.smooth > 0:
                d = gaussian_filter1d(d, self.smooth, axis=1, mode="nearest")
            assert d.shape[1] == n, (d.shape, n)
            return sign * 0.5 * d

        top = side((index - cols, index), -1.0, x1 - x0) if r > 0 else None
        bottom = side((index, index + cols), 1.0, x1 - x0) if r < rows - 1 else None
        left = side((index - 1, index), -1.0, y1 - y0) if c > 0 else None
        right = side((index, index + 1), 1.0, y1 - y0) if c < cols - 1 else None
        delta = membrane((y1 - y0, x1 - x0), top=top, bottom=bottom, left=left, right=right)
        return (y0, y1, x0, x1), delta.astype(np.float32)

    def blend(
        self,
        plan: Plan,
        box: Box,
        read: WindowReader,
        *,
        transform: WindowTransform | None = None,
        strips: Any = None,
    ) -> np.ndarray:
        strips = strips or {}
        layout = seam_layout(plan, box, strips, self.feather)
        cache: dict[int, tuple[tuple[int, int, int, int], np.ndarray]] = {}

        def get(index: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            region = read_region(plan, read, transform, index, y0, y1, x0, x1)
            if index not in cache:
                cache[index] = self.correction(plan, index, strips)
            (ky0, ky1, kx0, kx1), delta = cache[index]
            if not delta.any():
                return region
            iy = np.clip(np.arange(y0, y1), ky0, ky1 - 1) - ky0
            ix = np.clip(np.arange(x0, x1), kx0, kx1 - 1) - kx0
            return region + delta[:, iy[:, None], ix[None, :]]

        return compose(plan, box, layout, get, self.feather)

    def describe(self) -> dict:
        return {**super().describe(), "smooth": self.smooth}
