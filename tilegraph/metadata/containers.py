"""PNG chunks and JPEG segments: walking a file's structure, checking it, finding metadata blocks."""

from __future__ import annotations

import re
import struct
import zlib

from tilegraph.errors import CorruptSourceError

__all__ = ["png_chunks", "jpeg_segments"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAX_META = 64 * 2**20  # decompressed size allowed for a PNG iCCP/zTXt/iTXt chunk
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def png_chunks(data: bytes, *, path: str | None = None) -> list[tuple[bytes, int, int]]:
    """Walk a PNG's chunks, checking lengths and CRCs; return ``[(type, start, end)]`` of chunk data.

    Raises
    ------
    CorruptSourceError
        Bad signature, a chunk running past the end (truncated), a CRC mismatch, no IHDR first or no IEND.
    """
    if not data.startswith(_PNG_MAGIC):
        raise CorruptSourceError(
            "not a PNG file (bad signature)", path=path, hint="check the file and its extension"
        )
    pos = 8
    out: list[tuple[bytes, int, int]] = []
    n = len(data)
    while True:
        if pos + 8 > n:
            raise CorruptSourceError(
                f"PNG is truncated at byte {n} (no IEND chunk)",
                path=path,
                hint="the file was cut short; copy or export it again",
            )
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        start, end = pos + 8, pos + 8 + length
        if length > 2**31 - 1 or end + 4 > n:
            raise CorruptSourceError(
                f"PNG chunk {ctype!r} at byte {pos} runs past the end of the file ({n} bytes): truncated",
                path=path,
                hint="the file was cut short; copy or export it again",
            )
        if not re.fullmatch(rb"[A-Za-z]{4}", ctype):
            raise CorruptSourceError(
                f"PNG chunk type {ctype!r} at byte {pos} is invalid",
                path=path,
                hint="the file is damaged or truncated; copy or export it again from the original",
            )
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[pos + 4 : end]) & 0xFFFFFFFF != crc:
            raise CorruptSourceError(
                f"PNG chunk {ctype.decode('latin-1')} at byte {pos} fails its CRC check",
                path=path,
                hint="the file is damaged; copy or export it again",
            )
        if not out and ctype != b"IHDR":
            raise CorruptSourceError(
                "PNG does not start with an IHDR chunk",
                path=path,
                hint="the file is damaged or truncated; copy or export it again from the original",
            )
        out.append((ctype, start, end))
        pos = end + 4
        if ctype == b"IEND":
            return out


def _inflate_limited(data: bytes, *, path: str | None, what: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, _MAX_META)
    except zlib.error as exc:
        raise CorruptSourceError(
            f"PNG {what} cannot be decompressed ({exc})",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        ) from exc
    if d.unconsumed_tail:
        raise CorruptSourceError(
            f"PNG {what} decompresses to more than {_MAX_META} bytes",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    return out


def jpeg_segments(data: bytes, *, path: str | None = None) -> list[tuple[int, int, int]]:
    """Walk a JPEG's markers up to EOI; return ``[(marker, start, end)]`` of segment payloads.

    Entropy-coded data after each SOS is skipped; the walk must end at an EOI marker.

    Raises
    ------
    CorruptSourceError
        Bad SOI, a segment running past the end, or no EOI (a truncated file or scan).
    """
    if not data.startswith(b"\xff\xd8"):
        raise CorruptSourceError(
            "not a JPEG file (no SOI marker)",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    pos, n = 2, len(data)
    out: list[tuple[int, int, int]] = []
    truncated = CorruptSourceError(
        "JPEG is truncated (no EOI marker: the file or its scan was cut short)",
        path=path,
        hint="copy or export the file again",
    )
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > n:
            raise truncated
        if data[pos] != 0xFF:
            raise CorruptSourceError(
                f"JPEG marker expected at byte {pos}, found {data[pos]:#04x}",
                path=path,
                hint="the file is damaged or truncated; copy or export it again from the original",
            )
        marker = data[pos + 1]
        if marker == 0xD9:
            return out
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > n:
            raise truncated
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        start, end = pos + 4, pos + 2 + length
        if length < 2 or end > n:
            raise truncated
        out.append((marker, start, end))
        pos = end
        if marker == 0xDA:
            m = _ENTROPY_END.search(data, pos)
            if m is None:
                raise truncated
            pos = m.start()
