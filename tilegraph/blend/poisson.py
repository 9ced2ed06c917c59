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

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.ndimage import gaussian_filter1d

from tilegraph.blend.abc import Box, Strip, WindowReader, WindowTransform, overlap_strips
from tilegraph.blend.seam import SeamBlender, SeamPath, compose, read_region, seam_layout
from tilegraph.plan.plan import Plan

__all__ = ["PoissonBlender", "membrane"]


_BLOCK = 64


@lru_cache(maxsize=64)
def _laplace_1d(n: int, dirichlet_lo: bool, dirichlet_hi: bool) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and orthonormal eigenvectors of the 1-D second difference on ``n`` points.

    A Dirichlet end has its ghost value (moved to the right-hand side) one pixel out; a Neumann end
    mirrors the last pixel (zero flux). Any combination is exact, whatever ``n`` (no FFT size to
    suffer from). Read-only, cached.
    """
    diag = np.full(n, -2.0)
    if not dirichlet_lo:
        diag[0] += 1.0
    if not dirichlet_hi:
        diag[-1] += 1.0
    vals, vecs = eigh_tridiagonal(diag, np.ones(n - 1)) if n > 1 else (diag.copy(), np.ones((1, 1)))
    vals.flags.writeable = False
    vecs.flags.writeable = False
    return vals, vecs


def membrane(
    shape: tuple[int, int],
    *,
    top: np.ndarray | None,
    bottom: np.ndarray | None,
    left: np.ndarray | None,
    right: np.ndarray | None,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> np.ndarray:
    """Harmonic ``(C, ny, nx)`` on a rectangle from the values just outside its sides.

    ``top``/``bottom`` are ``(C, nx)`` values on the rows just above/below, ``left``/``right`` ``(C, ny)``
    on the columns just left/right of the rectangle (Dirichlet); ``None`` is a side without flux
    (Neumann). The 5-point Laplacian is solved exactly in the eigenbases of the two 1-D operators: the
    right-hand side lives on the border, so its transform is cheap, and only ``rows`` x ``cols`` (default:
    all) of the solution are synthesised.
    """
    ny, nx = shape
    r0, r1 = rows if rows is not None else (0, ny)
    c0, c1 = cols if cols is not None else (0, nx)
    sides = [s for s in (top, bottom, left, right) if s is not None]
    if not sides:
        return np.zeros((1, r1 - r0, c1 - c0))
    c = sides[0].shape[0]
    ly, vy = _laplace_1d(ny, top is not None, bottom is not None)
    lx, vx = _laplace_1d(nx, left is not None, right is not None)
    hat = np.zeros((c, ny, nx))  # transform of the border right-hand side, one outer product per side
    if top is not None:
        hat -= vy[0][None, :, None] * (top @ vx)[:, None, :]
    if bottom is not None:
        hat -= vy[-1][None, :, None] * (bottom @ vx)[:, None, :]
    if left is not None:
        hat -= (left @ vy)[:, :, None] * vx[0][None, None, :]
    if right is not None:
        hat -= (right @ vy)[:, :, None] * vx[-1][None, None, :]
    lam = ly[:, None] + lx[None, :]
    zero = np.abs(lam) < 1e-12
    hat = np.where(zero[None], 0.0, hat / np.where(zero, 1.0, lam)[None]).astype(np.float32)
    # synthesis in fixed blocks of rows over all columns: the same products whatever the caller asks,
    # so the values do not depend on the output chunking
    vxt = np.ascontiguousarray(vx.T.astype(np.float32))
    out = []
    for b0 in range((r0 // _BLOCK) * _BLOCK, r1, _BLOCK):
        wy = vy[b0 : min(ny, b0 + _BLOCK)].astype(np.float32)
        block = (wy @ hat) @ vxt
        out.append(block[:, max(r0, b0) - b0 : min(r1, b0 + _BLOCK) - b0, c0:c1])
    return np.concatenate(out, axis=1)


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

    def correction(
        self, plan: Plan, index: int, strips: Any, box: Box | None = None
    ) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Window ``index``'s correction over its crop rectangle, or the part of it that ``box`` clamps
        to: ``((y0, y1, x0, x1), (C, h, w) float32)``."""
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
        ry0, ry1, rx0, rx1 = y0, y1, x0, x1
        if box is not None:  # only what the box's pixels clamp to
            ry0, ry1 = min(max(box[0], y0), y1 - 1), max(min(box[1], y1), y0 + 1)
            rx0, rx1 = min(max(box[2], x0), x1 - 1), max(min(box[3], x1), x0 + 1)
        delta = membrane(
            (y1 - y0, x1 - x0),
            top=top,
            bottom=bottom,
            left=left,
            right=right,
            rows=(ry0 - y0, ry1 - y0),
            cols=(rx0 - x0, rx1 - x0),
        )
        return (ry0, ry1, rx0, rx1), delta.astype(np.float32)

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
                cache[index] = self.correction(plan, index, strips, box)
            (ky0, ky1, kx0, kx1), delta = cache[index]
            if not delta.any():
                return region
            iy = np.clip(np.arange(y0, y1), ky0, ky1 - 1) - ky0
            ix = np.clip(np.arange(x0, x1), kx0, kx1 - 1) - kx0
            return region + delta[:, iy[:, None], ix[None, :]]

        return compose(plan, box, layout, get, self.feather)

    def describe(self) -> dict:
        return {**super().describe(), "smooth": self.smooth}
