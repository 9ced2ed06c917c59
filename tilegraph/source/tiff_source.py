"""TIFF, BigTIFF and OME-TIFF read region by region through tifffile (and imagecodecs).

How a region is read depends on how the file stores its pixels (``TiffSource.storage``):

``"tiled"``
    Only the tiles that meet the region are read and decoded. ``region_reads`` is True.
``"contiguous"``
    Uncompressed pixels stored in one run of bytes: the region is sliced from a memory map, so only
    the bytes it needs are read. ``region_reads`` is True.
``"strips"``
    Several compressed strips: a region decodes the strips that meet its rows, over the full width.
    ``region_reads`` is False, so the pipeline first stages the file into a chunked Zarr with
    :meth:`TiffSource.stage_tasks`: one task per band of whole strips, run on the workers, so every
    strip is decoded once (not once per window row).
``"single"``
    One compressed strip holds the whole image (per sample plane): nothing smaller than the image can
    be decoded. ``region_reads`` is False and staging runs as a single task that needs memory for the
    whole decoded image; the source logs a message saying so (and keeps it in :attr:`TiffSource.notice`).
    With ``cache_dir=`` a direct :meth:`~TiffSource.read` converts the file once into a chunked Zarr
    cache there and reads from it afterwards.

The source is picklable as its path and options. The ``TiffFile`` is opened lazily in each process
(tifffile's objects and its Zarr store cannot be pickled) and kept in a small per-process cache.

This module also holds the small EXIF codec shared by the readers and the sinks (EXIF in tilegraph is
a TIFF-structured block, the payload of a JPEG APP1 ``Exif`` segment or of a PNG ``eXIf`` chunk):
:func:`parse_exif`, :func:`build_exif`, :func:`patch_exif`, :func:`exif_orientation`,
:func:`serialize_ifd`, plus :func:`patch_xmp` and the EXIF orientation helpers :func:`orient`,
:func:`oriented_shape`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import shutil
import struct
import threading
import uuid
from typing import Any

import numpy as np

from tilegraph.errors import (
    CorruptSourceError,
    ImageTooLargeError,
    InputError,
    SourceError,
    SourceNotFoundError,
    UnsupportedSourceError,
)
from tilegraph.source.abc import Source, SourceMetadata

__all__ = [
    "TiffSource",
    "DEFAULT_MAX_PIXELS",
    "resolve_max_pixels",
    "check_pixel_limit",
    "orient",
    "oriented_shape",
    "parse_exif",
    "build_exif",
    "patch_exif",
    "exif_orientation",
    "serialize_ifd",
    "patch_xmp",
    "segment_decode_count",
]

log = logging.getLogger("tilegraph.source")

#: Default limit on the pixels (rows x cols) a header may claim: 4 gigapixels. Legitimate originals of
#: hundreds of megapixels pass; a 100,000 x 100,000 claim is refused. Override per call with
#: ``max_pixels=`` or for the process with the environment variable ``TILEGRAPH_MAX_PIXELS``.
DEFAULT_MAX_PIXELS = 4_000_000_000

_ENV_MAX_PIXELS = "TILEGRAPH_MAX_PIXELS"

# Compressions tifffile can decode but tilegraph refuses: bilevel fax codes, old-style JPEG, EER.
_REFUSED_COMPRESSIONS = {2, 3, 4, 6, 65000, 65001, 65002}
# Photometric interpretations whose samples are the image as stored.
_PHOTOMETRIC_OK = {1: "minisblack", 2: "rgb"}
_PHOTOMETRIC_NAMES = {
    0: "MINISWHITE",
    3: "PALETTE",
    4: "MASK",
    5: "SEPARATED (CMYK)",
    6: "YCBCR",
    8: "CIELAB",
    9: "ICCLAB",
    10: "ITULAB",
    32803: "CFA",
    34892: "LINEAR_RAW",
}
_RESUNIT = {1: "none", 2: "inch", 3: "centimeter"}
# IFD0 tags of a TIFF that belong to the EXIF block tilegraph carries (descriptive tags only).
_IFD0_EXIF_TAGS = (270, 271, 272, 274, 305, 306, 315, 316, 33432)

_DECODES = collections.Counter()  # segments decoded in this process, for tests and diagnostics
_DECODES_LOCK = threading.Lock()


def segment_decode_count(reset: bool = False) -> int:
    """Number of TIFF strips or tiles decoded by this process so far.

    Parameters
    ----------
    reset
        Set the count back to zero after reading it.
    """
    with _DECODES_LOCK:
        n = _DECODES["segments"]
        if reset:
            _DECODES.clear()
    return n


# --------------------------------------------------------------------------------------------------
# pixel limit


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$TILEGRAPH_MAX_PIXELS``, else the default.

    Raises
    ------
    InputError
        The value is not a positive integer.
    """
    if max_pixels is None:
        env = os.environ.get(_ENV_MAX_PIXELS)
        if env is None or not env.strip():
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(float(env))
        except ValueError:
            raise InputError(
                f"{_ENV_MAX_PIXELS}={env!r} is not a number", hint="set it to a pixel count such as 4e9"
            ) from None
    if int(max_pixels) <= 0:
        raise InputError(
            f"max_pixels must be positive, got {max_pixels}", hint="pass a pixel count such as 4e9"
        )
    return int(max_pixels)


def check_pixel_limit(rows: int, cols: int, *, path: str | None, max_pixels: int | None = None) -> None:
    """Refuse a header claiming more than the pixel limit, before any pixel memory is allocated.

    Raises
    ------
    ImageTooLargeError
        ``rows * cols`` exceeds the limit (see :func:`resolve_max_pixels`).
    """
    limit = resolve_max_pixels(max_pixels)
    pixels = int(rows) * int(cols)
    if pixels > limit:
        raise ImageTooLargeError(
            f"the header claims {int(cols)} x {int(rows)} = {pixels / 1e9:.2f} gigapixels, more than the limit "
            f"of {limit / 1e9:.2f} gigapixels",
            path=path,
            hint=f"if the image is genuine, raise the limit with max_pixels= or ${_ENV_MAX_PIXELS}",
        )


# --------------------------------------------------------------------------------------------------
# EXIF orientation


def oriented_shape(shape: tuple[int, int], orientation: int) -> tuple[int, int]:
    """Shape ``(rows, cols)`` of an image stored as ``shape`` once EXIF ``orientation`` is applied."""
    return (shape[1], shape[0]) if orientation in (5, 6, 7, 8) else (shape[0], shape[1])


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF ``orientation`` (1-8) to an image stored as ``(rows, cols, ...)``: the upright view.

    Orientation 6 means "rotate 90 degrees clockwise to display", 8 counter-clockwise, 2/4 mirror,
    5/7 transpose and transverse; values outside 1-8 are treated as 1. Returns a contiguous copy
    (or the input itself for orientation 1).
    """
    o = int(orientation)
    if o == 2:
        out = image[:, ::-1]
    elif o == 3:
        out = image[::-1, ::-1]
    elif o == 4:
        out = image[::-1]
    elif o == 5:
        out = np.swapaxes(image, 0, 1)
    elif o == 6:
        out = np.rot90(image, -1)
    elif o == 7:
        out = np.swapaxes(image[::-1, ::-1], 0, 1)
    elif o == 8:
        out = np.rot90(image, 1)
    else:
        return image
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------------
# EXIF codec: TIFF-structured blocks (JPEG APP1 "Exif" payload, PNG eXIf chunk)

_TYPE_SIZE = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_SWAP_UNIT = {3: 2, 4: 4, 5: 4, 8: 2, 9: 4, 10: 4, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
#: tags whose value is the offset of a sub-IFD: EXIF, GPS, Interoperability
POINTER_TAGS = {34665: "exif", 34853: "gps", 40965: "interop"}
_MAX_ENTRIES = 1024
_MAX_VALUE = 16 * 2**20


class ExifError(ValueError):
    """An EXIF block or IFD that cannot be parsed (internal; readers turn it into a warning)."""


def _swap(data: bytes, typ: int, order: str) -> bytes:
    """Return ``data`` of TIFF ``typ`` converted from byte ``order`` to little-endian."""
    unit = _SWAP_UNIT.get(typ, 1)
    if order == "<" or unit == 1 or not data:
        return data
    return np.frombuffer(data, dtype=f">u{unit}").astype(f"<u{unit}").tobytes()


def read_ifd(read_at, offset: int, *, order: str, bigtiff: bool, _depth: int = 0, _seen=None) -> dict:
    """Parse one IFD (and its EXIF/GPS/Interop sub-IFDs) into ``{tag: (type, count, le_bytes) | dict}``.

    Parameters
    ----------
    read_at
        ``read_at(offset, size) -> bytes``; must raise :class:`ExifError` when out of range.
    offset
        Position of the IFD.
    order
        ``"<"`` or ``">"``: byte order of the container.
    bigtiff
        BigTIFF entry layout (20-byte entries, 8-byte values).

    Values are returned little-endian whatever ``order`` is; sub-IFDs replace their pointer entries.
    """
    seen = set() if _seen is None else _seen
    if offset in seen or _depth > 4:
        raise ExifError(f"IFD loop at offset {offset}")
    seen.add(offset)
    if bigtiff:
        (n,) = struct.unpack(order + "Q", read_at(offset, 8))
        head, esize, inline, ofmt = 8, 20, 8, "Q"
    else:
        (n,) = struct.unpack(order + "H", read_at(offset, 2))
        head, esize, inline, ofmt = 2, 12, 4, "I"
    if n > _MAX_ENTRIES:
        raise ExifError(f"IFD at {offset} claims {n} entries")
    raw = read_at(offset + head, n * esize)
    ifd: dict = {}
    for i in range(n):
        e = raw[i * esize : (i + 1) * esize]
        if bigtiff:
            tag, typ, count = struct.unpack(order + "HHQ", e[:12])
            field = e[12:20]
        else:
            tag, typ, count = struct.unpack(order + "HHI", e[:8])
            field = e[8:12]
        if typ not in _TYPE_SIZE:
            continue  # unknown type: skip the entry, as readers must
        size = _TYPE_SIZE[typ] * count
        if size > _MAX_VALUE:
            raise ExifError(f"tag {tag} claims {size} bytes")
        if tag in POINTER_TAGS and count == 1 and typ in (4, 13, 16, 18):
            (sub,) = struct.unpack(order + ("Q" if typ in (16, 18) else "I"), field[: _TYPE_SIZE[typ]])
            try:
                ifd[tag] = read_ifd(read_at, sub, order=order, bigtiff=bigtiff, _depth=_depth + 1, _seen=seen)
            except ExifError:
                if tag == 34665:
                    raise
            continue
        if size <= inline:
            data = field[:size]
        else:
            (voff,) = struct.unpack(order + ofmt, field)
            data = read_at(voff, size)
        ifd[tag] = (typ, count, _swap(data, typ, order))
    return ifd


def _blob_reader(blob: bytes):
    def read_at(offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(blob):
            raise ExifError(f"offset {offset}+{size} past the end of the EXIF block ({len(blob)} bytes)")
        return blob[offset : offset + size]

    return read_at


def parse_exif(blob: bytes) -> dict:
    """Parse an EXIF block (``II*\\0`` or ``MM\\0*`` TIFF structure, optional ``Exif\\0\\0`` prefix).

    Returns IFD0 as ``{tag: (type, count, little_endian_bytes)}`` with the EXIF (34665), GPS (34853)
    and Interop (40965) sub-IFDs as nested dicts. IFD1 (the thumbnail) is not kept.

    Raises
    ------
    ExifError
        The block is malformed.
    """
    blob = bytes(blob)
    if blob.startswith(b"Exif\x00\x00"):
        blob = blob[6:]
    if len(blob) < 8 or blob[:2] not in (b"II", b"MM"):
        raise ExifError("not a TIFF-structured EXIF block")
    order = "<" if blob[:2] == b"II" else ">"
    magic, off = struct.unpack(order + "HI", blob[2:8])
    if magic != 42:
        raise ExifError(f"bad EXIF magic {magic}")
    return read_ifd(_blob_reader(blob), off, order=order, bigtiff=False)


def serialize_ifd(ifd: dict, base: int, *, bigtiff: bool = False) -> bytes:
    """Serialise an IFD dict (see :func:`parse_exif`) little-endian, to be placed at file offset ``base``.

    Out-of-line values and sub-IFDs follow the IFD itself; the next-IFD offset is 0.
    """
    if base % 2:
        raise ValueError("an IFD must start on a word boundary")
    tags = sorted(ifd)
    esize, inline = (20, 8) if bigtiff else (12, 4)
    head = (8 if bigtiff else 2) + esize * len(tags) + (8 if bigtiff else 4)
    body = bytearray()
    entries = []
    for tag in tags:
        val = ifd[tag]
        if isinstance(val, dict):
            if len(body) % 2:
                body += b"\x00"
            sub_off = base + head + len(body)
            body += serialize_ifd(val, sub_off, bigtiff=bigtiff)
            typ = 16 if bigtiff else 4
            entries.append((tag, typ, 1, struct.pack("<Q" if bigtiff else "<I", sub_off)))
            continue
        typ, count, data = val
        if len(data) <= inline:
            field = data + b"\x00" * (inline - len(data))
        else:
            if len(body) % 2:
                body += b"\x00"
            field = struct.pack("<Q" if bigtiff else "<I", base + head + len(body))
            body += data
        entries.append((tag, typ, count, field))
    out = bytearray(struct.pack("<Q" if bigtiff else "<H", len(entries)))
    for tag, typ, count, field in entries:
        out += struct.pack("<HHQ" if bigtiff else "<HHI", tag, typ, count) + field
    out += b"\x00" * (8 if bigtiff else 4)
    return bytes(out + body)


def build_exif(ifd0: dict) -> bytes:
    """Build a little-endian EXIF block (TIFF structure, no ``Exif\\0\\0`` prefix) from an IFD dict."""
    return b"II*\x00" + struct.pack("<I", 8) + serialize_ifd(ifd0, 8)


def _short_or_long(data: bytes, typ: int) -> int | None:
    if typ == 3 and len(data) >= 2:
        return struct.unpack("<H", data[:2])[0]
    if typ == 4 and len(data) >= 4:
        return struct.unpack("<I", data[:4])[0]
    return None


def exif_orientation(blob: bytes | None) -> int:
    """EXIF orientation (1-8) of a block; 1 when absent, invalid or unreadable."""
    if not blob:
        return 1
    try:
        ifd0 = parse_exif(blob)
    except (ExifError, struct.error):
        return 1
    val = ifd0.get(274)
    if not isinstance(val, tuple):
        return 1
    o = _short_or_long(val[2], val[0])
    return o if o is not None and 1 <= o <= 8 else 1


def patch_exif(
    blob: bytes, *, orientation: int | None = None, width: int | None = None, height: int | None = None
) -> bytes:
    """Rewrite orientation and pixel dimensions of an EXIF block in place (other bytes untouched).

    Only entries that exist are changed: IFD0 Orientation (274), ImageWidth/ImageLength (256/257)
    and the EXIF sub-IFD's PixelXDimension/PixelYDimension (40962/40963). Patching in place keeps
    maker notes with absolute offsets valid. A ``Exif\\0\\0`` prefix is kept if present.

    Raises
    ------
    ExifError
        The block is malformed.
    """
    prefix = b""
    if blob.startswith(b"Exif\x00\x00"):
        prefix, blob = blob[:6], blob[6:]
    b = bytearray(blob)
    if len(b) < 8 or b[:2] not in (b"II", b"MM"):
        raise ExifError("not a TIFF-structured EXIF block")
    order = "<" if b[:2] == b"II" else ">"
    read_at = _blob_reader(bytes(b))

    def entries(ifd_off):
        (n,) = struct.unpack(order + "H", read_at(ifd_off, 2))
        if n > _MAX_ENTRIES:
            raise ExifError("too many entries")
        read_at(ifd_off + 2, 12 * n)
        for i in range(n):
            pos = ifd_off + 2 + 12 * i
            tag, typ, count = struct.unpack(order + "HHI", b[pos : pos + 8])
            yield pos, tag, typ, count

    def put(pos, typ, count, value):
        if count != 1 or typ not in (3, 4):
            return
        if typ == 3 and value > 0xFFFF:
            typ = 4
        struct.pack_into(order + "HHI", b, pos, struct.unpack(order + "H", b[pos : pos + 2])[0], typ, 1)
        field = struct.pack(order + "H", value) + b"\x00\x00" if typ == 3 else struct.pack(order + "I", value)
        b[pos + 8 : pos + 12] = field

    (ifd0,) = struct.unpack(order + "I", read_at(4, 4))
    exif_ifd = None
    for pos, tag, typ, count in entries(ifd0):
        if tag == 274 and orientation is not None:
            put(pos, typ, count, int(orientation))
        elif tag == 256 and width is not None:
            put(pos, typ, count, int(width))
        elif tag == 257 and height is not None:
            put(pos, typ, count, int(height))
        elif tag == 34665 and count == 1:
            (exif_ifd,) = struct.unpack(order + "I", b[pos + 8 : pos + 12])
    if exif_ifd is not None and (width is not None or height is not None):
        for pos, tag, typ, count in entries(exif_ifd):
            if tag == 40962 and width is not None:
                put(pos, typ, count, int(width))
            elif tag == 40963 and height is not None:
                put(pos, typ, count, int(height))
    return prefix + bytes(b)


def set_ifd_value(ifd: dict, tag: int, value: int) -> None:
    """Set an existing SHORT/LONG entry of an IFD dict to ``value`` (LONG when it does not fit a SHORT)."""
    old = ifd.get(tag)
    if not isinstance(old, tuple):
        return
    typ = 3 if (old[0] == 3 and value <= 0xFFFF) else 4
    ifd[tag] = (typ, 1, struct.pack("<H" if typ == 3 else "<I", int(value)))


_XMP_FIELDS = {
    "orientation": ("tiff:Orientation",),
    "width": ("exif:PixelXDimension", "tiff:ImageWidth"),
    "height": ("exif:PixelYDimension", "tiff:ImageLength"),
}


def patch_xmp(
    xmp: bytes, *, orientation: int | None = None, width: int | None = None, height: int | None = None
) -> bytes:
    """Rewrite ``tiff:Orientation`` and pixel dimensions in an XMP packet (attribute and element forms).

    Fields that are absent stay absent; a packet that is not UTF-8 is returned unchanged.
    """
    try:
        text = xmp.decode("utf-8")
    except UnicodeDecodeError:
        return xmp
    values = {"orientation": orientation, "width": width, "height": height}
    for key, names in _XMP_FIELDS.items():
        v = values[key]
        if v is None:
            continue
        for name in names:
            n = re.escape(name)
            text = re.sub(rf"({n}\s*=\s*[\"'])\s*\d+\s*([\"'])", rf"\g<1>{int(v)}\g<2>", text)
            text = re.sub(rf"(<{n}>)\s*\d+\s*(</{n}>)", rf"\g<1>{int(v)}\g<2>", text)
    return text.encode("utf-8")


# --------------------------------------------------------------------------------------------------
# per-process cache of open files


class _OpenTiff:
    """A ``TiffFile`` opened in this process, with a lock around seek+read."""

    def __init__(self, path: str):
        import tifffile

        self.tif = tifffile.TiffFile(path)
        self.lock = threading.Lock()
        self.size = self.tif.filehandle.size
        self.geometry: dict = {}

    def read_bytes(self, offset: int, count: int) -> bytes:
        with self.lock:
            fh = self.tif.filehandle
            fh.seek(offset)
            return fh.read(count)

    def close(self) -> None:
        self.tif.close()


_OPEN: collections.OrderedDict = collections.OrderedDict()
_OPEN_LOCK = threading.Lock()
_MAX_OPEN = 8


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


def _open_cached(path: str, stat: tuple) -> _OpenTiff:
    key = (os.getpid(), path, stat)
    with _OPEN_LOCK:
        ot = _OPEN.get(key)
        if ot is not None:
            _OPEN.move_to_end(key)
            return ot
    ot = _OpenTiff(path)
    with _OPEN_LOCK:
        if key in _OPEN:  # another thread won the race
            ot.close()
            return _OPEN[key]
        _OPEN[key] = ot
        while len(_OPEN) > _MAX_OPEN:
            _, old = _OPEN.popitem(last=False)
            old.close()
    return ot


def _close_all() -> None:
    """Close every file this process keeps open (tests use it; files reopen on demand)."""
    with _OPEN_LOCK:
        while _OPEN:
            _, ot = _OPEN.popitem()
            ot.close()


# --------------------------------------------------------------------------------------------------
# the source


def _compression_name(code: int) -> str:
    try:
        from tifffile import COMPRESSION

        return COMPRESSION(code).name.lower()
    except ValueError:
        return str(code)


class TiffSource(Source):
    """A TIFF, BigTIFF or OME-TIFF image (one series, one pyramid level) read region by region.

    Parameters
    ----------
    path
        Local file path.
    level
        Pyramid level (0 is full resolution); OME-TIFF SubIFD pyramids and tifffile-detected pyramids.
    series
        Image series in the file (tifffile's ``TiffFile.series``), 0 by default.
    layout
        Only checked: if given it must match the stored layout (``"YX"``, ``"YXC"`` or ``"CYX"``).
    max_pixels
        Refuse a level claiming more pixels than this, before anything is decoded; ``None`` uses
        ``$TILEGRAPH_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS` (4 gigapixels).
    cache_dir
        Directory for the chunked Zarr cache a single-strip file is converted into on the first direct
        :meth:`read` (the pipeline stages such files itself, see :meth:`stage_tasks`).
    allow_nonfinite
        Float data: let NaN and Inf through instead of raising :class:`CorruptSourceError` on read.

    Attributes
    ----------
    storage : {"tiled", "contiguous", "strips", "single"}
        How the pixels are stored (see the module docstring).
    notice : str or None
        A message for the user about how this file will be read (single-strip files).

    Raises
    ------
    SourceNotFoundError, CorruptSourceError, UnsupportedSourceError, ImageTooLargeError
        Missing, damaged or unsupported file (CMYK, palette, an unsupported compression or bit depth,
        more than 4 channels, several planes), or a header claiming too many pixels.
    """

    def __init__(
        self,
        path,
        *,
        level: int = 0,
        series: int = 0,
        layout: str | None = None,
        max_pixels: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        allow_nonfinite: bool = False,
    ):
        self.path = os.fspath(path)
        self.level = int(level)
        self.series = int(series)
        self.max_pixels = resolve_max_pixels(max_pixels)
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.allow_nonfinite = bool(allow_nonfinite)
        self.notice = None
        if not os.path.exists(self.path):
            raise SourceNotFoundError("no such file", path=self.path, hint="check the path")
        if os.path.isdir(self.path):
            raise UnsupportedSourceError(
                "is a directory, not a TIFF file",
                path=self.path,
                hint="point at an image file",
            )
        self._stat = _stat_key(self.path)
        if self._stat[1] == 0:
            raise CorruptSourceError("file is empty (0 bytes)", path=self.path, hint="re-export the image")
        geo = self._geometry()
        # again here: the geometry may come from this process's cache, resolved under another limit
        check_pixel_limit(*geo["shape"], path=self.path, max_pixels=self.max_pixels)
        self.shape = geo["shape"]
        self.channels = geo["channels"]
        self.dtype = geo["dtype"]
        self.layout = geo["layout"]
        self.storage = geo["storage"]
        self.compression = geo["compression"]
        self.region_reads = self.storage in ("tiled", "contiguous")
        if layout is not None and layout != self.layout:
            raise UnsupportedSourceError(
                f"layout {layout!r} was asked for but the file stores {self.layout}",
                path=self.path,
                hint="leave layout unset for TIFF files",
            )
        self._check_dtype()
        if self.storage == "single":
            need = self.shape[0] * self.shape[1] * self.channels * self.dtype.itemsize
            self.notice = (
                f"{self.path}: stored as one {self.compression} strip, which cannot be read region by region; "
                f"it is converted once into a chunked Zarr cache, which needs about {_human(need)} of memory "
                "(the whole decoded image) in one task"
            )
            log.warning(self.notice)

    # pickled as path + options + what was learnt from the header; never tifffile objects
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_meta", None)
        return state

    # ---------------------------------------------------------------------------------------------

    def _file(self) -> _OpenTiff:
        try:
            stat = _stat_key(self.path)
        except FileNotFoundError:
            raise SourceNotFoundError(
                "the file disappeared after it was opened",
                path=self.path,
                hint="check the path; inputs must stay in place during a run",
            ) from None
        if stat != self._stat:
            raise CorruptSourceError(
                "the file changed after it was opened",
                path=self.path,
                hint="do not modify inputs during a run",
            )
        try:
            return _open_cached(self.path, stat)
        except SourceError:
            raise
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
            raise CorruptSourceError(
                f"not a readable TIFF ({type(exc).__name__}: {exc})",
                path=self.path,
                hint="the file is damaged or truncated; export it again from the original",
            ) from exc

    def _geometry(self) -> dict:
        ot = self._file()
        key = (self.series, self.level)
        geo = ot.geometry.get(key)
        if geo is None:
            try:
                geo = self._resolve(ot)
            except SourceError:
                raise
            except Exception as exc:
                raise CorruptSourceError(
                    f"cannot parse the TIFF structure ({type(exc).__name__}: {exc})",
                    path=self.path,
                    hint="the file is damaged; export it again from the original",
                ) from exc
            ot.geometry[key] = geo
        return geo

    def _resolve(self, ot: _OpenTiff) -> dict:
        """Learn everything needed to read from the header, and refuse what tilegraph cannot read."""
        tif, path = ot.tif, self.path
        if not tif.pages or len(tif.series) == 0:
            raise CorruptSourceError(
                "the TIFF has no readable image (no IFD)",
                path=path,
                hint="the file is damaged or truncated; copy or export it again from the original",
            )
        if self.series >= len(tif.series):
            raise UnsupportedSourceError(
                f"series {self.series} requested, the file has {len(tif.series)}",
                path=path,
                hint="pass series=0",
            )
        series = tif.series[self.series]
        levels = series.levels
        if self.level >= len(levels) or self.level < 0:
            raise UnsupportedSourceError(
                f"level {self.level} requested, the file has {len(levels)}",
                path=path,
                hint=f"pass level between 0 and {len(levels) - 1}",
            )
        lvl = levels[self.level]
        pages = list(lvl.pages)
        if not pages or any(p is None for p in pages):
            raise CorruptSourceError(
                "the image series has missing pages",
                path=path,
                hint="the file is damaged or truncated; copy or export it again from the original",
            )
        key = lvl.keyframe
        missing = [name for code, name in ((256, "ImageWidth"), (257, "ImageLength")) if code not in key.tags]
        if not any(code in key.tags for code in (273, 324)):
            missing.append("StripOffsets/TileOffsets")
        if missing:
            raise CorruptSourceError(
                f"the IFD lacks required tags ({', '.join(missing)})",
                path=path,
                hint="the file is damaged; export it again from the original",
            )
        photometric = int(key.photometric)
        # refuse first what tilegraph does not support, before trusting sizes
        if photometric == 5:
            raise UnsupportedSourceError(
                "CMYK (photometric SEPARATED) is not supported yet",
                path=path,
                hint="convert to RGB with its ICC profile (e.g. in Photoshop or with ImageMagick -profile) first",
            )
        compression = int(key.compression)
        if compression in _REFUSED_COMPRESSIONS or compression not in _decompressors():
            raise UnsupportedSourceError(
                f"compression {_compression_name(compression)} ({compression}) is not supported",
                path=path,
                hint="re-save the TIFF uncompressed or with LZW, Deflate or Zstd",
            )
        bits, fmt = key.bitspersample, int(key.sampleformat)
        ok = (fmt == 1 and bits in (8, 16)) or (fmt == 3 and bits in (16, 32))
        if not ok:
            kind = {1: "unsigned", 2: "signed", 3: "float", 6: "complex float", 5: "complex int"}.get(
                fmt, str(fmt)
            )
            raise UnsupportedSourceError(
                f"{bits}-bit {kind} samples are not supported",
                path=path,
                hint="tilegraph reads 8- or 16-bit unsigned and 16- or 32-bit float samples; convert first",
            )
        if photometric == 6 and compression != 7:
            raise UnsupportedSourceError(
                "YCbCr TIFF without JPEG compression is not supported",
                path=path,
                hint="convert the image to an 8- or 16-bit gray or RGB(A) TIFF or PNG first",
            )
        if photometric not in _PHOTOMETRIC_OK and not (photometric == 6 and compression == 7):
            name = _PHOTOMETRIC_NAMES.get(photometric, str(photometric))
            raise UnsupportedSourceError(
                f"photometric interpretation {name} is not supported",
                path=path,
                hint="convert to grayscale or RGB first",
            )
        if int(key.predictor) != 1:
            from tifffile import TIFF

            if int(key.predictor) not in TIFF.UNPREDICTORS:
                raise UnsupportedSourceError(
                    f"TIFF predictor {int(key.predictor)} is not supported",
                    path=path,
                    hint="convert the image to an 8- or 16-bit gray or RGB(A) TIFF or PNG first",
                )
        if key.imagedepth != 1 or key.tiledepth != 1:
            raise UnsupportedSourceError(
                "volumetric (tiled in depth) TIFF is not supported",
                path=path,
                hint="convert the image to an 8- or 16-bit gray or RGB(A) TIFF or PNG first",
            )
        rows, cols = int(key.imagelength), int(key.imagewidth)
        if rows <= 0 or cols <= 0:
            raise CorruptSourceError(
                f"the header gives a zero image size ({cols} x {rows})",
                path=path,
                hint="the file is damaged or truncated; copy or export it again from the original",
            )
        check_pixel_limit(rows, cols, path=path, max_pixels=self.max_pixels)

        # axes: Y, X and at most one channel axis (samples in the page, or pages along C)
        axes, shape = lvl.axes, tuple(lvl.shape)
        extra = {a: s for a, s in zip(axes, shape, strict=False) if a not in "YXS" and s > 1}
        spp = int(key.samplesperpixel)
        if len(extra) > 1 or (extra and spp > 1):
            raise UnsupportedSourceError(
                f"the series has axes {axes} with shape {shape}: several planes are not supported",
                path=path,
                hint="select one plane, or save the channels as samples of one page",
            )
        if extra and next(iter(extra)) not in "CS":
            ax, n = next(iter(extra.items()))
            raise UnsupportedSourceError(
                f"the series has {n} pages along axis {ax!r} ({axes} {shape})",
                path=path,
                hint="tilegraph reads one image per file; pass series= or split the pages",
            )
        channel_pages = len(pages) if extra else 1
        if extra and len(pages) != next(iter(extra.values())):
            raise UnsupportedSourceError(
                f"unexpected page layout for axes {axes}",
                path=path,
                hint="save the channels as samples of one page, or pass series=",
            )
        channels = spp * channel_pages
        if channels > 4:
            raise UnsupportedSourceError(
                f"{channels} channels; tilegraph reads 1 to 4 (gray, gray+alpha, RGB, RGBA)",
                path=path,
                hint="select at most 4 channels first",
            )
        planar = spp > 1 and int(key.planarconfig) == 2
        dtype = np.dtype(key.dtype)

        # segments: check every offset lies in the file before anything is decoded
        tiled = bool(key.is_tiled)
        if tiled:
            th, tw = int(key.tilelength), int(key.tilewidth)
        else:
            th, tw = max(1, min(int(key.rowsperstrip or rows), rows)), cols
        ny, nx = -(-rows // th), -(-cols // tw)
        planes = spp if planar else 1
        expected = planes * ny * nx
        contiguous = compression == 1
        for p in pages:
            offs = np.asarray(p.dataoffsets, dtype=np.int64)
            counts = np.asarray(p.databytecounts, dtype=np.int64)
            if len(offs) != expected or len(counts) != expected:
                raise CorruptSourceError(
                    f"the IFD lists {len(offs)} strips/tiles where {expected} are needed",
                    path=path,
                    hint="the file is damaged; export it again",
                )
            end = offs + counts
            bad = np.nonzero((counts < 0) | ((counts > 0) & ((offs < 0) | (end > ot.size))))[0]
            if len(bad):
                raise CorruptSourceError(
                    f"{len(bad)} of {expected} {'tiles' if tiled else 'strips'} lie past the end of the file "
                    f"(first: #{int(bad[0])} at byte {int(offs[bad[0]])}, file has {ot.size} bytes)",
                    path=path,
                    hint="the file is truncated or its IFD is corrupt; copy or export it again",
                )
            contiguous = contiguous and bool(getattr(p, "is_memmappable", False)) and int(p.fillorder) == 1
        if contiguous:
            storage = "contiguous"
        elif tiled:
            storage = "tiled"
        elif ny == 1:
            storage = "single"
        else:
            storage = "strips"
        if channels == 1:
            layout = "YX"
        elif planar or channel_pages > 1:
            layout = "CYX"
        else:
            layout = "YXC"
        return {
            "pages": pages,
            "shape": (rows, cols),
            "channels": channels,
            "spp": spp,
            "planar": planar,
            "channel_pages": channel_pages,
            "dtype": dtype,
            "layout": layout,
            "storage": storage,
            "segment": (th, tw, ny, nx),
            "compression": _compression_name(compression),
            "photometric": photometric,
            "order": tif.byteorder,
            "bigtiff": bool(tif.is_bigtiff),
            "levels": len(levels),
            "ome": bool(tif.is_ome),
        }

    # ---------------------------------------------------------------------------------------------

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as ``(rows, cols, channels)`` in the file's dtype.

        Raises
        ------
        CorruptSourceError
            A strip or tile cannot be decoded, or float data holds NaN/Inf (unless ``allow_nonfinite``).
        """
        return self._read(y0, y1, x0, x1, use_cache=True)

    def _read(self, y0: int, y1: int, x0: int, x1: int, *, use_cache: bool) -> np.ndarray:
        h, w = self.shape
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise InputError(
                f"region rows {y0}:{y1}, cols {x0}:{x1} is outside the image {h} x {w}",
                path=self.path,
                hint="read a region inside the image; padding is the caller's business",
            )
        if use_cache and self.storage == "single" and self.cache_dir is not None:
            out = self._read_cached(y0, y1, x0, x1)
        else:
            geo = self._geometry()
            if self.storage == "contiguous":
                out = self._read_memmap(geo, y0, y1, x0, x1)
            else:
                out = self._read_segments(geo, y0, y1, x0, x1)
        if out.dtype.kind == "f" and not self.allow_nonfinite:
            finite = np.isfinite(out)
            if not finite.all():
                bad = int(out.size - np.count_nonzero(finite))
                raise CorruptSourceError(
                    f"rows {y0}:{y1}, cols {x0}:{x1} contain {bad} NaN or Inf values",
                    path=self.path,
                    hint="replace non-finite values first (e.g. numpy.nan_to_num), or pass allow_nonfinite=True",
                )
        return out

    def _read_memmap(self, geo, y0, y1, x0, x1) -> np.ndarray:
        out = np.empty((y1 - y0, x1 - x0, self.channels), dtype=self.dtype)
        rows, cols = self.shape
        spp = geo["spp"]
        stored = np.dtype(self.dtype).newbyteorder(geo["order"])
        for i, page in enumerate(geo["pages"]):
            offset = int(page.dataoffsets[0])
            if geo["planar"]:
                mm = np.memmap(self.path, dtype=stored, mode="r", offset=offset, shape=(spp, rows, cols))
                block = np.moveaxis(mm[:, y0:y1, x0:x1], 0, -1)
            else:
                mm = np.memmap(self.path, dtype=stored, mode="r", offset=offset, shape=(rows, cols, spp))
                block = mm[y0:y1, x0:x1]
            out[..., i * spp : (i + 1) * spp] = block
            del mm
        return out

    def _read_segments(self, geo, y0, y1, x0, x1) -> np.ndarray:
        ot = self._file()
        out = np.empty((y1 - y0, x1 - x0, self.channels), dtype=self.dtype)
        th, tw, ny, nx = geo["segment"]
        spp, planar = geo["spp"], geo["planar"]
        planes = spp if planar else 1
        ty0, ty1 = y0 // th, (y1 - 1) // th + 1
        tx0, tx1 = x0 // tw, (x1 - 1) // tw + 1
        for pi, page in enumerate(geo["pages"]):
            keyframe = getattr(page, "keyframe", page)
            decode = keyframe.decode
            jpegtables = getattr(keyframe, "jpegtables", None)
            offsets, counts = page.dataoffsets, page.databytecounts
            for plane in range(planes):
                for ty in range(ty0, ty1):
                    for tx in range(tx0, tx1):
                        index = plane * ny * nx + ty * nx + tx
                        count = int(counts[index])
                        data = ot.read_bytes(int(offsets[index]), count) if count else None
                        if data is not None and len(data) != count:
                            raise CorruptSourceError(
                                f"strip/tile #{index} is cut short ({len(data)} of {count} bytes)",
                                path=self.path,
                                hint="the file is truncated; copy or export it again",
                            )
                        try:
                            seg, _, _ = decode(data, index, jpegtables=jpegtables)
                        except SourceError:
                            raise
                        except Exception as exc:
                            raise CorruptSourceError(
                                f"cannot decode {'tile' if th < self.shape[0] and tw < self.shape[1] else 'strip'} "
                                f"#{index} (rows {ty * th}:{min((ty + 1) * th, self.shape[0])}) for region rows "
                                f"{y0}:{y1}, cols {x0}:{x1}: {type(exc).__name__}: {exc}",
                                path=self.path,
                                hint="the file is damaged; export it again from the original",
                            ) from exc
                        with _DECODES_LOCK:
                            _DECODES["segments"] += 1
                        # segment placement in image coordinates, then intersect with the region
                        sy0, sx0 = ty * th, tx * tw
                        iy0, iy1 = max(y0, sy0), min(y1, sy0 + th, self.shape[0])
                        ix0, ix1 = max(x0, sx0), min(x1, sx0 + tw, self.shape[1])
                        c0 = pi * spp + (plane if planar else 0)
                        c1 = c0 + (1 if planar else spp)
                        dst = out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, c0:c1]
                        if seg is None:
                            dst[...] = 0
                            continue
                        seg = seg.reshape(seg.shape[-3:]) if seg.ndim > 3 else seg
                        if seg.shape[0] < iy1 - sy0 or seg.shape[1] < ix1 - sx0:
                            raise CorruptSourceError(
                                f"strip/tile #{index} decodes to {seg.shape[:2]}, smaller than the header says",
                                path=self.path,
                                hint="the file is damaged; export it again",
                            )
                        dst[...] = seg[iy0 - sy0 : iy1 - sy0, ix0 - sx0 : ix1 - sx0]
        return out

    # ---------------------------------------------------------------------------------------------
    # single-strip files: a chunked Zarr cache

    def _cache_path(self) -> str:
        digest = hashlib.sha1(
            repr((os.path.realpath(self.path), self._stat, self.series, self.level)).encode()
        ).hexdigest()[:20]
        return os.path.join(self.cache_dir, f"tiff-{digest}.zarr")

    def _read_cached(self, y0, y1, x0, x1) -> np.ndarray:
        import zarr

        target = self._cache_path()
        if not os.path.exists(os.path.join(target, "zarr.json")):
            os.makedirs(self.cache_dir, exist_ok=True)
            log.warning("%s (cache: %s)", self.notice, target)
            tmp = f"{target}.partial-{uuid.uuid4().hex[:8]}"
            tasks, _ = self.stage_tasks(tmp)
            try:
                for task in tasks:
                    task()
                try:
                    os.rename(tmp, target)
                except OSError:  # another process finished first
                    shutil.rmtree(tmp, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return np.asarray(zarr.open_array(target, mode="r")[y0:y1, x0:x1])

    def stage_tasks(self, path: str, *, band_rows: int = 1024, chunk_cols: int = 1024):
        """Tasks copying this file into a chunked YXC Zarr v3 array at ``path``, each decoding whole strips.

        Striped files get one task per band of whole strips (the band is ``band_rows`` rounded up to a
        multiple of the rows per strip, and the Zarr chunks are one band high), so each strip is decoded
        exactly once and no two tasks write the same chunk. A single-strip file gets one task, which
        needs memory for the whole decoded image. ICC profile and other metadata are recorded in the
        array's attributes (see :func:`tilegraph.sink.tiff_sink.metadata_to_attrs`).

        Returns
        -------
        tasks : list of callables taking no argument
            Picklable; each returns the number of bytes it wrote.
        staged : Source
            A :class:`~tilegraph.source.zarr_source.ZarrSource` of the copy (valid once all tasks ran).
        """
        import zarr

        from tilegraph.source.attrs import metadata_to_attrs

        h, w = self.shape
        band_rows, chunk_cols = max(1, int(band_rows)), max(1, int(chunk_cols))
        if self.storage == "strips":
            rps = self._geometry()["segment"][0]
            band = min(h, -(-band_rows // rps) * rps)  # whole strips per task
            chunk_rows = band
        elif self.storage == "single":
            band, chunk_rows = h, min(h, band_rows)  # one task: the strip is decoded once
        else:
            band = chunk_rows = min(h, band_rows)
        zarr.create_array(
            store=path,
            shape=(h, w, self.channels),
            chunks=(chunk_rows, min(chunk_cols, w), self.channels),
            dtype=self.dtype,
            fill_value=0,
            overwrite=True,
            attributes=metadata_to_attrs(self.metadata),
        )
        tasks = [_StageRows(self, path, r, min(h, r + band)) for r in range(0, h, band)]
        return tasks, _LazyStaged(path)

    # ---------------------------------------------------------------------------------------------

    @property
    def metadata(self) -> SourceMetadata:
        """ICC profile (tag 34675), resolution, EXIF (as a block), XMP (tag 700) and a description."""
        meta = getattr(self, "_meta", None)
        if meta is None:
            meta = self._read_metadata()
            self._meta = meta
        return meta

    def _read_metadata(self) -> SourceMetadata:
        ot = self._file()
        geo = self._geometry()
        page = geo["pages"][0]
        page = getattr(page, "keyframe", page)
        tags = page.tags
        extra: dict[str, Any] = {
            "format": "tiff",
            "path": self.path,
            "shape": list(self.shape),
            "channels": self.channels,
            "dtype": str(self.dtype),
            "compression": self.compression,
            "photometric": _PHOTOMETRIC_OK.get(geo["photometric"], "rgb"),
            "storage": self.storage,
            "series": self.series,
            "level": self.level,
            "levels": geo["levels"],
            "bigtiff": geo["bigtiff"],
            "ome": geo["ome"],
        }
        extrasamples = tuple(int(v) for v in (page.extrasamples or ()))
        if extrasamples:
            extra["extrasamples"] = list(extrasamples)

        def value(code):
            tag = tags.get(code)
            return None if tag is None else tag.value

        icc = value(34675)
        icc = bytes(icc) if icc is not None else None
        xmp = value(700)
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8")
        xmp = bytes(xmp) if xmp is not None else None
        resolution = None
        xr, yr = value(282), value(283)
        if xr is not None and yr is not None:
            unit = value(296)
            unit = _RESUNIT.get(int(unit) if unit is not None else 2, "inch")
            resolution = (_rational(xr), _rational(yr), unit)
        desc = value(270)
        if isinstance(desc, str) and desc and not desc.lstrip().startswith(("{", "<?xml", "<OME")):
            extra["description"] = desc
        exif = None
        try:
            order = geo["order"]
            size = ot.size

            def read_at(offset, n):
                if offset < 0 or n < 0 or offset + n > size:
                    raise ExifError("offset past end of file")
                return ot.read_bytes(offset, n)

            ifd = read_ifd(read_at, int(page.offset), order=order, bigtiff=geo["bigtiff"])
            ifd0 = {t: ifd[t] for t in _IFD0_EXIF_TAGS if t in ifd and t != 270}
            for ptr in (34665, 34853):
                if isinstance(ifd.get(ptr), dict):
                    ifd0[ptr] = ifd[ptr]
            if 34665 in ifd0 or 34853 in ifd0 or any(t in ifd0 for t in (271, 272, 274, 33432, 315)):
                exif = build_exif(ifd0)
            o = exif_orientation(exif)
            extra["orientation"] = o
        except (ExifError, struct.error) as exc:
            extra["exif_warning"] = f"EXIF not carried over: {exc}"
            log.warning("%s: EXIF not carried over (%s)", self.path, exc)
        return SourceMetadata(icc_profile=icc, resolution=resolution, exif=exif, xmp=xmp, extra=extra)

    def describe(self) -> dict:
        """Short description for ``tilegraph info``."""
        d = super().describe()
        d.update(storage=self.storage, compression=self.compression, level=self.level, series=self.series)
        if self.notice:
            d["notice"] = self.notice
        return d


def _rational(v) -> float:
    if isinstance(v, tuple) and len(v) == 2:
        return float(v[0]) / float(v[1]) if v[1] else 0.0
    return float(v)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _decompressors():
    from tifffile import TIFF

    return TIFF.DECOMPRESSORS


class _StageRows:
    """Copy rows ``[r0, r1)`` of a source into the staged Zarr (picklable task)."""

    def __init__(self, source: Source, path: str, r0: int, r1: int):
        self.source, self.path, self.r0, self.r1 = source, path, r0, r1

    def __call__(self) -> int:
        import zarr

        read = getattr(self.source, "_read", None)
        w = self.source.shape[1]
        block = (
            read(self.r0, self.r1, 0, w, use_cache=False)
            if read
            else self.source.read(self.r0, self.r1, 0, w)
        )
        zarr.open_array(self.path, mode="r+")[self.r0 : self.r1] = block
        return int(block.nbytes)

    def __repr__(self) -> str:
        return f"_StageRows({self.source.path!r}, rows {self.r0}:{self.r1})"


def _LazyStaged(path: str) -> Source:
    from tilegraph.source.zarr_source import ZarrSource

    return ZarrSource(path, layout="YXC")
