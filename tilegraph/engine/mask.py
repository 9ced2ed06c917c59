"""Masks (``mask=``, ``mask_fill=``, ``grid="mask-aware"``), client side: open, choose the grid, list windows.

The mask is opened as a :class:`~tilegraph.outputs.masking.MaskMap` (a full-resolution Zarr, file or
array read box by box, or a callable's boolean thumbnail), reduced to a thumbnail for the grid choice
(:func:`~tilegraph.outputs.maskgrid.choose_grid`: the offset per axis whose seams cut the fewest
masked objects), and scanned once more, band by band, for the windows whose contribution holds a
masked pixel: only those run. Outside the mask the output holds the fill: the input (scale 1, same
channels, converted to the output's dtype) or a value in output units.
"""

from __future__ import annotations

import numpy as np

from tilegraph.engine.executor import Executor, InProcessExecutor
from tilegraph.errors import InputError
from tilegraph.options import MaskOptions
from tilegraph.outputs.abc import OutputKind
from tilegraph.outputs.maskgrid import choose_grid
from tilegraph.outputs.masking import (
    ArrayMask,
    MaskContext,
    MaskMap,
    SourceMask,
    ThumbnailMask,
    mask_thumbnail,
    windows_touching_mask,
)
from tilegraph.plan.plan import Plan
from tilegraph.source.abc import Source

__all__ = ["resolve_mask", "source_thumbnail"]


def source_thumbnail(source: Source, factor: int) -> np.ndarray:
    """The image area-averaged by ``factor``, ``(h, w, C)`` float32 in ``[0, 1]`` for integers; band by band."""
    h, w = source.shape
    th, tw = -(-h // factor), -(-w // factor)
    acc = np.zeros((th, tw, source.channels), np.float32)
    band = factor * max(1, 512 // factor)
    for y0 in range(0, h, band):
        block = source.read(y0, min(h, y0 + band), 0, w).astype(np.float32)
        if np.dtype(source.dtype).kind == "u":
            block *= np.float32(1.0 / np.iinfo(source.dtype).max)
        ph, pw = -(-block.shape[0] // factor) * factor - block.shape[0], tw * factor - w
        block = np.pad(block, ((0, ph), (0, pw), (0, 0)), mode="edge")
        acc[y0 // factor : y0 // factor + block.shape[0] // factor] = block.reshape(
            block.shape[0] // factor, factor, tw, factor, -1
        ).mean(axis=(1, 3))
    return acc


def _open_mask(
    mask: object, staged: Source, *, factor: int, scratch: str, executor: Executor
) -> tuple[MaskMap, np.ndarray]:
    """The mask as a :class:`MaskMap` and its boolean thumbnail (a pixel per ``factor`` px block)."""
    if callable(mask):
        thumb = source_thumbnail(staged, factor)
        got = np.asarray(mask(thumb))
        if got.shape != thumb.shape[:2]:
            raise InputError(
                f"the mask callable returned shape {got.shape} for a thumbnail of {thumb.shape[:2]}",
                hint="return a boolean (h, w) array of the thumbnail's size",
            )
        m = got.astype(bool)
        return ThumbnailMask(m, tuple(staged.shape)), m  # type: ignore[arg-type]
    mmap = _full_mask(mask, scratch=scratch, distributed=not isinstance(executor, InProcessExecutor))
    if tuple(mmap.shape) != tuple(staged.shape):
        raise InputError(
            f"the mask is {tuple(mmap.shape)}, the image {tuple(staged.shape)}",
            path=mask if isinstance(mask, str) else None,
            hint="give a mask of the image's extent, or a callable on a thumbnail",
        )
    return mmap, mask_thumbnail(mmap, factor)


def _full_mask(mask: object, *, scratch: str, distributed: bool) -> MaskMap:
    """A full-resolution mask: a Zarr (path or array) or an array read as it is, an image file as a source.

    An in-memory array is copied to a Zarr in scratch space for a distributed run (tasks read boxes).
    """
    if isinstance(mask, str):
        import zarr

        try:
            return ArrayMask(zarr.open_array(mask, mode="r"))
        except Exception:  # not a Zarr array: an image file
            from tilegraph.source import open_source

            return SourceMask(open_source(mask))
    arr = mask if hasattr(mask, "shape") and hasattr(mask, "__getitem__") else np.asarray(mask)
    if isinstance(arr, np.ndarray) and distributed:
        import zarr

        z = zarr.create_array(
            store=f"{scratch}/mask.zarr",
            shape=arr.shape,
            chunks=(1024, 1024) + arr.shape[2:],
            dtype=arr.dtype,
        )
        z[...] = arr
        arr = z
    return ArrayMask(arr)


def resolve_mask(
    options: MaskOptions,
    *,
    plan: Plan,
    staged: Source,
    kind: OutputKind,
    out_channels: int,
    factor: int,
    scratch: str,
    executor: Executor,
) -> tuple[Plan, MaskContext | None, dict | None]:
    """The plan that runs (shifted for ``grid="mask-aware"``), the mask's context for tasks, its report.

    ``out_channels``: the output's channels (``mask_fill="input"`` needs the source's, at scale 1).
    """
    if options.mask is None:
        return plan, None, None
    mmap, thumb = _open_mask(options.mask, staged, factor=factor, scratch=scratch, executor=executor)
    report: dict = {"masked_fraction_thumbnail": round(float(thumb.mean()), 4) if thumb.size else 0.0}
    if options.grid == "mask-aware":
        grid = choose_grid(thumb, plan=plan)
        plan = grid.plan
        g = grid.report()
        report["grid"] = {
            k: g[k] for k in ("offset", "objects", "objects_cut", "objects_cut_unshifted", "seams")
        }
    windows = windows_touching_mask(mmap, plan)
    fill = _fill(options.fill, kind=kind, plan=plan, source=staged, out_channels=out_channels)
    report.update(
        windows=plan.n_windows,
        windows_run=int(windows.size),
        windows_skipped=int(plan.n_windows - windows.size),
        fill=fill,
    )
    ctx = MaskContext(
        mask=mmap,
        windows=frozenset(int(i) for i in windows),
        fill=fill,
        source=staged if fill == "input" else None,
    )
    return plan, ctx, report


def _fill(value: object, *, kind: OutputKind, plan: Plan, source: Source, out_channels: int) -> object:
    """What the output holds outside the mask: ``"input"``, a number, or ``None`` (kinds without pixels)."""
    if kind.model_output != "array" or not kind.writes_array:
        return None  # labels stay background, detections have no array
    allowed = plan.scale_fraction == 1 and out_channels == source.channels
    if value is None:
        return "input" if allowed else 0.0
    if value == "input" and not allowed:
        raise InputError(
            f"mask_fill='input' needs a model at scale 1 keeping the channels (scale {plan.scale}, "
            f"{source.channels} channels in, {out_channels} out)",
            hint="pass a fill value in output units, e.g. mask_fill=0",
        )
    return value if value == "input" else float(value)  # type: ignore[arg-type]
