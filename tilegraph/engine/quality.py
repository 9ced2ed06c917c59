"""The quality stage: seam metrics of the finished output, PSNR against whole-image inference, the report.

Whole-image inference (the truth tiled output is judged against) runs as one model task when the
image is at most ``psnr_max_megapixels`` (default 64 MP); when it cannot run (out of memory), the
report says why instead of a figure.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from tilegraph._cast import to_output_dtype
from tilegraph.engine.context import PreparedRun, RunContext
from tilegraph.engine.executor import Executor
from tilegraph.errors import TilegraphError
from tilegraph.infer.oom import is_oom
from tilegraph.infer.runner import get_runner
from tilegraph.plan.resample import to_output_scale
from tilegraph.source import read_padded

__all__ = ["quality_report", "whole_image_task"]


def whole_image_task(ctx: RunContext, payload, path: str) -> str | None:
    """Task: the model run on the whole image in one piece, written to ``path`` in the output dtype.

    The image is padded at its far edges as the tiled run pads them, so the two differ only where
    tiling itself makes a difference.

    Returns ``path``, or ``None`` when the image does not fit in the device's memory in one piece.
    """
    import zarr

    plan = ctx.plan
    runner = get_runner(ctx.spec, payload)
    ph, pw = plan.padded_shape  # padded exactly as the windows are
    top, left = -plan.y.origin, -plan.x.origin
    raw = read_padded(ctx.source, -top, ph - top, -left, pw - left, plan.pad_mode)[None]
    try:
        y, _ = runner.run_raw(raw, channels=ctx.model_channels, out_dtype=np.float32)
    except Exception as exc:
        if is_oom(exc):
            return None
        raise
    if ctx.confidence:  # the confidence channel is never part of the output
        y = y[:, :-1]
    if raw.shape[3] > ctx.model_channels:
        y = np.concatenate([y, to_output_scale(plan, raw, ctx.model_channels)], axis=1)
    oh, ow = plan.out_shape
    oy, ox = int(top * plan.scale_fraction), int(left * plan.scale_fraction)
    out, _ = to_output_dtype(
        np.moveaxis(y[0, :, oy : oy + oh, ox : ox + ow], 0, -1), plan.out_dtype or "float32"
    )
    zarr.save_array(path, out)  # type: ignore[arg-type]
    return path


def quality_report(
    run: PreparedRun, executor: Executor, output_path: str, *, notes: list[str] | None = None
) -> dict:
    """Seam metrics and the QA report (JSON + HTML) of the finished output at ``output_path``.

    ``notes`` (what the run did about normalisation layers and colour reconciliation) go into the
    report as ``metrics["notes"]``; ``metrics["normalisation"]`` and ``metrics["reconcile"]`` hold the
    same as the metadata.
    """
    import zarr

    from tilegraph.quality.metrics import seam_metrics
    from tilegraph.quality.report import summary_html, write_report
    from tilegraph.source.view import SourceView

    t0 = time.perf_counter()
    plan = run.plan
    out = zarr.open_array(output_path, mode="r")
    written = (
        run.final_writer.layout if run.final_writer is not None else run.out_layout
    )  # a sink may reorder axes
    layout = written.layout if written is not None else "YXC"
    image: Any = out if layout != "CYX" else np.moveaxis(np.asarray(out[:]), 0, -1)
    rec = run.context.reconcile
    reference: Any = None
    if rec is not None and rec.thumbnail is not None:  # colour measured against what reconciliation aimed at
        reference = rec.thumbnail
    else:
        reference = SourceView(run.source) if run.source.channels == plan.out_channels else None
    whole: Any = None
    whole_note: str | None = None
    opts = run.options.quality
    megapixels = plan.shape[0] * plan.shape[1] / 1e6
    if megapixels <= opts.psnr_max_megapixels:
        h = executor.submit(
            whole_image_task,
            run.context,
            run.payload,
            f"{run.scratch}/whole.zarr",
            key=f"tg-whole-{run.token}",
            resources=executor.model_resources,
        )
        try:
            path = executor.wait([h])[0]
        except TilegraphError as exc:
            path, whole_note = None, f"whole-image inference failed: {exc}"
        if path is not None:
            whole = zarr.open_array(path, mode="r")
            if whole.ndim == 3 and image.ndim == 2:
                whole = np.asarray(whole)[..., 0]
        elif whole_note is None:
            whole_note = "whole-image inference ran out of memory"
    else:
        whole_note = (
            f"image of {megapixels:.0f} MP is larger than psnr_max_megapixels={opts.psnr_max_megapixels:g}"
        )
    metrics = seam_metrics(
        image,
        plan,
        reference=reference,
        whole=whole,
        icc_profile=run.source.metadata.icc_profile,
        seam_profile=functools.partial(run.context.blender.seam_profile, plan),
    )
    if whole_note is not None:
        metrics["fidelity_note"] = whole_note
    if notes:
        metrics["notes"] = list(notes)
    if run.norm is not None:
        metrics["normalisation"] = run.norm.to_dict()
    out_dir = opts.report_dir or f"{run.destination.rstrip('/')}.qa"
    paths = write_report(metrics, image, plan, out_dir, title=f"tilegraph QA: {run.destination}")
    return {
        "metrics": metrics,
        "paths": {k: str(v) for k, v in paths.items()},
        "summary_html": summary_html(metrics),
        "seconds": time.perf_counter() - t0,
    }
