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

The EXIF/XMP codec shared by the readers and the sinks (:func:`parse_exif`, :func:`build_exif`,
:func:`patch_exif`, :func:`exif_orientation`, :func:`serialize_ifd`, :func:`patch_xmp`, :func:`orient`,
:func:`oriented_shape`, ...) lives in :mod:`tilegraph.metadata.exif`, and the pixel limit
(:data:`DEFAULT_MAX_PIXELS`, :func:`resolve_max_pixels`, :func:`check_pixel_limit`) in
:mod:`tilegraph.source._limits`; both are re-exported here, where they used to be defined.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import shutil
import struct
import threading
import uuid
from typing import Any

import numpy as np

from tilegraph.errors import (
    CorruptSourceError,
    InputError,
    SourceError,
    SourceNotFoundError,
    UnsupportedSourceError,
)
from tilegraph.metadata.exif import (  # noqa: F401 (re-exported)
    POINTER_TAGS,
    ExifError,
    build_exif,
    exif_orientation,
    orient,
    oriented_shape,
    parse_exif,
    patch_exif,
    patch_xmp,
    read_ifd,
    serialize_ifd,
    set_ifd_value,
)
from tilegraph.source._limits import (  # noqa: F401 (re-exported)
    DEFAULT_MAX_PIXELS,
    check_input_file,
    check_pixel_limit,
    resolve_max_pixels,
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

_DECODES: collections.Counter = (
    collections.Counter()
)  # segments decoded in this process, for tests and diagnostics
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

    path: str  # file-backed: always a path

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
        self._stat = check_input_file(self.path, "TIFF")
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
        pages: list[Any] = list(lvl.pages)
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
        assert self.cache_dir is not None
        digest = hashlib.sha1(
            repr((os.path.realpath(self.path), self._stat, self.series, self.level)).encode()
        ).hexdigest()[:20]
        return os.path.join(self.cache_dir, f"tiff-{digest}.zarr")

    def _read_cached(self, y0, y1, x0, x1) -> np.ndarray:
        import zarr

        target = self._cache_path()
        if not os.path.exists(os.path.join(target, "zarr.json")):
            assert self.cache_dir is not None
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

        from tilegraph.metadata.attrs import metadata_to_attrs

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


def _human(n: float) -> str:
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
