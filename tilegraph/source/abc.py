"""The source contract: an image read region by region, always returned as YXC.

A source must be picklable and cheap to pickle (a path and options, never pixels or open handles,
except for in-memory sources which the pipeline stages to storage before a distributed run).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from tilegraph.errors import UnsupportedSourceError
from tilegraph.metadata import SourceMetadata

__all__ = ["Source", "SourceMetadata", "infer_layout", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float16"), np.dtype("float32"))


class Source(ABC):
    """An image that can be read region by region.

    Subclasses set ``shape`` (rows, cols), ``channels``, ``dtype``, ``layout`` (of the stored data:
    ``"YX"``, ``"YXC"`` or ``"CYX"``) and ``path`` (for messages), and implement :meth:`read`.

    Capability flags
    ----------------
    ``shareable``: readable from another process after pickling (file or URL backed).
    ``region_reads``: reading a region costs about the region (not the whole file).
    """

    shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    layout: str
    path: str | None = None
    shareable: bool = True
    region_reads: bool = True

    @property
    def metadata(self) -> SourceMetadata:
        """Metadata to pass through to the output."""
        return SourceMetadata()

    @abstractmethod
    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Return pixels ``[y0:y1, x0:x1]`` as a ``(rows, cols, channels)`` array of :attr:`dtype`.

        The box lies inside the image; padding is the caller's business.
        """

    def stage_tasks(self, path: str, *, band_rows: int = 1024, chunk_cols: int = 1024):
        """Tasks that copy this source into a chunked YXC Zarr v3 array at ``path``, and its source.

        Used by the pipeline when the source is not ``shareable`` (in-memory arrays: the client runs
        the tasks itself) or has no cheap ``region_reads`` (striped TIFF: workers run them, so every
        strip is decoded about once). Each task writes whole chunks of one band of rows, so writes are
        aligned and never overlap.

        Returns
        -------
        tasks : list of callables taking no argument
        staged : Source
            A source reading the staged copy (valid once every task has run).
        """
        import zarr

        from tilegraph.source.zarr_source import ZarrSource  # lazy: zarr_source imports this module

        h, w = self.shape
        zarr.create_array(
            store=path,
            shape=(h, w, self.channels),
            chunks=(min(band_rows, h), min(chunk_cols, w), self.channels),
            dtype=self.dtype,
            fill_value=0,
            overwrite=True,
        )
        tasks = [_StageBand(self, path, r, min(h, r + band_rows)) for r in range(0, h, band_rows)]
        return tasks, ZarrSource(path, layout="YXC")  # the array exists already (filled by the tasks)

    def cached(self, token: str) -> Source:
        """This source reading through a per-process cache of decoded chunks under ``token`` (one per run).

        Default: the source itself (readers without chunks to cache).
        """
        return self

    def cache_keys(self, y0: int, y1: int, x0: int, x1: int) -> list:
        """Keys of the per-process chunk cache (:mod:`tilegraph.source.chunk_cache`) that reading this box
        goes through, for :meth:`~tilegraph.source.chunk_cache.ChunkCache.release`. Default: none (reads
        are not cached)."""
        return []

    @property
    def cache_rows(self) -> int | None:
        """Rows of the chunks the cache holds for this source (``None``: reads are not cached)."""
        return None

    def describe(self) -> dict:
        """Short description for ``tilegraph info``."""
        return {
            "path": self.path,
            "kind": type(self).__name__,
            "shape": list(self.shape),
            "channels": self.channels,
            "dtype": str(self.dtype),
            "layout": self.layout,
        }

    def _check_dtype(self) -> None:
        if np.dtype(self.dtype) not in SUPPORTED_DTYPES:
            raise UnsupportedSourceError(
                f"dtype {np.dtype(self.dtype)} is not supported",
                path=self.path,
                hint="convert to uint8, uint16, float16 or float32",
            )
        if self.shape[0] <= 0 or self.shape[1] <= 0:
            raise UnsupportedSourceError(f"image has zero size {self.shape}", path=self.path)


def infer_layout(shape: tuple[int, ...], layout: str | None = None, *, path: str | None = None) -> str:
    """Decide the axis order of an array: ``YX``, ``YXC`` or ``CYX``.

    A 3-D array whose last axis has at most 4 entries is YXC; one whose first axis has at most 4
    entries (and the last more) is CYX. Pass ``layout=`` to settle other cases.
    """
    if layout is not None:
        if layout not in ("YX", "YXC", "CYX") or len(layout) != len(shape):
            raise UnsupportedSourceError(
                f"layout {layout!r} does not fit an array of shape {shape}", path=path
            )
        return layout
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[2] <= 4:
            return "YXC"
        if shape[0] <= 4:
            return "CYX"
        raise UnsupportedSourceError(
            f"cannot tell the channel axis of shape {shape}", path=path, hint="pass layout='YXC' or 'CYX'"
        )
    raise UnsupportedSourceError(
        f"arrays must be 2-D or 3-D images, got shape {shape}",
        path=path,
        hint="select one image or plane first",
    )


def to_yxc(block: np.ndarray, layout: str) -> np.ndarray:
    """Reorder a block read in ``layout`` to YXC."""
    if layout == "YX":
        return block[:, :, None]
    if layout == "CYX":
        return np.moveaxis(block, 0, -1)
    return block


def region_index(layout: str, y0: int, y1: int, x0: int, x1: int) -> tuple[slice, ...]:
    """Index of a region in an array stored with ``layout``."""
    ys, xs = slice(y0, y1), slice(x0, x1)
    if layout == "YX":
        return ys, xs
    if layout == "CYX":
        return slice(None), ys, xs
    return ys, xs, slice(None)


def dims_of(shape: tuple[int, ...], layout: str) -> tuple[tuple[int, int], int]:
    """``((rows, cols), channels)`` of an array with ``layout``."""
    if layout == "YX":
        return (shape[0], shape[1]), 1
    if layout == "CYX":
        return (shape[1], shape[2]), shape[0]
    return (shape[0], shape[1]), shape[2]


class _StageBand:
    """Copy rows ``[r0, r1)`` of a source into the staged Zarr (picklable task)."""

    def __init__(self, source: Source, path: str, r0: int, r1: int):
        self.source, self.path, self.r0, self.r1 = source, path, r0, r1

    def __call__(self) -> int:
        import zarr

        block = self.source.read(self.r0, self.r1, 0, self.source.shape[1])
        zarr.open_array(self.path, mode="r+")[self.r0 : self.r1] = block
        return int(block.nbytes)
