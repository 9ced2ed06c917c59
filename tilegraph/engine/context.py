"""The typed values the stages pass each other: the run context (sent to tasks) and the prepared run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tilegraph.blend.abc import Blender
from tilegraph.infer.spec import ModelSpec
from tilegraph.options import RunOptions
from tilegraph.outputs.abc import OutputKind
from tilegraph.outputs.image import ReconcileContext
from tilegraph.outputs.masking import MaskContext
from tilegraph.outputs.probabilities import CoarseContext
from tilegraph.passes.abc import Pass
from tilegraph.plan.plan import Plan
from tilegraph.sink.abc import ChunkWriter, OutputLayout, Sink
from tilegraph.sink.tile_store import TileStore
from tilegraph.source.abc import Source

__all__ = ["RunContext", "PreparedRun", "ProbeResult"]


@dataclass(frozen=True)
class ProbeResult:
    """What the probe learnt about the model on a worker (small).

    Attributes
    ----------
    declared : dict
        What the model declares (:func:`tilegraph.infer.declare.declarations`).
    model_channels : int
        Channels the model is given.
    passthrough : int
        Source channels passed around the model (alpha).
    out_channels : int
        Channels the model returned, less its confidence channel.
    in_size, out_size : int
        Probe input extent and the output extent it gave (rows == cols).
    device : str
    confidence : bool
        The model returns a confidence channel last (not counted in ``out_channels``).
    coarse, coarse_keyword, coarse_channels
        Coarse-to-fine: the mode, and the keyword or the number of extra input channels.
    """

    declared: dict
    model_channels: int
    passthrough: int
    out_channels: int
    in_size: int
    out_size: tuple[int, int]
    device: str
    confidence: bool = False
    coarse: str | None = None  # coarse-to-fine mode ("keyword" or "channel")
    coarse_keyword: str | None = None  # the keyword the model takes the prior as
    coarse_channels: int = 0  # extra input channels of the prior


@dataclass(frozen=True)
class RunContext:
    """Everything a task needs, small and picklable (sent to each worker once).

    Satisfies :class:`tilegraph.outputs.abc.WindowContext`.
    """

    plan: Plan
    source: Source
    spec: ModelSpec
    model_channels: int
    blender: Blender
    kind: OutputKind
    tile_store: TileStore | None
    writer: ChunkWriter | None
    reconcile: ReconcileContext | None = None
    split_halo: int = 0  # source pixels of context when a window alone is split after running out of memory
    confidence: bool = False  # the model returns a confidence channel (kept last in the store, never written)
    coarse: CoarseContext | None = None  # coarse-to-fine: the thumbnail output every window is given
    mask: MaskContext | None = None  # what matters: windows skipped, the output filled outside
    norm_stats: Mapping[str, Any] | None = None  # global normalisation statistics per layer (norm_sync)
    window_timeout: float | None = None  # seconds a forward pass may hold the model (the watchdog)
    inflight: str | None = (
        None  # folder of the markers of forward passes under way (which windows kill workers)
    )
    token: str = ""  # the run's unique id (keys what a worker reads ahead for its next task)


@dataclass(frozen=True)
class PreparedRun:
    """What :func:`tilegraph.engine.prepare.prepare` returns: every later stage's input.

    Attributes
    ----------
    token : str
        Unique id of this run (task keys, scratch names).
    destination : str
    options : RunOptions
    source : Source
        The source as given (the context holds the staged one, if staged).
    spec : ModelSpec
        With the model's declarations filled in.
    plan : Plan
    context : RunContext
    sink : Sink
    final_writer : ChunkWriter or None
        Where the finished output goes (the context's writer when no pass follows blending).
    out_layout : OutputLayout or None
    passes : tuple of Pass
    scratch : str
        Scratch folder of this run (removed at the end).
    payload : object
        The model as shared with the workers (``None`` for import paths).
    provenance : dict
        Attributes recorded in the output (version, model, options, plan...).
    probe : ProbeResult
    autotile : object
        The ``tile="auto"`` choice, if any.
    thumbnails : object
        The run's one cached thumbnail inference (:class:`tilegraph.engine.thumbnail.Thumbnails`).
    timings : Mapping
        Seconds spent preparing (``probe_s``, ``stage_s``, ``prepare_s``).
    norm : object
        What the run knows of the model's normalisation layers and how it syncs them
        (:class:`tilegraph.engine.normsync.NormPlan`), ``None`` before the norm probe.
    guard : DestinationGuard or None
        The run's claim, scratch, staging and manifest (:mod:`tilegraph.engine.destination`).
    work : Work or None
        What a resumed run still computes (:mod:`tilegraph.engine.resume`); ``None``: everything.
    """

    token: str
    destination: str
    options: RunOptions
    source: Source
    spec: ModelSpec
    plan: Plan
    context: RunContext
    sink: Sink
    final_writer: ChunkWriter | None
    out_layout: OutputLayout | None
    passes: tuple[Pass, ...]
    scratch: str
    payload: Any
    provenance: dict
    probe: ProbeResult
    autotile: Any
    thumbnails: Any
    timings: Mapping[str, float] = field(default_factory=dict)
    mask_report: dict | None = None  # windows run and skipped, the grid chosen for a mask
    norm: Any = None
    guard: Any = None
    work: Any = None
