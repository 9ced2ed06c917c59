"""The four built-in blend modes on the :class:`~tilegraph.blend.abc.Blender` contract.

``crop`` keeps from each window the part nearer its centre than any neighbour's; ``linear``,
``cosine`` and ``gaussian`` weight windows by normalised ramps (see :mod:`tilegraph.blend.windows`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from tilegraph.blend.abc import Blender, Box, WindowReader, WindowTransform
from tilegraph.blend.merge import blend_box, crop_box
from tilegraph.plan.plan import Plan
from tilegraph.plan.weights import step_profile

__all__ = ["CropBlender", "WeightedBlender", "LinearBlender", "CosineBlender", "GaussianBlender"]


class CropBlender(Blender):
    """Each output pixel from the one window whose kept interval holds it (no mixing).

    Tiled ``crop`` equals whole-image inference wherever the receptive field fits in half the
    overlap. Without a correction, the store keeps the rounded output dtype and a box is a copy.
    """

    name: ClassVar[str] = "crop"
    confidence_rule: ClassVar[str] = "none"

    def store_dtype(self, out_dtype: str, *, corrected: bool) -> str:
        if out_dtype in ("uint8", "uint16") and not corrected:
            return out_dtype  # never mixed: rounding per window gives the final values
        return super().store_dtype(out_dtype, corrected=corrected)

    def windows_for_box(self, plan: Plan, box: Box) -> list[int]:
        return plan.windows_for_box(*box, crop=True)

    def seam_profile(self, plan: Plan, axis: str, half: int) -> np.ndarray:
        return step_profile(plan.x if axis == "x" else plan.y, "crop", half)

    def blend(
        self,
        plan: Plan,
        box: Box,
        read: WindowReader,
        *,
        transform: WindowTransform | None = None,
        strips: Any = None,
    ) -> np.ndarray:
        if transform is None and np.dtype(read.dtype).kind != "f":
            return crop_box(plan, *box, read.raw)  # the store holds output values: copy them
        return blend_box(plan, *box, read, transform=transform, mode="crop")


class WeightedBlender(Blender):
    """Windows weighted by normalised per-axis weights of :attr:`name` (a partition of unity)."""

    confidence_rule: ClassVar[str] = "ratio"

    def seam_profile(self, plan: Plan, axis: str, half: int) -> np.ndarray:
        return step_profile(plan.x if axis == "x" else plan.y, self.name, half)

    def blend(
        self,
        plan: Plan,
        box: Box,
        read: WindowReader,
        *,
        transform: WindowTransform | None = None,
        strips: Any = None,
    ) -> np.ndarray:
        return blend_box(plan, *box, read, transform=transform, mode=self.name)


class LinearBlender(WeightedBlender):
    """Linear ramps across each overlap."""

    name: ClassVar[str] = "linear"


class CosineBlender(WeightedBlender):
    """Raised-cosine ramps across each overlap (the default)."""

    name: ClassVar[str] = "cosine"


class GaussianBlender(WeightedBlender):
    """MONAI's Gaussian importance map (sigma = 0.125 x tile), normalised."""

    name: ClassVar[str] = "gaussian"
