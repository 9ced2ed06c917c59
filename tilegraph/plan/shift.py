"""Grids shifted by half a stride: windows centred on the seams of a plan (the seam-refine pass)."""

from __future__ import annotations

from dataclasses import replace

from tilegraph.errors import PlanError
from tilegraph.plan.plan import Plan

__all__ = ["half_stride", "shifted_plan"]


def half_stride(plan: Plan, axis: str) -> int:
    """Half the stride along ``axis`` (``"y"`` or ``"x"``) in source pixels, rounded down to the alignment."""
    grid = plan.y if axis == "y" else plan.x
    return (grid.stride // 2) // plan.align * plan.align


def shifted_plan(plan: Plan, *, rows: bool, cols: bool) -> Plan:
    """``plan`` with its grid started half a stride earlier along rows and/or columns.

    Its windows are centred on the seams of ``plan`` along the shifted axes (its own cuts fall near the
    centres of ``plan``'s windows); same window, overlap, scale and everything else. An axis with one
    window is not shifted.

    Raises
    ------
    PlanError
        The shifted origin would reach a stride before 0 (an overlap of half the window or more).
    """
    origin = list(plan.origin)
    for k, (axis, on) in enumerate((("y", rows), ("x", cols))):
        grid = plan.y if axis == "y" else plan.x
        if not on or grid.count < 2:
            continue
        v = origin[k] - half_stride(plan, axis)
        if v <= -grid.stride:
            raise PlanError(
                f"a grid shifted by half a stride would start {-v} px before the image along {axis} "
                f"(overlap {grid.overlap} of a {grid.tile} px window)",
                hint="refine='seams' needs an overlap under half the window",
            )
        origin[k] = v
    return replace(plan, origin=(int(origin[0]), int(origin[1])))
