"""Confidence-weighted blending: a model's confidence channel multiplies the blend weights.

A model that declares ``confidence = True`` returns one channel more than it outputs: the last one
is its confidence in each pixel (non-negative; larger wins). The per-window store keeps it; blending
then runs the run's own blend mode on ``(c * y, c)`` and divides::

    out = B(c y) / B(c)

which, for the modes that weight windows per pixel (``crop``, ``linear``, ``cosine``, ``gaussian``),
is exactly ``sum_i w_i c_i y_i / sum_i w_i c_i``: the confidence multiplies the normalised weights.
``multiband`` mixes both per band (a multi-scale version of the same), ``seam`` and ``poisson`` find
their cuts and corrections on the weighted values. The confidence channel is never written. Where
windows agree the result equals them (up to float rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tilegraph.blend.abc import Blender, Box, Strip, WindowReader, WindowTransform
from tilegraph.plan.plan import Plan

__all__ = ["ConfidenceReader", "confident_blend", "confident_strip", "FLOOR"]

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


def confident_strip(
    blender: Blender, plan: Plan, strip: Strip, read: WindowReader, transform: WindowTransform | None
) -> Any:
    """The blender's strip pass on the confidence-weighted values."""
    return blender.measure_strip(plan, strip, ConfidenceReader(read, transform), None)


def confident_blend(
    blender: Blender,
    plan: Plan,
    box: Box,
    read: WindowReader,
    *,
    transform: WindowTransform | None = None,
    strips: Any = None,
) -> np.ndarray:
    """``box`` blended with the confidence multiplying the weights, ``(rows, cols, C)`` float32."""
    both = np.asarray(blender.blend(plan, box, ConfidenceReader(read, transform), strips=strips))
    num, den = both[..., :-1], both[..., -1:]
    return (num / np.maximum(den, np.float32(FLOOR))).astype(np.float32, copy=False)
