"""A blend task never reads a window that was not written: a missing window is an error, never zeros."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tilegraph.cluster.local import connect
from tilegraph.engine.job import Job
from tilegraph.errors import MissingWindowError, TilegraphError
from tilegraph.infer.spec import describe_model
from tilegraph.source import open_source
from tilegraph.source.zarr_source import ZarrSource
from tilegraph.testing import numpy_identity


def _job(tmp_path, image, **kw):
    opts = dict(tile=32, overlap=8, blend="cosine", batch_size=2, out_chunks=40, output_dtype=None,
                overwrite=False, pad_mode="reflect", scratch=str(tmp_path / "scratch"), progress=False)
    opts.update(kw)
    return Job(open_source(image), str(tmp_path / "out.zarr"), spec=describe_model(numpy_identity),
               model_obj=numpy_identity, executor=connect("inprocess"), **opts)


def test_deleted_window_fails_naming_it(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    job = _job(tmp_path, image)
    plan = job.prepare()
    job.infer()
    victim = plan.window(4)  # row 1, col 1 of a 4 x 4 grid
    chunk_dir = os.path.join(job.tile_store, "c", "4")
    assert os.path.isdir(chunk_dir)
    shutil.rmtree(chunk_dir)
    with pytest.raises(MissingWindowError) as info:
        job.blend()
        job.finish()
    assert info.value.window == (victim.row, victim.col)
    assert f"window ({victim.row}, {victim.col})" in str(info.value)
    # the output never looks complete
    with pytest.raises(TilegraphError, match="did not finish"):
        ZarrSource(str(tmp_path / "out.zarr"))


def test_tile_store_removed_after_success(tmp_path):
    image = np.zeros((50, 50, 3), np.uint8)
    job = _job(tmp_path, image)
    job.prepare()
    job.infer()
    job.blend()
    res = job.finish()
    assert not os.path.exists(job.tile_store)
    assert res.output.attrs["tilegraph"]["complete"] is True


def test_results_independent_of_order(tmp_path):
    """Fixed summation order: batching differently gives bit-identical output."""
    image = np.random.default_rng(1).random((90, 120, 3)).astype(np.float32)
    outs = []
    for i, bs in enumerate((1, 3, 7)):
        job = _job(tmp_path / str(i), image, batch_size=bs, blend="gaussian")
        job.prepare()
        job.infer()
        job.blend()
        outs.append(np.asarray(job.finish().output[:]))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_deleted_window_detected_in_integer_crop_store(tmp_path):
    """crop with an integer output keeps the store in the output dtype; a lost window is still caught."""
    image = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    job = _job(tmp_path, image, blend="crop")
    plan = job.prepare()
    assert plan.tile_store_dtype == "uint8"
    job.infer()
    shutil.rmtree(os.path.join(job.tile_store, "c", "5"))
    with pytest.raises(MissingWindowError) as info:
        job.blend()
    assert info.value.window == (plan.window(5).row, plan.window(5).col)
