"""A corpus of broken and hostile input files, generated on demand, each with the error it must raise.

:func:`make_corpus` writes the files into a directory and returns one :class:`Case` per file: the typed
:mod:`tilegraph.errors` exception tilegraph must answer with, and when:

``"open"``
    :func:`tilegraph.open_source` refuses the file (header, structure, pixel limit, unsupported kind).
``"read"``
    Opening works; reading pixels (``source.read`` over the whole image) raises.
``"run"``
    The input is fine; :func:`tilegraph.run` with :attr:`Case.model` and :attr:`Case.destination` raises
    (broken models, a destination equal to the source, 16-bit to JPEG).

Every file is small (a few KiB) and built deterministically, so the corpus takes well under a second.
"""

from __future__ import annotations

import importlib
import io
import os
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from tilegraph.errors import (
    CorruptSourceError,
    DestinationError,
    ImageTooLargeError,
    ModelOutputError,
    TilegraphError,
    UnsupportedSourceError,
)

__all__ = ["Case", "make_corpus", "load_model", "HUGE_SIDE"]

#: Side of the images the "huge header" cases claim: 100,000 x 100,000 = 10 gigapixels.
HUGE_SIDE = 100_000


@dataclass(frozen=True)
class Case:
    """One broken input and the answer tilegraph owes it.

    Attributes
    ----------
    name : str
        Short identifier (also the test id).
    path : str
        The generated file (or directory).
    expected_error_type : type
        The :class:`~tilegraph.errors.TilegraphError` subclass that must be raised.
    when : {"open", "read", "run"}
        The step that must raise (see the module docstring).
    description : str
        What is wrong with the file.
    model : str or None
        For ``when="run"``: ``"module:callable"`` building the model (see :func:`load_model`).
    destination : str or None
        For ``when="run"``: where the run writes.
    names : tuple of str
        Strings of which at least one must appear in the error message (the file name by default).
    """

    name: str
    path: str
    expected_error_type: type[TilegraphError]
    when: str
    description: str = ""
    model: str | None = None
    destination: str | None = None
    names: tuple[str, ...] = field(default_factory=tuple)

    def mentions(self) -> tuple[str, ...]:
        """Strings of which one must appear in the error message: the file's base name or ``names``."""
        return self.names or (os.path.basename(self.path.rstrip("/")),)


def load_model(target: str):
    """Build a model from ``"module:callable"`` (a class or factory called without arguments)."""
    module, _, name = target.partition(":")
    obj = getattr(importlib.import_module(module), name)
    return obj() if isinstance(obj, type) else obj


# --------------------------------------------------------------------------------------------------
# helpers


def _image(shape, dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a little noise (compresses well, not trivially)."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([(yy / max(h - 1, 1) + k * xx / max(w - 1, 1)) / (1 + k) for k in range(c)], axis=-1)
    base = base + rng.normal(0, 0.01, base.shape).astype(np.float32)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        out = base.astype(dt)
    else:
        top = np.iinfo(dt).max
        out = np.clip(base * top, 0, top).astype(dt)
    return out if len(shape) == 3 else out[:, :, 0]


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _tag_entry(path: str, code: int) -> tuple[int, int, str, bool]:
    """``(entry_offset, type, byteorder, bigtiff)`` of a tag in the first IFD."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags[code]
        return tag.offset, tag.dtype, tif.byteorder, tif.is_bigtiff


def _patch_tag(path: str, code: int, value: int, *, index: int = 0) -> None:
    """Overwrite element ``index`` of an integer tag of the first IFD in place (SHORT/LONG/LONG8)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags[code]
        typ, count, voff, order = int(tag.dtype), tag.count, tag.valueoffset, tif.byteorder
    if index >= count:
        raise IndexError(f"tag {code} has {count} values")
    fmt = {3: "H", 4: "I", 16: "Q"}[typ]
    size = struct.calcsize(fmt)
    with open(path, "r+b") as f:
        f.seek(voff + index * size)
        f.write(struct.pack(order + fmt, value))


def _patch_tag_code(path: str, code: int, new_code: int) -> None:
    off, _, order, _ = _tag_entry(path, code)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(order + "H", new_code))


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def _png(
    width: int, height: int, *, depth: int = 8, color: int = 2, idat: bytes | None = None, pre=()
) -> bytes:
    if idat is None:
        idat = zlib.compress(b"")
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + b"".join(pre)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpeg8_encode(image, level=quality))


def _sof_offset(data: bytes) -> int:
    """Offset of the SOF payload (precision byte) of a JPEG."""
    pos = 2
    while pos < len(data):
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos + 4
        pos += 2 + length
    raise ValueError("no SOF")


def _sos_data_offset(data: bytes) -> int:
    pos = 2
    while pos < len(data):
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xDA:
            return pos + 2 + length
        pos += 2 + length
    raise ValueError("no SOS")


# --------------------------------------------------------------------------------------------------


def make_corpus(directory: str | os.PathLike) -> list[Case]:
    """Write the broken/hostile corpus into ``directory`` (created if needed) and return its cases.

    Returns
    -------
    list of Case
        At least 25 cases: truncated TIFF (several offsets), PNG and JPEG; zero-byte file; a directory;
        wrong extension and bad magic; corrupt IFDs; offsets past the end; zero width; huge-dimension
        headers (TIFF, PNG, JPEG); unsupported bit depths, sample formats, channel counts, colour
        spaces (CMYK TIFF and JPEG, palette) and compression; bad CRC; corrupt compressed data; NaN
        and Inf in float input; broken models; a destination equal to the source; 16-bit to JPEG.
    """
    import tifffile

    d = os.fspath(directory)
    os.makedirs(d, exist_ok=True)
    P = lambda name: os.path.join(d, name)  # noqa: E731
    cases: list[Case] = []

    def add(name, path, err, when, description, **kw):
        cases.append(Case(name, path, err, when, description, **kw))

    rgb16 = _image((96, 128, 3), np.uint16, seed=1)
    rgb8 = _image((96, 128, 3), np.uint8, seed=2)

    # --- a valid tiled TIFF, a valid striped TIFF: the bases for truncations
    tiled = P("valid_tiled.tif")
    tifffile.imwrite(tiled, rgb16, photometric="rgb", tile=(32, 32), compression="zlib")
    striped = P("valid_striped.tif")
    tifffile.imwrite(striped, rgb16, photometric="rgb", rowsperstrip=8, compression="lzw")
    tiled_bytes = open(tiled, "rb").read()
    striped_bytes = open(striped, "rb").read()

    add("zero_byte", _write(P("zero_byte.tif"), b""), CorruptSourceError, "open", "an empty file")
    folder = P("a_directory.tif")
    os.makedirs(folder, exist_ok=True)
    add("directory", folder, UnsupportedSourceError, "open", "a directory named like an image")
    add(
        "wrong_extension",
        _write(P("notes_wrong_extension.jpg"), b"name,value\nexposure,1/125\n" * 4),
        UnsupportedSourceError,
        "open",
        "a CSV file named .jpg",
    )
    add(
        "bad_magic_tif",
        _write(P("bad_magic.tif"), b"II*\x01" + bytes(range(256)) * 4),
        UnsupportedSourceError,
        "open",
        "a .tif whose magic number is wrong",
    )
    add(
        "tiff_truncated_header",
        _write(P("truncated_header.tif"), tiled_bytes[:6]),
        CorruptSourceError,
        "open",
        "TIFF cut inside its 8-byte header",
    )
    for frac in (0.25, 0.5, 0.9):
        cut = int(len(tiled_bytes) * frac)
        add(
            f"tiff_truncated_{int(frac * 100)}",
            _write(P(f"truncated_{int(frac * 100)}pct.tif"), tiled_bytes[:cut]),
            CorruptSourceError,
            "open",
            f"tiled TIFF cut at {int(frac * 100)}% of its bytes",
        )
    add(
        "tiff_striped_truncated",
        _write(P("truncated_striped.tif"), striped_bytes[: len(striped_bytes) * 2 // 3]),
        CorruptSourceError,
        "open",
        "LZW striped TIFF cut at two thirds",
    )

    # --- corrupt IFDs
    order = "<"
    bad = bytearray(tiled_bytes)
    bad[4:8] = struct.pack(order + "I", len(tiled_bytes) + 10_000)
    add(
        "ifd_offset_past_eof",
        _write(P("ifd_offset_past_eof.tif"), bytes(bad)),
        CorruptSourceError,
        "open",
        "the first IFD offset points past the end of the file",
    )
    bad = bytearray(tiled_bytes)
    (ifd,) = struct.unpack(order + "I", bad[4:8])
    bad[ifd : ifd + 2] = struct.pack(order + "H", 0xFFFF)
    add(
        "ifd_entry_count",
        _write(P("ifd_entry_count.tif"), bytes(bad)),
        CorruptSourceError,
        "open",
        "the IFD claims 65535 entries",
    )
    bad = bytearray(tiled_bytes)
    (n,) = struct.unpack(order + "H", bad[ifd : ifd + 2])
    for i in range(n):  # scramble every entry's type field
        bad[ifd + 2 + 12 * i + 2 : ifd + 2 + 12 * i + 4] = struct.pack(order + "H", 0x7777)
    add(
        "ifd_garbage_types",
        _write(P("ifd_garbage_types.tif"), bytes(bad)),
        CorruptSourceError,
        "open",
        "every IFD entry has an invalid type",
    )

    path = P("tile_offset_past_eof.tif")
    _write(path, tiled_bytes)
    _patch_tag(path, 324, len(tiled_bytes) + 123_456, index=3)
    add("tile_offset_past_eof", path, CorruptSourceError, "open", "one TileOffsets entry points past the end")

    path = P("zero_width.tif")
    _write(path, tiled_bytes)
    _patch_tag(path, 256, 0)
    add("zero_width", path, CorruptSourceError, "open", "ImageWidth is 0")

    path = P("huge_dimensions.tif")
    tifffile.imwrite(path, rgb8[:16, :16], photometric="rgb", rowsperstrip=16, compression="zlib")
    _patch_tag(path, 256, HUGE_SIDE)
    _patch_tag(path, 257, HUGE_SIDE)
    _patch_tag(path, 278, HUGE_SIDE)
    add(
        "tiff_huge_dimensions",
        path,
        ImageTooLargeError,
        "open",
        f"a {os.path.getsize(path)}-byte TIFF whose header claims {HUGE_SIDE} x {HUGE_SIDE} pixels",
    )

    path = P("unknown_compression.tif")
    tifffile.imwrite(path, rgb8, photometric="rgb", tile=(32, 32), compression="zlib")
    _patch_tag(path, 259, 34999)
    add("tiff_unknown_compression", path, UnsupportedSourceError, "open", "Compression tag 34999 (unknown)")

    path = P("ojpeg_compression.tif")
    tifffile.imwrite(path, rgb8, photometric="rgb", rowsperstrip=32)
    _patch_tag(path, 259, 6)
    add("tiff_old_jpeg", path, UnsupportedSourceError, "open", "old-style JPEG compression (6)")

    # --- valid TIFFs of kinds tilegraph does not support
    path = P("cmyk.tif")
    tifffile.imwrite(path, _image((64, 64, 4), np.uint8), photometric="separated")
    add("tiff_cmyk", path, UnsupportedSourceError, "open", "CMYK (photometric SEPARATED)")
    path = P("palette.tif")
    cmap = np.stack([np.arange(256) * 257] * 3).astype(np.uint16)
    tifffile.imwrite(path, rgb8[..., 0], photometric="palette", colormap=cmap)
    add("tiff_palette", path, UnsupportedSourceError, "open", "palette colour")
    path = P("bilevel.tif")
    tifffile.imwrite(path, rgb8[..., 0] > 128, photometric="minisblack")
    add("tiff_1bit", path, UnsupportedSourceError, "open", "1-bit samples")
    path = P("twelve_bit.tif")
    tifffile.imwrite(path, (rgb16[..., 0] >> 4), bitspersample=12, photometric="minisblack")
    add("tiff_12bit", path, UnsupportedSourceError, "open", "12-bit samples")
    path = P("complex.tif")
    tifffile.imwrite(path, (rgb16[..., 0] + 1j * rgb16[..., 1]).astype(np.complex64))
    add("tiff_complex", path, UnsupportedSourceError, "open", "complex64 samples")
    path = P("signed16.tif")
    tifffile.imwrite(path, rgb16[..., 0].astype(np.int16))
    add("tiff_int16", path, UnsupportedSourceError, "open", "signed 16-bit samples")
    path = P("float64.tif")
    tifffile.imwrite(path, rgb16[:32, :32].astype(np.float64), photometric="rgb")
    add("tiff_float64", path, UnsupportedSourceError, "open", "float64 samples")
    path = P("five_channels.tif")
    tifffile.imwrite(path, _image((48, 48, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    add("tiff_5_channels", path, UnsupportedSourceError, "open", "5 samples per pixel")
    path = P("page_stack.tif")
    tifffile.imwrite(path, np.stack([rgb8[..., 0]] * 3), photometric="minisblack", metadata=None)
    add("tiff_page_stack", path, UnsupportedSourceError, "open", "3 unrelated pages (not channels)")

    # --- damage found only when pixels are decoded
    path = P("corrupt_tile_data.tif")
    _write(path, tiled_bytes)
    with tifffile.TiffFile(path) as tif:
        off, cnt = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes(np.random.default_rng(5).integers(0, 256, cnt, dtype=np.uint8)))
    add(
        "tiff_corrupt_tile_data",
        path,
        CorruptSourceError,
        "read",
        "tile #5 holds random bytes, not zlib data",
    )
    flt = _image((80, 96, 3), np.float32, seed=3)
    flt_nan = flt.copy()
    flt_nan[40, 50, 1] = np.nan
    path = P("float_nan.tif")
    tifffile.imwrite(path, flt_nan, photometric="rgb", tile=(32, 32))
    add("float_nan", path, CorruptSourceError, "read", "float32 TIFF with a NaN")
    flt_inf = flt.copy()
    flt_inf[3, 90, 0] = np.inf
    path = P("float_inf.tif")
    tifffile.imwrite(path, flt_inf, photometric="rgb", rowsperstrip=16, compression="zlib")
    add("float_inf", path, CorruptSourceError, "read", "float32 TIFF with an Inf")

    # --- PNG
    import imagecodecs

    png = bytes(imagecodecs.png_encode(rgb16))
    add(
        "png_truncated_half",
        _write(P("truncated_half.png"), png[: len(png) // 2]),
        CorruptSourceError,
        "open",
        "PNG cut in half",
    )
    add(
        "png_truncated_no_iend",
        _write(P("truncated_no_iend.png"), png[:-12]),
        CorruptSourceError,
        "open",
        "PNG missing its IEND chunk",
    )
    bad = bytearray(png)
    bad[60] ^= 0xFF  # inside the IDAT data
    add(
        "png_bad_crc",
        _write(P("bad_crc.png"), bytes(bad)),
        CorruptSourceError,
        "open",
        "a flipped byte in IDAT",
    )
    garbage = bytes(np.random.default_rng(7).integers(0, 256, 400, dtype=np.uint8))
    add(
        "png_corrupt_idat",
        _write(P("corrupt_idat.png"), _png(32, 32, idat=garbage)),
        CorruptSourceError,
        "read",
        "IDAT with a valid CRC but random (non-zlib) data",
    )
    add(
        "png_huge_dimensions",
        _write(P("huge_dimensions.png"), _png(HUGE_SIDE, HUGE_SIDE)),
        ImageTooLargeError,
        "open",
        f"a tiny PNG whose IHDR claims {HUGE_SIDE} x {HUGE_SIDE}",
    )
    add(
        "png_zero_width", _write(P("zero_width.png"), _png(0, 32)), CorruptSourceError, "open", "IHDR width 0"
    )
    bomb = _png_chunk(b"iCCP", b"bomb\x00\x00" + zlib.compress(b"\x00" * (80 * 2**20), 9))
    add(
        "png_icc_bomb",
        _write(P("icc_bomb.png"), _png(8, 8, idat=zlib.compress(b"\x00" * (8 * 25)), pre=[bomb])),
        CorruptSourceError,
        "open",
        "an iCCP chunk inflating to 80 MiB",
    )

    # --- JPEG
    jpg = _jpeg_bytes(rgb8)
    add(
        "jpeg_truncated_half",
        _write(P("truncated_half.jpg"), jpg[: len(jpg) // 2]),
        CorruptSourceError,
        "open",
        "JPEG cut in half",
    )
    sos = _sos_data_offset(jpg)
    add(
        "jpeg_truncated_scan",
        _write(P("truncated_scan.jpg"), jpg[: sos + (len(jpg) - sos) // 3]),
        CorruptSourceError,
        "open",
        "JPEG cut a third into its scan",
    )
    add(
        "jpeg_truncated_header",
        _write(P("truncated_header.jpg"), jpg[:40]),
        CorruptSourceError,
        "open",
        "JPEG cut inside its headers",
    )
    add(
        "jpeg_no_frame",
        _write(P("no_frame.jpg"), b"\xff\xd8\xff\xd9"),
        CorruptSourceError,
        "open",
        "SOI then EOI: no frame header",
    )
    bad = bytearray(jpg)
    sof = _sof_offset(jpg)
    bad[sof + 1 : sof + 5] = struct.pack(">HH", 65535, 65535)
    add(
        "jpeg_huge_dimensions",
        _write(P("huge_dimensions.jpg"), bytes(bad)),
        ImageTooLargeError,
        "open",
        "a small JPEG whose frame header claims 65535 x 65535 (4.3 gigapixels)",
    )
    bad = bytearray(jpg)
    bad[sof] = 12
    add(
        "jpeg_12bit",
        _write(P("twelve_bit.jpg"), bytes(bad)),
        UnsupportedSourceError,
        "open",
        "frame header says 12-bit precision",
    )
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_image((48, 48, 4), np.uint8), mode="CMYK").save(buf, "JPEG", quality=90)
    add("jpeg_cmyk", _write(P("cmyk.jpg"), buf.getvalue()), UnsupportedSourceError, "open", "Adobe CMYK JPEG")

    # --- valid inputs, broken runs
    good = P("good_input.tif")
    tifffile.imwrite(
        good, _image((128, 160, 3), np.uint16, seed=9), photometric="rgb", tile=(64, 64), compression="zlib"
    )
    models = "tilegraph.testing.models"
    for name, target in (
        ("model_wrong_shape", "WrongShapeModel"),
        ("model_wrong_dtype", "WrongDtypeModel"),
        ("model_nan", "NaNModel"),
        ("model_raises", "RaisingModel"),
    ):
        add(
            name,
            good,
            ModelOutputError,
            "run",
            f"{target} on a valid input",
            model=f"{models}:{target}",
            destination=P(f"out_{name}.tif"),
            names=(target, "window"),  # model errors name the model (and window), not the image
        )
    add(
        "destination_is_source",
        good,
        DestinationError,
        "run",
        "destination equal to the source",
        model=f"{models}:numpy_identity",
        destination=good,
    )
    png16 = _write(P("sixteen_bit.png"), png)
    add(
        "jpeg_from_16bit",
        png16,
        DestinationError,
        "run",
        "16-bit source written to JPEG",
        model=f"{models}:numpy_identity",
        destination=P("out_16bit.jpg"),
        names=("out_16bit.jpg",),
    )
    return cases
