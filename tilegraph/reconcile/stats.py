"""Small sufficient statistics for colour reconciliation (pure numpy/scipy, no I/O).

Two kinds of record travel to the client, never pixels:

* :class:`PairStats`: for two neighbouring windows (right or down), moments of each window's low-passed
  output over the central part of their actual overlap, in output coordinates;
* :class:`TileStats`: for one window, moments of its low-passed output and of a reference over the window's
  core (the interval ``crop`` keeps), for the anchor.

Both hold per-channel float64 arrays of counts, sums, sums of squares and cross sums, so records of the same
region can be added and every mean and standard deviation is derived, not stored.

Two ways to produce pair records, with identical moments:

* one task per pair: :func:`pair_stats` reads both windows' overlap bands (and adds the cross sum);
* one task per window, while the window's output is still in memory: :func:`window_stats` computes the
  moments of all of the window's overlap bands and its anchor record; :func:`pairs_from_windows` joins the
  halves on the client (no cross sum, which the solver does not need).

Geometry: the overlap of windows ``a`` and ``b`` is intersected with the image (the far-edge padding is not
image) and shrunk by ``margin`` output pixels on every side, which drops the windows' outer edges where models
are least reliable. The low-pass (Gaussian, ``sigma`` output pixels) is computed on the band plus up to
``ceil(3 sigma)`` pixels of context, so hallucinated texture does not drive the solve. The context stays
inside *both* windows of the pair (their overlap, less the margin): the two halves of a pair are then
computed from the same pixels, and windows that agree there give identical moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from tilegraph.plan.plan import Plan

__all__ = [
    "PairStats",
    "TileStats",
    "WindowStats",
    "neighbour_pairs",
    "overlap_box",
    "core_box",
    "pair_stats",
    "reference_stats",
    "window_stats",
    "pairs_from_windows",
]

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) in output coordinates


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class PairStats:
    """Moments of two neighbouring windows over their shared overlap band.

    Attributes
    ----------
    a, b : int
        Flat window indices; ``b`` is the right (``axis="x"``) or lower (``axis="y"``) neighbour of ``a``.
    axis : str
        ``"x"`` for a left/right pair, ``"y"`` for a top/bottom pair.
    n : int
        Pixels in the band (per channel).
    sum_a, sum_b, sumsq_a, sumsq_b : numpy.ndarray
        Per-channel ``(C,)`` float64 sums of the low-passed outputs and of their squares.
    sum_ab : numpy.ndarray or None
        Per-channel cross sum, or ``None`` when the two halves were computed separately.
    box : tuple of int
        The band ``(y0, y1, x0, x1)`` in output coordinates.
    """

    a: int
    b: int
    axis: str
    n: int
    sum_a: np.ndarray
    sum_b: np.ndarray
    sumsq_a: np.ndarray
    sumsq_b: np.ndarray
    sum_ab: np.ndarray | None = None
    box: Box = (0, 0, 0, 0)

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.sum_a.shape[0])

    @property
    def mean_a(self) -> np.ndarray:
        """Per-channel mean of window ``a`` over the band."""
        return self.sum_a / max(self.n, 1)

    @property
    def mean_b(self) -> np.ndarray:
        """Per-channel mean of window ``b`` over the band."""
        return self.sum_b / max(self.n, 1)

    @property
    def std_a(self) -> np.ndarray:
        """Per-channel standard deviation of window ``a`` over the band."""
        return _std(self.n, self.sum_a, self.sumsq_a)

    @property
    def std_b(self) -> np.ndarray:
        """Per-channel standard deviation of window ``b`` over the band."""
        return _std(self.n, self.sum_b, self.sumsq_b)


@dataclass(frozen=True)
class TileStats:
    """Moments of one window's low-passed output and of the reference over the window's core.

    Attributes
    ----------
    index : int
        Flat window index.
    n : int
        Pixels in the core (per channel).
    sum_t, sumsq_t : numpy.ndarray
        Per-channel sums of the window's output and of its square.
    sum_r, sumsq_r : numpy.ndarray
        The same for the reference.
    sum_tr : numpy.ndarray
        Per-channel cross sum of output and reference.
    box : tuple of int
        The core ``(y0, y1, x0, x1)`` in output coordinates.
    """

    index: int
    n: int
    sum_t: np.ndarray
    sumsq_t: np.ndarray
    sum_r: np.ndarray
    sumsq_r: np.ndarray
    sum_tr: np.ndarray
    box: Box = (0, 0, 0, 0)

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.sum_t.shape[0])

    @property
    def mean_t(self) -> np.ndarray:
        """Per-channel mean of the window's output."""
        return self.sum_t / max(self.n, 1)

    @property
    def mean_r(self) -> np.ndarray:
        """Per-channel mean of the reference."""
        return self.sum_r / max(self.n, 1)

    @property
    def std_t(self) -> np.ndarray:
        """Per-channel standard deviation of the window's output."""
        return _std(self.n, self.sum_t, self.sumsq_t)

    @property
    def std_r(self) -> np.ndarray:
        """Per-channel standard deviation of the reference."""
        return _std(self.n, self.sum_r, self.sumsq_r)


@dataclass(frozen=True)
class WindowStats:
    """Everything one window contributes, computed once while its output is in memory.

    Attributes
    ----------
    index : int
        Flat window index.
    sides : dict
        ``{neighbour index: (n, sum, sumsq, box)}``: moments of this window's low-passed output over each
        overlap band, and the band in output coordinates.
    ref : TileStats or None
        Anchor record, when a reference was given.
    """

    index: int
    sides: dict[int, tuple[int, np.ndarray, np.ndarray, Box]] = field(default_factory=dict)
    ref: TileStats | None = None


def _std(n: int, s: np.ndarray, ss: np.ndarray) -> np.ndarray:
    if n <= 0:
        return np.zeros_like(s)
    mean = s / n
    return np.sqrt(np.maximum(ss / n - mean * mean, 0.0))


# --------------------------------------------------------------------------- geometry
def neighbour_pairs(plan: Plan) -> list[tuple[int, int]]:
    """Adjacent window pairs ``(a, b)`` with ``b`` right of or below ``a``, in raster order of ``a``.

    Parameters
    ----------
    plan
        The run's plan.

    Returns
    -------
    list of tuple
        Right neighbours first, then the lower one, for each window.
    """
    rows, cols = plan.grid
    pairs = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                pairs.append((i, i + 1))
            if r + 1 < rows:
                pairs.append((i, i + cols))
    return pairs


def _auto_margin(plan: Plan, margin: int | None) -> int:
    if margin is not None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        return int(margin)
    return min(plan.y.out_overlap, plan.x.out_overlap) // 4


def _shrink(lo: int, hi: int, margin: int) -> tuple[int, int]:
    """Shrink ``[lo, hi)`` by ``margin`` per side, keeping at least one pixel when there is one."""
    if hi - lo <= 0:
        return lo, lo
    m = min(margin, (hi - lo - 1) // 2)
    return lo + m, hi - m


def overlap_box(plan: Plan, a: int, b: int, *, margin: int | None = None) -> Box:
    """Central part of the overlap of neighbouring windows ``a`` and ``b`` in output coordinates.

    Parameters
    ----------
    plan
        The run's plan.
    a, b
        Flat indices; ``b`` must be the right or lower neighbour of ``a``.
    margin
        Output pixels dropped on every side of the band (default: a quarter of the output overlap).

    Returns
    -------
    tuple of int
        ``(y0, y1, x0, x1)``, possibly empty (``y0 == y1`` or ``x0 == x1``).

    Raises
    ------
    ValueError
        When ``b`` is not the right or lower neighbour of ``a``.
    """
    margin = _auto_margin(plan, margin)
    wa, wb = plan.window(a), plan.window(b)
    h, w = plan.out_shape
    oy, ox = plan.out_window_shape
    if wb.row == wa.row and wb.col == wa.col + 1:
        y0, y1 = plan.y.out_start(wa.row), min(h, plan.y.out_start(wa.row) + oy)
        x0, x1 = plan.x.out_start(wb.col), min(w, plan.x.out_start(wa.col) + ox)
    elif wb.col == wa.col and wb.row == wa.row + 1:
        y0, y1 = plan.y.out_start(wb.row), min(h, plan.y.out_start(wa.row) + oy)
        x0, x1 = plan.x.out_start(wa.col), min(w, plan.x.out_start(wa.col) + ox)
    else:
        raise ValueError(f"window {b} is not the right or lower neighbour of window {a}")
    y0, y1 = _shrink(y0, max(y0, y1), margin)
    x0, x1 = _shrink(x0, max(x0, x1), margin)
    return y0, y1, x0, x1


def core_box(plan: Plan, index: int, *, margin: int = 0) -> Box:
    """The window's core in output coordinates: the interval ``crop`` keeps, shrunk by ``margin``.

    Parameters
    ----------
    plan
        The run's plan.
    index
        Flat window index.
    margin
        Output pixels dropped on every side.

    Returns
    -------
    tuple of int
        ``(y0, y1, x0, x1)``.
    """
    w = plan.window(index)
    y0, y1 = _shrink(*plan.y.keep(w.row), margin)
    x0, x1 = _shrink(*plan.x.keep(w.col), margin)
    return y0, y1, x0, x1


def _local(plan: Plan, index: int, box: Box) -> tuple[slice, slice]:
    w = plan.window(index)
    oy0, ox0 = plan.y.out_start(w.row), plan.x.out_start(w.col)
    y0, y1, x0, x1 = box
    return slice(y0 - oy0, y1 - oy0), slice(x0 - ox0, x1 - ox0)


def _allowed(plan: Plan, index: int, margin: int) -> Box:
    """Window-local box that statistics may read: the window inside the image, shrunk by ``margin``."""
    w = plan.window(index)
    oy0, ox0 = plan.y.out_start(w.row), plan.x.out_start(w.col)
    hh, ww = plan.out_window_shape
    y1 = min(hh, plan.out_shape[0] - oy0)
    x1 = min(ww, plan.out_shape[1] - ox0)
    r0, r1 = _shrink(0, y1, margin)
    c0, c1 = _shrink(0, x1, margin)
    return r0, r1, c0, c1


def _pair_allowed(plan: Plan, index: int, other: int, margin: int) -> Box:
    """Window-local box (of ``index``) that both ``index``'s and ``other``'s allowed boxes cover.

    A pair's band is low-passed with context from this box only, so both halves of a pair are computed from
    the very same pixels: windows that agree there give identical moments, bit for bit.
    """
    wa, wb = plan.window(index), plan.window(other)
    ay, ax = plan.y.out_start(wa.row), plan.x.out_start(wa.col)
    by, bx = plan.y.out_start(wb.row), plan.x.out_start(wb.col)
    a0, a1, a2, a3 = _allowed(plan, index, margin)
    b0, b1, b2, b3 = _allowed(plan, other, margin)
    y0, y1 = max(a0 + ay, b0 + by), min(a1 + ay, b1 + by)
    x0, x1 = max(a2 + ax, b2 + bx), min(a3 + ax, b3 + bx)
    return y0 - ay, max(y0, y1) - ay, x0 - ax, max(x0, x1) - ax


def _lowpass_region(out, rows: slice, cols: slice, sigma: float, allowed: Box) -> np.ndarray:
    """Low-passed ``out[:, rows, cols]`` (float64), filtered with context from the ``allowed`` box only.

    The window's outer ``margin`` pixels (and anything past the image) never influence a statistic, not even
    through the filter's support; the filter extends the allowed box by its nearest values.
    """
    if sigma <= 0:
        return np.asarray(out[:, rows, cols], dtype=np.float64)
    ctx = int(math.ceil(3 * sigma))
    a0, a1, b0, b1 = allowed
    r0, r1 = max(a0, rows.start - ctx), min(a1, rows.stop + ctx)
    c0, c1 = max(b0, cols.start - ctx), min(b1, cols.stop + ctx)
    block = np.asarray(out[:, r0:r1, c0:c1], dtype=np.float64)
    block = gaussian_filter(block, sigma=(0, sigma, sigma), mode="nearest")
    return block[:, rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]


def _check_out(plan: Plan, out, name: str) -> None:
    shape = tuple(out.shape)
    if len(shape) != 3 or shape[1:] != plan.out_window_shape:
        raise ValueError(
            f"{name} must be a window output (C, {plan.out_window_shape[0]}, "
            f"{plan.out_window_shape[1]}), got shape {shape}"
        )


def _moments(v: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    c = v.shape[0]
    flat = v.reshape(c, -1)
    return int(flat.shape[1]), flat.sum(axis=1), np.einsum("ij,ij->i", flat, flat)


# --------------------------------------------------------------------------- records from outputs
def pair_stats(
    plan: Plan,
    a_index: int,
    b_index: int,
    a_out,
    b_out,
    *,
    sigma: float = 2.0,
    margin: int | None = None,
) -> PairStats:
    """Moments of two neighbouring windows over the central part of their overlap.

    Parameters
    ----------
    plan
        The run's plan.
    a_index, b_index
        Flat indices; ``b_index`` is the right or lower neighbour of ``a_index``.
    a_out, b_out
        Full window outputs ``(C, Ho, Wo)`` (numpy, or any array-like that slices lazily, such as a Zarr
        view: only the band plus the low-pass context is read).
    sigma
        Gaussian low-pass in output pixels (0 disables it).
    margin
        Output pixels dropped on every side of the band, and at the windows' edges for the filter's context
        (default: a quarter of the output overlap).

    Returns
    -------
    PairStats
        With the cross sum ``sum_ab``.
    """
    _check_out(plan, a_out, "a_out")
    _check_out(plan, b_out, "b_out")
    margin = _auto_margin(plan, margin)
    box = overlap_box(plan, a_index, b_index, margin=margin)
    axis = "x" if plan.window(a_index).row == plan.window(b_index).row else "y"
    if box[1] <= box[0] or box[3] <= box[2]:
        z = np.zeros(a_out.shape[0])
        return PairStats(a_index, b_index, axis, 0, z, z.copy(), z.copy(), z.copy(), z.copy(), box)
    u = _lowpass_region(
        a_out, *_local(plan, a_index, box), sigma, _pair_allowed(plan, a_index, b_index, margin)
    )
    v = _lowpass_region(
        b_out, *_local(plan, b_index, box), sigma, _pair_allowed(plan, b_index, a_index, margin)
    )
    n, su, suu = _moments(u)
    _, sv, svv = _moments(v)
    c = u.shape[0]
    suv = np.einsum("ij,ij->i", u.reshape(c, -1), v.reshape(c, -1))
    return PairStats(a_index, b_index, axis, n, su, sv, suu, svv, suv, box)


def reference_stats(
    plan: Plan,
    index: int,
    out,
    reference,
    *,
    sigma: float = 2.0,
    margin: int | None = None,
) -> TileStats:
    """Moments of a window's output and of the reference over the window's core.

    Parameters
    ----------
    plan
        The run's plan.
    index
        Flat window index.
    out
        The window's output ``(C, Ho, Wo)``.
    reference
        The same window region of the reference at output resolution, ``(C, Ho, Wo)`` (e.g. the input
        window resampled to the output scale, or a whole-image thumbnail result upsampled).
    sigma
        Gaussian low-pass applied to both, in output pixels. Match it to the reference's own scale (a
        thumbnail ``f`` times smaller: ``sigma`` about ``f``) so that detail the reference cannot have does
        not count.
    margin
        Output pixels dropped on every side of the core, and at the window's edges for the filter's
        context (default: a quarter of the output overlap).

    Returns
    -------
    TileStats
    """
    _check_out(plan, out, "out")
    _check_out(plan, reference, "reference")
    if reference.shape[0] != out.shape[0]:
        raise ValueError(f"reference has {reference.shape[0]} channels, the output {out.shape[0]}")
    margin = _auto_margin(plan, margin)
    box = core_box(plan, index, margin=margin)
    rows, cols = _local(plan, index, box)
    allowed = _allowed(plan, index, margin)
    t = _lowpass_region(out, rows, cols, sigma, allowed)
    r = _lowpass_region(reference, rows, cols, sigma, allowed)
    n, st, stt = _moments(t)
    _, sr, srr = _moments(r)
    c = t.shape[0]
    str_ = np.einsum("ij,ij->i", t.reshape(c, -1), r.reshape(c, -1))
    return TileStats(index, n, st, stt, sr, srr, str_, box)


def _neighbours(plan: Plan, index: int) -> list[tuple[int, int, int]]:
    """``(neighbour, a, b)`` for each 4-neighbour, with ``(a, b)`` in :func:`neighbour_pairs` order."""
    rows, cols = plan.grid
    r, c = divmod(index, cols)
    out = []
    if c > 0:
        out.append((index - 1, index - 1, index))
    if r > 0:
        out.append((index - cols, index - cols, index))
    if c + 1 < cols:
        out.append((index + 1, index, index + 1))
    if r + 1 < rows:
        out.append((index + cols, index, index + cols))
    return out


def window_stats(
    plan: Plan,
    index: int,
    out,
    reference=None,
    *,
    sigma: float = 2.0,
    ref_sigma: float | None = None,
    margin: int | None = None,
) -> WindowStats:
    """All statistics one window contributes, from its output alone (no neighbour read).

    Meant to run inside the inference task right after the window is produced; the result is a few hundred
    bytes.

    Parameters
    ----------
    plan
        The run's plan.
    index
        Flat window index.
    out
        The window's output ``(C, Ho, Wo)``.
    reference
        Optional reference for the same window region ``(C, Ho, Wo)``; see :func:`reference_stats`.
    sigma
        Low-pass for the overlap bands, output pixels.
    ref_sigma
        Low-pass for the anchor (default ``sigma``).
    margin
        Output pixels dropped on every side of each overlap band and of the core, and at the window's
        edges for the filter's context (default: a quarter of the output overlap).

    Returns
    -------
    WindowStats
    """
    _check_out(plan, out, "out")
    margin = _auto_margin(plan, margin)
    sides: dict[int, tuple[int, np.ndarray, np.ndarray, Box]] = {}
    for nb, a, b in _neighbours(plan, index):
        box = overlap_box(plan, a, b, margin=margin)
        if box[1] <= box[0] or box[3] <= box[2]:
            z = np.zeros(out.shape[0])
            sides[nb] = (0, z, z.copy(), box)
            continue
        allowed = _pair_allowed(plan, index, nb, margin)
        sides[nb] = (*_moments(_lowpass_region(out, *_local(plan, index, box), sigma, allowed)), box)
    ref = None
    if reference is not None:
        ref = reference_stats(
            plan, index, out, reference, sigma=sigma if ref_sigma is None else ref_sigma, margin=margin
        )
    return WindowStats(index, sides, ref)


def pairs_from_windows(plan: Plan, windows) -> list[PairStats]:
    """Join per-window halves into :class:`PairStats` records (without cross sums).

    Parameters
    ----------
    plan
        The run's plan.
    windows
        Iterable of :class:`WindowStats`, one per window (any order).

    Returns
    -------
    list of PairStats
        In :func:`neighbour_pairs` order; pairs with a missing half are left out.
    """
    by_index = {w.index: w for w in windows}
    out = []
    for a, b in neighbour_pairs(plan):
        wa, wb = by_index.get(a), by_index.get(b)
        if wa is None or wb is None or b not in wa.sides or a not in wb.sides:
            continue
        na, sa, ssa, box = wa.sides[b]
        nb, sb, ssb, _ = wb.sides[a]
        if na != nb:
            raise ValueError(f"halves of pair ({a}, {b}) disagree on the band size ({na} vs {nb})")
        axis = "x" if plan.window(a).row == plan.window(b).row else "y"
        out.append(PairStats(a, b, axis, na, sa, sb, ssa, ssb, None, box))
    return out
