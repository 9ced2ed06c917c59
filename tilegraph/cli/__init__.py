"""Command line: ``tilegraph run | plan | info | clean | qa | demo``.

Heavy imports (torch, distributed) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys

from tilegraph.errors import TilegraphError

__all__ = ["main"]


def _overlap(text: str):
    value = float(text)
    return value if 0 < value < 1 else int(value)


def _tile(text: str):
    return text if text == "auto" else int(text)


def _pair_or_int(text: str):
    if text == "auto":
        return text
    if "x" in text.lower():
        a, b = text.lower().split("x", 1)
        return (int(a), int(b))
    return int(text)


def _tile_any(text: str):
    return "auto" if text == "auto" else _pair_or_int(text)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t for t in (p.strip() for p in text.split(",")) if t)


#: Parsers of fields whose annotation is not a plain type.
_SPECIAL = {
    "tile": _tile_any,
    "overlap": _overlap,
    "out_chunks": _pair_or_int,
    "out_shards": _pair_or_int,
    "passes": _csv,
}


def _add_option_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option of :func:`tilegraph.run`, generated from :mod:`tilegraph.options`.

    Flags default to "not given", so a ``--config`` file and then the options' own defaults apply.
    """
    import typing

    from tilegraph import options as o

    aliases = {
        name: typing.get_args(getattr(o, name))
        for name in (
            "Precision",
            "PadMode",
            "Layout",
            "ReconcileMode",
            "ReconcileReference",
            "AnchorFit",
            "NormSync",
            "Device",
            "CodecPipeline",
            "DetailMode",
            "LowFreqMode",
            "LowFreqSplit",
            "RefineMode",
        )
    }
    for f in o.flat_fields():
        if not f.cli:
            continue
        flag = "--" + f.flat.replace("_", "-")
        ann = str(f.annotation)
        kw: dict = {"dest": f.flat, "default": argparse.SUPPRESS, "help": f"{f.help} (default {f.default!r})"}
        if f.flat in _SPECIAL:
            kw["type"] = _SPECIAL[f.flat]
        elif ann.startswith("bool"):
            kw["action"] = argparse.BooleanOptionalAction
        elif ann.split(" ")[0] in aliases:
            kw["choices"] = list(aliases[ann.split(" ")[0]]) + (["none"] if "None" in ann else [])
        elif ann.startswith("int"):
            kw["type"] = int
        elif ann.startswith("float"):
            kw["type"] = float
        else:
            kw["type"] = str
        p.add_argument(flag, **kw)


#: The built-in blend modes offered as choices (``run --blend`` takes any registered name).
_BLENDS = ["crop", "linear", "cosine", "gaussian", "multiband", "seam", "poisson"]


def _common_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=_tile, default=512, help="model window in source pixels (default 512)")
    p.add_argument("--overlap", type=_overlap, default=64, help="pixels, or a fraction of tile (default 64)")
    p.add_argument("--blend", default="cosine", choices=_BLENDS)
    p.add_argument("--scale", default=None, help="model scale: 2, 4 or 1/8 (default: declared or probed)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--chunks", type=int, default=1024, help="output chunk size (default 1024)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilegraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="run a model over an image (or a folder, a glob, several images), tile by tile",
        description="Run a model over an image tile by tile. SOURCE may be a file, a URL, an import path "
        "'module:array_or_function' (an array, or a function returning one), a folder or a quoted glob "
        "('photos/*.tif': every image on one cluster; DESTINATION is then a folder or a template with "
        "{stem}; the exit status is the number of images that failed). Modules of the current folder "
        "are importable, here and on the embedded cluster's workers.",
    )
    p.add_argument("source", nargs="+", help="image(s): path, URL, folder, glob or 'module:attr'")
    p.add_argument("destination")
    p.add_argument(
        "--model",
        required=True,
        help="import path 'package.module:factory' (any supported kind of model: torch module, numpy "
        "callable, model file path) or a model file (.onnx, TorchScript .pt/.ts, spandrel .pth/.safetensors)",
    )
    p.add_argument("--config", default=None, help="TOML or YAML file of options (flags given here win)")
    p.add_argument("--scheduler", default=None, help="scheduler address (default: embedded local cluster)")
    p.add_argument("--inprocess", action="store_true", help="run without any cluster")
    p.add_argument("--tls-ca-file", default=None, help="CA certificate of a TLS cluster (tls:// scheduler)")
    p.add_argument("--tls-cert", default=None, help="client certificate for a TLS cluster")
    p.add_argument("--tls-key", default=None, help="client private key (if not inside --tls-cert)")
    _add_option_flags(p)

    p = sub.add_parser("plan", help="print the plan of a run without running anything")
    p.add_argument("source")
    _common_geometry(p)
    p.add_argument(
        "--model",
        default=None,
        help="import path or model file: measures its receptive field and proposes a halo, with an explanation",
    )
    p.add_argument(
        "--model-stride", type=int, default=None, help="the model's total stride (default: declared)"
    )
    p.add_argument(
        "--probe-budget",
        type=float,
        default=40.0,
        help="seconds the receptive-field probe may take (default 40)",
    )
    p.add_argument(
        "--norm-sync",
        default=None,
        choices=["exact", "thumbnail"],
        help="check the plan for norm_sync (exact: alignment and cost; thumbnail: how much the statistics "
        "vary between two thumbnail sizes of this image)",
    )
    p.add_argument("--thumbnail", type=int, default=None, help="thumbnail size for --norm-sync thumbnail")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "info", help="describe an image source, and what interrupted runs left at a destination"
    )
    p.add_argument("source")

    p = sub.add_parser(
        "clean", help="remove what interrupted runs left (claims, manifests, staging, scratch)"
    )
    p.add_argument("path", help="a destination, or a folder holding destinations or scratch= folders")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")

    p = sub.add_parser("qa", help="measure the seams of a finished output and write a report")
    p.add_argument("output")
    p.add_argument("--source", default=None, help="the input (default: the one recorded in the output)")
    p.add_argument(
        "--model", default=None, help="import path: PSNR against whole-image inference, and --grid-shift"
    )
    p.add_argument(
        "--grid-shift", action="store_true", help="rerun a region with the grid shifted by half a stride"
    )
    p.add_argument("--out", default=None, help="report folder (default OUTPUT.qa)")
    p.add_argument(
        "--tile", type=_pair_or_int, default=None, help="measure any array: the window to assume (source px)"
    )
    p.add_argument("--overlap", type=_pair_or_int, default=None, help="with --tile: the overlap to assume")
    p.add_argument("--blend", default=None, help="with --tile: the blend mode to assume (default crop)")
    p.add_argument(
        "--compare-modes",
        action="store_true",
        help="run a central region with each blend mode (needs --model) and print a table",
    )
    p.add_argument("--windows", type=int, default=3, help="--compare-modes: windows per axis of the region")

    p = sub.add_parser("demo", help="make a synthetic 16-bit photograph and run a built-in model on it")
    p.add_argument("--output", default="tilegraph-demo-output", help="output directory")
    p.add_argument("--height", type=int, default=6000)
    p.add_argument("--width", type=int, default=8000)
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--blend", default="cosine", choices=_BLENDS)
    p.add_argument("--inprocess", action="store_true", help="run without a cluster")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tilegraph`` command."""
    import os

    args = _parser().parse_args(argv)
    here = os.getcwd()
    if here not in sys.path:  # modules of the current folder import, as with `python -m`
        sys.path.insert(0, here)
    try:
        commands = {"run": _run, "plan": _plan, "info": _info, "clean": _clean, "demo": _demo, "qa": _qa}
        return commands[args.command](args)
    except TilegraphError as exc:
        from tilegraph.engine.progress import end_line

        end_line(sys.stderr)
        print(f"tilegraph: error: {as_flags(str(exc))}", file=sys.stderr)
        return 2


def as_flags(message: str) -> str:
    """``message`` with ``run()`` keywords written as this command's flags (``overwrite=True`` -> ``--overwrite``)."""
    import re

    flat = {f.flat for f in _flat_cli_fields()}

    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2).strip("'\"")
        if name not in flat:
            return m.group(0)
        dashed = "--" + name.replace("_", "-")
        if value == "True":
            return dashed
        if value == "False":
            return "--no-" + name.replace("_", "-")
        return f"{dashed} {value}"

    return re.sub(r"\b([a-z_]+)=('[^']*'|\"[^\"]*\"|[\w./-]+)", flag, message)


_IMPORT_PATH = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"


def _source(text: str):
    """A source argument: a path or URL as it is, or the object an import path ``module:attr`` names.

    An attribute that is a function is called (without arguments) and its result is the source.
    """
    import importlib
    import os
    import re

    if "://" in text or os.path.exists(text) or not re.fullmatch(_IMPORT_PATH, text):
        return text
    module, _, attr = text.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        from tilegraph.errors import SourceNotFoundError

        raise SourceNotFoundError(
            f"no such file, and {text!r} does not import: {exc}",
            path=text,
            hint="give an image file, or 'module:attr' naming an array (or a function returning one) "
            "in a module of the current folder or an installed package",
        ) from exc
    return obj() if callable(obj) and not hasattr(obj, "shape") else obj


def _run(args) -> int:
    from tilegraph.batch import is_batch, run_many
    from tilegraph.options import RunOptions, load_config
    from tilegraph.pipeline import execute

    client = "inprocess" if args.inprocess else args.scheduler
    given = {}
    for f in _flat_cli_fields():
        if hasattr(args, f.flat):
            value = getattr(args, f.flat)
            given[f.flat] = None if value == "none" and "None" in str(f.annotation) else value
    if "progress" not in given:
        given["progress"] = True
    base = load_config(args.config) if args.config else None
    options = RunOptions.from_kwargs(base, **given)
    security = _security(args)
    sources = [_source(s) for s in args.source]
    source = sources if len(sources) > 1 else sources[0]
    if is_batch(source):
        batch = run_many(
            source, args.destination, model=args.model, options=options, client=client, security=security
        )
        print(batch.table())
        failed = len(batch.failed)
        for item in batch.failed:
            print(f"tilegraph: error: {item.label}: {as_flags(str(item.error))}", file=sys.stderr)
        return min(failed, 100)
    result = execute(
        source, args.destination, model=args.model, options=options, client=client, security=security
    )
    print(json.dumps(result.summary(), indent=2))
    return 0


def _security(args):
    """A ``distributed.security.Security`` from ``--tls-*`` files, or ``None`` (dask's TLS configuration)."""
    if not (args.tls_ca_file or args.tls_cert or args.tls_key):
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=args.tls_ca_file,
        tls_client_cert=args.tls_cert,
        tls_client_key=args.tls_key,
        require_encryption=True,
    )


def _flat_cli_fields():
    from tilegraph.options import flat_fields

    return [f for f in flat_fields() if f.cli]


def _plan_model(args, channels: int) -> tuple[dict, int, object, object]:
    """Build the model of ``tilegraph plan --model`` here and propose a halo within the time budget."""
    from tilegraph.infer.receptive_field import propose_halo
    from tilegraph.infer.runner import _build_from_path
    from tilegraph.infer.spec import describe_model

    spec = describe_model(args.model)
    if spec.kind == "file":
        from tilegraph.infer.formats import load_model_file

        module = load_model_file(spec.target or args.model, device="cpu")
    else:
        module = _build_from_path(spec)
    declared_stride = getattr(module, "stride", None)
    stride = args.model_stride or (declared_stride if isinstance(declared_stride, int) else None)
    device = "cpu"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and isinstance(module, torch.nn.Module):
        device = "cuda"
    local, synced_note = _with_synced_norms(module)
    p = propose_halo(
        local,
        channels=getattr(module, "in_channels", None) or channels,
        scale=args.scale,
        stride=stride,
        device=device,
        time_budget=args.probe_budget,
    )
    extra: dict = {
        "receptive field radius": f"{p.radius} px"
        + (" (exact)" if p.exact else " (lower bound)" if p.stopped else "")
        + f", probe on {device} in {p.seconds:.1f} s{synced_note}",
        "proposed halo": p.halo,
        "proposed overlap": p.overlap,
        "explanation": as_flags(p.explanation),
    }
    if getattr(module, "halo", None) is not None:
        extra["declared halo"] = module.halo
    return extra, int(p.stride or 1), p.scale or 1, module


def _plan(args) -> int:
    from tilegraph.plan import make_plan
    from tilegraph.source import open_source

    src = open_source(args.source)
    extra: dict = {}
    stride = args.model_stride or 1
    scale = args.scale or 1
    if args.model:
        extra, stride, probed_scale, module = _plan_model(args, src.channels)
        scale = args.scale or probed_scale
    elif args.norm_sync:
        raise TilegraphError("--norm-sync needs --model (the layers are found on the model)")
    plan = make_plan(
        src.shape,
        tile=args.tile,
        overlap=args.overlap,
        channels=src.channels,
        dtype=str(src.dtype),
        layout=src.layout,
        scale=scale,
        model_stride=stride,
        blend=args.blend,
        batch_size=args.batch_size,
        out_chunks=args.chunks,
    )
    if args.model:
        extra.update(_plan_norm(args, src, module, plan))
    if args.json:
        print(
            json.dumps(
                {"plan": plan.to_dict(), "summary": plan.summary(), **{k: str(v) for k, v in extra.items()}}
            )
        )
    else:
        print(plan)
        width = max(len(k) for k in plan.summary())
        for k, v in extra.items():
            print(f"{k.rjust(width)}  {v}")
    return 0


def _with_synced_norms(module):
    """The model with its GroupNorm/InstanceNorm layers on fixed statistics, for the receptive-field probe.

    Per-window statistics make every output pixel depend on the whole window, so the impulse probe
    would grow without bound; with fixed statistics it measures the radius ``norm_sync="exact"`` needs
    to fit in half the overlap.
    """
    if not _is_torch_module(module):
        return module, ""
    from tilegraph.infer.normsync import find_norm_layers, record_stats, synced

    report = find_norm_layers(module.eval())
    if not report.sync_layers or not report.probed:
        return module, ""
    import torch

    cin = getattr(module, "in_channels", None)
    cin = cin if isinstance(cin, int) else 3
    stride = getattr(module, "stride", 1)
    side = 64 * (stride if isinstance(stride, int) and stride > 0 else 1)
    x = 0.5 + 0.1 * torch.randn(1, cin, side, side, generator=torch.Generator().manual_seed(0))
    return synced(module, record_stats(module, x)), ", normalisation layers on fixed statistics"


def _plan_norm(args, src, module, plan) -> dict:
    """What ``tilegraph plan --model`` says about normalisation layers and ``norm_sync`` (passes, cost)."""
    import numpy as np

    from tilegraph.engine.normsync import NormPlan
    from tilegraph.engine.probe import model_channels
    from tilegraph.infer.normsync import NormReport, check_alignment, find_norm_layers, pass_costs

    declared = getattr(module, "in_channels", None)
    channels, _ = model_channels(src.channels, declared if isinstance(declared, int) else None)
    if not _is_torch_module(module):
        report, costs = NormReport(opaque=True), []
    else:
        import torch

        g = np.random.default_rng(0)
        x = torch.from_numpy(
            (0.5 + 0.1 * g.standard_normal((1, channels, *plan.window_shape))).astype(np.float32)
        )
        module = module.eval()
        report = find_norm_layers(module, example=x)
        costs = pass_costs(module, report, x, repeats=2) if report.sync_layers else []
        if args.norm_sync == "exact" and report.sync_layers:
            check_alignment(plan, report)  # a PlanError names the overlap to use
    norm = NormPlan(args.norm_sync, report, tuple(costs))
    out: dict = {}
    if report.sync_layers:
        out["norm_sync exact"] = (
            f"{report.passes} passes over the windows, about {sum(costs):.2f} x the inference without sync "
            "(timed on one window on this machine)"
        )
    if args.norm_sync == "thumbnail" and report.sync_layers:
        out["norm_sync thumbnail"] = _thumbnail_variation(args, src, plan, channels)
    out["normalisation"] = "; ".join(norm.notes()) or "no per-sample normalisation layers"
    return out


def _is_torch_module(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _thumbnail_variation(args, src, plan, channels: int) -> str:
    """How much the statistics of two thumbnail sizes of this image differ (the run's check, run here)."""
    from tilegraph.engine.thumbnail import thumbnail_task
    from tilegraph.infer.spec import describe_model

    size = int(args.thumbnail or max(1024, *plan.window_shape))
    factor = max(1, -(-max(src.shape) // size))
    spec = describe_model(args.model, device="cpu")
    norm = {"window": tuple(plan.window_shape), "overlap": tuple(plan.overlap), "scale": plan.scale_fraction}
    info = thumbnail_task(src, spec, None, (factor, plan.align, channels), norm).info
    v = info.get("variation") or {}
    if v.get("note"):
        return f"thumbnail of {size} px is the full image: its statistics are exact"
    if not v:
        return "thumbnail too small to compare two sizes"
    verdict = "vary strongly with scale: use norm_sync='exact'" if v["recommend_exact"] else "are stable"
    return (
        f"statistics of {v['compared'][0]} and {v['compared'][1]} px thumbnails differ by up to "
        f"{v['worst']:.2f} standard deviations: they {verdict}"
    )


def _info(args) -> int:
    from tilegraph.sink.manifest import destination_status
    from tilegraph.source import open_source

    state = destination_status(args.source)
    left = bool(state["claim"] or state["manifest"] or state["leftovers"])
    try:
        src = open_source(args.source)
    except TilegraphError:
        if not left:
            raise
        info: dict = {}
    else:
        info = src.describe()
        meta = src.metadata
        info["icc_profile_bytes"] = len(meta.icc_profile) if meta.icc_profile else 0
        info["exif"] = bool(meta.exif)
    if (
        left
    ):  # an interrupted or running job: its claim, manifest and leftovers (`tilegraph clean` removes them)
        info["destination_state"] = state
    print(json.dumps(info, indent=2, default=str))
    return 0


def _clean(args) -> int:
    from tilegraph.sink.manifest import clean

    removed = clean(args.path, dry_run=args.dry_run)
    print(
        json.dumps(
            {
                "dry_run": bool(args.dry_run),
                "removed" if not args.dry_run else "would_remove": [
                    {"path": i.path, "kind": i.kind, "bytes": i.nbytes} for i in removed
                ],
            },
            indent=2,
        )
    )
    return 0


def _qa(args) -> int:
    from tilegraph.errors import InputError
    from tilegraph.qa import measure_output

    assume = None
    if args.tile is not None:
        assume = {"tile": args.tile, "overlap": args.overlap or 0, "blend": args.blend or "crop"}
    elif args.overlap is not None or args.blend is not None:
        raise InputError("--overlap and --blend describe the grid to assume: give --tile too")
    out = measure_output(
        args.output,
        source=args.source,
        model=args.model,
        grid_shift=args.grid_shift,
        out_dir=args.out,
        assume=assume,
    )
    m = out["metrics"]
    summary = {
        "worst_seam_step_dn": m["seams"]["worst_step"],
        "gradient_ratio": m["gradient_ratio"]["value"],
        "report": out["paths"]["html"],
    }
    if m.get("fidelity"):
        summary["psnr_vs_whole_db"] = m["fidelity"]["psnr"]
        summary["max_abs_vs_whole_dn"] = m["fidelity"]["max_abs_dn"]
    elif m.get("fidelity_note"):
        summary["psnr_vs_whole"] = m["fidelity_note"]
    if "grid_shift" in m:
        summary["grid_shift_max_abs_dn"] = m["grid_shift"]["max_abs_dn"]
    print(json.dumps(summary, indent=2))
    if args.compare_modes:
        _compare_modes(args, out["plan"])
    return 0


def _compare_modes(args, plan) -> None:
    from tilegraph.errors import InputError
    from tilegraph.qa import compare_modes, format_modes_table

    source = args.source or out_source(args.output)
    if args.model is None or source is None:
        raise InputError(
            "--compare-modes runs the model on a region of the source",
            hint="pass --model package.module:factory (and --source when the output does not record it)",
        )
    print(format_modes_table(compare_modes(source, args.model, plan, windows=args.windows)))


def out_source(path: str) -> str | None:
    """The source path recorded in a tilegraph output (``None`` when there is none)."""
    try:
        import zarr

        meta = zarr.open_array(path, mode="r").attrs.get("tilegraph") or {}
    except Exception:
        return None
    return (meta.get("source") or {}).get("path") if isinstance(meta, dict) else None


def _demo(args) -> int:
    from tilegraph.demo import run_demo

    run_demo(
        args.output,
        shape=(args.height, args.width),
        tile=args.tile,
        overlap=args.overlap,
        blend=args.blend,
        client="inprocess" if args.inprocess else None,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
