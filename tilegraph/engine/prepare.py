"""The prepare stage: check the destination, probe the model, build the plan, stage the source, create stores.

Everything that can refuse a run does so here, before any inference: an unknown blend mode, a
destination that is the source, a 16-bit JPEG, a model whose declarations contradict its output.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import replace

from tilegraph.blend import get_blender
from tilegraph.engine.codecs import configure_codecs
from tilegraph.engine.context import PreparedRun, RunContext
from tilegraph.engine.executor import Executor, InProcessExecutor
from tilegraph.engine.mask import resolve_mask
from tilegraph.engine.normsync import plan_norm
from tilegraph.engine.probe import autotile, checked_scale, probe
from tilegraph.engine.progress import Progress
from tilegraph.engine.reconcile import reconcile_context
from tilegraph.engine.thumbnail import Thumbnails
from tilegraph.errors import DestinationError, InputError, ModelOutputError, PlanError
from tilegraph.infer.formats import to_payload
from tilegraph.infer.spec import ModelSpec
from tilegraph.options import RunOptions
from tilegraph.outputs import OutputKind, get_kind
from tilegraph.outputs.probabilities import CoarseContext
from tilegraph.passes import get_pass
from tilegraph.plan import make_plan
from tilegraph.sink import OutputLayout, Sink, sink_for
from tilegraph.sink.builtin import scratch_writer
from tilegraph.sink.table_sink import TableSink
from tilegraph.sink.tile_store import TileStore
from tilegraph.source.abc import Source

__all__ = ["blend_passes", "prepare", "stage_source"]


def blend_passes(options: RunOptions) -> tuple:
    """The passes the blend options ask for, in order: ``refine="seams"``, then ``lowfreq``."""
    out = []
    if options.blend.refine == "seams":
        out.append(get_pass("refine-seams"))
    if options.blend.lowfreq == "thumbnail":
        out.append(get_pass("lowfreq", split=options.blend.lowfreq_split))
    return tuple(out)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def stage_source(
    source: Source, scratch: str, executor: Executor, progress: Progress | None, token: str
) -> Source:
    """The source as tasks can read it: as it is when shareable with cheap region reads, else staged.

    In-memory arrays are written from this process (their pixels live here); striped TIFFs and
    decoded-once PNG/JPEG files are staged by worker tasks into a chunked Zarr in scratch space.
    """
    inprocess = isinstance(executor, InProcessExecutor)
    if (source.shareable or inprocess) and source.region_reads:
        return source
    tasks, staged = source.stage_tasks(f"{scratch}/source.zarr")
    if not source.shareable:  # pixels live in this process: write them from here
        for i, task in enumerate(tasks):
            task()
            if progress is not None:
                progress.update("stage", i + 1, len(tasks))
        return staged
    handles = [executor.submit(t, key=f"tg-stage-{token}-{i}") for i, t in enumerate(tasks)]
    executor.wait(handles, progress=progress, label="stage")
    return staged


def _refuse_weighted_without_overlap(plan, blender, spec: ModelSpec) -> None:
    """A weighted blend needs an overlap to blend across: without one it is ``crop`` with seams, silently."""
    from tilegraph.blend.builtin import WeightedBlender

    if not isinstance(blender, WeightedBlender):
        return
    axes = [name for name, g in (("rows", plan.y), ("columns", plan.x)) if g.count > 1 and g.overlap == 0]
    if not axes:
        return
    if spec.halo:
        overlap = f"overlap={2 * int(spec.halo)} (twice the model's declared halo {spec.halo})"
    else:
        overlap = (
            "an overlap of twice the model's receptive-field radius (`tilegraph plan IMAGE --model MODEL` "
            "measures it and proposes one)"
        )
    raise PlanError(
        f"overlap 0 along {' and '.join(axes)} with blend={blender.name!r}: there is nothing to blend across, "
        "so every window edge would be a visible seam",
        hint=f"use blend='crop' to place windows side by side, or {overlap}",
    )


def prepare(
    source: Source,
    destination: str,
    *,
    spec: ModelSpec,
    model: object,
    options: RunOptions,
    executor: Executor,
    progress: Progress | None,
) -> PreparedRun:
    """Build the :class:`~tilegraph.engine.context.PreparedRun` every later stage takes."""
    from tilegraph._version import __version__

    t0 = time.perf_counter()
    token = uuid.uuid4().hex[:8]
    destination = destination.removeprefix("file://")
    out_opts = options.output
    kind = get_kind(options.task).configure(options)
    sink = _sink(destination, options, kind)
    sink.check(source_path=source.path, overwrite=out_opts.overwrite)
    blender = get_blender(options.blend)
    passes = blend_passes(options) + tuple(get_pass(name) for name in options.passes)
    if options.diff_merge.enabled:  # last, so that nothing changes the pixels it keeps
        from tilegraph.outputs.diffmerge import DiffMergePass  # scipy: only when asked

        passes += (DiffMergePass(options.diff_merge),)
    scratch = out_opts.scratch or (
        f"{destination.rstrip('/')}.tilegraph-tmp-{token}"
        if destination
        else os.path.join(tempfile.gettempdir(), f"tilegraph-tmp-{token}")
    )
    coarse = options.probabilities.coarse
    _check_kind_options(options, kind, passes)

    pipelines = configure_codecs(executor, options.execution.codec_pipeline)
    # the model: sent to its workers once (as bytes when cloudpickle cannot send it), then probed where it runs
    payload = None
    if spec.kind in ("module", "callable"):
        sent = model if isinstance(executor, InProcessExecutor) else to_payload(model)
        payload = executor.share(sent, model_only=True)
    found = probe(executor, spec, payload, source, token, output=kind.model_output, coarse=coarse)
    spec = spec.with_declarations(found.declared)
    scale = checked_scale(spec, found, path=spec.target if spec.kind == "file" else None)
    if spec.out_channels is not None and spec.out_channels != found.out_channels:
        raise ModelOutputError(
            f"model {spec.name} declares out_channels={spec.out_channels} but returned {found.out_channels} "
            "channels on a probe input (before tiling)",
            hint="fix the model's output or its out_channels declaration",
        )
    out_dtype = kind.output_dtype(out_opts.dtype, str(source.dtype))
    tiling = options.tiling
    tile, batch_size = tiling.tile, tiling.batch_size
    auto = None
    if tile == "auto":
        auto = autotile(
            executor,
            spec,
            payload,
            source,
            channels=found.model_channels,
            scale=scale,
            overlap=tiling.overlap,
            token=token,
        )
        tile, batch_size = auto.tile, auto.batch
    rec = options.reconcile
    plan = make_plan(
        source.shape,
        tile=tile,
        overlap=tiling.overlap,
        channels=source.channels,
        dtype=str(source.dtype),
        layout=source.layout,
        scale=scale,
        model_stride=int(spec.stride or 1),
        out_channels=found.out_channels + (found.passthrough if kind.passthrough else 0),
        out_dtype=out_dtype,
        out_chunks=out_opts.shards or out_opts.chunks,
        blend=blender.name,
        pad_mode=tiling.pad_mode,
        batch_size=batch_size,
        batches_per_task=tiling.batches_per_task,
        halo=spec.halo,
        reconcile=rec.mode,
        # a confidence channel is stored beside the outputs: never rounded to the output dtype
        store_dtype="float32"
        if found.confidence
        else kind.store_dtype(out_dtype)
        or blender.store_dtype(out_dtype, corrected=rec.mode is not None or bool(passes)),
        # norm_sync="exact": the first windows start at the image's start, so the model sees its near
        # edges as whole-image inference does (a crop grid would start in the padding)
        origin=0 if options.model.norm_sync == "exact" else "auto",
    )
    _refuse_weighted_without_overlap(plan, blender, spec)
    for p in passes:
        p.check(plan)
    masked = options.mask.mask is not None
    kind = kind.specialise(plan, blender, corrected=rec.mode is not None, passes=bool(passes), masked=masked)
    if rec.mode and rec.reference == "input" and found.out_channels != found.model_channels:
        raise InputError(
            f"reconcile reference 'input' needs the model to keep the channel count ({found.model_channels} in, "
            f"{found.out_channels} out)",
            path=source.path,
            hint="use reconcile_options={'reference': 'auto'} (the default: the reference is chosen by "
            "measuring the model on the run's thumbnail)",
        )
    norm = plan_norm(
        executor,
        spec,
        payload,
        plan,
        channels=found.model_channels,
        mode=options.model.norm_sync,
        token=token,
        path=source.path,
    )
    probe_s = time.perf_counter() - t0
    layout = None
    if kind.writes_array:
        channels, dtype, axes = kind.output_layout(plan, source.layout)
        layout = OutputLayout(
            shape=plan.out_shape,
            channels=channels,
            dtype=dtype,
            layout=axes,
            chunks=plan.out_chunks if not out_opts.shards else plan.chunk_extent(out_opts.chunks),
            shards=plan.out_chunks if out_opts.shards else None,
            alpha=found.passthrough > 0,
        )
        sink.validate(layout, source.metadata)

    t1 = time.perf_counter()
    staged = stage_source(source, scratch, executor, progress, token).cached(token)
    stage_s = time.perf_counter() - t1
    thumb_size = int(options.thumbnail or max(256, *plan.window_shape))
    plan, mask, mask_report = resolve_mask(
        options.mask,
        plan=plan,
        staged=staged,
        kind=kind,
        out_channels=layout.channels if layout is not None else 0,
        factor=max(1, -(-max(source.shape) // thumb_size)),
        scratch=scratch,
        executor=executor,
    )
    norm.check(plan)  # a mask may have moved the grid
    tiles = None
    if kind.uses_tile_store:
        oy, ox = plan.out_window_shape
        tiles = TileStore.create(
            f"{scratch}/tiles.zarr",
            (plan.n_windows, int(plan.out_channels or 0) + int(found.confidence), oy, ox),
            plan.tile_store_dtype,
        )
    provenance = {
        "version": __version__,
        "model": {
            "name": spec.name,
            "kind": spec.kind,
            "target": spec.target,
            "weights": spec.weights,
            "weights_sha256": spec.weights_sha256,
            "precision": spec.precision,
            "channels_last": spec.channels_last,
            "compile": spec.compile,
            "declared": dict(spec.declared),
        },
        "options": options.to_dict(),
        "blend": blender.describe(),
        "passes": [p.describe() for p in passes],
        "plan": plan.to_dict(),
        "autotile": auto.to_dict() if auto is not None else None,
        "normalisation": norm.to_dict(),
        "source": {"path": source.path, "shape": list(source.shape), "dtype": str(source.dtype)},
        "mask": mask_report,
        "codec_pipelines": pipelines,
    }
    final_writer = writer = None
    if layout is not None:
        final_writer = sink.create(
            layout,
            attrs=provenance,
            metadata=source.metadata,
            scratch=scratch,
            source_path=source.path,
            overwrite=out_opts.overwrite,
        )
        writer = final_writer
        if passes:  # blending writes floats to scratch; the last pass writes the destination
            writer = scratch_writer(f"{scratch}/blend.zarr", replace(layout, dtype="float32"))
    thumbnails = Thumbnails(
        executor,
        staged,
        spec,
        payload,
        plan=plan,
        channels=found.model_channels,
        size=options.thumbnail,
        token=token,
        output=kind.model_output,
        extra_channels=found.coarse_channels,
        norm_stats=norm.active and norm.mode == "thumbnail",
    )
    reconcile = reconcile_context(rec, thumbnails)
    coarse_ctx = None
    if found.coarse is not None:  # the coarse pass: the run's one thumbnail inference
        thumb, _ = thumbnails.get()
        coarse_ctx = CoarseContext(
            thumbnail=thumb,
            factor=float(thumbnails.factor / plan.scale_fraction),  # source px per thumbnail output px
            mode=found.coarse,
            keyword=found.coarse_keyword,
        )
    ctx = RunContext(
        plan=plan,
        source=staged,
        spec=spec,
        model_channels=found.model_channels,
        blender=blender,
        kind=kind,
        tile_store=tiles,
        writer=writer,
        reconcile=reconcile,
        split_halo=int(spec.halo if spec.halo is not None else min(plan.overlap) // 2),
        confidence=found.confidence,
        coarse=coarse_ctx,
        mask=mask,
    )
    return PreparedRun(
        token=token,
        destination=destination,
        options=options,
        source=source,
        spec=spec,
        plan=plan,
        context=ctx,
        sink=sink,
        final_writer=final_writer,
        out_layout=layout,
        passes=passes,
        scratch=scratch,
        payload=payload,
        provenance=provenance,
        probe=found,
        autotile=auto,
        thumbnails=thumbnails,
        timings={"probe_s": probe_s, "stage_s": stage_s, "prepare_s": time.perf_counter() - t0},
        mask_report=mask_report,
        norm=norm,
    )


def _check_kind_options(options: RunOptions, kind: OutputKind, passes: tuple) -> None:
    """Refuse options that need float maps for a kind whose model returns labels or boxes."""
    if kind.model_output == "array":
        if options.probabilities.coarse is not None and options.tiling.tile == "auto":
            raise InputError("tile='auto' probes the model without its coarse input", hint="give tile=")
        return
    given = {
        "coarse=": options.probabilities.coarse is not None,
        "reconcile=": options.reconcile.mode is not None,
        "passes (or diff_merge=True)": bool(passes),
        "tile='auto'": options.tiling.tile == "auto",
    }
    for name, on in given.items():
        if on:
            raise InputError(
                f"{name} works on float maps; task {options.task!r} gets {kind.model_output} from the model",
                hint=f"leave {name} out for task {options.task!r}",
            )


def _sink(destination: str, options: RunOptions, kind: OutputKind) -> Sink:
    """The destination's sink; no destination (``None``) only for kinds without an array (detections)."""
    if not destination:
        if kind.writes_array:
            raise InputError(f"task {options.task!r} writes an image: give a destination")
        return TableSink("")
    sink = sink_for(destination, options.export)
    if not kind.writes_array and not sink.holds_tables:
        raise DestinationError(
            f"task {options.task!r} gives a table, not an image",
            path=destination,
            hint="write it to a .csv or .parquet destination, or pass None (rows in the run's result only)",
        )
    return sink
