"""Sources: Zarr v2/v3, OME-Zarr, fsspec URLs and in-process numpy/dask/zarr arrays."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import tilegraph
from tilegraph.errors import (
    CorruptSourceError,
    DestinationError,
    PlanError,
    SourceNotFoundError,
    UnsupportedSourceError,
)
from tilegraph.source import open_source, read_padded
from tilegraph.source.zarr_source import ZarrSource
from tilegraph.testing import numpy_identity


def _img(shape=(70, 90, 3), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16", "float32"])
def test_zarr_versions_and_dtypes(tmp_path, fmt, dtype):
    img = _img(dtype=dtype)
    path = str(tmp_path / "in.zarr")
    z = zarr.create_array(store=path, shape=img.shape, chunks=(32, 32, 3), dtype=dtype, zarr_format=fmt)
    z[:] = img
    src = open_source(path)
    assert isinstance(src, ZarrSource)
    assert (src.shape, src.channels, src.dtype, src.layout) == ((70, 90), 3, np.dtype(dtype), "YXC")
    res = tilegraph.run(
        path, tmp_path / "out.zarr", model=numpy_identity, tile=32, overlap=8, client="inprocess"
    )
    out = np.asarray(res.output[:])
    assert out.dtype == img.dtype
    if img.dtype.kind == "f":  # float blending of equal values is exact to float32 rounding
        np.testing.assert_allclose(out, img, atol=4e-7, rtol=0)
    else:
        np.testing.assert_array_equal(out, img)


def test_ome_zarr_level0_cyx(tmp_path):
    img = _img((3, 64, 80), np.uint16)
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    root.create_array("0", shape=img.shape, chunks=(3, 32, 32), dtype="uint16")[:] = img
    root.create_array("1", shape=(3, 32, 40), chunks=(3, 32, 32), dtype="uint16")[:] = img[:, ::2, ::2]
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}],
                "datasets": [{"path": "0"}, {"path": "1"}],
            }
        ],
    }
    src = open_source(str(tmp_path / "img.ome.zarr"))
    assert (src.shape, src.channels, src.layout) == ((64, 80), 3, "CYX")
    np.testing.assert_array_equal(src.read(0, 64, 0, 80), np.moveaxis(img, 0, -1))
    lvl1 = open_source(str(tmp_path / "img.ome.zarr"), level=1)
    assert lvl1.shape == (32, 40)


def test_ome_zarr_v04_tczyx_singletons(tmp_path):
    img = _img((1, 1, 1, 40, 50), np.uint8)
    root = zarr.open_group(str(tmp_path / "v04.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=img.shape, chunks=(1, 1, 1, 40, 50), dtype="uint8")[:] = img
    root.attrs["multiscales"] = [{"axes": [{"name": n} for n in "tczyx"], "datasets": [{"path": "0"}]}]
    src = open_source(str(tmp_path / "v04.zarr"))
    assert (src.shape, src.channels, src.layout) == ((40, 50), 1, "CYX")
    np.testing.assert_array_equal(src.read(0, 40, 0, 50)[..., 0], img[0, 0, 0])


def test_fsspec_memory_url_source_and_destination(tmp_path):
    img = _img()
    z = zarr.create_array(
        store="memory://tg-test/in.zarr", shape=img.shape, chunks=(32, 32, 3), dtype="uint8"
    )
    z[:] = img
    res = tilegraph.run(
        "memory://tg-test/in.zarr",
        "memory://tg-test/out.zarr",
        model=numpy_identity,
        tile=32,
        overlap=8,
        client="inprocess",
        scratch="memory://tg-test/scratch",
    )
    np.testing.assert_array_equal(np.asarray(zarr.open_array("memory://tg-test/out.zarr", mode="r")[:]), img)
    assert res.path == "memory://tg-test/out.zarr"


def test_file_url(tmp_path):
    img = _img()
    zarr.create_array(store=str(tmp_path / "in.zarr"), shape=img.shape, chunks=(32, 32, 3), dtype="uint8")[
        :
    ] = img
    res = tilegraph.run(
        f"file://{tmp_path}/in.zarr",
        f"file://{tmp_path}/o.zarr",
        model=numpy_identity,
        tile=32,
        overlap=8,
        client="inprocess",
    )
    np.testing.assert_array_equal(np.asarray(res.output[:]), img)


def test_in_process_arrays(tmp_path):
    da = pytest.importorskip("dask.array")
    img = _img((50, 60, 3))
    for i, obj in enumerate([img, da.from_array(img, chunks=(20, 20, 3))]):
        res = tilegraph.run(
            obj, tmp_path / f"o{i}.zarr", model=numpy_identity, tile=32, overlap=8, client="inprocess"
        )
        np.testing.assert_array_equal(np.asarray(res.output[:]), img)
    z = zarr.create_array(store=str(tmp_path / "z.zarr"), shape=img.shape, chunks=(25, 25, 3), dtype="uint8")
    z[:] = img
    res = tilegraph.run(z, tmp_path / "oz.zarr", model=numpy_identity, tile=32, overlap=8, client="inprocess")
    np.testing.assert_array_equal(np.asarray(res.output[:]), img)


def test_input_is_never_modified(tmp_path):
    img = _img()
    before = img.copy()
    tilegraph.run(img, tmp_path / "o.zarr", model=lambda b: b * 0.5, tile=32, overlap=8, client="inprocess")
    np.testing.assert_array_equal(img, before)


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge", "constant"])
def test_padding_matches_numpy(mode):
    img = _img((13, 17, 2))
    src = open_source(img)
    got = read_padded(src, 5, 40, 3, 50, mode)
    ref = np.pad(img, ((0, 27), (0, 33), (0, 0)), mode=mode)[5:40, 3:50]
    np.testing.assert_array_equal(got, ref)


def test_missing_and_bad_sources(tmp_path):
    with pytest.raises(SourceNotFoundError, match="nope.zarr"):
        open_source(str(tmp_path / "nope.zarr"))
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(CorruptSourceError, match="bad.zarr"):
        open_source(str(tmp_path / "bad.zarr"))
    with pytest.raises(UnsupportedSourceError, match="int64"):
        open_source(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(UnsupportedSourceError, match="zero size"):
        open_source(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(UnsupportedSourceError, match="channel axis"):
        open_source(np.zeros((10, 10, 10), np.uint8))


def test_tile_not_larger_than_overlap(tmp_path):
    with pytest.raises(PlanError, match="larger than overlap"):
        tilegraph.run(
            _img(), tmp_path / "o.zarr", model=numpy_identity, tile=32, overlap=32, client="inprocess"
        )
    assert not (tmp_path / "o.zarr").exists()


def test_destination_rules(tmp_path):
    img = _img()
    path = str(tmp_path / "in.zarr")
    zarr.create_array(store=path, shape=img.shape, chunks=(32, 32, 3), dtype="uint8")[:] = img
    with pytest.raises(DestinationError, match="source itself"):
        tilegraph.run(
            path, path, model=numpy_identity, tile=32, overlap=8, client="inprocess", overwrite=True
        )
    np.testing.assert_array_equal(zarr.open_array(path)[:], img)  # untouched
    tilegraph.run(path, tmp_path / "o.zarr", model=numpy_identity, tile=32, overlap=8, client="inprocess")
    with pytest.raises(DestinationError, match="exists"):
        tilegraph.run(path, tmp_path / "o.zarr", model=numpy_identity, tile=32, overlap=8, client="inprocess")
    res = tilegraph.run(
        path,
        tmp_path / "o.zarr",
        model=lambda b: 1 - b,
        tile=32,
        overlap=8,
        client="inprocess",
        overwrite=True,
    )
    np.testing.assert_array_equal(np.asarray(res.output[:]), 255 - img)
