"""Sources: images read region by region (Zarr, OME-Zarr, TIFF, PNG, JPEG, in-memory arrays)."""

from tilegraph.source.abc import Source, SourceMetadata
from tilegraph.source.open import READERS, detect_format, open_source
from tilegraph.source.padding import pad_indices, read_padded

__all__ = [
    "Source",
    "SourceMetadata",
    "READERS",
    "detect_format",
    "open_source",
    "pad_indices",
    "read_padded",
]
