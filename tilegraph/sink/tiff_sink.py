"""Export a finished output array to TIFF/BigTIFF (streamed tile by tile), PNG or JPEG.

:func:`export` is the single entry point the engine calls once, at the end of a run, in one task on a
worker near the job's storage. It dispatches on the destination's suffix:

* ``.tif`` / ``.tiff``: a tiled TIFF written tile by tile from a generator through
  ``tifffile.TiffWriter.write`` (one band of rows in memory at a time). BigTIFF is used automatically
  when the output could pass about 3.9 GB, and always for ``.btf``; ``bigtiff=`` forces it.
  Compression: ``None``/``"none"``, ``"lzw"``, ``"zlib"``/``"deflate"``, ``"zstd"`` (lossless, with a
  predictor for integer and float32 data).
* ``.png`` / ``.jpg`` / ``.jpeg``: see :mod:`tilegraph.sink.raster_sink` (whole image in memory).

Fidelity: the dtype is the array's (never converted here); the ICC profile is written byte for byte
(tag 34675); resolution (scaled when the output size differs from the source's), EXIF (IFD0
descriptive tags, the EXIF and GPS sub-IFDs, with pixel dimensions updated and orientation reset to 1
once a reader applied it), XMP (tag 700) are copied. Provenance (tilegraph's version, model, plan,
timings: whatever dict the engine passes) is written as JSON in the private TIFF tag
:data:`PROVENANCE_TAG` (65000, ASCII) and ``Software`` says ``tilegraph <version>``.
``ImageDescription`` is left to the photographer's own caption.

Every writer goes to a hidden temporary file next to the destination and renames it at the end, so an
interrupted export never leaves a file that looks complete.

:func:`metadata_to_attrs` / :func:`attrs_to_metadata` turn :class:`SourceMetadata` into Zarr
attributes and back (``icc_profile_hex`` and friends).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tilegraph.errors import DestinationError, SinkError, TilegraphError
from tilegraph.metadata import SourceMetadata
from tilegraph.metadata.attrs import _jsonable, attrs_to_metadata, metadata_to_attrs  # noqa: F401 (re-exported)
from tilegraph.metadata.exif import (
    ExifError,
    exif_orientation,
    parse_exif,
    patch_exif,
    patch_xmp,
    serialize_ifd,
    set_ifd_value,
)

__all__ = [
    "export",
    "validate_export",
    "write_tiff",
    "metadata_to_attrs",
    "attrs_to_metadata",
    "read_provenance",
    "output_metadata",
    "PROVENANCE_TAG",
    "TIFF_SUFFIXES",
    "RASTER_SUFFIXES",
    "COMPRESSIONS",
]

log = logging.getLogger("tilegraph.sink")

#: Private TIFF tag (in the 65000-65535 range reserved for private use) holding the provenance JSON.
PROVENANCE_TAG = 65000
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
#: accepted ``compression=`` names for TIFF -> tifffile's name
COMPRESSIONS = {None: None, "none": None, "lzw": "lzw", "zlib": "zlib", "deflate": "zlib", "zstd": "zstd"}
_BIGTIFF_AT = 3.9e9
_BAND_BYTES = 256 * 2**20
# IFD0 text tags of the EXIF block copied into the TIFF's own IFD
_IFD0_TEXT = {
    271: "Make",
    272: "Model",
    306: "DateTime",
    315: "Artist",
    316: "HostComputer",
    33432: "Copyright",
}
_PLACEHOLDER = {34665: 34664, 34853: 34852}  # sub-IFD pointer tag -> tag written first, then renamed


# --------------------------------------------------------------------------------------------------
# metadata <-> Zarr attributes


# --------------------------------------------------------------------------------------------------
# shared helpers (raster_sink uses them too)


def open_output(data) -> Any:
    """The array to export: a Zarr array, a path to one, or any array with ``shape``/``dtype``/slicing."""
    if isinstance(data, str | os.PathLike):
        import zarr

        try:
            return zarr.open_array(os.fspath(data), mode="r")
        except Exception as exc:
            raise SinkError(
                f"cannot open the output array to export ({type(exc).__name__}: {exc})",
                path=os.fspath(data),
                hint="the run's output store is missing or damaged; rerun with overwrite=True",
            ) from exc
    if not (hasattr(data, "shape") and hasattr(data, "dtype")):
        raise SinkError(
            f"cannot export an object of type {type(data).__name__}",
            hint="pass a Zarr array, a path to one, or a numpy array",
        )
    return data


def output_geometry(arr, destination: str) -> tuple[int, int, int]:
    """``(rows, cols, channels)`` of an output array (YX or YXC with 1-4 channels)."""
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and 1 <= shape[2] <= 4:
        return shape
    raise DestinationError(
        f"cannot write an array of shape {shape} as an image (YX or YXC with 1-4 channels expected)",
        path=destination,
        hint="write a .zarr destination for other shapes",
    )


def check_destination(destination: str, metadata: SourceMetadata | None) -> None:
    """Refuse a destination in a missing directory, that is a directory, or that is the source itself."""
    dest = os.path.abspath(destination)
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise DestinationError(
            f"the directory {parent} does not exist",
            path=destination,
            hint="create it first or pick another path",
        )
    if os.path.isdir(dest):
        raise DestinationError("is a directory", path=destination, hint="give a file name such as out.tif")
    src = (metadata.extra or {}).get("path") if metadata is not None else None
    if src and "://" not in str(src):
        same = os.path.realpath(src) == os.path.realpath(dest)
        if not same and os.path.exists(src) and os.path.exists(dest):
            with contextlib.suppress(OSError):
                same = os.path.samefile(src, dest)
        if same:
            raise DestinationError(
                "the destination is the source image itself",
                path=destination,
                hint="write to a different file",
            )


@contextlib.contextmanager
def atomic_path(destination: str):
    """Yield a hidden temporary path next to ``destination``; rename it into place only on success.

    ``OSError`` (disk full, quota, permission) becomes :class:`SinkError` naming the destination; the
    temporary file is removed on any failure, so no complete-looking file is left behind.
    """
    dest = os.path.abspath(destination)
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.partial-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except TilegraphError:
        _unlink(tmp)
        raise
    except OSError as exc:
        _unlink(tmp)
        short_write = exc.errno is None and "written" in str(exc)  # tifffile's check of a partial write
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or short_write:
            raise SinkError(
                f"no space left to write the output ({exc.strerror or exc})",
                path=destination,
                hint="free disk space or raise the quota, or write to another disk; nothing was left behind",
            ) from exc
        raise SinkError(
            f"writing failed: {exc.strerror or exc}",
            path=destination,
            hint="check permissions and free space of the destination directory",
        ) from exc
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def output_metadata(meta: SourceMetadata | None, rows: int, cols: int) -> dict[str, Any]:
    """What a sink writes for an output of ``rows x cols`` made from a source with ``meta``.

    Returns a dict with ``icc`` (bytes, untouched), ``exif`` (patched: pixel dimensions of the
    output, orientation 1 if it was applied), ``xmp`` (patched likewise), ``resolution`` (scaled by
    the output/source size ratio so the physical size is unchanged), ``orientation`` (to write, or
    ``None``), ``description`` and ``scale`` (``(sy, sx)``).
    """
    out: dict[str, Any] = {
        "icc": None,
        "exif": None,
        "xmp": None,
        "resolution": None,
        "orientation": None,
        "description": None,
        "scale": (1.0, 1.0),
    }
    if meta is None:
        return out
    extra = meta.extra or {}
    src = extra.get("shape")
    if src and len(src) == 2 and src[0] and src[1]:
        out["scale"] = (rows / float(src[0]), cols / float(src[1]))
    sy, sx = out["scale"]
    out["icc"] = meta.icc_profile
    orientation = 1 if meta.orientation_applied else None
    if meta.exif is not None:
        try:
            out["exif"] = patch_exif(bytes(meta.exif), orientation=orientation, width=cols, height=rows)
        except (ExifError, struct.error) as exc:
            log.warning("EXIF not carried over: %s", exc)
    if meta.xmp is not None:
        out["xmp"] = patch_xmp(bytes(meta.xmp), orientation=orientation, width=cols, height=rows)
    if meta.resolution is not None:
        x, y, unit = meta.resolution
        out["resolution"] = (float(x) * sx, float(y) * sy, unit)
    out["orientation"] = 1 if meta.orientation_applied else exif_orientation(meta.exif)
    out["description"] = extra.get("description")
    return out


def provenance_json(provenance: dict | None) -> str:
    """Provenance as compact ASCII JSON (``tilegraph`` version added when missing)."""
    from tilegraph._version import __version__

    prov = dict(provenance or {})
    prov.setdefault("tilegraph_version", __version__)
    return json.dumps(_jsonable(prov), ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def read_provenance(path: str | os.PathLike) -> dict | None:
    """The provenance dict tilegraph wrote into a TIFF, PNG or JPEG output (``None`` if absent)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get(PROVENANCE_TAG)
            return None if tag is None else json.loads(tag.value)
    from tilegraph.sink.raster_sink import read_raster_provenance

    return read_raster_provenance(path)


# --------------------------------------------------------------------------------------------------
# export


def export(
    zarr_array_or_path,
    destination: str | os.PathLike,
    *,
    metadata: SourceMetadata | None = None,
    provenance: dict | None = None,
    compression: str | None = None,
    tile: tuple[int, int] = (512, 512),
    bigtiff: bool | None = None,
    quality: int = 95,
) -> str:
    """Write an output array to ``destination`` as TIFF/BigTIFF, PNG or JPEG (chosen by suffix).

    Parameters
    ----------
    zarr_array_or_path
        The finished output: a Zarr array (YX or YXC), a path to one, or an in-memory array.
    destination
        ``.tif``/``.tiff``/``.btf`` (BigTIFF), ``.png``, ``.jpg``/``.jpeg``.
    metadata
        The source's metadata (ICC, EXIF, XMP, resolution; ``extra["shape"]`` and ``extra["path"]``
        are used to scale resolution/EXIF dimensions and to refuse overwriting the source).
    provenance
        JSON-able dict recorded in the file (TIFF tag 65000, PNG ``iTXt`` ``tilegraph``, JPEG comment).
    compression
        TIFF only: ``None``/``"none"``, ``"lzw"``, ``"zlib"``/``"deflate"`` or ``"zstd"``.
    tile
        TIFF tile shape ``(rows, cols)``, multiples of 16.
    bigtiff
        Force (True) or forbid (False) BigTIFF; ``None`` decides from the size (and ``.btf``).
    quality
        JPEG quality (1-100).

    Returns
    -------
    str
        The destination path, written completely (temporary file renamed into place).

    Raises
    ------
    DestinationError
        Unknown suffix, the destination is the source or a directory, or the data cannot be stored in
        that format as it is (16-bit or float to JPEG, alpha to JPEG, float to PNG, too large for memory).
    SinkError
        Writing failed (disk full, quota, permission); nothing that looks complete is left behind.
    """
    destination = os.fspath(destination)
    suffix = Path(destination).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return write_tiff(
            zarr_array_or_path,
            destination,
            metadata=metadata,
            provenance=provenance,
            compression=compression,
            tile=tile,
            bigtiff=bigtiff,
        )
    if suffix in RASTER_SUFFIXES:
        from tilegraph.sink.raster_sink import write_raster

        return write_raster(
            zarr_array_or_path,
            destination,
            metadata=metadata,
            provenance=provenance,
            compression=compression,
            quality=quality,
        )
    raise DestinationError(
        f"cannot tell the output format from the suffix {suffix or '(none)'}",
        path=destination,
        hint="use .tif, .tiff, .btf, .png, .jpg or .zarr",
    )


def _photometric(channels: int, meta: SourceMetadata | None) -> tuple[str, list | None]:
    kind = ((meta.extra or {}).get("photometric") if meta is not None else None) or ""
    if channels == 1:
        return "minisblack", None
    if channels == 2:
        return "minisblack", ["unassalpha"]
    if kind == "minisblack":  # scientific multi-channel data stays "gray + unspecified extra samples"
        return "minisblack", ["unspecified"] * (channels - 1)
    if channels == 3:
        return "rgb", None
    return "rgb", ["unassalpha"]


def _check_tiff(destination, rows, cols, channels, dtype, *, compression, tile, bigtiff):
    """Validate TIFF options for an output; return ``(codec, (tile_rows, tile_cols), bigtiff)``."""
    if dtype not in (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float16"), np.dtype("float32")):
        raise DestinationError(
            f"cannot write {dtype} data to TIFF",
            path=destination,
            hint="ask for uint8, uint16 or float32 output",
        )
    key = compression.lower() if isinstance(compression, str) else compression
    if key not in COMPRESSIONS:
        raise DestinationError(
            f"unknown TIFF compression {compression!r}",
            path=destination,
            hint="use one of none, lzw, zlib (deflate), zstd",
        )
    codec = COMPRESSIONS[key]
    th, tw = (int(tile), int(tile)) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if th <= 0 or tw <= 0 or th % 16 or tw % 16:
        raise DestinationError(
            f"TIFF tile {tile} is not a multiple of 16", path=destination, hint="use e.g. 512"
        )
    raw = rows * cols * channels * dtype.itemsize
    expansion = 1.5 if codec == "lzw" else 1.01  # worst case growth of incompressible data
    if Path(destination).suffix.lower() in (".btf", ".tf8") and bigtiff is None:
        bigtiff = True
    if bigtiff is None:
        bigtiff = raw * expansion + 2**24 > _BIGTIFF_AT
    elif not bigtiff and raw * expansion + 2**24 > 2**32:
        raise DestinationError(
            f"the output ({raw / 1e9:.1f} GB) may not fit a classic TIFF (4 GB)",
            path=destination,
            hint="pass bigtiff=True or use the .btf suffix",
        )
    return codec, (th, tw), bool(bigtiff)


def validate_export(
    destination: str | os.PathLike,
    *,
    shape: tuple[int, ...],
    dtype,
    metadata: SourceMetadata | None = None,
    compression: str | int | None = None,
    tile: tuple[int, int] = (512, 512),
    bigtiff: bool | None = None,
    quality: int = 95,
) -> None:
    """Check, before a run starts, that :func:`export` will accept an output of ``shape`` and ``dtype``.

    Call it when planning, so that (say) 16-bit to JPEG or a missing directory fails in seconds, not
    after hours of inference. ``shape`` is ``(rows, cols)`` or ``(rows, cols, channels)``.

    Raises
    ------
    DestinationError
        The same refusals :func:`export` would raise (see there).
    """
    destination = os.fspath(destination)
    shape = tuple(int(v) for v in shape)
    rows, cols, channels = output_geometry(_Shape(shape), destination)
    dtype = np.dtype(dtype)
    suffix = Path(destination).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        _check_tiff(
            destination, rows, cols, channels, dtype, compression=compression, tile=tile, bigtiff=bigtiff
        )
    elif suffix in RASTER_SUFFIXES:
        from tilegraph.sink.raster_sink import check_raster

        check_raster(destination, rows, cols, channels, dtype, compression=compression, quality=quality)
    else:
        raise DestinationError(
            f"cannot tell the output format from the suffix {suffix or '(none)'}",
            path=destination,
            hint="use .tif, .tiff, .btf, .png, .jpg or .zarr",
        )
    check_destination(destination, metadata)


class _Shape:
    def __init__(self, shape):
        self.shape = shape


def write_tiff(
    zarr_array_or_path,
    destination: str | os.PathLike,
    *,
    metadata: SourceMetadata | None = None,
    provenance: dict | None = None,
    compression: str | None = None,
    tile: tuple[int, int] = (512, 512),
    bigtiff: bool | None = None,
) -> str:
    """Write a tiled (Big)TIFF tile by tile from a generator; see :func:`export` for the parameters."""
    import tifffile

    destination = os.fspath(destination)
    arr = open_output(zarr_array_or_path)
    rows, cols, channels = output_geometry(arr, destination)
    dtype = np.dtype(arr.dtype)
    codec, (th, tw), bigtiff = _check_tiff(
        destination, rows, cols, channels, dtype, compression=compression, tile=tile, bigtiff=bigtiff
    )
    check_destination(destination, metadata)
    om = output_metadata(metadata, rows, cols)
    photometric, extrasamples = _photometric(channels, metadata)
    predictor = None
    if codec is not None:
        predictor = 2 if dtype.kind == "u" else (3 if dtype == np.dtype("float32") else None)
    extratags: list[tuple] = [(PROVENANCE_TAG, "s", 0, provenance_json(provenance), True)]
    if om["xmp"] is not None:
        extratags.append((700, "B", len(om["xmp"]), bytes(om["xmp"]), True))
    sub_ifds: dict[int, dict] = {}
    if om["exif"] is not None:
        try:
            ifd0 = parse_exif(om["exif"])
        except (ExifError, struct.error) as exc:
            log.warning("%s: EXIF not carried over (%s)", destination, exc)
            ifd0 = {}
        for code in _IFD0_TEXT:
            val = ifd0.get(code)
            if isinstance(val, tuple) and val[0] == 2:
                text = val[2].split(b"\x00", 1)[0].decode("latin-1")
                if text:
                    extratags.append((code, "s", 0, text, True))
        for pointer in (34665, 34853):
            if isinstance(ifd0.get(pointer), dict):
                sub = dict(ifd0[pointer])
                if pointer == 34665:
                    set_ifd_value(sub, 40962, cols)
                    set_ifd_value(sub, 40963, rows)
                sub_ifds[pointer] = sub
                extratags.append((_PLACEHOLDER[pointer], "Q" if bigtiff else "I", 1, 0, True))
    if om["orientation"] is not None:
        extratags.append((274, "H", 1, int(om["orientation"]), True))
    kwargs: dict[str, Any] = {}
    if om["resolution"] is not None:
        x, y, unit = om["resolution"]
        if x > 0 and y > 0:
            kwargs["resolution"] = (x, y)
            kwargs["resolutionunit"] = {"inch": "INCH", "centimeter": "CENTIMETER"}.get(str(unit), "NONE")
    if om["icc"] is not None:
        kwargs["iccprofile"] = bytes(om["icc"])
    if om["description"]:
        kwargs["description"] = str(om["description"])
    if extrasamples:
        kwargs["extrasamples"] = extrasamples
    from tilegraph._version import __version__

    shape = (rows, cols) if channels == 1 else (rows, cols, channels)
    with atomic_path(destination) as tmp:
        try:
            with tifffile.TiffWriter(tmp, bigtiff=bool(bigtiff), byteorder="<") as tw_:
                tw_.write(
                    _tiles(arr, rows, cols, channels, th, tw),
                    shape=shape,
                    dtype=dtype,
                    tile=(th, tw),
                    photometric=photometric,
                    planarconfig="contig" if channels > 1 else None,
                    compression=codec,
                    predictor=predictor,
                    metadata=None,
                    software=f"tilegraph {__version__}",
                    extratags=extratags,
                    **kwargs,
                )
        except (TilegraphError, OSError):
            raise
        except Exception as exc:
            raise SinkError(
                f"TIFF writing failed ({type(exc).__name__}: {exc})",
                path=destination,
                hint="report this with the output's shape and dtype",
            ) from exc
        if sub_ifds:
            _append_sub_ifds(tmp, sub_ifds, bigtiff=bool(bigtiff))
    return destination


def _tiles(arr, rows: int, cols: int, channels: int, th: int, tw: int):
    """Yield tiles in row-major order, reading one band of rows (aligned to the Zarr chunks) at a time."""
    itemsize = np.dtype(arr.dtype).itemsize
    chunk_rows = int(arr.chunks[0]) if getattr(arr, "chunks", None) else th
    band = math.lcm(th, chunk_rows)
    if band * cols * channels * itemsize > _BAND_BYTES:
        band = max(th, (_BAND_BYTES // max(1, cols * channels * itemsize)) // th * th)
    for r0 in range(0, rows, band):
        block = np.asarray(arr[r0 : min(rows, r0 + band)])
        if block.ndim == 3 and channels == 1:
            block = block[:, :, 0]
        for tr in range(0, block.shape[0], th):
            for c0 in range(0, cols, tw):
                yield block[tr : tr + th, c0 : c0 + tw]


def _append_sub_ifds(path: str, sub_ifds: dict[int, dict], *, bigtiff: bool) -> None:
    """Append the EXIF/GPS sub-IFDs to a written TIFF and point renamed placeholder tags at them."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        entries = {pointer: tags[_PLACEHOLDER[pointer]].offset for pointer in sub_ifds}
    vfield = 12 if bigtiff else 8
    with open(path, "r+b") as f:
        for pointer, entry in entries.items():
            f.seek(0, os.SEEK_END)
            end = f.tell()
            if end % 2:
                f.write(b"\x00")
                end += 1
            f.write(serialize_ifd(sub_ifds[pointer], end, bigtiff=bigtiff))
            f.seek(entry)
            f.write(struct.pack("<H", pointer))
            f.seek(entry + vfield)
            f.write(struct.pack("<Q" if bigtiff else "<I", end))
