"""The prepare stage: check the destination, probe the model, build the plan, stage the source, create stores.

Everything that can refuse a run does so here, before any inference: an unknown blend mode, a
destination that is the source, a 16-bit JPEG, a model whose declarations contradict its output, a
destination another run holds, a disk too small for the plan. The destination's claim is taken first
and held until :mod:`~tilegraph.engine.finish` (:mod:`tilegraph.engine.destination`); a resumed run
reopens the interrupted run's stores and computes only what they lack (:mod:`tilegraph.engine.resume`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import numpy as np

from tilegraph.blend import get_blender
from tilegraph.engine.context import PreparedRun, RunContext
from tilegraph.engine.destination import DestinationGuard
from tilegraph.engine.executor import Executor, InProcessExecutor
from tilegraph.engine.probe import autotile, checked_scale, probe
from tilegraph.engine.progress import Progress
from tilegraph.engine.resume import plan_work, reopen_writer, tile_store
from tilegraph.engine.space import check_free_space, space_needs
from tilegraph.engine.thumbnail import Thumbnails
from tilegraph.errors import InputError, ModelOutputError
from tilegraph.infer.spec import ModelSpec
from tilegraph.options import RunOptions
from tilegraph.outputs import get_kind
from tilegraph.outputs.image import ReconcileContext
from tilegraph.passes import get_pass
from tilegraph.plan import make_plan
from tilegraph.sink import OutputLayout, output_layout, sink_for
from tilegraph.sink.abc import Sink
from tilegraph.source.abc import Source

__all__ = ["prepare", "stage_source"]


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
    sink = sink_for(destination, options.export)
    guard = DestinationGuard.open(destination, source_path=source.path, output=options.output, run_id=token)
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
    guard: DestinationGuard,
    token: str,
    t0: float,
) -> PreparedRun:
    from tilegraph._version import __version__

    out_opts = options.output
    blender = get_blender(options.blend)
    kind = get_kind(options.task)
    passes = tuple(get_pass(name) for name in options.passes)

    # the model: sent to its workers once, then probed where it runs
    payload = executor.share(model, model_only=True) if spec.kind != "path" else None
    found = probe(executor, spec, payload, source, token)
    spec = spec.with_declarations(found.declared)
    scale = checked_scale(spec, found, path=source.path)
    if spec.out_channels is not None and spec.out_channels != found.out_channels:
        raise ModelOutputError(
            f"model declares out_channels={spec.out_channels} but returned {found.out_channels} channels on a probe input",
            path=source.path,
        )
    out_dtype = str(np.dtype(out_opts.dtype or source.dtype))
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
        out_channels=found.out_channels + found.passthrough,
        out_dtype=out_dtype,
        out_chunks=out_opts.shards or out_opts.chunks,
        blend=blender.name,
        pad_mode=tiling.pad_mode,
        batch_size=batch_size,
        batches_per_task=tiling.batches_per_task,
        halo=spec.halo,
        reconcile=rec.mode,
        store_dtype=blender.store_dtype(out_dtype, corrected=rec.mode is not None or bool(passes)),
    )
    if rec.mode and rec.reference == "input" and found.out_channels != found.model_channels:
        raise InputError(
            f"reconcile reference 'input' needs the model to keep the channel count ({found.model_channels} in, "
            f"{found.out_channels} out)",
            path=source.path,
            hint="use reconcile_options={'reference': 'thumbnail'} (the model run on a thumbnail) or None",
        )
    probe_s = time.perf_counter() - t0
    layout = None
    if kind.writes_array:
        layout = OutputLayout(
            shape=plan.out_shape,
            channels=int(plan.out_channels or 0),
            dtype=out_dtype,
            layout=output_layout(source.layout, int(plan.out_channels or 0)),
            chunks=_pair(out_opts.chunks),
            shards=plan.out_chunks if out_opts.shards else None,
        )
        sink.validate(layout, source.metadata)

    # the destination's own stores: checked for space, then made (or adopted on resume)
    inprocess = isinstance(executor, InProcessExecutor)
    staged_bytes = 0 if (source.shareable or inprocess) and source.region_reads else _nbytes(source)

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
    staged = stage_source(source, scratch, executor, progress, token)
    stage_s = time.perf_counter() - t1
    tiles = None
    if kind.uses_tile_store:
        oy, ox = plan.out_window_shape
        shape = (plan.n_windows, int(plan.out_channels or 0), oy, ox)
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
        "source": {"path": source.path, "shape": list(source.shape), "dtype": str(source.dtype)},
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
    )
    reconcile = None
    if rec.mode:
        reconcile = ReconcileContext(reference=rec.reference, sigma=float(rec.sigma))
        if rec.reference == "thumbnail":
            thumb, factor = thumbnails.get()
            reconcile = replace(reconcile, thumbnail=thumb, factor=factor)
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
        window_timeout=options.execution.window_timeout,
        inflight=f"{scratch}/inflight" if "://" not in scratch else None,
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
        guard=guard,
        work=work,
    )


def _nbytes(source: Source) -> int:
    """Bytes of the source's pixels (what staging writes)."""
    rows, cols = source.shape[:2]
    return int(rows) * int(cols) * int(source.channels) * np.dtype(source.dtype).itemsize
