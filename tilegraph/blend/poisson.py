"""``poisson``: gradient-domain repair: per-window shading planes, optimal cuts (``seam``), then the
mismatch left along every cut removed by a membrane per window.

Generative and restoration models shade each window differently across it (an offset and ramps), which
no per-window gain and offset removes and which a cut alone leaves as a step. Three steps remove it:

1. **Planes.** The strip pass (:meth:`PoissonBlender.fit_strip`, once per overlap strip) fits a plane to
   the two windows' difference ``b - a`` over their overlap (less ``max(2, overlap / 8)`` px at its ends,
   where a window shows its own border); :meth:`PoissonBlender.combine_strips` then solves, on the client,
   one small sparse least-squares problem for a plane per window (offset and slope along each axis, per
   channel) that makes every pair agree: corrected windows share their first-order shading. The null
   space (one plane added to every window) is taken at its minimum norm, so the image keeps the mean of
   its windows' shading. A few numbers per strip and per window travel; no solve spans the pixels.
2. **Cuts** through each overlap as in ``seam``, found on the difference less its plane, so they follow
   where the texture agrees, not where the shading happens to.
3. **Membranes.** The strip pass records the mismatch ``D = b - a`` along each cut (averaged over the
   feather width across it); with the solved planes it is what is left after step 1. Every window ``i``
   then gets a smooth correction ``delta_i``: the harmonic function (Laplace's equation, as in Poisson
   image editing's correction form) on the window's crop rectangle whose values just outside each side
   shared with a neighbour are half the mismatch with that neighbour (``+D/2`` toward ``b``, ``-D/2``
   toward ``a``, so both sides meet half-way), with zero flux across sides on the image border. The
   mismatch is low-passed along the cut (``smooth`` px) first, so only shading is corrected: texture that
   differs between windows stays single-source. Each solve is one rectangle (the eigenbases of the 1-D
   operators): O(S^2 log S) per window, and a blend task solves only the windows its box needs. Outside
   its rectangle (the feather and where a cut bends into the neighbour's rectangle) a window's correction
   is continued by its nearest value.

Windows that agree have no difference, hence no plane and no mismatch, and are left as they are; the
result does not depend on the output chunking. A blend task receives the paths of its strips and the
planes of their windows only (:meth:`PoissonBlender.strips_for_task`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.ndimage import gaussian_filter1d

from tilegraph.blend.abc import Box, Strip, WindowReader, WindowTransform, overlap_strips
from tilegraph.blend.seam import SeamBlender, SeamPath, compose, read_region, seam_layout
from tilegraph.plan.plan import Plan

__all__ = ["PlaneFit", "PoissonBlender", "PoissonStrips", "membrane", "solve_planes"]


@dataclass(frozen=True)
class PlaneFit:
    """A plane fitted to ``b - a`` over one overlap: ``p(y, x) = c0 + cx (x - mx) / L + cy (y - my) / L``.

    ``coef`` is ``(3, C)`` (``c0``, ``cx``, ``cy`` per channel); ``weights`` the precision of the slopes
    (``(wx, wy)``: the fitted region's extent along each axis over ``L``, the window's output size).
    """

    my: float
    mx: float
    coef: np.ndarray
    weights: tuple[float, float]
    scale: float

    def __call__(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The plane at positions ``y``, ``x`` (broadcast together), ``(C, ...)``."""
        c0, cx, cy = self.coef
        shape = (-1,) + (1,) * np.broadcast(y, x).ndim
        return (
            c0.reshape(shape)
            + cx.reshape(shape) * ((x - self.mx) / self.scale)
            + cy.reshape(shape) * ((y - self.my) / self.scale)
        )


@dataclass(frozen=True)
class PoissonStrips:
    """What a ``poisson`` blend needs: cut paths by strip ``(a, b)`` and each window's plane ``(3, C)``
    (``offset``, ``slope x``, ``slope y`` per unit of ``scale`` px, about the window's footprint centre)."""

    paths: dict[tuple[int, int], SeamPath]
    planes: dict[int, np.ndarray] = field(default_factory=dict)
    scale: float = 1.0


def _centre(plan: Plan, index: int) -> tuple[float, float]:
    r, c = divmod(index, plan.x.count)
    (y0, y1), (x0, x1) = plan.y.footprint(r), plan.x.footprint(c)
    return (y0 + y1) / 2, (x0 + x1) / 2


def _window_plane(
    plan: Plan, index: int, coef: np.ndarray | None, scale: float, y: np.ndarray, x: np.ndarray
) -> np.ndarray | float:
    """Window ``index``'s plane correction at ``y``, ``x`` (0.0 without one)."""
    if coef is None:
        return 0.0
    cy, cx = _centre(plan, index)
    shape = (-1,) + (1,) * np.broadcast(y, x).ndim
    return (
        coef[0].reshape(shape)
        + coef[1].reshape(shape) * ((x - cx) / scale)
        + coef[2].reshape(shape) * ((y - cy) / scale)
    )


def solve_planes(
    plan: Plan, fits: Mapping[tuple[int, int], PlaneFit], *, ridge: float = 1e-3
) -> dict[int, np.ndarray]:
    """Per-window planes ``(3, C)`` making every fitted pair agree (least squares, minimum norm).

    For each strip ``(a, b)`` with fit ``p``: ``c_b(m) - c_a(m) = -p(m)`` at the fit's centre ``m`` and
    ``slope(c_b) - slope(c_a) = -slope(p)`` along each axis, weighted by the slopes' precision; a small
    ridge picks the minimum-norm solution in the null space. Windows in no strip get none.
    """
    from scipy.sparse import coo_matrix, identity
    from scipy.sparse.linalg import spsolve

    items = [(k, f) for k, f in sorted(fits.items()) if f is not None]
    if not items:
        return {}
    n = plan.n_windows
    scale = items[0][1].scale
    rows, cols, vals, rhs = [], [], [], []
    eq = 0
    for (a, b), f in items:
        wx, wy = f.weights
        # offsets at the fit's centre
        for sign, i in ((1.0, b), (-1.0, a)):
            cy, cx = _centre(plan, i)
            for k, v in ((0, 1.0), (1, (f.mx - cx) / scale), (2, (f.my - cy) / scale)):
                rows.append(eq)
                cols.append(3 * i + k)
                vals.append(sign * v)
        rhs.append(-f.coef[0])
        eq += 1
        for k, w in ((1, wx), (2, wy)):  # slopes
            rows += [eq, eq]
            cols += [3 * b + k, 3 * a + k]
            vals += [w, -w]
            rhs.append(-w * f.coef[k])
            eq += 1
    a_mat = coo_matrix((vals, (rows, cols)), shape=(eq, 3 * n)).tocsr()
    b_mat = np.asarray(rhs, dtype=np.float64)  # (eq, C)
    normal = (a_mat.T @ a_mat + ridge**2 * identity(3 * n)).tocsc()
    sol = spsolve(normal, a_mat.T @ b_mat)
    sol = np.asarray(sol, dtype=np.float64).reshape(3 * n, -1)
    used = {i for (a, b), _ in items for i in (a, b)}
    return {i: sol[3 * i : 3 * i + 3].astype(np.float32) for i in sorted(used)}


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
    confidence_rule: ClassVar[str] = "shift"  # planes and membranes from the outputs themselves
    smooth: float = 4.0
    #: solve per-window shading planes from the overlaps before cutting (step 1 of the module notes)
    planes: bool = True

    def strips_for_box(self, plan: Plan, box: Box) -> list[Strip]:
        """The cuts reaching the box (``seam``'s) and every strip touching a window of the box: a window's
        membrane needs all four of its sides."""
        windows = set(self.windows_for_box(plan, box))
        near = {(s.a, s.b) for s in super().strips_for_box(plan, box)}
        return [s for s in overlap_strips(plan) if s.a in windows or s.b in windows or (s.a, s.b) in near]

    def fit_strip(
        self, plan: Plan, strip: Strip, diff: np.ndarray, along: np.ndarray, across: np.ndarray
    ) -> tuple[np.ndarray, Any]:
        """The plane of ``b - a`` over the strip less its ends; the cut is found on what it leaves."""
        if not self.planes:
            return diff, None
        grid = plan.x if strip.axis == 1 else plan.y
        trim = max(2, grid.out_overlap // 8)
        sub = diff[:, :, trim : diff.shape[2] - trim] if diff.shape[2] > 2 * trim + 2 else diff
        acr = across[trim : across.size - trim] if diff.shape[2] > 2 * trim + 2 else across
        scale = float(max(plan.out_window_shape))
        # positions in (y, x): a vertical seam runs along rows
        ys, xs = (along, acr) if strip.axis == 1 else (acr, along)
        my, mx = float(ys.mean()), float(xs.mean())
        gy = (along[:, None] if strip.axis == 1 else acr[None, :]) - my
        gx = (acr[None, :] if strip.axis == 1 else along[:, None]) - mx
        gy, gx = np.broadcast_arrays(gy / scale, gx / scale)
        design = np.stack([np.ones(gy.size), gx.ravel(), gy.ravel()], axis=1)
        coef, *_ = np.linalg.lstsq(design, sub.reshape(sub.shape[0], -1).T, rcond=None)  # (3, C)
        weights = (float(np.ptp(xs) + 1) / scale, float(np.ptp(ys) + 1) / scale)
        fit = PlaneFit(my, mx, coef.astype(np.float64), weights, scale)
        ya, xa = (along[:, None], across[None, :]) if strip.axis == 1 else (across[None, :], along[:, None])
        return diff - fit(ya, xa), fit

    def combine_strips(self, plan: Plan, results: Mapping[tuple[int, int], Any]) -> PoissonStrips:
        """The cut paths, and the per-window planes solved from the strips' fits (on the client)."""
        paths = {k: v for k, v in sorted(results.items())}
        fits = {k: v.fit for k, v in paths.items() if v.fit is not None}
        planes = solve_planes(plan, fits) if fits else {}
        return PoissonStrips(paths, planes, float(max(plan.out_window_shape)))

    def strips_for_task(self, plan: Plan, box: Box, combined: Any) -> Any:
        """The paths of :meth:`strips_for_box` and the planes of their windows."""
        if not isinstance(combined, PoissonStrips):
            return super().strips_for_task(plan, box, combined)
        keys = [(s.a, s.b) for s in self.strips_for_box(plan, box)]
        paths = {k: combined.paths[k] for k in keys if k in combined.paths}
        windows = {i for k in paths for i in k}
        planes = {i: combined.planes[i] for i in sorted(windows) if i in combined.planes}
        return PoissonStrips(paths, planes, combined.scale)

    def correction(
        self, plan: Plan, index: int, strips: Any, box: Box | None = None
    ) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Window ``index``'s correction over its crop rectangle, or the part of it that ``box`` clamps
        to: ``((y0, y1, x0, x1), (C, h, w) float32)``."""
        rows, cols = plan.grid
        r, c = divmod(index, cols)
        y0, y1 = plan.y.keep(r)
        x0, x1 = plan.x.keep(c)

        state = strips if isinstance(strips, PoissonStrips) else PoissonStrips(dict(strips))

        def side(key: tuple[int, int], sign: float, n: int) -> np.ndarray:
            path: SeamPath = state.paths[key]
            if path.mismatch is None:
                raise ValueError("poisson needs the strip pass of PoissonBlender (mismatch along the cut)")
            d = path.mismatch.astype(np.float64)
            if path.fit is not None:  # what the planes left of the mismatch: fit + c_b - c_a at the cut
                k = np.arange(path.start, path.start + path.offsets.size) + 0.5
                pos = path.positions.astype(np.float64)
                y, x = (k, pos) if path.axis == 1 else (pos, k)
                a, b = key
                d = d + path.fit(y, x)
                d = d + _window_plane(plan, b, state.planes.get(b), state.scale, y, x)
                d = d - _window_plane(plan, a, state.planes.get(a), state.scale, y, x)
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
        state = strips if isinstance(strips, PoissonStrips) else PoissonStrips(dict(strips or {}))
        layout = seam_layout(plan, box, state.paths, self.feather)
        cache: dict[int, tuple[tuple[int, int, int, int], np.ndarray]] = {}

        def get(index: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            region = read_region(plan, read, transform, index, y0, y1, x0, x1)
            coef = state.planes.get(index)
            if coef is not None and coef.any():
                y = (np.arange(y0, y1) + 0.5)[:, None]
                x = (np.arange(x0, x1) + 0.5)[None, :]
                region = region + np.asarray(_window_plane(plan, index, coef, state.scale, y, x), np.float32)
            if index not in cache:
                cache[index] = self.correction(plan, index, state, box)
            (ky0, ky1, kx0, kx1), delta = cache[index]
            if not delta.any():
                return region
            iy = np.clip(np.arange(y0, y1), ky0, ky1 - 1) - ky0
            ix = np.clip(np.arange(x0, x1), kx0, kx1 - 1) - kx0
            return region + delta[:, iy[:, None], ix[None, :]]

        return compose(plan, box, layout, get, self.feather)

    def describe(self) -> dict:
        return {**super().describe(), "smooth": self.smooth, "planes": self.planes}
