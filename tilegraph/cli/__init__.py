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
        for name in ("Precision", "PadMode", "Layout", "ReconcileMode", "ReconcileReference", "Device")
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


def _common_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=_tile, default=512, help="model window in source pixels (default 512)")
    p.add_argument("--overlap", type=_overlap, default=64, help="pixels, or a fraction of tile (default 64)")
    p.add_argument("--blend", default="cosine", choices=["crop", "linear", "cosine", "gaussian"])
    p.add_argument("--scale", default=None, help="model scale: 2, 4 or 1/8 (default: declared or probed)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--chunks", type=int, default=1024, help="output chunk size (default 1024)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilegraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a model over an image, tile by tile")
    p.add_argument("source")
    p.add_argument("destination")
    p.add_argument("--model", required=True, help="import path 'package.module:factory'")
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
    p.add_argument("--model", default=None, help="import path; measures its receptive field on the CPU")
    p.add_argument("--model-stride", type=int, default=1)
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

    p = sub.add_parser("demo", help="make a synthetic 16-bit photograph and run a built-in model on it")
    p.add_argument("--output", default="tilegraph-demo-output", help="output directory")
    p.add_argument("--height", type=int, default=6000)
    p.add_argument("--width", type=int, default=8000)
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--blend", default="cosine", choices=["crop", "linear", "cosine", "gaussian"])
    p.add_argument("--inprocess", action="store_true", help="run without a cluster")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tilegraph`` command."""
    args = _parser().parse_args(argv)
    try:
        commands = {"run": _run, "plan": _plan, "info": _info, "clean": _clean, "demo": _demo, "qa": _qa}
        return commands[args.command](args)
    except TilegraphError as exc:
        print(f"tilegraph: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
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
    result = execute(
        args.source, args.destination, model=args.model, options=options, client=client, security=security
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


def _plan(args) -> int:
    from tilegraph.plan import make_plan
    from tilegraph.source import open_source

    src = open_source(args.source)
    extra = {}
    stride = args.model_stride
    scale = args.scale or 1
    if args.model:
        from tilegraph.infer.receptive_field import measure_receptive_field
        from tilegraph.infer.runner import _build_from_path
        from tilegraph.infer.spec import describe_model

        spec = describe_model(args.model)
        module = _build_from_path(spec)
        stride = int(getattr(module, "stride", stride) or stride)
        scale = args.scale or getattr(module, "scale", 1) or 1
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        rf = measure_receptive_field(module, channels=src.channels, device=device)
        extra = {
            "receptive field radius": f"{rf.radius} px (impulse probe in float64 on {device})",
            "proposed halo": rf.halo,
            "proposed overlap": rf.overlap,
        }
        if getattr(module, "halo", None) is not None:
            extra["declared halo"] = module.halo
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
    from tilegraph.qa import measure_output

    out = measure_output(
        args.output, source=args.source, model=args.model, grid_shift=args.grid_shift, out_dir=args.out
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
    return 0


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
