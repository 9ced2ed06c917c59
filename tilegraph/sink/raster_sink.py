"""PNG and JPEG outputs, for results that fit in memory (encoded with imagecodecs, never Pillow).

* PNG: 8- or 16-bit (16-bit written as 16-bit, exactly), 1-4 channels. Float data is refused.
* JPEG: 8-bit gray or RGB only. 16-bit or float data, and alpha, are refused with
  :class:`~tilegraph.errors.DestinationError`, never converted silently.
* Metadata: ICC profile (PNG ``iCCP``; JPEG ``APP2 ICC_PROFILE`` segments), EXIF (PNG ``eXIf``; JPEG
  ``APP1 Exif``) with output dimensions and orientation 1 once applied, XMP (PNG ``iTXt
  XML:com.adobe.xmp``; JPEG ``APP1``), resolution (PNG ``pHYs``; JPEG JFIF density), provenance JSON
  (PNG ``iTXt`` keyword ``tilegraph``; JPEG comment ``COM`` starting ``tilegraph:``).
* Written to a hidden temporary file and renamed, like every tilegraph sink.

:func:`export` here is the same dispatcher as :func:`tilegraph.sink.tiff_sink.export`.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from typing import Any

import numpy as np

from tilegraph.errors import DestinationError, SinkError
from tilegraph.metadata import SourceMetadata
from tilegraph.sink.tiff_sink import (
    atomic_path,
    check_destination,
    export,
    open_output,
    output_geometry,
    output_metadata,
    provenance_json,
)

__all__ = [
    "export",
    "check_raster",
    "write_raster",
    "write_png",
    "write_jpeg",
    "read_raster_provenance",
    "MAX_JPEG_SIDE",
]

log = logging.getLogger("tilegraph.sink")

MAX_JPEG_SIDE = 65500  # libjpeg's limit
_PROVENANCE_KEY = b"tilegraph"
_COM_PREFIX = b"tilegraph:"


def _memory_check(nbytes: int, destination: str, fmt: str) -> None:
    """Refuse an in-memory export that needs more than half the available memory."""
    try:
        import psutil

        avail = psutil.virtual_memory().available
    except Exception:  # pragma: no cover - psutil is a dependency
        return
    need = 3 * nbytes  # pixels + encoded stream + headroom
    if need > avail // 2:
        raise DestinationError(
            f"a {fmt} output is encoded in memory and needs about {need / 2**30:.1f} GiB; only "
            f"{avail / 2**30:.1f} GiB are available",
            path=destination,
            hint="write a .tif (streamed tile by tile) or .zarr destination instead",
        )


def check_raster(
    destination: str,
    rows: int,
    cols: int,
    channels: int,
    dtype,
    *,
    compression: str | int | None = None,
    quality: int = 95,
) -> int | None:
    """Refuse what a PNG/JPEG cannot hold as it is; return the PNG zlib level (or ``None``).

    Raises
    ------
    DestinationError
        Float data, 16-bit to JPEG, alpha or 2 channels to JPEG, sides over 65500 for JPEG, an
        inapplicable ``compression``, or an output too large to encode in memory.
    """
    dtype = np.dtype(dtype)
    is_png = destination.lower().endswith(".png")
    fmt = "PNG" if is_png else "JPEG"
    level = None
    if is_png:
        if dtype not in (np.dtype("uint8"), np.dtype("uint16")):
            raise DestinationError(
                f"PNG cannot store {dtype} data without converting it",
                path=destination,
                hint="ask for output_dtype='uint16' (or uint8) explicitly, or write .tif",
            )
        if isinstance(compression, int) and not isinstance(compression, bool) and 0 <= compression <= 9:
            level = compression
        elif compression not in (None, "zlib", "deflate"):
            raise DestinationError(
                f"compression {compression!r} does not apply to PNG",
                path=destination,
                hint="leave compression unset, or give a zlib level 0-9",
            )
    else:
        if dtype != np.dtype("uint8"):
            raise DestinationError(
                f"JPEG stores 8-bit data only; this output is {dtype} and would lose precision",
                path=destination,
                hint="write .tif or .png to keep 16 bits, or ask for output_dtype='uint8' explicitly",
            )
        if channels not in (1, 3):
            raise DestinationError(
                f"JPEG cannot store {channels} channels (alpha would be dropped)",
                path=destination,
                hint="write .png or .tif to keep the alpha channel",
            )
        if rows > MAX_JPEG_SIDE or cols > MAX_JPEG_SIDE:
            raise DestinationError(
                f"JPEG images are limited to {MAX_JPEG_SIDE} pixels a side; this one is {cols} x {rows}",
                path=destination,
                hint="write .tif instead",
            )
        if compression not in (None, "jpeg"):
            raise DestinationError(
                f"compression {compression!r} does not apply to JPEG",
                path=destination,
                hint="leave compression unset for JPEG",
            )
        if not 1 <= int(quality) <= 100:
            raise DestinationError(
                f"JPEG quality {quality} is not between 1 and 100",
                path=destination,
                hint="pass quality=95 or another value from 1 to 100",
            )
    _memory_check(rows * cols * channels * dtype.itemsize, destination, fmt)
    return level


def write_raster(
    zarr_array_or_path,
    destination: str | os.PathLike,
    *,
    metadata: SourceMetadata | None = None,
    provenance: dict | None = None,
    compression: str | int | None = None,
    quality: int = 95,
) -> str:
    """Write a PNG or JPEG (by suffix); see :func:`tilegraph.sink.tiff_sink.export` for the parameters.

    ``compression`` may be ``None``, ``"zlib"``/``"deflate"`` or a zlib level 0-9 for PNG, and ``None``
    or ``"jpeg"`` for JPEG.
    """
    destination = os.fspath(destination)
    is_png = destination.lower().endswith(".png")
    fmt = "PNG" if is_png else "JPEG"
    arr = open_output(zarr_array_or_path)
    rows, cols, channels = output_geometry(arr, destination)
    dtype = np.dtype(arr.dtype)
    level = check_raster(destination, rows, cols, channels, dtype, compression=compression, quality=quality)
    check_destination(destination, metadata)
    image = np.asarray(arr[...])
    if image.ndim == 3 and channels == 1:
        image = image[:, :, 0]
    om = output_metadata(metadata, rows, cols)
    prov = provenance_json(provenance)
    try:
        if is_png:
            encoded = write_png(image, om, prov, level=level)
        else:
            encoded = write_jpeg(image, om, prov, quality=int(quality))
    except DestinationError:
        raise
    except Exception as exc:
        raise SinkError(
            f"{fmt} encoding failed ({type(exc).__name__}: {exc})",
            path=destination,
            hint="pass a Zarr array, a path to one, or a numpy array",
        ) from exc
    with atomic_path(destination) as tmp:
        with open(tmp, "wb") as f:
            f.write(encoded)
    return destination


# --------------------------------------------------------------------------------------------------
# PNG


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def _itxt(keyword: bytes, text: bytes, *, compress: bool = False) -> bytes:
    payload = zlib.compress(text, 9) if compress else text
    return _chunk(b"iTXt", keyword + b"\x00" + bytes([1 if compress else 0, 0]) + b"\x00\x00" + payload)


def write_png(image: np.ndarray, om: dict[str, Any], provenance: str, *, level: int | None = None) -> bytes:
    """Encode ``image`` (YX or YXC, uint8/uint16) as PNG bytes with the metadata chunks of ``om``.

    ``om`` is :func:`tilegraph.sink.tiff_sink.output_metadata`'s dict; ``provenance`` a JSON string.
    """
    import imagecodecs

    png = bytes(imagecodecs.png_encode(image, level=level))
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    extra = []
    if om.get("icc") is not None:
        extra.append(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(bytes(om["icc"]), 9)))
    if om.get("resolution") is not None:
        x, y, unit = om["resolution"]
        per_m = {"inch": 1 / 0.0254, "centimeter": 100.0}.get(str(unit))
        if per_m and x > 0 and y > 0:
            extra.append(_chunk(b"pHYs", struct.pack(">IIB", round(x * per_m), round(y * per_m), 1)))
    if om.get("exif") is not None:
        exif = bytes(om["exif"])
        extra.append(_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    if om.get("xmp") is not None:
        extra.append(_itxt(b"XML:com.adobe.xmp", bytes(om["xmp"])))
    if om.get("description"):
        extra.append(_itxt(b"Description", str(om["description"]).encode("utf-8")))
    extra.append(_itxt(b"Software", _software().encode()))
    extra.append(_itxt(_PROVENANCE_KEY, provenance.encode("ascii"), compress=True))
    return png[:ihdr_end] + b"".join(extra) + png[ihdr_end:]


def _software() -> str:
    from tilegraph._version import __version__

    return f"tilegraph {__version__}"


# --------------------------------------------------------------------------------------------------
# JPEG


def _segment(marker: int, body: bytes) -> bytes:
    if len(body) + 2 > 0xFFFF:
        raise ValueError(f"JPEG segment of {len(body)} bytes is too large")
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def write_jpeg(image: np.ndarray, om: dict[str, Any], provenance: str, *, quality: int = 95) -> bytes:
    """Encode ``image`` (YX or YXC with 3 channels, uint8) as JPEG bytes with the metadata of ``om``."""
    import imagecodecs

    jpg = bytes(imagecodecs.jpeg8_encode(image, level=quality))
    # keep a leading JFIF APP0 first (patched with the resolution), then our segments
    pos = 2
    head = jpg[:2]
    if jpg[2:4] == b"\xff\xe0":
        (n,) = struct.unpack(">H", jpg[4:6])
        app0 = bytearray(jpg[2 : 4 + n])
        pos = 4 + n
        res = om.get("resolution")
        if res is not None and app0[4:9] == b"JFIF\x00":
            x, y, unit = res
            code = {"inch": 1, "centimeter": 2}.get(str(unit))
            if code and 0 < round(x) <= 0xFFFF and 0 < round(y) <= 0xFFFF:
                app0[11] = code
                app0[12:16] = struct.pack(">HH", round(x), round(y))
        head += bytes(app0)
    segs = []
    if om.get("exif") is not None:
        exif = bytes(om["exif"])
        exif = exif if exif.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + exif
        if len(exif) + 2 <= 0xFFFF:
            segs.append(_segment(0xE1, exif))
        else:
            log.warning("EXIF block of %d bytes does not fit a JPEG APP1 segment; not written", len(exif))
    if om.get("xmp") is not None:
        body = b"http://ns.adobe.com/xap/1.0/\x00" + bytes(om["xmp"])
        if len(body) + 2 <= 0xFFFF:
            segs.append(_segment(0xE1, body))
        else:
            log.warning("XMP packet of %d bytes does not fit a JPEG APP1 segment; not written", len(body))
    if om.get("icc") is not None:
        icc = bytes(om["icc"])
        size = 0xFFFF - 2 - 14
        parts = [icc[i : i + size] for i in range(0, len(icc), size)] or [b""]
        if len(parts) > 255:
            raise DestinationError(
                "the ICC profile is too large for JPEG (over 255 segments)", hint="write .tif or .png"
            )
        for i, part in enumerate(parts, 1):
            segs.append(_segment(0xE2, b"ICC_PROFILE\x00" + bytes([i, len(parts)]) + part))
    com = _COM_PREFIX + provenance.encode("ascii")
    if len(com) + 2 <= 0xFFFF:
        segs.append(_segment(0xFE, com))
    else:
        log.warning("provenance of %d bytes does not fit a JPEG comment; not written", len(com))
    return head + b"".join(segs) + jpg[pos:]


# --------------------------------------------------------------------------------------------------


def read_raster_provenance(path: str | os.PathLike) -> dict | None:
    """The provenance dict tilegraph wrote into a PNG or JPEG (``None`` if absent)."""
    from tilegraph.metadata.containers import jpeg_segments, png_chunks

    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\x89PNG"):
        for ctype, s, e in png_chunks(data, path=path):
            body = data[s:e]
            if ctype == b"iTXt" and body.startswith(_PROVENANCE_KEY + b"\x00"):
                rest = body[len(_PROVENANCE_KEY) + 1 :]
                compressed = rest[0]
                _lang, _, rest2 = rest[2:].partition(b"\x00")
                _key, _, text = rest2.partition(b"\x00")
                return json.loads(zlib.decompress(text) if compressed else text)
        return None
    for marker, s, e in jpeg_segments(data, path=path):
        if marker == 0xFE and data[s:e].startswith(_COM_PREFIX):
            return json.loads(data[s + len(_COM_PREFIX) : e])
    return None
