"""The reconcile stage (client side): gather the windows' colour statistics and solve one global correction.

Statistics are a few hundred bytes per window, returned by the model tasks; the solve runs here, with
the settings measured best against whole-image inference (``anchor_fit="regression"``, ``anchor=3``,
:data:`tilegraph.reconcile.RECOMMENDED`), and returns exactly no correction when the windows agree in
their overlaps. :func:`reconcile_context` resolves ``reference="auto"`` before inference by measurement
on the run's one thumbnail inference (:func:`tilegraph.quality.reference.choose_reference`). The
solved correction is recorded in the resume manifest (pass ``"reconcile"``), so a resumed run reuses
it instead of recomputing every window for its statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilegraph.engine.context import PreparedRun
from tilegraph.engine.executor import Executor
from tilegraph.engine.infer import Inference, InferenceReport, gather_inference
from tilegraph.engine.progress import Progress
from tilegraph.options import ReconcileOptions
from tilegraph.outputs.image import ReconcileContext

__all__ = ["Reconciliation", "solve_corrections", "reconcile", "reconcile_context"]

_PASS = "reconcile"


def reconcile_context(opts: ReconcileOptions, thumbnails) -> ReconcileContext | None:
    """What the model tasks need to gather colour statistics; ``reference="auto"`` chosen by measurement.

    ``"auto"`` runs the run's one thumbnail inference and compares its low-passed output with the
    low-passed thumbnail input: above 1 ΔE2000 on average the model changes colours and the thumbnail
    output anchors them, otherwise the input does. The choice and the measured difference travel in the
    context (recorded in the metadata and shown in the QA report).
    """
    from dataclasses import replace

    if not opts.mode:
        return None
    reference: str | None = opts.reference
    choice = None
    if reference == "auto":
        from tilegraph.quality.reference import choose_reference

        result = thumbnails.result()
        picked = choose_reference(result.output, result.input)
        reference, choice = picked.reference, picked.to_dict()
    ctx = ReconcileContext(reference=reference, sigma=float(opts.sigma), choice=choice)
    if reference == "thumbnail":
        thumb, factor = thumbnails.get()
        ctx = replace(ctx, thumbnail=thumb, factor=factor)
    return ctx


@dataclass(frozen=True)
class Reconciliation:
    """The correction applied before blending, and what the metadata records of it."""

    corrections: Any
    summary: dict
    seconds: float
    base: Any = None  # the per-window tables (``Corrections``) the corrections derive from


def reconcile(
    run: PreparedRun, executor: Executor, inference: Inference, progress: Progress | None
) -> tuple[InferenceReport | None, Reconciliation | None]:
    """Gather every model task when the run needs their results, and solve (or reuse) the correction.

    Returns the gathered report (``None`` if not gathered) and the reconciliation (``None`` without
    ``reconcile=``).
    """
    mode, kind = run.options.reconcile.mode, run.context.kind
    if not (mode or kind.needs_all_results):
        return None, None
    if mode and not kind.needs_all_results:
        saved = _load(run)
        if saved is not None:
            return None, saved
    report = gather_inference(inference, executor, progress)
    if not mode:
        return report, None
    rec = solve_corrections(run, report)
    if run.guard is not None:
        base = rec.base
        run.guard.pass_done(
            _PASS, {"gain": base.gain.tolist(), "offset": base.offset.tolist(), "summary": rec.summary}
        )
    return report, rec


def _load(run: PreparedRun) -> Reconciliation | None:
    """The correction an interrupted run solved and recorded, or ``None``."""
    from tilegraph.reconcile.apply import Corrections

    done, saved = run.guard.pass_result(_PASS) if run.guard is not None else (False, None)
    if not done or not isinstance(saved, dict):
        return None
    base = Corrections(np.asarray(saved["gain"], np.float64), np.asarray(saved["offset"], np.float64))
    corrections: Any = base.as_field(run.plan) if run.options.reconcile.field else base
    return Reconciliation(corrections, dict(saved.get("summary") or {}), 0.0, base)


def solve_corrections(run: PreparedRun, report: InferenceReport) -> Reconciliation:
    """Solve the per-window, per-channel correction from every window's statistics."""
    from tilegraph.reconcile.solve import solve_global
    from tilegraph.reconcile.stats import pairs_from_windows

    t0 = time.perf_counter()
    opts = run.options.reconcile
    plan = run.plan
    windows = [w for task in report.results for batch in task for w in batch]
    pairs = pairs_from_windows(plan, windows)
    refs = [w.ref for w in windows if w.ref is not None]
    assert opts.mode is not None
    base = solve_global(
        plan,
        pairs,
        refs,
        mode=opts.mode,
        strength=float(opts.strength),
        channels=plan.out_channels,
        anchor_fit=opts.anchor_fit,
        anchor=float(opts.anchor),
    )
    corrections: Any = base.as_field(plan) if opts.field else base
    rec = run.context.reconcile
    gain_dev = float(np.max(np.abs(base.gain - 1.0)))
    offset = float(np.max(np.abs(base.offset)))
    summary = {
        "mode": opts.mode,
        "options": {
            "reference": opts.reference,
            "strength": opts.strength,
            "field": opts.field,
            "sigma": opts.sigma,
            "anchor_fit": opts.anchor_fit,
            "anchor": opts.anchor,
        },
        "reference": rec.reference if rec is not None else opts.reference,
        "reference_choice": rec.choice if rec is not None else None,
        "max_abs_gain_minus_1": gain_dev,
        "max_abs_offset": offset,
        # the largest change of a full-scale value, in DN: |gain - 1| + |offset| (values in [0, 1])
        "max_change_dn": 255.0 * (gain_dev + offset),
        "identity": bool(gain_dev == 0.0 and offset == 0.0),
        "solve": _plain(base.info or {}),
    }
    return Reconciliation(corrections, summary, time.perf_counter() - t0, base)


def _plain(d: dict) -> dict:
    """JSON-able copy of a small diagnostics dict."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist() if v.size <= 64 else f"array{v.shape}"
        elif isinstance(v, dict):
            v = _plain(v)
        out[str(k)] = v
    return out
