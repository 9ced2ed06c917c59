"""The tile store: every window's full model output, one chunk per window, between infer and blend.

It is a Zarr v3 array ``(windows, C', H', W')`` with one chunk per window, no compression, the
``bytes`` codec in little-endian order and ``.``-separated chunk keys (``c.<window>.0.0.0``: one
directory of files, nothing to create per window, quick to remove), so a kept store
(``keep_tile_store=True``) opens with ``zarr.open_array``. On a local file system (the usual scratch
space, shared by the workers of one machine or over NFS/Lustre), tasks read and write the chunk
files directly: such a chunk file is exactly the window's bytes in C order, so a window is written
with one ``write`` (to a temporary name, then renamed, so a chunk never exists half written) and
a blend task reads only the rows it needs. zarr-python's machinery costs about 2.5 ms of CPU per
call, several times the copy itself; on 2 cores that was a quarter of tilegraph's CPU per window.
Stores behind URLs (``memory://``, ``s3://``...) go through zarr.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass

import numpy as np

from tilegraph._cast import astype_float
from tilegraph.errors import SinkError, TileStoreError
from tilegraph.sink.zarr_sink import write_every_chunk

__all__ = ["TileStore"]


@dataclass(frozen=True)
class TileStore:
    """Where window outputs wait for blending (small and picklable; sent to every task).

    Attributes
    ----------
    path : str
        Location of the Zarr array (a local path or a URL).
    shape : tuple of int
        ``(windows, channels, height, width)``.
    dtype : str
        Store dtype (``Plan.tile_store_dtype``).
    """

    path: str
    shape: tuple[int, int, int, int]
    dtype: str

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str, shape: tuple[int, int, int, int], dtype: str) -> TileStore:
        """Create the (empty) store; raises :class:`~tilegraph.errors.SinkError` if it cannot."""
        import zarr
        from zarr.codecs import BytesCodec

        dt = np.dtype(dtype)
        n, c, h, w = (int(v) for v in shape)
        try:
            zarr.create_array(
                store=path,
                shape=(n, c, h, w),
                chunks=(1, c, h, w),
                dtype=dt,
                fill_value=np.nan if dt.kind == "f" else 0,
                compressors=None,
                serializer=BytesCodec(endian="little"),
                chunk_key_encoding={"name": "default", "separator": "."},
                overwrite=True,
            )
        except OSError as exc:
            raise SinkError(f"cannot create the tile store: {exc.strerror or exc}", path=path) from exc
        return cls(path=path, shape=(n, c, h, w), dtype=dt.name)

    # ----------------------------------------------------------------- properties
    @property
    def direct(self) -> bool:
        """Whether tasks read and write chunk files themselves (local paths, little-endian hosts)."""
        return _local_root(self.path) is not None and sys.byteorder == "little"

    def chunk_path(self, index: int) -> str:
        """File of window ``index``'s chunk (local stores)."""
        root = _local_root(self.path)
        if root is None:
            raise ValueError(f"the tile store {self.path} is not on a local file system")
        return os.path.join(root, f"c.{int(index)}.0.0.0")

    # ----------------------------------------------------------------- I/O
    def write(self, index: int, window: np.ndarray, *, array=None) -> None:
        """Store window ``index``'s output ``(C', H', W')`` (cast to the store dtype).

        ``array`` is an open zarr array of this store, reused across calls on the zarr path.
        """
        n, c, h, w = self.shape
        window = np.asarray(window)
        if window.shape != (c, h, w):
            raise TileStoreError(
                f"window {index} has shape {window.shape}, the store holds {(c, h, w)}", path=self.path
            )
        if not self.direct:
            (array if array is not None else self.open())[index] = window
            return
        dt = np.dtype(self.dtype)
        if window.dtype != dt:
            window = astype_float(window, dt)
        data = np.ascontiguousarray(window)  # native order is little-endian here (see ``direct``)
        target = self.chunk_path(index)
        tmp = f"{target}.{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as f:
                f.write(data.tobytes() if not data.flags.c_contiguous else memoryview(data).cast("B"))  # type: ignore[arg-type]
            os.replace(tmp, target)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise SinkError(
                f"cannot write window {index} to the tile store: {exc.strerror or exc}", path=self.path
            ) from exc

    def read(self, index: int, rows: slice, cols: slice, *, array=None) -> np.ndarray | None:
        """Window ``index``'s output over ``rows`` x ``cols`` as ``(C', r, c)``; ``None`` if never written.

        Slices are in the window's output coordinates, with steps of 1. On the zarr path a float
        store's NaN fill tells an unwritten window (model outputs are checked finite).
        """
        n, c, h, w = self.shape
        r0, r1, _ = rows.indices(h)
        if not self.direct:
            return self._read_zarr(index, rows, cols, array)
        dt = np.dtype(self.dtype)
        out = np.empty((c, max(0, r1 - r0), w), dtype=dt)
        try:
            with open(self.chunk_path(index), "rb") as f:
                for k in range(c):
                    f.seek(((k * h) + r0) * w * dt.itemsize)
                    got = f.readinto(memoryview(out[k]).cast("B"))
                    if got != out[k].nbytes:
                        raise TileStoreError(
                            f"the tile store chunk of window {index} is truncated ({got} of {out[k].nbytes} bytes "
                            f"for channel {k})",
                            path=self.chunk_path(index),
                            hint="the scratch space lost data; rerun the job",
                        )
        except FileNotFoundError:
            return None
        return out[:, :, cols]

    def exists(self, index: int) -> bool:
        """Was window ``index`` written?"""
        if self.direct:
            return os.path.exists(self.chunk_path(index))
        return _zarr_chunk_exists(self.open(), index)

    def open(self, mode: str = "r+"):
        """The store as a zarr array (writing chunks equal to the fill value too)."""
        import zarr

        try:
            array = zarr.open_array(self.path, mode=mode)
        except Exception as exc:
            raise TileStoreError(f"cannot open the tile store: {exc}", path=self.path) from exc
        return write_every_chunk(array)

    def _read_zarr(self, index: int, rows: slice, cols: slice, array) -> np.ndarray | None:
        array = array if array is not None else self.open("r")
        if np.dtype(self.dtype).kind != "f":
            if not _zarr_chunk_exists(array, index):  # no NaN fill to tell
                return None
            return np.asarray(array[index, :, rows, cols])
        region = np.asarray(array[index, :, rows, cols])
        # NaN propagates through a sum; the exact test only when it is not finite (float16 overflow)
        if region.size and not np.isfinite(region.sum(dtype=np.float64)) and np.isnan(region).any():
            return None
        return region


def _local_root(path: str) -> str | None:
    """The local directory of ``path`` (``file://`` URLs included), or ``None`` for other URLs."""
    if path.startswith("file://"):
        return path[len("file://") :]
    if "://" in path:
        return None
    return path


def _zarr_chunk_exists(array, index: int) -> bool:
    from zarr.core.sync import sync

    key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
    prefix = f"{array.path}/" if array.path else ""
    return bool(sync(array.store.exists(prefix + key)))
