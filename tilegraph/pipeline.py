"""The one module that composes the stages: :func:`run`.

::

    source ──> plan ──> infer ──> reconcile ──> blend ──> sink ──> quality

Options are normalised once, here, into a frozen :class:`~tilegraph.options.RunOptions`; each stage
(:mod:`tilegraph.engine.prepare`, ``.infer``, ``.reconcile``, ``.assemble``, ``.passes``,
``.finish``) takes and returns typed values.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tilegraph.engine.result import RunResult
from tilegraph.options import RunOptions, load_config

__all__ = ["run", "RunResult"]


def run(
    source: Any,
    destination: str | os.PathLike,
    *,
    model: Any,
    tile: Any = 512,
    overlap: Any = 64,
    blend: str = "cosine",
    client: Any = None,
    scale: Any = None,
    batch_size: int = 4,
    batches_per_task: int = 1,
    out_chunks: Any = 1024,
    out_shards: Any = None,
    output_dtype: str | None = None,
    overwrite: bool = False,
    pad_mode: str = "reflect",
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    device: str = "auto",
    weights: str | None = None,
    factory_kwargs: dict | None = None,
    in_channels: int | None = None,
    out_channels: int | None = None,
    model_stride: int | None = None,
    halo: int | None = None,
    source_options: Any = None,
    export_options: Any = None,
    scratch: str | None = None,
    resume: bool = False,
    check_space: bool = True,
    progress: bool | None = None,
    window_timeout: float | None = None,
    allowed_failures: int | None = None,
    keep_tile_store: bool = False,
    reconcile: str | None = None,
    reconcile_options: Any = None,
    qa: bool | str = False,
    quality_options: Any = None,
    thumbnail: int | None = None,
    task: str = "image",
    passes: Any = (),
    options: RunOptions | str | os.PathLike | None = None,
    security: Any = None,
) -> RunResult:
    """Run ``model`` over ``source`` tile by tile and write a seam-free output to ``destination``.

    Parameters
    ----------
    source
        Path or URL (Zarr, OME-Zarr, TIFF, PNG, JPEG), a numpy/dask/zarr array, or a :class:`~tilegraph.source.Source`.
    destination
        Output path or URL: a Zarr v3 array (``.zarr`` or no suffix), or a ``.tif``/``.png``/``.jpg``
        file (written from a Zarr in scratch space in one final step). Other suffixes are refused.
    model
        A ``torch.nn.Module``, an import path ``"package.module:factory"`` (with ``weights=``), or a
        numpy callable on ``(N, C, H, W)`` float32 batches.
    tile, overlap
        Window and overlap in source pixels (overlap may be a fraction of ``tile``). ``tile="auto"``
        probes the real model on a worker's device and picks the largest window and batch that fit
        its memory with a margin (recorded in ``result.extra["autotile"]`` and the output's metadata).
    blend
        ``"crop"``, ``"linear"``, ``"cosine"`` (default), ``"gaussian"``, or a registered mode
        (:func:`tilegraph.blend.register_blender`).
    client
        ``None`` starts an embedded local cluster; ``"inprocess"`` runs here without a cluster; a
        scheduler address (``tcp://`` or ``tls://``) or a ``distributed.Client`` uses that cluster.
    scale, in_channels, out_channels, model_stride, halo
        Override what the model declares (``scale`` is also measured with a probe and checked).
    batch_size, batches_per_task
        Windows per forward pass, and forward passes per model task. Two model tasks run at once per
        worker and take turns on the model, so one reads and writes while the other computes.
    out_chunks, out_shards
        Output Zarr chunk extent (independent of the window grid) and, optionally, shard extent (a
        multiple of the chunks). Each output chunk, or each shard when sharded, is written by one task.
    output_dtype
        Defaults to the source dtype; pass ``"float32"`` for latents.
    overwrite
        Replace a previous tilegraph output or an empty folder at the destination. Anything else
        (the source, a folder holding it or inside it, unrelated files) is refused, nothing deleted.
    pad_mode, precision, channels_last, compile, device, weights, factory_kwargs
        See :class:`~tilegraph.options.TilingOptions` and :class:`~tilegraph.options.ModelOptions`.
    source_options, export_options, reconcile_options, quality_options
        :class:`~tilegraph.options.SourceOptions` (``level=``, ``series=``...),
        :class:`~tilegraph.options.ExportOptions` (TIFF compression, JPEG quality...),
        :class:`~tilegraph.options.ReconcileOptions` (``reference``, ``strength``, ``field``,
        ``sigma``), :class:`~tilegraph.options.QualityOptions`; objects or dicts (an unknown key is
        an error naming it).
    scratch, keep_tile_store
        Folder in which the run makes a fresh subfolder for intermediate data (default: the
        destination's sidecar ``<destination>.tilegraph/``); only that subfolder is ever removed.
        ``keep_tile_store`` keeps it after success (debugging).
    resume
        Continue a run on this destination that stopped (crash, lost cluster, watchdog): only what
        its manifest does not record as durable is recomputed. Refused, saying what differs, if the
        plan, model or options changed.
    check_space
        Refuse the run before any work if the disks lack the space the plan estimates (tile store,
        output counted uncompressed, staged source).
    progress
        Show progress (default: on when stderr is a terminal or in Jupyter); it also says when no
        window has finished for several times the usual time between windows.
    window_timeout
        Seconds a forward pass may take: past it the run stops with
        :class:`~tilegraph.errors.WindowTimeoutError` naming the window (resumable).
    allowed_failures
        Worker deaths a task may cause before it is reported by window (the scheduler's setting,
        distributed's default 3).
    reconcile
        Colour reconciliation across windows: ``None`` (default), ``"offset"`` or ``"gain-offset"``.
    qa
        Measure seams on the output and write a report (``report.json``, ``report.html``) to
        ``<destination>.qa`` (or to the folder given).
    thumbnail
        Longest side of the run's one thumbnail inference (used by the thumbnail reference and by
        passes that need the whole picture).
    task
        What the run produces: ``"image"`` (default) or a registered output kind.
    passes
        Names of registered passes (:func:`tilegraph.passes.register_pass`) run after blending, in order.
    options
        A :class:`~tilegraph.options.RunOptions`, or a TOML/YAML file of options; the keywords above
        that differ from their defaults apply on top of it.
    security
        A ``distributed.security.Security`` to connect to a ``tls://`` scheduler address (without it,
        dask's ``distributed.comm.tls`` configuration applies).

    Returns
    -------
    RunResult
        Output array (or file path), plan, timings and the number of clipped values.

    Raises
    ------
    tilegraph.errors.TilegraphError
        A typed error naming the file or window at fault. Nothing is at the destination then (on a
        file system the output is written under a temporary name and renamed when complete), and
        ``resume=True`` continues the run.
    """
    given = {
        k: v
        for k, v in locals().items()
        if k not in ("source", "destination", "model", "client", "options", "security")
    }
    opts = _options(options, given)
    return execute(
        source, os.fspath(destination), model=model, options=opts, client=client, security=security
    )


def _options(options: RunOptions | str | os.PathLike | None, given: dict) -> RunOptions:
    """Normalise ``run()``'s keywords once: on top of ``options`` only those that differ from the defaults."""
    import inspect

    if options is None:
        return RunOptions.from_kwargs(**given)
    base = options if isinstance(options, RunOptions) else load_config(options)
    defaults = {k: p.default for k, p in inspect.signature(run).parameters.items()}
    changed = {k: v for k, v in given.items() if not _same(v, defaults.get(k))}
    return RunOptions.from_kwargs(base, **changed)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return a is b


def execute(
    source: Any,
    destination: str,
    *,
    model: Any,
    options: RunOptions,
    client: Any = None,
    security: Any = None,
) -> RunResult:
    """Run with options already normalised (the CLI and :func:`run` end here): the stages in order."""
    from tilegraph.cluster.local import connect
    from tilegraph.engine.assemble import assemble
    from tilegraph.engine.faults import cluster_error
    from tilegraph.engine.finish import abort, finish
    from tilegraph.engine.infer import submit_inference
    from tilegraph.engine.passes import run_passes
    from tilegraph.engine.prepare import prepare
    from tilegraph.engine.progress import Progress
    from tilegraph.engine.reconcile import reconcile
    from tilegraph.infer.spec import describe_model
    from tilegraph.source import open_source

    src = open_source(source, **options.source.reader_kwargs())
    m = options.model
    spec = describe_model(
        model,
        weights=m.weights,
        scale=m.scale,
        in_channels=m.in_channels,
        out_channels=m.out_channels,
        stride=m.stride,
        halo=m.halo,
        precision=m.precision,
        channels_last=m.channels_last,
        compile=m.compile,
        device=m.device,
        factory_kwargs=dict(m.factory_kwargs or {}),
    )
    show = options.execution.progress
    if show is None:
        show = _interactive()
    ex = options.execution
    executor = connect(client, security=security, allowed_failures=ex.allowed_failures)
    run_ = inference = None
    progress = None
    handles: list = []
    try:
        if show and executor.dashboard_link:
            print(f"tilegraph: dashboard at {executor.dashboard_link}", flush=True)
        progress = Progress(enabled=show, watch_stalls=True)
        run_ = prepare(
            src,
            destination,
            spec=spec,
            model=model if spec.kind != "path" else None,
            options=options,
            executor=executor,
            progress=progress,
        )
        progress.megapixels_per_window = run_.plan.shape[0] * run_.plan.shape[1] / 1e6 / run_.plan.n_windows
        import time

        started = time.perf_counter()
        inference = submit_inference(run_, executor)
        handles = list(inference.handles)
        report, reconciliation = reconcile(run_, executor, inference, progress)
        assembled, report = assemble(
            run_,
            executor,
            inference,
            corrections=reconciliation.corrections if reconciliation is not None else None,
            report=report,
            progress=progress,
        )
        passed = run_passes(run_, executor, progress)
        return finish(
            run_,
            executor,
            inference=report,
            assembled=assembled,
            reconciliation=reconciliation,
            passes=passed,
            started=started,
            progress=progress,
        )
    except BaseException as exc:
        abort(run_, executor, handles)
        ours = cluster_error(exc, run=run_, inference=inference, executor=executor)
        if ours is not None:
            raise ours from exc
        raise
    finally:
        if progress is not None:
            progress.close()
        executor.close()


def _interactive() -> bool:
    from tilegraph.engine.progress import in_notebook

    return in_notebook() or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
