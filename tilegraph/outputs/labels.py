"""Instance labels stitched across windows: provisional labels, overlap matching, union-find, relabel.

A labels model returns, per window, integer instance labels ``(N, 1, H, W)`` with 0 for background. The
stitching runs in four steps whose inputs and outputs are small except the per-window label images, which
live in a per-window store (one chunk per window):

1. **Per window** (worker, right after the model): :func:`prepare_window` renumbers the window's labels
   to ``1..k`` (``uint32``, what the store keeps) and returns a :class:`WindowLabels` summary: ``k``,
   which local labels appear in the window's kept box inside the image, and which touch the image border.
2. **Per neighbouring window pair** (worker, once both windows are stored): :func:`match_windows`
   compares the two windows' labels on their shared strip (clipped to the image) and returns a small
   table of matching pieces, one row per pair of labels that share pixels (plus pieces facing only
   background): ``n_ab``, the piece sizes ``n_a`` and ``n_b`` in the strip, IoU and IoS (intersection
   over the smaller piece). :func:`neighbour_pairs` lists the pairs (horizontal, vertical, diagonal).
3. **Client**: :func:`resolve_labels` gives each window a label offset (running sum of the ``k``), joins
   the pieces whose match reaches the threshold with a union-find (connected components of a sparse
   graph over all provisional labels, so merges are transitive and an object larger than a window ends as
   one label), and numbers the objects ``1..M`` (objects present in the output only) in raster order of
   their first piece. It also returns the report: objects cut by the image border and pairs whose pieces
   disagree (IoU below ``report_iou``).
4. **Per output chunk** (worker): :func:`assemble_chunk` copies, for each window covering the chunk, its
   kept box (``plan.y.keep`` x ``plan.x.keep``, the crop rule) through that window's lookup table
   (:meth:`LabelResolution.lut`, ``k + 1`` entries: only the tables of the windows covering the chunk
   travel to a chunk task, never the whole table).

Provisional label of local label ``l`` of window ``i``: ``offsets[i] + l``; ``offsets[i + 1] = offsets[i] +
k_i``. Labels are ``int32`` unless the number of provisional labels exceeds ``2**31 - 1`` (then ``int64``).
Coordinates are output pixels (``plan.y.footprint`` etc.); all functions are pure numpy/scipy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tilegraph.errors import InputError, ModelOutputError
from tilegraph.plan.plan import Plan

__all__ = [
    "MATCH_DTYPE",
    "WindowLabels",
    "LabelResolution",
    "compact_labels",
    "prepare_window",
    "neighbour_pairs",
    "strip_box",
    "match_windows",
    "resolve_labels",
    "assemble_chunk",
    "label_dtype",
]

#: One row per pair of pieces that share pixels in a strip (``label_b == 0``: the pixels of piece ``a``
#: facing background in window ``b``, and the other way round). ``iou`` and ``ios`` compare the two
#: pieces within the strip; ``group_iou`` is the foreground IoU of the group of pieces linked to them.
MATCH_DTYPE = np.dtype(
    [
        ("window_a", "i8"),
        ("label_a", "u4"),
        ("window_b", "i8"),
        ("label_b", "u4"),
        ("n_ab", "i8"),
        ("n_a", "i8"),
        ("n_b", "i8"),
        ("iou", "f4"),
        ("ios", "f4"),
        ("group_iou", "f4"),
    ]
)

_INT32_MAX = int(np.iinfo(np.int32).max)


def label_dtype(n_provisional: int) -> np.dtype:
    """``int32`` if ``n_provisional`` labels fit, else ``int64``."""
    return np.dtype(np.int32 if n_provisional <= _INT32_MAX else np.int64)


@dataclass(frozen=True)
class WindowLabels:
    """What one window's labels tell the client (a few bytes per label).

    Attributes
    ----------
    index : int
        Flat window index in the plan.
    count : int
        Number of local labels ``k``; the stored labels are ``0..k``.
    kept : numpy.ndarray
        ``bool (k + 1,)``: local label present in the window's kept box inside the image.
    border : numpy.ndarray
        Sorted local labels that touch the image border inside the kept box.
    """

    index: int
    count: int
    kept: np.ndarray = field(repr=False)
    border: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class LabelResolution:
    """The client's answer: offsets, the global relabel table and the report.

    Attributes
    ----------
    offsets : numpy.ndarray
        ``int64 (n_windows + 1,)``; provisional label = ``offsets[i] + local``.
    table : numpy.ndarray
        ``(offsets[-1] + 1,)`` final label of every provisional label (0 for background and for pieces
        that never reach the output), dtype :attr:`dtype`.
    n_objects : int
        Number of final labels (``1..n_objects`` all occur in the output).
    dtype : numpy.dtype
        ``int32`` or ``int64``.
    border_objects : numpy.ndarray
        Final labels of the objects cut by the image border.
    disagreements : numpy.ndarray
        :data:`MATCH_DTYPE` rows of labelled pieces that share pixels and whose group of linked pieces has
        a foreground IoU (``group_iou``) below ``report_iou``: the two windows disagree on the shape there.
    unmatched_pieces : int
        Pieces of at least ``min_pixels`` pixels in a strip that face only background in the other window.
    merged_pairs : int
        Matches that joined two provisional labels.
    """

    offsets: np.ndarray = field(repr=False)
    table: np.ndarray = field(repr=False)
    n_objects: int
    dtype: np.dtype
    border_objects: np.ndarray = field(repr=False)
    disagreements: np.ndarray = field(repr=False)
    unmatched_pieces: int
    merged_pairs: int

    def lut(self, index: int) -> np.ndarray:
        """Lookup table ``local label -> final label`` of window ``index`` (``k + 1`` entries)."""
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        lut = np.empty(hi - lo + 1, dtype=self.dtype)
        lut[0] = 0
        lut[1:] = self.table[lo + 1 : hi + 1]
        return lut

    def luts(self, indices: Iterable[int]) -> dict[int, np.ndarray]:
        """:meth:`lut` for each window a chunk task needs."""
        return {int(i): self.lut(int(i)) for i in indices}

    def report(self) -> dict:
        """JSON-able summary."""
        return {
            "objects": int(self.n_objects),
            "dtype": str(self.dtype),
            "provisional_labels": int(self.offsets[-1]),
            "merged_pairs": int(self.merged_pairs),
            "border_objects": int(self.border_objects.size),
            "border_object_labels": self.border_objects.tolist()[:1000],
            "disagreeing_pairs": int(self.disagreements.size),
            "worst_disagreements": [
                {
                    k: (float(r[k]) if k in ("iou", "ios", "group_iou") else int(r[k]))
                    for k in MATCH_DTYPE.names or ()
                }
                for r in np.sort(self.disagreements, order="group_iou")[:20]
            ],
            "unmatched_pieces": int(self.unmatched_pieces),
        }


# --------------------------------------------------------------------------- per window
def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber labels to ``1..k`` in increasing order of the original values (0 stays 0).

    Parameters
    ----------
    labels
        Integer array (or floats holding integers), background 0, no negative values.

    Returns
    -------
    (numpy.ndarray, int)
        ``uint32`` labels of the same shape and ``k``.

    Raises
    ------
    ModelOutputError
        Negative, non-integral or non-finite labels.
    """
    arr = np.asarray(labels)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ModelOutputError(
                "labels model returned non-integral values",
                hint="return integer instance labels, 0 for background",
            )
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind not in "ui":
        raise ModelOutputError(f"labels model returned dtype {arr.dtype}", hint="return integer labels")
    if arr.size == 0:
        return np.zeros(arr.shape, np.uint32), 0
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise ModelOutputError("labels model returned negative labels", hint="0 is background, objects > 0")
    if hi <= 4 * arr.size + 1024:  # lookup table through a histogram: O(pixels + max)
        present = np.bincount(arr.ravel(), minlength=hi + 1) > 0
        present[0] = False
        lut = np.zeros(hi + 1, np.uint32)
        k = int(present.sum())
        lut[present] = np.arange(1, k + 1, dtype=np.uint32)
        return lut[arr], k
    values, inverse = np.unique(arr, return_inverse=True)
    shift = 0 if values[0] == 0 else 1
    out = (inverse.reshape(arr.shape) + shift).astype(np.uint32)
    return out, int(values.size - (1 - shift))


def _window_boxes(
    plan: Plan, index: int
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Output footprint start and kept intervals of window ``index``: ``(oy, ox), (ky0, ky1), (kx0, kx1)``."""
    w = plan.window(index)
    return (
        (plan.y.out_start(w.row), plan.x.out_start(w.col)),
        plan.y.keep(w.row),
        plan.x.keep(w.col),
        (plan.y.out_tile, plan.x.out_tile),
    )


def prepare_window(labels: np.ndarray, *, plan: Plan, index: int) -> tuple[np.ndarray, WindowLabels]:
    """Worker hook for one window's labels: compact them and summarise what the client needs.

    Parameters
    ----------
    labels
        ``(H, W)`` or ``(1, H, W)`` labels of window ``index`` in output pixels (``plan.out_window_shape``).
    plan
        The run's plan.
    index
        Flat window index.

    Returns
    -------
    (numpy.ndarray, WindowLabels)
        ``uint32 (H, W)`` labels ``0..k`` to keep in the per-window store, and the summary.

    Raises
    ------
    ModelOutputError
        Wrong shape or invalid labels.
    """
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    w = plan.window(index)
    if arr.shape != plan.out_window_shape:
        raise ModelOutputError(
            f"labels have shape {arr.shape}, expected {plan.out_window_shape}",
            window=(w.row, w.col),
            hint="a labels model returns (N, 1, H*s, W*s) integer labels",
        )
    try:
        local, k = compact_labels(arr)
    except ModelOutputError as exc:
        raise ModelOutputError(exc.message, window=(w.row, w.col), hint=exc.hint) from None
    (oy, ox), (ky0, ky1), (kx0, kx1), _ = _window_boxes(plan, index)
    kept_box = local[ky0 - oy : ky1 - oy, kx0 - ox : kx1 - ox]
    kept = np.zeros(k + 1, bool)
    kept[np.unique(kept_box)] = True
    kept[0] = False
    oh, ow = plan.out_shape
    edges = []
    if ky0 == 0:
        edges.append(kept_box[0])
    if ky1 == oh and kept_box.shape[0]:
        edges.append(kept_box[-1])
    if kx0 == 0:
        edges.append(kept_box[:, 0])
    if kx1 == ow and kept_box.shape[1]:
        edges.append(kept_box[:, -1])
    border = np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.uint32)
    border = border[border > 0].astype(np.uint32)
    return local, WindowLabels(index=int(index), count=k, kept=kept, border=border)


# --------------------------------------------------------------------------- per window pair
def neighbour_pairs(plan: Plan) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of neighbouring windows (8-neighbourhood) whose strip meets the image."""
    rows, cols = plan.grid
    pairs = []
    for r in range(rows):
        for c in range(cols):
            a = r * cols + c
            for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < rows and 0 <= cc < cols:
                    b = rr * cols + cc
                    if strip_box(plan, a, b) is not None:
                        pairs.append((min(a, b), max(a, b)))
    return sorted(pairs)


def strip_box(plan: Plan, a: int, b: int) -> tuple[int, int, int, int] | None:
    """Output box ``(y0, y1, x0, x1)`` shared by windows ``a`` and ``b`` inside the image, or None."""
    wa, wb = plan.window(a), plan.window(b)
    ya, yb = plan.y.footprint(wa.row), plan.y.footprint(wb.row)
    xa, xb = plan.x.footprint(wa.col), plan.x.footprint(wb.col)
    y0, y1 = max(ya[0], yb[0]), min(ya[1], yb[1])
    x0, x1 = max(xa[0], xb[0]), min(xa[1], xb[1])
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1


def match_windows(labels_a: np.ndarray, labels_b: np.ndarray, *, plan: Plan, a: int, b: int) -> np.ndarray:
    """Match the pieces of two neighbouring windows on their shared strip (worker hook, one per pair).

    Parameters
    ----------
    labels_a, labels_b
        The stored ``(H, W)`` local labels of windows ``a`` and ``b`` (from :func:`prepare_window`).
    plan
        The run's plan.
    a, b
        Flat window indices.

    Returns
    -------
    numpy.ndarray
        :data:`MATCH_DTYPE` rows: every pair of labels sharing pixels in the strip, and every labelled
        piece facing only background (``label_b == 0`` or ``label_a == 0``). IoU and IoS are over the
        strip.
    """
    box = strip_box(plan, a, b)
    if box is None:
        return np.zeros(0, MATCH_DTYPE)
    y0, y1, x0, x1 = box
    sa = _crop(labels_a, plan, a, box)
    sb = _crop(labels_b, plan, b, box)
    fa, fb = sa.ravel().astype(np.int64), sb.ravel().astype(np.int64)
    fg = (fa > 0) | (fb > 0)
    if not fg.any():
        return np.zeros(0, MATCH_DTYPE)
    fa, fb = fa[fg], fb[fg]
    n_a = np.bincount(fa, minlength=int(fa.max()) + 1)
    n_b = np.bincount(fb, minlength=int(fb.max()) + 1)
    base = int(fb.max()) + 1
    keys, n_ab = np.unique(fa * base + fb, return_counts=True)
    la, lb = keys // base, keys % base
    out = np.empty(keys.size, MATCH_DTYPE)
    out["window_a"], out["window_b"] = a, b
    out["label_a"], out["label_b"] = la, lb
    out["n_ab"] = n_ab
    na = np.where(la > 0, n_a[la], 0)
    nb = np.where(lb > 0, n_b[lb], 0)
    out["n_a"], out["n_b"] = na, nb
    both = (la > 0) & (lb > 0)
    union = na + nb - n_ab
    out["iou"] = np.where(both, n_ab / np.maximum(union, 1), 0.0)
    out["ios"] = np.where(both, n_ab / np.maximum(np.minimum(na, nb), 1), 0.0)
    out["group_iou"] = _group_iou(la, lb, n_ab)
    return out


def _group_iou(la: np.ndarray, lb: np.ndarray, n_ab: np.ndarray) -> np.ndarray:
    """IoU of the foreground of each connected group of pieces (pieces linked by shared pixels).

    A group's IoU is 1 when both windows see the same foreground there, however differently they split it
    into labels (an object whose connection runs outside the strip is one label in one window and two in
    the other): it measures shape disagreement, not partial views.
    """
    ua, ia = np.unique(la, return_inverse=True)
    ub, ib = np.unique(lb, return_inverse=True)
    na_nodes = ua.size
    both = (la > 0) & (lb > 0)
    graph = coo_matrix(
        (np.ones(int(both.sum()), np.int8), (ia[both], na_nodes + ib[both])), shape=(na_nodes + ub.size,) * 2
    )
    _, comp = connected_components(graph, directed=False)
    node = np.where(la > 0, ia, na_nodes + ib)
    group = comp[node]
    inter = np.bincount(group, weights=np.where(both, n_ab, 0), minlength=int(comp.max()) + 1)
    either = np.bincount(group, weights=n_ab, minlength=int(comp.max()) + 1)
    return (inter / np.maximum(either, 1))[group]


def _crop(labels: np.ndarray, plan: Plan, index: int, box: tuple[int, int, int, int]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    w = plan.window(index)
    oy, ox = plan.y.out_start(w.row), plan.x.out_start(w.col)
    y0, y1, x0, x1 = box
    return arr[y0 - oy : y1 - oy, x0 - ox : x1 - ox]


# --------------------------------------------------------------------------- client
def resolve_labels(
    windows: Sequence[WindowLabels],
    matches: Sequence[np.ndarray] | np.ndarray,
    *,
    metric: str = "ios",
    threshold: float = 0.5,
    report_iou: float = 0.5,
    min_pixels: int = 1,
    n_windows: int | None = None,
) -> LabelResolution:
    """Join matching pieces across all windows (union-find) and number the objects (client side).

    Parameters
    ----------
    windows
        One :class:`WindowLabels` per window (any order; windows not run count as empty).
    matches
        Tables from :func:`match_windows` (a list, or one concatenated array).
    metric
        ``"ios"`` (intersection over the smaller piece, default: a piece that an edge cut is still
        matched to the whole object) or ``"iou"``.
    threshold
        Pieces sharing pixels are joined when their metric is at least this (in ``(0, 1]``).
    report_iou
        Pairs of labelled pieces sharing pixels whose group of linked pieces (see :data:`MATCH_DTYPE`
        ``group_iou``) has a foreground IoU below this are reported as disagreements.
    min_pixels
        Pieces smaller than this in a strip are neither joined nor reported (noise at window edges).
    n_windows
        Number of windows in the plan (default: one more than the largest index seen).

    Returns
    -------
    LabelResolution

    Raises
    ------
    InputError
        Unknown metric or a threshold outside ``(0, 1]``.
    """
    if metric not in ("ios", "iou"):
        raise InputError(f"metric must be 'ios' or 'iou', got {metric!r}")
    if not 0 < threshold <= 1:
        raise InputError(f"threshold must be in (0, 1], got {threshold!r}", hint="0.5 is SAHI's default")
    n = max((w.index for w in windows), default=-1) + 1 if n_windows is None else int(n_windows)
    counts = np.zeros(n, np.int64)
    for w in windows:
        counts[w.index] = w.count
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    dtype = label_dtype(total)

    parts = [matches] if isinstance(matches, np.ndarray) else [np.asarray(m) for m in matches]
    table_m = np.concatenate(parts) if parts else np.zeros(0, MATCH_DTYPE)
    if table_m.size == 0:
        table_m = np.zeros(0, MATCH_DTYPE)
    both = (table_m["label_a"] > 0) & (table_m["label_b"] > 0)
    big = (table_m["n_a"] >= min_pixels) & (table_m["n_b"] >= min_pixels) & (table_m["n_ab"] >= min_pixels)
    join = both & big & (table_m[metric] >= threshold)
    ga = offsets[table_m["window_a"][join]] + table_m["label_a"][join].astype(np.int64)
    gb = offsets[table_m["window_b"][join]] + table_m["label_b"][join].astype(np.int64)
    graph = coo_matrix((np.ones(ga.size, np.int8), (ga, gb)), shape=(total + 1, total + 1)).tocsr()
    _, comp = connected_components(graph, directed=False)

    # objects present in the output: components with a piece in some kept box
    kept = np.zeros(total + 1, bool)
    for w in windows:
        lo = int(offsets[w.index])
        kept[lo + 1 : lo + w.count + 1] = w.kept[1:]
    present = np.zeros(int(comp.max()) + 1, bool)
    present[comp[kept]] = True
    # number present components 1..M in order of their first provisional label (raster window order)
    _, first = np.unique(comp, return_index=True)
    order = np.argsort(first, kind="stable")
    number = np.zeros(present.size, np.int64)
    ranked = order[present[order]]
    number[ranked] = np.arange(1, ranked.size + 1)
    table = number[comp].astype(dtype)
    table[0] = 0

    border = [offsets[w.index] + w.border.astype(np.int64) for w in windows if w.border.size]
    border_ids = np.unique(table[np.concatenate(border)]) if border else np.zeros(0, dtype)
    border_ids = border_ids[border_ids > 0]
    disagree = table_m[both & big & (table_m["group_iou"] < report_iou)]
    la, lb, n_ab = table_m["label_a"], table_m["label_b"], table_m["n_ab"]
    lone_a = (la > 0) & (lb == 0) & (n_ab == table_m["n_a"])
    lone_b = (la == 0) & (lb > 0) & (n_ab == table_m["n_b"])
    unmatched = int(np.count_nonzero((lone_a | lone_b) & (n_ab >= min_pixels)))
    return LabelResolution(
        offsets=offsets,
        table=table,
        n_objects=int(ranked.size),
        dtype=dtype,
        border_objects=border_ids,
        disagreements=disagree,
        unmatched_pieces=unmatched,
        merged_pairs=int(np.count_nonzero(join)),
    )


# --------------------------------------------------------------------------- per output chunk
def assemble_chunk(
    box: tuple[int, int, int, int],
    *,
    plan: Plan,
    read_window: Callable[[int], np.ndarray] | None = None,
    luts: Mapping[int, np.ndarray],
    dtype: np.dtype | str | None = None,
    windows: Sequence[int] | None = None,
    read_region: Callable[[int, slice, slice], np.ndarray] | None = None,
) -> np.ndarray:
    """Final labels of one output box: each window's kept part through its lookup table (crop rule).

    Parameters
    ----------
    box
        Output box ``(y0, y1, x0, x1)``, e.g. ``plan.chunk_box(cy, cx)``.
    plan
        The run's plan.
    read_window
        Returns the stored ``(H, W)`` local labels of a window (from :func:`prepare_window`).
    luts
        :meth:`LabelResolution.luts` for the windows covering ``box``.
    dtype
        Output dtype (default: that of the tables).
    windows
        The windows to copy (default: every window whose kept box meets ``box``); windows left out
        (not run) leave background.
    read_region
        ``read_region(index, rows, cols)`` returns only the part of a window's stored labels the box
        needs (slices in window output coordinates); used instead of ``read_window`` when given.

    Returns
    -------
    numpy.ndarray
        ``(y1 - y0, x1 - x0)`` labels.

    Raises
    ------
    InputError
        A lookup table for a covering window is missing.
    """
    y0, y1, x0, x1 = box
    if dtype is not None:
        out_dtype = np.dtype(dtype)
    else:
        out_dtype = np.result_type(*[t.dtype for t in luts.values()]) if luts else np.dtype(np.int32)
    out = np.zeros((y1 - y0, x1 - x0), out_dtype)
    if read_window is None and read_region is None:
        raise InputError("assemble_chunk needs read_window or read_region")
    covering = plan.windows_for_box(y0, y1, x0, x1, crop=True) if windows is None else windows
    for index in covering:
        if index not in luts:
            raise InputError(f"no lookup table for window {index}", hint="pass resolution.luts(indices)")
        (oy, ox), (ky0, ky1), (kx0, kx1), _ = _window_boxes(plan, index)
        a0, a1 = max(y0, ky0), min(y1, ky1)
        b0, b1 = max(x0, kx0), min(x1, kx1)
        if a1 <= a0 or b1 <= b0:
            continue
        rows, cols = slice(a0 - oy, a1 - oy), slice(b0 - ox, b1 - ox)
        if read_region is not None:
            local = np.asarray(read_region(index, rows, cols))
        else:
            assert read_window is not None
            whole = np.asarray(read_window(index))
            local = (whole[0] if whole.ndim == 3 else whole)[rows, cols]
        out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = luts[index][local]
    return out
