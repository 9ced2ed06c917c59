"""The one module that composes the stages: :func:`run`.

::

    source ──> plan ──> [norm sync] ──> infer ──> reconcile ──> blend ──> sink ──> quality

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
    destination: str | os.PathLike | None,
    *,
    model: Any,
    tile: Any = 512,
    overlap: Any = 64,
    blend: str = "cosine",
    detail: str = "none",
    lowfreq: str | None = None,
    lowfreq_split: str = "gaussian",
    refine: str | None = None,
    client: Any = None,
    scale: Any = None,
    batch_size: int = 4,
    batches_per_task: int = 1,
    out_chunks: Any = "auto",
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
    norm_sync: str | None = None,
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
    execution_options: Any = None,
    thumbnail: int | None = None,
    task: str = "image",
    label_options: Any = None,
    detection_options: Any = None,
    argmax: bool = False,
    coarse: str | None = None,
    diff_merge: bool = False,
    diff_merge_options: Any = None,
    mask: Any = None,
    mask_fill: Any = None,
    grid: str = "regular",
    passes: Any = (),
    options: RunOptions | str | os.PathLike | None = None,
    security: Any = None,
) -> Any:
    """Run ``model`` over ``source`` tile by tile and write a seam-free output to ``destination``.

    Parameters
    ----------
    source
        Path or URL (Zarr, OME-Zarr, TIFF, PNG, JPEG), a numpy/dask/zarr array, or a :class:`~tilegraph.source.Source`.
        A list of them, a glob (``"photos/*.tif"``) or a folder of images runs every image on one
        cluster (:func:`tilegraph.batch.run_many`) and returns a :class:`~tilegraph.batch.BatchResult`.
    destination
        Output path or URL: a Zarr v3 array (``.zarr`` or no suffix), an OME-Zarr image
        (``.ome.zarr``: NGFF 0.5 with a multiscale pyramid), or a ``.tif``/``.png``/``.jpg`` file
        (written from a Zarr in scratch space in one final step); for ``task="detections"`` a ``.csv``
        or ``.parquet`` table, or ``None`` (no file: ``result.detections`` only). Other suffixes are
        refused. For several sources: a folder (each output named after its source) or a template
        with ``{stem}``.
    model
        A ``torch.nn.Module`` (a ``torch.fx.GraphModule`` and TorchScript modules too), an import
        path ``"package.module:factory"`` (with ``weights=``; the factory may return any kind of
        model here), a model file (``.onnx``, a TorchScript archive, a spandrel checkpoint), or a
        numpy callable on ``(N, C, H, W)`` float32 batches.
    tile, overlap
        Window and overlap in source pixels (overlap may be a fraction of ``tile``). ``tile="auto"``
        probes the real model on a worker's device and picks the largest window and batch that fit
        its memory with a margin (recorded in ``result.extra["autotile"]`` and the output's metadata).
    blend
        ``"crop"``, ``"linear"``, ``"cosine"`` (default), ``"gaussian"``, ``"multiband"`` (Laplacian
        pyramid), ``"seam"`` (optimal cuts), ``"poisson"`` (optimal cuts, then the mismatch along them
        removed by a membrane per window), or a registered mode (:func:`tilegraph.blend.register_blender`).
        The README's "Blend modes" section says which to choose for which model.
    detail
        ``"preserve"``: where windows are averaged (``linear``, ``cosine``, ``gaussian``, the fine levels
        of ``multiband``) high frequencies are mixed with variance-preserving weights, so invented texture
        keeps its contrast in the overlaps; ``"none"`` (default).
    lowfreq, lowfreq_split
        ``lowfreq="thumbnail"``: a pass after blending that takes the output's low frequencies from the
        run's one thumbnail inference where the windows' own low frequencies disagree (windows that agree
        are left as they are); split by a Gaussian (default) or a wavelet (``lowfreq_split="wavelet"``)
        at a cut-off of twice the thumbnail's pixel size.
    refine
        ``"seams"``: a pass after blending that runs the model again on windows centred on the seams
        (the grid shifted by half a stride: about three times the model work) and blends their outputs
        into bands along the seams.
    client
        ``None`` starts an embedded local cluster; ``"inprocess"`` runs here without a cluster; a
        scheduler address (``tcp://`` or ``tls://``) or a ``distributed.Client`` uses that cluster.
    scale, in_channels, out_channels, model_stride, halo
        Override what the model declares (``scale`` is also measured with a probe and checked).
    norm_sync
        Per-sample normalisation layers (GroupNorm, InstanceNorm) with statistics over the whole image,
        as whole-image inference computes them: ``"exact"`` (one pass over the windows per layer that
        returns only statistics, then the output pass; exact wherever the receptive field fits half the
        overlap), ``"thumbnail"`` (statistics recorded by the run's one thumbnail inference; approximate)
        or ``None`` (each window normalises itself; a warning names the layers).
    batch_size, batches_per_task
        Windows per forward pass, and forward passes per model task. Two model tasks run at once per
        worker and take turns on the model, so one reads and writes while the other computes.
    out_chunks, out_shards
        Output Zarr chunk extent and, optionally, shard extent (a multiple of the chunks). Each output
        chunk, or each shard when sharded, is written by one task. ``"auto"`` (default): for ``crop``
        the stride at the output scale, so that each window's kept region is one chunk written by its
        model task (no per-window store, no blend tasks); 1024 for the other modes.
    output_dtype
        Defaults to the source dtype; pass ``"float32"`` for latents.
    overwrite
        Replace a previous tilegraph output or an empty folder at the destination. Anything else
        (the source, a folder holding it or inside it, unrelated files) is refused, nothing deleted.
    pad_mode, precision, channels_last, compile, device, weights, factory_kwargs
        See :class:`~tilegraph.options.TilingOptions` and :class:`~tilegraph.options.ModelOptions`.
    source_options, export_options, reconcile_options, quality_options, execution_options
        :class:`~tilegraph.options.SourceOptions` (``level=``, ``series=``...),
        :class:`~tilegraph.options.ExportOptions` (TIFF compression, JPEG quality...),
        :class:`~tilegraph.options.ReconcileOptions` (``reference``, ``strength``, ``field``,
        ``sigma``, ``anchor_fit``, ``anchor``), :class:`~tilegraph.options.QualityOptions`,
        :class:`~tilegraph.options.ExecutionOptions` (``codec_pipeline``); objects or dicts (an
        unknown key is an error naming it).
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
        Colour reconciliation across windows: ``None`` (default), ``"offset"`` or ``"gain-offset"``. Its
        reference defaults to ``"auto"``: the model run on the thumbnail when it changes colours by more
        than 1 ΔE2000 on average, else the input (the choice is recorded); windows that agree in their
        overlaps are not corrected.
    qa
        Measure seams on the output and write a report (``report.json``, ``report.html``) to
        ``<destination>.qa`` (or to the folder given).
    thumbnail
        Longest side of the run's one thumbnail inference (used by the thumbnail reference and its
        ``"auto"`` choice, by ``norm_sync="thumbnail"`` and by passes that need the whole picture).
        Default: the window, at least 256 px; at least 1024 px with ``norm_sync="thumbnail"``.
    task
        What the run produces: ``"image"`` (default); ``"labels"`` (the model returns integer instance
        labels per window, ``(N, 1, H, W)``; every object gets one label across seams, int32 or
        int64); ``"probabilities"`` (per-class probabilities blended, float); ``"detections"`` (the
        model returns per batch a list of ``(k, 6)`` arrays ``x0, y0, x1, y1, score, label`` in window
        pixels; boxes are merged across windows into ``result.detections``); or a registered output
        kind (:func:`tilegraph.outputs.register_kind`).
    label_options, detection_options
        :class:`~tilegraph.options.LabelOptions` (``metric``, ``threshold``, ``report_iou``,
        ``min_pixels``) and :class:`~tilegraph.options.DetectionOptions` (``merge``: ``"nms"``,
        ``"greedy_nmm"`` or ``"nmm"``; ``metric``: ``"ios"`` or ``"iou"``; ``threshold``;
        ``class_agnostic``; ``full_image``: SAHI's extra full-image pass on the thumbnail), objects
        or dicts.
    argmax, coarse
        ``task="probabilities"``: write the class index instead of the probabilities; coarse-to-fine
        (``"keyword"`` or ``"channel"``): the model's output on the run's thumbnail, up-sampled, is
        given to each window.
    diff_merge, diff_merge_options
        Keep the input bit for bit where the model changed nothing (a CIELAB change mask), and merge
        the changed regions in with a Poisson band (:class:`~tilegraph.options.DiffMergeOptions`).
    mask, mask_fill, grid
        What matters: a Zarr or image file or an array (non-zero), or a callable on a thumbnail of
        the image. Windows without a masked pixel are skipped; the output outside the mask holds
        ``mask_fill`` (``"input"``, or a value in output units). ``grid="mask-aware"`` shifts the
        grid so that its seams cut as few masked objects as possible.
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
        Output array (or file path), plan, timings and the number of clipped values (a
        :class:`~tilegraph.batch.BatchResult` for several sources);
        ``extra["norm_sync"]`` (normalisation layers found, passes, cost, notes) and
        ``extra["reconcile"]`` (reference chosen, how much the correction changed) are also in the
        output's metadata.

    Warns
    -----
    tilegraph.errors.TilegraphWarning
        The model has per-sample normalisation layers and ``norm_sync`` is off (tiles will differ in
        colour), BatchNorm layers were given in training mode, or the thumbnail's statistics vary
        strongly with its size under ``norm_sync="thumbnail"``.

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
    from tilegraph.batch import is_batch, run_many

    if is_batch(source):
        if destination is None:
            from tilegraph.errors import InputError

            raise InputError(
                "several sources need a destination", hint="give a folder, or a template with {stem}"
            )
        return run_many(source, destination, model=model, options=opts, client=client, security=security)
    dest = "" if destination is None else os.fspath(destination)
    return execute(source, dest, model=model, options=opts, client=client, security=security)


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
    executor: Any = None,
    security: Any = None,
) -> RunResult:
    """Run with options already normalised (the CLI and :func:`run` end here): the stages in order.

    ``executor``: an executor already connected (several runs on one cluster); it stays open.
    """
    from tilegraph.cluster.local import connect
    from tilegraph.engine.assemble import assemble
    from tilegraph.engine.faults import cluster_error
    from tilegraph.engine.finish import abort, finish
    from tilegraph.engine.infer import submit_inference
    from tilegraph.engine.normsync import synchronise
    from tilegraph.engine.passes import run_passes
    from tilegraph.engine.prepare import prepare
    from tilegraph.engine.progress import Progress
    from tilegraph.engine.reconcile import reconcile
    from tilegraph.infer.spec import spec_for
    from tilegraph.source import open_source

    src = open_source(source, **options.source.reader_kwargs())
    spec = spec_for(model, options.model)
    show = options.execution.progress
    if show is None:
        show = _interactive()
    own = executor is None
    if own:
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
        run_ = synchronise(run_, executor, progress)  # norm_sync: global normalisation statistics
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
        passed = run_passes(
            run_,
            executor,
            progress,
            corrections=reconciliation.corrections if reconciliation is not None else None,
        )
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
        if own:
            executor.close()


def _interactive() -> bool:
    from tilegraph.engine.progress import in_notebook

    return in_notebook() or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
