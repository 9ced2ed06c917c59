"""PNG and JPEG in and out: 16-bit exact, EXIF orientation applied once, alpha, ICC, provenance."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image, ImageOps

import tilegraph
from tilegraph.errors import DestinationError
from tilegraph.sink.raster_sink import read_raster_provenance
from tilegraph.sink.tiff_sink import export, read_provenance
from tilegraph.source import open_source
from tilegraph.source.raster_source import JpegSource, PngSource
from tilegraph.testing.models import numpy_identity
from tilegraph.testing.windows import srgb_icc


def _noise(shape, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _photo8(shape, seed=0):
    """Smooth 8-bit content with an asymmetric block (JPEG-friendly, orientation-revealing)."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    diag = (yy + 2 * xx) * 255 // max(h + 2 * w - 3, 1)
    img = np.stack([yy * 255 // max(h - 1, 1), xx * 255 // max(w - 1, 1), diag], axis=-1)
    img[: h // 4, : w // 3] = (250, 20, 20)
    return img.astype(np.uint8)


def _full(src):
    return src.read(0, src.shape[0], 0, src.shape[1])


# ---------------------------------------------------------------------------------------------- 16-bit PNG


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_is_read_as_16bit_and_written_exactly(tmp_path, channels):
    a = _noise((37, 53, channels) if channels > 1 else (37, 53), seed=channels)
    path = str(tmp_path / "in.png")
    with open(path, "wb") as f:
        f.write(imagecodecs.png_encode(a))  # an independent encoder
    src = open_source(path)
    assert isinstance(src, PngSource) and src.dtype == np.uint16 and src.channels == channels
    got = _full(src)
    np.testing.assert_array_equal(got, a if channels > 1 else a[:, :, None])
    assert got.max() > 255  # not Pillow's 8-bit path
    out = export(got, str(tmp_path / "out.png"), metadata=src.metadata, provenance={"k": 1})
    with open(out, "rb") as f:
        back = imagecodecs.png_decode(f.read())
    np.testing.assert_array_equal(back, a)
    if channels == 1:
        with Image.open(out) as im:  # a second reader
            assert im.mode.startswith("I;16") or im.mode == "I"
            np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), a)


def test_16bit_png_round_trip_through_run(tmp_path):
    a = _noise((90, 110, 3), seed=3)
    path = str(tmp_path / "in16.png")
    with open(path, "wb") as f:
        f.write(imagecodecs.png_encode(a))
    out = str(tmp_path / "out16.png")
    tilegraph.run(path, out, model=numpy_identity, tile=64, overlap=8, blend="crop", client="inprocess")
    with open(out, "rb") as f:
        back = imagecodecs.png_decode(f.read())
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, a)
    assert read_provenance(out)["tilegraph_version"] == tilegraph.__version__


# ---------------------------------------------------------------------------------------------- orientation


def _save_oriented(path, stored, orientation, fmt):
    ex = Image.Exif()
    ex[274] = orientation
    Image.fromarray(stored).save(path, fmt, exif=ex.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_exactly_once(tmp_path, fmt, orientation):
    stored = _photo8((40, 64))
    path = str(tmp_path / f"o{orientation}.{fmt.lower()}")
    _save_oriented(path, stored, orientation, fmt)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # Pillow as the oracle
    src = open_source(path)
    assert src.shape == expected.shape[:2]
    assert src.shape == ((64, 40) if orientation >= 5 else (40, 64))
    assert src.metadata.orientation_applied == (orientation != 1)
    got = _full(src)
    if fmt == "PNG":
        np.testing.assert_array_equal(got, expected)
    else:
        assert np.abs(got.astype(int) - expected).max() <= 2
    # written out: upright pixels, orientation 1, so a viewer applies nothing more
    for suffix in (".png", ".jpg", ".tif"):
        out = export(got, str(tmp_path / f"out{orientation}{suffix}"), metadata=src.metadata, provenance={})
        with Image.open(out) as im:
            assert im.getexif().get(274, 1) == 1
            shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert shown.shape == expected.shape
        diff = np.abs(shown.astype(int) - got)
        if suffix == ".jpg":  # lossy: a rotated image would differ by far more than this
            assert diff.mean() < 2.0
        else:
            assert diff.max() == 0


def test_orientation_6_rotates_clockwise(tmp_path):
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)  # stored top-left ...
    path = str(tmp_path / "six.png")
    _save_oriented(path, stored, 6, "PNG")
    up = _full(open_source(path))
    assert up.shape == (30, 20, 3)
    assert tuple(up[0, -1]) == (255, 0, 0)  # ... is displayed top-right after a clockwise quarter turn


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_orientation_through_run(tmp_path, orientation):
    stored = _photo8((48, 80))
    path = str(tmp_path / f"in{orientation}.png")
    _save_oriented(path, stored, orientation, "PNG")
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = str(tmp_path / f"run{orientation}.png")
    tilegraph.run(path, out, model=numpy_identity, tile=32, overlap=4, blend="crop", client="inprocess")
    with Image.open(out) as im:
        assert im.getexif().get(274, 1) == 1
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), expected)


# ---------------------------------------------------------------------------------------------- alpha


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgba_keeps_alpha_through_png_and_tiff(tmp_path, dtype):
    a = _noise((33, 47, 4), dtype, seed=5)
    a[:10, :10, 3] = 0  # transparent corner
    path = str(tmp_path / "rgba.png")
    with open(path, "wb") as f:
        f.write(imagecodecs.png_encode(a))
    src = open_source(path)
    assert src.channels == 4
    got = _full(src)
    np.testing.assert_array_equal(got, a)
    png = export(got, str(tmp_path / "o.png"), metadata=src.metadata)
    with open(png, "rb") as f:
        np.testing.assert_array_equal(imagecodecs.png_decode(f.read()), a)
    tif = export(got, str(tmp_path / "o.tif"), metadata=src.metadata, tile=(16, 16))
    with tifffile.TiffFile(tif) as t:
        assert [int(v) for v in t.pages[0].extrasamples] == [2]
        np.testing.assert_array_equal(t.asarray(), a)


def test_rgba_alpha_through_run(tmp_path):
    a = _noise((64, 96, 4), np.uint8, seed=6)
    a[20:40, 30:60, 3] = 0
    path = str(tmp_path / "rgba_run.png")
    with open(path, "wb") as f:
        f.write(imagecodecs.png_encode(a))
    out = str(tmp_path / "rgba_out.png")
    tilegraph.run(path, out, model=numpy_identity, tile=32, overlap=4, blend="crop", client="inprocess")
    with open(out, "rb") as f:
        back = imagecodecs.png_decode(f.read())
    assert back.shape == a.shape
    np.testing.assert_array_equal(back[..., 3], a[..., 3])
    np.testing.assert_array_equal(back, a)


def test_palette_trns_and_low_bit_depth(tmp_path):
    rgb = _photo8((30, 40))
    pal = Image.fromarray(rgb).convert("P")
    p1 = str(tmp_path / "pal.png")
    pal.save(p1, transparency=0)
    with Image.open(p1) as im:
        expected = np.asarray(im.convert("RGBA"))
    src = open_source(p1)
    assert src.channels == 4
    np.testing.assert_array_equal(_full(src), expected)
    p2 = str(tmp_path / "bilevel.png")
    Image.fromarray(rgb[..., 0] > 128).save(p2)
    got = _full(open_source(p2))
    assert got.shape == (30, 40, 1) and set(np.unique(got)) <= {0, 255}
    np.testing.assert_array_equal(got[..., 0] == 255, rgb[..., 0] > 128)


# ---------------------------------------------------------------------------------------------- metadata


def test_icc_exif_xmp_resolution_survive_png_jpeg_tiff(tmp_path):
    icc = srgb_icc()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="1"/></x:xmpmeta>'
    ex = Image.Exif()
    ex[271] = "Fujifilm"
    ex.get_ifd(0x8769)[40962] = 64
    ex.get_ifd(0x8769)[40963] = 40
    path = str(tmp_path / "meta.jpg")
    Image.fromarray(_photo8((40, 64))).save(
        path, quality=95, icc_profile=icc, exif=ex.tobytes(), dpi=(300, 300), xmp=xmp
    )
    src = open_source(path)
    assert isinstance(src, JpegSource)
    m = src.metadata
    assert m.icc_profile == icc and m.xmp == xmp and m.resolution == (300.0, 300.0, "inch") and m.exif
    got = _full(src)
    big = np.repeat(np.repeat(got, 2, axis=0), 2, axis=1)  # a x2 output
    prov = {"model": {"name": "m", "weights_sha256": "00" * 32}, "plan": {"tile": 256, "scale": 2}}
    for suffix in (".png", ".jpg", ".tif"):
        out = export(big, str(tmp_path / f"o{suffix}"), metadata=m, provenance=prov)
        with Image.open(out) as im:
            assert im.info["icc_profile"] == icc  # byte for byte
            exif = im.getexif()
            assert exif[271] == "Fujifilm"
            sub = exif.get_ifd(0x8769)
            assert (sub[40962], sub[40963]) == (128, 80)  # dimensions of the output
            dpi = im.info.get("dpi")
            assert dpi is not None and abs(dpi[0] - 600) < 1  # same physical size
            if suffix == ".png":
                assert json.loads(im.text["tilegraph"])["plan"] == prov["plan"]
            if suffix == ".jpg":
                assert im.info["comment"].startswith(b"tilegraph:")
        assert read_provenance(out)["model"] == prov["model"]


def test_jpeg_icc_larger_than_one_segment(tmp_path):
    icc = srgb_icc() + bytes(range(256)) * 400  # > 64 KiB: split over several APP2 segments
    path = str(tmp_path / "bigicc.jpg")
    Image.fromarray(_photo8((16, 16))).save(path, icc_profile=icc)
    m = open_source(path).metadata
    assert m.icc_profile == icc
    out = export(_full(open_source(path)), str(tmp_path / "o.jpg"), metadata=m)
    with Image.open(out) as im:
        assert im.info["icc_profile"] == icc


def test_grayscale_jpeg_and_png_text_free(tmp_path):
    g = _photo8((24, 36))[..., 0]
    path = str(tmp_path / "g.jpg")
    Image.fromarray(g).save(path, quality=100)
    src = open_source(path)
    assert src.channels == 1 and src.layout == "YX"
    assert np.abs(_full(src)[..., 0].astype(int) - g).max() <= 3
    out = export(_full(src), str(tmp_path / "g_out.jpg"))
    assert read_raster_provenance(out)["tilegraph_version"]


# ---------------------------------------------------------------------------------------------- refusals


def test_outputs_png_jpeg_cannot_hold_are_refused(tmp_path):
    cases = [
        (_noise((8, 8, 3), np.uint16), "o16.jpg", "8-bit"),
        (np.zeros((8, 8, 3), np.float32), "of.png", "float32"),
        (np.zeros((8, 8, 3), np.float32), "of.jpg", "8-bit"),
        (np.zeros((8, 8, 4), np.uint8), "rgba.jpg", "alpha"),
        (np.zeros((8, 8, 2), np.uint8), "la.jpg", "alpha"),
    ]
    for data, name, text in cases:
        with pytest.raises(DestinationError) as info:
            export(data, str(tmp_path / name))
        assert name in str(info.value) and text in str(info.value)
    with pytest.raises(DestinationError, match="compression"):
        export(np.zeros((8, 8, 3), np.uint8), str(tmp_path / "x.jpg"), compression="zstd")
    assert os.listdir(tmp_path) == []


def test_outputs_too_large_for_memory_are_refused(tmp_path, monkeypatch):
    import psutil

    class _VM:
        available = 10_000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: _VM())
    zarr.create_array(store=str(tmp_path / "z.zarr"), shape=(100, 100, 3), chunks=(50, 50, 3), dtype="uint8")
    with pytest.raises(DestinationError, match=r"\.tif") as info:
        export(str(tmp_path / "z.zarr"), str(tmp_path / "big.png"))
    assert "big.png" in str(info.value)


# ---------------------------------------------------------------------------------------------- plumbing


def test_raster_sources_pickle_small_and_stage_once(tmp_path):
    a = _noise((50, 70, 3), np.uint16, seed=8)
    png = imagecodecs.png_encode(a)
    chunk = b"iCCP" + b"p\x00\x00" + zlib.compress(srgb_icc())
    body = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    path = str(tmp_path / "s.png")
    with open(path, "wb") as f:
        f.write(png[:33] + body + png[33:])
    src = open_source(path)
    assert src.metadata.icc_profile == srgb_icc()
    blob = pickle.dumps(src)
    assert len(blob) < 4000 + len(srgb_icc())  # header facts and metadata, never pixels
    assert not src.region_reads
    tasks, staged = src.stage_tasks(str(tmp_path / "st.zarr"), band_rows=16)
    assert len(tasks) == 1
    pickle.loads(pickle.dumps(tasks[0]))()
    np.testing.assert_array_equal(_full(staged), a)
    assert staged.metadata.icc_profile == srgb_icc()


def test_png_header_admits_300_megapixels(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 20_000, 15_000, 16, 2, 0, 0, 0)

    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)

    buf = io.BytesIO()
    buf.write(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    path = str(tmp_path / "claims_300mp.png")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    src = open_source(path)  # the header is legitimate for a large original: not refused
    assert src.shape == (15_000, 20_000) and src.dtype == np.uint16
