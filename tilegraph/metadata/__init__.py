"""Image metadata shared by sources and sinks: ICC, EXIF, XMP, resolution, and how they are recorded.

:class:`SourceMetadata` is what a reader finds and a sink carries over; :mod:`.attrs` records it in
Zarr attributes byte for byte; :mod:`.exif` parses and patches EXIF/XMP; :mod:`.containers` walks
PNG chunks and JPEG segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SourceMetadata"]


@dataclass
class SourceMetadata:
    """What a sink may carry over from the source.

    Attributes
    ----------
    icc_profile : bytes or None
        Embedded ICC profile, passed through byte for byte.
    resolution : tuple or None
        ``(x_resolution, y_resolution, unit)`` as found in the file.
    exif : bytes or None
        Raw EXIF block (orientation already applied by the reader when ``orientation_applied``).
    xmp : bytes or None
        Raw XMP packet.
    extra : dict
        Anything else a reader records (format name, compression, page, level, ...).
    """

    icc_profile: bytes | None = None
    resolution: tuple | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    orientation_applied: bool = False
    extra: dict = field(default_factory=dict)
