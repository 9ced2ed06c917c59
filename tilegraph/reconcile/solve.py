"""Per-window colour corrections from pair and anchor statistics (scipy.sparse, runs on the client).

:func:`solve_global` minimises, independently per channel, the energy of ``algorithms.md`` §5.5
(eq. 12), with ``x = (a, b)`` the gain and offset of every window::

    E = sum_pairs  w_ij [ (a_i mu_i + b_i - a_j mu_j - b_j)^2 + gamma (a_i s_i - a_j s_j)^2 ]
      + sum_tiles  k_i  [ (a_i m_i + b_i - m_i^R)^2        + gamma (a_i t_i - t_i^R)^2 ]
      + sum_tiles  (a_i - 1)^2 / sigma_a^2 + b_i^2 / sigma_b^2

where ``mu, s`` are each side's low-passed mean and standard deviation over the pair's overlap band and
``m, t`` (``m^R, t^R``) the window's (the reference's) over its core. All residuals are linear in ``x``; the
normal equations ``J^T W J x = J^T W r`` are a sparse grid Laplacian plus a diagonal, solved directly
(SuperLU) for all channels at once. Pair residuals are re-weighted with Huber weights (IRLS) so overlaps
where windows genuinely disagree pull less. Residuals are measured in DN (1/255 of ``full_scale``).

Three rules keep the solve from making things worse (issue 11):

* pairs whose sides agree (within ``agree`` DN) ask for no relative correction, and when *every* pair agrees
  the result is exactly the identity, whatever the anchors say;
* ``anchor_fit="regression"`` fits each window to its anchor by pixelwise least squares (the gain is the
  regression slope), which reaches the best per-window affine fit where the moment match does not;
* without anchors each window is anchored to itself, so pairs that disagree systematically cannot add up
  into drifts across the grid.

:func:`solve_sequential` is the classic baseline ("APT statistical matching"): windows in raster order,
each matched in mean and standard deviation to its already-corrected left and top neighbours over the
shared bands, computed analytically from the same statistics. Its errors add up along the chain.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg, splu

from tilegraph.plan.plan import Plan
from tilegraph.reconcile.apply import Corrections
from tilegraph.reconcile.stats import PairStats, TileStats

__all__ = ["solve_global", "solve_sequential", "MODES", "ANCHOR_FITS", "RECOMMENDED"]

MODES = ("gain-offset", "offset")
ANCHOR_FITS = ("moments", "regression")

#: Solve options that the engine should use by default (measured on the InstanceNorm model against
#: whole-image inference, see ``tests/test_reconcile_never_hurts.py``): regression anchors, each anchor
#: worth three typical pairs.
RECOMMENDED: dict = {"anchor_fit": "regression", "anchor": 3.0}


def _grid_shape(grid) -> tuple[int, int]:
    if isinstance(grid, Plan):
        return grid.grid
    if isinstance(grid, int | np.integer):
        return 1, int(grid)
    rows, cols = (int(v) for v in grid)
    return rows, cols


def _channels(pairs: Sequence[PairStats], refs: Sequence[TileStats], channels: int | None) -> int:
    records: list[PairStats | TileStats] = [*pairs, *refs]
    for rec in records:
        return rec.channels
    if channels is None:
        raise ValueError("no statistics given: pass channels= to get identity corrections")
    return int(channels)


def _stack(records, name: str) -> np.ndarray:
    return np.concatenate([getattr(r, name) for r in records]).astype(np.float64).reshape(len(records), -1)


def _mean_std(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = s / n[:, None]
    return mean, np.sqrt(np.maximum(ss / n[:, None] - mean * mean, 0.0))


def _pair_table(pairs: Sequence[PairStats], k: float):
    """Arrays (ia, ib, n, mu_a, mu_b, s_a, s_b) with moments in DN; empty bands dropped."""
    use = [p for p in pairs if p.n > 0]
    ia = np.array([p.a for p in use], dtype=np.intp)
    ib = np.array([p.b for p in use], dtype=np.intp)
    n = np.array([p.n for p in use], dtype=np.float64)
    if not use:
        e = np.zeros((0, 0))
        return ia, ib, n, e, e, e, e
    mu_a, s_a = _mean_std(n, _stack(use, "sum_a"), _stack(use, "sumsq_a"))
    mu_b, s_b = _mean_std(n, _stack(use, "sum_b"), _stack(use, "sumsq_b"))
    return ia, ib, n, k * mu_a, k * mu_b, k * s_a, k * s_b


def _ref_table(refs: Sequence[TileStats], k: float):
    """Arrays (index, n, m_t, m_r, t_t, t_r, cov) with moments in DN; empty cores dropped."""
    use = [r for r in refs if r.n > 0]
    idx = np.array([r.index for r in use], dtype=np.intp)
    n = np.array([r.n for r in use], dtype=np.float64)
    if not use:
        e = np.zeros((0, 0))
        return idx, n, e, e, e, e, e
    m_t, t_t = _mean_std(n, _stack(use, "sum_t"), _stack(use, "sumsq_t"))
    m_r, t_r = _mean_std(n, _stack(use, "sum_r"), _stack(use, "sumsq_r"))
    cov = _stack(use, "sum_tr") / n[:, None] - m_t * m_r
    return idx, n, k * m_t, k * m_r, k * t_t, k * t_r, k * k * cov


def _check(mode: str, strength: float) -> None:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} not supported; use one of {MODES}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")


_PAIR, _ANCHOR, _PRIOR = 0, 1, 2


class _System:
    """Residual rows ``J x ~ t`` with base weights, for one channel."""

    def __init__(self, n_unknowns: int):
        self.m = n_unknowns
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.target: list[np.ndarray] = []
        self.weight: list[np.ndarray] = []
        self.group: list[np.ndarray] = []
        self.count = 0

    def add(self, cols: Sequence[np.ndarray], vals: Sequence, target, weight, *, group: int) -> None:
        """Add ``len(target)`` rows; ``cols[k][r]`` / ``vals[k][r]`` is the k-th non-zero of row ``r``."""
        target = np.asarray(target, dtype=np.float64)
        nr = len(target)
        if nr == 0:
            return
        base = np.arange(self.count, self.count + nr)
        for c, v in zip(cols, vals, strict=True):
            self.rows.append(base)
            self.cols.append(np.broadcast_to(np.asarray(c, dtype=np.intp), (nr,)))
            self.vals.append(np.broadcast_to(np.asarray(v, dtype=np.float64), (nr,)))
        self.target.append(target)
        self.weight.append(np.broadcast_to(np.asarray(weight, dtype=np.float64), (nr,)))
        self.group.append(np.full(nr, group))
        self.count += nr

    def build(self):
        """``(J, target, base weights, row groups)``."""
        j = sp.csr_matrix(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
            shape=(self.count, self.m),
        )
        return j, np.concatenate(self.target), np.concatenate(self.weight), np.concatenate(self.group)


def _factor(lhs: sp.spmatrix):
    """Direct solver of the symmetric positive-definite normal matrix.

    Jacobi-scaled, diagonal pivots and a fill-reducing symmetric order (SuperLU); returns ``solve(rhs)``.
    """
    d = 1.0 / np.sqrt(lhs.diagonal())
    scale = sp.diags(d)
    lu = splu(
        (scale @ lhs @ scale).tocsc(),
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )
    return lambda rhs: d * lu.solve(d * rhs)


def _robust_scale(r: np.ndarray, floor: float) -> float:
    if len(r) == 0:
        return floor
    return max(floor, 1.4826 * float(np.median(np.abs(r - np.median(r)))))


def _irls(jac, target, w0, group, *, huber, iterations, adaptive, sigma0, floor):
    """Weighted least squares, re-weighted: Huber on pair rows and, if ``adaptive``, per-group noise scales.

    The first solve is direct; later ones are conjugate gradients preconditioned with the first
    factorisation and started from the previous solution, with a fresh factorisation if they do not
    converge. Returns ``(x, iterations, weights)``.
    """
    jt = jac.T.tocsr()
    is_pair, is_anchor = group == _PAIR, group == _ANCHOR
    w = w0.copy()
    solve0 = _factor(jt @ sp.diags(w) @ jac)
    x = solve0(jt @ (w * target))
    it = 1
    while (huber is not None or adaptive) and it < iterations:
        res = jac @ x - target
        sp_, sa_ = _robust_scale(res[is_pair], floor), _robust_scale(res[is_anchor], floor)
        w_new = w0.copy()
        if adaptive:
            w_new[is_pair] *= (sigma0 / sp_) ** 2
            w_new[is_anchor] *= (sigma0 / sa_) ** 2
        if huber is not None:
            k = huber * sp_
            rp = np.abs(res[is_pair])
            w_new[is_pair] *= np.where(rp > k, k / np.maximum(rp, 1e-12), 1.0)
        if np.allclose(w_new, w, rtol=1e-3, atol=0):
            break
        w = w_new
        it += 1
        lhs = (jt @ sp.diags(w) @ jac).tocsr()
        rhs = jt @ (w * target)
        pre = LinearOperator(lhs.shape, matvec=solve0, dtype=np.float64)
        x_new, info = cg(lhs, rhs, x0=x, M=pre, rtol=1e-10, maxiter=200)
        x = x_new if info == 0 else _factor(lhs)(rhs)
    return x, it, w


def solve_global(
    grid,
    pairs: Iterable[PairStats],
    refs: Iterable[TileStats] = (),
    *,
    mode: str = "gain-offset",
    anchor: float = 1.0,
    huber: float | None = 2.0,
    strength: float = 1.0,
    gamma: float = 1.0,
    sigma_pair: float = 1.0,
    sigma_gain: float = 0.1,
    sigma_offset: float = 10.0,
    full_scale: float = 1.0,
    iterations: int = 5,
    adaptive: bool = False,
    sigma_floor: float = 0.05,
    channels: int | None = None,
    anchor_fit: str = "moments",
    agree: float = 1e-3,
) -> Corrections:
    """One sparse least-squares solve for every window's per-channel gain and offset.

    Parameters
    ----------
    grid
        The plan, its grid ``(rows, cols)``, or the number of windows.
    pairs
        :class:`PairStats` of neighbouring windows (from :func:`~tilegraph.reconcile.stats.pair_stats` or
        :func:`~tilegraph.reconcile.stats.pairs_from_windows`).
    refs
        :class:`TileStats` anchors (may be empty: the weak priors then keep the solve well posed and the
        result is only relative).
    mode
        ``"gain-offset"`` (affine per channel) or ``"offset"`` (gain fixed at 1).
    anchor
        Weight of one anchor relative to a typical pair (``kappa / omega``); small values trust neighbours
        more. Pairs weigh their pixel count over ``sigma_pair**2`` (eq. 12), so the priors are weak.
    huber
        Huber threshold for the IRLS re-weighting of pair residuals, in robust standard deviations of the pair
        residuals (MAD, at least ``sigma_floor`` DN): pairs beyond it pull with a constant force. ``None`` for
        plain weighted least squares.
    strength
        Scales the result toward identity (0: no correction, 1: full).
    gamma
        Weight of the standard-deviation terms relative to the mean terms (``"gain-offset"`` only).
    sigma_pair
        Expected pair measurement noise in DN (sets the scale of the priors).
    sigma_gain, sigma_offset
        Prior widths for ``gain - 1`` (unitless) and ``offset`` (DN).
    full_scale
        Value of full scale in the data (1.0 for float outputs in ``[0, 1]``, 255 for ``[0, 255]``).
    iterations
        Most IRLS iterations (1 = a single weighted solve); stops early once the weights settle.
    adaptive
        Also re-estimate the pair and anchor noise levels from their residuals at each iteration and weigh
        each group by its own: much lower absolute drift when pairs disagree (shading, colour-changing
        models), at the price of larger steps where tiles genuinely differ. Off by default.
    sigma_floor
        Lowest noise level (DN) the re-weighting assumes.
    channels
        Channel count, needed only when no statistics are given.
    anchor_fit
        How a window meets its anchor in ``"gain-offset"`` mode. ``"moments"``: equal low-passed mean and
        standard deviation (eq. 12). ``"regression"``: the pixelwise least-squares fit of the reference on
        the window, ``sum_p (a t_p + b - r_p)^2``, from the same sums (the gain becomes the regression slope
        ``cov(t, r) / var(t)``): closer to the best per-window correction when the reference is smoother or
        noisier than the window, or when the window's error is not affine (``RECOMMENDED``).
    agree
        Agreement tolerance in DN (measurement noise: float rounding, convolution algorithms): a pair whose
        two sides' means and standard deviations differ by at most this much (per channel) is taken as
        agreeing exactly, and so is an anchor whose window and reference moments do. When *every* pair
        agrees, the windows are consistent and the result is exactly gain 1 and offset 0 whatever the
        anchors say (an exact model is never "corrected"); otherwise agreeing pairs ask for no relative
        correction. ``0`` disables the tolerance (exactly equal moments still agree).

    Returns
    -------
    Corrections
        ``info`` holds the solve time, iterations and pair residual statistics (DN).

    Notes
    -----
    Without anchors, the weak priors alone would let the solution drift: smaller gains shrink every pair
    residual, and pairs that disagree in a systematic way (per-window normalisation) add up across the grid
    into ramps far larger than the seams they fix. Each window is then anchored to *itself* (its own moments,
    pooled over its overlap bands, with the weight ``anchor``): the solve moves windows towards their
    neighbours only as far as seams ask, never the whole image away from the model's output.
    """
    _check(mode, strength)
    if anchor_fit not in ANCHOR_FITS:
        raise ValueError(f"anchor_fit {anchor_fit!r} not supported; use one of {ANCHOR_FITS}")
    t0 = time.perf_counter()
    rows_, cols_ = _grid_shape(grid)
    n = rows_ * cols_
    pairs, refs = list(pairs), list(refs)
    nc = _channels(pairs, refs, channels)
    k = 255.0 / float(full_scale)
    ia, ib, npair, mu_a, mu_b, s_a, s_b = _pair_table(pairs, k)
    ir, nref, m_t, m_r, t_t, t_r, cov_tr = _ref_table(refs, k)
    for idx in (ia, ib, ir):
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"statistics refer to window {int(idx.max())}, the grid has {n} windows")
    gain_mode = mode == "gain-offset"
    if not agree >= 0:
        raise ValueError(f"agree must be >= 0 DN, got {agree}")
    mu_a, mu_b, s_a, s_b, snapped_pairs = _snap_pairs(mu_a, mu_b, s_a, s_b, float(agree))
    m_t, m_r, t_t, t_r, cov_tr, snapped_refs = _snap_refs(m_t, m_r, t_t, t_r, cov_tr, float(agree))
    if len(ia) and snapped_pairs == len(ia):
        # every pair agrees: the windows are consistent, a correction could only add error
        info = {
            "solver": "global",
            "mode": mode,
            "iterations": 0,
            "seconds": time.perf_counter() - t0,
            "pairs": int(len(ia)),
            "anchors": int(len(ir)),
            "pair_residual_rms_dn": 0.0,
            "pair_residual_max_dn": 0.0,
            "downweighted": 0,
            "anchor_fit": anchor_fit,
            "agreeing_pairs": snapped_pairs,
            "agreeing_anchors": snapped_refs,
            "self_anchored": False,
            "note": "all windows agree in their overlaps: no correction",
        }
        return Corrections.identity(n, nc).with_info(info).scaled(strength)
    self_anchored = False
    if not len(ir) and len(ia):
        # relative only: each window is anchored to itself, so the solve fixes seams and nothing else
        ir, nref, m_t, t_t = _self_table(n, ia, ib, npair, mu_a, mu_b, s_a, s_b)
        m_r, t_r, cov_tr = m_t, t_t, t_t * t_t
        self_anchored = True
    # pair weight: pixels in the band over the noise variance (eq. 12); an anchor weighs ``anchor`` typical
    # pairs, scaled by its own pixel count; the priors are absolute and therefore weak for real tile sizes
    typical = float(np.median(npair)) if len(npair) else float(np.median(nref)) if len(nref) else 1.0
    wp = npair / sigma_pair**2
    wr = anchor * typical * nref / np.median(nref) / sigma_pair**2 if len(nref) else nref
    allw = np.arange(n)
    # unknowns of window i: gain at 2i and offset at 2i + 1 (neighbours in the matrix), or offset at i

    def ga(i):  # gain unknowns (gain mode only)
        return 2 * i

    def of(i):  # offset unknowns
        return 2 * i + 1 if gain_mode else i

    gain = np.ones((n, nc))
    offset = np.zeros((n, nc))
    iters, resid, down = [], [], 0
    for c in range(nc):
        sysm = _System(2 * n if gain_mode else n)
        if gain_mode:
            if len(ia):
                sysm.add(
                    [ga(ia), of(ia), ga(ib), of(ib)],
                    [mu_a[:, c], 1.0, -mu_b[:, c], -1.0],
                    np.zeros(len(ia)),
                    wp,
                    group=_PAIR,
                )
                sysm.add(
                    [ga(ia), ga(ib)], [s_a[:, c], -s_b[:, c]], np.zeros(len(ia)), gamma * wp, group=_PAIR
                )
            if len(ir) and anchor_fit == "regression":
                # pixelwise least squares sum (a t + b - r)^2 / n = (a m_t + b - m_r)^2 + (a t_t - cov / t_t)^2
                # + const: the gain is the regression slope of the reference on the window
                slope_t = np.where(t_t[:, c] > 1e-9, cov_tr[:, c] / np.maximum(t_t[:, c], 1e-9), 0.0)
                sysm.add([ga(ir), of(ir)], [m_t[:, c], 1.0], m_r[:, c], wr, group=_ANCHOR)
                sysm.add([ga(ir)], [t_t[:, c]], slope_t, gamma * wr, group=_ANCHOR)
            elif len(ir):
                sysm.add([ga(ir), of(ir)], [m_t[:, c], 1.0], m_r[:, c], wr, group=_ANCHOR)
                sysm.add([ga(ir)], [t_t[:, c]], t_r[:, c], gamma * wr, group=_ANCHOR)
            sysm.add([ga(allw)], [1.0], np.ones(n), 1.0 / sigma_gain**2, group=_PRIOR)
        else:
            if len(ia):
                sysm.add([of(ia), of(ib)], [1.0, -1.0], mu_b[:, c] - mu_a[:, c], wp, group=_PAIR)
            if len(ir):
                sysm.add([of(ir)], [1.0], m_r[:, c] - m_t[:, c], wr, group=_ANCHOR)
        sysm.add([of(allw)], [1.0], np.zeros(n), 1.0 / sigma_offset**2, group=_PRIOR)
        jac, target, w0, group = sysm.build()
        x, it, w = _irls(
            jac,
            target,
            w0,
            group,
            huber=huber,
            iterations=max(1, int(iterations)),
            adaptive=adaptive,
            sigma0=sigma_pair,
            floor=sigma_floor,
        )
        iters.append(it)
        pair = group == _PAIR
        resid.append(np.abs(jac[pair] @ x - target[pair]))
        down += int(np.count_nonzero(w[pair] < w0[pair] * (1 - 1e-9)))
        if gain_mode:
            gain[:, c], offset[:, c] = x[0::2], x[1::2] / k
        else:
            offset[:, c] = x / k
    exact = (np.abs(gain - 1.0) < 1e-9) & (np.abs(offset * k) < 1e-7)
    gain[exact], offset[exact] = 1.0, 0.0
    pr = np.concatenate(resid)
    info = {
        "solver": "global",
        "mode": mode,
        "iterations": max(iters),
        "seconds": time.perf_counter() - t0,
        "pairs": int(len(ia)),
        "anchors": int(len(ir)),
        "pair_residual_rms_dn": float(np.sqrt(np.mean(pr**2))) if len(pr) else 0.0,
        "pair_residual_max_dn": float(pr.max()) if len(pr) else 0.0,
        "downweighted": down,
        "anchor_fit": anchor_fit,
        "agreeing_pairs": snapped_pairs,
        "agreeing_anchors": snapped_refs,
        "self_anchored": self_anchored,
    }
    return Corrections(gain, offset, info).scaled(strength)


def _self_table(n: int, ia, ib, npair, mu_a, mu_b, s_a, s_b):
    """Self-anchors: each window's own mean and standard deviation pooled over its overlap bands (DN)."""
    nc = mu_a.shape[1]
    cnt = np.zeros(n)
    s1 = np.zeros((n, nc))
    s2 = np.zeros((n, nc))
    for idx, mu, sd in ((ia, mu_a, s_a), (ib, mu_b, s_b)):
        w = npair[:, None]
        np.add.at(cnt, idx, npair)
        np.add.at(s1, idx, w * mu)
        np.add.at(s2, idx, w * (sd * sd + mu * mu))
    ir = np.flatnonzero(cnt > 0)
    nref = cnt[ir]
    m = s1[ir] / nref[:, None]
    t = np.sqrt(np.maximum(s2[ir] / nref[:, None] - m * m, 0.0))
    return ir.astype(np.intp), nref, m, t


def _snap_pairs(mu_a, mu_b, s_a, s_b, tol: float):
    """Pairs (per channel) whose sides agree within ``tol`` DN get identical moments (their averages)."""
    if not len(mu_a):
        return mu_a, mu_b, s_a, s_b, 0
    ok = (np.abs(mu_a - mu_b) <= tol) & (np.abs(s_a - s_b) <= tol)
    mu = np.where(ok, 0.5 * (mu_a + mu_b), 0.0)
    sd = np.where(ok, 0.5 * (s_a + s_b), 0.0)
    return (
        np.where(ok, mu, mu_a),
        np.where(ok, mu, mu_b),
        np.where(ok, sd, s_a),
        np.where(ok, sd, s_b),
        int(np.count_nonzero(ok.all(axis=1))),
    )


def _snap_refs(m_t, m_r, t_t, t_r, cov, tol: float):
    """Anchors (per channel) whose window and reference agree within ``tol`` DN: reference := window."""
    if not len(m_t):
        return m_t, m_r, t_t, t_r, cov, 0
    slope = np.where(t_t > 1e-9, cov / np.maximum(t_t, 1e-9), t_r)
    ok = (np.abs(m_t - m_r) <= tol) & (np.abs(t_t - t_r) <= tol) & (np.abs(slope - t_t) <= tol)
    return (
        m_t,
        np.where(ok, m_t, m_r),
        t_t,
        np.where(ok, t_t, t_r),
        np.where(ok, t_t * t_t, cov),
        int(np.count_nonzero(ok.all(axis=1))),
    )


def solve_sequential(
    grid,
    pairs: Iterable[PairStats],
    refs: Iterable[TileStats] = (),
    *,
    mode: str = "gain-offset",
    strength: float = 1.0,
    full_scale: float = 1.0,
    channels: int | None = None,
) -> Corrections:
    """Sequential statistical matching (the APT baseline) from the same statistics.

    Windows are visited in raster order. Each is matched, per channel, in mean and standard deviation
    (``"gain-offset"``) or in mean only (``"offset"``) to its already-corrected left and top neighbours, pooled
    over the shared bands; a neighbour's corrected moments follow analytically from its affine map. A window
    with no earlier neighbour (the first one) is matched to its anchor when one is given, else left as is.

    Parameters
    ----------
    grid
        The plan, its grid ``(rows, cols)``, or the number of windows.
    pairs, refs
        As for :func:`solve_global`.
    mode
        ``"gain-offset"`` or ``"offset"``.
    strength
        Scales the result toward identity.
    full_scale
        Accepted for symmetry with :func:`solve_global` (the matching is scale-free).
    channels
        Channel count, needed only when no statistics are given.

    Returns
    -------
    Corrections
    """
    _check(mode, strength)
    del full_scale
    t0 = time.perf_counter()
    rows_, cols_ = _grid_shape(grid)
    n = rows_ * cols_
    pairs, refs = list(pairs), list(refs)
    nc = _channels(pairs, refs, channels)
    ia, ib, npair, mu_a, mu_b, s_a, s_b = _pair_table(pairs, 1.0)
    ir, _, m_t, m_r, t_t, t_r, _ = _ref_table(refs, 1.0)
    anchor_row = np.full(n, -1)
    anchor_row[ir] = np.arange(len(ir))
    # each pair is used when its later window (raster order) is visited; "self" is that later window
    late = np.maximum(ia, ib)
    self_is_b = ib == late
    other = np.where(self_is_b, ia, ib)
    m_self = np.where(self_is_b[:, None], mu_b, mu_a) if len(ia) else mu_a
    s_self = np.where(self_is_b[:, None], s_b, s_a) if len(ia) else s_a
    m_other = np.where(self_is_b[:, None], mu_a, mu_b) if len(ia) else mu_b
    s_other = np.where(self_is_b[:, None], s_a, s_b) if len(ia) else s_b
    order = np.argsort(late, kind="stable")
    bounds = np.searchsorted(late[order], np.arange(n + 1))
    gain = np.ones((n, nc))
    offset = np.zeros((n, nc))
    gain_mode = mode == "gain-offset"
    for i in range(n):
        rows = order[bounds[i] : bounds[i + 1]]
        if len(rows):
            j, w = other[rows], npair[rows, None]
            cm = gain[j] * m_other[rows] + offset[j]  # the neighbours' corrected moments
            cs = np.abs(gain[j]) * s_other[rows]
            tn = w.sum()
            mt, ms = (w * cm).sum(0) / tn, (w * m_self[rows]).sum(0) / tn
            st = np.sqrt(np.maximum((w * (cs**2 + cm**2)).sum(0) / tn - mt**2, 0.0))
            ss = np.sqrt(np.maximum((w * (s_self[rows] ** 2 + m_self[rows] ** 2)).sum(0) / tn - ms**2, 0.0))
        elif anchor_row[i] >= 0:
            k = anchor_row[i]
            mt, ms, st, ss = m_r[k], m_t[k], t_r[k], t_t[k]
        else:
            continue
        if gain_mode:
            ok = ss > 1e-12
            gain[i] = np.where(ok, st / np.where(ok, ss, 1.0), 1.0)
        offset[i] = mt - gain[i] * ms
    info = {"solver": "sequential", "mode": mode, "seconds": time.perf_counter() - t0}
    return Corrections(gain, offset, info).scaled(strength)
