"""TIFF/BigTIFF/OME-TIFF in (region reads, staging, metadata, limits) and TIFF out (streamed export)."""

from __future__ import annotations

import functools
import json
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr

import tilegraph
from tilegraph.errors import (
    CorruptSourceError,
    DestinationError,
    ImageTooLargeError,
    SinkError,
    TileStoreError,
    UnsupportedSourceError,
)
from tilegraph.metadata import SourceMetadata
from tilegraph.sink import tiff_sink
from tilegraph.sink.tiff_sink import (
    PROVENANCE_TAG,
    attrs_to_metadata,
    export,
    metadata_to_attrs,
    read_provenance,
    validate_export,
)
from tilegraph.source import open_source
from tilegraph.source.tiff_source import (
    DEFAULT_MAX_PIXELS,
    TiffSource,
    _close_all,
    build_exif,
    exif_orientation,
    parse_exif,
    patch_exif,
    patch_xmp,
    segment_decode_count,
)


def _img(shape, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(0.5, 0.2, shape).astype(dt)
    return rng.integers(0, np.iinfo(dt).max, shape, endpoint=True).astype(dt)


@functools.lru_cache(maxsize=1)
def _srgb_icc() -> bytes:
    """A real ICC profile (its header holds a creation time: build it once)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _yxc(a):
    return a if a.ndim == 3 else a[:, :, None]


REGIONS = [(0, 1, 0, 1), (3, 70, 5, 90), (31, 33, 15, 49), (100, 150, 120, 170), (0, 150, 0, 170)]


# ---------------------------------------------------------------------------------------------- reading


_STORAGE_CASES = [
    (storage, channels)
    for storage in ("tiled", "strips", "single", "contiguous", "planar_tiled", "planar_strips")
    for channels in (1, 2, 3, 4)
    if not (storage.startswith("planar") and channels == 1)  # planar needs several samples
]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize(("storage", "channels"), _STORAGE_CASES)
def test_regions_match_tifffile(tmp_path, storage, channels, dtype):
    a = _img((150, 170, channels) if channels > 1 else (150, 170), dtype, seed=channels)
    kw: dict = {"photometric": "rgb" if channels >= 3 else "minisblack"}
    if channels in (2, 4):
        kw["extrasamples"] = ["unassalpha"]
    data = a
    if storage == "tiled":
        kw.update(tile=(32, 48), compression="zlib")
    elif storage == "strips":
        kw.update(rowsperstrip=7, compression="lzw")
    elif storage == "single":
        kw.update(rowsperstrip=150, compression="zstd")
    elif storage.startswith("planar"):
        data = np.ascontiguousarray(np.moveaxis(a, -1, 0))
        kw.update(planarconfig="separate", compression="zlib")
        kw.update(tile=(32, 32)) if storage == "planar_tiled" else kw.update(rowsperstrip=9)
    path = str(tmp_path / "a.tif")
    tifffile.imwrite(path, data, **kw)
    src = open_source(path)
    assert isinstance(src, TiffSource)
    expected_storage = {"planar_tiled": "tiled", "planar_strips": "strips"}.get(storage, storage)
    assert src.storage == expected_storage
    assert src.region_reads == (expected_storage in ("tiled", "contiguous"))
    assert src.shape == (150, 170) and src.channels == channels and src.dtype == np.dtype(dtype)
    truth = _yxc(a)
    for y0, y1, x0, x1 in REGIONS:
        block = src.read(y0, y1, x0, x1)
        assert block.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(block, truth[y0:y1, x0:x1])


def test_big_endian_and_bigtiff_inputs(tmp_path):
    a = _img((90, 110, 3), np.uint16, seed=4)
    for name, kw in {
        "be_contig.tif": dict(byteorder=">"),
        "be_tiled.tif": dict(byteorder=">", tile=(32, 32), compression="zlib"),
        "big.tif": dict(bigtiff=True, tile=(16, 32), compression="zstd"),
    }.items():
        path = str(tmp_path / name)
        tifffile.imwrite(path, a, photometric="rgb", **kw)
        src = TiffSource(path)
        np.testing.assert_array_equal(src.read(5, 80, 7, 101), a[5:80, 7:101])


def test_source_pickles_small_and_reopens(tmp_path):
    a = _img((300, 200, 3), seed=5)
    path = str(tmp_path / "t.tif")
    tifffile.imwrite(path, a, photometric="rgb", tile=(64, 64), compression="zlib")
    src = TiffSource(path)
    _ = src.metadata
    blob = pickle.dumps(src)
    assert len(blob) < 2000 and b"tifffile" not in blob
    _close_all()  # a fresh process would have nothing open
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.read(10, 250, 30, 190), a[10:250, 30:190])
    code = (
        "import pickle,sys,numpy as np;"
        "s=pickle.loads(sys.stdin.buffer.read());"
        "sys.stdout.write(str(int(s.read(0,300,0,200).astype(np.int64).sum())))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
    assert int(out.stdout) == int(a.astype(np.int64).sum())


def test_tiled_read_decodes_only_needed_tiles(tmp_path):
    path = str(tmp_path / "t.tif")
    tifffile.imwrite(
        path, _img((256, 256, 3), np.uint8), photometric="rgb", tile=(64, 64), compression="zlib"
    )
    src = TiffSource(path)
    segment_decode_count(reset=True)
    src.read(70, 120, 70, 120)  # inside tile (1, 1)
    assert segment_decode_count() == 1
    src.read(60, 130, 60, 130)  # touches tiles rows 0-2, cols 0-2
    assert segment_decode_count(reset=True) == 1 + 9


def test_striped_staging_decodes_each_strip_once(tmp_path):
    a = _img((103, 80, 3), seed=6)
    path = str(tmp_path / "s.tif")
    tifffile.imwrite(path, a, photometric="rgb", rowsperstrip=7, compression="lzw", iccprofile=_srgb_icc())
    src = TiffSource(path)
    assert src.storage == "strips" and not src.region_reads
    tasks, staged = src.stage_tasks(str(tmp_path / "stage.zarr"), band_rows=16, chunk_cols=32)
    zarr_arr = zarr.open_array(str(tmp_path / "stage.zarr"), mode="r")
    assert zarr_arr.chunks[0] % 7 == 0 and zarr_arr.chunks[0] >= 16
    tasks = [pickle.loads(pickle.dumps(t)) for t in tasks]  # tasks travel to workers
    segment_decode_count(reset=True)
    assert sum(t() for t in tasks) == a.nbytes
    assert segment_decode_count(reset=True) == -(-103 // 7)
    np.testing.assert_array_equal(staged.read(0, 103, 0, 80), a)
    assert staged.metadata.icc_profile == _srgb_icc()


def test_single_strip_is_announced_and_staged_in_one_task(tmp_path, caplog):
    a = _img((120, 90), np.uint16, seed=7)
    path = str(tmp_path / "one_strip.tif")
    tifffile.imwrite(path, a, rowsperstrip=120, compression="zlib")
    with caplog.at_level("WARNING", logger="tilegraph.source"):
        src = TiffSource(path)
    assert src.storage == "single" and not src.region_reads
    assert "one_strip.tif" in src.notice and "21.1 KiB" in src.notice and "memory" in src.notice
    assert any("one_strip.tif" in r.getMessage() for r in caplog.records)
    tasks, staged = src.stage_tasks(str(tmp_path / "st.zarr"), band_rows=32)
    assert len(tasks) == 1
    segment_decode_count(reset=True)
    tasks[0]()
    assert segment_decode_count(reset=True) == 1
    np.testing.assert_array_equal(staged.read(0, 120, 0, 90)[..., 0], a)


def test_single_strip_cache_dir_converts_once(tmp_path):
    a = _img((64, 48, 3), np.uint8, seed=8)
    path = str(tmp_path / "one.tif")
    tifffile.imwrite(path, a, photometric="rgb", rowsperstrip=64, compression="lzw")
    src = TiffSource(path, cache_dir=str(tmp_path / "cache"))
    segment_decode_count(reset=True)
    for y in range(0, 64, 16):
        np.testing.assert_array_equal(src.read(y, y + 16, 5, 40), a[y : y + 16, 5:40])
    assert segment_decode_count(reset=True) == 1
    assert len([p for p in os.listdir(tmp_path / "cache") if p.endswith(".zarr")]) == 1


def test_pyramid_levels(tmp_path):
    a = _img((256, 384, 3), seed=9)
    path = str(tmp_path / "pyr.ome.tif")
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(a, tile=(64, 64), subifds=2, photometric="rgb", compression="zlib")
        tw.write(a[::2, ::2], tile=(64, 64), subfiletype=1, photometric="rgb", compression="zlib")
        tw.write(a[::4, ::4], tile=(64, 64), subfiletype=1, photometric="rgb", compression="zlib")
    assert TiffSource(path).shape == (256, 384)
    lvl2 = open_source(path, level=2)
    assert lvl2.shape == (64, 96)
    np.testing.assert_array_equal(lvl2.read(0, 64, 0, 96), a[::4, ::4])
    with pytest.raises(UnsupportedSourceError, match="level 3") as info:
        TiffSource(path, level=3)
    assert "pyr.ome.tif" in str(info.value)


def test_ome_channels_stored_as_pages(tmp_path):
    a = _img((3, 100, 120), np.uint16, seed=10)
    path = str(tmp_path / "ch.ome.tif")
    tifffile.imwrite(path, a, ome=True, metadata={"axes": "CYX"}, photometric="minisblack", tile=(32, 32))
    src = TiffSource(path)
    assert src.channels == 3 and src.layout == "CYX"
    np.testing.assert_array_equal(src.read(10, 90, 20, 110), np.moveaxis(a, 0, -1)[10:90, 20:110])


def test_float32_nan_names_file_and_region(tmp_path):
    a = _img((64, 64, 3), np.float32, seed=11)
    a[40, 41, 2] = np.nan
    path = str(tmp_path / "nan.tif")
    tifffile.imwrite(path, a, photometric="rgb", tile=(32, 32))
    src = TiffSource(path)
    np.testing.assert_array_equal(src.read(0, 32, 0, 64), a[:32])  # the NaN is elsewhere
    with pytest.raises(CorruptSourceError) as info:
        src.read(32, 64, 32, 64)
    msg = str(info.value)
    assert "nan.tif" in msg and "rows 32:64, cols 32:64" in msg and "nan_to_num" in msg
    allowed = TiffSource(path, allow_nonfinite=True).read(32, 64, 32, 64)
    assert np.isnan(allowed).sum() == 1


def test_metadata_icc_resolution_exif_xmp(tmp_path):
    from PIL import Image

    icc = _srgb_icc()
    ex = Image.Exif()
    ex[271], ex[272], ex[274] = "Hasselblad", "X2D", 8
    ex.get_ifd(0x8769)[33434] = (1, 250)
    ex.get_ifd(0x8769)[40962] = 120
    ex.get_ifd(0x8769)[40963] = 80
    path = str(tmp_path / "meta.tif")
    Image.fromarray(_img((80, 120, 3), np.uint8)).save(
        path, exif=ex.tobytes(), icc_profile=icc, dpi=(300, 300)
    )
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="8" exif:PixelXDimension="120"/></x:xmpmeta>'
    path2 = str(tmp_path / "meta2.tif")
    tifffile.imwrite(
        path2,
        tifffile.imread(path),
        photometric="rgb",
        iccprofile=icc,
        resolution=(300, 300),
        resolutionunit="INCH",
        extratags=[
            (700, "B", len(xmp), xmp, True),
            (271, "s", 0, "Hasselblad", True),
            (274, "H", 1, 8, True),
        ],
    )
    m = TiffSource(path).metadata
    assert m.icc_profile == icc
    assert m.resolution == (300.0, 300.0, "inch")
    ifd0 = parse_exif(m.exif)
    assert ifd0[271][2].rstrip(b"\x00") == b"Hasselblad" and exif_orientation(m.exif) == 8
    assert struct.unpack("<I", ifd0[34665][40962][2].ljust(4, b"\x00"))[0] == 120
    assert not m.orientation_applied  # TIFF: pixels as stored, the tag is carried
    m2 = TiffSource(path2).metadata
    assert m2.xmp == xmp and m2.icc_profile == icc and exif_orientation(m2.exif) == 8


def test_pixel_limit_admits_originals_and_refuses_bombs(tmp_path, monkeypatch):
    def claim(name, side_y, side_x):
        path = str(tmp_path / name)
        tifffile.imwrite(
            path, _img((16, 16, 3), np.uint8), photometric="rgb", rowsperstrip=16, compression="zlib"
        )
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            offs = {code: tags[code].valueoffset for code in (256, 257, 278)}
        with open(path, "r+b") as f:
            for code, value in ((256, side_x), (257, side_y), (278, side_y)):
                f.seek(offs[code])
                f.write(struct.pack("<I", value))
        return path

    assert DEFAULT_MAX_PIXELS >= 1_000_000_000
    original = TiffSource(claim("original_300mp.tif", 15_000, 20_000))  # 300 MP, header only
    assert original.shape == (15_000, 20_000)
    bomb = claim("bomb.tif", 100_000, 100_000)
    tracemalloc.start()
    with pytest.raises(ImageTooLargeError) as info:
        open_source(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20  # refused from the header, nothing the size of the image allocated
    assert "bomb.tif" in str(info.value) and "max_pixels" in str(info.value)
    with pytest.raises(ImageTooLargeError):
        TiffSource(claim("small_limit.tif", 1000, 1000), max_pixels=999_999)
    monkeypatch.setenv("TILEGRAPH_MAX_PIXELS", "1e6")
    with pytest.raises(ImageTooLargeError, match="original_300mp.tif"):
        TiffSource(str(tmp_path / "original_300mp.tif"))
    assert TiffSource(bomb, max_pixels=10**11).shape == (100_000, 100_000)


# ---------------------------------------------------------------------------------------------- EXIF codec


def test_exif_codec_big_endian_roundtrip_and_patch():
    from PIL import Image

    ex = Image.Exif()
    ex[271], ex[274] = "Leica", 6
    ex.get_ifd(0x8769)[40962] = 4000
    ex.get_ifd(0x8769)[40963] = 3000
    ex.get_ifd(0x8769)[37510] = b"ASCII\x00\x00\x00user comment"
    blob = ex.tobytes()
    assert blob[6:8] == b"MM"  # Pillow writes big-endian: exercises the byte swapping
    ifd0 = parse_exif(blob)
    rebuilt = build_exif(ifd0)
    assert parse_exif(rebuilt) == ifd0 and exif_orientation(rebuilt) == 6
    patched = patch_exif(blob, orientation=1, width=70000, height=5000)
    assert len(patched) == len(blob) and patched.startswith(b"Exif\x00\x00")
    back = Image.Exif()
    back.load(patched)
    assert back[274] == 1 and back[271] == "Leica"
    sub = back.get_ifd(0x8769)
    assert sub[40962] == 70000 and sub[40963] == 5000 and sub[37510].endswith(b"user comment")


def test_xmp_patch_attribute_and_element_forms():
    xmp = (
        b'<rdf:Description tiff:Orientation="6" exif:PixelXDimension="4000">'
        b"<exif:PixelYDimension>3000</exif:PixelYDimension><dc:title>6 of 4000</dc:title></rdf:Description>"
    )
    out = patch_xmp(xmp, orientation=1, width=8000, height=6000)
    assert b'tiff:Orientation="1"' in out and b'exif:PixelXDimension="8000"' in out
    assert b"<exif:PixelYDimension>6000</exif:PixelYDimension>" in out and b"6 of 4000" in out


# ---------------------------------------------------------------------------------------------- writing


def _zarr(tmp_path, a, chunks=(64, 64), name="out.zarr"):
    z = zarr.create_array(
        store=str(tmp_path / name), shape=a.shape, chunks=chunks + a.shape[2:], dtype=a.dtype, overwrite=True
    )
    z[...] = a
    return str(tmp_path / name)


@pytest.mark.parametrize("compression", [None, "lzw", "zlib", "deflate", "zstd"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_export_tiff_exact_and_tiled(tmp_path, compression, dtype):
    a = _img((200, 150, 3), dtype, seed=12)
    out = export(
        _zarr(tmp_path, a), str(tmp_path / "o.tif"), compression=compression, tile=(64, 32), provenance={}
    )
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (64, 32)
        assert not tif.is_bigtiff
        expected = {None: 1, "lzw": 5, "zlib": 8, "deflate": 8, "zstd": 50000}[compression]
        assert int(page.compression) == expected
        back = page.asarray()
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_export_gray_alpha_rgba(tmp_path, channels):
    a = _img((70, 90, channels) if channels > 1 else (70, 90), np.uint16, seed=channels)
    out = export(_zarr(tmp_path, a), str(tmp_path / "o.tif"), tile=(32, 32))
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        if channels in (2, 4):
            assert [int(v) for v in page.extrasamples] == [2]  # unassociated alpha
        np.testing.assert_array_equal(page.asarray(), a)


def test_export_bigtiff_btf_and_auto(tmp_path, monkeypatch):
    a = _img((64, 64, 3), np.uint8)
    z = _zarr(tmp_path, a)
    with tifffile.TiffFile(export(z, str(tmp_path / "o.btf"), tile=(32, 32))) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
    with tifffile.TiffFile(export(z, str(tmp_path / "forced.tif"), bigtiff=True)) as tif:
        assert tif.is_bigtiff
    monkeypatch.setattr(tiff_sink, "_BIGTIFF_AT", 1000)  # pretend the output is > 3.9 GB
    with tifffile.TiffFile(export(z, str(tmp_path / "auto.tif"))) as tif:
        assert tif.is_bigtiff
        np.testing.assert_array_equal(tif.asarray(), a)


class _Recorder:
    """An array that records the row ranges read from it (and can fail on a given read)."""

    def __init__(self, a, chunks, fail_at=None):
        self.a, self.shape, self.dtype, self.chunks = a, a.shape, a.dtype, chunks
        self.reads, self.fail_at = [], fail_at

    def __getitem__(self, idx):
        rows = idx if isinstance(idx, slice) else idx[0]
        if self.fail_at is not None and len(self.reads) == self.fail_at:
            raise TileStoreError("window (3, 0) missing", window=(3, 0))
        self.reads.append((rows.start, rows.stop))
        return self.a[idx]


def test_export_streams_band_by_band(tmp_path):
    a = _img((500, 300, 3), np.uint16, seed=13)
    rec = _Recorder(a, chunks=(96, 96, 3))
    export(rec, str(tmp_path / "o.tif"), tile=(32, 64))
    heights = [b - a_ for a_, b in rec.reads]
    assert max(heights) <= 96 and len(rec.reads) == -(-500 // 96)  # lcm(32, 96): each chunk row read once
    np.testing.assert_array_equal(tifffile.imread(str(tmp_path / "o.tif")), a)


def test_export_failure_leaves_nothing(tmp_path):
    rec = _Recorder(_img((500, 300, 3), np.uint8), chunks=(64, 64, 3), fail_at=3)
    with pytest.raises(TileStoreError):
        export(rec, str(tmp_path / "o.tif"), tile=(64, 64))
    assert os.listdir(tmp_path) == []


def test_export_disk_full_is_a_sink_error(tmp_path):
    """A file-size limit (EFBIG) stands in for a full disk or a quota: SinkError, nothing left behind."""
    z = _zarr(tmp_path, _img((400, 400, 3), np.uint16, seed=14))
    os.mkdir(tmp_path / "dest")
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
from tilegraph.sink.tiff_sink import export
from tilegraph.errors import SinkError
try:
    export({z!r}, {str(tmp_path / "dest" / "full.tif")!r})
except SinkError as exc:
    print("SinkError:", exc)
    sys.exit(0)
sys.exit(3)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "full.tif" in out.stdout and "no space" in out.stdout
    assert os.listdir(tmp_path / "dest") == []


def test_export_refusals_name_the_destination(tmp_path):
    src_path = str(tmp_path / "src.tif")
    a = _img((64, 64, 3), np.uint8)
    tifffile.imwrite(src_path, a, photometric="rgb")
    meta = TiffSource(src_path).metadata
    z = _zarr(tmp_path, a)
    cases = [
        (src_path, dict(metadata=meta), "is the source"),
        (str(tmp_path / "missing" / "o.tif"), {}, "does not exist"),
        (str(tmp_path / "o.webp"), {}, "suffix"),
        (str(tmp_path / "o.tif"), dict(tile=(100, 100)), "multiple of 16"),
        (str(tmp_path / "o.tif"), dict(compression="lzma2"), "compression"),
        (str(tmp_path / "o.tif"), dict(bigtiff=False), None),
    ]
    for dest, kw, text in cases:
        if text is None:
            continue
        with pytest.raises(DestinationError) as info:
            export(z, dest, **kw)
        assert os.path.basename(dest) in str(info.value) and text in str(info.value)
    assert tifffile.imread(src_path).tobytes() == a.tobytes()  # the source is untouched
    with pytest.raises(DestinationError, match="classic TIFF"):
        validate_export(str(tmp_path / "huge.tif"), shape=(60_000, 60_000, 3), dtype="uint16", bigtiff=False)
    validate_export(str(tmp_path / "huge.tif"), shape=(60_000, 60_000, 3), dtype="uint16")  # auto BigTIFF
    with pytest.raises(SinkError, match="nothing.zarr"):
        export(str(tmp_path / "nothing.zarr"), str(tmp_path / "o.tif"))


@pytest.mark.parametrize("suffix", [".tif", ".btf"])
def test_export_metadata_icc_exif_xmp_resolution_provenance(tmp_path, suffix):
    from PIL import Image

    icc = _srgb_icc()
    ex = Image.Exif()
    ex[271], ex[274], ex[33432] = "Phase One", 6, "(c) A. Photographer"
    ex.get_ifd(0x8769)[40962] = 60
    ex.get_ifd(0x8769)[40963] = 40
    ex.get_ifd(0x8769)[33434] = (1, 60)
    ex.get_ifd(0x8825)[1] = "N"  # GPS
    xmp = b'<rdf:Description tiff:Orientation="6" exif:PixelXDimension="60" exif:PixelYDimension="40"/>'
    meta = SourceMetadata(
        icc_profile=icc,
        resolution=(240.0, 240.0, "inch"),
        exif=ex.tobytes(),
        xmp=xmp,
        orientation_applied=True,
        extra={"shape": [60, 40], "path": str(tmp_path / "source.jpg")},
    )
    a = _img((120, 80, 3), np.uint16, seed=15)  # a x2 output of the (upright) 60 x 40 source
    prov = {
        "model": {"name": "LocalConv", "weights_sha256": "ab" * 32},
        "plan": {"tile": 512, "blend": "crop"},
    }
    out = export(
        _zarr(tmp_path, a), str(tmp_path / f"o{suffix}"), metadata=meta, provenance=prov, compression="zstd"
    )
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff == (suffix == ".btf")
        tags = tif.pages[0].tags
        assert tags["InterColorProfile"].value == icc
        assert tags["Orientation"].value == 1
        assert tags["XResolution"].value == (480, 1) and int(tags["ResolutionUnit"].value) == 2
        assert tags["Make"].value == "Phase One" and tags["Copyright"].value == "(c) A. Photographer"
        exif = tags["ExifTag"].value
        assert exif["PixelXDimension"] == 80 and exif["PixelYDimension"] == 120
        assert exif["ExposureTime"] == (1, 60)
        assert tags["GPSTag"].value["GPSLatitudeRef"] == "N"
        assert b'tiff:Orientation="1"' in tags["XMP"].value and b'PixelXDimension="80"' in tags["XMP"].value
        assert tags["Software"].value.startswith("tilegraph")
        stored = json.loads(tags[PROVENANCE_TAG].value)
        np.testing.assert_array_equal(tif.asarray(), a)
    assert stored["model"] == prov["model"] and stored["plan"] == prov["plan"]
    assert read_provenance(out)["tilegraph_version"]
    from PIL import Image as _Image

    with _Image.open(out) as im:  # another reader agrees on ICC and EXIF
        assert im.info["icc_profile"] == icc
        assert im.getexif().get_ifd(0x8769)[40962] == 80


def test_metadata_attrs_roundtrip_and_zarr_source(tmp_path):
    meta = SourceMetadata(
        icc_profile=_srgb_icc(),
        resolution=(300.0, 300.0, "inch"),
        exif=b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        xmp=b"<x/>",
        orientation_applied=True,
        extra={"format": "jpeg", "shape": [10, 20]},
    )
    attrs = metadata_to_attrs(meta)
    json.dumps(attrs)
    assert attrs_to_metadata(json.loads(json.dumps(attrs))) == meta
    z = zarr.create_array(store=str(tmp_path / "m.zarr"), shape=(8, 8, 3), chunks=(8, 8, 3), dtype="uint8")
    z.attrs.update(attrs)
    assert open_source(str(tmp_path / "m.zarr")).metadata.icc_profile == meta.icc_profile


def test_run_records_full_provenance_in_the_tiff_tag(tmp_path):
    from tilegraph.testing.models import numpy_identity

    src = str(tmp_path / "in.tif")
    tifffile.imwrite(src, _img((96, 128, 3), np.uint16, seed=16), photometric="rgb", tile=(32, 32))
    out = str(tmp_path / "out.tif")
    tilegraph.run(src, out, model=numpy_identity, tile=64, overlap=8, blend="crop", client="inprocess")
    prov = read_provenance(out)
    assert prov["tilegraph_version"] == tilegraph.__version__
    assert "timings" in prov
    assert prov["model"]["name"] == "numpy_identity" and "weights_sha256" in prov["model"]
    assert prov["plan"]["blend"] == "crop" and prov["plan"]["overlap"] == [8, 8]


def test_qa_uses_the_embedded_icc_profile(tmp_path):
    """Colour metrics follow the source's ICC profile (recorded at run time), not an assumed sRGB."""
    from PIL import ImageCms

    from tilegraph.testing.models import numpy_identity

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = str(tmp_path / "icc.tif")
    tifffile.imwrite(
        src,
        _img((96, 128, 3), np.uint16, seed=21),
        photometric="rgb",
        tile=(32, 32),
        extratags=[(34675, 7, len(icc), icc, True)],
    )
    res = tilegraph.run(
        src, str(tmp_path / "o.zarr"), model=numpy_identity, tile=64, overlap=16, client="inprocess", qa=True
    )
    space = res.report["metrics"]["units"]["colour_space"]
    assert space != "sRGB (assumed)" and "not supported" not in space, space
    assert "colour space" in res.report["summary_html"]
