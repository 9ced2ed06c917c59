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


@dataclass
class KindResult:
    """What a kind's assembly returns: counts for the run's result, and its own data."""

    clipped: int = 0
    seconds: float = 0.0
    data: Any = None
    extra: dict = field(default_factory=dict)


class OutputKind(ABC):
    """What a run produces (see the module notes)."""

    name: ClassVar[str] = ""
    #: The kind writes an output array through the sink (a table of detections does not).
    writes_array: ClassVar[bool] = True
    #: Model tasks keep each window's output in the per-window store.
    uses_tile_store: ClassVar[bool] = True
    #: Assembly needs the small results of every model task before its first step.
    needs_all_results: ClassVar[bool] = False

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
