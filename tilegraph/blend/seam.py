"""``seam``: an optimal cut through every overlap; each output pixel comes from one window.

The strip pass (:meth:`SeamBlender.measure_strip`, once per overlap strip) finds the minimum-error
boundary cut (Efros and Freeman's dynamic programme) through the strip: the cost of a pixel is the
squared difference of the two windows, blurred (sigma 1 px) so noise does not steer the cut, plus a
gentle pull toward the middle of the overlap; the cut moves at most one pixel per row and keeps
``feather + guard`` pixels from both ends of the overlap. Cuts are consistent where four windows meet
(Panorama-weaving style branch points): every segment runs between the plan's crop corners, so the
vertical seam between window columns ``j`` and ``j + 1`` is one path over the image height, made of the
segments of every window row, and likewise for horizontal seams. A pixel's window column is given by the
vertical seams, its window row by the horizontal ones: every pixel belongs to exactly one window.

:meth:`SeamBlender.blend` takes each pixel from its window and feathers ``feather`` pixels on each side
of every cut (raised-cosine weights across the cut). Only the paths (one small integer per pixel of
seam length) travel from the strip pass to the blend tasks. Windows that agree are left exactly as they
are; the result does not depend on the output chunking.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.ndimage import gaussian_filter1d

from tilegraph.blend.abc import Blender, Box, Strip, WindowReader, WindowTransform, overlap_strips
from tilegraph.errors import InputError
from tilegraph.plan.grid import AxisGrid
from tilegraph.plan.plan import Plan

__all__ = [
    "SeamBlender",
    "SeamPath",
    "SeamLayout",
    "seam_layout",
    "compose",
    "read_region",
    "axis_table",
    "AxisTable",
]

RegionGetter = Callable[[int, int, int, int, int], np.ndarray]
"""``get(index, y0, y1, x0, x1)``: window ``index``'s (corrected) output over an output box, ``(C, h, w)``."""


@dataclass(frozen=True)
class SeamPath:
    """One segment of a routed seam, as found by the strip pass.

    Attributes
    ----------
    axis : int
        1: a vertical seam (window ``b`` right of ``a``), positions are columns, one per row;
        0: a horizontal seam (``b`` below ``a``), positions are rows, one per column.
    start : int
        First row (``axis=1``) or column (``axis=0``) of the segment, in output pixels.
    base : int
        Output position of the overlap's first column (row); ``offsets`` are relative to it.
    offsets : numpy.ndarray
        uint16, ``offsets[k] + base`` is the first pixel taken from ``b`` in row (column) ``start + k``.
    mismatch : numpy.ndarray or None
        ``(C, n)`` float32 ``b - a`` along the cut (only for modes that correct it, e.g. ``poisson``).
    fit : object or None
        What the mode fitted to ``b - a`` over the strip (``poisson``: a plane), else ``None``.
    """

    axis: int
    start: int
    base: int
    offsets: np.ndarray
    mismatch: np.ndarray | None = None
    fit: Any = None

    @property
    def positions(self) -> np.ndarray:
        """Absolute cut positions (int64)."""
        return self.offsets.astype(np.int64) + self.base


class AxisTable:
    """Integer window geometry of one axis, precomputed (``AxisGrid`` computes with fractions per call).

    Same method names as :class:`~tilegraph.plan.grid.AxisGrid` for what blenders use in inner loops.
    """

    def __init__(self, axis: AxisGrid) -> None:
        n = axis.count
        self.count = n
        self.out_size = axis.out_size
        self.out_overlap = axis.out_overlap
        self.starts = [axis.out_start(i) for i in range(n)]
        self.foot = [axis.footprint(i) for i in range(n)]
        self.cuts = [axis.cut(i) for i in range(n)]
        self.keeps = [axis.keep(i) for i in range(n)]

    def out_start(self, i: int) -> int:
        return self.starts[i]

    def footprint(self, i: int) -> tuple[int, int]:
        return self.foot[i]

    def cut(self, i: int) -> int:
        if i < 0:
            return 0
        return self.cuts[i] if i < self.count - 1 else self.out_size

    def keep(self, i: int) -> tuple[int, int]:
        return self.keeps[i]

    def covering(self, lo: int, hi: int, *, crop: bool) -> range:
        """Windows whose kept interval (``crop``) or footprint meets ``[lo, hi)``."""
        iv = self.keeps if crop else self.foot
        first = bisect.bisect_right([b for _, b in iv], lo)  # first interval ending after lo
        last = first - 1
        for i in range(first, self.count):
            a, b = iv[i]
            if a >= hi:
                break
            if b > a:
                last = i
        return range(first, last + 1) if last >= first else range(0)


_TABLES: dict[int, tuple[AxisGrid, AxisTable]] = {}


def axis_table(axis: AxisGrid) -> AxisTable:
    """The cached :class:`AxisTable` of ``axis`` (keyed by identity: a plan keeps its axes)."""
    hit = _TABLES.get(id(axis))
    if hit is not None and hit[0] is axis:
        return hit[1]
    if len(_TABLES) > 256:
        _TABLES.clear()
    table = AxisTable(axis)
    _TABLES[id(axis)] = (axis, table)
    return table


def read_region(
    plan: Plan,
    read: WindowReader,
    transform: WindowTransform | None,
    index: int,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
) -> np.ndarray:
    """Window ``index``'s output over the output box ``[y0:y1, x0:x1]`` (inside its footprint), ``(C, h, w)``."""
    row, col = divmod(int(index), plan.x.count)
    oy, ox = axis_table(plan.y).starts[row], axis_table(plan.x).starts[col]
    rows, cols = slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)
    region = read(index, rows, cols)
    if transform is not None:
        region = transform(index, region, (rows, cols))
    return region


def _overlap(axis: AxisGrid | AxisTable, i: int) -> tuple[int, int]:
    """Output interval shared by windows ``i`` and ``i + 1`` along ``axis``."""
    return axis.out_start(i + 1), min(axis.footprint(i)[1], axis.out_size)


def _cut_bounds(axis: AxisGrid, i: int, margin: int) -> tuple[int, int]:
    """Allowed first-pixel-of-``b`` positions ``[lo, hi]`` of a cut between windows ``i`` and ``i + 1``."""
    lo, hi = _overlap(axis, i)
    c = axis.cut(i)
    a, b = lo + margin, hi - margin
    if a > c:
        a = c
    if b < c:
        b = c
    return a, b


def min_cut(cost: np.ndarray, lo: int, hi: int, start: int | None, end: int | None) -> np.ndarray:
    """Minimum-cost path down the rows of ``cost`` (one column per row, moving at most one column).

    Columns outside ``[lo, hi]`` are forbidden; ``start``/``end`` fix the first/last column. Ties prefer
    going straight, then left, so the result is deterministic. Returns int64 columns, one per row.
    """
    n, w = cost.shape
    big = np.float64(np.inf)
    c = np.full((n, w), big)
    c[:, lo : hi + 1] = cost[:, lo : hi + 1]
    acc = c[0].copy()
    if start is not None:
        keep = acc[start]
        acc[:] = big
        acc[start] = keep
    back = np.zeros((n, w), dtype=np.int8)
    left = np.empty(w)
    right = np.empty(w)
    for y in range(1, n):
        left[0], left[1:] = big, acc[:-1]
        right[-1], right[:-1] = big, acc[1:]
        choice = np.stack([acc, left, right])
        k = np.argmin(choice, axis=0)
        back[y] = k
        acc = c[y] + np.take_along_axis(choice, k[None], axis=0)[0]
    x = int(end) if end is not None else int(np.argmin(acc))
    path = np.empty(n, dtype=np.int64)
    move = np.array([0, -1, 1])
    for y in range(n - 1, -1, -1):
        path[y] = x
        x += int(move[back[y, x]])
    return path


@dataclass(frozen=True)
class SeamLayout:
    """The cuts relevant to one output box: vertical cut columns per row, horizontal cut rows per column.

    ``vertical[j]`` (``(rows of the box,)``, absolute columns) is the cut between window columns ``j``
    and ``j + 1``, for every seam whose feathered band can reach the box; ``horizontal[r]`` likewise.
    """

    box: Box
    vertical: dict[int, np.ndarray]
    horizontal: dict[int, np.ndarray]


def seam_layout(plan: Plan, box: Box, strips: Mapping[tuple[int, int], SeamPath], reach: int) -> SeamLayout:
    """Assemble the cuts that matter for ``box`` (bands within ``reach`` px) from the strip results."""
    y0, y1, x0, x1 = box
    rows, cols = plan.grid
    tx, ty = axis_table(plan.x), axis_table(plan.y)
    vertical: dict[int, np.ndarray] = {}
    for j in _seams_meeting(tx, x0 - reach, x1 + reach):
        vertical[j] = _assemble(ty, y0, y1, _pair_v(cols, j), strips, tx.cut(j))
    horizontal: dict[int, np.ndarray] = {}
    for r in _seams_meeting(ty, y0 - reach, y1 + reach):
        horizontal[r] = _assemble(tx, x0, x1, _pair_h(cols, r), strips, ty.cut(r))
    return SeamLayout(box, vertical, horizontal)


def _seams_meeting(axis: AxisTable, lo: int, hi: int) -> list[int]:
    """Seams whose overlap meets ``[lo, hi)``."""
    wins = axis.covering(max(0, lo), min(axis.out_size, hi), crop=False)
    out = []
    for i in range(max(0, wins.start - 1), min(axis.count - 1, wins.stop)):
        a, b = _overlap(axis, i)
        if b > lo and a < hi:
            out.append(i)
    return out


def _pair_v(cols: int, j: int) -> Callable[[int], tuple[int, int]]:
    return lambda r: (r * cols + j, r * cols + j + 1)


def _pair_h(cols: int, r: int) -> Callable[[int], tuple[int, int]]:
    return lambda c: (r * cols + c, (r + 1) * cols + c)


def _assemble(
    along: AxisTable,
    a0: int,
    a1: int,
    pair: Callable[[int], tuple[int, int]],
    strips: Mapping[tuple[int, int], SeamPath],
    default: int,
) -> np.ndarray:
    out = np.full(a1 - a0, default, dtype=np.int64)
    for k in along.covering(a0, a1, crop=True):
        path = strips.get(pair(k))
        if path is None:
            raise InputError(
                f"seam blend: no strip result for windows {pair(k)}",
                hint="run the strip pass (measure_strip/combine_strips) over every strip before blending",
            )
        lo, hi = max(a0, path.start), min(a1, path.start + path.offsets.size)
        if lo < hi:
            out[lo - a0 : hi - a0] = path.positions[lo - path.start : hi - path.start]
    return out


def _feather(d: np.ndarray, f: int) -> np.ndarray:
    """Weight of the window after a cut at signed distance ``d = x - cut`` (pixel ``cut`` is its first)."""
    if f <= 0:
        return (d >= 0).astype(np.float32)
    t = np.clip((d + 0.5) / (2 * f) + 0.5, 0.0, 1.0)
    return (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)


def _partition(
    lo: int, hi: int, axis: AxisTable, cuts: Mapping[int, np.ndarray], f: int
) -> list[tuple[int, int, tuple[int, ...], int | None]]:
    """Split ``[lo, hi)`` into runs: ``(a, b, windows, seam)``; ``seam`` is None where one window holds the run."""
    bands = []
    for j, pos in sorted(cuts.items()):
        a, b = max(lo, int(pos.min()) - f), min(hi, int(pos.max()) + f)
        if a < b:
            bands.append((a, b, j))
    out: list[tuple[int, int, tuple[int, ...], int | None]] = []
    x = lo
    for a, b, j in bands:
        if a > x:
            out.append((x, a, (_owner(axis, cuts, x),), None))
        a = max(a, x)
        if b > a:
            out.append((a, b, (j, j + 1), j))
        x = max(x, b)
    if x < hi:
        out.append((x, hi, (_owner(axis, cuts, x),), None))
    return out


def _owner(axis: AxisTable, cuts: Mapping[int, np.ndarray], x: int) -> int:
    """Window (index along ``axis``) holding position ``x`` away from every cut band: the cuts left of it."""
    n = bisect.bisect_right(axis.cuts[: axis.count - 1], x)  # crop cuts at or left of x
    for j, pos in cuts.items():  # routed cuts near the box replace their crop cut
        n += int(int(pos.max()) <= x) - int(axis.cuts[j] <= x)
    return n


def compose(plan: Plan, box: Box, layout: SeamLayout, get: RegionGetter, feather: int) -> np.ndarray:
    """Each pixel from its window (the cuts of ``layout``), feathered ``feather`` px across every cut.

    Returns ``(rows, cols, C)`` float32. Where windows agree the output equals them exactly (each pixel
    is its dominant window plus weighted differences); runs away from every cut are plain copies.
    """
    y0, y1, x0, x1 = box
    cols_n = plan.x.count
    col_runs = _partition(x0, x1, axis_table(plan.x), layout.vertical, feather)
    row_runs = _partition(y0, y1, axis_table(plan.y), layout.horizontal, feather)
    out: np.ndarray | None = None
    for ra, rb, rwin, rseam in row_runs:
        for ca, cb, cwin, cseam in col_runs:
            dst = (slice(None), slice(ra - y0, rb - y0), slice(ca - x0, cb - x0))
            if rseam is None and cseam is None:  # one window: a copy
                part = get(rwin[0] * cols_n + cwin[0], ra, rb, ca, cb)
                if out is None:
                    out = np.empty((part.shape[0], y1 - y0, x1 - x0), dtype=np.float32)
                out[dst] = part
                continue
            wx = None
            if cseam is not None:
                pos = layout.vertical[cseam][ra - y0 : rb - y0]
                wx = _feather(np.arange(ca, cb)[None, :] - pos[:, None], feather)
            wy = None
            if rseam is not None:
                pos = layout.horizontal[rseam][ca - x0 : cb - x0]
                wy = _feather(np.arange(ra, rb)[:, None] - pos[None, :], feather)
            if wx is not None and wy is not None:
                parts, weights = [], []
                for ir, r in enumerate(rwin):
                    for ic, c in enumerate(cwin):
                        w = (wx if ic == 1 else 1.0 - wx) * (wy if ir == 1 else 1.0 - wy)
                        if w.any():
                            weights.append(w)
                            parts.append(get(r * cols_n + c, ra, rb, ca, cb))
                cell = _mix(parts, weights)
            else:
                w2 = wx if wx is not None else wy
                assert w2 is not None
                if cseam is not None:
                    ia, ib = rwin[0] * cols_n + cwin[0], rwin[0] * cols_n + cwin[1]
                else:
                    ia, ib = rwin[0] * cols_n + cwin[0], rwin[1] * cols_n + cwin[0]
                cell = _mix2(get(ia, ra, rb, ca, cb), get(ib, ra, rb, ca, cb), w2)
            if out is None:
                out = np.empty((cell.shape[0], y1 - y0, x1 - x0), dtype=np.float32)
            out[dst] = cell
    if out is None:
        raise RuntimeError(f"no window covers output box {box}")
    return np.moveaxis(out, 0, -1)


def _mix2(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(1 - w) a + w b`` as the dominant window plus its weighted difference (exact where they agree)."""
    d = np.subtract(b, a, dtype=np.float32)
    first = w < 0.5
    base = np.where(first[None], a, b)
    t = np.where(first, w, w - 1.0).astype(np.float32)
    base += t[None] * d
    return base


def _mix(parts: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """``sum_i w_i y_i`` written as the dominant window plus weighted differences (exact where they agree)."""
    if len(parts) == 1:
        return np.array(parts[0], dtype=np.float32, copy=True)
    w = np.stack(weights)
    y = np.stack([np.asarray(p, dtype=np.float32) for p in parts])
    k = np.argmax(w, axis=0)
    base = np.take_along_axis(y, k[None, None], axis=0)[0]
    out = base.copy()
    for i in range(len(parts)):
        wi = np.where(k == i, 0.0, w[i]).astype(np.float32)
        if wi.any():
            out += wi[None] * (y[i] - base)
    return out


class SeamBlender(Blender):
    """Optimal cuts through the overlaps, each pixel from one window, a narrow feather (see the module notes).

    Attributes
    ----------
    feather : int
        Pixels on each side of a cut over which the two windows are cross-faded.
    guard : int or None
        Pixels a cut keeps from each end of the overlap beyond the feather (default: overlap / 8, >= 2).
    centre_pull : float
        Weight of the pull toward the middle of the overlap, relative to the mean cost.
    """

    name: ClassVar[str] = "seam"
    strip_pass: ClassVar[bool] = True
    confidence_rule: ClassVar[str] = "ratio"  # the feather weighs per pixel
    feather: int = 3
    guard: int | None = None
    centre_pull: float = 0.1
    #: whether the strip pass also records the mismatch along the cut (for gradient-domain repair)
    record_mismatch: ClassVar[bool] = False

    def strips_for_box(self, plan: Plan, box: Box) -> list[Strip]:
        """Strips whose overlap meets the box grown by the feather: every cut whose band can reach it."""
        f = self.feather + 1
        y0, y1, x0, x1 = box[0] - f, box[1] + f, box[2] - f, box[3] + f
        return [
            s
            for s in overlap_strips(plan)
            if s.box[0] < y1 and s.box[1] > y0 and s.box[2] < x1 and s.box[3] > x0
        ]

    def _margin(self, axis: AxisGrid) -> int:
        g = self.guard if self.guard is not None else max(2, axis.out_overlap // 8)
        return self.feather + g

    def measure_strip(
        self, plan: Plan, strip: Strip, read: WindowReader, transform: WindowTransform | None
    ) -> SeamPath:
        """The cut through one overlap strip, between the plan's crop corners at its ends."""
        rows_n, cols_n = plan.grid
        ra, ca = divmod(strip.a, cols_n)
        if strip.axis == 1:  # vertical seam: rows along, columns across
            along, across, k_along, k_across = plan.y, plan.x, ra, ca
        else:
            along, across, k_along, k_across = plan.x, plan.y, ca, ra
        s0, s1 = along.keep(k_along)
        lo, hi = _overlap(across, k_across)
        if strip.axis == 1:
            a = read_region(plan, read, transform, strip.a, s0, s1, lo, hi)
            b = read_region(plan, read, transform, strip.b, s0, s1, lo, hi)
        else:
            a = np.swapaxes(read_region(plan, read, transform, strip.a, lo, hi, s0, s1), 1, 2)
            b = np.swapaxes(read_region(plan, read, transform, strip.b, lo, hi, s0, s1), 1, 2)
        diff = b.astype(np.float64) - a.astype(np.float64)  # (C, along, across)
        along_pos = np.arange(s0, s1) + 0.5
        across_pos = np.arange(lo, hi) + 0.5
        diff, fit = self.fit_strip(plan, strip, diff, along_pos, across_pos)
        blurred = gaussian_filter1d(
            gaussian_filter1d(diff, 1.0, axis=1, mode="nearest"), 1.0, axis=2, mode="nearest"
        )
        cost = (blurred**2).sum(axis=0)
        cut = across.cut(k_across)
        c_lo, c_hi = _cut_bounds(across, k_across, self._margin(across))
        u = np.arange(lo, hi)
        half = max(1.0, (hi - lo) / 2)
        cost = cost + self.centre_pull * (float(cost.mean()) + 1e-12) * ((u - cut) / half)[None, :] ** 2
        start = cut - lo if s0 > 0 else None
        end = cut - lo if s1 < along.out_size else None
        path = min_cut(cost, c_lo - lo, c_hi - lo, start, end)
        mismatch = None
        if self.record_mismatch:
            rr = np.arange(path.size)
            f = max(1, self.feather)
            cols = np.clip(path[:, None] + np.arange(-f, f)[None, :], 0, diff.shape[2] - 1)
            mismatch = diff[:, rr[:, None], cols].mean(axis=2).astype(np.float32)
        return SeamPath(strip.axis, s0, lo, path.astype(np.uint16), mismatch, fit)

    def fit_strip(
        self, plan: Plan, strip: Strip, diff: np.ndarray, along: np.ndarray, across: np.ndarray
    ) -> tuple[np.ndarray, Any]:
        """What the cut is found on (and the mismatch measured from): ``diff`` ``(C, along, across)``, the
        windows' difference ``b - a`` at output positions ``along`` x ``across``, less what this mode
        corrects before cutting; and the fit it keeps (default: ``diff`` as it is, ``None``)."""
        return diff, None

    def combine_strips(self, plan: Plan, results: Mapping[tuple[int, int], Any]) -> Any:
        """The paths keyed by ``(a, b)``; a blend task needs only those of :meth:`strips_for_box`."""
        return {k: v for k, v in sorted(results.items())}

    def blend(
        self,
        plan: Plan,
        box: Box,
        read: WindowReader,
        *,
        transform: WindowTransform | None = None,
        strips: Any = None,
    ) -> np.ndarray:
        layout = seam_layout(plan, box, strips or {}, self.feather)

        def get(index: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return read_region(plan, read, transform, index, y0, y1, x0, x1)

        return compose(plan, box, layout, get, self.feather)

    def describe(self) -> dict:
        return {
            "mode": self.name,
            "feather": self.feather,
            "guard": self.guard,
            "centre_pull": self.centre_pull,
        }
