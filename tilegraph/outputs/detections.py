"""Detections merged across windows (SAHI-style), in linear time with a spatial grid.

A detections model returns, per window, a ``(k, 6)`` array ``x0, y0, x1, y1, score, label`` in window
(input) pixels. The pipeline:

1. **Per window** (worker, right after the model): :func:`window_candidates` shifts the boxes to image
   pixels, clips them to the image (boxes wholly in the far-edge padding vanish) and flags the boxes
   *cut* by a window edge that lies inside the image (within ``edge_margin`` pixels of it). The result
   is a small structured array (:data:`CANDIDATE_DTYPE`, 48 bytes a box) that travels to the client.
2. **Client**: :func:`merge_detections` over the candidates of all windows:

   * a cut box is dropped when an uncut box of the same class (any class with ``class_agnostic``)
     covers at least ``cut_cover`` of it: a neighbour holds the whole object. Cut boxes that no whole
     box covers (objects larger than what one window sees whole) stay and take part in the merge;
   * duplicates are merged by ``merge``: ``"nms"`` (suppression only), ``"greedy_nmm"`` (SAHI's default:
     each kept box absorbs the boxes it suppresses, union box) or ``"nmm"`` (transitive: connected
     components of the match graph, union box), comparing boxes with ``metric`` ``"iou"`` or ``"ios"``
     (intersection over the smaller area) at ``threshold``. Merged groups keep the highest score and
     that box's label.

   Candidate pairs come from a uniform grid (cell about twice the median box side): a box is entered in
   every cell it covers and a pair is examined only in the cell holding the top-left corner of its
   intersection, so each overlapping pair is seen once and the work grows with the number of boxes,
   not with its square. Greedy suppression is resolved in vectorised rounds over the pair graph (a
   box is kept once every higher-ranked box matching it is suppressed), which gives exactly the
   sequential greedy result.

The result is always a :class:`Detections` (a numpy structured array with fields ``x0, y0, x1, y1,
score, label``; ``x1``/``y1`` exclusive, image pixels) with :meth:`Detections.to_pandas` and writers for
``.csv`` and ``.parquet`` (:func:`write_detections`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tilegraph.errors import InputError, ModelOutputError
from tilegraph.plan.plan import Plan
from tilegraph.sink.table_sink import write_table

__all__ = [
    "DETECTION_DTYPE",
    "CANDIDATE_DTYPE",
    "MERGES",
    "METRICS",
    "Detections",
    "as_detections",
    "window_candidates",
    "merge_detections",
    "overlapping_pairs",
    "grid_cell",
    "spatial_order",
    "to_pandas",
    "write_detections",
]

#: Fields of every detections result.
DETECTION_DTYPE = np.dtype(
    [("x0", "f8"), ("y0", "f8"), ("x1", "f8"), ("y1", "f8"), ("score", "f4"), ("label", "i4")]
)
#: What a window sends to the client: a detection, whether a window edge cut it, and the window.
CANDIDATE_DTYPE = np.dtype(DETECTION_DTYPE.descr + [("cut", "?"), ("window", "i8")])
MERGES = ("nms", "greedy_nmm", "nmm")
METRICS = ("iou", "ios")
_FIELDS = ("x0", "y0", "x1", "y1", "score", "label")
_LOW32 = np.uint64(0xFFFFFFFF)


class Detections(np.ndarray):
    """A numpy structured array of :data:`DETECTION_DTYPE` with conversion and writing helpers."""

    def __new__(cls, data: np.ndarray) -> Detections:
        arr = np.asarray(data)
        if arr.dtype != DETECTION_DTYPE:
            raise InputError(f"detections need dtype {DETECTION_DTYPE}, got {arr.dtype}")
        return arr.view(cls)

    def __array_finalize__(self, obj: object) -> None:  # numpy subclass protocol
        return None

    def to_pandas(self):
        """A :class:`pandas.DataFrame` with one column per field (needs pandas)."""
        return to_pandas(self)

    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Write by suffix (``.csv``, ``.parquet``); see :func:`write_detections`."""
        return write_detections(self, path, overwrite=overwrite)


def as_detections(boxes) -> Detections:
    """A :class:`Detections` from a ``(k, 6)`` array or a structured array with the six fields."""
    arr = np.asarray(boxes)
    if arr.dtype.names is not None:
        out = np.empty(arr.shape[0], DETECTION_DTYPE)
        for f in _FIELDS:
            out[f] = arr[f]
        return Detections(out)
    arr = arr.reshape(-1, 6) if arr.size == 0 else arr
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise InputError(f"boxes must be (k, 6) x0, y0, x1, y1, score, label; got shape {arr.shape}")
    out = np.empty(arr.shape[0], DETECTION_DTYPE)
    for c, f in enumerate(_FIELDS):
        out[f] = arr[:, c]
    return Detections(out)


# --------------------------------------------------------------------------- per window
def window_candidates(boxes, *, plan: Plan, index: int, edge_margin: float = 1.0) -> np.ndarray:
    """Worker hook for one window: boxes to image pixels, clipped, with the cut flag.

    Parameters
    ----------
    boxes
        ``(k, 6)`` ``x0, y0, x1, y1, score, label`` in the window's input pixels (``x1``, ``y1``
        exclusive), as the model returned them for window ``index``.
    plan
        The run's plan (boxes are in source pixels, whatever the plan's scale).
    index
        Flat window index.
    edge_margin
        A box within this many pixels of a window edge that lies inside the image is *cut*.

    Returns
    -------
    numpy.ndarray
        :data:`CANDIDATE_DTYPE` rows (boxes wholly outside the image are gone).

    Raises
    ------
    ModelOutputError
        Wrong shape, non-finite values or inverted boxes.
    """
    win = plan.window(index)
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros(0, CANDIDATE_DTYPE)
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ModelOutputError(
            f"detections must be (k, 6), got shape {arr.shape}",
            window=(win.row, win.col),
            hint="return one (k, 6) array x0, y0, x1, y1, score, label per window",
        )
    if not np.all(np.isfinite(arr)):
        raise ModelOutputError("detections contain NaN or Inf", window=(win.row, win.col))
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise ModelOutputError("detections have x1 < x0 or y1 < y0", window=(win.row, win.col))
    th, tw = plan.window_shape
    h, w = plan.shape
    x0, y0, x1, y1 = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
    cut = np.zeros(arr.shape[0], bool)
    if win.x0 > 0:
        cut |= x0 <= edge_margin
    if win.x1 < w:
        cut |= x1 >= tw - edge_margin
    if win.y0 > 0:
        cut |= y0 <= edge_margin
    if win.y1 < h:
        cut |= y1 >= th - edge_margin
    out = np.empty(arr.shape[0], CANDIDATE_DTYPE)
    out["x0"] = np.clip(x0 + win.x0, 0, w)
    out["x1"] = np.clip(x1 + win.x0, 0, w)
    out["y0"] = np.clip(y0 + win.y0, 0, h)
    out["y1"] = np.clip(y1 + win.y0, 0, h)
    out["score"] = arr[:, 4]
    out["label"] = np.rint(arr[:, 5])
    out["cut"] = cut
    out["window"] = index
    keep = (out["x1"] > out["x0"]) & (out["y1"] > out["y0"])
    return out[keep]


# --------------------------------------------------------------------------- pairs on a grid
def grid_cell(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> float:
    """Default grid cell side: twice the median of the boxes' longer sides (at least 1 px)."""
    if x0.size == 0:
        return 1.0
    return max(float(2.0 * np.median(np.maximum(x1 - x0, y1 - y0))), 1.0)


def spatial_order(x0: np.ndarray, y0: np.ndarray, *, cell: float) -> np.ndarray:
    """Permutation that sorts boxes by the grid cell of their top-left corner (row-major), stable."""
    gx = np.floor(x0 / cell).astype(np.int64)
    gy = np.floor(y0 / cell).astype(np.int64)
    gx -= gx.min(initial=0)
    gy -= gy.min(initial=0)
    return _argsort_uint(gy * (int(gx.max(initial=0)) + 1) + gx)


def _argsort_uint(key: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integers in linear time: LSD radix over 16-bit digits.

    numpy sorts 16-bit integers with a radix sort (``kind="stable"``); one pass per 16 bits of the
    largest key.
    """
    key = np.asarray(key).astype(np.uint64, copy=False)
    if key.size == 0:
        return np.zeros(0, np.int64)
    top = int(key.max())
    order = np.argsort((key & np.uint64(0xFFFF)).astype(np.uint16), kind="stable")
    shift = 16
    while top >> shift:
        digit = ((key[order] >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


def _sortable(values: np.ndarray) -> np.ndarray:
    """float32 values to uint32 codes in the same order (IEEE bit trick; values must be finite)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    neg = (bits >> np.uint32(31)).astype(bool)
    return np.where(neg, ~bits, bits | np.uint32(0x80000000))


def overlapping_pairs(
    x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, *, cell: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(i, j)``, ``i < j``, of boxes with a positive intersection, through a uniform grid.

    Each box is entered in every cell it covers; a pair is examined only in the cell holding the top-left
    corner of its intersection, so it is found once. The work is proportional to the number of box-cell
    entries plus the pairs sharing a cell, done in blocks of cells that stay in the CPU cache; it is
    fastest when the boxes come in :func:`spatial_order` (memory accesses then stay local).

    Parameters
    ----------
    x0, y0, x1, y1
        Box corners (``x1``, ``y1`` exclusive).
    cell
        Grid cell side (default :func:`grid_cell`).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``int64`` index arrays, each pair once.
    """
    parts = list(_pair_blocks(x0, y0, x1, y1, cell=cell))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    return np.minimum(i, j), np.maximum(i, j)


def _pair_blocks(
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    *,
    cell: float | None = None,
    block: int = 1 << 14,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`overlapping_pairs` block by block (about ``block`` cell entries each), unordered pairs."""
    n = x0.size
    if n < 2:
        return
    x0, y0, x1, y1 = (np.ascontiguousarray(v, dtype=np.float64) for v in (x0, y0, x1, y1))
    cell = grid_cell(x0, y0, x1, y1) if cell is None else max(float(cell), 1.0)
    gx0 = np.floor(x0 / cell).astype(np.int64)
    gy0 = np.floor(y0 / cell).astype(np.int64)
    ox, oy = int(gx0.min()), int(gy0.min())
    gx0 -= ox
    gy0 -= oy
    dx = np.maximum(np.ceil(x1 / cell).astype(np.int64) - 1 - ox, gx0) - gx0
    dy = np.maximum(np.ceil(y1 / cell).astype(np.int64) - 1 - oy, gy0) - gy0
    ncols = int((gx0 + dx).max()) + 1
    home = gy0 * ncols + gx0
    # entries class by class (offset from the home cell): each class keeps the input's order, so
    # spatially sorted input gives a few sorted runs that the stable sort merges cheaply
    boxes, keys = [], []
    small = (dx <= 1) & (dy <= 1)
    for ey in range(2):
        for ex in range(2):
            sel = np.flatnonzero((dx >= ex) & (dy >= ey) & small)
            boxes.append(sel)
            keys.append(home[sel] + ey * ncols + ex)
    wide = np.flatnonzero(~small)
    if wide.size:  # boxes spanning more than 2 cells along an axis: all their cells
        nx = dx[wide] + 1
        cnt = nx * (dy[wide] + 1)
        rep = np.repeat(wide, cnt)
        k = np.arange(rep.size, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        nxr = np.repeat(nx, cnt)
        boxes.append(rep)
        keys.append(home[rep] + (k // nxr) * ncols + k % nxr)
    box = np.concatenate(boxes)
    key = np.concatenate(keys)
    order = _argsort_uint(key)
    key_s, box_s = key[order], box[order]
    total = key_s.size
    new = np.empty(total, bool)
    new[0] = True
    np.not_equal(key_s[1:], key_s[:-1], out=new[1:])
    starts = np.append(np.flatnonzero(new), total)
    # blocks of whole cells, about `block` entries each
    cuts = np.unique(np.searchsorted(starts, np.arange(0, total, block), side="left"))
    bounds = np.append(starts[cuts], total)
    for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True):
        if b1 <= b0:
            continue
        ks, bs = key_s[b0:b1], box_s[b0:b1]
        m = int(b1 - b0)
        first = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        sizes = np.diff(np.append(first, m))
        partners = np.repeat(first + sizes, sizes) - np.arange(m) - 1
        npairs = int(partners.sum())
        if npairs == 0:
            continue
        pa = np.repeat(np.arange(m, dtype=np.int64), partners)
        pb = (
            pa + 1 + (np.arange(npairs, dtype=np.int64) - np.repeat(np.cumsum(partners) - partners, partners))
        )
        i, j = bs[pa], bs[pb]
        ix0 = np.maximum(x0[i], x0[j])
        iy0 = np.maximum(y0[i], y0[j])
        good = (ix0 < np.minimum(x1[i], x1[j])) & (iy0 < np.minimum(y1[i], y1[j]))
        hy = np.floor(iy0 / cell).astype(np.int64) - oy
        hx = np.floor(ix0 / cell).astype(np.int64) - ox
        good &= hy * ncols + hx == ks[pa]
        yield i[good], j[good]


# --------------------------------------------------------------------------- merge
def merge_detections(
    candidates: Sequence[np.ndarray] | np.ndarray,
    *,
    merge: str = "greedy_nmm",
    metric: str = "ios",
    threshold: float = 0.5,
    class_agnostic: bool = False,
    cut_cover: float = 0.6,
    cell: float | None = None,
) -> Detections:
    """Merge the candidates of all windows into one set of detections (client side).

    Parameters
    ----------
    candidates
        :func:`window_candidates` arrays (a list, or one concatenated array); a ``(k, 6)`` array or a
        :data:`DETECTION_DTYPE` array is taken as uncut boxes.
    merge
        ``"nms"``, ``"greedy_nmm"`` (default, as SAHI) or ``"nmm"`` (transitive).
    metric
        ``"ios"`` (intersection over the smaller box, default, as SAHI) or ``"iou"``.
    threshold
        Boxes match when the metric is at least this, in ``(0, 1]``.
    class_agnostic
        Match boxes of different labels too.
    cut_cover
        A cut box is dropped when an uncut box (same label unless ``class_agnostic``) covers at least this
        fraction of its area.
    cell
        Grid cell side in pixels (default: twice the median longer box side).

    Returns
    -------
    Detections
        Sorted by decreasing score (ties: input order).

    Raises
    ------
    InputError
        Unknown ``merge`` or ``metric``, thresholds outside ``(0, 1]``.
    """
    if merge not in MERGES:
        raise InputError(f"merge must be one of {MERGES}, got {merge!r}")
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
    for name, v in (("threshold", threshold), ("cut_cover", cut_cover)):
        if not 0 < float(v) <= 1:
            raise InputError(f"{name} must be in (0, 1], got {v!r}")
    d = _as_candidates(candidates)
    n = d.size
    if n == 0:
        return Detections(np.zeros(0, DETECTION_DTYPE))
    if n >= 2**32:
        raise InputError(f"{n} candidates: at most 2**32 - 1 can be merged at once", hint="merge by region")
    if not np.all(np.isfinite(d["score"])):
        raise InputError("detection scores contain NaN or Inf")
    # work in spatial order (local memory accesses). Priority (lower is better): decreasing score, then
    # input order; one uint64 per box (score code << 32 | input index), so no global sort is needed
    cell = grid_cell(d["x0"], d["y0"], d["x1"], d["y1"]) if cell is None else max(float(cell), 1.0)
    src = spatial_order(d["x0"], d["y0"], cell=cell)
    # columns in spatial order (gathering records of a structured array is several times slower)
    cols = {f: np.ascontiguousarray(d[f])[src] for f in ("x0", "y0", "x1", "y1", "score", "label", "cut")}
    prio = (_sortable(-cols["score"]).astype(np.uint64) << np.uint64(32)) | src.astype(np.uint64)
    where = np.empty(n, np.int64)  # input index -> position in spatial order
    where[src] = np.arange(n)
    x0, y0, x1, y1 = (cols[f] for f in ("x0", "y0", "x1", "y1"))
    area = (x1 - x0) * (y1 - y0)
    label, cut = cols["label"], cols["cut"]
    any_cut = bool(cut.any())
    dropped, edges_i, edges_j = [], [], []
    for i, j in _pair_blocks(x0, y0, x1, y1, cell=cell):
        if not class_agnostic:
            same = label[i] == label[j]
            i, j = i[same], j[same]
        swap = prio[i] > prio[j]  # orient every pair from the better-ranked box to the other
        i, j = np.where(swap, j, i), np.where(swap, i, j)
        iw = np.minimum(x1[i], x1[j]) - np.maximum(x0[i], x0[j])
        ih = np.minimum(y1[i], y1[j]) - np.maximum(y0[i], y0[j])
        inter = iw * ih  # positive: only intersecting pairs come out of the grid
        ai, aj = area[i], area[j]
        if any_cut:  # a cut box covered by a whole box of another window: the neighbour holds the object
            ci, cj = cut[i], cut[j]
            dropped.append(i[ci & ~cj & (inter >= cut_cover * ai)])
            dropped.append(j[cj & ~ci & (inter >= cut_cover * aj)])
        if metric == "iou":
            value = inter / np.maximum(ai + aj - inter, 1e-12)
        else:
            value = inter / np.maximum(np.minimum(ai, aj), 1e-12)
        match = value >= threshold
        edges_i.append(i[match])
        edges_j.append(j[match])
    alive = np.ones(n, bool)
    if dropped:
        alive[np.concatenate(dropped)] = False
    i = np.concatenate(edges_i) if edges_i else np.zeros(0, np.int64)
    j = np.concatenate(edges_j) if edges_j else np.zeros(0, np.int64)
    live = alive[i] & alive[j]
    i, j = i[live], j[live]

    if merge == "nmm":
        graph = coo_matrix((np.ones(i.size, np.int8), (i, j)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        best = np.full(int(comp.max()) + 1, np.iinfo(np.uint64).max, np.uint64)
        np.minimum.at(best, comp, prio)
        owner = where[(best[comp] & _LOW32).astype(np.int64)]
        members = alive
    else:
        state = _greedy_rounds(n, i, j, alive)
        kept = state == 1
        owner = np.arange(n)
        members = kept
        if merge == "greedy_nmm":
            absorbed = kept[i] & (state[j] == 2)
            none = np.iinfo(np.uint64).max
            best = np.full(n, none, np.uint64)
            np.minimum.at(best, j[absorbed], prio[i[absorbed]])
            took = best != none
            owner[took] = where[(best[took] & _LOW32).astype(np.int64)]
            members = kept | took
    return _collect(cols, owner, members, prio)


def _as_candidates(candidates) -> np.ndarray:
    if isinstance(candidates, np.ndarray):
        parts = [candidates]
    else:
        parts = list(candidates)
    out = []
    for p in parts:
        arr = np.asarray(p)
        if arr.dtype == CANDIDATE_DTYPE:
            out.append(arr)
            continue
        det = as_detections(arr)
        c = np.zeros(det.size, CANDIDATE_DTYPE)
        for f in _FIELDS:
            c[f] = det[f]
        c["window"] = -1
        out.append(c)
    return np.concatenate(out) if out else np.zeros(0, CANDIDATE_DTYPE)


def _greedy_rounds(n: int, i: np.ndarray, j: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Sequential greedy suppression (rank order) in vectorised rounds.

    Every pair runs from the better-ranked box ``i`` to ``j``; ``j`` is suppressed by any kept ``i``
    matching it, and kept once every ``i`` matching it is suppressed. Returns the state of each box:
    1 kept, 2 suppressed, 3 dropped before the merge.
    """
    state = np.where(alive, 0, 3).astype(np.int8)
    live = alive[i] & alive[j]
    i, j = i[live], j[live]
    while True:
        blocked = np.zeros(n, bool)
        blocked[j[state[i] != 2]] = True
        newly = (state == 0) & ~blocked
        state[newly] = 1
        hit = j[state[i] == 1]
        state[hit[state[hit] == 0]] = 2
        pending = (state[j] == 0) & (state[i] != 2)
        i, j = i[pending], j[pending]
        if not np.any(state == 0):
            return state


def _collect(
    d: dict[str, np.ndarray], owner: np.ndarray, members: np.ndarray, prio: np.ndarray
) -> Detections:
    """Union box per owner over its members; score and label of the owner (its best-ranked member).

    The result is sorted by the owners' priority (decreasing score, then input order).
    """
    idx = np.flatnonzero(members)
    own = owner[idx]
    heads = idx[own == idx]  # every owner is a member of its own group
    order = _argsort_uint(prio[heads])
    heads = heads[order]
    absorbed = own != idx
    if absorbed.any():  # where each absorbed box's owner lands in the output
        slot = np.full(owner.size, -1, np.int64)
        slot[heads] = np.arange(heads.size)
        pos = slot[own[absorbed]]
        src = idx[absorbed]
    out = np.empty(heads.size, DETECTION_DTYPE)
    for f, fn in (("x0", np.minimum), ("y0", np.minimum), ("x1", np.maximum), ("y1", np.maximum)):
        acc = d[f][heads]
        if absorbed.any():  # union with the boxes each head absorbed
            fn.at(acc, pos, d[f][src])
        out[f] = acc
    out["score"] = d["score"][heads]
    out["label"] = d["label"][heads]
    return Detections(out)


# --------------------------------------------------------------------------- conversion and files
def to_pandas(detections: np.ndarray):
    """A :class:`pandas.DataFrame` with columns ``x0, y0, x1, y1, score, label``.

    Raises
    ------
    InputError
        pandas is not installed.
    """
    try:
        import pandas as pd
    except ImportError:
        raise InputError(
            "to_pandas needs pandas, which is not installed",
            hint="pip install pandas, or use the structured array directly (det['x0'], ...)",
        ) from None
    det = as_detections(detections)
    return pd.DataFrame({f: np.asarray(det[f]) for f in _FIELDS})


def write_detections(detections: np.ndarray, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write detections to ``.csv`` (header + one row a box) or ``.parquet`` (needs pyarrow).

    Parameters
    ----------
    detections
        A :class:`Detections` (or anything :func:`as_detections` takes).
    path
        Destination; the suffix chooses the format.
    overwrite
        Replace an existing file.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    DestinationError
        Unknown suffix, existing file without ``overwrite``, or ``.parquet`` without pyarrow.
    """
    det = as_detections(detections)
    columns = {f: np.asarray(det[f]) for f in _FIELDS}
    return write_table(path, columns, overwrite=overwrite, formats={"score": "%.9g"})
