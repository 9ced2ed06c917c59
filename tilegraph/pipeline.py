"""The one module that composes the stages: :func:`run`."""

from __future__ import annotations

import os

from tilegraph.cluster.local import connect
from tilegraph.engine.job import Job, RunResult
from tilegraph.infer.spec import describe_model
from tilegraph.source import open_source

__all__ = ["run"]


def run(
    source,
    destination,
    *,
    model,
    tile=512,
    overlap=64,
    blend: str = "cosine",
    client=None,
    scale=None,
    batch_size: int = 4,
    batches_per_task: int = 1,
    out_chunks=1024,
    out_shards=None,
    output_dtype=None,
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
    source_options: dict | None = None,
    export_options: dict | None = None,
    scratch: str | None = None,
    progress: bool | None = None,
    keep_tile_store: bool = False,
    reconcile: str | None = None,
    reconcile_options: dict | None = None,
    qa: bool | str = False,
) -> RunResult:
    """Run ``model`` over ``source`` tile by tile and write a seam-free output to ``destination``.

    Parameters
    ----------
    source
        Path or URL (Zarr, OME-Zarr, TIFF, PNG, JPEG), a numpy/dask/zarr array, or a :class:`~tilegraph.source.Source`.
    destination
        Output path or URL: a Zarr v3 array, or a ``.tif``/``.png``/``.jpg`` file (written from a Zarr
        scratch output in one final step).
    model
        A ``torch.nn.Module``, an import path ``"package.module:factory"`` (with ``weights=``), or a
        numpy callable on ``(N, C, H, W)`` float32 batches.
    tile, overlap
        Window and overlap in source pixels (overlap may be a fraction of ``tile``). ``tile="auto"``
        probes the real model on a worker's device and picks the largest window and batch that fit
        its memory with a margin (recorded in ``result.extra["autotile"]`` and the output's metadata).
    blend
        ``"crop"``, ``"linear"``, ``"cosine"`` (default) or ``"gaussian"``.
    client
        ``None`` starts an embedded local cluster; ``"inprocess"`` runs here without a cluster; a
        scheduler address or a ``distributed.Client`` uses that cluster.
    scale, in_channels, out_channels, model_stride, halo
        Override what the model declares (``scale`` is also measured with a probe and checked).
    batch_size, batches_per_task
        Windows per forward pass, and forward passes per model task. Two model tasks run at once per
        worker and take turns on the model, so one reads and writes while the other computes; with
        one batch per task (the default) blending follows inference closely and the job ends soon
        after its last forward pass. More batches per task mean fewer, longer tasks (a task also
        reads its next batch while the current one runs).
    out_chunks, out_shards
        Output Zarr chunk extent (independent of the window grid) and, optionally, shard extent (a
        multiple of the chunks). Each output chunk, or each shard when sharded, is written by one task.
    output_dtype
        Defaults to the source dtype; pass ``"float32"`` for latents.
    overwrite
        Replace an existing destination (never the source itself).
    precision, channels_last, compile, device
        Opt-in speed options, recorded in the output's metadata.
    progress
        Show progress (default: on when stderr is a terminal or in Jupyter).
    keep_tile_store
        Keep the intermediate per-window store (for debugging).
    reconcile
        Colour reconciliation across windows: ``None`` (default), ``"offset"`` or ``"gain-offset"``.
        Each model task gathers small statistics of every overlap and of each window against the
        input; one global least-squares solve (robust, anchored to the input) gives a per-window,
        per-channel correction applied before blending.
    reconcile_options
        ``{"reference": "input" | "thumbnail" | None, "strength": 1.0, "field": False, "sigma": 2.0,
        "thumbnail_size": None}``. ``"thumbnail"`` anchors to the model run once on a thumbnail of the
        whole image (longest side ``thumbnail_size``, default the window or 256 px), for models that
        change colour; ``field`` interpolates the corrections smoothly between window centres.
    qa
        Measure seams on the output and write a report (``report.json``, ``report.html``) to
        ``<destination>.qa`` (or to the folder given).

    Returns
    -------
    RunResult
        Output array (or file path), plan, timings and the number of clipped values.

    Raises
    ------
    tilegraph.errors.TilegraphError
        A typed error naming the file or window at fault; the output is then left marked incomplete.
    """
    src = open_source(source, **(source_options or {}))
    spec = describe_model(
        model,
        weights=weights,
        scale=scale,
        in_channels=in_channels,
        out_channels=out_channels,
        stride=model_stride,
        halo=halo,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        device=device,
        factory_kwargs=factory_kwargs,
    )
    if progress is None:
        progress = _interactive()
    executor = connect(client)
    try:
        if progress and getattr(executor, "dashboard_link", None):
            print(f"tilegraph: dashboard at {executor.dashboard_link}", flush=True)
        job = Job(
            src,
            os.fspath(destination),
            spec=spec,
            model_obj=None if spec.kind == "path" else model,
            executor=executor,
            tile=tile,
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            batches_per_task=batches_per_task,
            out_chunks=out_chunks,
            out_shards=out_shards,
            output_dtype=output_dtype,
            overwrite=overwrite,
            pad_mode=pad_mode,
            scratch=scratch,
            progress=progress,
            export_options=export_options,
            reconcile=reconcile,
            reconcile_options=reconcile_options,
            qa=qa,
        )
        try:
            job.prepare()
            job.infer()
            job.blend(job.solve_corrections() if reconcile else None)
            return job.finish(keep_tile_store=keep_tile_store)
        except BaseException:
            job.abort()
            raise
    finally:
        executor.close()


def _interactive() -> bool:
    import sys

    from tilegraph.engine.executor import _in_notebook

    return _in_notebook() or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
