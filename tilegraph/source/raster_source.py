"""PNG and JPEG sources: the whole image is decoded once per process (imagecodecs, never Pillow).

* The header is parsed by tilegraph before anything is decoded: image size (checked against the pixel
  limit, see :func:`tilegraph.source._limits.check_pixel_limit`), bit depth, colour type, and the
  metadata a sink carries over (ICC profile, EXIF, XMP, resolution). The file structure is checked
  too: every PNG chunk's length and CRC and a final ``IEND``; every JPEG marker up to ``EOI``. A
  truncated file is refused when it is opened, not decoded into a half-grey image.
* 16-bit PNG is decoded as 16-bit (libpng through imagecodecs, not Pillow's 8-bit path).
* EXIF orientation is applied exactly once, when decoding; :attr:`shape` is the upright shape and the
  metadata says ``orientation_applied=True`` so sinks write orientation 1.
* ``region_reads`` is False: the pipeline stages these files into a chunked Zarr with
  :meth:`_RasterSource.stage_tasks`, a single task that decodes the file once. A direct :meth:`read`
  keeps the last decoded image of this process in memory, so repeated reads decode once.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
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
from tilegraph.metadata.containers import _MAX_META, _PNG_MAGIC, _inflate_limited, jpeg_segments, png_chunks  # noqa: F401 (re-exported)
from tilegraph.metadata.exif import ExifError, exif_orientation, orient, oriented_shape, parse_exif
from tilegraph.source._limits import check_input_file, check_pixel_limit, resolve_max_pixels
from tilegraph.source.abc import Source, SourceMetadata

__all__ = ["PngSource", "JpegSource", "png_chunks", "jpeg_segments", "clear_cache"]

log = logging.getLogger("tilegraph.source")

_XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"
_ICC_JPEG = b"ICC_PROFILE\x00"

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Drop the decoded image this process keeps for direct reads."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------------------
# PNG structure


# JPEG structure

_SOF_OK = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive", 0xC9: "arithmetic", 0xCA: "arithmetic"}
_SOF_REFUSED = {0xC3, 0xC5, 0xC6, 0xC7, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_header(data: bytes, path: str) -> dict[str, Any]:
    chunks = png_chunks(data, path=path)
    ctype, s, e = chunks[0]
    if e - s != 13:
        raise CorruptSourceError(
            "PNG IHDR chunk has the wrong length",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", data[s:e])
    if width == 0 or height == 0:
        raise CorruptSourceError(
            f"PNG header gives a zero image size ({width} x {height})",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    valid = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
    if color not in valid or depth not in valid[color] or comp or filt or interlace > 1:
        raise CorruptSourceError(
            f"PNG header is invalid (colour type {color}, bit depth {depth})",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    types = [c for c, _, _ in chunks]
    if b"IDAT" not in types:
        raise CorruptSourceError(
            "PNG has no image data (no IDAT chunk)",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    trns = b"tRNS" in types
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}[color] + (1 if trns and color in (0, 2, 3) else 0)
    info: dict[str, Any] = {
        "rows": height,
        "cols": width,
        "channels": channels,
        "dtype": np.dtype(np.uint16 if depth == 16 else np.uint8),
        "bit_depth": depth,
        "color_type": color,
        "interlaced": bool(interlace),
    }
    icc = exif = xmp = resolution = None
    extra: dict[str, Any] = {}
    for ctype, s, e in chunks:
        body = data[s:e]
        if ctype == b"iCCP":
            name, _, rest = body.partition(b"\x00")
            if not rest:
                raise CorruptSourceError(
                    "PNG iCCP chunk is malformed",
                    path=path,
                    hint="the file is damaged or truncated; copy or export it again from the original",
                )
            icc = _inflate_limited(rest[1:], path=path, what="ICC profile")
            extra["icc_name"] = name.decode("latin-1")
        elif ctype == b"eXIf":
            exif = body
        elif ctype == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            if key == b"XML:com.adobe.xmp" and len(rest) >= 2:
                compressed = rest[0]
                _lang, _, rest2 = rest[2:].partition(b"\x00")
                _tkey, _, text = rest2.partition(b"\x00")
                xmp = _inflate_limited(text, path=path, what="XMP") if compressed else text
        elif ctype == b"pHYs" and len(body) == 9:
            px, py, unit = struct.unpack(">IIB", body)
            if unit == 1:
                resolution = (px / 100.0, py / 100.0, "centimeter")
            else:
                extra["pixel_aspect"] = [px, py]
        elif ctype == b"sRGB" and body:
            extra["srgb_intent"] = body[0]
        elif ctype == b"gAMA" and len(body) == 4:
            extra["gamma"] = struct.unpack(">I", body)[0] / 100000.0
    info.update(icc=icc, exif=exif, xmp=xmp, resolution=resolution, extra=extra)
    return info


# --------------------------------------------------------------------------------------------------


def _jpeg_header(data: bytes, path: str) -> dict[str, Any]:
    segments = jpeg_segments(data, path=path)
    sof = [(m, s, e) for m, s, e in segments if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC)]
    if not sof:
        raise CorruptSourceError(
            "JPEG has no frame header (SOF)",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    marker, s, e = sof[0]
    if marker in _SOF_REFUSED or marker not in _SOF_OK:
        raise UnsupportedSourceError(
            f"JPEG process {marker:#04x} (lossless or hierarchical) is not supported",
            path=path,
            hint="convert to a baseline or progressive JPEG, or to TIFF/PNG",
        )
    if e - s < 6:
        raise CorruptSourceError(
            "JPEG frame header is too short",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    precision, height, width, ncomp = struct.unpack(">BHHB", data[s : s + 6])
    if height == 0 or width == 0:
        raise CorruptSourceError(
            f"JPEG header gives a zero image size ({width} x {height})",
            path=path,
            hint="the file is damaged or truncated; copy or export it again from the original",
        )
    if precision != 8:
        raise UnsupportedSourceError(
            f"{precision}-bit JPEG is not supported",
            path=path,
            hint="convert to 8-bit JPEG, 16-bit TIFF or PNG",
        )
    if ncomp == 4:
        raise UnsupportedSourceError(
            "CMYK JPEG is not supported yet",
            path=path,
            hint="convert to RGB with its ICC profile first (e.g. in Photoshop or with ImageMagick -profile)",
        )
    if ncomp not in (1, 3):
        raise UnsupportedSourceError(
            f"JPEG with {ncomp} components is not supported",
            path=path,
            hint="convert the image to an 8- or 16-bit gray or RGB(A) TIFF or PNG first",
        )
    icc_parts: dict[int, bytes] = {}
    exif = xmp = resolution = None
    extra: dict[str, Any] = {"jpeg_process": _SOF_OK[marker]}
    for m, s, e in segments:
        body = data[s:e]
        if m == 0xE1 and body.startswith(b"Exif\x00\x00") and exif is None:
            exif = body[6:]
        elif m == 0xE1 and body.startswith(_XMP_JPEG) and xmp is None:
            xmp = body[len(_XMP_JPEG) :]
        elif m == 0xE2 and body.startswith(_ICC_JPEG) and len(body) >= 14:
            icc_parts[body[12]] = body[14:]
        elif m == 0xE0 and body.startswith(b"JFIF\x00") and len(body) >= 12:
            units, xd, yd = struct.unpack(">BHH", body[7:12])
            if units in (1, 2) and xd and yd:
                resolution = (float(xd), float(yd), "inch" if units == 1 else "centimeter")
        elif m == 0xEE and body.startswith(b"Adobe"):
            extra["adobe_transform"] = body[11] if len(body) > 11 else None
    icc = None
    if icc_parts:
        seqs = sorted(icc_parts)
        if seqs != list(range(1, len(seqs) + 1)):
            log.warning("%s: ICC profile segments are incomplete (%s); profile not carried over", path, seqs)
            extra["icc_warning"] = "incomplete ICC profile segments"
        else:
            icc = b"".join(icc_parts[i] for i in seqs)
    return {
        "rows": height,
        "cols": width,
        "channels": ncomp,
        "dtype": np.dtype(np.uint8),
        "icc": icc,
        "exif": exif,
        "xmp": xmp,
        "resolution": resolution,
        "extra": extra,
    }


# --------------------------------------------------------------------------------------------------
# sources


class _RasterSource(Source):
    """Common part of :class:`PngSource` and :class:`JpegSource`."""

    path: str  # file-backed: always a path

    format_name = "raster"
    region_reads = False

    def __init__(
        self,
        path,
        *,
        layout: str | None = None,
        max_pixels: int | None = None,
        apply_orientation: bool = True,
    ):
        self.path = os.fspath(path)
        self.max_pixels = resolve_max_pixels(max_pixels)
        self.apply_orientation = bool(apply_orientation)
        self._stat = check_input_file(self.path, self.format_name)
        data = self._bytes()
        info = self._parse(data)
        check_pixel_limit(info["rows"], info["cols"], path=self.path, max_pixels=self.max_pixels)
        exif = info["exif"]
        if exif is not None:
            try:
                parse_exif(exif)
            except (ExifError, struct.error) as exc:
                log.warning("%s: EXIF block is damaged and not carried over (%s)", self.path, exc)
                info["extra"]["exif_warning"] = f"damaged EXIF not carried over: {exc}"
                exif = None
        self.orientation = exif_orientation(exif) if self.apply_orientation else 1
        self.stored_shape = (info["rows"], info["cols"])
        self.shape = oriented_shape(self.stored_shape, self.orientation)
        self.channels = info["channels"]
        self.dtype = info["dtype"]
        self.layout = "YX" if self.channels == 1 else "YXC"
        if layout is not None and layout != self.layout:
            raise UnsupportedSourceError(
                f"layout {layout!r} was asked for but the file holds {self.layout}",
                path=self.path,
                hint=f"leave layout unset for {self.format_name} files",
            )
        self._check_dtype()
        extra = dict(info["extra"])
        extra.update(
            format=self.format_name.lower(),
            path=self.path,
            shape=list(self.shape),
            stored_shape=list(self.stored_shape),
            channels=self.channels,
            dtype=str(self.dtype),
            orientation=exif_orientation(exif),
            photometric="rgb" if self.channels >= 3 else "minisblack",
        )
        self._metadata = SourceMetadata(
            icc_profile=info["icc"],
            resolution=info["resolution"],
            exif=exif,
            xmp=info["xmp"],
            orientation_applied=self.orientation != 1,
            extra=extra,
        )

    def _bytes(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise SourceNotFoundError(
                "the file disappeared",
                path=self.path,
                hint="check the path; inputs must stay in place during a run",
            ) from None
        except OSError as exc:
            raise CorruptSourceError(
                f"cannot read the file ({exc.strerror})",
                path=self.path,
                hint="the file is damaged or truncated; copy or export it again from the original",
            ) from exc

    def _parse(self, data: bytes) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode_bytes(self, data: bytes) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def metadata(self) -> SourceMetadata:
        """ICC, EXIF (orientation already applied: ``orientation_applied``), XMP, resolution."""
        return self._metadata

    def decode(self) -> np.ndarray:
        """Decode the whole image, upright, as ``(rows, cols, channels)`` (no caching).

        Raises
        ------
        CorruptSourceError
            The file changed since it was opened, or cannot be decoded.
        ImageTooLargeError
            Decoding needs more memory than is available.
        """
        st = os.stat(self.path) if os.path.exists(self.path) else None
        if st is None:
            raise SourceNotFoundError(
                "the file disappeared after it was opened",
                path=self.path,
                hint="check the path; inputs must stay in place during a run",
            )
        if (st.st_mtime_ns, st.st_size) != self._stat:
            raise CorruptSourceError(
                "the file changed after it was opened",
                path=self.path,
                hint="do not modify inputs during a run",
            )
        need = self.shape[0] * self.shape[1] * self.channels * self.dtype.itemsize
        try:
            import psutil

            avail = psutil.virtual_memory().available
        except Exception:  # pragma: no cover - psutil is a dependency
            avail = None
        if avail is not None and need > avail:
            raise ImageTooLargeError(
                f"decoding needs {need / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB available",
                path=self.path,
                hint="convert the image to a tiled TIFF, which is read region by region",
            )
        data = self._bytes()
        try:
            image = self._decode_bytes(data)
        except SourceError:
            raise
        except Exception as exc:
            raise CorruptSourceError(
                f"cannot decode the image ({type(exc).__name__}: {exc})",
                path=self.path,
                hint="the file is damaged; export it again from the original",
            ) from exc
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape != (*self.stored_shape, self.channels) or image.dtype != self.dtype:
            raise CorruptSourceError(
                f"decoded {image.shape} {image.dtype}, but the header says "
                f"{(*self.stored_shape, self.channels)} {self.dtype}",
                path=self.path,
                hint="the file is damaged; export it again",
            )
        return orient(image, self.orientation)

    def _cached(self) -> np.ndarray:
        key = (os.getpid(), os.path.realpath(self.path), self._stat, self.orientation)
        with _CACHE_LOCK:
            image = _CACHE.get(key)
            if image is None:
                _CACHE.clear()  # keep at most one decoded image per process
                image = self.decode()
                _CACHE[key] = image
        return image

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of the upright image, ``(rows, cols, channels)``, in the file's dtype."""
        return self._read(y0, y1, x0, x1, use_cache=True)

    def _read(self, y0, y1, x0, x1, *, use_cache: bool) -> np.ndarray:
        h, w = self.shape
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise InputError(
                f"region rows {y0}:{y1}, cols {x0}:{x1} is outside the image {h} x {w}",
                path=self.path,
                hint="read a region inside the image; padding is the caller's business",
            )
        image = self._cached() if use_cache else self.decode()
        return np.array(image[y0:y1, x0:x1], copy=True)

    def stage_tasks(self, path: str, *, band_rows: int = 1024, chunk_cols: int = 1024):
        """One task that decodes the file once and writes it into a chunked YXC Zarr v3 array at ``path``.

        The task needs memory for the whole decoded image (plus one chunk row band while writing).

        Returns
        -------
        tasks : list with one picklable callable
        staged : Source
            A :class:`~tilegraph.source.zarr_source.ZarrSource` of the copy (valid once the task ran).
        """
        import zarr

        from tilegraph.metadata.attrs import metadata_to_attrs
        from tilegraph.source.zarr_source import ZarrSource

        h, w = self.shape
        zarr.create_array(
            store=path,
            shape=(h, w, self.channels),
            chunks=(min(int(band_rows), h), min(int(chunk_cols), w), self.channels),
            dtype=self.dtype,
            fill_value=0,
            overwrite=True,
            attributes=metadata_to_attrs(self.metadata),
        )
        return [_StageWhole(self, path)], ZarrSource(path, layout="YXC")


class _StageWhole:
    """Decode a raster source once and write it into the staged Zarr (picklable task)."""

    def __init__(self, source: _RasterSource, path: str):
        self.source, self.path = source, path

    def __call__(self) -> int:
        import zarr

        image = self.source.decode()
        arr = zarr.open_array(self.path, mode="r+")
        band = arr.chunks[0]
        for r in range(0, image.shape[0], band):
            arr[r : r + band] = image[r : r + band]
        return int(image.nbytes)

    def __repr__(self) -> str:
        return f"_StageWhole({self.source.path!r})"


class PngSource(_RasterSource):
    """A PNG image: gray, gray+alpha, RGB, RGBA or palette; 8- or 16-bit (16-bit stays 16-bit).

    Parameters
    ----------
    path
        Local file path.
    layout
        Only checked against the file's layout (``"YX"`` or ``"YXC"``).
    max_pixels
        Refuse a header claiming more pixels; ``None`` uses ``$TILEGRAPH_MAX_PIXELS`` or 4 gigapixels.
    apply_orientation
        Apply the EXIF (``eXIf`` chunk) orientation once (default); False keeps pixels as stored.

    Notes
    -----
    Palette images are expanded to RGB (RGBA with a ``tRNS`` chunk); 1/2/4-bit gray to 8-bit.
    """

    format_name = "PNG"

    def _parse(self, data: bytes) -> dict[str, Any]:
        return _png_header(data, self.path)

    def _decode_bytes(self, data: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.png_decode(data)


class JpegSource(_RasterSource):
    """An 8-bit JPEG image, gray or RGB (CMYK and 12-bit are refused with a clear error).

    Parameters
    ----------
    path
        Local file path.
    layout
        Only checked against the file's layout (``"YX"`` or ``"YXC"``).
    max_pixels
        Refuse a header claiming more pixels; ``None`` uses ``$TILEGRAPH_MAX_PIXELS`` or 4 gigapixels.
    apply_orientation
        Apply the EXIF orientation once (default); False keeps pixels as stored.
    """

    format_name = "JPEG"

    def _parse(self, data: bytes) -> dict[str, Any]:
        return _jpeg_header(data, self.path)

    def _decode_bytes(self, data: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpeg8_decode(data)
