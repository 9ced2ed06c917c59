"""The task functions run on workers: infer a batch of windows, blend one output chunk.

Pixels travel through storage: an infer task reads its windows from the source and writes each
window's full output, one Zarr chunk per window, into the tile store; a blend task reads the
windows covering its output chunk from the tile store and writes the chunk once. What returns
through Dask is a small dict.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tilegraph._cast import astype_float
from tilegraph.blend import blend_box, crop_box, to_output_dtype
from tilegraph.engine.tile_store import TileStore
from tilegraph.errors import (
    CorruptSourceError,
    MissingWindowError,
    ModelError,
    ModelOutputError,
    SinkError,
)
from tilegraph.infer.oom import run_splitting
from tilegraph.infer.runner import BadOutput, get_runner
from tilegraph.infer.spec import ModelSpec
from tilegraph.plan import Plan
from tilegraph.sink.zarr_sink import write_every_chunk
from tilegraph.source import Source, read_padded

__all__ = ["RunContext", "infer_windows", "blend_chunk", "probe_model"]


@dataclass
class RunContext:
    """Everything a task needs, small and picklable (sent to each worker once)."""

    plan: Plan
    source: Source
    spec: ModelSpec
    tile_store: TileStore
    output: str
    model_channels: int  # channels the model sees (the rest pass through, e.g. alpha)
    out_layout: str
    reconcile: dict | None = None  # statistics to gather per window for colour reconciliation


def _read_run(ctx: RunContext, run: list[int]) -> list[np.ndarray]:
    """Windows of one grid row, side by side, read as one region (each source chunk decoded once).

    Neighbouring windows overlap and share source chunks: one read of their union instead of one
    per window decodes each chunk once and pays the reader's per-call cost once. Padding past the
    image edges depends only on absolute positions, so the windows cut from the union equal
    windows read one by one.
    """
    plan, src = ctx.plan, ctx.source
    ws = [plan.window(i) for i in run]
    y0, y1, x0, x1 = ws[0].y0, ws[0].y1, ws[0].x0, ws[-1].x1
    block = read_padded(src, y0, y1, x0, x1, plan.pad_mode)
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        bad = ~np.isfinite(block)
        first = next(w for w in ws if bad[:, w.x0 - x0 : w.x1 - x0].any())
        region = bad[:, first.x0 - x0 : first.x1 - x0]
        raise CorruptSourceError(
            f"{int(np.count_nonzero(region))} NaN or Inf values in the input region rows {first.y0}:{first.y1}, "
            f"cols {first.x0}:{first.x1}",
            path=src.path,
            window=(first.row, first.col),
            hint="replace non-finite values (e.g. numpy.nan_to_num) before tiling",
        )
    return [block[:, w.x0 - x0 : w.x1 - x0] for w in ws]


def _runs_of(plan: Plan, batch: list[int], longest: int = 4) -> list[list[int]]:
    """Split a batch into runs of at most ``longest`` consecutive windows of one grid row."""
    runs: list[list[int]] = []
    for i in batch:
        if runs and len(runs[-1]) < longest and i == runs[-1][-1] + 1 and plan.window(i).col > 0:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _passthrough(plan: Plan, raw: np.ndarray, channels: int) -> np.ndarray:
    """Pass-through channels (alpha) of raw windows ``(N, h, w, C)`` as ``(N, c, H', W')`` floats.

    Integers are scaled to [0, 1]; resampled to the output scale (repeat up, average down).
    """
    x = np.moveaxis(raw[..., channels:], -1, 1).astype(np.float32)
    if raw.dtype.kind in "ui":
        x *= np.float32(1.0 / np.iinfo(raw.dtype).max)
    s = plan.scale_fraction
    if s > 1:
        k = int(s)
        return x.repeat(k, axis=2).repeat(k, axis=3)
    if s < 1:
        k = s.denominator
        n, c, h, w = x.shape
        return x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))
    return x


def _rc(plan: Plan, index: int) -> tuple[int, int]:
    w = plan.window(index)
    return w.row, w.col


def _run_model(ctx: RunContext, runner, raw: np.ndarray, indices: list[int], out_dtype, state: dict):
    """Model output for one batch, checked against the contract, pass-through channels appended.

    An out-of-memory error splits the batch in halves and retries (the runner, shared by the model
    tasks of this process, remembers the batch that fitted for the next batches, and ``state``
    counts the splits of this task); a single window that does not fit raises
    :class:`~tilegraph.errors.OutOfMemoryError` naming it.
    """
    plan = ctx.plan
    try:
        res = run_splitting(
            lambda part: runner.run_raw(part, channels=ctx.model_channels, out_dtype=out_dtype),
            raw,
            max_batch=runner.fitted_batches.get(raw.shape[1:]),
            windows=[_rc(plan, i) for i in indices],
            device=runner.device,
        )
        y, clipped = res.output
        if res.splits:
            runner.fitted_batches[raw.shape[1:]] = res.batch
            state["splits"] = state.get("splits", 0) + res.splits
    except BadOutput as exc:
        hint = (
            "check the model on this window; try precision='fp32' if it overflows in fp16"
            if exc.kind == "nonfinite"
            else "return float32 (or float16/bfloat16) tensors"
        )
        raise ModelOutputError(exc.detail, window=_rc(plan, indices[exc.element]), hint=hint) from None
    except ModelError:
        raise
    except Exception as exc:
        raise ModelOutputError(f"model raised {exc!r}", window=_rc(plan, indices[0])) from exc
    oy, ox = plan.out_window_shape
    n_extra = raw.shape[3] - ctx.model_channels
    expected = (len(indices), plan.out_channels - n_extra, oy, ox)
    if tuple(y.shape) != expected:
        raise ModelOutputError(
            f"model returned shape {tuple(y.shape)} for a batch of windows {[_rc(plan, i) for i in indices]}, "
            f"expected {expected} (scale {plan.scale}, {expected[1]} channels)",
            window=_rc(plan, indices[0]),
            hint="declare the model's scale/out_channels or fix its output size",
        )
    if n_extra:
        extra = _passthrough(plan, raw, ctx.model_channels)
        if y.dtype.kind == "u":
            extra = np.rint(extra * np.float32(np.iinfo(y.dtype).max))
        y = np.concatenate([y, extra.astype(y.dtype)], axis=1)
    return y, clipped


def infer_windows(ctx: RunContext, indices: list[int], model_payload=None) -> dict:
    """Run the model over a group of windows, batch by batch, and write each output to the tile store.

    Reading the next batches (up to two ahead) and writing finished ones run on small thread pools
    that live only for this task (windows of a batch are read and written in parallel), while the
    current batch is on the model.
    """
    plan = ctx.plan
    runner = get_runner(ctx.spec, model_payload)
    tiles = ctx.tile_store
    array = None if tiles.direct else tiles.open()  # opened once per task on the zarr path
    dtype = np.dtype(tiles.dtype)
    b = plan.batch_size
    batches = [indices[i : i + b] for i in range(0, len(indices), b)]
    timing = {"read_s": 0.0, "model_s": 0.0, "model_wait_s": 0.0, "write_s": 0.0, "clipped": 0}
    state: dict = {}  # out-of-memory splits in this task
    stats: list = []  # colour statistics per window (small), when reconciling

    lock = threading.Lock()  # reads and writes run on pool threads and update the same timings

    def read(batch):
        t = time.perf_counter()
        runs = list(window_pool.map(lambda run: _read_run(ctx, run), _runs_of(plan, batch)))
        raw = np.stack([w for run in runs for w in run])
        with lock:
            timing["read_s"] += time.perf_counter() - t
        return raw

    def write(batch, y):
        t = time.perf_counter()

        def put(k):
            tiles.write(batch[k], y[k], array=array)

        try:
            list(window_pool.map(put, range(len(batch))))
        except OSError as exc:
            raise SinkError(f"cannot write the tile store: {exc.strerror or exc}", path=tiles.path) from exc
        with lock:
            timing["write_s"] += time.perf_counter() - t

    ahead = 2  # batches read ahead, and outputs waiting to be written, at most
    # two pools living only for this task: batch-level read/write jobs, and the per-window reads and
    # writes they fan out to (separate, so a batch job never waits on its own pool)
    with (
        ThreadPoolExecutor(max_workers=2 * ahead, thread_name_prefix="tilegraph-io") as pool,
        ThreadPoolExecutor(max_workers=max(2, min(16, 2 * b)), thread_name_prefix="tilegraph-window") as window_pool,
    ):
        reads = [pool.submit(read, batches[k]) for k in range(min(ahead, len(batches)))]
        writes = []
        for k, batch in enumerate(batches):
            raw = reads[k].result()
            if k + ahead < len(batches):
                reads.append(pool.submit(read, batches[k + ahead]))
            runner.take_times()
            y, clipped = _run_model(ctx, runner, raw, batch, dtype, state)
            held, waited = runner.take_times()  # the model's own time, and the turn of the other task
            timing["model_s"] += held
            timing["model_wait_s"] += waited
            timing["clipped"] += clipped
            if ctx.reconcile is not None:
                stats.extend(_window_stats(ctx, raw, batch, y))
            if len(writes) >= ahead:
                writes[-ahead].result()  # bound the outputs waiting to be written
            writes.append(pool.submit(write, batch, y))
        for w in writes:
            w.result()
    return {
        "windows": len(indices),
        **timing,
        "oom_splits": state.get("splits", 0),
        "device": runner.device,
        "stats": stats,
    }


def _window_stats(ctx: RunContext, raw: np.ndarray, batch: list[int], y: np.ndarray) -> list:
    """Colour statistics of each window's output (and of the input as reference), computed in place."""
    from tilegraph.reconcile.stats import window_stats

    plan, opts = ctx.plan, ctx.reconcile
    reference, ref_sigma = None, None
    if opts.get("reference") == "input":
        reference = _passthrough(plan, raw, 0)  # the whole input at the output scale, in [0, 1]
    out = []
    for k, index in enumerate(batch):
        ref = None if reference is None else reference[k]
        if opts.get("reference") == "thumbnail":
            ref, ref_sigma = _thumbnail_region(plan, index, opts["thumbnail"], opts["factor"]), opts["factor"]
        yk = y[k].astype(np.float32)  # reconciling keeps a float tile store (Plan.tile_store_dtype)
        out.append(window_stats(plan, index, yk, ref, sigma=opts.get("sigma", 2.0), ref_sigma=ref_sigma))
    return out


def _thumbnail_region(plan: Plan, index: int, thumb: np.ndarray, factor: int) -> np.ndarray:
    """The model-on-thumbnail output, bilinearly up-sampled over window ``index``'s output footprint.

    ``thumb`` is ``(h, w, C')`` where one thumbnail pixel spans ``factor`` output pixels.
    """
    w = plan.window(index)
    oy, ox = plan.out_window_shape
    y0, x0 = plan.y.out_start(w.row), plan.x.out_start(w.col)
    ty = np.clip((np.arange(y0, y0 + oy) + 0.5) / factor - 0.5, 0, thumb.shape[0] - 1)
    tx = np.clip((np.arange(x0, x0 + ox) + 0.5) / factor - 0.5, 0, thumb.shape[1] - 1)
    iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
    iy1, ix1 = np.minimum(iy + 1, thumb.shape[0] - 1), np.minimum(ix + 1, thumb.shape[1] - 1)
    fy, fx = (ty - iy)[:, None, None], (tx - ix)[None, :, None]
    top = thumb[iy][:, ix] * (1 - fx) + thumb[iy][:, ix1] * fx
    bottom = thumb[iy1][:, ix] * (1 - fx) + thumb[iy1][:, ix1] * fx
    return np.moveaxis((top * (1 - fy) + bottom * fy).astype(np.float32), -1, 0)


def thumbnail_reference(source: Source, spec: ModelSpec, model_payload, *, factor: int, align: int, channels: int):
    """The model run once on a thumbnail of the whole image (area-averaged by ``factor``).

    Read band by band, so memory stays at one band plus the thumbnail. Returns ``(h, w, C')`` float32
    in the model's output units, where one pixel spans ``factor`` source pixels (times the scale).
    """
    h, w = source.shape
    th, tw = -(-h // factor), -(-w // factor)
    acc = np.zeros((th, tw, source.channels), np.float64)
    band = factor * max(1, 512 // factor)
    for y0 in range(0, h, band):
        block = source.read(y0, min(h, y0 + band), 0, w).astype(np.float64)
        if np.dtype(source.dtype).kind == "u":
            block /= float(np.iinfo(source.dtype).max)
        ph, pw = -(-block.shape[0] // factor) * factor - block.shape[0], tw * factor - w
        block = np.pad(block, ((0, ph), (0, pw), (0, 0)), mode="edge")
        r = block.reshape(block.shape[0] // factor, factor, tw, factor, -1).mean(axis=(1, 3))
        acc[y0 // factor : y0 // factor + r.shape[0]] = r
    ah, aw = -(-th // align) * align, -(-tw // align) * align
    small = np.pad(acc, ((0, ah - th), (0, aw - tw), (0, 0)), mode="reflect" if min(th, tw) > 1 else "edge")
    x = np.moveaxis(small[..., :channels], -1, 0)[None].astype(np.float32)
    y = get_runner(spec, model_payload)(np.ascontiguousarray(x))[0]
    s = y.shape[1] / ah
    return np.ascontiguousarray(np.moveaxis(y, 0, -1)[: int(round(th * s)), : int(round(tw * s))])


def probe_model(spec: ModelSpec, model_payload, channels: int, size: int) -> dict:
    """Run the model once on a small grey batch to learn its output channels and scale."""
    runner = get_runner(spec, model_payload)
    x = np.full((1, channels, size, size), 0.5, dtype=np.float32)
    try:
        y = runner.forward_nchw(x)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelOutputError(f"model raised {exc!r} on a {size}x{size} probe input") from exc
    shape = tuple(getattr(y, "shape", ()))
    if len(shape) != 4 or shape[0] != 1:
        raise ModelOutputError(
            f"model returned shape {shape} for input (1, {channels}, {size}, {size}); expected (N, C, H, W)"
        )
    return {"out_channels": int(shape[1]), "out_size": (int(shape[2]), int(shape[3])), "device": runner.device}


def blend_chunk(ctx: RunContext, box: tuple[int, int, int, int], chunk_index, corrections=None) -> dict:
    """Build one output chunk from the tile store and write it once (no read-modify-write)."""
    import zarr

    t0 = time.perf_counter()
    plan = ctx.plan
    tiles = ctx.tile_store
    array = None if tiles.direct else tiles.open("r")
    floats = np.dtype(tiles.dtype).kind == "f"

    def read_raw(index: int, rows: slice, cols: slice) -> np.ndarray:
        region = tiles.read(index, rows, cols, array=array)
        if region is None:
            raise MissingWindowError(
                f"window {index} was never written to the tile store (or was lost)",
                window=_rc(plan, index),
                path=tiles.path,
                hint="rerun the job; if it recurs, check the storage every worker writes to",
            )
        return region

    def read(index: int, rows: slice, cols: slice) -> np.ndarray:
        region = read_raw(index, rows, cols)
        return region if region.dtype == np.float32 else astype_float(region, np.float32)

    if plan.blend == "crop" and not floats and corrections is None:
        # the store holds rounded output values: copy the kept rectangles, nothing to convert or clip
        out, clipped = crop_box(plan, *box, read_raw), 0
    else:
        transform = corrections.transform if corrections is not None else None
        block = blend_box(plan, *box, read, transform=transform)
        out, clipped = to_output_dtype(block, plan.out_dtype, integer_scaled=floats)
    y0, y1, x0, x1 = box
    target = write_every_chunk(zarr.open_array(ctx.output, mode="r+"))
    layout = ctx.out_layout
    try:
        if layout == "YX":
            target[y0:y1, x0:x1] = out[:, :, 0]
        elif layout == "CYX":
            target[:, y0:y1, x0:x1] = np.moveaxis(out, -1, 0)
        else:
            target[y0:y1, x0:x1, :] = out
    except OSError as exc:
        raise SinkError(f"cannot write output chunk {chunk_index}: {exc.strerror or exc}", path=ctx.output) from exc
    return {"clipped": clipped, "seconds": time.perf_counter() - t0}
