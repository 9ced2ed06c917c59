"""Issue 12 through ``tilegraph.run``: the new blend modes and options, distributed on the engine's contracts.

Every figure is measured on a run's output against the truth (whole-image inference, or the deterministic
part of the generative stand-in), with the project's QA or the test kit's seam scores over the plan's seam
lines. CI-sized: in process, a few windows each.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import tilegraph
from tilegraph.blend import BLENDERS, get_blender
from tilegraph.errors import InputError, PlanError
from tilegraph.passes import PASSES
from tilegraph.plan import make_plan
from tilegraph.plan.weights import normalized_axis_weights
from tilegraph.testing.images import smooth_gradient

torch = pytest.importorskip("torch")
models = pytest.importorskip("tilegraph.testing.models")
from tilegraph.testing.reference import whole_image_inference  # noqa: E402
from tilegraph.testing.seam_models import (  # noqa: E402
    ConfidenceModel,
    ShadedTextureModel,
    band_steps,
    seam_scores,
)
from tilegraph.testing.windows import window_outputs  # noqa: E402

NEW_MODES = ("multiband", "seam", "poisson")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def run(image, tmp_path, model, name="out", **kw):
    kw.setdefault("client", "inprocess")
    kw.setdefault("progress", False)
    kw.setdefault("output_dtype", "float32")
    return tilegraph.run(image, tmp_path / f"{name}.zarr", model=model, **kw)


def issue_image(n: int = 3, tile: int = 256, overlap: int = 64) -> np.ndarray:
    size = (n - 1) * (tile - overlap) + tile
    return smooth_gradient((size, size))


# ----------------------------------------------------------------------------- registry and options
def test_modes_and_passes_are_registered_and_options_checked():
    assert set(NEW_MODES) <= set(BLENDERS.names())
    assert {"lowfreq", "refine-seams"} <= set(PASSES.names())
    with pytest.raises(InputError, match="detail must be one of"):
        tilegraph.options.RunOptions.from_kwargs(detail="sharp")
    with pytest.raises(InputError, match="refine must be one of"):
        tilegraph.options.RunOptions.from_kwargs(refine="everything")
    opts = tilegraph.options.RunOptions.from_kwargs(blend="poisson", lowfreq="thumbnail", refine="seams")
    assert (opts.blend.mode, opts.blend.lowfreq, opts.blend.refine) == ("poisson", "thumbnail", "seams")


def test_metadata_records_modes_and_passes(tmp_path):
    image = np.random.default_rng(0).random((120, 130, 3)).astype(np.float32)
    res = run(image, tmp_path, models.Identity(), blend="poisson", lowfreq="thumbnail", refine="seams")
    meta = res.output.attrs["tilegraph"]
    assert meta["blend"]["mode"] == "poisson" and meta["blend"]["planes"] is True
    assert [p["name"] for p in meta["passes"]] == ["refine-seams", "lowfreq"]
    assert meta["options"]["blend"] == {
        "mode": "poisson",
        "detail": "none",
        "lowfreq": "thumbnail",
        "lowfreq_split": "gaussian",
        "refine": "seams",
    }


# ----------------------------------------------------------------------------- models that tile exactly
EXACT = {
    "identity": (lambda: models.Identity(), 64, 16, (150, 170)),
    "stacked convolutions": (lambda: models.LocalConv(), 64, 32, (150, 170)),
    "U-Net": (lambda: models.ReferenceUNet(base=4, depth=2), 128, 48, (220, 250)),
}
CONFIGS = [
    *[(mode, {}) for mode in NEW_MODES],
    ("multiband", {"detail": "preserve"}),
    ("cosine", {"detail": "preserve"}),
    ("poisson", {"lowfreq": "thumbnail"}),
    ("seam", {"lowfreq": "thumbnail", "lowfreq_split": "wavelet"}),
    ("cosine", {"refine": "seams"}),
    ("poisson", {"refine": "seams"}),
]


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_models_through_every_new_mode_and_option(tmp_path, name):
    """Windows that agree are left as they are: within 0.5 DN of whole-image inference; identity exact."""
    make, tile, overlap, shape = EXACT[name]
    model = make()
    image = smooth_gradient(shape) + 0.1 * np.random.default_rng(1).random((*shape, 3)).astype(np.float32)
    worst = {}
    for k, (mode, kw) in enumerate(CONFIGS):
        res = run(image, tmp_path, model, name=f"c{k}", tile=tile, overlap=overlap, blend=mode, **kw)
        out = np.asarray(res.output[:])
        whole = whole_image_inference(image, model, res.plan)
        worst[mode, tuple(kw.items())] = err = float(np.abs(out - whole).max() * 255)
        assert err < 0.5, (name, mode, kw, err)
        if name == "identity" and mode in NEW_MODES:
            assert np.array_equal(out, image), (mode, kw)  # the new modes leave agreeing windows bit-exact
        elif name == "identity":  # cosine's own weighted sum rounds in float32
            assert np.abs(out - image).max() < 1e-6, (mode, kw)
    print(name, {f"{m} {dict(kw)}": round(v, 4) for (m, kw), v in worst.items()})


# ----------------------------------------------------------------------------- the generative stand-in
@pytest.fixture(scope="module")
def generative(tmp_path_factory):
    """The issue's geometry (tile 256, overlap 64), 3 x 3 windows of the generative stand-in, through run."""
    tmp = tmp_path_factory.mktemp("gen")
    torch.set_num_threads(1)
    image = issue_image()
    model = ShadedTextureModel()
    out = {}
    for mode in ("crop", "cosine", "poisson"):
        res = run(image, tmp, model, name=mode, tile=256, overlap=64, blend=mode, qa=str(tmp / f"{mode}.qa"))
        out[mode] = (np.asarray(res.output[:]), res)
    truth = whole_image_inference(image, model.smooth, out["crop"][1].plan)  # the part windows deviate from
    return out, truth


def test_generative_model_poisson_keeps_texture_without_steps(generative):
    """poisson alone (the README's choice for generative models): texture ratio >= 0.95, worst step
    < 0.5 DN, gradient ratio 0.95-1.05; cosine loses texture and crop leaves steps."""
    out, truth = generative
    scores = {m: seam_scores(o, r.plan, truth=truth) for m, (o, r) in out.items()}
    for m, s in scores.items():
        qa = out[m][1].report["metrics"]
        print(m, {k: round(v, 3) for k, v in s.items()}, "QA step", qa["seams"]["worst_step"])
    best = scores["poisson"]
    assert best["texture_ratio"] >= 0.95 and best["worst_step"] < 0.5
    assert 0.95 <= best["gradient_ratio"] <= 1.05
    assert scores["cosine"]["texture_ratio"] < 0.8  # what the new modes fix
    assert scores["crop"]["worst_step"] > 1.0 and scores["crop"]["gradient_ratio"] > 1.1
    qa = out["poisson"][1].report["metrics"]  # the project's QA agrees: no step, texture kept
    assert qa["seams"]["worst_step"] < 0.5 and qa["seams"]["count"] == qa["seams"]["expected"]
    assert qa["texture_ratio"]["value"] >= 0.95 and 0.95 <= qa["gradient_ratio"]["value"] <= 1.05


# ----------------------------------------------------------------------------- the drift model
@pytest.fixture(scope="module")
def drift(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    torch.set_num_threads(1)
    image = issue_image()
    model = models.DriftModel(seed=0)
    runs = {}
    for key, kw in {
        "crop": {"blend": "crop"},
        "cosine": {"blend": "cosine"},
        "poisson": {"blend": "poisson"},
        "poisson+gain-offset": {"blend": "poisson", "reconcile": "gain-offset"},
        "crop+refine": {"blend": "crop", "refine": "seams"},
        "cosine+refine": {"blend": "cosine", "refine": "seams"},
    }.items():
        res = run(image, tmp, model, name=key.replace("+", "-"), tile=256, overlap=64, **kw)
        runs[key] = (np.asarray(res.output[:]), res)
    truth = whole_image_inference(image, model.smooth, runs["crop"][1].plan)  # without the drift
    return runs, truth


def test_poisson_removes_the_drift_step(drift):
    runs, truth = drift
    s16 = {k: seam_scores(o, r.plan, truth=truth)["worst_step_16"] for k, (o, r) in runs.items()}
    print({k: round(v, 3) for k, v in s16.items()})
    assert s16["crop"] > 2.0 and s16["poisson"] * 4 <= s16["crop"]  # poisson alone, no reconcile
    assert s16["poisson+gain-offset"] < 0.5


def test_refine_at_least_halves_the_drift_step(drift):
    runs, truth = drift
    step = {k: seam_scores(o, r.plan, truth=truth)["worst_step"] for k, (o, r) in runs.items()}
    print({k: round(v, 3) for k, v in step.items()})
    for blend in ("crop", "cosine"):
        assert step[f"{blend}+refine"] * 2 <= step[blend], blend


@pytest.mark.parametrize("blend", ["crop", "cosine", "multiband", "seam"])
def test_qa_step_matches_the_step_against_whole_image_inference(tmp_path, blend):
    """Item 0: on the drift model the QA's worst step is within 20 % of the step measured directly."""
    n, tile, overlap = 6, 64, 16
    image = textured(n, tile, overlap)
    model = models.DriftModel(seed=0)
    res = run(image, tmp_path, model, tile=tile, overlap=overlap, blend=blend, qa=str(tmp_path / "qa"))
    out = np.asarray(res.output[:])
    truth = whole_image_inference(image, model.smooth, res.plan)
    routed = get_blender(blend).strip_pass  # a cut anywhere in the overlap: the jump across it
    direct = float(np.abs(band_steps(out, truth, res.plan, across=routed)).max())
    qa = res.report["metrics"]["seams"]
    print(f"{blend}: direct {direct:.3f} DN, QA {qa['worst_step']:.3f} DN")
    assert direct > 2.0 and qa["worst_step"] == pytest.approx(direct, rel=0.2)


def textured(n: int, tile: int, overlap: int) -> np.ndarray:
    size = (n - 1) * (tile - overlap) + tile
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal((size, size, 1)), (1.2, 1.2, 0))
    return (smooth_gradient((size, size)) + 0.006 * noise).astype(np.float32)


# ----------------------------------------------------------------------------- lowfreq
def test_lowfreq_takes_low_frequencies_from_the_thumbnail_where_windows_disagree(tmp_path):
    n, tile, overlap = 4, 96, 32
    image = textured(n, tile, overlap)
    model = models.DriftModel(seed=2, offset_dn=4)
    plain = run(image, tmp_path, model, name="plain", tile=tile, overlap=overlap, blend="cosine")
    low = run(image, tmp_path, model, name="low", tile=tile, overlap=overlap, lowfreq="thumbnail")
    truth = whole_image_inference(image, model.smooth, plain.plan)
    a = seam_scores(np.asarray(plain.output[:]), plain.plan, truth=truth)["worst_step"]
    b = seam_scores(np.asarray(low.output[:]), low.plan, truth=truth)["worst_step"]
    print(f"drift worst step: cosine {a:.3f} DN, + lowfreq {b:.3f} DN")
    assert b * 2 <= a


@pytest.mark.parametrize("split", ["gaussian", "wavelet"])
def test_lowfreq_does_not_depend_on_the_chunks(tmp_path, split):
    image = textured(4, 64, 16)
    model = ShadedTextureModel(texture_dn=2, shading_dn=3)
    kw = dict(tile=64, overlap=16, blend="seam", lowfreq="thumbnail", lowfreq_split=split)
    big = np.asarray(run(image, tmp_path, model, name="big", out_chunks=1024, **kw).output[:])
    small = np.asarray(run(image, tmp_path, model, name="small", out_chunks=48, **kw).output[:])
    tol = 0.0 if split == "gaussian" else 1e-3 / 255
    assert np.abs(big - small).max() <= tol + 1e-6


def test_refine_refuses_an_overlap_of_half_the_window_before_inference(tmp_path):
    image = np.zeros((200, 200, 3), np.float32)
    calls = []

    def model(x):
        calls.append(x.shape)
        return x

    with pytest.raises(PlanError, match="overlap under half the window"):
        run(image, tmp_path, model, tile=64, overlap=32, blend="crop", refine="seams")
    assert len(calls) <= 1  # the probe only


# ----------------------------------------------------------------------------- confidence
def test_confidence_multiplies_the_blend_weights_and_is_not_written(tmp_path):
    image = np.random.default_rng(0).random((150, 170, 3)).astype(np.float32)
    model = ConfidenceModel(models.DriftModel(seed=1), peaked=True)
    res = run(image, tmp_path, model, tile=64, overlap=24, blend="cosine")
    out, plan = np.asarray(res.output[:]), res.plan
    assert out.shape == (150, 170, 3) and res.output.attrs["tilegraph"]["model"]["declared"]["confidence"]
    outs = window_outputs(model, plan, image)  # (N, 4, h, w): the confidence last
    num, den = np.zeros((3, *plan.out_shape)), np.zeros(plan.out_shape)
    for w in plan.windows():
        wy = normalized_axis_weights(plan.y, w.row, "cosine")
        wx = normalized_axis_weights(plan.x, w.col, "cosine")
        oy, ox = plan.y.out_start(w.row), plan.x.out_start(w.col)
        h, v = min(wy.size, plan.out_shape[0] - oy), min(wx.size, plan.out_shape[1] - ox)
        weight = np.outer(wy[:h], wx[:v]) * outs[w.index, 3, :h, :v]
        num[:, oy : oy + h, ox : ox + v] += weight * outs[w.index, :3, :h, :v]
        den[oy : oy + h, ox : ox + v] += weight
    expected = np.moveaxis(num / den, 0, -1)
    assert np.abs(out - expected).max() * 255 < 1e-3


@pytest.mark.parametrize("mode", ["crop", "multiband", "seam", "poisson"])
def test_confidence_of_agreeing_windows_changes_nothing(tmp_path, mode):
    image = np.random.default_rng(2).random((140, 150, 4)).astype(np.float32)  # RGBA: alpha passes through
    res = run(image, tmp_path, ConfidenceModel(models.Identity(3)), tile=64, overlap=16, blend=mode)
    out = np.asarray(res.output[:])
    assert out.shape == image.shape
    assert np.abs(out - image).max() < 1e-6


def test_confidence_with_reconcile_and_integer_output(tmp_path):
    image = (smooth_gradient((150, 160)) * 255).astype(np.uint8)
    model = ConfidenceModel(models.DriftModel(seed=3))
    res = run(
        image, tmp_path, model, tile=64, overlap=16, blend="crop", reconcile="offset", output_dtype=None
    )
    assert res.output.dtype == np.uint8 and res.output.shape == (150, 160, 3)
    assert res.plan.tile_store_dtype == "float32"  # the confidence is never rounded


# ----------------------------------------------------------------------------- strips per task
def test_each_blend_task_receives_only_its_strips():
    from tilegraph.outputs.abc import Assembly
    from tilegraph.outputs.image import ImageKind
    from tilegraph.testing.seam_models import measure_strips
    from tilegraph.testing.windows import ArrayReader

    plan = make_plan(
        (300, 300), tile=64, overlap=16, channels=3, dtype="float32", blend="poisson", out_chunks=96
    )
    outputs = window_outputs(ShadedTextureModel(), plan, smooth_gradient(plan.shape))
    blender = get_blender("poisson")
    combined = measure_strips(blender, plan, ArrayReader(outputs))
    job = Assembly(
        plan=plan, context=None, blender=blender, corrections=None, results=(), inference_done=True
    )
    steps = ImageKind().assemble(job)
    strip_step = next(steps)
    assert strip_step.label == "strips" and len(strip_step.args) == len(combined.paths)
    blend_step = steps.send([combined.paths[s.a, s.b] for (s,) in strip_step.args])
    assert blend_step.label == "blend"
    for box, part in blend_step.args:
        wanted = {(s.a, s.b) for s in blender.strips_for_box(plan, box)}
        assert set(part.paths) == wanted and len(wanted) < len(combined.paths)
        assert set(part.planes) <= {i for k in wanted for i in k}


def test_new_modes_keep_a_float_store_and_declare_their_halo():
    plan = make_plan((600, 600), tile=256, overlap=64, channels=3, dtype="uint8", blend="multiband")
    for mode in (*NEW_MODES, "cosine"):
        b = get_blender(mode)
        assert b.store_dtype("uint8", corrected=False) == "float32"
    mb = get_blender("multiband")
    assert mb.halo(plan) >= 64 and set(mb.windows_for_box(plan, (100, 120, 100, 120))) >= {0, 1, 3, 4}


# ----------------------------------------------------------------------------- the command line
def test_qa_measures_any_array_on_an_assumed_grid(tmp_path, capsys):
    from scipy.ndimage import gaussian_filter

    from tilegraph.cli import main

    image = gaussian_filter(np.random.default_rng(0).random((300, 320, 3)), (2, 2, 0)).astype(np.float32)
    np.save(tmp_path / "blur.npy", image)
    for blend in ("crop", "cosine", "poisson"):
        code = main([
            "qa", str(tmp_path / "blur.npy"), "--tile", "128", "--overlap", "32", "--blend", blend,
            "--out", str(tmp_path / blend),
        ])  # fmt: skip
        assert code == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["worst_seam_step_dn"] is not None and summary["worst_seam_step_dn"] < 0.5
    assert main(["qa", str(tmp_path / "blur.npy")]) == 2
    assert "--tile" in capsys.readouterr().err


def test_qa_compare_modes_prints_a_table(tmp_path, capsys):
    import tifffile

    from tilegraph.cli import main

    image = (smooth_gradient((200, 210)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "src.tif", image)
    target = "tilegraph.testing.models:make_local_conv"
    run(str(tmp_path / "src.tif"), tmp_path, target, tile=64, overlap=16, output_dtype=None)
    code = main([
        "qa", str(tmp_path / "out.zarr"), "--model", target,
        "--compare-modes", "--windows", "2", "--out", str(tmp_path / "qa"),
    ])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    table = text[text.index("mode ") :].splitlines()
    assert "texture" in table[0] and "step DN" in table[0] and "gradient" in table[0] and "time s" in table[0]
    rows = {line[:32].strip(): line[32:].split() for line in table[2:]}
    assert {"crop", "cosine", "multiband", "seam", "poisson"} <= set(rows)
    exact = [v for label, v in rows.items() if "reconcile" not in label]
    assert all(float(v[3]) <= 1.0 for v in exact)  # an exact model: every mode within rounding of whole
