"""``refine="seams"``: the model run again on windows centred on the seams, blended into bands along them.

The "seams fix" of tiled diffusion upscalers, as a distributed pass after blending. Three grids shifted
by half a stride (:func:`tilegraph.plan.shifted_plan`) put a window's centre on every seam: ``V``
(shifted across columns) on the vertical seams, ``H`` (across rows) on the horizontal ones, ``D``
(both) on the points where four windows meet. :meth:`RefineSeamsPass.prepare` asks the engine to run
the model over the windows of each grid that the bands reach (:meth:`~tilegraph.passes.abc.PassContext.infer`:
ordinary model tasks on the run's workers, outputs in a second per-window store, about three times
the run's model work); each output chunk then mixes, per pixel,

    out = (1 - v)(1 - h) y + v (1 - h) V + (1 - v) h H + v h D

where ``v`` (``h``) is 1 within ``core`` px of a vertical (horizontal) seam, falls to 0 by ``reach`` px
with a raised cosine, and ``V``, ``H``, ``D`` are their grids' crop composites. ``reach`` is at most half
a stride, so wherever a grid has weight its pixel comes from one window whose centre is on the seam:
no seam of the shifted grids shows, and the seam lines themselves are inside single windows. A model
that tiles exactly gives every grid the same pixels: the output is left as it is.

The shifted windows see no colour correction (reconciliation solves the run's own windows).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from tilegraph.passes.abc import Box, Pass, PassContext, WindowOutputs
from tilegraph.plan.grid import AxisGrid
from tilegraph.plan.plan import Plan
from tilegraph.plan.shift import shifted_plan

__all__ = ["RefineSeamsPass", "band_weight"]


def _bands(axis: AxisGrid) -> tuple[int, int]:
    """``(core, reach)`` of the bands along ``axis``, output px."""
    s_out = int(axis.stride * axis.scale)
    reach = max(1, s_out // 2 - 1)
    core = min(math.ceil(axis.out_overlap / 2) + 2, max(0, reach - 4))
    return core, reach


def band_weight(axis: AxisGrid, lo: int, hi: int) -> np.ndarray:
    """Weight of the seam bands of ``axis`` over output positions ``[lo, hi)`` (float64, 0..1)."""
    core, reach = _bands(axis)
    x = np.arange(lo, hi) + 0.5
    w = np.zeros(hi - lo)
    for i in range(axis.count - 1):
        c = axis.cut(i)
        d = np.abs(x - c)
        t = np.clip((reach - d) / max(reach - core, 1e-9), 0.0, 1.0)
        w = np.maximum(w, np.sin(0.5 * np.pi * t) ** 2)
    return w


def _band_windows(plan: Plan, shifted: Plan, *, rows: bool, cols: bool) -> list[int]:
    """Windows of ``shifted`` whose kept region meets a band along the shifted axes."""
    out = []
    sets: list[list[int]] = []
    for axis, sh, on in ((plan.y, shifted.y, rows), (plan.x, shifted.x, cols)):
        if not on:
            sets.append(list(range(sh.count)))
            continue
        _, reach = _bands(axis)
        keep: set[int] = set()
        for i in range(axis.count - 1):
            c = axis.cut(i)
            keep.update(sh.covering(max(0, c - reach), min(sh.out_size, c + reach), crop=True))
        sets.append(sorted(keep))
    for r in sets[0]:
        for c in sets[1]:
            out.append(r * shifted.x.count + c)
    return out


def _runs(w: np.ndarray, lo: int) -> list[tuple[int, int]]:
    """Contiguous intervals ``[a, b)`` (absolute, from ``lo``) where ``w > 0``."""
    pos = np.flatnonzero(w > 0)
    if pos.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(pos) > 1)
    starts = np.concatenate([[pos[0]], pos[breaks + 1]])
    ends = np.concatenate([pos[breaks], [pos[-1]]]) + 1
    return [(lo + int(a), lo + int(b)) for a, b in zip(starts, ends, strict=True)]


def _composite(grid: WindowOutputs, box: Box, channels: int) -> np.ndarray:
    """``grid``'s crop composite over ``box``, ``(channels, rows, cols)`` float32."""
    plan = grid.plan
    y0, y1, x0, x1 = box
    out = np.zeros((channels, y1 - y0, x1 - x0), dtype=np.float32)
    for index in plan.windows_for_box(y0, y1, x0, x1, crop=True):
        w = plan.window(index)
        (ky0, ky1), (kx0, kx1) = plan.y.keep(w.row), plan.x.keep(w.col)
        a0, a1, b0, b1 = max(y0, ky0), min(y1, ky1), max(x0, kx0), min(x1, kx1)
        if a0 >= a1 or b0 >= b1:
            continue
        oy, ox = plan.y.out_start(w.row), plan.x.out_start(w.col)
        region = grid(index, slice(a0 - oy, a1 - oy), slice(b0 - ox, b1 - ox))
        out[:, a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = region[:channels]
    return out


class RefineSeamsPass(Pass):
    """The model rerun on windows centred on the seams, blended into bands along them (module notes)."""

    name: ClassVar[str] = "refine-seams"

    def check(self, plan: Plan) -> None:
        """The shifted grids must fit (an overlap under half the window): refused before any inference."""
        for rows, cols in ((False, True), (True, False)):
            shifted_plan(plan, rows=rows, cols=cols)

    def prepare(self, ctx: PassContext) -> Any:
        plan = ctx.plan
        state: dict[str, Any] = {}
        for key, rows, cols in (("v", False, True), ("h", True, False), ("d", True, True)):
            if (rows and plan.y.count < 2) or (cols and plan.x.count < 2):
                continue
            shifted = shifted_plan(plan, rows=rows, cols=cols)
            state[key] = ctx.infer(shifted, _band_windows(plan, shifted, rows=rows, cols=cols))
        return state or None

    def apply(self, plan: Plan, box: Box, block: np.ndarray, in_box: Box, state: Any) -> np.ndarray:
        y0, y1, x0, x1 = box
        out = np.array(block, dtype=np.float32)  # no halo: the box itself
        if not state:
            return out
        v = band_weight(plan.x, x0, x1) if "v" in state or "d" in state else np.zeros(x1 - x0)
        h = band_weight(plan.y, y0, y1) if "h" in state or "d" in state else np.zeros(y1 - y0)
        c = out.shape[-1]
        mixes = []  # (grid, column weights, row weights)
        if "v" in state:
            mixes.append((state["v"], v, 1.0 - h))
        if "h" in state:
            mixes.append((state["h"], 1.0 - v, h))
        if "d" in state:
            mixes.append((state["d"], v, h))
        base = np.outer(1.0 - h, 1.0 - v)
        if base.min() >= 1.0:
            return out
        acc = out.astype(np.float64) * base[..., None]
        for grid, wc, wr in mixes:
            n = min(c, int(grid.plan.out_channels or c))
            for ra, rb in _runs(wr, y0):
                for ca, cb in _runs(wc, x0):
                    part = _composite(grid, (ra, rb, ca, cb), n)
                    weight = np.outer(wr[ra - y0 : rb - y0], wc[ca - x0 : cb - x0])
                    acc[ra - y0 : rb - y0, ca - x0 : cb - x0, :n] += weight[..., None] * np.moveaxis(
                        part, 0, -1
                    )
                    if n < c:  # channels the model does not produce (alpha) stay as blended
                        acc[ra - y0 : rb - y0, ca - x0 : cb - x0, n:] += (
                            weight[..., None] * out[ra - y0 : rb - y0, ca - x0 : cb - x0, n:]
                        )
        return acc.astype(np.float32)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "grids": ["columns", "rows", "both"],
            "band": "half the overlap + 2 px, to half a stride",
        }
