"""Mask-aware grids: shift the (regular) window grid so its seams cut as few masked objects as possible,
and list the windows that touch the mask (the others need not run).

Input: a boolean *thumbnail* of the mask (any size; it is mapped onto the image by the ratio of the
sizes, conservatively: a thumbnail pixel covers every image pixel it overlaps). Objects are the
connected components of the thumbnail mask (8-connectivity).

Geometry. Shifting the grid by ``o`` pixels along an axis means starting it in the near padding:
windows start at ``-o, S - o, 2 S - o, ...`` in image pixels (``S`` the stride), the grid stays regular,
and the plan of the shifted run is the plan with ``origin = -o`` (the near padding is read like the far
one). The seams are the plan's cut lines (the overlap centres, where ``crop`` switches windows): in image pixels
``c_i = i S + (S + T) // 2 - o``; seam ``i`` *cuts* an object spanning pixels ``[a, b)`` when ``a < c_i <
b`` (pixels on both sides). Offsets are multiples of ``plan.align`` (model stride and down-scale
factor), from 0 to ``S - 1``.

Per axis, :func:`choose_grid` evaluates every offset against every object (vectorised over objects:
``O(S / align * objects)``) and keeps the one that cuts the fewest objects (then the fewest object-seam
crossings, then the smallest offset); objects longer than the stride are cut whatever the offset. It
reports how many objects each seam of the chosen grid still crosses, and the windows whose kept box
(``crop``) or footprint (weighted blends) contains a masked pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from tilegraph.errors import InputError
from tilegraph.plan.plan import Plan, make_plan

__all__ = [
    "Seam",
    "MaskGrid",
    "mask_objects",
    "axis_costs",
    "choose_grid",
    "shifted_plan",
    "windows_touching",
]


@dataclass(frozen=True)
class Seam:
    """One seam of the chosen grid: ``axis`` ``"y"`` (a horizontal line at row ``position``) or ``"x"``."""

    axis: str
    index: int
    position: int
    crossings: int


@dataclass(frozen=True)
class MaskGrid:
    """The chosen grid and what it still cuts.

    Attributes
    ----------
    offset : tuple[int, int]
        Near-edge padding ``(rows, cols)``; windows start at ``i * S - offset``.
    plan : Plan
        The plan that runs: the given one with ``origin = -offset``.
    objects : int
        Masked objects (connected components of the thumbnail).
    objects_cut : int
        Objects cut by at least one seam of the chosen grid.
    objects_cut_unshifted : int
        The same for offset ``(0, 0)``.
    seams : list[Seam]
        Every seam of the chosen grid with the objects it crosses.
    windows : numpy.ndarray
        Flat indices (in :attr:`plan`) of the windows touching the mask, raster order.
    costs : dict
        ``{"y": (offsets, objects_cut), "x": ...}`` for every candidate offset.
    """

    offset: tuple[int, int]
    plan: Plan
    objects: int
    objects_cut: int
    objects_cut_unshifted: int
    seams: list[Seam] = field(repr=False)
    windows: np.ndarray = field(repr=False)
    costs: dict = field(repr=False)

    @property
    def skipped(self) -> int:
        """Windows with no masked pixel (not run)."""
        return self.plan.n_windows - int(self.windows.size)

    def report(self) -> dict:
        """JSON-able summary."""
        return {
            "offset": list(self.offset),
            "objects": self.objects,
            "objects_cut": self.objects_cut,
            "objects_cut_unshifted": self.objects_cut_unshifted,
            "windows_run": int(self.windows.size),
            "windows_skipped": self.skipped,
            "seams": [
                {"axis": s.axis, "index": s.index, "position": s.position, "crossings": s.crossings}
                for s in self.seams
            ],
        }


def _scale(mask_shape: tuple[int, int], image_shape: tuple[int, int]) -> tuple[float, float]:
    return image_shape[0] / mask_shape[0], image_shape[1] / mask_shape[1]


def mask_objects(mask: np.ndarray, *, image_shape: tuple[int, int]) -> np.ndarray:
    """Pixel extents of the mask's objects in image pixels.

    Parameters
    ----------
    mask
        bool thumbnail ``(h, w)``.
    image_shape
        ``(H, W)`` of the image the thumbnail shows.

    Returns
    -------
    numpy.ndarray
        int64 ``(n, 4)``: ``y0, y1, x0, x1`` per object (end exclusive), conservative (every image pixel a
        masked thumbnail pixel overlaps).
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise InputError(f"mask must be a 2-D thumbnail, got shape {m.shape}")
    lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 4), np.int64)
    fy, fx = _scale(m.shape, image_shape)
    sl = ndimage.find_objects(lab)
    t = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in sl], np.float64)
    eps = 1e-9
    out = np.empty((n, 4), np.int64)
    out[:, 0] = np.floor(t[:, 0] * fy + eps)
    out[:, 1] = np.ceil(t[:, 1] * fy - eps)
    out[:, 2] = np.floor(t[:, 2] * fx + eps)
    out[:, 3] = np.ceil(t[:, 3] * fx - eps)
    out[:, 1] = np.minimum(out[:, 1], image_shape[0])
    out[:, 3] = np.minimum(out[:, 3], image_shape[1])
    return out


def _axis_geometry(plan: Plan, axis: str) -> tuple[int, int, int, int]:
    """``size, tile, stride, align`` of one axis in source pixels."""
    if axis == "y":
        return plan.shape[0], plan.tile[0], plan.tile[0] - plan.overlap[0], plan.align
    return plan.shape[1], plan.tile[1], plan.tile[1] - plan.overlap[1], plan.align


def _n_seams(size: int, tile: int, stride: int, offset: int) -> int:
    padded = size + offset
    count = 1 if padded <= tile else -(-(padded - tile) // stride) + 1
    return count - 1


def _seam_span(lo: np.ndarray, hi: np.ndarray, *, tile: int, stride: int, offset: int, n_seams: int):
    """First and last seam index strictly inside each ``[lo, hi)`` (last < first: none)."""
    c0 = (stride + tile) // 2
    a = lo + offset - c0
    b = hi + offset - c0
    first = np.maximum(np.floor_divide(a, stride) + 1, 0)
    last = np.minimum(-np.floor_divide(-b, stride) - 1, n_seams - 1)
    return first, last


def axis_costs(objects: np.ndarray, *, plan: Plan, axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objects cut and object-seam crossings along one axis, for every candidate offset.

    Parameters
    ----------
    objects
        :func:`mask_objects` output.
    plan
        The unshifted plan (tile, overlap, alignment, image size).
    axis
        ``"y"`` or ``"x"``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Offsets, objects cut, crossings.
    """
    size, tile, stride, align = _axis_geometry(plan, axis)
    lo, hi = (objects[:, 0], objects[:, 1]) if axis == "y" else (objects[:, 2], objects[:, 3])
    offsets = np.arange(0, stride, align, dtype=np.int64)
    cut = np.zeros(offsets.size, np.int64)
    cross = np.zeros(offsets.size, np.int64)
    for k, o in enumerate(offsets):
        first, last = _seam_span(
            lo, hi, tile=tile, stride=stride, offset=int(o), n_seams=_n_seams(size, tile, stride, int(o))
        )
        span = np.maximum(last - first + 1, 0)
        cut[k] = np.count_nonzero(span)
        cross[k] = int(span.sum())
    return offsets, cut, cross


def shifted_plan(plan: Plan, offset: tuple[int, int]) -> Plan:
    """``plan`` with its grid starting ``offset`` pixels before the image (``origin = -offset``).

    Raises
    ------
    InputError
        An offset that is negative, not below the stride, or not a multiple of the alignment.
    """
    oy, ox = (int(v) for v in offset)
    for o, stride in ((oy, plan.y.stride), (ox, plan.x.stride)):
        if o % plan.align or not 0 <= o < stride:
            raise InputError(
                f"grid offset {offset} must be multiples of the plan's alignment {plan.align} in [0, {stride})"
            )
    return make_plan(
        plan.shape,
        tile=plan.tile,
        overlap=plan.overlap,
        channels=plan.channels,
        dtype=plan.dtype,
        layout=plan.layout,
        scale=plan.scale,
        model_stride=plan.model_stride,
        out_channels=plan.out_channels,
        out_dtype=plan.out_dtype,
        out_chunks=plan.out_chunks,
        blend=plan.blend,
        pad_mode=plan.pad_mode,
        batch_size=plan.batch_size,
        batches_per_task=plan.batches_per_task,
        halo=plan.halo,
        reconcile=plan.reconcile,
        store_dtype=plan.store_dtype,
        origin=(-oy, -ox),
    )


def windows_touching(mask: np.ndarray, *, plan: Plan, crop: bool | None = None) -> np.ndarray:
    """Flat indices of the windows of ``plan`` that touch the mask (conservatively, by thumbnail pixels).

    Parameters
    ----------
    mask
        bool thumbnail of the image; a thumbnail pixel stands for every image pixel it overlaps.
    plan
        The plan that runs (for a shifted grid: :func:`shifted_plan`).
    crop
        Judge by the kept box (True) or the whole footprint (False); default: ``plan.blend == "crop"``.

    Returns
    -------
    numpy.ndarray
        int64 window indices in raster order.
    """
    m = np.asarray(mask, dtype=bool)
    crop = plan.blend == "crop" if crop is None else crop
    h, w = plan.shape
    fy, fx = _scale(m.shape, (h, w))
    integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.int64)
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    s = plan.scale_fraction

    def source_interval(ax, i: int) -> tuple[float, float]:
        a, b = ax.keep(i) if crop else ax.footprint(i)
        return float(a / s), float(b / s)

    ys = [source_interval(plan.y, r) for r in range(plan.grid[0])]
    xs = [source_interval(plan.x, c) for c in range(plan.grid[1])]
    eps = 1e-9
    out = []
    for r, (y0, y1) in enumerate(ys):
        ty0 = int(np.floor(max(y0, 0) / fy + eps))
        ty1 = int(np.ceil(min(y1, h) / fy - eps))
        if ty1 <= ty0:
            continue
        for c, (x0, x1) in enumerate(xs):
            tx0 = int(np.floor(max(x0, 0) / fx + eps))
            tx1 = int(np.ceil(min(x1, w) / fx - eps))
            if tx1 <= tx0:
                continue
            total = integral[ty1, tx1] - integral[ty0, tx1] - integral[ty1, tx0] + integral[ty0, tx0]
            if total > 0:
                out.append(r * plan.grid[1] + c)
    return np.asarray(out, np.int64)


def choose_grid(mask: np.ndarray, *, plan: Plan, crop: bool | None = None) -> MaskGrid:
    """Choose the grid offset per axis that cuts the fewest masked objects; list the windows to run.

    Parameters
    ----------
    mask
        bool thumbnail of the image (``True`` = matters).
    plan
        The unshifted plan.
    crop
        See :func:`windows_touching`.

    Returns
    -------
    MaskGrid
    """
    objects = mask_objects(mask, image_shape=plan.shape)
    chosen, costs, seams = [], {}, []
    cut_masks: list[np.ndarray] = []
    cut0_masks: list[np.ndarray] = []
    for axis in ("y", "x"):
        offsets, cut, cross = axis_costs(objects, plan=plan, axis=axis)
        costs[axis] = (offsets, cut)
        best = int(np.lexsort((offsets, cross, cut))[0])
        o = int(offsets[best])
        chosen.append(o)
        size, tile, stride, _ = _axis_geometry(plan, axis)
        lo, hi = (objects[:, 0], objects[:, 1]) if axis == "y" else (objects[:, 2], objects[:, 3])
        for off, sink in ((o, cut_masks), (0, cut0_masks)):
            n_seams = _n_seams(size, tile, stride, off)
            first, last = _seam_span(lo, hi, tile=tile, stride=stride, offset=off, n_seams=n_seams)
            sink.append(last >= first)
            if off == o and sink is cut_masks:
                diff = np.zeros(n_seams + 1, np.int64)
                hit = last >= first
                np.add.at(diff, first[hit], 1)
                np.add.at(diff, last[hit] + 1, -1)
                per_seam = np.cumsum(diff)[:n_seams]
                c0 = (stride + tile) // 2
                for i in range(n_seams):
                    pos = int(c0 + i * stride - o)
                    if 0 < pos < size:  # a last seam can fall beyond the image (empty kept box)
                        seams.append(Seam(axis, i, pos, int(per_seam[i])))
    offset = (chosen[0], chosen[1])
    run_plan = shifted_plan(plan, offset)
    n = objects.shape[0]
    objects_cut = int(np.count_nonzero(cut_masks[0] | cut_masks[1])) if n else 0
    objects_cut0 = int(np.count_nonzero(cut0_masks[0] | cut0_masks[1])) if n else 0
    return MaskGrid(
        offset=offset,
        plan=run_plan,
        objects=int(n),
        objects_cut=objects_cut,
        objects_cut_unshifted=objects_cut0,
        seams=seams,
        windows=windows_touching(mask, plan=run_plan, crop=crop),
        costs=costs,
    )
