"""The :class:`OutputKind` contract (``run(..., task=...)``): what a run produces and how it is assembled.

An output kind has two halves:

* on workers, inside each model task, :meth:`OutputKind.consume` receives every batch of model
  outputs for known windows and either stores them (an image's per-window store) or turns them
  into small results (a table of detections); what it returns travels back to the client;
* on the client, :meth:`OutputKind.assemble` is a generator of :class:`Step` values: each step is
  a list of tasks (one function over many argument tuples) that the engine submits, optionally
  each only after given windows are done, and whose results the engine sends back into the
  generator. The kind never sees an executor. An image yields one step (a blend task per output
  chunk, or a strip pass first); labels would yield a matching step then a relabelling step; a
  table of detections yields nothing and reduces the small results on the client.

A kind also says what the model returns for it (:attr:`OutputKind.model_output`: float maps,
integer labels or lists of boxes, so that the runner checks floats only where floats are due), what
the output array holds (:meth:`OutputKind.output_dtype`, :meth:`OutputKind.store_dtype`,
:meth:`OutputKind.output_layout`) and takes its own options from the run's
(:meth:`OutputKind.configure`).

Kinds register like blend modes (:func:`tilegraph.outputs.register_kind`, entry points in the
``tilegraph.outputs`` group).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from tilegraph.blend.abc import Blender
from tilegraph.plan.plan import Plan
from tilegraph.sink.abc import ChunkWriter
from tilegraph.sink.tile_store import TileStore
from tilegraph.sink.zarr_sink import output_layout

__all__ = ["Assembly", "KindResult", "OutputKind", "Step", "WindowContext"]


class WindowContext(Protocol):
    """What a kind's worker-side code may use (the engine's run context satisfies it)."""

    @property
    def plan(self) -> Plan: ...

    @property
    def tile_store(self) -> TileStore | None: ...

    @property
    def writer(self) -> ChunkWriter | None: ...

    @property
    def blender(self) -> Blender: ...

    @property
    def reconcile(self) -> Any: ...


@dataclass(frozen=True)
class Step:
    """Tasks the engine runs for a kind: ``fn(shared, *args[i])`` for each ``i``.

    Attributes
    ----------
    label : str
        Progress label and part of the task keys.
    fn : callable
        A module-level (picklable) function.
    args : sequence of tuple
        One argument tuple per task.
    shared : object
        Sent to every worker once and passed first to every task (the run context...).
    after : sequence of sequence of int, optional
        Per task, the windows that must be done before it starts (ordering only: their results are
        not passed); ``None`` when every model task has finished anyway.
    record : str, optional
        What the tasks make durable, by name (``"chunks"``): each task's id (:attr:`ids`) is
        recorded in the resume manifest once it returns, and a resumed run skips the recorded ones
        (their results are sent back as ``None``).
    ids : sequence of int, optional
        Per task, the id it records under :attr:`record`.
    """

    label: str
    fn: Callable[..., Any]
    args: Sequence[tuple]
    shared: Any = None
    after: Sequence[Sequence[int]] | None = None
    record: str | None = None
    ids: Sequence[int] | None = None


@dataclass(frozen=True)
class Assembly:
    """What :meth:`OutputKind.assemble` gets from the engine (client side)."""

    plan: Plan
    context: Any
    blender: Blender
    corrections: Any
    results: Sequence[Any]  # what :meth:`OutputKind.consume` returned, per model task (in task order)
    inference_done: bool  # every model task has finished (results are complete)
    #: The run's one cached thumbnail inference (``() -> (array, output pixels per thumbnail pixel)``).
    thumbnail: Callable[[], tuple[Any, float]] | None = None
    #: Windows that ran (``None``: all of them; a mask skips the others).
    windows: Sequence[int] | None = None


@dataclass
class KindResult:
    """What a kind's assembly returns: counts for the run's result, and its own data."""

    clipped: int = 0
    seconds: float = 0.0
    data: Any = None
    extra: dict = field(default_factory=dict)
    #: Recorded in the output's attributes (a report), beside the run's own.
    attributes: dict = field(default_factory=dict)
    #: A structured array the sink writes as a table (``.csv``, ``.parquet``): detections.
    table: Any = None


class OutputKind(ABC):
    """What a run produces (see the module notes)."""

    name: ClassVar[str] = ""
    #: The kind writes an output array through the sink (a table of detections does not).
    writes_array: ClassVar[bool] = True
    #: Model tasks keep each window's output in the per-window store.
    uses_tile_store: ClassVar[bool] = True
    #: Assembly needs the small results of every model task before its first step.
    needs_all_results: ClassVar[bool] = False
    #: What the model returns: ``"array"`` (floats ``(N, C', H', W')``, checked for NaN and Inf and
    #: cast to the store's dtype), ``"labels"`` (integers ``(N, 1, H', W')``, passed as they are) or
    #: ``"boxes"`` (per batch, a list of one ``(k, 6)`` array per window).
    model_output: ClassVar[str] = "array"
    #: Source channels the model does not take (alpha) are appended to its output.
    passthrough: ClassVar[bool] = True

    def configure(self, options: Any) -> OutputKind:
        """This kind with its options taken from the run's :class:`~tilegraph.options.RunOptions`
        (default: this one). The configured kind reaches the workers with the run's context."""
        return self

    def output_dtype(self, requested: str | None, source_dtype: str) -> str:
        """dtype of the output, decided before the plan (default: ``requested``, else the source's)."""
        return str(np.dtype(requested or source_dtype))

    def store_dtype(self, out_dtype: str) -> str | None:
        """dtype of the per-window store (default ``None``: what the blend mode needs)."""
        return None

    def output_layout(self, plan: Plan, source_layout: str) -> tuple[int, str, str]:
        """``(channels, dtype, axes)`` of the array the sink writes, once the plan is known.

        Default: the plan's output channels and dtype, in the source's axis order.
        """
        channels = int(plan.out_channels or 0)
        return channels, str(plan.out_dtype), output_layout(source_layout, channels)

    def specialise(
        self, plan: Plan, blender: Blender, *, corrected: bool, passes: bool, masked: bool = False
    ) -> OutputKind:
        """The kind that will run (default: this one), once the plan is known.

        A kind may hand over to a faster variant when the run allows it (``image`` with ``crop``
        whose cuts fall on the output chunks writes chunks straight from the model tasks).
        ``corrected``: a per-window correction applies; ``passes``: passes follow blending;
        ``masked``: a mask skips windows and fills the output outside it.
        """
        return self

    def task_groups(self, plan: Plan) -> list[list[int]] | None:
        """Windows of each model task, or ``None`` (default): the engine deals the windows to the model
        workers by place and cuts each worker's sweep into tasks of ``batch_size x batches_per_task``
        (:func:`~tilegraph.engine.infer.model_tasks`). A kind whose tasks must hold given windows
        together returns them; its groups are then dealt whole."""
        return None

    @abstractmethod
    def consume(
        self, ctx: WindowContext, indices: Sequence[int], raw: np.ndarray, y: np.ndarray, pool: Executor
    ) -> Any:
        """Worker side: take the model outputs ``y`` ``(N, C', H', W')`` of windows ``indices``.

        ``raw`` is the windows' input ``(N, H, W, C)`` in the source dtype; ``pool`` runs
        per-window work in parallel. Returns a small, picklable result (or ``None``).
        """

    @abstractmethod
    def assemble(self, job: Assembly) -> Generator[Step, list, KindResult]:
        """Client side: yield the :class:`Step` values to run; return the :class:`KindResult`."""
