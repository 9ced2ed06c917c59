"""A blend task never reads a window that was not written: a missing window is an error, never zeros."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tilegraph.errors import MissingWindowError, TilegraphError
from tilegraph.source.zarr_source import ZarrSource
from tilegraph.testing import Stages, numpy_identity


def _stages(tmp_path, image, **kw) -> Stages:
    opts = dict(
        tile=32,
        overlap=8,
        blend="cosine",
        batch_size=2,
        out_chunks=40,
        scratch=str(tmp_path / "scratch"),
        progress=False,
    )
    opts.update(kw)
    return Stages(image, str(tmp_path / "out.zarr"), model=numpy_identity, **opts)


def test_deleted_window_fails_naming_it(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    stages = _stages(tmp_path, image)
    plan = stages.prepare().plan
    stages.infer()
    victim = plan.window(4)  # row 1, col 1 of a 4 x 4 grid
    chunk = stages.run.context.tile_store.chunk_path(4)
    assert os.path.isfile(chunk)
    os.remove(chunk)
    with pytest.raises(MissingWindowError) as info:
        stages.assemble()
    assert info.value.window == (victim.row, victim.col)
    assert f"window ({victim.row}, {victim.col})" in str(info.value)
    # the output never looks complete: nothing is at the destination (it is staged under another name)
    assert not (tmp_path / "out.zarr").exists()
    with pytest.raises(TilegraphError, match="no such file"):
        ZarrSource(str(tmp_path / "out.zarr"))


def test_tile_store_removed_after_success(tmp_path):
    image = np.zeros((50, 50, 3), np.uint8)
    stages = _stages(tmp_path, image)
    res = stages.all()
    assert not os.path.exists(stages.run.context.tile_store.path)
    assert res.output.attrs["tilegraph"]["complete"] is True


def test_results_independent_of_order(tmp_path):
    """Fixed summation order: batching differently gives bit-identical output."""
    image = np.random.default_rng(1).random((90, 120, 3)).astype(np.float32)
    outs = []
    for i, bs in enumerate((1, 3, 7)):
        res = _stages(tmp_path / str(i), image, batch_size=bs, blend="gaussian").all()
        outs.append(np.asarray(res.output[:]))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_deleted_window_detected_in_integer_crop_store(tmp_path):
    """crop with an integer output keeps the store in the output dtype; a lost window is still caught."""
    image = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    stages = _stages(tmp_path, image, blend="crop")
    plan = stages.prepare().plan
    assert plan.tile_store_dtype == "uint8"
    stages.infer()
    os.remove(stages.run.context.tile_store.chunk_path(5))
    with pytest.raises(MissingWindowError) as info:
        stages.assemble()
    assert info.value.window == (plan.window(5).row, plan.window(5).col)


# --------------------------------------------------------------------------- the store itself


@pytest.mark.parametrize("dtype", ["float16", "float32", "uint8", "uint16"])
def test_direct_chunk_files_are_the_zarr_array(tmp_path, dtype):
    """Chunks written straight to files read back through zarr, and zarr-written chunks read directly."""
    import zarr

    from tilegraph.sink.tile_store import TileStore

    rng = np.random.default_rng(1)
    shape = (5, 3, 24, 40)
    tiles = TileStore.create(str(tmp_path / "t.zarr"), shape, dtype)
    assert tiles.direct
    data = (rng.random(shape[1:]) * 200).astype(np.float32)
    tiles.write(2, data)  # float32 in: cast to the store dtype like numpy would
    expected = data.astype(dtype)
    np.testing.assert_array_equal(zarr.open_array(tiles.path, mode="r")[2], expected)
    np.testing.assert_array_equal(tiles.read(2, slice(0, 24), slice(0, 40)), expected)
    np.testing.assert_array_equal(tiles.read(2, slice(5, 17), slice(3, 31)), expected[:, 5:17, 3:31])
    assert not [p for p in os.listdir(tiles.path) if p.endswith(".partial")]
    # the other way round: zarr writes, the direct path reads
    other = (rng.random(shape[1:]) * 200).astype(dtype)
    tiles.open()[4] = other
    np.testing.assert_array_equal(tiles.read(4, slice(1, 23), slice(0, 40)), other[:, 1:23])
    assert tiles.exists(2) and tiles.exists(4) and not tiles.exists(3)
    assert tiles.read(3, slice(0, 24), slice(0, 40)) is None


def test_store_behind_a_url_goes_through_zarr(tmp_path):
    from tilegraph.sink.tile_store import TileStore

    tiles = TileStore.create(f"memory://tiles-{os.getpid()}-{id(tmp_path)}", (3, 1, 8, 8), "float16")
    assert not tiles.direct
    data = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    tiles.write(1, data)
    np.testing.assert_array_equal(tiles.read(1, slice(2, 6), slice(0, 8)), data[:, 2:6].astype(np.float16))
    assert tiles.read(0, slice(0, 8), slice(0, 8)) is None  # the NaN fill: never written
    assert tiles.exists(1) and not tiles.exists(0)


def test_truncated_chunk_is_an_error_naming_the_file(tmp_path):
    from tilegraph.errors import TileStoreError
    from tilegraph.sink.tile_store import TileStore

    tiles = TileStore.create(str(tmp_path / "t.zarr"), (2, 2, 16, 16), "float32")
    tiles.write(0, np.ones((2, 16, 16), np.float32))
    with open(tiles.chunk_path(0), "r+b") as fh:
        fh.truncate(16 * 16 * 4 + 100)  # the second channel is cut short
    with pytest.raises(TileStoreError, match="truncated") as info:
        tiles.read(0, slice(0, 16), slice(0, 16))
    assert info.value.path == tiles.chunk_path(0)
    with pytest.raises(TileStoreError, match="shape"):
        tiles.write(1, np.ones((2, 16, 15), np.float32))
