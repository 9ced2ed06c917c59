"""Confidence-weighted blending: a model's confidence channel multiplies the blend weights.

A model that declares ``confidence = True`` returns one channel more than it outputs: the last one
is its confidence in each pixel (non-negative; larger wins). The per-window store keeps it, and it is
never written. How a mode honours it (:attr:`tilegraph.blend.Blender.confidence_rule`):

* ``"ratio"`` (``linear``, ``cosine``, ``gaussian``, ``seam``): the mode runs on ``(c y, c)`` and
  divides, ``out = B(c y) / B(c)``. For modes that weight windows per pixel this is exactly
  ``sum_i w_i c_i y_i / sum_i w_i c_i``: the confidence multiplies the normalised weights (``seam``'s
  feather included; its cuts are found on the weighted values).
* ``"shift"`` (``multiband``, ``poisson`` and modes that do not say): the mode blends ``y`` as usual and
  the confidence moves the result toward the confident windows at the scale of the overlap:
  ``out = B(y) + C(y; c) - C(y; 1)`` with ``C`` the cosine-weighted average (``C(y; c)`` weights by
  ``w_i c_i``). A ratio would mix a pyramid's sharp fine bands with smooth confidences; this shift is
  exactly zero where windows agree.
* ``"none"`` (``crop``): each pixel comes from one window whatever its confidence.

Where windows agree the result equals them (up to float rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tilegraph.blend.abc import Blender, Box, Strip, WindowReader, WindowTransform
from tilegraph.blend.merge import blend_box
from tilegraph.plan.plan import Plan

__all__ = ["ConfidenceReader", "OutputReader", "confident_blend", "confident_strip", "FLOOR", "RULES"]

RULES = ("ratio", "shift", "none")

#: Confidence floor: a window whose confidence is 0 everywhere still defines the output alone.
FLOOR = 1e-6


class ConfidenceReader:
    """A :class:`~tilegraph.blend.abc.WindowReader` giving ``(c y_1, ..., c y_C, c)`` from a store whose
    last channel is the confidence ``c`` (floored at :data:`FLOOR`); ``transform`` (the colour
    correction) applies to ``y`` before the product."""

    dtype = np.dtype("float32")

    def __init__(self, read: WindowReader, transform: WindowTransform | None = None) -> None:
        self.read, self.transform = read, transform

    def __call__(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        region = self.read(index, rows, cols)
        y, c = region[:-1], np.maximum(region[-1:], np.float32(FLOOR))
        if self.transform is not None:
            y = self.transform(index, y, (rows, cols))
        out = np.empty(region.shape, dtype=np.float32)
        np.multiply(y, c, out=out[:-1])
        out[-1:] = c
        return out

    raw = __call__


class OutputReader:
    """A :class:`~tilegraph.blend.abc.WindowReader` of the outputs alone (the confidence channel dropped)."""

    def __init__(self, read: WindowReader) -> None:
        self.read, self.dtype = read, read.dtype

    def __call__(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        return self.read(index, rows, cols)[:-1]

    def raw(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        return self.read.raw(index, rows, cols)[:-1]


def _rule(blender: Blender) -> str:
    rule = getattr(blender, "confidence_rule", "shift")
    return rule if rule in RULES else "shift"


def confident_strip(
    blender: Blender, plan: Plan, strip: Strip, read: WindowReader, transform: WindowTransform | None
) -> Any:
    """The blender's strip pass: on the confidence-weighted values (``"ratio"``), else on the outputs."""
    if _rule(blender) == "ratio":
        return blender.measure_strip(plan, strip, ConfidenceReader(read, transform), None)
    return blender.measure_strip(plan, strip, OutputReader(read), transform)


def confident_blend(
    blender: Blender,
    plan: Plan,
    box: Box,
    read: WindowReader,
    *,
    transform: WindowTransform | None = None,
    strips: Any = None,
) -> np.ndarray:
    """``box`` blended with the confidence multiplying the weights, ``(rows, cols, C)`` (module notes)."""
    rule = _rule(blender)
    if rule == "ratio":
        both = np.asarray(blender.blend(plan, box, ConfidenceReader(read, transform), strips=strips))
        num, den = both[..., :-1], both[..., -1:]
        return (num / np.maximum(den, np.float32(FLOOR))).astype(np.float32, copy=False)
    out = blender.blend(plan, box, OutputReader(read), transform=transform, strips=strips)
    if rule == "none":
        return out
    y0, y1, x0, x1 = box
    both = blend_box(plan, y0, y1, x0, x1, ConfidenceReader(read, transform), mode="cosine")
    plain = blend_box(plan, y0, y1, x0, x1, OutputReader(read), transform=transform, mode="cosine")
    shift = both[..., :-1] / np.maximum(both[..., -1:], np.float32(FLOOR)) - plain
    return (np.asarray(out, dtype=np.float32) + shift).astype(np.float32, copy=False)
