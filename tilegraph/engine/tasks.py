"""The task functions run on workers: infer a batch of windows, blend one output chunk.

Pixels travel through storage: an infer task reads its windows from the source and writes each
window's full output, one Zarr chunk per window, into the tile store; a blend task reads the
windows covering its output chunk from the tile store and writes the chunk once. What returns
through Dask is a small dict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tilegraph.blend import blend_box, to_output_dtype
from tilegraph.errors import (
    CorruptSourceError,
    MissingWindowError,
    ModelError,
    ModelOutputError,
    SinkError,
    TileStoreError,
)
from tilegraph.infer.runner import get_runner
from tilegraph.infer.spec import ModelSpec
from tilegraph.plan import Plan
from tilegraph.source import Source, read_padded

__all__ = ["RunContext", "infer_batch", "blend_chunk", "probe_model"]


@dataclass
class RunContext:
    """Everything a task needs, small and picklable (sent to each worker once)."""

    plan: Plan
    source: Source
    spec: ModelSpec
    tile_store: str
    output: str
    model_channels: int  # channels the model sees (the rest pass through, e.g. alpha)
    integer_input: bool
    out_layout: str
    run_token: str


def _window_input(ctx: RunContext, index: int) -> np.ndarray:
    plan, src = ctx.plan, ctx.source
    w = plan.window(index)
    block = read_padded(src, w.y0, w.y1, w.x0, w.x1, plan.pad_mode)
    if ctx.integer_input:
        x = block.astype(np.float32) / np.float32(np.iinfo(block.dtype).max)
    else:
        x = block.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise CorruptSourceError(
                f"{bad} NaN or Inf values in the input region rows {w.y0}:{w.y1}, cols {w.x0}:{w.x1}",
                path=src.path,
                window=(w.row, w.col),
                hint="replace non-finite values (e.g. numpy.nan_to_num) before tiling",
            )
    return np.moveaxis(x, -1, 0)  # (C, h, w)


def _passthrough(plan: Plan, x: np.ndarray) -> np.ndarray:
    """Resample pass-through channels (alpha) to the output scale: repeat up, average down."""
    s = plan.scale_fraction
    if s > 1:
        k = int(s)
        return x.repeat(k, axis=1).repeat(k, axis=2)
    if s < 1:
        k = s.denominator
        c, h, w = x.shape
        return x.reshape(c, h // k, k, w // k, k).mean(axis=(2, 4))
    return x


def _check_output(ctx: RunContext, y, indices, expected) -> np.ndarray:
    plan = ctx.plan
    if not isinstance(y, np.ndarray) or y.dtype.kind != "f":
        raise ModelOutputError(
            f"model returned {getattr(y, 'dtype', type(y).__name__)}, expected a float array",
            window=_rc(plan, indices[0]),
            hint="return float32 (or float16/bfloat16) tensors",
        )
    if y.shape != expected:
        raise ModelOutputError(
            f"model returned shape {tuple(y.shape)} for a batch of windows {[_rc(plan, i) for i in indices]}, "
            f"expected {expected} (scale {plan.scale}, {expected[1]} channels)",
            window=_rc(plan, indices[0]),
            hint="declare the model's scale/out_channels or fix its output size",
        )
    finite = np.isfinite(y).reshape(len(indices), -1).all(axis=1)
    if not finite.all():
        first = indices[int(np.argmin(finite))]
        raise ModelOutputError(
            "model returned NaN or Inf",
            window=_rc(plan, first),
            hint="check the model on this window; try precision='fp32' if it overflows in fp16",
        )
    return y


def _rc(plan: Plan, index: int) -> tuple[int, int]:
    w = plan.window(index)
    return w.row, w.col


def infer_batch(ctx: RunContext, indices: list[int], model_payload=None, *deps) -> dict:
    """Run the model on a batch of windows and write each output to the tile store."""
    import zarr

    t0 = time.perf_counter()
    plan = ctx.plan
    xs = [_window_input(ctx, i) for i in indices]
    batch = np.stack(xs)
    model_in = batch[:, : ctx.model_channels]
    t1 = time.perf_counter()
    runner = get_runner(ctx.spec, model_payload)
    try:
        y = runner(np.ascontiguousarray(model_in))
    except ModelError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise
        raise ModelOutputError(f"model raised {exc!r}", window=_rc(plan, indices[0])) from exc
    oy, ox = plan.out_window_shape
    n_model_out = plan.out_channels - (batch.shape[1] - ctx.model_channels)
    y = _check_output(ctx, y, indices, (len(indices), n_model_out, oy, ox))
    if batch.shape[1] > ctx.model_channels:
        extra = np.stack([_passthrough(plan, b[ctx.model_channels :]) for b in batch])
        y = np.concatenate([y, extra], axis=1)
    t2 = time.perf_counter()
    store = zarr.open_array(ctx.tile_store, mode="r+")
    dtype = store.dtype
    try:
        for k, index in enumerate(indices):
            store[index] = y[k].astype(dtype, copy=False)
    except OSError as exc:
        raise SinkError(f"cannot write the tile store: {exc.strerror or exc}", path=ctx.tile_store) from exc
    t3 = time.perf_counter()
    return {
        "windows": len(indices),
        "read_s": t1 - t0,
        "model_s": t2 - t1,
        "write_s": t3 - t2,
        "device": runner.device,
    }


def probe_model(spec: ModelSpec, model_payload, channels: int, size: int) -> dict:
    """Run the model once on a small grey batch to learn its output channels and scale."""
    runner = get_runner(spec, model_payload)
    x = np.full((1, channels, size, size), 0.5, dtype=np.float32)
    try:
        y = runner(x)
    except Exception as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelOutputError(f"model raised {exc!r} on a {size}x{size} probe input") from exc
    shape = tuple(getattr(y, "shape", ()))
    if len(shape) != 4 or shape[0] != 1:
        raise ModelOutputError(
            f"model returned shape {shape} for input (1, {channels}, {size}, {size}); expected (N, C, H, W)"
        )
    return {"out_channels": int(shape[1]), "out_size": (int(shape[2]), int(shape[3])), "device": runner.device}


def blend_chunk(ctx: RunContext, box: tuple[int, int, int, int], chunk_index, corrections=None, *deps) -> dict:
    """Build one output chunk from the tile store and write it once (no read-modify-write)."""
    import zarr

    t0 = time.perf_counter()
    plan = ctx.plan
    try:
        store = zarr.open_array(ctx.tile_store, mode="r")
    except Exception as exc:
        raise TileStoreError(f"cannot open the tile store: {exc}", path=ctx.tile_store) from exc

    def read(index: int, rows: slice, cols: slice) -> np.ndarray:
        region = np.asarray(store[index, :, rows, cols], dtype=np.float32)
        if np.isnan(region).any():
            raise MissingWindowError(
                f"window {index} was never written to the tile store (or was lost)",
                window=_rc(plan, index),
                path=ctx.tile_store,
                hint="rerun the job; if it recurs, check the storage every worker writes to",
            )
        return region

    transform = corrections.transform if corrections is not None else None
    block = blend_box(plan, *box, read, transform=transform)
    out, clipped = to_output_dtype(block, plan.out_dtype)
    y0, y1, x0, x1 = box
    target = zarr.open_array(ctx.output, mode="r+")
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
