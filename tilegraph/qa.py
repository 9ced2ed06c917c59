"""``tilegraph qa``: measure a finished output's seams, optionally rerun a region on a shifted grid.

It sits beside :mod:`tilegraph.pipeline` (the grid-shift check runs the pipeline on a region). Nothing
recorded in an output is ever imported or executed: the grid-shift check runs only a model given by
the caller.

Any array can be measured, not only tilegraph outputs: given the window, overlap and blend mode to
assume (``tilegraph qa image.tif --tile 256 --overlap 64 --blend cosine``), the seams are those of that
grid (an output without seams should then report no step). :func:`compare_modes` runs a central region
of the source with each blend mode and tabulates the seam figures and the time
(``tilegraph qa OUTPUT --model ... --compare-modes``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tilegraph.errors import InputError
from tilegraph.plan import Plan

__all__ = ["measure_output", "grid_shift_check", "compare_modes", "format_modes_table", "COMPARED_MODES"]

#: What ``--compare-modes`` runs: ``(label, run() keywords)``.
COMPARED_MODES: tuple[tuple[str, dict], ...] = (
    ("crop", {"blend": "crop"}),
    ("cosine", {"blend": "cosine"}),
    ("cosine detail=preserve", {"blend": "cosine", "detail": "preserve"}),
    ("multiband", {"blend": "multiband"}),
    ("multiband detail=preserve", {"blend": "multiband", "detail": "preserve"}),
    ("seam", {"blend": "seam"}),
    ("poisson", {"blend": "poisson"}),
    ("poisson reconcile=gain-offset", {"blend": "poisson", "reconcile": "gain-offset"}),
    ("cosine refine=seams", {"blend": "cosine", "refine": "seams"}),
    ("cosine lowfreq=thumbnail", {"blend": "cosine", "lowfreq": "thumbnail"}),
)


def _seam_profile(plan: Plan):
    """The blend mode's seam profile for the QA (``None`` for a mode this process cannot build)."""
    import functools

    from tilegraph.blend import get_blender
    from tilegraph.errors import TilegraphError

    try:
        blender = get_blender(plan.blend)
    except (TilegraphError, ImportError, TypeError):
        return None
    return functools.partial(blender.seam_profile, plan)


def _open_array(path: str):
    """Any image array: ``.npy`` (memory-mapped), a Zarr array, or what :func:`tilegraph.source.open_source`
    opens (TIFF, PNG, JPEG); returns an array-like ``(H, W, C)`` or ``(H, W)``."""
    if path.lower().endswith(".npy"):
        arr = np.load(path, mmap_mode="r")
        return arr if arr.ndim != 3 or arr.shape[-1] <= 4 else np.moveaxis(arr, 0, -1)
    from tilegraph.source import open_source
    from tilegraph.source.view import SourceView

    view = SourceView(open_source(path))
    return view if view.shape[2] > 1 else _Squeezed(view)


class _Squeezed:
    """A single-channel view as ``(H, W)``."""

    def __init__(self, view) -> None:
        self.view, self.shape, self.dtype = view, view.shape[:2], view.dtype

    def __getitem__(self, index):
        return self.view[index][..., 0]


def assumed_plan(shape, *, tile, overlap, blend: str, channels: int, dtype: str) -> Plan:
    """The plan whose seams ``tilegraph qa --tile --overlap --blend`` measures on any array."""
    from tilegraph.plan import make_plan
    from tilegraph.plan.plan import SUPPORTED_DTYPES

    dt = str(np.dtype(dtype))
    return make_plan(
        tuple(int(v) for v in shape[:2]),
        tile=tile,
        overlap=overlap,
        channels=channels,
        dtype=dt if dt in SUPPORTED_DTYPES else "float32",
        blend=blend,
        out_dtype=dt if dt in SUPPORTED_DTYPES else "float32",
    )


def _open_output(path: str, assume: dict | None = None):
    """The output, its image view, its plan and its metadata; ``assume`` (``tile``, ``overlap``, ``blend``)
    measures any array on that grid instead of a recorded plan."""
    import zarr

    from tilegraph.source.zarr_source import check_complete

    try:
        arr: Any = zarr.open_array(path, mode="r")
    except Exception as exc:
        if assume is None:
            raise InputError(
                f"not a tilegraph Zarr output: {exc}",
                path=path,
                hint="to measure any array, give the grid to assume: --tile, --overlap and --blend",
            ) from exc
        arr = None
    if assume is not None:
        image = _open_array(path) if arr is None else arr
        if len(image.shape) == 3 and image.shape[0] <= 4 < image.shape[-1]:  # a CYX Zarr
            image = np.moveaxis(np.asarray(image[:]), 0, -1)
        channels = 1 if len(image.shape) == 2 else int(image.shape[2])
        plan = assumed_plan(image.shape, channels=channels, dtype=str(image.dtype), **assume)
        return arr, image, plan, {}
    check_complete(arr.attrs, path)
    recorded = arr.attrs.get("tilegraph")
    meta: dict[str, Any] = dict(recorded) if isinstance(recorded, dict) else {}
    if not isinstance(meta.get("plan"), dict):
        raise InputError(
            "no tilegraph plan in the attributes",
            path=path,
            hint="qa needs an output of tilegraph.run, or the grid to assume: --tile, --overlap and --blend",
        )
    image = arr if meta.get("layout", "YXC") != "CYX" else np.moveaxis(np.asarray(arr[:]), 0, -1)
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
    a = original[margin : -margin or None, margin : -margin or None]
    b = shifted[margin : -margin or None, margin : -margin or None]
    if a.size == 0:
        raise InputError("image too small for a grid-shift check", hint="use a larger image or smaller tiles")
    out = difference_metrics(a, b)
    out.update({"region": [y0, y1, x0, x1], "shift": shift, "margin": margin})
    return out


def whole_image_run(source, model, plan: Plan) -> np.ndarray:
    """The model run on the whole image in one piece, padded as the tiled run pads, in the output dtype.

    The truth a tiled output is judged against (held in memory: for images up to
    ``psnr_max_megapixels``). Channels the model does not take (alpha) pass through as in a run.
    """
    from tilegraph._cast import to_output_dtype
    from tilegraph.engine.probe import model_channels
    from tilegraph.infer.declare import declarations
    from tilegraph.plan.resample import to_output_scale
    from tilegraph.source import open_source, read_padded
    from tilegraph.testing.reference import _resolve, whole_image_inference

    src = open_source(source)
    module = _resolve(model)
    seen, passthrough = model_channels(src.channels, declarations(module).get("in_channels"), path=src.path)
    h, w = src.shape
    image = src.read(0, h, 0, w)
    out = whole_image_inference(image[..., :seen], module, plan)
    if passthrough:
        ph, pw = plan.padded_shape
        top, left = -plan.y.origin, -plan.x.origin
        raw = read_padded(src, -top, ph - top, -left, pw - left, plan.pad_mode)[None]
        oy, ox = int(top * plan.scale_fraction), int(left * plan.scale_fraction)
        extra = np.moveaxis(to_output_scale(plan, raw, seen)[0], 0, -1)[
            oy : oy + out.shape[0], ox : ox + out.shape[1]
        ]
        out = np.concatenate([out, extra], axis=-1)
    return to_output_dtype(out, plan.out_dtype or "float32")[0]


def measure_output(
    path: str,
    *,
    source=None,
    model=None,
    grid_shift: bool = False,
    out_dir: str | None = None,
    psnr_max_megapixels: float = 64.0,
    assume: dict | None = None,
) -> dict:
    """Seam metrics and QA report of a finished tilegraph output (``tilegraph qa``), or of any array.

    Parameters
    ----------
    path
        The output Zarr written by :func:`tilegraph.run`; with ``assume``, any array (Zarr, TIFF, PNG,
        JPEG, ``.npy``).
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
    psnr_max_megapixels
        With a model and a source, images up to this size are also run whole and the report gives
        the PSNR of the tiled output against that (seam bands and interiors).
    assume
        ``{"tile": ..., "overlap": ..., "blend": ...}``: measure the seams of that grid (for arrays that
        are not tilegraph outputs, or to measure an output as if made otherwise).
    """
    from tilegraph.quality.metrics import seam_metrics
    from tilegraph.quality.report import write_report
    from tilegraph.source import open_source
    from tilegraph.source.view import SourceView

    arr, image, plan, meta = _open_output(path, assume)
    source = source or (meta.get("source") or {}).get("path")
    from tilegraph.metadata.attrs import attrs_to_metadata

    reference = None
    if source and (not isinstance(source, str) or os.path.exists(source) or "://" in source):
        src = open_source(source)
        if src.channels == plan.out_channels:
            reference = SourceView(src)
    icc = attrs_to_metadata(dict(arr.attrs)).icc_profile if arr is not None else None  # recorded at run time
    whole, note = None, None
    if model is None or source is None:
        note = "no model given: PSNR against whole-image inference needs --model (and the source)"
    elif plan.shape[0] * plan.shape[1] / 1e6 > psnr_max_megapixels:
        note = f"image larger than {psnr_max_megapixels:g} MP: not run whole"
    else:
        whole = whole_image_run(source, model, plan)
        if whole.ndim == 3 and image.ndim == 2:
            whole = whole[..., 0]
    metrics = seam_metrics(
        image, plan, reference=reference, whole=whole, icc_profile=icc, seam_profile=_seam_profile(plan)
    )
    if note is not None:
        metrics["fidelity_note"] = note
    recorded_notes = list((meta.get("normalisation") or {}).get("notes") or [])  # what the run said
    choice = (meta.get("reconcile") or {}).get("reference_choice")
    if choice:
        recorded_notes.append(
            f"reconciliation reference 'auto' chose {choice['reference']!r}: {choice['reason']}"
        )
    if recorded_notes:
        metrics["notes"] = recorded_notes
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
    paths = write_report(
        metrics, image, plan, out_dir or f"{path.rstrip('/')}.qa", title=f"tilegraph QA: {path}"
    )
    return {"metrics": metrics, "paths": {k: str(v) for k, v in paths.items()}, "plan": plan}


def _region(shape: tuple[int, int], plan: Plan, windows: int) -> tuple[int, int, int, int]:
    """A central region of about ``windows`` windows per axis, on the grid's alignment."""
    box = []
    for axis, size in ((plan.y, shape[0]), (plan.x, shape[1])):
        length = min(size, windows * axis.stride + axis.tile - axis.stride)
        start = max(0, (size - length) // 2 // plan.align * plan.align)
        box += [start, start + length]
    return box[0], box[1], box[2], box[3]


def compare_modes(
    source,
    model,
    plan: Plan,
    *,
    modes: tuple[tuple[str, dict], ...] = COMPARED_MODES,
    windows: int = 3,
    whole: bool = True,
) -> list[dict]:
    """Run a central region of ``source`` with each mode and measure its seams (``--compare-modes``).

    The region spans about ``windows`` windows per axis of ``plan``'s geometry (tile, overlap, output
    dtype). Each row: ``mode``, ``texture_ratio``, ``worst_step`` (DN), ``gradient_ratio`` (the QA's
    figures over the region's seam lines), ``max_abs_vs_whole`` (DN against the model run on the region
    whole, when ``whole``) and ``seconds`` (the run's wall time, in process).
    """
    import tempfile
    import time

    from tilegraph.pipeline import run
    from tilegraph.quality.metrics import seam_metrics
    from tilegraph.source import open_source

    src = open_source(source)
    y0, y1, x0, x1 = _region(src.shape, plan, windows)
    crop = src.read(y0, y1, x0, x1)
    references: dict = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tilegraph-modes-") as tmp:
        for k, (label, kw) in enumerate(modes):
            t0 = time.perf_counter()
            res = run(
                crop,
                os.path.join(tmp, f"mode-{k}.zarr"),
                model=model,
                tile=plan.tile,
                overlap=plan.overlap,
                client="inprocess",
                output_dtype=plan.out_dtype,
                progress=False,
                **kw,
            )
            seconds = time.perf_counter() - t0
            out = np.asarray(res.output[:])
            m = seam_metrics(out, res.plan, seam_profile=_seam_profile(res.plan))
            row = {
                "mode": label,
                "texture_ratio": m["texture_ratio"]["value"],
                "worst_step": m["seams"]["worst_step"],
                "gradient_ratio": m["gradient_ratio"]["value"],
                "max_abs_vs_whole": None,
                "seconds": seconds,
            }
            if whole:
                key = (res.plan.origin, res.plan.padded_shape)  # the near edges are padded per grid
                if key not in references:
                    ref = whole_image_run(crop, model, res.plan)
                    references[key] = ref[..., 0] if ref.ndim == 3 and out.ndim == 2 else ref
                reference = references[key]
                scale = 255.0 if out.dtype.kind == "f" else 255.0 / np.iinfo(out.dtype).max
                diff = np.abs(out.astype(np.float64) - np.asarray(reference, dtype=np.float64))
                row["max_abs_vs_whole"] = float(diff.max() * scale)
            rows.append(row)
    return rows


def format_modes_table(rows: list[dict]) -> str:
    """``rows`` of :func:`compare_modes` as a plain-text table."""

    def f(v, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    head = (
        f"{'mode':32s} {'texture':>8s} {'step DN':>8s} {'gradient':>9s} {'vs whole DN':>12s} {'time s':>7s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['mode']:32s} {f(r['texture_ratio'], '8.3f')} {f(r['worst_step'], '8.3f')} "
            f"{f(r['gradient_ratio'], '9.3f')} {f(r['max_abs_vs_whole'], '12.3f')} {f(r['seconds'], '7.2f')}"
        )
    return "\n".join(lines)
