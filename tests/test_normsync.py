"""Norm-statistics sync (issue 11, part A): exact and thumbnail modes against whole-image inference."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from tilegraph.errors import ModelError, PlanError
from tilegraph.plan import make_plan
from tilegraph.testing import gradient_photo

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tilegraph.infer import normsync as ns  # noqa: E402
from tilegraph.testing import normsync as nsd  # noqa: E402
from tilegraph.testing.norm_models import (  # noqa: E402
    InstanceNormModel,
    StridedGroupNorm,
    TinyVAEDecoder,
    TwoGroupNormModel,
    block_error_dn,
    block_step_dn,
)


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread (a loaded 2-core CI machine runs these faster that way); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def whole(model, image: np.ndarray) -> np.ndarray:
    """The truth: the model run once on the whole (unpadded) image, ``(H', W', C')``."""
    with torch.inference_mode():
        y = model(torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)[None])))
    return np.moveaxis(y[0].numpy(), 0, -1)


def latent(shape, channels: int = 4, seed: int = 1) -> np.ndarray:
    """A smooth random latent ``(H, W, C)`` float32."""
    rng = np.random.default_rng(seed)
    return (3 * gaussian_filter(rng.standard_normal((*shape, channels)), (3, 3, 0))).astype(np.float32)


def interior(a: np.ndarray, band: int) -> np.ndarray:
    return a[band : a.shape[0] - band, band : a.shape[1] - band]


class OrderModel(nn.Module):
    """Definition order differs from forward order; BatchNorm in training and eval; running-stats InstanceNorm."""

    in_channels = 3

    def __init__(self):
        super().__init__()
        self.late = nn.GroupNorm(2, 4)
        self.early = nn.InstanceNorm2d(4, affine=True)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_train = nn.BatchNorm2d(4)
        self.bn_eval = nn.BatchNorm2d(4).eval()
        self.fixed = nn.InstanceNorm2d(4, track_running_stats=True).eval()
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = self.early(self.conv(x))
        h = self.bn_eval(self.bn_train(self.fixed(h)))
        return self.out(self.late(h))


# ----------------------------------------------------------------------------- discovery
def test_find_norm_layers_in_forward_order_with_warnings():
    rep = ns.find_norm_layers(OrderModel())
    assert rep.probed and rep.names == ("early", "late")  # forward order, not definition order
    assert rep.batchnorm_training == ("bn_train",)  # eval BatchNorm and running-stats InstanceNorm are fixed
    assert rep.passes == 3 and rep.recommendation == "exact"
    text = rep.describe()
    for word in (
        "early (InstanceNorm2d)",
        "late (GroupNorm)",
        "norm_sync='exact'",
        "bn_train",
        "model.eval()",
    ):
        assert word in text, text
    assert rep.to_dict()["layers"][0]["resolution"] == ["1", "1"]


def test_report_for_models_without_norms_and_for_numpy_callables():
    plain = ns.find_norm_layers(nn.Conv2d(3, 3, 3, padding=1))
    assert not plain.layers and plain.recommendation is None and "no per-sample" in plain.describe()
    opaque = ns.find_norm_layers(lambda batch: batch)
    assert opaque.opaque and "numpy callable" in opaque.describe()


def test_layer_norm_over_space_is_reported_not_synced():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm([4, 32, 32]))
    rep = ns.find_norm_layers(model, example=torch.zeros(1, 3, 32, 32))
    assert [layer.name for layer in rep.layers] == ["1"] and not rep.sync_layers
    assert "not syncable" in rep.describe()


def test_decoder_layers_and_inner_resolutions():
    rep = ns.find_norm_layers(TinyVAEDecoder(), example=torch.zeros(1, 4, 16, 16))
    assert len(rep.names) == 7 and rep.passes == 8
    assert [layer.resolution[0] for layer in rep.sync_layers] == [1, 1, 2, 2, 4, 4, 8]
    costs = ns.pass_costs(TinyVAEDecoder(), rep, torch.zeros(1, 4, 32, 32), repeats=1)
    assert len(costs) == rep.passes and all(c > 0 for c in costs)


# ----------------------------------------------------------------------------- exact sync
@pytest.fixture(scope="module")
def photo512():
    return gradient_photo((512, 512), "float32", seed=2)


def _plan(shape, *, channels=3, tile=128, overlap=32, scale=1, blend="crop", stride=1):
    plan = make_plan(
        shape,
        tile=tile,
        overlap=overlap,
        channels=channels,
        dtype="float32",
        scale=scale,
        blend=blend,
        model_stride=stride,
        origin=0,  # as a norm_sync="exact" run plans it: the first windows start at the image's start
    )
    assert plan.padded_shape == tuple(shape)  # the windows cover the image exactly (no padding)
    return plan


def test_exact_stats_count_every_pixel_once(photo512):
    """The first layer's synced statistics are those of its input over the whole image."""
    model = InstanceNormModel()
    plan = _plan(photo512.shape[:2])
    stats, info = ns.exact_stats(model, photo512, plan)
    assert info["passes"] == 1 and info["window_forwards"] == plan.n_windows
    with torch.inference_mode():
        h = model.conv1(torch.from_numpy(np.moveaxis(photo512, -1, 0)[None].copy()))[0].double()
    mean, var = h.mean(dim=(1, 2)).numpy(), h.var(dim=(1, 2), unbiased=False).numpy()
    np.testing.assert_allclose(stats["norm"].mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["norm"].var, var, rtol=1e-9)
    assert stats["norm"].count == 512 * 512


def test_partial_records_add_in_any_order():
    rng = np.random.default_rng(0)
    parts = []
    for k in range(6):
        v = rng.normal(100.0 + k, 1.0 + k, (3, 1000))
        parts.append(ns.PartialStats("x", 1000.0, v.sum(1), ((v - v.mean(1, keepdims=True)) ** 2).sum(1)))
    a = ns.reduce_stats(parts)["x"].finalize()
    b = ns.reduce_stats(parts[::-1])["x"].finalize()
    np.testing.assert_allclose(a.var, b.var, rtol=1e-12)
    rec = pickle.loads(pickle.dumps(parts[0]))
    np.testing.assert_array_equal(rec.sumsq, parts[0].sumsq)


@pytest.mark.parametrize("model_cls", [InstanceNormModel, TwoGroupNormModel])
def test_exact_sync_equals_whole_image(photo512, model_cls):
    model = model_cls()
    plan = _plan(photo512.shape[:2])
    truth = whole(model, photo512)
    out, info = nsd.tiled_exact(model, photo512, plan)
    nosync = nsd.stitch(plan, ns.tiled_windows(model, photo512, plan))
    band = model.halo
    err = np.abs(interior(out, band) - interior(truth, band)).max()
    before = np.abs(interior(nosync, band) - interior(truth, band)).max()
    print(f"{model_cls.__name__}: exact {err:.2e}, no sync {before:.2e}, {info['passes']} passes")
    assert before > 1e-2  # without sync, windows differ from the truth
    assert err < 1e-3
    assert info["passes"] == len(ns.find_norm_layers(model).names) + 1


def test_decoder_exact_sync_equals_whole_image():
    """A VAE-like decoder (x8 up-sampling, seven GroupNorm layers), tile 64, overlap 16 (2 x 2 windows here;
    the 256^2 latent of the acceptance runs through ``tilegraph.run`` in test_normsync_run.py)."""
    model = TinyVAEDecoder()
    z = latent((112, 112))
    plan = _plan(z.shape[:2], channels=4, tile=64, overlap=16, scale=8)
    truth = whole(model, z)
    out, info = nsd.tiled_exact(model, z, plan, batch_size=5)
    band = model.halo * 8
    err = np.abs(interior(out, band) - interior(truth, band)).max()
    print(f"decoder: exact {err:.2e} over {out.shape}, {info['passes']} passes, {info['seconds']:.1f} s")
    assert out.shape == (896, 896, 3)
    assert info["passes"] == 8
    assert err < 1e-3


def test_strided_model_exact_and_alignment_checked():
    model = StridedGroupNorm()
    rep = ns.find_norm_layers(model)
    assert rep.sync_layers[0].resolution == (0.5, 0.5) and rep.total_stride == 2
    size = 64 + 9 * 44
    image = gradient_photo((size, size), "float32", seed=4)
    plan = _plan((size, size), tile=64, overlap=20, stride=2)
    truth = whole(model, image)
    out, _ = nsd.tiled_exact(model, image, plan)
    assert np.abs(interior(out, 6) - interior(truth, 6)).max() < 1e-3
    bad = make_plan((size, size), tile=64, overlap=22, channels=3, dtype="float32", model_stride=2)
    with pytest.raises(PlanError, match="half the overlap") as exc:
        ns.check_alignment(bad, rep)
    assert "use overlap 24" in str(exc.value)
    ns.check_alignment(plan, rep)  # aligned: no error


def test_measure_refuses_wrong_pass_order(photo512):
    model = TwoGroupNormModel()
    x = np.ascontiguousarray(np.moveaxis(photo512[:128, :128], -1, 0)[None])
    box = ns.keep_boxes(_plan((512, 512)), [0])
    with pytest.raises(ModelError, match="without global statistics"):
        ns.measure(model, x, layer="norm2", known_stats={}, keep_boxes=box)
    with pytest.raises(ModelError, match="not a GroupNorm"):
        ns.measure(model, x, layer="conv1", known_stats={}, keep_boxes=box)


def test_module_untouched_and_concurrent_calls_do_not_clash(photo512):
    model = TwoGroupNormModel()
    modules_before = dict(model.named_modules())
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(photo512[:128, :128], -1, 0)[None]))
    with torch.inference_mode():
        plain = model(x).clone()
    stats_a = ns.record_stats(model, x)
    stats_b = ns.record_stats(model, x * 0.5 + 0.2)
    want_a, want_b = ns.apply(model, x, stats=stats_a), ns.apply(model, x, stats=stats_b)
    assert not torch.equal(want_a, want_b)
    np.testing.assert_allclose(want_a.numpy(), plain.numpy(), atol=1e-5)  # own statistics = the model
    failures = []

    def worker(stats, want):
        for _ in range(20):
            if not torch.equal(ns.apply(model, x, stats=stats), want):
                failures.append(1)

    threads = [threading.Thread(target=worker, args=a) for a in ((stats_a, want_a), (stats_b, want_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert dict(model.named_modules()) == modules_before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(x), plain)


# ----------------------------------------------------------------------------- thumbnail sync
def test_thumbnail_sync_at_least_halves_seams_and_block_errors():
    """InstanceNorm model, 1024^2 photo, tile 256, overlap 64, cosine; statistics from a 256-px thumbnail."""
    model = InstanceNormModel()
    image = gradient_photo((1024, 1024), "float32")
    plan = _plan((1024, 1024), tile=256, overlap=64, blend="cosine")
    truth = whole(model, image)
    raw = nsd.stitch(plan, ns.tiled_windows(model, image, plan))
    stats, info = ns.thumbnail_stats(model, image, size=256)
    synced = nsd.stitch(plan, ns.tiled_windows(model, image, plan, stats=stats))
    step0, step1 = block_step_dn(raw, truth, block=128), block_step_dn(synced, truth, block=128)
    err0, err1 = block_error_dn(raw, truth, block=64), block_error_dn(synced, truth, block=64)
    print(
        f"thumbnail x{info['factor']}: 128-px step {step0:.2f} -> {step1:.2f} DN, 64-px error {err0:.2f} -> {err1:.2f} DN"
    )
    assert step1 <= 0.5 * step0
    assert err1 <= 0.5 * err0


def test_large_thumbnail_runs_tiled_exactly_and_variation_is_measured():
    model = TwoGroupNormModel()
    image = gradient_photo((1024, 1024), "float32", seed=1)
    tiled, info = ns.thumbnail_stats(model, image, size=512, tile=128, overlap=32)
    assert info["tiled"] and info["passes"] == 2
    small, _ = ns.thumbnail(image, size=512)
    one = ns.record_stats(model, np.ascontiguousarray(np.moveaxis(small, -1, 0)[None]))
    for name in one:
        np.testing.assert_allclose(tiled[name].mean, one[name].mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tiled[name].var, one[name].var, rtol=1e-5)
    same = ns.stats_variation(one, one)
    assert same["worst"] == 0.0 and not same["recommend_exact"]
    coarse, _ = ns.thumbnail_stats(model, image, size=64)
    varied = ns.stats_variation(coarse, one, threshold=0.05)
    assert (
        set(varied["layers"]) == {"norm1", "norm2"} and varied["worst"] > 0.05 and varied["recommend_exact"]
    )
