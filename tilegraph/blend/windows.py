"""Blend weights along one axis: they live in :mod:`tilegraph.plan.weights` (the QA measures seams with
the same ramps without importing the blend package); re-exported here."""

from __future__ import annotations

from tilegraph.plan.weights import axis_weights, normalized_axis_weights, ramp

__all__ = ["axis_weights", "normalized_axis_weights", "ramp"]
