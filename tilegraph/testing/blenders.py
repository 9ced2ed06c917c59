"""A trivial blend mode and a trivial pass for the test kit: what adding one takes.

``FirstWindow`` takes every output pixel from the first window (in raster order) whose footprint
holds it; registering it is one line::

    from tilegraph.blend import register_blender
    register_blender(FirstWindow)      # then run(..., blend="first")

``Negate`` is a pass (``1 - x`` on [0, 1] data): ``register_pass(Negate)``, then ``run(..., passes=["negate"])``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from tilegraph.blend.abc import Blender, Box, WindowReader, WindowTransform
from tilegraph.blend.merge import window_region
from tilegraph.passes.abc import Pass
from tilegraph.plan.plan import Plan

__all__ = ["FirstWindow", "Negate"]


class FirstWindow(Blender):
    """Each output pixel from the first window covering it (a visible seam, on purpose)."""

    name: ClassVar[str] = "first"

    def blend(
        self,
        plan: Plan,
        box: Box,
        read: WindowReader,
        *,
        transform: WindowTransform | None = None,
        strips: Any = None,
    ) -> np.ndarray:
        y0, y1, x0, x1 = box
        out: np.ndarray | None = None
        filled = np.zeros((y1 - y0, x1 - x0), bool)
        for index in self.windows_for_box(plan, box):
            sl = window_region(plan, index, *box)
            if sl is None:
                continue
            (wr, wc), (br, bc) = sl
            region = read(index, wr, wc)
            if transform is not None:
                region = transform(index, region, (wr, wc))
            if out is None:
                out = np.zeros((y1 - y0, x1 - x0, region.shape[0]), np.float32)
            take = ~filled[br, bc]
            out[br, bc][take] = np.moveaxis(region, 0, -1)[take]
            filled[br, bc] |= take
        assert out is not None and filled.all()
        return out


class Negate(Pass):
    """``1 - x``: a pass that reads each box (no halo) and writes it once."""

    name: ClassVar[str] = "negate"

    def apply(self, plan: Plan, box: Box, block: np.ndarray, in_box: Box, state: Any) -> np.ndarray:
        return 1.0 - block
