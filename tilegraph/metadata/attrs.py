"""Source metadata recorded in, and read back from, Zarr attributes (byte for byte, JSON-safe)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tilegraph.metadata import SourceMetadata

__all__ = ["metadata_to_attrs", "attrs_to_metadata"]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def metadata_to_attrs(meta: SourceMetadata | None) -> dict[str, Any]:
    """Zarr attributes recording a source's metadata byte for byte (JSON-safe).

    Keys: ``icc_profile_hex``, ``exif_hex``, ``xmp_hex`` (hex strings; absent when the source has
    none), ``resolution`` (``[x, y, unit]``), ``orientation_applied`` and ``source`` (the reader's
    ``extra`` dict). :class:`~tilegraph.source.zarr_source.ZarrSource` reads them back.
    """
    if meta is None:
        return {}
    attrs: dict[str, Any] = {}
    if meta.icc_profile is not None:
        attrs["icc_profile_hex"] = bytes(meta.icc_profile).hex()
    if meta.exif is not None:
        attrs["exif_hex"] = bytes(meta.exif).hex()
    if meta.xmp is not None:
        attrs["xmp_hex"] = bytes(meta.xmp).hex()
    if meta.resolution is not None:
        attrs["resolution"] = [float(meta.resolution[0]), float(meta.resolution[1]), str(meta.resolution[2])]
    attrs["orientation_applied"] = bool(meta.orientation_applied)
    attrs["source"] = _jsonable(meta.extra)
    return attrs


def attrs_to_metadata(attrs) -> SourceMetadata:
    """The inverse of :func:`metadata_to_attrs` (unknown keys are ignored)."""
    attrs = dict(attrs or {})

    def hexbytes(key):
        v = attrs.get(key)
        return bytes.fromhex(v) if isinstance(v, str) and v else None

    res = attrs.get("resolution")
    resolution = (
        (float(res[0]), float(res[1]), str(res[2]))
        if isinstance(res, list | tuple) and len(res) == 3
        else None
    )
    return SourceMetadata(
        icc_profile=hexbytes("icc_profile_hex"),
        resolution=resolution,
        exif=hexbytes("exif_hex"),
        xmp=hexbytes("xmp_hex"),
        orientation_applied=bool(attrs.get("orientation_applied", False)),
        extra=dict(attrs.get("source") or {}),
    )
