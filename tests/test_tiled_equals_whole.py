"""Tiled ``crop`` equals whole-image inference wherever the receptive field fits in overlap/2."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tilegraph
from tilegraph.plan import make_plan
from tilegraph.testing.reference import whole_image_inference

torch = pytest.importorskip("torch")
from tilegraph.testing import models as tm  # noqa: E402

SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _tiled(tmp_path, image, model, *, tile, overlap, name, **kw):
    res = tilegraph.run(
        image,
        tmp_path / f"{name}.zarr",
        model=model,
        tile=tile,
        overlap=overlap,
        blend="crop",
        client="inprocess",
        output_dtype="float32",
        out_chunks=kw.pop("out_chunks", 96),
        overwrite=True,
        **kw,
    )
    return res, np.asarray(res.output[:])


def _check(res, got, image, model):
    ref = whole_image_inference(image, model, res.plan)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@SETTINGS
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    tile=st.sampled_from([32, 48, 64, 96]),
    layers=st.integers(1, 3),
    extra=st.integers(0, 8),
    seed=st.integers(0, 3),
)
def test_local_conv_any_shape(tmp_path, torch_threads, h, w, tile, layers, extra, seed):
    model = tm.LocalConv(channels=3, layers=layers, seed=seed)
    overlap = 2 * model.halo + 2 * (extra // 2)
    if overlap >= tile:
        overlap = 2 * model.halo
    image = np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)
    res, got = _tiled(tmp_path, image, model, tile=tile, overlap=overlap, name="conv")
    _check(res, got, image, model)


def test_strip_1_by_5000(tmp_path, torch_threads):
    model = tm.LocalConv(channels=3, layers=2)
    image = np.random.default_rng(1).random((1, 5000, 3), dtype=np.float32)
    res, got = _tiled(tmp_path, image, model, tile=256, overlap=8, name="strip", out_chunks=1024)
    assert res.plan.grid[0] == 1 and res.plan.grid[1] > 1
    _check(res, got, image, model)


def test_image_smaller_than_window(tmp_path, torch_threads):
    model = tm.LocalConv(channels=3, layers=2)
    image = np.random.default_rng(2).random((37, 53, 3), dtype=np.float32)
    res, got = _tiled(tmp_path, image, model, tile=512, overlap=64, name="small")
    assert res.plan.n_windows == 1
    _check(res, got, image, model)


@SETTINGS
@given(h=st.integers(20, 260), w=st.integers(20, 260), seed=st.integers(0, 2))
def test_stride16_unet(tmp_path, torch_threads, h, w, seed):
    model = tm.ReferenceUNet(channels=3, base=4, depth=4)
    assert model.stride == 16
    halo = model.halo  # exact support radius
    overlap = 16 * -(-2 * halo // 16)
    tile = overlap + 16 * (1 + seed)
    image = np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)
    res, got = _tiled(tmp_path, image, model, tile=tile, overlap=overlap, name="unet")
    assert res.plan.model_stride == 16
    _check(res, got, image, model)


@pytest.mark.parametrize("scale", [2, 4])
def test_upscalers(tmp_path, torch_threads, scale):
    model = tm.Upscaler(scale=scale, channels=3)
    image = np.random.default_rng(scale).random((70, 95, 3), dtype=np.float32)
    res, got = _tiled(tmp_path, image, model, tile=32, overlap=2 * model.halo + 2, name=f"up{scale}")
    assert got.shape == (70 * scale, 95 * scale, 3)
    _check(res, got, image, model)


def test_downscaler_1_8(tmp_path, torch_threads):
    model = tm.Downscaler(factor=8, channels=3, out_channels=4)
    image = np.random.default_rng(8).random((203, 149, 3), dtype=np.float32)
    # the cut falls on output pixels (8 source px): keep the output overlap even so it is centred
    overlap = 16 * -(-2 * model.halo // 16)
    res, got = _tiled(tmp_path, image, model, tile=overlap + 32, overlap=overlap, name="down", out_chunks=16)
    assert got.shape == (-(-203 // 8), -(-149 // 8), 4)
    _check(res, got, image, model)


def test_plan_matches_numpy_pad(torch_threads):
    """The reference pads exactly as the plan does (guards the definition itself)."""
    plan = make_plan((10, 13), tile=8, overlap=2, channels=1, dtype="float32")
    assert plan.padded_shape == (14, 14)
