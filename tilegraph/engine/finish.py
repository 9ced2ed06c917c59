"""The finish stage: mark the output complete through its sink, export if asked, measure, publish, clean up.

On a file system the marked output is renamed from its staging name to the destination only now
(:meth:`~tilegraph.engine.destination.DestinationGuard.publish`), so no reader ever sees it partial;
then scratch space and the manifest go and the claim is released. :func:`abort` keeps everything a
``resume=True`` run can use and releases the claim.
"""

from __future__ import annotations

import time

from tilegraph.engine.context import PreparedRun
from tilegraph.engine.executor import Executor
from tilegraph.engine.infer import InferenceReport
from tilegraph.engine.progress import Progress
from tilegraph.engine.reconcile import Reconciliation
from tilegraph.engine.result import RunResult
from tilegraph.outputs.abc import KindResult

__all__ = ["finish", "abort"]


def finish(
    run: PreparedRun,
    executor: Executor,
    *,
    inference: InferenceReport,
    assembled: KindResult,
    reconciliation: Reconciliation | None,
    passes: tuple[int, float],
    started: float,
    progress: Progress | None,
) -> RunResult:
    """Write the completion marker (through the sink), run the export and QA, remove scratch space."""
    plan = run.plan
    pass_clipped, pass_s = passes
    clipped = (pass_clipped if run.passes else assembled.clipped) + inference.clipped
    timings = dict(run.timings)
    timings["run_s"] = time.perf_counter() - started
    timings["model_s_sum"] = inference.model_s
    timings["model_wait_s_sum"] = inference.model_wait_s
    timings["read_s_sum"] = inference.read_s
    timings["write_s_sum"] = inference.write_s
    timings["blend_s_sum"] = assembled.seconds
    if run.passes:
        timings["passes_s_sum"] = pass_s
    if reconciliation is not None:
        timings["reconcile_s"] = reconciliation.seconds
    norm = run.norm.to_dict() if run.norm is not None else None
    if norm is not None and run.norm.active:
        timings["norm_sync_s"] = float(norm.get("stats_seconds", norm.get("seconds", 0.0)))
        if "stats_model_s_sum" in norm and inference.model_s > 0:  # model time of all passes / output pass
            norm["cost_measured"] = round(
                (norm["stats_model_s_sum"] + inference.model_s) / inference.model_s, 3
            )
    timings["total_s"] = timings["prepare_s"] + timings["run_s"]
    megapixels = plan.shape[0] * plan.shape[1] / 1e6
    timings["megapixels_per_s"] = megapixels / max(timings["total_s"], 1e-9)
    timings.update(stage_rates(plan, timings))
    reconcile = reconciliation.summary if reconciliation is not None else None
    final = {
        "oom_splits": inference.oom_splits,
        "clipped": clipped,
        "reconcile": reconcile,
        "normalisation": norm,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "devices": list(inference.devices),
        **assembled.attributes,  # the output kind's report (labels, detections)
    }
    output, path, report = assembled.data, run.destination, None
    if assembled.table is not None:  # rows (detections): a .csv or .parquet file, or none
        written = run.sink.write_table(
            assembled.table, attrs={**run.provenance, **final}, overwrite=run.options.output.overwrite
        )
        path = written or ""
    if run.final_writer is not None:
        if run.guard is not None:
            run.guard.claim.check()  # only the claim's holder marks the output complete
        step = run.sink.finish(run.final_writer, final)
        if run.options.quality.enabled:
            from tilegraph.engine.quality import quality_report

            report = quality_report(run, executor, run.final_writer.path, notes=_notes(norm, reconcile))
            timings["qa_s"] = report.pop("seconds")
        path = run.final_writer.path
        if step is not None:
            h = executor.submit(step.fn, *step.args, key=f"tg-{step.label}-{run.token}")
            path = executor.wait([h], progress=progress, label=step.label)[0]
        if run.guard is not None and run.guard.staging is not None and path == run.guard.staging:
            path = run.guard.publish()
        output = run.sink.open_result(path)
    if run.guard is not None:  # scratch (tile store, staged source, export copy), manifest, claim
        run.guard.close()
    return RunResult(
        output=output,
        path=path,
        plan=plan,
        timings=timings,
        clipped=clipped,
        model={"name": run.spec.name, "devices": list(inference.devices)},
        report=report,
        extra={
            "autotile": run.autotile.to_dict() if run.autotile is not None else None,
            "oom_splits": inference.oom_splits,
            "model_tasks": inference.tasks,
            "norm_sync": norm,
            "reconcile": reconcile,
            **({"mask": run.mask_report} if run.mask_report is not None else {}),
            **assembled.extra,
        },
        table=assembled.table,
    )


def stage_rates(plan, timings: dict) -> dict:
    """Megapixels per second of task time (one core) for each stage: where the time goes.

    Reading, the model and handing windows over work on the windows' pixels (overlap and padding
    included); blending on the output's.
    """
    window_mp = plan.n_windows * plan.window_shape[0] * plan.window_shape[1] / 1e6
    out_mp = plan.out_shape[0] * plan.out_shape[1] / 1e6
    out = {}
    for stage, key, mp in (
        ("read", "read_s_sum", window_mp),
        ("model", "model_s_sum", window_mp),
        ("write", "write_s_sum", window_mp),
        ("blend", "blend_s_sum", out_mp),
    ):
        seconds = timings.get(key, 0.0)
        if seconds > 0:  # a stage that did not run (no blend for direct crop) has no rate
            out[f"{stage}_mp_per_core_s"] = mp / seconds
    return out


def _notes(norm: dict | None, reconcile: dict | None) -> list[str]:
    """Plain-language lines for the QA report: normalisation layers, the reconciliation reference and change."""
    notes = list(norm.get("notes", [])) if norm is not None else []
    if reconcile is not None:
        choice = reconcile.get("reference_choice")
        if choice is not None:
            notes.append(f"reconciliation reference 'auto' chose {choice['reference']!r}: {choice['reason']}")
        else:
            notes.append(f"reconciliation reference: {reconcile.get('reference')!r}")
        solve = reconcile.get("solve", {})
        if reconcile.get("identity"):
            notes.append(
                f"reconciliation changed nothing ({solve.get('note') or 'the solve returned identity'})"
            )
        else:
            synced = " on norm-synced windows" if norm is not None and norm.get("active") else ""
            notes.append(
                f"reconciliation{synced} changed values by at most {reconcile['max_change_dn']:.3f} DN "
                f"(|gain - 1| <= {reconcile['max_abs_gain_minus_1']:.2e}, |offset| <= "
                f"{255 * reconcile['max_abs_offset']:.3f} DN)"
            )
    return notes


def abort(run: PreparedRun | None, executor: Executor, handles: list) -> None:
    """Cancel what still runs; keep what ``resume=True`` can use (scratch, staging, manifest); release the claim.

    The staged output is never renamed into place, so the destination holds nothing partial.
    """
    executor.cancel(handles)
    if run is None or run.guard is None:
        return
    try:
        run.guard.abort()
    except Exception:  # best effort: never hide the error that caused the abort
        pass
