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
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from tilegraph.blend.abc import Blender, Box, WindowReader, WindowTransform
from tilegraph.blend.detail import DetailMixin
from tilegraph.blend.seam import AxisTable, axis_table, read_region
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
    """``a`` extended by ``n`` samples at both ends of ``axis``: zeros, mirrored (``symmetric``) or repeated."""
    size = a.shape[axis]
    if mode == "zero":
        shape = list(a.shape)
        shape[axis] = n
        pad = np.zeros(shape, dtype=a.dtype)
        return np.concatenate([pad, a, pad], axis=axis)
    if mode == "symmetric" and size >= n:
        head = np.flip(np.take(a, np.arange(n), axis=axis), axis=axis)
        tail = np.flip(np.take(a, np.arange(size - n, size), axis=axis), axis=axis)
        return np.concatenate([head, a, tail], axis=axis)
    widths = [(0, 0)] * a.ndim
    widths[axis] = (n, n)
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


def _soft_cut(n: int, cut: int, feather: int) -> np.ndarray:
    """Level-0 mask: 0 before ``cut``, 1 from it, with a raised-cosine ramp over ``2 feather`` px."""
    x = np.arange(n) - cut + 0.5
    if feather <= 0:
        return (x > 0).astype(np.float32)
    t = np.clip(x / (2 * feather) + 0.5, 0.0, 1.0)
    return (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)


def pyramid_correction(
    d: np.ndarray, cut: int, levels: int, *, along_mode: str = "symmetric", feather: int = 1
) -> np.ndarray:
    """Correction ``collapse_k(W_k L_k(d)) - d [x >= cut]`` of a two-window blend across the last axis.

    ``d`` is ``(C, n_along, n_across)`` float32, zero outside the overlap and beyond its ends across
    (padded with zeros there: exact); ``cut`` indexes the first column of the second window. The mask
    pyramid ``W_k`` is 1-D (the cut is straight). Along the seam the array is continued by
    ``along_mode`` (``"symmetric"``) at its ends, which the caller keeps beyond the pixels it uses.
    The finest band is cross-faded over ``2 feather`` px instead of switching on one pixel boundary
    (two independent textures abutting on a line read as an edge).
    """
    n_across = d.shape[2]
    mask = (np.arange(n_across) >= cut).astype(np.float32)
    gs, ws = [d], [_soft_cut(n_across, cut, feather)]
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


@lru_cache(maxsize=256)
def seam_operators(
    n_in: int, off: int, n_dom: int, cut: int, levels: int, feather: int
) -> tuple[int, int, np.ndarray]:
    """The pyramid correction across a straight seam as one matrix per level (cached).

    With ``R``/``E`` the REDUCE/EXPAND operators and ``W_k`` the mask pyramid, the 2-D correction is
    ``sum_k B_k (x) P_k`` where ``P_k = E^k R^k`` acts along the seam and the ``B_k`` across it::

        B_k = E^k W_k R^k - E^k W_k E R^(k+1) ... (the second term from level k - 1),  B_0 -= [x >= cut]

    so a correction is ``L + 1`` small matrix products on progressively reduced rows (see
    :func:`fast_correction`), equal to :func:`pyramid_correction` up to float rounding. Input columns
    are the ``n_in`` overlap columns starting at ``off`` of a zero-padded domain of ``n_dom``; returns
    ``(lo, hi, B)`` with ``B`` ``(levels + 1, n_in, hi - lo)`` float32 over the output columns
    ``[lo, hi)`` of the domain where any ``B_k`` is non-zero.
    """
    eye = np.zeros((n_dom, n_in), dtype=np.float64)
    eye[off + np.arange(n_in), np.arange(n_in)] = 1.0
    gs = [eye]
    ws = [_soft_cut(n_dom, cut, feather).astype(np.float64)]
    for _ in range(levels):
        gs.append(_reduce(gs[-1], 0, "zero"))
        ws.append(_reduce(ws[-1], 0, "edge"))
    lens = [g.shape[0] for g in gs]

    def up(a: np.ndarray, k: int) -> np.ndarray:  # EXPAND from level k to level 0
        for j in range(k - 1, -1, -1):
            a = _expand(a, 0, lens[j], "zero")
        return a

    mats = []
    prev = None  # E^k W_k E R^(k+1) of level k - 1, expanded to level 0
    for k in range(levels + 1):
        a_k = up(ws[k][:, None] * gs[k], k)
        b_k = a_k - prev if prev is not None else a_k.copy()
        if k < levels:
            prev = up(ws[k][:, None] * _expand(gs[k + 1], 0, lens[k], "zero"), k)
        mats.append(b_k)
    mats[0] -= (np.arange(n_dom) >= cut)[:, None] * eye
    stack = np.stack(mats)  # (levels + 1, n_dom, n_in)
    nz = np.flatnonzero(np.abs(stack).max(axis=(0, 2)) > 1e-12)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
    out = np.ascontiguousarray(np.transpose(stack[:, lo:hi, :], (0, 2, 1))).astype(np.float32)
    out.flags.writeable = False
    return lo, hi, out


def _fill_pads(p: np.ndarray, n: int, mode: str) -> None:
    """The two rows before and after the ``n`` rows ``p[2 : n + 2]`` of a padded buffer: zeros or mirrored
    (as :func:`_pad`)."""
    if mode == "zero":
        p[:2] = 0.0
        p[n + 2 : n + 4] = 0.0
    else:  # symmetric
        p[1], p[0] = p[2], p[min(3, n + 1)]
        p[n + 2], p[n + 3] = p[n + 1], p[max(n, 2)]


def _reduce0(p: np.ndarray, n: int, mode: str) -> np.ndarray:
    """:func:`_reduce` along axis 0 of the ``n`` rows ``p[2 : n + 2]`` of a padded buffer (its pad rows are
    filled here): a new padded buffer whose rows ``2 : ceil(n / 2) + 2`` hold the result (the hot path: no
    padded copy, the result written in place, one temporary)."""
    _fill_pads(p, n, mode)
    m = (n + 1) // 2
    q = np.empty((m + 4,) + p.shape[1:], dtype=np.float32)
    out = q[2 : m + 2]
    np.multiply(p[2 : 2 * m + 1 : 2], np.float32(_W[2]), out=out)
    tmp = np.add(p[1 : 2 * m : 2], p[3 : 2 * m + 2 : 2])
    tmp *= np.float32(_W[1])
    out += tmp
    np.add(p[0 : 2 * m - 1 : 2], p[4 : 2 * m + 3 : 2], out=tmp)
    tmp *= np.float32(_W[0])
    out += tmp
    return q


def _expand0(a: np.ndarray, m: int, mode: str) -> np.ndarray:
    """:func:`_expand` along axis 0 of the ``m`` rows ``a[1 : m + 1]`` of a buffer with one pad row at each
    end (filled here: zeros or the end rows): a new such buffer, its rows ``1 : 2 m + 1`` the result (the
    hot path: even and odd rows written side by side, the odd rows the scratch of the even, no temporary).
    ``a`` may hold more rows after its pad row ``m + 1``: they are not read."""
    if mode == "zero":
        a[0] = 0.0
        a[m + 1] = 0.0
    else:
        a[0] = a[1]
        a[m + 1] = a[m]
    out = np.empty((2 * m + 2,) + a.shape[1:], dtype=np.float32)
    pairs = out[1 : 2 * m + 1].reshape((m, 2) + a.shape[1:])
    even, odd = pairs[:, 0], pairs[:, 1]
    np.add(a[:m], a[2 : m + 2], out=even)
    even *= np.float32(1.0 / 8)
    np.multiply(a[1 : m + 1], np.float32(6.0 / 8), out=odd)
    even += odd
    np.add(a[1 : m + 1], a[2 : m + 2], out=odd)
    odd *= np.float32(0.5)
    return out


@dataclass(frozen=True)
class _Blocks:
    """The non-zero block of each level's seam operator (most of each matrix is zero: level 0 acts on two
    columns around the cut, level ``k`` on about ``4 * 2^k``), and the input columns each level of the
    reduction chain must carry (those of its own and deeper levels)."""

    n_out: int
    blocks: tuple[
        tuple[int, int, int, int, np.ndarray], ...
    ]  # (i0, i1, o0, o1, B[i0:i1, o0:o1] float64) per level
    carry: tuple[tuple[int, int], ...]  # input columns levels >= k need


_BLOCKS: dict[int, tuple[np.ndarray, _Blocks]] = {}


def _blocks(ops: np.ndarray, tol: float = 0.0) -> _Blocks:
    """:class:`_Blocks` of ``ops`` (cached by identity: :func:`seam_operators` caches its matrices)."""
    hit = _BLOCKS.get(id(ops))
    if hit is not None and hit[0] is ops:
        return hit[1]
    levels = ops.shape[0]
    blocks: list[tuple[int, int, int, int, np.ndarray]] = []
    for k in range(levels):
        m = np.abs(ops[k]) > tol
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            blocks.append((0, 0, 0, 0, np.zeros((0, 0), np.float64)))
            continue
        i0, i1, o0, o1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        # float64 (exactly the float32 operator): the products are summed in float64, see :func:`_correct`
        b = np.ascontiguousarray(ops[k, i0:i1, o0:o1], dtype=np.float64)
        b.flags.writeable = False
        blocks.append((i0, i1, o0, o1, b))
    carry = []
    for k in range(levels):
        used = [(i0, i1) for i0, i1, *_ in blocks[k:] if i1 > i0]
        carry.append((min(a for a, _ in used), max(b for _, b in used)) if used else (0, 0))
    out = _Blocks(int(ops.shape[2]), tuple(blocks), tuple(carry))
    if len(_BLOCKS) > 512:
        _BLOCKS.clear()
    _BLOCKS[id(ops)] = (ops, out)
    return out


def fast_correction(
    diff: np.ndarray, ops: np.ndarray, levels: int, *, along_mode: str = "symmetric", layout: str = "channels"
) -> np.ndarray:
    """:func:`pyramid_correction` of the overlap differences ``diff`` ``(C, n_along, n_in)`` with the
    matrices of :func:`seam_operators`: ``(C, n_along, n_out)`` float32 (a view; ``layout="along"``: the
    ``(n_along, C, n_out)`` array it is computed in). See :func:`_correct`."""
    c, n, _ = diff.shape
    blk = _blocks(ops)
    lo, hi = blk.carry[0]
    acc = _correct(_along_buffer(diff[:, :, lo:hi]), n, blk, levels, along_mode)
    return acc if layout == "along" else np.transpose(acc, (1, 0, 2))


def _along_buffer(diff: np.ndarray) -> np.ndarray:
    """``diff`` ``(C, n, k)`` as the padded buffer :func:`_correct` takes: ``(n + 4, C, k)``, data in rows 2 to n + 2."""
    c, n, k = diff.shape
    p = np.empty((n + 4, c, k), dtype=np.float32)
    p[2 : n + 2] = np.transpose(diff, (1, 0, 2))
    return p


def _correct(p: np.ndarray, n: int, blk: _Blocks, levels: int, along_mode: str) -> np.ndarray:
    """The correction ``(n, K, n_out)`` (a view) of the ``K`` overlap differences held in the padded buffer
    ``p`` ``(n + 4, K, k)``: rows ``2 : n + 2``, the ``k`` input columns ``blk.carry[0]``. ``p`` is consumed:
    its pad rows are overwritten, and it is released once the next level is reduced when the caller holds
    no other reference to it.

    Each level multiplies only its operator's non-zero block: the same sums as the full products. Each
    level's product is taken on the way down, so that a level is released as soon as the next one is
    reduced; the expansion then adds them from the coarsest level up. Every level carries the columns of
    ``blk.carry[0]`` (the deeper levels' columns: the finest level's two lie inside them).
    """
    k_all = p.shape[1]
    off = blk.carry[0][0]
    terms: list[tuple[int, np.ndarray | None]] = []  # per level: its rows and its block's product
    for k in range(levels + 1):
        i0, i1, o0, o1, block = blk.blocks[k]
        term = None
        if i1 > i0:
            # in float64: BLAS sums in an order that depends on the number of rows (here, on the box), which
            # changed float32 results in the last bit between chunkings; float64 sums round to the same float32
            part = p[2 : n + 2, :, i0 - off : i1 - off].reshape(-1, i1 - i0).astype(np.float64)
            if o1 - o0 <= 2:  # the finest level's two columns: one row per column, added along it below
                term = block.T @ part.T
            else:
                term = (part @ block).reshape(n, k_all, o1 - o0)
        terms.append((n, term))
        if k < levels:
            p = _reduce0(p, n, along_mode)
            n = (n + 1) // 2
    del p
    acc: np.ndarray | None = None  # the sum so far, in rows 1 to m + 1 of a buffer padded by one row
    m = 0
    for k in range(levels, -1, -1):
        rows, term = terms.pop()
        if acc is None:
            acc = np.zeros((rows + 2, k_all, blk.n_out), np.float32)
        else:
            acc = _expand0(acc, m, along_mode)
        if term is not None:
            o0, o1 = blk.blocks[k][2:4]
            if term.ndim == 2:  # (columns, rows K): thousands of two-value rows added as two long ones
                cols = acc[1 : rows + 1].reshape(rows * k_all, blk.n_out)[:, o0:o1].T
                np.add(cols, term, out=cols)
            else:
                acc[1 : rows + 1, :, o0:o1] += term
        del term
        m = rows
    assert acc is not None
    return acc[1 : m + 1]


def _seam_domain(axis: AxisGrid, i: int, levels: int) -> tuple[int, int, int, int, int]:
    """``(d0, d1, o0, o1, cut)``: the aligned domain across seam ``i``, its overlap and cut (output px)."""
    return _seam_domains(axis, levels)[i]


_DOMAINS: dict[tuple[int, int], tuple[AxisGrid, tuple[tuple[int, int, int, int, int], ...]]] = {}


def _seam_domains(axis: AxisGrid, levels: int) -> tuple[tuple[int, int, int, int, int], ...]:
    hit = _DOMAINS.get((id(axis), levels))
    if hit is not None and hit[0] is axis:
        return hit[1]
    if len(_DOMAINS) > 256:
        _DOMAINS.clear()
    doms = _compute_domains(axis, levels)
    _DOMAINS[id(axis), levels] = (axis, doms)
    return doms


def _compute_domains(axis: AxisGrid, levels: int) -> tuple[tuple[int, int, int, int, int], ...]:
    out = []
    step = 2**levels
    margin = 4 * step
    for i in range(axis.count - 1):
        o0, o1 = axis.out_start(i + 1), min(axis.footprint(i)[1], axis.out_size)
        d0 = ((o0 - margin) // step) * step
        out.append((d0, o1 + margin, o0, o1, axis.cut(i)))
    return tuple(out)


def _seams_near(axis: AxisGrid, levels: int, lo: int, hi: int) -> list[int]:
    """Seams whose domain meets ``[lo, hi)``."""
    doms = _seam_domains(axis, levels)
    wins = axis_table(axis).covering(max(0, lo), min(axis.out_size, hi), crop=False)
    first = max(0, wins.start - 1)
    out = []
    for i in range(first, len(doms)):
        d0, d1 = doms[i][0], doms[i][1]
        if d0 >= hi:
            break
        if d1 > lo:
            out.append(i)
    return out


class _Multiband(Blender):
    """Laplacian-pyramid blending along every seam (see the module notes).

    Attributes
    ----------
    levels : int or None
        Pyramid levels (default: from the overlap, :func:`levels_for_overlap`).
    feather : int
        Half-width (px) of the finest band's cross-fade (0: the binary mask of Burt and Adelson).
    """

    name: ClassVar[str] = "multiband"
    levels: int | None = None
    feather: int = 1

    def _levels(self, axis: AxisGrid | AxisTable) -> int:
        return self.levels if self.levels is not None else levels_for_overlap(axis.out_overlap)

    def halo(self, plan: Plan) -> int:
        """Reach of a horizontal seam's pyramid along it (``4 * 2^L``) and of the seam corrections across."""
        ly, lx = self._levels(plan.y), self._levels(plan.x)
        return max(4 * 2**ly, 4 * 2**lx + plan.x.out_overlap, 4 * 2**ly + plan.y.out_overlap)

    def describe(self) -> dict:
        return {"mode": self.name, "levels": self.levels, "feather": self.feather}

    # ------------------------------------------------------------------ step 1: one window row
    def _row(
        self,
        plan: Plan,
        r: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        read: WindowReader,
        transform: WindowTransform | None,
        cache: dict[tuple[int, int], tuple[int, int, np.ndarray] | None],
        need: dict[int, tuple[int, int]],
        dest: np.ndarray | None = None,
    ) -> np.ndarray:
        """Window row ``r`` blended across its vertical seams over ``rows`` x ``cols``: ``(C, h, w)``
        (written into ``dest`` when given).

        A seam's correction is computed once per box over the rows ``need[r]`` of the row needs, plus
        ``4 * 2^L`` rows of pyramid support (its reach along the seam) (decimated from the footprint's first row, mirrored at the
        footprint's ends), so it equals the correction over the whole window row.
        """
        (ya, yb), (xa, xb) = rows, cols
        ncols = plan.x.count
        out: np.ndarray | None = dest
        tx = axis_table(plan.x)
        for c in tx.covering(xa, xb, crop=True):
            k0, k1 = tx.keep(c)
            a, b = max(xa, k0), min(xb, k1)
            if a >= b:
                continue
            part = read_region(plan, read, transform, r * ncols + c, ya, yb, a, b)
            if out is None:
                out = np.empty((part.shape[0], yb - ya, xb - xa), dtype=np.float32)
            out[:, :, a - xa : b - xa] = part
        assert out is not None
        self._add_corrections(plan, r, rows, cols, read, transform, cache, need, out, np.add)
        return out

    def _add_corrections(
        self,
        plan: Plan,
        r: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        read: WindowReader,
        transform: WindowTransform | None,
        cache: dict[tuple[int, int], tuple[int, int, np.ndarray] | None],
        need: dict[int, tuple[int, int]],
        dest: np.ndarray,
        op: np.ufunc,
    ) -> None:
        """``dest = op(dest, q)`` for the corrections ``q`` of window row ``r``'s vertical seams over ``rows``
        x ``cols`` (computed when not in ``cache``), in the order of the seams."""
        (ya, yb), (xa, xb) = rows, cols
        lx = self._levels(axis_table(plan.x))
        near = _seams_near(plan.x, lx, xa, xb)
        todo = [j for j in near if (r, j) not in cache]
        if todo:
            self._row_corrections(plan, r, todo, lx, read, transform, cache, need)
        for j in near:
            hit = cache[r, j]
            if hit is None:
                continue
            ra, q0, q = hit
            a, b = max(xa, q0), min(xb, q0 + q.shape[2])
            if a < b:
                d = dest[:, :, a - xa : b - xa]
                op(d, q[:, ya - ra : yb - ra, a - q0 : b - q0], out=d)

    def _row_corrections(
        self,
        plan: Plan,
        r: int,
        seams: list[int],
        lx: int,
        read: WindowReader,
        transform: WindowTransform | None,
        cache: dict[tuple[int, int], tuple[int, int, np.ndarray] | None],
        need: dict[int, tuple[int, int]],
    ) -> None:
        """The corrections of window row ``r``'s vertical ``seams`` over the rows it needs plus ``4 * 2^L``
        (decimated from the footprint's first row, mirrored at its ends): seams with the same operator
        are stacked and corrected in one call (the same sums as one call each), their differences written
        straight into the pyramid's first level (the columns it carries only)."""
        ncols = plan.x.count
        fy0, fy1 = axis_table(plan.y).footprint(r)
        step, halo = 2**lx, 4 * 2**lx
        lo, hi = need[r]
        ra = max(fy0, fy0 + ((lo - halo - fy0) // step) * step)
        rb = min(fy1, hi + halo)
        n = rb - ra
        groups: dict[int, tuple[int, np.ndarray, list[tuple[int, int, int]]]] = {}
        for j in seams:
            d0, d1, o0, o1, cut = _seam_domain(plan.x, j, lx)
            q_lo, _, ops = seam_operators(o1 - o0, o0 - d0, d1 - d0, cut - d0, lx, self.feather)
            groups.setdefault(id(ops), (q_lo, ops, []))[2].append((j, d0, o0))
        for q_lo, ops, members in groups.values():
            blk = _blocks(ops)
            i0, i1 = blk.carry[0]
            p: np.ndarray | None = None
            c = 0
            for m, (j, _, o0) in enumerate(members):
                left = read_region(plan, read, transform, r * ncols + j, ra, rb, o0 + i0, o0 + i1)
                right = read_region(plan, read, transform, r * ncols + j + 1, ra, rb, o0 + i0, o0 + i1)
                if p is None:
                    c = left.shape[0]
                    p = np.empty((n + 4, c * len(members), i1 - i0), dtype=np.float32)
                np.subtract(
                    right, left, out=p[2 : n + 2, m * c : (m + 1) * c].transpose(1, 0, 2), dtype=np.float32
                )
            assert p is not None
            if not p[2 : n + 2].any():  # windows that agree: no correction at all (exact)
                for j, _, _ in members:
                    cache[r, j] = None
                continue
            acc = _correct(p, n, blk, lx, "symmetric")  # (rows, C k, cols)
            del p
            for m, (j, d0, _) in enumerate(members):
                cache[r, j] = (ra, d0 + q_lo, acc[:, m * c : (m + 1) * c].transpose(1, 0, 2))

    def _seam_input(
        self,
        plan: Plan,
        s: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        read: WindowReader,
        transform: WindowTransform | None,
        cache: dict[tuple[int, int], tuple[int, int, np.ndarray] | None],
        need: dict[int, tuple[int, int]],
        dest: np.ndarray | None,
    ) -> np.ndarray:
        """Window row ``s + 1`` minus window row ``s``, each blended across its vertical seams, over ``rows`` x
        ``cols``: ``(C, h, w)`` (into ``dest`` when its shape fits). The crop composites are subtracted
        window by window, then the rows' vertical seam corrections added and subtracted."""
        (ya, yb), (xa, xb) = rows, cols
        tx = axis_table(plan.x)
        ncols = tx.count
        for c in tx.covering(xa, xb, crop=True):
            k0, k1 = tx.keep(c)
            a, b = max(xa, k0), min(xb, k1)
            if a >= b:
                continue
            lower = read_region(plan, read, transform, (s + 1) * ncols + c, ya, yb, a, b)
            upper = read_region(plan, read, transform, s * ncols + c, ya, yb, a, b)
            if dest is None or dest.shape != (lower.shape[0], yb - ya, xb - xa):
                dest = np.empty((lower.shape[0], yb - ya, xb - xa), dtype=np.float32)
            np.subtract(lower, upper, out=dest[:, :, a - xa : b - xa], dtype=np.float32)
        assert dest is not None
        self._add_corrections(plan, s + 1, rows, cols, read, transform, cache, need, dest, np.add)
        self._add_corrections(plan, s, rows, cols, read, transform, cache, need, dest, np.subtract)
        return dest

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
        tx, ty = axis_table(plan.x), axis_table(plan.y)
        ly = self._levels(ty)
        step = 2**ly
        hx = 4 * step
        xa = max(0, ((x0 - hx) // step) * step)
        xb = min(tx.out_size, x1 + hx)
        # horizontal seams whose correction reaches the box, and the rows each window row must provide
        seams = []
        for s in _seams_near(plan.y, ly, y0, y1):
            d0, d1, o0, o1, cut = _seam_domain(plan.y, s, ly)
            q_lo, q_hi, ops = seam_operators(o1 - o0, o0 - d0, d1 - d0, cut - d0, ly, self.feather)
            if d0 + q_lo < y1 and d0 + q_hi > y0:
                seams.append((s, d0 + q_lo, o0, o1, ops))
        need: dict[int, tuple[int, int]] = {}

        def add(r: int, a: int, b: int) -> None:
            lo, hi = need.get(r, (a, b))
            need[r] = (min(lo, a), max(hi, b))

        parts = {}
        for r in ty.covering(y0, y1, crop=True):
            k0, k1 = ty.keep(r)
            a, b = max(y0, k0), min(y1, k1)
            if a < b:
                parts[r] = (a, b)
                add(r, a, b)
        for s, _, o0, o1, _ in seams:
            add(s, o0, o1)
            add(s + 1, o0, o1)
        cache: dict[tuple[int, int], tuple[int, int, np.ndarray] | None] = {}
        r0, (a0, _) = next(iter(parts.items()))
        c0 = tx.covering(x0, x1, crop=True)[0]
        channels = read_region(plan, read, transform, r0 * tx.count + c0, a0, a0 + 1, x0, x0 + 1)
        c = channels.shape[0]
        out = np.empty((c, y1 - y0, x1 - x0), dtype=np.float32)
        # each horizontal seam's input (lower minus upper window row over the rows its operator carries),
        # written straight into its pyramid's first level: one buffer per operator, seams stacked
        nx = xb - xa
        groups: dict[int, list[int]] = {}
        for i, seam in enumerate(seams):
            groups.setdefault(id(seam[4]), []).append(i)
        inputs: dict[int, np.ndarray] = {}
        for key, members in groups.items():
            lo, hi = _blocks(seams[members[0]][4]).carry[0]
            inputs[key] = np.empty((nx + 4, c * len(members), hi - lo), dtype=np.float32)
        slot = {i: (key, m) for key, members in groups.items() for m, i in enumerate(members)}
        lower_of = {seam[0] + 1: i for i, seam in enumerate(seams)}
        live = [False] * len(seams)
        scratch: np.ndarray | None = None
        # window rows top down: a row's vertical seam corrections are dropped once the rows below it no
        # longer need them
        for r in sorted(set(parts) | set(need)):
            if r in parts:
                a, b = parts[r]
                self._row(
                    plan, r, (a, b), (x0, x1), read, transform, cache, need, dest=out[:, a - y0 : b - y0]
                )
            below = lower_of.get(r)  # the seam whose lower window row is r: both its rows are done
            if below is not None:
                s, _, o0, _, ops = seams[below]
                lo, hi = _blocks(ops).carry[0]
                scratch = self._seam_input(
                    plan, s, (o0 + lo, o0 + hi), (xa, xb), read, transform, cache, need, scratch
                )
                live[below] = bool(scratch.any())
                key, m = slot[below]
                np.copyto(inputs[key][2 : nx + 2, m * c : (m + 1) * c].transpose(1, 2, 0), scratch)
            for done in [k for k in cache if k[0] < r]:
                del cache[done]
        cache.clear()
        del scratch
        for key, members in groups.items():
            if not any(live[i] for i in members):
                del inputs[key]
                continue
            ops = seams[members[0]][4]
            acc = _correct(inputs.pop(key), nx, _blocks(ops), ly, "symmetric")  # (cols, C k, rows); consumed
            for m, i in enumerate(members):
                q0 = seams[i][1]
                q = acc[:, m * c : (m + 1) * c].transpose(
                    1, 2, 0
                )  # (C, rows, cols): added in the box's order
                a, b = max(y0, q0), min(y1, q0 + q.shape[1])
                if a < b and live[i]:
                    dst = out[:, a - y0 : b - y0]
                    dst += q[:, a - q0 : b - q0, x0 - xa : x1 - xa]
            del acc
        return np.moveaxis(out, 0, -1)


class MultibandBlender(DetailMixin, _Multiband):
    """``multiband`` (see :class:`_Multiband`), with ``detail="preserve"`` on its fine levels.

    The fine bands cross-fade over a few pixels around the crop cut; with ``detail="preserve"`` the
    high-pass is re-mixed there with variance-preserving weights (:mod:`tilegraph.blend.detail`), the
    weights being the crop mask blurred at the scale of the finest levels (wider weights over-correct:
    the coarser levels' cross-fade is already wide enough not to cost texture).
    """

    #: binomial blurs of the crop mask giving the fine levels' mixing weights (1: about 3 px)
    detail_blur: int = 1

    def detail_weights(self, axis: AxisGrid, i: int) -> np.ndarray:
        return _fine_weights(axis, i, self.detail_blur)


@lru_cache(maxsize=4096)
def _fine_weights(axis: AxisGrid, i: int, blur: int) -> np.ndarray:
    """Window ``i``'s crop mask over its footprint blurred ``blur`` times by the binomial kernel."""
    n = axis.out_tile
    lo = axis.out_start(i)
    k0, k1 = axis.keep(i)
    pad = 64
    pos = np.arange(lo - pad, lo + n + pad)
    m = ((pos >= k0) & (pos < k1)).astype(np.float64)
    kern = np.array([1.0])
    for _ in range(blur):
        kern = np.convolve(kern, np.array(_W))
    w = np.convolve(m, kern, mode="same")[pad:-pad]
    w[(np.arange(lo, lo + n) >= axis.out_size)] = 0.0
    out = w.astype(np.float32)
    out.flags.writeable = False
    return out
