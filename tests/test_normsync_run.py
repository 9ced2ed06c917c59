"""Norm-statistics sync through ``tilegraph.run`` (issue 11), judged against whole-image inference.

The truth is :func:`tilegraph.testing.whole_image_inference` of the same model, never the thumbnail a run
anchors to. Image sizes fit the window grid exactly, so the far-edge padding (which whole-image inference
normalises with and exact sync, counting image pixels only, does not) plays no part.
"""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import tilegraph
from tilegraph.errors import InputError, PlanError, TilegraphWarning
from tilegraph.testing import gradient_photo, numpy_identity, whole_image_inference

torch = pytest.importorskip("torch")

from tilegraph.testing.norm_models import (  # noqa: E402
    BatchNormTraining,
    InstanceNormModel,
    StridedGroupNorm,
    TinyVAEDecoder,
    TwoGroupNormModel,
    block_error_dn,
    block_step_dn,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread (a loaded 2-core CI machine runs these faster that way); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(image, path, model, **kw):
    kw = {"client": "inprocess", "output_dtype": "float32", "overwrite": True, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TilegraphWarning)
        return tilegraph.run(image, path, model=model, **kw)


def _interior(a: np.ndarray, band: int) -> np.ndarray:
    return a[band : a.shape[0] - band, band : a.shape[1] - band]


def _latent(shape, channels: int = 4, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (3 * gaussian_filter(rng.standard_normal((*shape, channels)), (3, 3, 0))).astype(np.float32)


# ----------------------------------------------------------------------------- exact
@pytest.mark.parametrize("model_cls", [InstanceNormModel, TwoGroupNormModel])
def test_exact_sync_equals_whole_image_inference(tmp_path, model_cls):
    """crop, tile 128, overlap 32 (4 x 4 windows): within 1e-3 off a border band of the receptive radius."""
    image = gradient_photo((416, 416), "float32", seed=2)
    model = model_cls()
    res = _run(image, tmp_path / "exact.zarr", model, tile=128, overlap=32, blend="crop", norm_sync="exact")
    raw = _run(image, tmp_path / "raw.zarr", model, tile=128, overlap=32, blend="crop")
    truth = whole_image_inference(image, model, res.plan)
    band = model.halo
    err = np.abs(_interior(np.asarray(res.output[:]), band) - _interior(truth, band)).max()
    err_raw = np.abs(_interior(np.asarray(raw.output[:]), band) - _interior(truth, band)).max()
    print(f"{model_cls.__name__}: exact sync {err:.2e}, no sync {err_raw:.2e}")
    assert err < 1e-3 and err_raw > 1e-2  # the test can fail: without sync the windows differ
    info = res.extra["norm_sync"]
    assert info["mode"] == "exact" and info["passes"] == len(info["layers"]["layers"]) + 1
    assert len(info["pass_seconds"]) == info["passes"] - 1 and info["cost_forwards"] > 0
    assert info["cost_measured"] > 1.0  # statistics passes cost model time too
    meta = res.output.attrs["tilegraph"]["normalisation"]
    assert meta["passes"] == info["passes"] and meta["mode"] == "exact"
    assert res.timings["norm_sync_s"] > 0


def test_vae_like_decoder_exact_sync_equals_whole_image_inference(tmp_path):
    """Seven GroupNorm layers at x1..x8, a 256^2 latent, tile 64, overlap 16: 2048^2 output within 1e-3."""
    model = TinyVAEDecoder()
    z = _latent((256, 256))
    res = _run(z, tmp_path / "dec.zarr", model, tile=64, overlap=16, blend="crop", norm_sync="exact")
    truth = whole_image_inference(z, model, res.plan)
    out = np.asarray(res.output[:])
    band = model.halo * 8  # receptive radius in output pixels
    err = np.abs(_interior(out, band) - _interior(truth, band)).max()
    print(f"decoder: exact sync {err:.2e} over {out.shape}, {res.extra['norm_sync']['passes']} passes")
    assert out.shape == (2048, 2048, 3) and res.extra["norm_sync"]["passes"] == 8
    assert err < 1e-3


def test_exact_sync_checks_the_alignment_and_says_what_to_change(tmp_path):
    """GroupNorm at half resolution: half the overlap must be a multiple of 2; the error names the overlap."""
    image = gradient_photo((336, 336), "float32")  # 3 x 3 windows of 128 with overlap 24
    model = StridedGroupNorm()
    with pytest.raises(PlanError, match="norm_sync") as err:
        _run(image, tmp_path / "bad.zarr", model, tile=128, overlap=22, blend="crop", norm_sync="exact")
    assert "use overlap 24" in str(err.value)
    res = _run(image, tmp_path / "ok.zarr", model, tile=128, overlap=24, blend="crop", norm_sync="exact")
    truth = whole_image_inference(image, model, res.plan)
    assert np.abs(_interior(np.asarray(res.output[:]), 6) - _interior(truth, 6)).max() < 1e-3


def test_reconciliation_on_synced_windows_changes_nothing(tmp_path):
    """norm_sync and reconcile compose: windows synced exactly agree, so the solve returns identity."""
    image = gradient_photo((416, 416), "float32", seed=4)
    model = InstanceNormModel()
    res = _run(
        image,
        tmp_path / "both.zarr",
        model,
        tile=128,
        overlap=32,
        blend="cosine",
        norm_sync="exact",
        reconcile="gain-offset",
        qa=str(tmp_path / "both.qa"),
    )
    rec = res.extra["reconcile"]
    assert rec["identity"] and rec["max_change_dn"] == 0.0, rec
    notes = res.report["metrics"]["notes"]
    assert any("reconciliation changed nothing" in n for n in notes), notes
    assert any("norm_sync='exact'" in n for n in notes), notes
    page = open(res.report["paths"]["html"], encoding="utf-8").read()
    assert "Notes on this run" in page and "reconciliation changed nothing" in page


# ----------------------------------------------------------------------------- thumbnail
def test_thumbnail_sync_at_least_halves_steps_and_block_errors(tmp_path):
    """InstanceNorm model, cosine, tile 256, overlap 64, statistics from a 256-px thumbnail (one forward)."""
    image = gradient_photo((1024, 1024), "float32")
    model = InstanceNormModel()
    kw = dict(tile=256, overlap=64, blend="cosine")
    raw = _run(image, tmp_path / "raw.zarr", model, **kw)
    with pytest.warns(
        TilegraphWarning, match="vary strongly with the thumbnail's size"
    ):  # and the plan says so
        synced = tilegraph.run(
            image,
            tmp_path / "thumb.zarr",
            model=model,
            client="inprocess",
            output_dtype="float32",
            norm_sync="thumbnail",
            thumbnail=256,
            **kw,
        )
    truth = whole_image_inference(image, model, raw.plan)
    a, b = np.asarray(raw.output[:]), np.asarray(synced.output[:])
    s0, s1 = block_step_dn(a, truth, block=128), block_step_dn(b, truth, block=128)
    e0, e1 = block_error_dn(a, truth, block=64), block_error_dn(b, truth, block=64)
    print(f"thumbnail sync: step {s0:.2f} -> {s1:.2f} DN, block error {e0:.2f} -> {e1:.2f} DN")
    assert s1 <= 0.5 * s0 and e1 <= 0.5 * e0
    info = synced.extra["norm_sync"]
    assert info["passes"] == 1 and info["thumbnail"]["method"] == "one forward"
    variation = info["thumbnail"]["variation"]
    assert variation["compared"] == [[128, 128], [256, 256]] and variation["recommend_exact"]
    assert any("use norm_sync='exact'" in n for n in info["notes"])


def test_thumbnail_larger_than_the_window_runs_exactly_in_windows(tmp_path):
    """A thumbnail larger than the window is run in windows with the exact algorithm (the default size 1024
    on a 1024-px image is the image itself: the statistics are then exact)."""
    image = gradient_photo((416, 416), "float32", seed=6)
    model = TwoGroupNormModel()
    big = np.ascontiguousarray(np.repeat(np.repeat(image, 2, 0), 2, 1))
    half = _run(big, tmp_path / "big.zarr", model, tile=128, overlap=32, norm_sync="thumbnail", thumbnail=208)
    info = half.extra["norm_sync"]["thumbnail"]
    assert info["method"] == "exact in windows" and info["factor"] == 4 and info["windows"] == 4
    assert info["variation"]["compared"] == [[104, 104], [208, 208]]
    res = _run(image, tmp_path / "t.zarr", model, tile=128, overlap=32, blend="cosine", norm_sync="thumbnail")
    info = res.extra["norm_sync"]["thumbnail"]
    assert info["method"] == "exact in windows" and info["factor"] == 1
    assert not info["variation"]["recommend_exact"]
    truth = whole_image_inference(image, model, res.plan)
    assert np.abs(_interior(np.asarray(res.output[:]), 2) - _interior(truth, 2)).max() < 1e-3


def test_one_thumbnail_inference_serves_statistics_and_the_reference(tmp_path):
    """norm_sync="thumbnail" with reconcile's "auto" reference: the model runs on the thumbnail once."""
    from tilegraph.testing import Stages

    image = gradient_photo((416, 416), "float32", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TilegraphWarning)
        stages = Stages(
            image,
            tmp_path / "s.zarr",
            model=InstanceNormModel(),
            tile=128,
            overlap=32,
            norm_sync="thumbnail",
            thumbnail=208,
            reconcile="gain-offset",
            output_dtype="float32",
        )
        run = stages.prepare()
        stages.infer()
        assert run.thumbnails.calls == 1 and stages.run.context.norm_stats is not None
        stages.assemble()
        res = stages.finish()
    assert res.extra["reconcile"]["reference_choice"]["reference"] == "thumbnail"
    assert res.extra["norm_sync"]["thumbnail"]["method"] == "exact in windows"
    # thumbnail-synced windows are consistent with each other: reconciliation finds nothing to correct
    assert res.extra["reconcile"]["identity"]


# ----------------------------------------------------------------------------- saying so
def test_a_run_without_sync_names_the_layers_and_recommends_norm_sync(tmp_path):
    image = gradient_photo((224, 224), "float32")
    with pytest.warns(TilegraphWarning, match=r"norm \(InstanceNorm2d\).*norm_sync='exact'"):
        res = tilegraph.run(
            image,
            tmp_path / "a.zarr",
            model=InstanceNormModel(),
            tile=128,
            overlap=32,
            client="inprocess",
            qa=str(tmp_path / "a.qa"),
        )
    info = res.extra["norm_sync"]
    assert info["mode"] is None and info["exact_passes"] == 2
    assert [layer["name"] for layer in info["layers"]["layers"]] == ["norm"]
    meta = res.output.attrs["tilegraph"]["normalisation"]
    assert meta["layers"]["recommendation"] == "exact"
    notes = json.loads(open(res.report["paths"]["json"]).read())["metrics"]["notes"]
    assert any("norm (InstanceNorm2d)" in n and "norm_sync='exact'" in n for n in notes), notes
    from tilegraph.qa import measure_output  # tilegraph qa on the finished output says so too

    later = measure_output(str(res.path), out_dir=str(tmp_path / "later.qa"))["metrics"]["notes"]
    assert any("norm (InstanceNorm2d)" in n and "norm_sync='exact'" in n for n in later), later


def test_batchnorm_in_training_mode_is_a_warning_naming_the_layers(tmp_path):
    model = BatchNormTraining()
    image = gradient_photo((160, 160), "float32")
    with pytest.warns(TilegraphWarning, match="BatchNorm in training mode: bn"):
        res = tilegraph.run(image, tmp_path / "bn.zarr", model=model, tile=96, overlap=32, client="inprocess")
    assert res.extra["norm_sync"]["layers"]["batchnorm_training"] == ["bn"]
    assert model.bn.training  # the caller's module is left as it was (the run uses a copy in eval mode)


def test_numpy_callables_are_opaque(tmp_path):
    image = gradient_photo((160, 160), "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TilegraphWarning)  # opaque is said in the report, not warned
        res = tilegraph.run(
            image,
            tmp_path / "np.zarr",
            model=numpy_identity,
            tile=96,
            overlap=32,
            client="inprocess",
            qa=True,
        )
    info = res.extra["norm_sync"]
    assert info["layers"]["opaque"] and any("cannot be inspected" in n for n in info["notes"])
    assert any("cannot be inspected" in n for n in res.report["metrics"]["notes"])
    with pytest.raises(InputError, match="needs a torch module"):
        _run(image, tmp_path / "np2.zarr", numpy_identity, tile=96, overlap=32, norm_sync="exact")


def test_plan_command_names_layers_passes_and_cost(tmp_path, capsys):
    from PIL import Image

    from tilegraph.cli import main

    path = str(tmp_path / "p.png")
    Image.fromarray(gradient_photo((200, 200), "uint8")).save(path)
    model = "tilegraph.testing.norm_models:make_two_group_norm_model"
    assert main(["plan", path, "--tile", "128", "--overlap", "32", "--model", model, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        "conv1" not in out["normalisation"] and "norm1 (GroupNorm), norm2 (GroupNorm)" in out["normalisation"]
    )
    assert out["norm_sync exact"].startswith("3 passes over the windows, about ")
    assert (
        "receptive field" in " ".join(out)
        and "normalisation layers on fixed statistics" in out["receptive field radius"]
    )
    args = ["plan", path, "--tile", "128", "--overlap", "32", "--model", model, "--json"]
    assert main([*args, "--norm-sync", "thumbnail", "--thumbnail", "128"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "standard deviations" in out["norm_sync thumbnail"]


# ----------------------------------------------------------------------------- the runner
def test_per_call_module_override_is_thread_safe():
    """Two threads share one runner, one with a synced shadow and one plain: each gets its own model."""
    from tilegraph.infer.normsync import record_stats, synced
    from tilegraph.infer.runner import BatchRunner
    from tilegraph.infer.spec import describe_model

    model = InstanceNormModel()
    runner = BatchRunner(model, describe_model(model))
    rng = np.random.default_rng(0)
    raw = rng.random((2, 64, 64, 3), dtype=np.float32)
    other = rng.random((1, 3, 64, 64), dtype=np.float32)
    shadow = synced(runner.module, record_stats(runner.module, other))
    want_plain = runner.run_raw(raw, channels=3, out_dtype=np.float32)[0]
    want_synced = runner.run_raw(raw, channels=3, out_dtype=np.float32, module=shadow)[0]
    assert np.abs(want_plain - want_synced).max() > 1e-3
    results: dict = {"plain": [], "synced": []}

    def work(name, module):
        for _ in range(20):
            results[name].append(runner.run_raw(raw, channels=3, out_dtype=np.float32, module=module)[0])

    threads = [threading.Thread(target=work, args=a) for a in (("plain", None), ("synced", shadow))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(y, want_plain) for y in results["plain"])
    assert all(np.array_equal(y, want_synced) for y in results["synced"])
