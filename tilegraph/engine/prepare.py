"""The prepare stage: check the destination, probe the model, build the plan, stage the source, create stores.

Everything that can refuse a run does so here, before any inference: an unknown blend mode, a
destination that is the source, a 16-bit JPEG, a model whose declarations contradict its output, a
destination another run holds, a disk too small for the plan. The destination's claim is taken first
and held until :mod:`~tilegraph.engine.finish` (:mod:`tilegraph.engine.destination`); a resumed run
reopens the interrupted run's stores and computes only what they lack (:mod:`tilegraph.engine.resume`).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import replace

from tilegraph.blend import get_blender
from tilegraph.engine.choices import (
    blend_passes,
    check_kind_options,
    choose_sink,
    refuse_weighted_without_overlap,
)
from tilegraph.engine.codecs import configure_codecs
from tilegraph.engine.context import PreparedRun, RunContext
from tilegraph.engine.destination import DestinationGuard
from tilegraph.engine.executor import Executor, InProcessExecutor
from tilegraph.engine.mask import resolve_mask
from tilegraph.engine.normsync import plan_norm
from tilegraph.engine.probe import autotile, checked_scale, probe
from tilegraph.engine.progress import Progress
from tilegraph.engine.reconcile import reconcile_context
from tilegraph.engine.resume import plan_work, reopen_writer, tile_store
from tilegraph.engine.space import check_free_space, space_needs
from tilegraph.engine.stage import source_bytes, stage_source
from tilegraph.engine.thumbnail import Thumbnails
from tilegraph.errors import InputError, ModelOutputError
from tilegraph.infer.formats import to_payload
from tilegraph.infer.spec import ModelSpec
from tilegraph.options import RunOptions
from tilegraph.outputs import OutputKind, get_kind
from tilegraph.outputs.probabilities import CoarseContext
from tilegraph.passes import get_pass
from tilegraph.plan import make_plan
from tilegraph.sink import OutputLayout, Sink
from tilegraph.source.abc import Source

__all__ = ["prepare"]


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
    """Build the :class:`~tilegraph.engine.context.PreparedRun` every later stage takes.

    The destination is checked and claimed before anything else; on any error the claim is released
    and whatever a resume can use is kept.
    """
    t0 = time.perf_counter()
    token = uuid.uuid4().hex[:8]
    destination = destination.removeprefix("file://")
    kind = get_kind(options.task).configure(options)
    sink = choose_sink(destination, options, kind)
    # a run without a destination file (a table kept in memory) claims a folder of its own
    claimed = destination or os.path.join(tempfile.gettempdir(), f"tilegraph-run-{token}")
    guard = DestinationGuard.open(claimed, source_path=source.path, output=options.output, run_id=token)
    try:
        sink.check(source_path=source.path, overwrite=options.output.overwrite or guard.will_resume)
        return _prepare(
            source,
            destination,
            spec=spec,
            model=model,
            options=options,
            executor=executor,
            progress=progress,
            sink=sink,
            kind=kind,
            guard=guard,
            token=token,
            t0=t0,
        )
    except BaseException:
        guard.abort()
        raise


def _prepare(
    source: Source,
    destination: str,
    *,
    spec: ModelSpec,
    model: object,
    options: RunOptions,
    executor: Executor,
    progress: Progress | None,
    sink: Sink,
    kind: OutputKind,
    guard: DestinationGuard,
    token: str,
    t0: float,
) -> PreparedRun:
    from tilegraph._version import __version__

    out_opts = options.output
    blender = get_blender(options.blend)
    passes = blend_passes(options) + tuple(get_pass(name) for name in options.passes)
    if options.diff_merge.enabled:  # last, so that nothing changes the pixels it keeps
        from tilegraph.outputs.diffmerge import DiffMergePass  # scipy: only when asked

        passes += (DiffMergePass(options.diff_merge),)
    coarse = options.probabilities.coarse
    check_kind_options(options, kind, passes)

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
    refuse_weighted_without_overlap(plan, blender, spec)
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

    # the destination's own stores: checked for space, then made (or adopted on resume)
    inprocess = isinstance(executor, InProcessExecutor)
    staged_bytes = 0 if (source.shareable or inprocess) and source.region_reads else source_bytes(source)

    def needs(fraction: tuple[float, float] = (1.0, 1.0)) -> list:
        return space_needs(
            plan=plan,
            layout=layout,
            tile_store=kind.uses_tile_store,
            staged_source=staged_bytes,
            exports=sink.exports,
            passes=len(passes),
            scratch_parent=guard.scratch_parent,
            destination=destination,
            fraction=fraction,
        )

    if out_opts.check_space and not guard.will_resume:
        check_free_space(needs())
    guard.begin(
        plan=plan,
        model={"name": spec.name, "token": spec.token, "weights_sha256": spec.weights_sha256},
        options=options,
        exports=sink.exports,
        n_chunks=plan.chunk_grid[0] * plan.chunk_grid[1],
        source={"path": source.path, "shape": list(source.shape), "dtype": str(source.dtype)},
    )
    scratch = guard.scratch
    if not sink.exports:
        sink.staging = guard.staging
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
        shape = (plan.n_windows, int(plan.out_channels or 0) + int(found.confidence), oy, ox)
        tiles = tile_store(guard, f"{scratch}/tiles.zarr", shape, plan.tile_store_dtype)
    provenance = {
        "version": __version__,
        "run_id": token,
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
        if guard.resumed:
            final_writer = sink.reopen(layout, attrs=provenance, metadata=source.metadata, scratch=scratch)
        if final_writer is None:
            if not passes:
                guard.forget("chunks")
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
            writer = reopen_writer(guard, f"{scratch}/blend.zarr", replace(layout, dtype="float32"), "chunks")
    solved = guard.pass_result("reconcile")[0]
    work = plan_work(
        guard, plan, blender, every_window=bool(rec.mode and not solved) or kind.needs_all_results
    )
    if work is not None:
        if out_opts.check_space:
            n_chunks = plan.chunk_grid[0] * plan.chunk_grid[1]
            check_free_space(needs((len(work.windows) / plan.n_windows, len(work.chunks) / max(1, n_chunks))))
        if progress is not None:
            progress.note(work.describe())
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
        window_timeout=options.execution.window_timeout,
        inflight=f"{scratch}/inflight" if "://" not in scratch else None,
        token=token,
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
        guard=guard,
        work=work,
    )
