"""Every blend mode returns the input unchanged for an identity model; every window lands in place."""

from __future__ import annotations

import numpy as np
import pytest

import tilegraph
from tilegraph.testing import coordinate_image, decode_coordinates, numpy_identity

MODES = ["crop", "linear", "cosine", "gaussian"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_identity_round_trip_exact(tmp_path, mode, dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    image = rng.integers(0, info.max, size=(211, 317, 3), endpoint=True).astype(dtype)
    image[0, 0] = info.max  # extremes survive
    image[1, 1] = 0
    res = tilegraph.run(
        image,
        tmp_path / "o.zarr",
        model=numpy_identity,
        tile=64,
        overlap=24,
        blend=mode,
        client="inprocess",
        out_chunks=50,
    )
    out = np.asarray(res.output[:])
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, image)
    assert res.clipped == 0


@pytest.mark.parametrize("mode", MODES)
def test_coordinate_image_lands_in_place(tmp_path, mode):
    image = coordinate_image((300, 520), "uint16")
    res = tilegraph.run(
        image,
        tmp_path / "c.zarr",
        model=numpy_identity,
        tile=96,
        overlap=32,
        blend=mode,
        client="inprocess",
        out_chunks=128,
    )
    out = np.asarray(res.output[:])
    rows, cols = decode_coordinates(out)
    yy, xx = np.mgrid[0:300, 0:520]
    np.testing.assert_array_equal(rows, yy)
    np.testing.assert_array_equal(cols, xx)


@pytest.mark.parametrize("layout", ["YX", "CYX"])
def test_layouts_round_trip(tmp_path, layout):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, size=(2, 90, 130) if layout == "CYX" else (90, 130), dtype=np.uint8)
    res = tilegraph.run(
        image,
        tmp_path / "l.zarr",
        model=numpy_identity,
        tile=32,
        overlap=8,
        client="inprocess",
        out_chunks=40,
    )
    out = np.asarray(res.output[:])
    assert out.shape == image.shape
    np.testing.assert_array_equal(out, image)
    assert res.output.attrs["tilegraph"]["layout"] == layout


def test_float16_source(tmp_path):
    image = np.random.default_rng(4).random((60, 70, 3)).astype(np.float16)
    res = tilegraph.run(
        image, tmp_path / "f.zarr", model=numpy_identity, tile=32, overlap=8, client="inprocess"
    )
    out = np.asarray(res.output[:])
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, image)


def test_clipping_counted_and_recorded(tmp_path):
    image = np.full((40, 40, 3), 200, np.uint8)

    def brighten(batch):
        return batch * 1.5

    res = tilegraph.run(image, tmp_path / "b.zarr", model=brighten, tile=32, overlap=8, client="inprocess")
    assert res.clipped == 40 * 40 * 3
    assert res.output.attrs["tilegraph"]["clipped"] == 40 * 40 * 3
    assert np.asarray(res.output[:]).max() == 255


def test_sharded_output_written_once_per_shard(tmp_path):
    image = np.random.default_rng(5).integers(0, 255, (150, 230, 3), dtype=np.uint8)
    res = tilegraph.run(
        image,
        tmp_path / "s.zarr",
        model=numpy_identity,
        tile=64,
        overlap=16,
        client="inprocess",
        out_chunks=32,
        out_shards=96,
    )
    assert res.output.chunks == (32, 32, 3)
    assert res.output.shards == (96, 96, 3)
    assert res.plan.out_chunks == (96, 96)  # the write unit is the shard
    np.testing.assert_array_equal(np.asarray(res.output[:]), image)
