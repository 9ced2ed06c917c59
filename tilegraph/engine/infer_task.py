"""The model task, run on workers: read a group of windows, run the model batch by batch, hand each
batch's outputs to the run's output kind (which stores them or turns them into small results).

Reading the next batches (up to two ahead) and handing finished ones over run on small thread pools
that live only for this task, while the current batch is on the model. What returns through Dask is
a small :class:`TaskReport`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilegraph.engine.context import RunContext
from tilegraph.engine.executor import TaskFailure
from tilegraph.engine.readahead import read_ahead
from tilegraph.engine.watchdog import guarded, in_forward
from tilegraph.errors import CorruptSourceError, ModelError, ModelOutputError, WindowTimeoutError
from tilegraph.infer.oom import run_splitting, run_window_split
from tilegraph.infer.runner import BadOutput, BatchRunner, get_runner
from tilegraph.outputs.probabilities import window_priors
from tilegraph.plan.plan import Plan
from tilegraph.plan.resample import to_output_scale
from tilegraph.source import read_padded

__all__ = ["TaskReport", "infer_windows"]


@dataclass
class TaskReport:
    """What one model task returns (small)."""

    windows: int = 0
    read_s: float = 0.0
    model_s: float = 0.0
    model_wait_s: float = 0.0
    write_s: float = 0.0
    clipped: int = 0
    oom_splits: int = 0
    device: str = "cpu"
    results: list = field(default_factory=list)  # what the output kind returned per batch


def _rc(plan: Plan, index: int) -> tuple[int, int]:
    w = plan.window(index)
    return w.row, w.col


def _read_run(ctx: RunContext, run: list[int]) -> list[np.ndarray]:
    """Neighbouring windows (a run along a grid row or column, or a full block of rows and columns)
    read as one region: each source chunk decoded once.

    Neighbouring windows overlap and share source chunks: one read of their union instead of one
    per window decodes each chunk once and pays the reader's per-call cost once. Padding past the
    image edges depends only on absolute positions, so the windows cut from the union equal
    windows read one by one.
    """
    plan, src = ctx.plan, ctx.source
    ws = [plan.window(i) for i in run]
    y0, y1 = min(w.y0 for w in ws), max(w.y1 for w in ws)
    x0, x1 = min(w.x0 for w in ws), max(w.x1 for w in ws)
    block = read_padded(src, y0, y1, x0, x1, plan.pad_mode)
    windows = [block[w.y0 - y0 : w.y1 - y0, w.x0 - x0 : w.x1 - x0] for w in ws]
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        bad = [int(np.count_nonzero(~np.isfinite(win))) for win in windows]
        k = next(k for k, count in enumerate(bad) if count)
        first = ws[k]
        raise CorruptSourceError(
            f"{bad[k]} NaN or Inf values in the input region rows {first.y0}:{first.y1}, "
            f"cols {first.x0}:{first.x1}",
            path=src.path,
            window=(first.row, first.col),
            hint="replace non-finite values (e.g. numpy.nan_to_num) before tiling",
        )
    return windows


def _runs_of(plan: Plan, batch: list[int], longest: int = 4) -> list[list[int]]:
    """Split a batch into regions read at once: the whole batch if its windows fill a block of grid rows
    and columns (at most ``longest`` squared), else runs of at most ``longest`` windows that follow one
    another along a grid row or a grid column."""
    places = [(plan.window(i).row, plan.window(i).col) for i in batch]
    rows, cols = {r for r, _ in places}, {c for _, c in places}
    full = len(set(places)) == len(batch) == len(rows) * len(cols)
    if full and max(rows) - min(rows) < len(rows) <= longest and max(cols) - min(cols) < len(cols) <= longest:
        return [list(batch)]
    runs: list[list[int]] = []
    along: tuple[int, int] | None = None  # the step between the windows of the last run (None: one window)
    for k, (i, (r, c)) in enumerate(zip(batch, places, strict=True)):
        if runs and len(runs[-1]) < longest:
            step = (r - places[k - 1][0], c - places[k - 1][1])  # from the last run's last window
            if step in ((0, 1), (1, 0)) and along in (None, step):
                runs[-1].append(i)
                along = step
                continue
        runs.append([i])
        along = None
    return runs


def _kept_boxes(plan: Plan, indices: list[int]) -> list[tuple[slice, slice]]:
    """Per window, the output region ``crop`` keeps, in the window's output coordinates."""
    out = []
    for i in indices:
        w = plan.window(i)
        (ky0, ky1), (kx0, kx1) = plan.y.keep(w.row), plan.x.keep(w.col)
        oy, ox = plan.y.out_start(w.row), plan.x.out_start(w.col)
        out.append((slice(ky0 - oy, ky1 - oy), slice(kx0 - ox, kx1 - ox)))
    return out


def _run_model(
    ctx: RunContext,
    runner: BatchRunner,
    raw: np.ndarray,
    indices: list[int],
    out_dtype,
    state: dict,
    prior: np.ndarray | None = None,
    module: Any = None,
):
    """Model output for one batch, checked against the contract, pass-through channels appended.

    An out-of-memory error splits the batch in halves and retries (the runner, shared by the model
    tasks of this process, remembers the batch that fitted for the next batches, and ``state``
    counts the splits of this task); a single window that does not fit alone is split into
    overlapping sub-windows with the model's halo (:func:`~tilegraph.infer.oom.run_window_split`),
    for float maps without a coarse prior only (labels and boxes of sub-windows do not stitch).
    ``prior`` ``(N, K, H, W)``: the coarse-to-fine input of each window. ``module`` replaces the model
    for these calls (the norm-synced shadow, see :func:`infer_windows`).
    """
    plan = ctx.plan
    output = ctx.kind.model_output
    # values clipped when rounding per window count only where the output keeps them (crop stores)
    boxes = _kept_boxes(plan, indices) if output == "array" and np.dtype(out_dtype).kind in "ui" else None
    coarse = ctx.coarse

    def call(part: np.ndarray, part_boxes=None, part_prior=None):
        extra: dict = {}
        if part_prior is not None:
            assert coarse is not None
            if coarse.mode == "channel":
                extra["extra"] = part_prior
            else:
                extra["keywords"] = {coarse.keyword: part_prior}
        return runner.run_raw(
            part,
            channels=ctx.model_channels,
            out_dtype=out_dtype,
            count_boxes=part_boxes,
            output=output,
            module=module,
            **extra,
        )

    def batch_call(part: np.ndarray, pos: list[int] | None = None):
        pos = list(range(len(part))) if pos is None else pos  # run_splitting passes the positions
        part_boxes = None if boxes is None else [boxes[i] for i in pos]
        return call(part, part_boxes, None if prior is None else prior[pos[0] : pos[-1] + 1])

    def single(i: int, one: np.ndarray):
        return run_window_split(
            lambda sub, box: call(sub, None if box is None else [box]),
            one,
            halo=ctx.split_halo,
            align=plan.align,
            scale=plan.scale_fraction,
            count_box=None if boxes is None else boxes[i],
            window=_rc(plan, indices[i]),
            device=runner.device,
        )

    try:
        res = run_splitting(
            batch_call,
            raw,
            max_batch=runner.fitted_batches.get(raw.shape[1:]),
            windows=[_rc(plan, i) for i in indices],
            device=runner.device,
            single=single if output == "array" and prior is None else None,
            per_window=list(range(len(indices))),
        )
        y, clipped = res.output
        if res.splits:
            runner.fitted_batches[raw.shape[1:]] = res.batch
            state["splits"] = state.get("splits", 0) + res.splits
    except BadOutput as exc:
        hint = (
            "check the model on this window; try precision='fp32' if it overflows in fp16"
            if exc.kind == "nonfinite"
            else _DTYPE_HINTS.get(output, _DTYPE_HINTS["array"])
        )
        raise ModelOutputError(exc.detail, window=_rc(plan, indices[exc.element]), hint=hint) from None
    except ModelError:
        raise
    except Exception as exc:
        raise ModelOutputError(f"model {ctx.spec.name} raised {exc!r}", window=_rc(plan, indices[0])) from exc
    if output == "boxes":  # one (k, 6) array per window (checked by the kind)
        return y, clipped
    oy, ox = plan.out_window_shape
    n_extra = raw.shape[3] - ctx.model_channels if ctx.kind.passthrough else 0
    conf = int(ctx.confidence)  # a confidence channel comes last, after the outputs
    expected = (len(indices), (plan.out_channels or 0) - n_extra + conf, oy, ox)
    if y.ndim == 4 and y.shape[0] == expected[0] and y.shape[1] != expected[1]:
        raise ModelOutputError(
            f"model {ctx.spec.name} returned {y.shape[1]} channels, expected {expected[1]} "
            f"({'declared' if ctx.spec.out_channels is not None else 'as on the probe'})"
            + (" with its confidence channel" if conf else ""),
            window=_rc(plan, indices[0]),
            hint="a model must return the same channel count for every window; declare out_channels",
        )
    if tuple(y.shape) != expected:
        raise ModelOutputError(
            f"model {ctx.spec.name} returned shape {tuple(y.shape)} for a batch of windows {[_rc(plan, i) for i in indices]}, "
            f"expected {expected} (scale {plan.scale}, {expected[1]} channels)",
            window=_rc(plan, indices[0]),
            hint="declare the model's scale/out_channels or fix its output size",
        )
    if n_extra:
        extra = to_output_scale(plan, raw, ctx.model_channels)
        if y.dtype.kind == "u":
            extra = np.rint(extra * np.float32(np.iinfo(y.dtype).max))
        parts = [y[:, : y.shape[1] - conf], extra.astype(y.dtype)] + ([y[:, -conf:]] if conf else [])
        y = np.concatenate(parts, axis=1)  # pass-through channels before the confidence
    return y, clipped


@contextlib.contextmanager
def _beside_the_model():
    """While a forward pass runs, leave the Dask worker's thread pool so that other tasks run beside it.

    A forward pass mostly waits (on the device, or in a model that releases the GIL); seceding lets
    the worker start a blend, or its other model task's reads, in the meantime, even with one thread
    per worker. The task rejoins once the forward pass returned (waiting for a free thread). Outside
    a Dask worker (in-process runs) nothing changes.
    """
    try:
        from distributed import get_worker, rejoin, secede

        get_worker()
    except (ImportError, ValueError):
        yield
        return
    secede()
    try:
        yield
    finally:
        rejoin()


_DTYPE_HINTS = {
    "array": "return float32 (or float16/bfloat16) tensors",
    "labels": "a labels model returns integer labels (N, 1, H, W), 0 for background",
    "boxes": "a detections model returns per batch a list with one (k, 6) array per window",
}


def infer_windows(
    ctx: RunContext,
    indices: list[int],
    model_payload: Any = None,
    ahead: tuple[int, ...] = (),
    release: tuple = (),
) -> TaskReport | TaskFailure:
    """Task: run the model over a group of windows, batch by batch; the output kind takes each batch.

    Reading the next batches (up to two ahead) and handing finished ones to the kind (which writes
    them to the per-window store) run on thread pools living only for this task. With global
    normalisation statistics in the context (``norm_sync``), the model runs as a shadow whose
    GroupNorm/InstanceNorm layers use them (built for this task; the shared runner is unchanged).
    With ``window_timeout`` a forward pass held past it ends the task with a :class:`TaskFailure` (a
    retry would hang again) carrying :class:`~tilegraph.errors.WindowTimeoutError`. ``ahead``: the
    windows this worker runs next (:mod:`tilegraph.engine.readahead`); their first batch is read
    while this task's last batch is on the model. ``release``: ``((key, left), ...)``, the decoded source
    chunks this task reads and how many tasks after it read each, told to the chunk cache once it is done
    (:meth:`~tilegraph.source.chunk_cache.ChunkCache.release`, :func:`~tilegraph.engine.infer.chunk_releases`).
    """
    try:
        report = _infer_windows(ctx, indices, model_payload, tuple(int(i) for i in ahead))
    except WindowTimeoutError as exc:
        return TaskFailure(exc)
    if release:
        from tilegraph.source.chunk_cache import chunk_cache

        chunk_cache().release(release)
    return report


def _infer_windows(
    ctx: RunContext, indices: list[int], model_payload: Any, ahead: tuple[int, ...]
) -> TaskReport:
    plan = ctx.plan
    runner = get_runner(ctx.spec, model_payload)
    module = None
    if ctx.norm_stats is not None:
        from tilegraph.infer.normsync import synced

        module = synced(runner.module, ctx.norm_stats)
    dtype = np.dtype(
        plan.tile_store_dtype
    )  # what the kind keeps of each window (rounded output values for crop)
    b = plan.batch_size
    batches = [indices[i : i + b] for i in range(0, len(indices), b)]
    report = TaskReport(windows=len(indices), device=runner.device)
    state: dict = {}  # out-of-memory splits in this task
    lock = threading.Lock()  # reads and hand-overs run on pool threads and update the same timings

    def read_batch(batch, threads=None) -> np.ndarray:
        """The batch's windows, ``(N, H, W, C)``: runs read on ``threads``, else in this thread."""
        each = map if threads is None else threads.map
        runs = list(each(lambda run: _read_run(ctx, run), _runs_of(plan, batch)))
        return np.stack([w for run in runs for w in run])

    held = read_ahead()

    def read(batch):
        t = time.perf_counter()
        early = held.take((ctx.token, tuple(batch)))
        raw = early.result() if early is not None else read_batch(batch, window_pool)
        with lock:
            report.read_s += time.perf_counter() - t
        return raw

    def hand_over(batch, raw, y):
        t = time.perf_counter()
        result = ctx.kind.consume(ctx, batch, raw, y, window_pool)
        with lock:
            report.write_s += time.perf_counter() - t
        return result

    depth = 2  # batches read ahead, and outputs waiting to be handed over, at most
    # two pools living only for this task: batch-level jobs, and the per-window reads and writes they
    # fan out to (separate, so a batch job never waits on its own pool)
    with (
        ThreadPoolExecutor(max_workers=2 * depth, thread_name_prefix="tilegraph-io") as pool,
        ThreadPoolExecutor(
            max_workers=max(2, min(16, 2 * b)), thread_name_prefix="tilegraph-window"
        ) as window_pool,
    ):
        reads = [pool.submit(read, batches[k]) for k in range(min(depth, len(batches)))]
        handed: list = []
        for k, batch in enumerate(batches):
            raw = reads[k].result()
            if k + depth < len(batches):
                reads.append(pool.submit(read, batches[k + depth]))
            prior = window_priors(plan, batch, ctx.coarse) if ctx.coarse is not None else None
            if ahead and ctx.token and k == len(batches) - 1:
                # the next task's first batch, read on this process's read-ahead thread while this one computes
                following = tuple(ahead[:b])
                held.start((ctx.token, following), functools.partial(read_batch, list(following)))

            def forward(raw=raw, batch=batch, prior=prior):
                runner.take_times()
                with in_forward(ctx.inflight, batch):
                    out = _run_model(ctx, runner, raw, batch, dtype, state, prior, module)
                return out, runner.take_times()  # the model's own time, and the other task's turn

            with _beside_the_model():
                if ctx.window_timeout is None:
                    (y, clipped), (on_model, waited) = forward()
                else:
                    windows = [_rc(plan, i) for i in batch]
                    (y, clipped), (on_model, waited) = guarded(
                        forward, timeout=ctx.window_timeout, runner=runner, windows=windows
                    )
            report.model_s += on_model
            report.model_wait_s += waited
            report.clipped += clipped
            if len(handed) >= depth:
                handed[-depth].result()  # bound the outputs waiting to be handed over
            handed.append(pool.submit(hand_over, batch, raw, y))
        report.results = [h.result() for h in handed]
    report.oom_splits = state.get("splits", 0)
    return report
