"""Pyramid levels as a :class:`~tilegraph.passes.abc.Pass`: each level a 2x down-sample of the previous one.

Each output pixel is the mean of the 2 x 2 input pixels it covers (fewer at an odd far edge). For
integer outputs the mean is taken over the stored integers and rounded half up, exactly (no drift
from the float conversion on the way), so level ``k + 1`` equals the 2 x 2 mean of level ``k`` as
stored. One task per output chunk reads twice its box from the previous level, out of core.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from tilegraph.passes.abc import Box, Pass, PassContext
from tilegraph.plan.plan import Plan

__all__ = ["Downsample2x", "downsample2x"]


def downsample2x(block: np.ndarray, *, integer_max: float | None = None) -> np.ndarray:
    """2 x 2 means of ``block`` ``(rows, cols, C)``; with ``integer_max``, of ``round(block * max)``, rounded half up.

    Returns float32 in the units of ``block`` (integers divided by ``integer_max`` again).
    """
    rows, cols = block.shape[:2]
    x = block.astype(np.float64)
    if integer_max is not None:
        x = np.rint(x * integer_max)
    ph, pw = rows % 2, cols % 2
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)))
    count = np.ones((rows, cols), dtype=np.float64)
    if ph or pw:
        count = np.pad(count, ((0, ph), (0, pw)))
    h2, w2 = x.shape[0] // 2, x.shape[1] // 2
    sums = x.reshape(h2, 2, w2, 2, -1).sum(axis=(1, 3))
    n = count.reshape(h2, 2, w2, 2).sum(axis=(1, 3))[..., None]
    mean = sums / n
    if integer_max is not None:
        mean = np.floor(mean + 0.5) / integer_max  # n is 1, 2 or 4: the division is exact
    return mean.astype(np.float32)


class Downsample2x(Pass):
    """Half the rows and columns (rounded up): the next level of a pyramid (see the module notes)."""

    name: ClassVar[str] = "downsample2x"

    def out_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return (shape[0] + 1) // 2, (shape[1] + 1) // 2

    def in_box(self, plan: Plan, box: Box, shape: tuple[int, int]) -> Box:
        y0, y1, x0, x1 = box
        return 2 * y0, min(shape[0], 2 * y1), 2 * x0, min(shape[1], 2 * x1)

    def prepare(self, ctx: PassContext) -> Any:
        dtype = np.dtype(getattr(ctx, "out_dtype", None) or "float32")
        return {"integer_max": float(np.iinfo(dtype).max) if dtype.kind in "ui" else None}

    def apply(self, plan: Plan, box: Box, block: np.ndarray, in_box: Box, state: Any) -> np.ndarray:
        return downsample2x(block, integer_max=(state or {}).get("integer_max"))
