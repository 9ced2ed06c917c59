"""The :class:`Blender` contract: how one output box is built from the windows covering it.

A blend mode is one class implementing :class:`Blender` plus one registration line
(:func:`tilegraph.blend.register_blender` or an entry point in the ``tilegraph.blenders`` group).
The engine calls it in one task per output chunk; it never sees the engine.

What a blender declares:

* :meth:`Blender.halo`: output pixels beyond the box it needs (a pyramid's support), so that the
  windows covering the box plus the halo are the ones it may read;
* :meth:`Blender.store_dtype`: the precision the per-window store must keep for it (``crop``
  without a correction may keep the rounded output dtype; averaging modes need floats);
* :attr:`Blender.strip_pass`: whether it needs a pass over every overlap strip first (a seam
  path, statistics of both sides): :meth:`Blender.measure_strip` then runs once per
  :class:`Strip` on a worker, :meth:`Blender.combine_strips` gathers the small results on the
  client, and every :meth:`Blender.blend` call receives them.

Everything here is pure numpy on what the ``read`` callable returns; no I/O, no Dask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from tilegraph.options import BlendOptions
from tilegraph.plan.plan import Plan

__all__ = ["Blender", "Box", "Strip", "WindowReader", "WindowTransform", "overlap_strips"]

Box = tuple[int, int, int, int]
"""An output box ``(y0, y1, x0, x1)``, half-open, in output pixels."""


class WindowReader(Protocol):
    """How a blender reads window outputs from the per-window store.

    ``reader(index, rows, cols)`` returns window ``index``'s output over ``rows`` x ``cols``
    (slices in the window's output coordinates) as ``(C', r, c)`` float32, in the model's units;
    ``reader.raw(...)`` returns the same region in the store's own dtype (:attr:`dtype`), e.g. the
    rounded output integers of a ``crop`` store. Returned arrays must not be modified.
    """

    dtype: np.dtype

    def __call__(self, index: int, rows: slice, cols: slice) -> np.ndarray: ...

    def raw(self, index: int, rows: slice, cols: slice) -> np.ndarray: ...


class WindowTransform(Protocol):
    """A per-window correction applied to each region before blending (colour reconciliation).

    ``transform(index, region, (rows, cols))`` returns a corrected float32 copy of ``region``
    (``(C', r, c)``, never modified), where ``rows``/``cols`` place it in window ``index``.
    """

    def __call__(self, index: int, region: np.ndarray, slices: tuple[slice, slice]) -> np.ndarray: ...


@dataclass(frozen=True)
class Strip:
    """The overlap of two neighbouring windows, in output pixels.

    Attributes
    ----------
    a, b : int
        Flat window indices, ``a < b``: ``b`` is below ``a`` (``axis=0``, a horizontal seam) or to
        its right (``axis=1``, a vertical seam).
    axis : int
        The axis along which the windows follow each other.
    box : Box
        The overlap of their output footprints, clipped to the output.
    """

    a: int
    b: int
    axis: int
    box: Box


def overlap_strips(plan: Plan) -> list[Strip]:
    """Every :class:`Strip` of the plan's grid (pairs of 4-neighbours with a non-empty overlap), raster order."""
    rows, cols = plan.grid
    out = []
    for r in range(rows):
        for c in range(cols):
            a = r * cols + c
            ya, xa = plan.y.footprint(r), plan.x.footprint(c)
            for axis, (rr, cc) in ((0, (r + 1, c)), (1, (r, c + 1))):
                if rr >= rows or cc >= cols:
                    continue
                yb, xb = plan.y.footprint(rr), plan.x.footprint(cc)
                box = (max(ya[0], yb[0]), min(ya[1], yb[1]), max(xa[0], xb[0]), min(xa[1], xb[1]))
                if box[0] < box[1] and box[2] < box[3]:
                    out.append(Strip(a, rr * cols + cc, axis, box))
    return out


class Blender(ABC):
    """Builds one output box from the windows that cover it (see the module notes).

    Subclasses set :attr:`name` and implement :meth:`blend`. Instances are small and picklable:
    the engine sends one to every worker with the run's context.

    Parameters
    ----------
    options
        The run's blend options (default: this mode with default settings).
    """

    name: ClassVar[str] = ""
    #: Whether :meth:`measure_strip` must run over every overlap strip before blending.
    strip_pass: ClassVar[bool] = False

    def __init__(self, options: BlendOptions | None = None) -> None:
        self.options = options if options is not None else BlendOptions(mode=self.name)

    def halo(self, plan: Plan) -> int:
        """Output pixels beyond the box that :meth:`blend` may need (default 0)."""
        return 0

    def store_dtype(self, out_dtype: str, *, corrected: bool) -> str:
        """dtype of the per-window store this mode needs for an output of ``out_dtype``.

        ``corrected``: a per-window correction (reconciliation) is applied before blending.
        Default float32: a float16 store halves the disk it takes but numpy converts float16 at
        35-50 ms per megapixel of RGB on the CI machine, more than the blend itself.
        """
        return "float32"

    def windows_for_box(self, plan: Plan, box: Box) -> list[int]:
        """Windows :meth:`blend` may read for ``box``: every footprint meeting the box plus :meth:`halo`."""
        h = self.halo(plan)
        y0, y1, x0, x1 = box
        oh, ow = plan.out_shape
        return plan.windows_for_box(
            max(0, y0 - h), min(oh, y1 + h), max(0, x0 - h), min(ow, x1 + h), crop=False
        )

    def strips_for_box(self, plan: Plan, box: Box) -> list[Strip]:
        """Strips whose results :meth:`blend` needs for ``box`` (default: those of its windows)."""
        windows = set(self.windows_for_box(plan, box))
        return [s for s in overlap_strips(plan) if s.a in windows and s.b in windows]

    def measure_strip(
        self, plan: Plan, strip: Strip, read: WindowReader, transform: WindowTransform | None
    ) -> Any:
        """Small result of one overlap strip (a seam path, statistics); runs on a worker.

        Only called when :attr:`strip_pass` is True.
        """
        raise NotImplementedError(f"blend mode {self.name!r} declares no strip pass")

    def combine_strips(self, plan: Plan, results: Mapping[tuple[int, int], Any]) -> Any:
        """Gather the strip results (keyed by ``(a, b)``) on the client; what every :meth:`blend` receives."""
        return dict(results)

    @abstractmethod
    def blend(
        self,
        plan: Plan,
        box: Box,
        read: WindowReader,
        *,
        transform: WindowTransform | None = None,
        strips: Any = None,
    ) -> np.ndarray:
        """Build ``box``; returns ``(rows, cols, C')``.

        float32 in the model's units, or an array already in the output dtype (a ``crop`` copy of
        rounded integers), which is then written as it is. Deterministic: the result must not
        depend on task order or placement.
        """

    def describe(self) -> dict:
        """Plain data for the output's metadata."""
        return {"mode": self.name}
