"""A tiled run as explicit steps: prepare, infer, blend, finish.

:func:`tilegraph.run` drives all steps at once; tests and advanced users can drive them one by one
(for instance to inspect or damage the tile store between inference and blending).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from tilegraph.engine.executor import Progress
from tilegraph.engine.tasks import RunContext, blend_chunk, infer_windows, probe_model
from tilegraph.engine.tile_store import TileStore
from tilegraph.errors import DestinationError, InputError, ModelError, ModelOutputError
from tilegraph.infer.spec import ModelSpec
from tilegraph.metadata.attrs import metadata_to_attrs
from tilegraph.plan import Plan, make_plan
from tilegraph.plan.normalize import coerce_scale, lcm
from tilegraph.sink.zarr_sink import (
    create_output,
    exists,
    mark_complete,
    output_layout,
    remove_path,
    same_location,
)
from tilegraph.source import Source

__all__ = ["Job", "RunResult", "EXPORT_SUFFIXES"]

EXPORT_SUFFIXES = (".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg")


@dataclass
class RunResult:
    """What a run returns: the output, the plan, timings and counts (all small).

    Attributes
    ----------
    output
        The output Zarr array (read-only) or, for TIFF/PNG/JPEG destinations, the file path.
    path : str
        Where the output lives.
    plan : Plan
    timings : dict
        Seconds per step and ``megapixels_per_s`` of source image.
    clipped : int
        Values clipped when converting to the output dtype.
    """

    output: object
    path: str
    plan: Plan
    timings: dict
    clipped: int
    model: dict
    report: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_windows(self) -> int:
        """Number of windows the model ran on."""
        return self.plan.n_windows

    def summary(self) -> dict:
        """Small dict of the headline numbers."""
        return {
            "output": self.path,
            "windows": self.plan.n_windows,
            "seconds": round(self.timings.get("total_s", float("nan")), 3),
            "megapixels_per_s": round(self.timings.get("megapixels_per_s", float("nan")), 3),
            "clipped": self.clipped,
        }

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in self.summary().items())
        extra = ""
        if self.report and self.report.get("summary_html"):
            extra = self.report["summary_html"]
        return f"<table>{rows}</table>{extra}"


class Job:
    """One tiled run, step by step.

    Parameters are those of :func:`tilegraph.run`, already normalised: a :class:`Source`, a
    :class:`ModelSpec` (plus the model object for instances), an executor.
    """

    def __init__(
        self,
        source: Source,
        destination: str,
        *,
        spec: ModelSpec,
        model_obj,
        executor,
        tile,
        overlap,
        blend: str,
        batch_size: int,
        out_chunks,
        batches_per_task: int = 1,
        out_shards=None,
        output_dtype,
        overwrite: bool,
        pad_mode: str,
        scratch: str | None,
        progress: bool,
        export_options: dict | None = None,
        reconcile: str | None = None,
        reconcile_options: dict | None = None,
        qa: bool | str = False,
    ):
        self.source = source
        self.destination = os.fspath(destination).removeprefix("file://")
        self.spec = spec
        self.model_obj = model_obj
        self.executor = executor
        self.options = dict(
            tile=tile,
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            batches_per_task=batches_per_task,
            out_chunks=out_chunks,
            out_shards=out_shards,
            output_dtype=output_dtype,
            pad_mode=pad_mode,
        )
        self.overwrite = overwrite
        self.reconcile = reconcile
        self.reconcile_options = {
            "reference": "input",
            "strength": 1.0,
            "field": False,
            "sigma": 2.0,
            "thumbnail_size": None,
        }
        unknown = set(reconcile_options or {}) - set(self.reconcile_options)
        if unknown:
            raise InputError(f"unknown reconcile options {sorted(unknown)}; use {sorted(self.reconcile_options)}")
        self.reconcile_options.update(reconcile_options or {})
        if self.reconcile_options["reference"] not in ("input", "thumbnail", None):  # checked before any work
            raise InputError(
                f"unknown reconcile reference {self.reconcile_options['reference']!r}",
                hint="use 'input', 'thumbnail' (the model run on a thumbnail) or None",
            )
        self.qa = qa
        self.corrections = None
        self.progress = Progress(enabled=progress)
        self.export = self.destination.lower().endswith(EXPORT_SUFFIXES)
        self.export_options = export_options or {}
        token = uuid.uuid4().hex[:8]
        self.token = token
        self.scratch = scratch or f"{self.destination.rstrip('/')}.tilegraph-tmp-{token}"
        self.output_path = f"{self.scratch}/output.zarr" if self.export else self.destination
        self.tile_store = f"{self.scratch}/tiles.zarr"
        self.tiles: TileStore | None = None
        self.timings: dict = {}
        self.infer_handles: list = []
        self.blend_handles: list = []
        self.plan: Plan | None = None
        self.ctx: RunContext | None = None
        self.autotile = None

    # ----------------------------------------------------------------- step 1
    def prepare(self) -> Plan:
        """Check the destination, probe the model, build the plan, stage the source, create stores."""
        t0 = time.perf_counter()
        self._check_destination()
        src, spec = self.source, self.spec
        model_channels, passthrough = _model_channels(src, spec)
        probe = self._probe(model_channels)
        scale = self._scale(probe)
        out_model = probe["out_channels"]
        if spec.out_channels is not None and spec.out_channels != out_model:
            raise ModelOutputError(
                f"model declares out_channels={spec.out_channels} but returned {out_model} channels on a probe input",
                path=src.path,
            )
        out_dtype = str(np.dtype(self.options["output_dtype"] or src.dtype))
        tile, batch_size = self.options["tile"], self.options["batch_size"]
        if tile == "auto":
            self.autotile = self._autotile(model_channels, scale)
            tile, batch_size = self.autotile.tile, self.autotile.batch
        self.plan = make_plan(
            src.shape,
            tile=tile,
            overlap=self.options["overlap"],
            channels=src.channels,
            dtype=str(src.dtype),
            layout=src.layout,
            scale=scale,
            model_stride=int(spec.stride or 1),
            out_channels=out_model + passthrough,
            out_dtype=out_dtype,
            out_chunks=self.options["out_shards"] or self.options["out_chunks"],
            blend=self.options["blend"],
            pad_mode=self.options["pad_mode"],
            batch_size=batch_size,
            batches_per_task=self.options["batches_per_task"],
            halo=spec.halo,
            reconcile=self.reconcile,
        )
        if self.reconcile and self.reconcile_options["reference"] == "input" and out_model != model_channels:
            raise InputError(
                f"reconcile reference 'input' needs the model to keep the channel count ({model_channels} in, "
                f"{out_model} out)",
                path=src.path,
                hint="use reconcile_options={'reference': 'thumbnail'} (the model run on a thumbnail) or None",
            )
        self.timings["probe_s"] = time.perf_counter() - t0
        if self.export:
            self._validate_export()
        t1 = time.perf_counter()
        source = self._stage(src)
        self.timings["stage_s"] = time.perf_counter() - t1
        self._create_stores(source)
        layout = output_layout(src.layout, self.plan.out_channels)
        self.ctx = RunContext(
            plan=self.plan,
            source=source,
            spec=spec,
            tile_store=self.tiles,
            output=self.output_path,
            model_channels=model_channels,
            out_layout=layout,
            reconcile=self._reconcile_context(model_channels) if self.reconcile else None,
        )
        self.timings["prepare_s"] = time.perf_counter() - t0
        return self.plan

    def _check_destination(self) -> None:
        if same_location(self.destination, self.source.path):
            raise DestinationError(
                "destination is the source itself",
                path=self.destination,
                hint="write to a new path; sources are never overwritten",
            )
        if exists(self.destination) and not self.overwrite:
            raise DestinationError(
                "destination exists", path=self.destination, hint="pass overwrite=True or choose a new path"
            )

    def _probe(self, channels: int) -> dict:
        spec = self.spec
        den = coerce_scale(spec.scale).denominator if spec.scale else 8
        a = lcm(int(spec.stride or 1), den)
        size = a * math.ceil(64 / a)
        # the model object is sent to each worker once, here, and reused by every task
        self._payload_h = self.executor.share(self.model_obj, model_only=True) if spec.kind != "path" else None
        try:
            h = self.executor.submit(
                probe_model,
                spec,
                self._payload_h,
                channels,
                size,
                key=f"tg-probe-{self.token}",
                resources=self.executor.model_resources,
            )
            out = self.executor.wait([h])[0]
        except ModelError as exc:  # name the job's source: no window exists yet
            if exc.path is not None or exc.window is not None:
                raise
            raise type(exc)(
                f"{exc.message} (model probe on a {size}x{size} grey input, before tiling)",
                path=self.source.path,
                hint=exc.hint or "run the model by hand on a small batch (N, C, H, W) and check its output",
            ) from exc
        out["in_size"] = size
        return out

    def _reconcile_context(self, model_channels: int) -> dict:
        """What model tasks need to gather statistics (the thumbnail reference is computed here, once)."""
        opts = {"reference": self.reconcile_options["reference"], "sigma": self.reconcile_options["sigma"]}
        if opts["reference"] == "thumbnail":
            from tilegraph.engine.tasks import thumbnail_reference

            plan = self.plan
            side = self.reconcile_options["thumbnail_size"] or max(256, *plan.window_shape)
            factor = max(1, -(-max(self.source.shape) // int(side)))
            h = self.executor.submit(
                _call,
                thumbnail_reference,
                (self.source, self.spec, self._payload_h),
                dict(factor=factor, align=plan.align, channels=model_channels),
                key=f"tg-thumbnail-{self.token}",
                resources=self.executor.model_resources,
            )
            opts["thumbnail"] = self.executor.wait([h])[0]
            opts["factor"] = float(factor * plan.scale_fraction)  # output pixels per thumbnail pixel
        return opts

    def _autotile(self, channels: int, scale: Fraction):
        """``tile="auto"``: probe the real model on a worker's device for the largest window and batch.

        The probe runs as a model task (same resources, same process as the model tasks), before any
        other work, and its choice and measured peak go into the output's metadata.
        """
        spec, src = self.spec, self.source
        align = lcm(int(spec.stride or 1), scale.denominator)
        overlap = self.options["overlap"]
        options = dict(
            channels=channels,
            dtype=str(src.dtype),
            align=align,
            max_tile=max(src.shape),
            min_tile=(int(overlap) if isinstance(overlap, int) else 0) + align,
            max_batch=16,
        )
        h = self.executor.submit(
            _probe_tile_task,
            spec,
            self._payload_h,
            options,
            key=f"tg-autotile-{self.token}",
            resources=self.executor.model_resources,
        )
        return self.executor.wait([h])[0]

    def _scale(self, probe: dict) -> Fraction:
        size = probe["in_size"]
        oh, ow = probe["out_size"]
        if oh != ow:
            raise ModelOutputError(
                f"model returned a non-square {oh}x{ow} output for a {size}x{size} input", path=self.source.path
            )
        measured = Fraction(oh, size)
        if self.spec.scale is not None:
            declared = coerce_scale(self.spec.scale)
            if declared != measured:
                raise ModelOutputError(
                    f"model declares scale {declared} but maps {size} px to {oh} px ({measured})",
                    path=self.source.path,
                    hint="fix the model's scale attribute or the scale= argument",
                )
        return coerce_scale(measured)

    def _stage(self, src: Source) -> Source:
        from tilegraph.engine.executor import InProcessExecutor

        inprocess = isinstance(self.executor, InProcessExecutor)
        if (src.shareable or inprocess) and src.region_reads:
            return src
        tasks, staged = src.stage_tasks(f"{self.scratch}/source.zarr")
        if not src.shareable:  # pixels live in this process: write them from here
            for i, task in enumerate(tasks):
                task()
                self.progress.update("stage", i + 1, len(tasks))
            return staged
        handles = [self.executor.submit(t, key=f"tg-stage-{self.token}-{i}") for i, t in enumerate(tasks)]
        self.executor.wait(handles, progress=self.progress, label="stage")
        return staged

    def _create_stores(self, source: Source) -> None:
        from tilegraph import __version__

        plan = self.plan
        oy, ox = plan.out_window_shape
        self.tiles = TileStore.create(
            self.tile_store, (plan.n_windows, plan.out_channels, oy, ox), plan.tile_store_dtype
        )
        meta = self.source.metadata
        attrs = {
            "version": __version__,
            "model": {
                "name": self.spec.name,
                "kind": self.spec.kind,
                "target": self.spec.target,
                "weights": self.spec.weights,
                "weights_sha256": self.spec.weights_sha256,
                "precision": self.spec.precision,
                "channels_last": self.spec.channels_last,
                "compile": self.spec.compile,
            },
            "plan": plan.to_dict(),
            "autotile": self.autotile.to_dict() if self.autotile is not None else None,
            "source": {"path": self.source.path, "shape": list(self.source.shape), "dtype": str(self.source.dtype)},
        }
        self._provenance = attrs
        create_output(
            self.output_path,
            shape=plan.out_shape,
            channels=plan.out_channels,
            dtype=plan.out_dtype,
            chunks=_pair(self.options["out_chunks"]),
            shards=plan.out_chunks if self.options["out_shards"] else None,
            layout=output_layout(self.source.layout, plan.out_channels),
            attrs=attrs,
            extra_attrs=metadata_to_attrs(meta),
            source_path=self.source.path,
            overwrite=self.overwrite or self.export,
        )

    # ----------------------------------------------------------------- step 2
    def infer(self) -> list:
        """Submit one model task per batch of windows; returns their handles."""
        ex = self.executor
        self._t_infer = time.perf_counter()
        self._ctx_h = ex.share(self.ctx)
        groups = self.plan.tasks()
        self.infer_handles = ex.map(
            infer_windows,
            [self._ctx_h] * len(groups),
            groups,
            [self._payload_h] * len(groups),
            keys=[f"tg-infer-{self.token}-{g}" for g in range(len(groups))],
            resources=ex.infer_resources,
        )
        if hasattr(ex, "check_restrictions"):
            ex.check_restrictions(self.infer_handles)
        return self.infer_handles

    # ----------------------------------------------------------------- step 3
    def blend(self, corrections=None) -> list:
        """Submit one blend task per output chunk, depending on the batches that cover it."""
        plan, ex = self.plan, self.executor
        batch_of = {}
        for g, group in enumerate(plan.tasks()):
            for i in group:
                batch_of[i] = g
        boxes, indices, deps, keys = [], [], [], []
        for cy in range(plan.chunk_grid[0]):
            for cx in range(plan.chunk_grid[1]):
                box = plan.chunk_box(cy, cx)
                boxes.append(box)
                indices.append((cy, cx))
                groups = sorted({batch_of[i] for i in plan.windows_for_box(*box)})
                deps.append([self.infer_handles[g] for g in groups] if self.infer_handles else [])
                keys.append(f"tg-blend-{self.token}-{cy}-{cx}")
        n = len(boxes)
        corr_h = ex.share(corrections) if corrections is not None else None  # sent once, not with each task
        # ordering only: a chunk starts once the model tasks covering it have finished (their results
        # are not sent along, see tilegraph.engine.executor)
        handles = ex.map(blend_chunk, [self._ctx_h] * n, boxes, indices, [corr_h] * n, keys=keys, after=deps)
        self.blend_handles = handles
        return handles

    def solve_corrections(self):
        """Wait for every model task, gather the window statistics and solve the global correction.

        Statistics are a few hundred bytes per window; the solve runs here, on the client.
        """
        from tilegraph.reconcile.solve import solve_global
        from tilegraph.reconcile.stats import pairs_from_windows

        t0 = time.perf_counter()
        results = self.wait_infer()
        windows = [w for r in results for w in r["stats"]]
        pairs = pairs_from_windows(self.plan, windows)
        refs = [w.ref for w in windows if w.ref is not None]
        corrections = solve_global(
            self.plan,
            pairs,
            refs,
            mode=self.reconcile,
            strength=float(self.reconcile_options["strength"]),
            channels=self.plan.out_channels,
        )
        if self.reconcile_options["field"]:
            corrections = corrections.as_field(self.plan)
        self.corrections = corrections
        self.timings["reconcile_s"] = time.perf_counter() - t0
        return corrections

    def wait_infer(self) -> list:
        """Wait for every model task (with progress)."""
        return self.executor.wait(self.infer_handles, progress=self.progress, label="infer")

    # ----------------------------------------------------------------- step 4
    def finish(self, *, keep_tile_store: bool = False) -> RunResult:
        """Wait for every chunk, write the completion marker, export if asked, clean up."""
        ex = self.executor
        stats = ex.wait(self.infer_handles + self.blend_handles, progress=self.progress, label="tiles")
        infer_stats = stats[: len(self.infer_handles)]
        blend_stats = stats[len(self.infer_handles) :]
        clipped = int(sum(s["clipped"] for s in blend_stats) + sum(s["clipped"] for s in infer_stats))
        plan = self.plan
        t_end = time.perf_counter()
        self.timings["run_s"] = t_end - getattr(self, "_t_infer", t_end)
        self.timings["model_s_sum"] = float(sum(s["model_s"] for s in infer_stats))
        self.timings["model_wait_s_sum"] = float(sum(s.get("model_wait_s", 0.0) for s in infer_stats))
        self.timings["read_s_sum"] = float(sum(s["read_s"] for s in infer_stats))
        self.timings["write_s_sum"] = float(sum(s["write_s"] for s in infer_stats))
        self.timings["blend_s_sum"] = float(sum(s["seconds"] for s in blend_stats))
        devices = sorted({s["device"] for s in infer_stats})
        self.timings["total_s"] = self.timings["prepare_s"] + self.timings["run_s"]
        mp = plan.shape[0] * plan.shape[1] / 1e6
        self.timings["megapixels_per_s"] = mp / max(self.timings["total_s"], 1e-9)
        if self.corrections is not None:
            self.timings.setdefault("reconcile_s", 0.0)
        final = {"oom_splits": int(sum(s.get("oom_splits", 0) for s in infer_stats)), "clipped": clipped,
                 "reconcile": self._reconcile_summary(), "timings": {k: round(v, 4) for k, v in self.timings.items()}, "devices": devices}
        mark_complete(self.output_path, final)
        report = self._quality() if self.qa else None
        output: object
        path = self.output_path
        if self.export:
            path = self._export(final)
            output = path
        else:
            import zarr

            output = zarr.open_array(self.output_path, mode="r")
        if not keep_tile_store and exists(self.scratch):  # the tile store, staged source and export copy
            remove_path(self.scratch)
        return RunResult(
            output=output,
            path=path,
            plan=plan,
            timings=dict(self.timings),
            clipped=clipped,
            model={"name": self.spec.name, "devices": devices},
            report=report,
            extra={
                "autotile": self.autotile.to_dict() if self.autotile is not None else None,
                "oom_splits": int(sum(s.get("oom_splits", 0) for s in infer_stats)),
            },
        )

    def _reconcile_summary(self) -> dict | None:
        c = self.corrections
        if c is None:
            return None
        base = getattr(c, "corrections", c)  # a smooth field wraps the per-window table
        return {
            "mode": self.reconcile,
            "options": dict(self.reconcile_options),
            "max_abs_gain_minus_1": float(np.max(np.abs(base.gain - 1.0))),
            "max_abs_offset": float(np.max(np.abs(base.offset))),
            "solve": _plain(getattr(base, "info", None) or {}),
        }

    def _quality(self) -> dict:
        """Seam metrics of the finished output and the QA report (JSON + HTML) beside the destination."""
        import zarr

        from tilegraph.quality.metrics import seam_metrics
        from tilegraph.quality.report import summary_html, write_report
        from tilegraph.source.view import SourceView

        t0 = time.perf_counter()
        out = zarr.open_array(self.output_path, mode="r")
        image = out if self.ctx.out_layout != "CYX" else np.moveaxis(out[:], 0, -1)
        rec = self.ctx.reconcile or {}
        if rec.get("reference") == "thumbnail":  # measure colour against what reconciliation aimed at
            reference = rec["thumbnail"]
        else:
            reference = SourceView(self.source) if self.source.channels == self.plan.out_channels else None
        metrics = seam_metrics(image, self.plan, reference=reference, icc_profile=self.source.metadata.icc_profile)
        out_dir = self.qa if isinstance(self.qa, str) else f"{self.destination.rstrip('/')}.qa"
        paths = write_report(metrics, image, self.plan, out_dir, title=f"tilegraph QA: {self.destination}")
        self.timings["qa_s"] = time.perf_counter() - t0
        return {
            "metrics": metrics,
            "paths": {k: str(v) for k, v in paths.items()},
            "summary_html": summary_html(metrics),
        }

    def _validate_export(self) -> None:
        """Refuse an impossible export (16-bit JPEG, missing folder, ...) before any inference."""
        from tilegraph.engine.export import validate_task

        plan = self.plan
        validate_task(
            self.destination,
            shape=(*plan.out_shape, plan.out_channels),
            dtype=plan.out_dtype,
            metadata=self.source.metadata,
            options=self.export_options,
        )

    def _export(self, final: dict) -> str:
        from tilegraph.engine.export import export_task

        provenance = {**self._provenance, **final}  # version, model, plan, timings, clipped, ...
        h = self.executor.submit(
            export_task,
            self.output_path,
            self.destination,
            self.source.metadata,
            provenance,
            self.export_options,
            key=f"tg-export-{self.token}",
        )
        return self.executor.wait([h], progress=self.progress, label="export")[0]

    def abort(self) -> None:
        """Cancel everything still running and remove the scratch space (the output stays marked incomplete)."""
        self.executor.cancel(self.infer_handles + self.blend_handles)
        try:
            if exists(self.scratch):
                remove_path(self.scratch)
        except OSError:  # best effort: never hide the error that caused the abort
            pass


def _model_channels(src: Source, spec: ModelSpec) -> tuple[int, int]:
    """Channels the model sees and channels passed through (alpha)."""
    c = src.channels
    want = spec.in_channels
    if want is None or want == c:
        return c, 0
    if want < c and (c, want) in ((4, 3), (2, 1)):
        return want, c - want
    raise InputError(
        f"the model takes {want} channels, the image has {c}",
        path=src.path,
        hint="convert the image or declare the model's in_channels",
    )



def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _probe_tile_task(spec, payload, options: dict):
    """Task: :func:`tilegraph.infer.autotile.probe_tile` with its options in one dict."""
    from tilegraph.infer.autotile import probe_tile

    return probe_tile(spec, payload, **options)


def _plain(d: dict) -> dict:
    """JSON-able copy of a small diagnostics dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist() if v.size <= 64 else f"array{v.shape}"
        elif isinstance(v, dict):
            v = _plain(v)
        out[str(k)] = v
    return out


def _call(fn, args: tuple, kwargs: dict):
    """Task wrapper: ``fn(*args, **kwargs)`` (futures inside ``args`` are resolved by the executor)."""
    return fn(*args, **kwargs)
