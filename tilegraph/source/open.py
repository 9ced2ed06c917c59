"""``open_source``: normalise whatever the user passes into a :class:`Source`, once, at the edge.

Readers are found in a lazy registry (format name -> ``"module:Class"``), imported on first use.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from tilegraph.errors import SourceError, SourceNotFoundError, UnsupportedSourceError
from tilegraph.source.abc import Source

__all__ = ["open_source", "READERS", "detect_format"]

#: format name -> "module:callable(path, **options) -> Source"
READERS: dict[str, str] = {
    "zarr": "tilegraph.source.zarr_source:ZarrSource",
    "tiff": "tilegraph.source.tiff_source:TiffSource",
    "png": "tilegraph.source.raster_source:PngSource",
    "jpeg": "tilegraph.source.raster_source:JpegSource",
}

_MAGIC = (
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
)
_SUFFIX = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".btf": "tiff",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".zarr": "zarr",
}


def detect_format(path: str) -> str:
    """Name the format of a file or URL from its content (magic bytes), else its suffix."""
    from tilegraph.source.zarr_source import is_zarr_path

    if is_zarr_path(path):
        return "zarr"
    if "://" in path:
        suffix = Path(path.split("?")[0]).suffix.lower()
        if suffix in _SUFFIX:
            return _SUFFIX[suffix]
        raise UnsupportedSourceError("cannot tell the format of this URL from its suffix", path=path)
    if not os.path.exists(path):
        raise SourceNotFoundError("no such file or directory", path=path, hint="check the path")
    if os.path.isdir(path):
        raise UnsupportedSourceError(
            "is a directory but not a Zarr array or group",
            path=path,
            hint="point at an image file or a .zarr",
        )
    if os.path.getsize(path) == 0:
        from tilegraph.errors import CorruptSourceError

        raise CorruptSourceError(
            "file is empty (0 bytes)",
            path=path,
            hint="the copy or download was probably interrupted; copy it again",
        )
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    suffix = Path(path).suffix.lower()
    raise UnsupportedSourceError(
        f"not a TIFF, PNG, JPEG or Zarr file (suffix {suffix or 'none'}, first bytes {head[:8]!r})",
        path=path,
        hint="tilegraph reads TIFF/BigTIFF/OME-TIFF, PNG, JPEG and Zarr",
    )


def _reader(fmt: str):
    target = READERS[fmt]
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UnsupportedSourceError(f"no reader for {fmt} available ({exc})") from exc


def open_source(obj, *, layout: str | None = None, **options) -> Source:
    """Return a :class:`Source` for a path, URL, numpy/dask/zarr array or an existing source.

    Parameters
    ----------
    obj
        A :class:`Source`, a path or fsspec URL (TIFF, PNG, JPEG, Zarr v2/v3, OME-Zarr), or an array.
    layout
        ``"YX"``, ``"YXC"`` or ``"CYX"`` when it cannot be inferred.
    **options
        Reader options (``level=`` for pyramids and OME-Zarr, ``storage_options=`` for URLs, ...).

    Raises
    ------
    SourceError
        Missing, unreadable or unsupported input; the message names the file.
    """
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, str | os.PathLike):
        path = os.fspath(obj)
        fmt = detect_format(path)
        reader = _reader(fmt)
        if layout is not None:
            options["layout"] = layout
        try:
            return reader(path, **options)
        except SourceError:
            raise
        except TypeError as exc:
            raise UnsupportedSourceError(f"bad reader options for {fmt}: {exc}", path=path) from exc
    try:
        import zarr

        if isinstance(obj, zarr.Array):
            from tilegraph.source.zarr_source import ZarrSource

            root = getattr(obj.store, "root", None)
            if root is not None:
                return ZarrSource(os.path.join(str(root), obj.path) if obj.path else str(root), layout=layout)
    except ImportError:  # pragma: no cover - zarr is a dependency
        pass
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        from tilegraph.source.array_source import ArraySource

        return ArraySource(
            obj if hasattr(obj, "compute") or hasattr(obj, "store") else np.asarray(obj), layout=layout
        )
    raise UnsupportedSourceError(f"cannot use an object of type {type(obj).__name__} as an image source")
