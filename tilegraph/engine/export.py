"""The single-writer export step: the finished Zarr output to TIFF, PNG or JPEG."""

from __future__ import annotations

import importlib

__all__ = ["export_task", "validate_task"]

_EXPORTERS = {
    (".tif", ".tiff", ".btf"): "tilegraph.sink.tiff_sink:export",
    (".png", ".jpg", ".jpeg"): "tilegraph.sink.raster_sink:export",
}


def export_task(zarr_path: str, destination: str, metadata, provenance: dict, options: dict) -> str:
    """Write ``destination`` from the finished output at ``zarr_path`` (runs in one task)."""
    lower = destination.lower()
    for suffixes, target in _EXPORTERS.items():
        if lower.endswith(suffixes):
            module, _, name = target.partition(":")
            fn = getattr(importlib.import_module(module), name)
            return fn(zarr_path, destination, metadata=metadata, provenance=provenance, **options)
    raise ValueError(f"no exporter for {destination}")


def validate_task(destination: str, *, shape, dtype, metadata, options: dict) -> None:
    """Raise :class:`~tilegraph.errors.DestinationError` now if the export would be refused later."""
    from tilegraph.sink.tiff_sink import validate_export

    keep = {k: v for k, v in options.items() if k in ("compression", "tile", "bigtiff", "quality")}
    validate_export(destination, shape=shape, dtype=dtype, metadata=metadata, **keep)
