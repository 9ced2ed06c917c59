"""Masks (``mask=``): what matters in the image, read region by region; windows skipped, output filled.

A mask is read through a :class:`MaskMap` in source pixels, whatever it came from:

* :class:`ArrayMask` and :class:`SourceMask`: a full-resolution mask (an array or a Zarr; an image
  file opened as a source) of the image's extent: a pixel matters when any of its channels is
  non-zero;
* :class:`ThumbnailMask`: a boolean thumbnail (what a callable returned for a thumbnail of the
  image), up-sampled to the image by nearest neighbour (pixel ``(y, x)`` takes thumbnail pixel
  ``(floor(y h / H), floor(x w / W))``).

:func:`windows_touching_mask` scans the mask band by band (out of core) and lists, exactly, the
windows whose contribution holds a masked pixel (the kept box for ``crop``, the footprint for the
weighted modes); only those run. Every output pixel inside the mask is then built only from windows
that ran; outside it the output holds the fill (:meth:`MaskContext.fill_box`): the input (scale 1,
same channels) or a value in output units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilegraph._cast import to_output_dtype
from tilegraph.errors import InputError
from tilegraph.plan.plan import Plan

__all__ = [
    "ArrayMask",
    "MaskContext",
    "MaskMap",
    "SourceMask",
    "ThumbnailMask",
    "masked_reader",
    "mask_thumbnail",
    "windows_touching_mask",
]


class MaskMap:
    """A boolean mask of the image read by boxes of source pixels (picklable, small)."""

    shape: tuple[int, int]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``bool (y1 - y0, x1 - x0)``: the pixels that matter in the box (inside the image)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SourceMask(MaskMap):
    """A full-resolution mask: any non-zero channel of ``source`` (a tilegraph source) matters."""

    source: Any

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        h, w = self.source.shape
        return int(h), int(w)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        block = np.asarray(self.source.read(y0, y1, x0, x1))
        return np.asarray(block.any(axis=-1) if block.ndim == 3 else block != 0)


@dataclass(frozen=True)
class ArrayMask(MaskMap):
    """A full-resolution mask held by an array-like ``(H, W)`` or ``(H, W, C)`` (numpy, Zarr), any dtype:
    a pixel matters when any of its channels is non-zero (or True)."""

    array: Any = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        return int(self.array.shape[0]), int(self.array.shape[1])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        block = np.asarray(self.array[y0:y1, x0:x1])
        return np.asarray(block.any(axis=-1) if block.ndim == 3 else block != 0)


@dataclass(frozen=True)
class ThumbnailMask(MaskMap):
    """A boolean thumbnail ``(h, w)`` of an image of ``shape`` ``(H, W)``, up-sampled by nearest neighbour."""

    thumbnail: np.ndarray = field(repr=False)
    shape: tuple[int, int] = (0, 0)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        h, w = self.thumbnail.shape
        rows = (np.arange(y0, y1) * h) // self.shape[0]
        cols = (np.arange(x0, x1) * w) // self.shape[1]
        return self.thumbnail[rows][:, cols]


def mask_thumbnail(mask: MaskMap, factor: int, *, band: int = 512) -> np.ndarray:
    """``bool`` thumbnail of ``mask``: a pixel per ``factor x factor`` block, set when any pixel of it is.

    Read band by band (memory: one band plus the thumbnail).
    """
    h, w = mask.shape
    th, tw = -(-h // factor), -(-w // factor)
    out = np.zeros((th, tw), bool)
    step = factor * max(1, band // factor)
    for y0 in range(0, h, step):
        block = mask.read(y0, min(h, y0 + step), 0, w)
        ph, pw = -(-block.shape[0] // factor) * factor - block.shape[0], tw * factor - w
        block = np.pad(block, ((0, ph), (0, pw)))
        r = block.reshape(block.shape[0] // factor, factor, tw, factor).any(axis=(1, 3))
        out[y0 // factor : y0 // factor + r.shape[0]] = r
    return out


def _intervals(plan: Plan, axis: str, crop: bool) -> list[tuple[int, int]]:
    """Per window along ``axis``: the source interval its contribution covers (clipped to the image)."""
    ax = plan.y if axis == "y" else plan.x
    s = plan.scale_fraction
    size = ax.size
    out = []
    for i in range(ax.count):
        a, b = ax.keep(i) if crop else ax.footprint(i)
        lo, hi = math.floor(a / s), math.ceil(b / s)
        out.append((max(0, lo), min(size, hi)))
    return out


def windows_touching_mask(
    mask: MaskMap, plan: Plan, *, crop: bool | None = None, band: int = 1024
) -> np.ndarray:
    """Flat indices of the windows whose contribution holds a masked pixel (exact), raster order.

    ``crop`` (default: the plan's blend is ``crop``): judge by the kept box, else by the footprint.
    The mask is read band by band of rows (out of core).
    """
    crop = plan.blend == "crop" if crop is None else crop
    if tuple(mask.shape) != tuple(plan.shape):
        raise InputError(f"the mask is {tuple(mask.shape)}, the image {tuple(plan.shape)}")
    rows, cols = _intervals(plan, "y", crop), _intervals(plan, "x", crop)
    h, w = plan.shape
    touched = np.zeros(plan.grid, bool)
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        block = None
        for r, (a, b) in enumerate(rows):
            lo, hi = max(a, y0), min(b, y1)
            if hi <= lo or touched[r].all():
                continue
            if block is None:
                block = mask.read(y0, y1, 0, w)
            colany = block[lo - y0 : hi - y0].any(axis=0)
            csum = np.concatenate([[0], np.cumsum(colany)])
            for c, (p, q) in enumerate(cols):
                if q > p and csum[q] > csum[p]:
                    touched[r, c] = True
    return np.flatnonzero(touched.ravel()).astype(np.int64)


@dataclass(frozen=True)
class MaskContext:
    """What tasks need of a mask (small and picklable, in the run's context).

    Attributes
    ----------
    mask : MaskMap
        The mask, read by boxes of source pixels.
    windows : frozenset of int
        The windows that run (those touching the mask).
    fill : "input", float or None
        What the output holds outside the mask (``None``: nothing is filled, e.g. labels).
    source : object
        The run's source, read for ``fill="input"``.
    """

    mask: MaskMap
    windows: frozenset = field(repr=False)
    fill: Any = None
    source: Any = None

    def out_mask(self, plan: Plan, box: tuple[int, int, int, int]) -> np.ndarray:
        """The mask over an output box (nearest source pixel at other scales)."""
        y0, y1, x0, x1 = box
        s = plan.scale_fraction
        if s == 1:
            return self.mask.read(y0, y1, x0, x1)
        ry = (np.arange(y0, y1) * s.denominator) // s.numerator
        rx = (np.arange(x0, x1) * s.denominator) // s.numerator
        m = self.mask.read(int(ry[0]), int(ry[-1]) + 1, int(rx[0]), int(rx[-1]) + 1)
        return m[ry - ry[0]][:, rx - rx[0]]

    def fill_values(self, box: tuple[int, int, int, int], shape: tuple[int, ...], dtype) -> np.ndarray:
        """The fill over ``box`` in the output ``dtype``, ``shape`` ``(rows, cols, C)``."""
        dtype = np.dtype(dtype)
        if self.fill == "input":
            y0, y1, x0, x1 = box
            src = np.asarray(self.source.read(y0, y1, x0, x1))
            if src.dtype == dtype:
                return src
            if src.dtype.kind in "ui":
                src = src.astype(np.float32) * np.float32(1.0 / np.iinfo(src.dtype).max)
            return to_output_dtype(src.astype(np.float32, copy=False), dtype)[0]
        return np.full(shape, 0 if self.fill is None else self.fill, dtype)

    def fill_box(self, plan: Plan, box: tuple[int, int, int, int], block: np.ndarray) -> np.ndarray:
        """``block`` (in the output dtype, ``(rows, cols, C)``) with the fill outside the mask."""
        m = self.out_mask(plan, box)
        if m.all():
            return block
        return np.where(m[..., None], block, self.fill_values(box, block.shape, block.dtype))


class _MaskedReader:
    """A window reader for which windows that did not run are zeros (they only reach unmasked pixels)."""

    def __init__(self, reader: Any, windows: frozenset) -> None:
        self.reader, self.windows = reader, windows
        self.dtype = reader.dtype

    def _zeros(self, rows: slice, cols: slice, dtype) -> np.ndarray:
        c, h, w = self.reader.tiles.shape[1:]
        r0, r1, _ = rows.indices(h)
        c0, c1, _ = cols.indices(w)
        return np.zeros((c, r1 - r0, c1 - c0), dtype)

    def __call__(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        if index not in self.windows:
            return self._zeros(rows, cols, np.float32)
        return self.reader(index, rows, cols)

    def raw(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        if index not in self.windows:
            return self._zeros(rows, cols, self.dtype)
        return self.reader.raw(index, rows, cols)


def masked_reader(ctx: Any, reader: Any) -> Any:
    """``reader``, or when the run has a mask, a reader giving zeros for the windows that did not run."""
    mask = getattr(ctx, "mask", None)
    return reader if mask is None else _MaskedReader(reader, mask.windows)
