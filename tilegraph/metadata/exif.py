"""The small EXIF/XMP codec shared by the readers and the sinks, and the EXIF orientation helpers.

EXIF in tilegraph is a TIFF-structured block: the payload of a JPEG APP1 ``Exif`` segment, of a PNG
``eXIf`` chunk, or the descriptive tags of a TIFF's IFD0 gathered by :class:`~tilegraph.source.tiff_source.TiffSource`.

* Codec: :func:`parse_exif`, :func:`build_exif`, :func:`serialize_ifd`, :func:`read_ifd`,
  :func:`set_ifd_value`, :func:`patch_exif` (in-place rewrite of orientation and pixel dimensions),
  :func:`exif_orientation`; malformed blocks raise :class:`ExifError`.
* XMP: :func:`patch_xmp` rewrites orientation and pixel dimensions in an XMP packet.
* Orientation: :func:`orient` applies an EXIF orientation to an image, :func:`oriented_shape` gives
  the upright shape.

These names are also importable from :mod:`tilegraph.source.tiff_source`, where they used to live.
"""

from __future__ import annotations

import re
import struct

import numpy as np

__all__ = [
    "ExifError",
    "POINTER_TAGS",
    "orient",
    "oriented_shape",
    "read_ifd",
    "parse_exif",
    "serialize_ifd",
    "build_exif",
    "exif_orientation",
    "patch_exif",
    "set_ifd_value",
    "patch_xmp",
]


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
