"""Norm-statistics sync in the engine: find per-sample normalisation layers, then sync them (``norm_sync``).

GroupNorm and InstanceNorm compute statistics over whatever they see, so every window normalises itself
and tiles differ in colour in ways no overlap can fix. :func:`plan_norm` (prepare stage) probes the model
on a worker (:func:`tilegraph.infer.normsync.find_norm_layers`), checks the plan for ``norm_sync="exact"``
and says what will seam; :func:`synchronise` (before the output inference) obtains every layer's statistics
over the whole image and puts them in the run's context, where each model task runs the model as a shadow
that uses them (:func:`tilegraph.infer.normsync.synced`).

* ``"exact"``: pass ``k`` runs model tasks over every window with the layers before ``k`` already synced;
  each task returns layer ``k``'s sufficient statistics over its windows' kept regions (a few floats per
  group, :class:`~tilegraph.infer.normsync.PartialStats`), never an activation and nothing in the tile
  store; the client adds them up. The output pass is the normal inference.
* ``"thumbnail"``: the statistics recorded by the run's one thumbnail inference
  (:class:`~tilegraph.engine.thumbnail.Thumbnails`), run in windows with the exact algorithm when the
  thumbnail is larger than the window.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tilegraph.engine.context import PreparedRun, RunContext
from tilegraph.engine.executor import Executor
from tilegraph.engine.infer import touching_mask
from tilegraph.engine.infer_task import _read_run, _runs_of
from tilegraph.engine.probe import remembered
from tilegraph.engine.progress import Progress
from tilegraph.errors import InputError, ModelError, OutOfMemoryError, TilegraphWarning
from tilegraph.infer.normsync import (
    NormReport,
    PartialStats,
    check_alignment,
    find_norm_layers,
    keep_boxes,
    measure,
    pass_costs,
    reduce_stats,
)
from tilegraph.infer.oom import is_oom
from tilegraph.infer.runner import get_runner
from tilegraph.infer.spec import ModelSpec
from tilegraph.plan.plan import Plan

__all__ = ["NormPlan", "MeasureReport", "plan_norm", "norm_probe_task", "measure_windows", "synchronise"]


@dataclass(frozen=True)
class NormPlan:
    """What a run knows about the model's normalisation layers and how it syncs them.

    Attributes
    ----------
    mode : {"exact", "thumbnail"} or None
        The ``norm_sync`` option.
    report : NormReport
        The layers found by the probe (opaque for numpy callables).
    pass_costs : tuple of float
        ``norm_sync="exact"``: each pass's cost relative to one plain forward, timed on one window by the
        probe (the last is the output pass); empty otherwise.
    error : str
        Why the probe could not inspect the model (it never fails a run that does not sync).
    done : dict
        Filled by :func:`synchronise`: measured seconds per pass, the thumbnail's statistics check...
    """

    mode: str | None
    report: NormReport
    pass_costs: tuple[float, ...] = ()
    error: str = ""
    done: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether the run syncs statistics (a mode is set and there are layers to sync)."""
        return self.mode is not None and bool(self.report.sync_layers)

    @property
    def passes(self) -> int:
        """Passes over the windows this run makes: one per synced layer plus the output pass with
        ``"exact"``, else one."""
        return self.report.passes if self.mode == "exact" and self.active else 1

    @property
    def cost(self) -> float | None:
        """Inference cost in plain whole passes over the windows (``"exact"``), measured by the probe."""
        if self.mode == "exact" and self.active:
            return float(sum(self.pass_costs)) if self.pass_costs else None
        return 1.0

    def check(self, plan: Plan) -> None:
        """``norm_sync="exact"``: raise a :class:`~tilegraph.errors.PlanError` naming the overlap to use when
        the kept regions do not fall on whole pixels at every normalisation layer's resolution."""
        if self.mode == "exact" and self.report.sync_layers:
            check_alignment(plan, self.report)

    def notes(self) -> list[str]:
        """Plain-language lines for ``run()``'s warnings, the metadata and the QA report."""
        r = self.report
        if r.opaque:
            return [r.describe()]
        if self.error:
            return [f"normalisation layers could not be inspected: {self.error}"]
        lines = []
        if self.mode is not None and not r.sync_layers:
            lines.append(
                f"norm_sync={self.mode!r} was asked, but the model has no GroupNorm/InstanceNorm layer to sync"
            )
        if r.layers:
            names = ", ".join(f"{layer.name} ({layer.kind})" for layer in r.layers[:8])
            more = f" and {len(r.layers) - 8} more" if len(r.layers) > 8 else ""
            if self.active and self.mode == "exact":
                cost = f", {self.cost:.2f} x the inference of a run without sync" if self.cost else ""
                lines.append(
                    f"norm_sync='exact': {len(r.sync_layers)} normalisation layer(s) ({names}{more}) use "
                    f"statistics over the whole image; {self.passes} passes over the windows{cost}"
                )
            elif self.active:
                lines.append(
                    f"norm_sync='thumbnail': {len(r.sync_layers)} normalisation layer(s) ({names}{more}) use "
                    "statistics recorded on the run's thumbnail (approximate; norm_sync='exact' is exact)"
                )
            else:
                lines.append(
                    f"per-sample normalisation layer(s) {names}{more}: each window computes its own "
                    "statistics, so tiles will differ in colour; use norm_sync='exact' "
                    f"({r.passes} passes over the windows, exact where the receptive field fits half the "
                    "overlap) or norm_sync='thumbnail' (statistics from the thumbnail, approximate)"
                )
            bad = [layer.name for layer in r.layers if not layer.syncable]
            if bad:
                lines.append(
                    f"not syncable: {', '.join(bad)} (LayerNorm over space or activations that are not "
                    "(N, C, H, W)): tiling cannot reproduce whole-image inference there"
                )
        if r.batchnorm_training:
            lines.append(
                f"BatchNorm in training mode: {', '.join(r.batchnorm_training)}: in training mode their statistics "
                "would be per batch of windows; tilegraph runs the model in eval mode (their running statistics), "
                "call model.eval() to make that explicit"
            )
        variation = self.done.get("thumbnail", {}).get("variation")
        if variation and variation.get("recommend_exact"):
            lines.append(
                f"the thumbnail's statistics vary strongly with its size (up to {variation['worst']:.2f} "
                "standard deviations between two sizes): use norm_sync='exact'"
            )
        return lines

    def to_dict(self) -> dict:
        """Plain data for the metadata and ``result.extra["norm_sync"]``."""
        return {
            "mode": self.mode,
            "active": self.active,
            "passes": self.passes,
            "exact_passes": self.report.passes if self.report.sync_layers else None,
            "cost_forwards": self.cost,
            "pass_costs": [round(c, 4) for c in self.pass_costs],
            "layers": self.report.to_dict(),
            "notes": self.notes(),
            **({"error": self.error} if self.error else {}),
            **self.done,
        }


def norm_probe_task(
    spec: ModelSpec, payload, channels: int, window: tuple[int, int], costs: bool
) -> tuple[NormReport, list[float], str]:
    """Task: find the model's normalisation layers with a window-sized probe (and time the passes)."""
    runner = get_runner(spec, payload)
    if not runner.is_torch:
        return NormReport(opaque=True), [], ""
    import torch

    g = np.random.default_rng(0)
    x = (0.5 + 0.1 * g.standard_normal((1, channels, *window))).astype(np.float32)
    example = torch.from_numpy(x).to(runner.device)
    # BatchNorm layers given in training mode, read on the model as received (the runner runs it in eval mode)
    training_bn = tuple(
        name
        for name, m in runner.model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
    )
    try:
        report = replace(find_norm_layers(runner.module, example=example), batchnorm_training=training_bn)
    except ModelError as exc:
        return NormReport(batchnorm_training=training_bn), [], exc.message
    timed = pass_costs(runner.module, report, example, repeats=2) if costs and report.sync_layers else []
    return report, timed, ""


def plan_norm(
    executor: Executor,
    spec: ModelSpec,
    payload,
    plan: Plan,
    *,
    channels: int,
    mode: str | None,
    token: str,
    path: str | None,
) -> NormPlan:
    """Probe the model's normalisation layers on a worker (once per model and window shape on a client,
    like :func:`~tilegraph.engine.probe.probe`); check the plan for ``norm_sync``; warn.

    Raises
    ------
    tilegraph.errors.InputError
        ``norm_sync`` asked of a model that cannot be inspected (a numpy callable) or whose layers cannot
        be synced.
    tilegraph.errors.PlanError
        ``norm_sync="exact"`` with kept regions that do not fall on whole pixels at an inner resolution
        (the hint names the overlap to use).
    """
    exact = mode == "exact"
    report, costs, error = remembered(  # a later run with the same model and windows asks again for nothing
        executor,
        ("norm", spec.token, repr(spec), int(channels), tuple(plan.window_shape), exact),
        lambda: executor.submit(
            norm_probe_task,
            spec,
            payload,
            channels,
            tuple(plan.window_shape),
            exact,
            key=f"tg-normprobe-{token}",
            resources=executor.model_resources,
        ),
    )
    norm = NormPlan(mode, report, tuple(costs), error)
    if mode is not None:
        if report.opaque:
            raise InputError(
                f"norm_sync={mode!r} needs a torch module; the model is a numpy callable whose layers cannot "
                "be inspected",
                path=path,
                hint="pass the torch module itself, or run without norm_sync",
            )
        if error:
            raise InputError(f"norm_sync={mode!r}: {error}", path=path, hint="give each use its own module")
        norm.check(plan)
        if spec.compile and report.sync_layers:
            warnings.warn(
                "tilegraph: norm_sync runs the model without torch.compile (the synced model is a shadow of the "
                "uncompiled module)",
                TilegraphWarning,
                stacklevel=2,
            )
    if not report.opaque:  # a numpy callable is said to be opaque in the report, not in a warning
        for line in norm.notes():
            if not line.startswith("norm_sync="):  # what the run does is no warning
                warnings.warn(f"tilegraph: {line}", TilegraphWarning, stacklevel=2)
    return norm


@dataclass(frozen=True)
class MeasureReport:
    """What one statistics task returns: the partial record and timings (small)."""

    stats: PartialStats | None
    windows: int
    read_s: float
    model_s: float


def _measure_batch(runner, ctx: RunContext, raw: np.ndarray, batch: list[int], layer: str, known) -> Any:
    """Layer statistics of one batch; halves it on out-of-memory errors (records of halves add up)."""
    boxes = keep_boxes(ctx.plan, batch)

    def fn(x):
        return measure(runner.module, x, layer=layer, known_stats=known, keep_boxes=boxes)

    try:
        return runner.apply_raw(raw, channels=ctx.model_channels, fn=fn)
    except ModelError:
        raise
    except Exception as exc:
        w = ctx.plan.window(batch[0])
        if not is_oom(exc):
            raise ModelError(f"model raised {exc!r} measuring {layer}", window=(w.row, w.col)) from exc
        if len(batch) == 1:
            raise OutOfMemoryError(
                f"one window does not fit the device measuring {layer}",
                window=(w.row, w.col),
                hint="use a smaller tile",
            ) from exc
        k = len(batch) // 2
        return _measure_batch(runner, ctx, raw[:k], batch[:k], layer, known) + _measure_batch(
            runner, ctx, raw[k:], batch[k:], layer, known
        )


def measure_windows(ctx: RunContext, indices: list[int], payload, layer: str, known: dict) -> MeasureReport:
    """Task: layer ``layer``'s statistics over the kept regions of a group of windows (no output is written).

    Layers before ``layer`` use the global statistics ``known``; the forward stops at ``layer``.
    """
    runner = get_runner(ctx.spec, payload)
    plan = ctx.plan
    b = plan.batch_size
    total: PartialStats | None = None
    read_s = model_s = 0.0
    for i in range(0, len(indices), b):
        batch = list(indices[i : i + b])
        t0 = time.perf_counter()
        raw = np.stack([w for run in _runs_of(plan, batch) for w in _read_run(ctx, run)])
        t1 = time.perf_counter()
        rec = _measure_batch(runner, ctx, raw, batch, layer, known)
        model_s += time.perf_counter() - t1
        read_s += t1 - t0
        total = rec if total is None else total + rec
    return MeasureReport(total, len(indices), read_s, model_s)


def synchronise(run: PreparedRun, executor: Executor, progress: Progress | None) -> PreparedRun:
    """The run with global normalisation statistics in its context (unchanged when nothing is synced)."""
    norm: NormPlan | None = run.norm
    if norm is None or not norm.active:
        return run
    t0 = time.perf_counter()
    if norm.mode == "thumbnail":
        result = run.thumbnails.result()
        stats = dict(result.norm_stats or {})
        done = {"thumbnail": dict(result.info), "seconds": time.perf_counter() - t0}
        variation = result.info.get("variation")
        if variation and variation.get("recommend_exact"):
            warnings.warn(
                f"tilegraph: norm_sync='thumbnail': the statistics vary strongly with the thumbnail's size (up "
                f"to {variation['worst']:.2f} standard deviations): use norm_sync='exact'",
                TilegraphWarning,
                stacklevel=2,
            )
    else:
        stats, done = _exact(run, executor, progress)
    missing = [name for name in norm.report.names if name not in stats]
    if missing:
        raise ModelError(
            f"norm_sync: no statistics for {', '.join(missing)}", hint="check the model's forward"
        )
    norm = replace(norm, done=done)
    return replace(run, context=replace(run.context, norm_stats=stats), norm=norm)


def _exact(run: PreparedRun, executor: Executor, progress: Progress | None) -> tuple[dict, dict]:
    """The statistics passes of ``norm_sync="exact"``: one round of model tasks per layer."""
    names = run.norm.report.names
    # the windows the output inference runs (by the kind's groups, else the plan's raster grouping); with a
    # mask only those touching it run: their pixels are the statistics'
    own = run.context.kind.task_groups(run.plan)
    groups = touching_mask(own if own is not None else run.plan.tasks(), run)
    ctx_h = executor.share(run.context)
    stats: dict = {}
    seconds, model_s = [], 0.0
    for k, name in enumerate(names):
        t0 = time.perf_counter()
        handles = executor.map(
            measure_windows,
            [ctx_h] * len(groups),
            groups,
            [run.payload] * len(groups),
            [name] * len(groups),
            [dict(stats)] * len(groups),
            keys=[f"tg-norm{k}-{run.token}-{g}" for g in range(len(groups))],
            resources=executor.infer_resources,
        )
        executor.check_restrictions(handles)
        reports = executor.wait(
            handles,
            progress=progress,
            label=f"norm pass {k + 1}/{len(names)}",
            units=[len(g) for g in groups],
        )
        records = [r.stats for r in reports if r.stats is not None]
        stats[name] = reduce_stats(records)[name].finalize()
        seconds.append(time.perf_counter() - t0)
        model_s += sum(r.model_s for r in reports)
    done = {"pass_seconds": [round(s, 4) for s in seconds], "stats_seconds": float(sum(seconds))}
    done["stats_model_s_sum"] = float(model_s)
    return stats, done
