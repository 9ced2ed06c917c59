"""Plan: pure geometry of a tiled run (no dask, torch or I/O)."""

from tilegraph.plan.grid import AxisGrid, make_axis
from tilegraph.plan.plan import Plan, Window, make_plan
from tilegraph.plan.shift import shifted_plan

__all__ = ["AxisGrid", "Plan", "Window", "make_axis", "make_plan", "shifted_plan"]
