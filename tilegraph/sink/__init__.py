"""Sinks: the Zarr v3 output (and exporters to TIFF, PNG, JPEG)."""

from tilegraph.sink.zarr_sink import create_output, mark_complete, output_layout, remove_path, same_location

__all__ = ["create_output", "mark_complete", "output_layout", "remove_path", "same_location"]
