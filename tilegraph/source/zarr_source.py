"""Zarr v2/v3 arrays and OME-Zarr images (a chosen level, 0 by default), local or fsspec URL."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tilegraph.errors import (
    CorruptSourceError,
    IncompleteOutputError,
    SourceNotFoundError,
    UnsupportedSourceError,
)
from tilegraph.source.abc import Source, SourceMetadata, dims_of, infer_layout, region_index, to_yxc

__all__ = ["ZarrSource", "is_zarr_path", "check_complete"]


def is_zarr_path(path: str) -> bool:
    """True for a path that looks like a Zarr array or group (v2 or v3)."""
    p = str(path).rstrip("/")
    if "://" in p and not p.startswith("file://"):
        return p.endswith(".zarr") or ".zarr/" in p
    p = p.removeprefix("file://")
    return p.endswith(".zarr") or any(
        os.path.exists(os.path.join(p, name)) for name in ("zarr.json", ".zarray", ".zgroup")
    )


def check_complete(attrs, path: str) -> None:
    """Refuse a tilegraph output whose completion marker is missing."""
    meta = dict(attrs).get("tilegraph")
    if isinstance(meta, dict) and not meta.get("complete", False):
        raise IncompleteOutputError(
            "this is a tilegraph output whose run did not finish (no completion marker)",
            path=path,
            hint="rerun the job with overwrite=True, or delete the directory",
        )


class ZarrSource(Source):
    """A Zarr array (v2 or v3) or OME-Zarr image read region by region.

    Parameters
    ----------
    path
        Local path or fsspec URL of an array, or of an OME-Zarr group (``level`` picks the scale).
    layout
        Axis order if it cannot be inferred.
    level
        OME-Zarr multiscale level (0 is full resolution).
    storage_options
        fsspec options for remote URLs.
    """

    path: str  # file-backed: always a path
    cache_token: str | None = None  # reads go through the per-process chunk cache under this token

    def __init__(
        self, path, *, layout: str | None = None, level: int = 0, storage_options: dict | None = None
    ):
        self.path = str(path).removeprefix("file://")
        self.level = int(level)
        self.storage_options = storage_options
        arr, axes = self._open()
        self.layout = infer_layout(tuple(arr.shape), layout or axes, path=self.path)
        self.shape, self.channels = dims_of(tuple(arr.shape), self.layout)
        self.dtype = np.dtype(arr.dtype)
        self._check_dtype()
        self.array_path = arr.store_path.path if hasattr(arr, "store_path") else ""

    # pickled as path + options; the array is reopened lazily in each process
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_array", None)
        return state

    def _open(self):
        import zarr

        kw: dict[str, Any] = (
            {"storage_options": self.storage_options} if self.storage_options and "://" in self.path else {}
        )
        local = self.path.removeprefix("file://")
        if "://" not in self.path and not os.path.exists(local):
            raise SourceNotFoundError("no such file or directory", path=self.path)
        try:
            node = zarr.open(self.path, mode="r", **kw)
        except FileNotFoundError:
            raise SourceNotFoundError("no Zarr array or group here", path=self.path) from None
        except Exception as exc:  # zarr raises many kinds for damaged metadata
            raise CorruptSourceError(f"cannot open as Zarr: {exc}", path=self.path) from exc
        axes = None
        if isinstance(node, zarr.Group):
            node, axes = self._ome_level(node)
        check_complete(node.attrs, self.path)
        self._array = node
        return node, axes

    def _ome_level(self, group):
        attrs = dict(group.attrs)
        ome = attrs.get("ome", attrs)
        ms = ome.get("multiscales")
        if not ms:
            raise UnsupportedSourceError(
                "a Zarr group without OME-Zarr 'multiscales' metadata",
                path=self.path,
                hint="point at the array inside the group",
            )
        datasets = ms[0]["datasets"]
        if self.level >= len(datasets):
            raise UnsupportedSourceError(
                f"level {self.level} requested, the image has {len(datasets)}", path=self.path
            )
        arr = group[datasets[self.level]["path"]]
        names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
        layout = None
        if names:
            keep = [n for n in names if n in ("c", "y", "x")]
            extra = [i for i, n in enumerate(names) if n not in ("c", "y", "x")]
            if any(arr.shape[i] != 1 for i in extra):
                raise UnsupportedSourceError(
                    f"OME-Zarr axes {names} have t/z extent > 1",
                    path=self.path,
                    hint="select one plane first",
                )
            if extra:
                arr = _Squeezed(arr, tuple(extra))
            layout = "".join(keep).upper()
        return arr, layout

    @property
    def array(self):
        """The opened array (reopened after unpickling)."""
        if getattr(self, "_array", None) is None:
            arr, _ = self._open()
            if not hasattr(arr, "shape") or len(arr.shape) not in (2, 3):
                raise CorruptSourceError("array changed shape since planning", path=self.path)
        return self._array

    @property
    def metadata(self) -> SourceMetadata:
        from tilegraph.metadata.attrs import attrs_to_metadata

        attrs = dict(getattr(self.array, "attrs", {}) or {})
        meta = attrs_to_metadata(attrs)
        meta.extra = {**meta.extra, "format": "zarr"}
        return meta

    def cached(self, token: str) -> ZarrSource:
        """This source reading through the per-process chunk cache under ``token`` (one per run)."""
        import copy

        other = copy.copy(self)
        other.cache_token = token
        return other

    def read(self, y0, y1, x0, x1):
        grid = self._cache_grid()
        if grid is None:
            return to_yxc(np.asarray(self.array[region_index(self.layout, y0, y1, x0, x1)]), self.layout)
        return self._read_chunks(grid, y0, y1, x0, x1)

    def _cache_grid(self) -> tuple[int, int] | None:
        """``(rows, cols)`` of the chunks reads go through the cache by, ``None``: reads are not cached."""
        if self.cache_token is None or isinstance(self.array, _Squeezed):
            return None
        chunks = getattr(self.array, "chunks", None)
        if chunks is None:
            return None
        return (int(chunks[1]), int(chunks[2])) if self.layout == "CYX" else (int(chunks[0]), int(chunks[1]))

    def _cache_key(self, r: int, c: int) -> tuple:
        return (self.cache_token, self.path, self.array_path, self.level, r, c)

    @property
    def cache_rows(self) -> int | None:
        grid = self._cache_grid()
        return None if grid is None else grid[0]

    def cache_keys(self, y0: int, y1: int, x0: int, x1: int) -> list:
        grid = self._cache_grid()
        if grid is None:
            return []
        cy, cx = grid
        return [
            self._cache_key(r, c)
            for r in range(y0 // cy, (y1 - 1) // cy + 1)
            for c in range(x0 // cx, (x1 - 1) // cx + 1)
        ]

    def _read_chunks(self, grid: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The region assembled from whole source chunks, each decoded once per process (see chunk_cache)."""
        from tilegraph.source.chunk_cache import chunk_cache

        cy, cx = grid
        h, w = self.shape
        out = np.empty((y1 - y0, x1 - x0, self.channels), dtype=self.dtype)
        cache = chunk_cache()
        for r in range(y0 // cy, (y1 - 1) // cy + 1):
            for c in range(x0 // cx, (x1 - 1) // cx + 1):
                a0, a1, b0, b1 = r * cy, min(h, (r + 1) * cy), c * cx, min(w, (c + 1) * cx)

                def load(a0=a0, a1=a1, b0=b0, b1=b1) -> np.ndarray:
                    return to_yxc(
                        np.asarray(self.array[region_index(self.layout, a0, a1, b0, b1)]), self.layout
                    )

                block = cache.get(self._cache_key(r, c), load)
                ry0, ry1, rx0, rx1 = max(y0, a0), min(y1, a1), max(x0, b0), min(x1, b1)
                out[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = block[
                    ry0 - a0 : ry1 - a0, rx0 - b0 : rx1 - b0
                ]
        return out


class _Squeezed:
    """A view of an array with singleton axes (t, z) removed."""

    def __init__(self, arr, axes):
        self._arr, self._axes = arr, axes
        self.shape = tuple(s for i, s in enumerate(arr.shape) if i not in axes)
        self.dtype = arr.dtype
        self.attrs = arr.attrs

    def __getitem__(self, idx):
        full, it = [], iter(idx)
        for i in range(len(self._arr.shape)):
            full.append(0 if i in self._axes else next(it))
        return self._arr[tuple(full)]
