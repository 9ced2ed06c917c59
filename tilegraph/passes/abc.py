"""The :class:`Pass` contract: distributed work over a finished array, box by box.

A pass reads a box of its input plus a halo and writes that box of its output once (never a
read-modify-write), so it runs as one task per output chunk, out of core, and retries are safe.
Passes run after blending, in order: low frequencies from a thumbnail, a seam-refine pass, a
pyramid level... Each is one class and one registration (:func:`tilegraph.passes.register_pass`,
or an entry point in the ``tilegraph.passes`` group), asked for with ``run(..., passes=[name])``.

:meth:`Pass.prepare` runs once on the client and returns a small state every task receives (a
thumbnail, statistics, readers); it gets a :class:`PassContext` from the engine, which gives it the plan,
the run's one cached thumbnail inference, read access to the input (:class:`SourceView`), a reader of
the run's window outputs, and model windows on
another grid (:meth:`PassContext.infer`: the engine runs them as model tasks, distributed like the run's
own, and keeps their outputs in a second per-window store that tasks read through the returned
:class:`WindowOutputs`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from tilegraph.plan.plan import Plan

__all__ = ["Pass", "PassContext", "SourceView", "Box", "WindowOutputs"]

Box = tuple[int, int, int, int]


class WindowOutputs(Protocol):
    """Window outputs a pass task reads (small and picklable: it opens its store on first use).

    ``outputs(index, rows, cols)`` returns window ``index``'s output over ``rows`` x ``cols`` (slices in
    the window's output coordinates) as ``(C', r, c)`` float32 in the model's units (a model's
    confidence channel excluded); must not be modified. ``outputs.plan`` is the grid of the windows.
    """

    @property
    def plan(self) -> Plan: ...

    def __call__(self, index: int, rows: slice, cols: slice) -> np.ndarray: ...


class SourceView(Protocol):
    """The run's source at the output's scale, read by tasks (small and picklable: put it in a state).

    :meth:`read` returns ``(rows, cols, C)`` of an output box in the source's dtype (an up-scale
    repeats pixels; a down-scale averages blocks into float32 in the source's units).
    """

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def channels(self) -> int: ...

    @property
    def dtype(self) -> np.dtype: ...

    def read(self, box: Box) -> np.ndarray: ...


class PassContext(Protocol):
    """What the engine offers a pass when it prepares (client side)."""

    @property
    def plan(self) -> Plan: ...

    @property
    def out_dtype(self) -> str:
        """dtype of the array the pass writes (its values are rounded and clipped to it there)."""
        ...

    def thumbnail(self) -> tuple[np.ndarray, float]:
        """The model run once on a thumbnail of the whole image, ``(h, w, C')`` float32 in the model's
        units, and how many output pixels one thumbnail pixel spans. Cached: one inference per run."""
        ...

    def windows(self) -> WindowOutputs | None:
        """The run's own window outputs (colour corrections applied when the run reconciles), or ``None``
        when the run kept no per-window store."""
        ...

    def infer(self, plan: Plan, windows: Sequence[int] | None = None) -> WindowOutputs:
        """Run the model over ``windows`` (default: all) of ``plan``, a grid of the run's geometry with
        another origin (:func:`tilegraph.plan.shifted_plan`), as model tasks on the run's workers; waits
        for them and returns their outputs (float32, uncorrected). Windows not run must not be read."""
        ...

    def source(self) -> SourceView:
        """Read access to the run's input at the output's scale, for passes that compare the output
        with it (diff-merge); return it in the state to read it in :meth:`Pass.apply`."""
        ...


class Pass(ABC):
    """One distributed pass over a finished array (see the module notes)."""

    name: ClassVar[str] = ""

    def halo(self, plan: Plan) -> int:
        """Input pixels beyond each box that :meth:`apply` reads (default 0)."""
        return 0

    def out_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Output extent for an input of ``shape`` (default: the same)."""
        return shape

    def in_box(self, plan: Plan, box: Box, shape: tuple[int, int]) -> Box:
        """Input box :meth:`apply` needs for output ``box``: the box plus :meth:`halo`, clipped."""
        h = self.halo(plan)
        y0, y1, x0, x1 = box
        return max(0, y0 - h), min(shape[0], y1 + h), max(0, x0 - h), min(shape[1], x1 + h)

    def check(self, plan: Plan) -> None:
        """Refuse a plan this pass cannot work with, before any inference (default: accept any).

        Raises a :class:`~tilegraph.errors.TilegraphError` saying what to change.
        """
        return None

    def prepare(self, ctx: PassContext) -> Any:
        """Small state for every task, computed once on the client (default ``None``)."""
        return None

    @abstractmethod
    def apply(self, plan: Plan, box: Box, block: np.ndarray, in_box: Box, state: Any) -> np.ndarray:
        """Output ``box`` ``(rows, cols, C)`` float32 from ``block``, the input over ``in_box``.

        ``block`` is float32 in the model's units (integers as ``[0, 1]``); must not be modified.
        An array already in the output's dtype is written as it is (no rounding: diff-merge's
        unchanged pixels stay bit for bit).
        """

    def describe(self) -> dict:
        """Plain data for the output's metadata."""
        return {"name": self.name}
