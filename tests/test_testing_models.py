"""The shipped test kit: models honour the contract, images encode what they claim, the reference pads."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from tilegraph.plan import make_plan
from tilegraph.testing import models as M
from tilegraph.testing.images import coordinate_image, decode_coordinates, gradient_photo
from tilegraph.testing.reference import whole_image_inference


def _batch(n=2, c=3, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32))


# ----------------------------------------------------------------------------- contract of each model

# (model, expected output shape for a (2, 3, 32, 32) input, declared attributes)
CASES = [
    (lambda: M.Identity(), (2, 3, 32, 32), {"scale": 1, "stride": 1, "halo": 0}),
    (lambda: M.Identity(channels=3), (2, 3, 32, 32), {"in_channels": 3, "out_channels": 3}),
    (lambda: M.LocalConv(layers=3, dilation=2), (2, 3, 32, 32), {"stride": 1, "halo": 6, "in_channels": 3}),
    (lambda: M.ReferenceUNet(base=4), (2, 3, 32, 32), {"stride": 16, "halo": 107, "out_channels": 3}),
    (lambda: M.ReferenceUNet(base=4, depth=2, residual=True), (2, 3, 32, 32), {"stride": 4, "halo": 23}),
    (lambda: M.Upscaler(scale=2), (2, 3, 64, 64), {"scale": 2, "stride": 1, "halo": 2}),
    (lambda: M.Upscaler(scale=4), (2, 3, 128, 128), {"scale": 4, "halo": 2}),
    (lambda: M.Downscaler(), (2, 4, 4, 4), {"scale": "1/8", "stride": 8, "halo": 9, "out_channels": 4}),
    (lambda: M.DriftModel(), (2, 3, 32, 32), {"stride": 1, "halo": 1}),
    (lambda: M.InstanceNormModel(), (2, 3, 32, 32), {"stride": 1, "halo": 2}),
    (lambda: M.GenerativeModel(), (2, 3, 32, 32), {"stride": 1, "halo": 1}),
    (lambda: M.SleepModel(0.0), (2, 3, 32, 32), {"halo": 0}),
    (lambda: M.OOMModel(), (2, 3, 32, 32), {"halo": 0}),
]


@pytest.mark.parametrize("factory, shape, attrs", CASES)
def test_model_contract(factory, shape, attrs):
    model = factory()
    assert isinstance(model, torch.nn.Module) and not model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    for key, value in attrs.items():
        assert getattr(model, key) == value, key
    x = _batch()
    out = model(x)
    assert out.shape == shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # float64 works too (the receptive-field probe relies on it)
    assert model.double()(x.double()).dtype == torch.float64


def test_weights_are_seeded_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = M.LocalConv(seed=0), M.LocalConv(seed=0), M.LocalConv(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.convs[0].weight, c.convs[0].weight)
    u1, u2 = M.ReferenceUNet(base=4, depth=2), M.ReferenceUNet(base=4, depth=2)
    assert torch.equal(u1.out.weight, u2.out.weight)


def test_reference_unet_is_the_anchor_architecture():
    with torch.device("meta"):
        model = M.ReferenceUNet()  # base=32, depth=4 as in shared/anchors/gpu_anchor.py
    assert sum(p.numel() for p in model.parameters()) == 7_760_163
    keys = model.state_dict().keys()
    assert {"down.0.0.weight", "down.4.2.weight", "up.0.weight", "dec.3.2.bias", "out.weight"} <= set(keys)
    assert len(keys) == 46
    assert model.stride == 16 and model.halo == M.unet_radius(4) == 107


def test_near_input_models_stay_near_the_input():
    img = gradient_photo((48, 48), "float32")
    x = torch.from_numpy(img.transpose(2, 0, 1)[None].copy())
    for model in (
        M.LocalConv(layers=3),
        M.ReferenceUNet(base=4, depth=2, residual=True),
        M.InstanceNormModel(),
    ):
        out = model(x)
        inner = (out - x)[..., 4:-4, 4:-4]
        assert inner.abs().mean() < 0.05, type(model).__name__
    up = M.Upscaler(scale=2)(x)
    nearest = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert (up - nearest)[..., 8:-8, 8:-8].abs().mean() < 0.05
    down = M.Downscaler()(x)
    pooled = torch.nn.functional.avg_pool2d(x, 8)
    assert (down[:, :3] - pooled)[..., 1:-1, 1:-1].abs().max() < 0.1


def test_local_conv_keeps_8_bit_outputs_mostly_unclipped():
    img = gradient_photo((40, 40), "float32")
    out = M.LocalConv(layers=2)(torch.from_numpy(img.transpose(2, 0, 1)[None].copy()))
    assert ((out >= 0) & (out <= 1)).float().mean() > 0.99


# ----------------------------------------------------------------------------- content-seeded randomness


@pytest.mark.parametrize("cls", [M.DriftModel, M.GenerativeModel])
def test_content_seeded_models_ignore_batch_order(cls):
    model = cls()
    x = _batch(n=3)
    out = model(x)
    perm = [2, 0, 1]
    assert torch.equal(model(x[perm]), out[perm])
    # another instance, batch of one: same randomness; the convolution itself may round differently
    # for another batch size (oneDNN picks its kernel by shape), hence the tolerance
    torch.testing.assert_close(cls()(x[1:2]), out[1:2], rtol=0, atol=1e-6)
    assert torch.equal(pickle.loads(pickle.dumps(model))(x), out)  # as shipped to a worker
    assert not torch.equal(cls(seed=1)(x), out)


def test_drift_model_applies_bounded_per_window_gain_and_offset():
    model = M.DriftModel(gain=0.03, offset_dn=3)
    x = _batch(n=4)
    params = [model.drift(x[i]) for i in range(4)]
    assert all(0.97 <= g <= 1.03 and abs(b) <= 3 / 255 for g, b in params)
    assert len({g for g, _ in params}) == 4  # every window drifts differently
    smooth = model.smooth(x)
    for i, (g, b) in enumerate(params):
        torch.testing.assert_close(model(x)[i], smooth[i] * g + b)


def test_generative_texture_is_independent_per_window():
    model = M.GenerativeModel(amplitude=0.02)
    x = _batch(n=2)
    t0, t1 = model.texture(x[0]), model.texture(x[1])
    assert 0.015 < t0.std() < 0.025
    assert abs(np.corrcoef(t0.ravel(), t1.ravel())[0, 1]) < 0.05


def test_instance_norm_output_depends_on_the_window():
    model = M.InstanceNormModel()
    x = _batch(n=1, h=48, w=48)
    whole = model(x)[..., 20:28, 20:28]
    window = model(x[..., 8:40, 8:40])[..., 12:20, 12:20]  # same pixels, well inside the halo of 2
    assert not torch.allclose(whole, window, atol=1e-4)


# ----------------------------------------------------------------------------- behaviour and broken models


def test_sleep_model_sleeps_per_window():
    model = M.SleepModel(seconds_per_window=0.02)
    x = _batch(n=3)
    t = time.perf_counter()
    out = model(x)
    assert time.perf_counter() - t >= 0.06
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_oom_model_raises_on_large_batches_and_windows():
    model = M.OOMModel(max_batch=2, max_pixels=32 * 32)
    assert torch.equal(model(_batch(n=2)), _batch(n=2))
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
        model(_batch(n=3))
    with pytest.raises(torch.OutOfMemoryError):
        model(_batch(n=1, h=32, w=33))
    assert model.calls == [(2, 3, 32, 32), (3, 3, 32, 32), (1, 3, 32, 33)]
    assert isinstance(torch.OutOfMemoryError("x"), RuntimeError)  # what callers may catch instead


def test_broken_models():
    x = _batch()
    assert M.WrongShapeModel()(x).shape == (2, 3, 31, 31)
    nan = M.NaNModel()(x)
    assert torch.isnan(nan).sum() == 2 and torch.isnan(nan[:, 0, 16, 16]).all()
    assert torch.isinf(M.NaNModel(float("inf"), position=(0, 0))(x)[:, 0, 0, 0]).all()
    with pytest.raises(RuntimeError, match="deliberate"):
        M.RaisingModel()(x)
    bad = M.WrongDtypeModel()(x)
    assert bad.dtype == torch.int64 and bad.shape == x.shape


def test_numpy_models():
    batch = np.random.default_rng(1).random((2, 3, 16, 20), dtype=np.float32)
    same = M.numpy_identity(batch)
    assert np.array_equal(same, batch) and same is not batch
    box = M.numpy_box3(batch)
    expected = ndimage.uniform_filter(batch.astype(np.float64), size=(1, 1, 3, 3), mode="constant")
    assert box.dtype == np.float32
    np.testing.assert_allclose(box, expected, atol=1e-6)
    assert (M.numpy_box3.halo, M.numpy_box3.stride) == (1, 1)


@pytest.mark.parametrize(
    "path, kwargs, cls",
    [
        ("tilegraph.testing.models:make_local_conv", {"layers": 3, "seed": 2}, M.LocalConv),
        ("tilegraph.testing.models:make_upscaler", {"scale": 4}, M.Upscaler),
        ("tilegraph.testing.models:make_downscaler", {"factor": 8}, M.Downscaler),
        ("tilegraph.testing.models:make_reference_unet", {"base": 4, "depth": 2}, M.ReferenceUNet),
        ("tilegraph.testing.models:make_drift_model", {"seed": 3}, M.DriftModel),
        ("tilegraph.testing.models:make_instance_norm_model", {}, M.InstanceNormModel),
        ("tilegraph.testing.models:make_generative_model", {}, M.GenerativeModel),
        ("tilegraph.testing.models:make_identity", {}, M.Identity),
        ("tilegraph.testing.models:make_sleep_model", {"seconds_per_window": 0.0}, M.SleepModel),
        ("tilegraph.testing.models:make_oom_model", {"max_batch": 1}, M.OOMModel),
    ],
)
def test_factories_work_as_import_paths(path, kwargs, cls):
    module, _, name = path.partition(":")
    model = getattr(importlib.import_module(module), name)(**kwargs)
    assert type(model) is cls
    twin = cls(**kwargs)
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items())


def test_import_tilegraph_testing_does_not_import_torch():
    code = (
        "import sys, tilegraph.testing as t\n"
        "t.coordinate_image((8, 8)); t.gradient_photo((8, 8)); t.whole_image_inference\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    import tilegraph.testing as kit

    assert kit.Identity is M.Identity and kit.unet_radius is M.unet_radius  # models resolve lazily
    with pytest.raises(AttributeError):
        kit.NoSuchModel  # noqa: B018


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    "dtype, shape",
    [("uint8", (300, 520)), ("uint16", (70, 90)), ("float16", (40, 2100)), ("float32", (50, 60))],
)
def test_coordinate_image_is_unique_and_decodes(dtype, shape):
    img = coordinate_image(shape, dtype)
    assert img.shape == (*shape, 3) and img.dtype == np.dtype(dtype)
    codes = img.reshape(-1, 3)
    assert len(np.unique(codes, axis=0)) == shape[0] * shape[1]
    rows, cols = decode_coordinates(img[5:17, 260:299])
    assert np.array_equal(rows, np.broadcast_to(np.arange(5, 17)[:, None], rows.shape))
    assert np.array_equal(cols, np.broadcast_to(np.arange(260, 260 + cols.shape[1])[None, :], cols.shape))
    if img.dtype.kind == "f":
        assert img.min() >= 0 and img.max() < 1


def test_coordinate_image_detects_a_shift_by_a_period():
    img = coordinate_image((600, 600), "uint8")
    assert not np.array_equal(img[:100, :100], img[256:356, :100])  # rows and cols alone wrap at 256
    rows, _ = decode_coordinates(img[256:356, :100])
    assert rows[0, 0] == 256


def test_coordinate_image_limits():
    with pytest.raises(ValueError, match="not unique"):
        coordinate_image((4097, 4), "uint8")
    with pytest.raises(ValueError, match="not a coordinate image"):
        decode_coordinates(np.full((2, 2, 3), 0.3, dtype=np.float32))


def test_gradient_photo():
    img = gradient_photo((120, 160), "uint8")
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    assert 0.03 * 255 - 1 <= img.min() and img.max() <= 0.97 * 255 + 1
    assert np.array_equal(img, gradient_photo((120, 160), "uint8"))
    f = gradient_photo((120, 160), "float32", channels=4)
    assert f.shape == (120, 160, 4) and f.dtype == np.float32
    # smooth sky (blue falls downwards) crossed by fine dark lines
    assert f[:10, :, 2].mean() > f[-10:, :, 2].mean() + 0.2
    assert f[61, :, 0].mean() < f[62, :, 0].mean() - 0.1


# ----------------------------------------------------------------------------- whole-image reference


@pytest.mark.parametrize("dtype, scale", [("uint8", 255), ("uint16", 65535), ("float32", 1), ("float16", 1)])
def test_whole_image_identity_returns_the_input_scaled(dtype, scale):
    img = coordinate_image((50, 70), dtype)
    plan = make_plan((50, 70), tile=32, overlap=8, dtype=dtype)
    assert plan.padded_shape != (50, 70)  # the far edges are padded
    for model in (M.Identity(), M.numpy_identity, "tilegraph.testing.models:make_identity"):
        out = whole_image_inference(img, model, plan)
        assert out.shape == (50, 70, 3) and out.dtype == np.float32
        np.testing.assert_array_equal(out, img.astype(np.float32) / np.float32(scale))


def test_whole_image_pads_the_far_edges_like_the_plan():
    img = gradient_photo((37, 45), "uint8")
    for pad_mode in ("reflect", "edge", "constant", "symmetric"):
        plan = make_plan((37, 45), tile=24, overlap=8, pad_mode=pad_mode)
        (ph, pw), (h, w) = plan.padded_shape, plan.shape
        padded = np.pad(img, ((0, ph - h), (0, pw - w), (0, 0)), mode=pad_mode).astype(np.float32) / 255
        expected = M.numpy_box3(padded.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)[:h, :w]
        np.testing.assert_allclose(
            whole_image_inference(img, M.numpy_box3, plan), expected, rtol=0, atol=1e-6
        )


def test_whole_image_scaled_models_and_grey_images():
    img = gradient_photo((40, 52), "uint8")
    up = whole_image_inference(img, M.Upscaler(scale=2), make_plan((40, 52), tile=32, overlap=8, scale=2))
    assert up.shape == (80, 104, 3)
    plan = make_plan((40, 52), tile=32, overlap=16, scale="1/8", model_stride=8)
    down = whole_image_inference(img, M.Downscaler(), plan)
    assert down.shape == (5, 7, 4)
    grey = whole_image_inference(
        img[..., 0], M.Identity(), make_plan((40, 52), tile=16, overlap=4, channels=1)
    )
    assert grey.shape == (40, 52, 1)


def test_whole_image_rejects_bad_outputs():
    img = coordinate_image((20, 20), "uint8")
    plan = make_plan((20, 20), tile=16, overlap=4)
    with pytest.raises(ValueError, match="shape"):
        whole_image_inference(img, M.WrongShapeModel(), plan)
    with pytest.raises(TypeError, match="int64"):
        whole_image_inference(img, M.WrongDtypeModel(), plan)
    with pytest.raises(ValueError, match="plan is for"):
        whole_image_inference(img[:10], M.Identity(), plan)
