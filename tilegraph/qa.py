"""``tilegraph qa``: measure a finished output's seams, optionally rerun a region on a shifted grid.

It sits beside :mod:`tilegraph.pipeline` (the grid-shift check runs the pipeline on a region). Nothing
recorded in an output is ever imported or executed: the grid-shift check runs only a model given by
the caller.
"""

from __future__ import annotations

import os

import numpy as np

from tilegraph.errors import InputError
from tilegraph.plan import Plan

__all__ = ["measure_output", "grid_shift_check"]


def _open_output(path: str):
    import zarr

    from tilegraph.source.zarr_source import check_complete

    try:
        arr = zarr.open_array(path, mode="r")
    except Exception as exc:
        raise InputError(f"not a tilegraph Zarr output: {exc}", path=path) from exc
    check_complete(arr.attrs, path)
    meta = dict(arr.attrs.get("tilegraph") or {})
    if "plan" not in meta:
        raise InputError("no tilegraph plan in the attributes", path=path, hint="qa needs an output of tilegraph.run")
    image = arr if meta.get("layout", "YXC") != "CYX" else np.moveaxis(arr[:], 0, -1)
    return arr, image, Plan.from_dict(meta["plan"]), meta


def grid_shift_check(source, image, plan: Plan, model, *, windows: int = 3) -> dict:
    """Rerun a central region with the window grid shifted by half a stride and compare.

    The region spans about ``windows`` windows per axis; a band of one overlap plus the model's halo is
    left out at the region's edges (they see padding, not image). Returns
    :func:`~tilegraph.quality.metrics.difference_metrics` plus the region and the shift.
    """
    from tilegraph.pipeline import run
    from tilegraph.quality.metrics import difference_metrics
    from tilegraph.source import open_source

    src = open_source(source)
    s = plan.scale_fraction
    box, shift = [], []
    for axis, size in ((plan.y, src.shape[0]), (plan.x, src.shape[1])):
        half = (axis.stride // 2) // plan.align * plan.align
        length = min(size, windows * axis.stride + axis.tile)
        start = max(0, min(size - length, (size - length) // 2 // axis.stride * axis.stride + half))
        box.append((start, start + length))
        shift.append(half)
    (y0, y1), (x0, x1) = box
    crop = src.read(y0, y1, x0, x1)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tilegraph-gridshift-") as tmp:
        res = run(
            crop,
            os.path.join(tmp, "shifted.zarr"),
            model=model,
            tile=plan.tile,
            overlap=plan.overlap,
            blend=plan.blend,
            client="inprocess",
            output_dtype=plan.out_dtype,
            progress=False,
        )
        shifted = np.asarray(res.output[:])
    if shifted.ndim == 2:
        shifted = shifted[..., None]
    oy0, ox0 = int(y0 * s), int(x0 * s)
    original = np.asarray(image[oy0 : oy0 + shifted.shape[0], ox0 : ox0 + shifted.shape[1]])
    if original.ndim == 2:
        original = original[..., None]
    margin = int((max(plan.overlap) + (plan.halo or 0)) * s)
    a = original[margin:-margin or None, margin:-margin or None]
    b = shifted[margin:-margin or None, margin:-margin or None]
    if a.size == 0:
        raise InputError("image too small for a grid-shift check", hint="use a larger image or smaller tiles")
    out = difference_metrics(a, b)
    out.update({"region": [y0, y1, x0, x1], "shift": shift, "margin": margin})
    return out


def measure_output(
    path: str,
    *,
    source=None,
    model=None,
    grid_shift: bool = False,
    out_dir: str | None = None,
) -> dict:
    """Seam metrics and QA report of a finished tilegraph output (``tilegraph qa``).

    Parameters
    ----------
    path
        The output Zarr written by :func:`tilegraph.run`.
    source
        The input (default: the path recorded in the output); used as the colour reference when its
        channels match, and by the grid-shift check.
    model
        The model for the grid-shift check (an instance or an import path given by the caller; the
        model recorded in the output is never imported).
    grid_shift
        Rerun a central region with the grid shifted by half a stride and report the difference.
    out_dir
        Where to write ``report.json`` and ``report.html`` (default ``<path>.qa``).
    """
    from tilegraph.quality.metrics import seam_metrics
    from tilegraph.quality.report import write_report
    from tilegraph.source import open_source
    from tilegraph.source.view import SourceView

    arr, image, plan, meta = _open_output(path)
    source = source or (meta.get("source") or {}).get("path")
    from tilegraph.metadata.attrs import attrs_to_metadata

    reference = None
    if source and (not isinstance(source, str) or os.path.exists(source) or "://" in source):
        src = open_source(source)
        if src.channels == plan.out_channels:
            reference = SourceView(src)
    icc = attrs_to_metadata(dict(arr.attrs)).icc_profile  # recorded from the source at run time
    metrics = seam_metrics(image, plan, reference=reference, icc_profile=icc)
    if grid_shift:
        if model is None:
            recorded = (meta.get("model") or {}).get("target")
            hint = f"pass --model {recorded}" if recorded else "pass --model package.module:factory"
            raise InputError(
                "the grid-shift check needs the model on the command line (nothing recorded in an output is run)",
                path=path,
                hint=hint,
            )
        if source is None:
            raise InputError("the grid-shift check needs the source", path=path, hint="pass --source")
        metrics["grid_shift"] = grid_shift_check(source, image, plan, model)
    paths = write_report(metrics, image, plan, out_dir or f"{path.rstrip('/')}.qa", title=f"tilegraph QA: {path}")
    return {"metrics": metrics, "paths": {k: str(v) for k, v in paths.items()}}
