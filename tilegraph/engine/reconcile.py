"""The reconcile stage (client side): gather the windows' colour statistics and solve one global correction.

Statistics are a few hundred bytes per window, returned by the model tasks; the solve runs here.
The solved correction is recorded in the resume manifest (pass ``"reconcile"``), so a resumed run
reuses it instead of recomputing every window for its statistics.
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

__all__ = ["Reconciliation", "solve_corrections", "reconcile"]

_PASS = "reconcile"


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
        plan, pairs, refs, mode=opts.mode, strength=float(opts.strength), channels=plan.out_channels
    )
    corrections: Any = base.as_field(plan) if opts.field else base
    summary = {
        "mode": opts.mode,
        "options": {
            "reference": opts.reference,
            "strength": opts.strength,
            "field": opts.field,
            "sigma": opts.sigma,
        },
        "max_abs_gain_minus_1": float(np.max(np.abs(base.gain - 1.0))),
        "max_abs_offset": float(np.max(np.abs(base.offset))),
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
