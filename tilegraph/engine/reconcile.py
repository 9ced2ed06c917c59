"""The reconcile stage (client side): gather the windows' colour statistics and solve one global correction.

Statistics are a few hundred bytes per window, returned by the model tasks; the solve runs here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilegraph.engine.context import PreparedRun
from tilegraph.engine.infer import InferenceReport

__all__ = ["Reconciliation", "solve_corrections"]


@dataclass(frozen=True)
class Reconciliation:
    """The correction applied before blending, and what the metadata records of it."""

    corrections: Any
    summary: dict
    seconds: float


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
    return Reconciliation(corrections, summary, time.perf_counter() - t0)


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
