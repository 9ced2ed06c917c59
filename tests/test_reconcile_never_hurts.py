"""Colour reconciliation that never makes things worse (issue 11, part B), judged against the truth.

An in-process driver does what the engine does: every window's output is computed by the model, its
statistics by :func:`~tilegraph.reconcile.stats.window_stats` (the reference chosen by
:func:`~tilegraph.quality.reference.choose_reference`), one :func:`~tilegraph.reconcile.solve.solve_global`
on the client, and the output blended with :func:`~tilegraph.blend.merge.blend_box` and the corrections'
transform. The truth is whole-image inference of the same model, never the reference the solve aimed at.
"""

from __future__ import annotations

import numpy as np
import pytest

from tilegraph._cast import to_output_dtype
from tilegraph.blend.merge import blend_box
from tilegraph.plan import make_plan
from tilegraph.quality.reference import choose_reference
from tilegraph.reconcile.reference import reference_region, thumbnail_sigma
from tilegraph.reconcile.solve import RECOMMENDED, solve_global
from tilegraph.reconcile.stats import pairs_from_windows, window_stats
from tilegraph.testing import gradient_photo, smooth_gradient

torch = pytest.importorskip("torch")

from tilegraph.infer import normsync as ns  # noqa: E402
from tilegraph.testing import models  # noqa: E402
from tilegraph.testing.norm_models import block_error_dn, block_step_dn  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the in-process driver
def run(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def window_outputs(model, image: np.ndarray, plan) -> np.ndarray:
    """Every window's output ``(N, C', h, w)``; integer images reach the model in [0, 1]."""
    return ns.tiled_windows(model, image, plan)


def window_inputs(image: np.ndarray, plan) -> np.ndarray:
    """Every window's input at the output scale (scale 1 here), float in [0, 1]: the "input" reference."""
    py, px = plan.padded_shape
    h, w = image.shape[:2]
    pad = np.pad(image, ((0, py - h), (0, px - w), (0, 0)), mode=plan.pad_mode)
    f = np.float32(1 / np.iinfo(image.dtype).max) if image.dtype.kind == "u" else np.float32(1)
    return np.stack(
        [np.moveaxis(pad[v.y0 : v.y1, v.x0 : v.x1], -1, 0).astype(np.float32) * f for v in plan.windows()]
    )


def reconcile(model, image, plan, outputs, *, mode="gain-offset", reference="auto", thumb_side=256, **solve):
    """Statistics per window, the reference chosen by measurement, one global solve. Returns (corrections, choice)."""
    thumb_in, factor = ns.thumbnail(image, size=max(thumb_side, *plan.window_shape))
    thumb_out = np.moveaxis(run(model, np.moveaxis(thumb_in, -1, 0)[None])[0], 0, -1)
    choice = choose_reference(thumb_out, thumb_in) if reference == "auto" else None
    ref = choice.reference if choice is not None else reference
    inputs = window_inputs(image, plan) if ref == "input" else None
    stats = []
    for i in range(plan.n_windows):
        if ref == "thumbnail":
            r, sig = reference_region(plan, i, thumb_out, factor), thumbnail_sigma(factor)
        else:
            r, sig = (None if inputs is None else inputs[i]), None
        stats.append(window_stats(plan, i, outputs[i], r, ref_sigma=sig))
    refs = [s.ref for s in stats if s.ref is not None]
    opts = {**RECOMMENDED, **solve}
    return solve_global(plan, pairs_from_windows(plan, stats), refs, mode=mode, **opts), choice


def blend(plan, outputs, corrections=None) -> np.ndarray:
    h, w = plan.out_shape
    tr = None if corrections is None else corrections.transform
    return blend_box(plan, 0, h, 0, w, lambda i, r, c: outputs[i][:, r, c], transform=tr)


def whole(model, image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32) / (np.iinfo(image.dtype).max if image.dtype.kind == "u" else 1)
    return np.moveaxis(run(model, np.moveaxis(x, -1, 0)[None])[0], 0, -1)


# ----------------------------------------------------------------------------- windows that agree
@pytest.mark.parametrize("mode", ["offset", "gain-offset"])
@pytest.mark.parametrize(("tile", "overlap", "size"), [(256, 64, 1000), (64, 16, 600)])
def test_identity_model_is_left_alone(mode, tile, overlap, size):
    """Textured uint8 image, identity model: at most 1 DN change, mean under 0.01 DN, nothing clipped."""
    image = gradient_photo((size, size), "uint8", seed=tile)
    plan = make_plan(
        (size, size), tile=tile, overlap=overlap, channels=3, dtype="uint8", blend="cosine", reconcile=mode
    )
    assert plan.padded_shape != (size, size)  # the far-edge padding is exercised too
    model = models.Identity()
    outputs = window_outputs(model, image, plan)
    corr, choice = reconcile(model, image, plan, outputs, mode=mode)
    assert choice.reference == "input" and choice.difference < 1e-6
    out, clipped = to_output_dtype(blend(plan, outputs, corr), "uint8")
    diff = np.abs(out.astype(np.int16) - image.astype(np.int16))
    print(
        f"{mode} {tile}/{overlap}: max {diff.max()} DN, mean {diff.mean():.4f} DN, clipped {clipped}, {corr.info}"
    )
    assert diff.max() <= 1 and diff.mean() < 0.01 and clipped == 0
    # windows that agree within noise (float rounding of another device) ask for no correction either
    rng = np.random.default_rng(0)
    noisy = outputs + rng.normal(0, 1e-7, outputs.shape).astype(np.float32)
    corr2, _ = reconcile(model, image, plan, noisy, mode=mode, reference="input")
    assert np.all(corr2.gain == 1.0) and np.all(corr2.offset == 0.0), corr2.info


def test_exact_colour_changing_model_is_not_corrected():
    """An exact model that changes colours: auto picks the thumbnail, yet consistent windows stay as they are."""
    image = gradient_photo((600, 600), "float32", seed=3)
    plan = make_plan((600, 600), tile=128, overlap=32, channels=3, dtype="float32", blend="cosine")
    model = models.LocalConv(channels=3, layers=2)
    outputs = window_outputs(model, image, plan)
    corr, choice = reconcile(model, image, plan, outputs)
    assert choice.reference == "thumbnail" and choice.difference > 1.0  # the model does change colours
    assert np.all(corr.gain == 1.0) and np.all(corr.offset == 0.0), corr.info
    np.testing.assert_array_equal(blend(plan, outputs, corr), blend(plan, outputs))


def test_synced_windows_need_no_reconciliation():
    """Reconciliation composes with norm_sync: on exactly synced windows it changes nothing."""
    image = gradient_photo((512, 512), "float32", seed=5)
    plan = make_plan((512, 512), tile=128, overlap=32, channels=3, dtype="float32", blend="cosine")
    model = models.InstanceNormModel()
    stats, _ = ns.exact_stats(model, image, plan)
    outputs = ns.tiled_windows(model, image, plan, stats=stats)
    corr, _ = reconcile(model, image, plan, outputs)
    assert np.all(corr.gain == 1.0) and np.all(corr.offset == 0.0), corr.info


# ----------------------------------------------------------------------------- the reference
def test_reference_chosen_by_measurement():
    image = smooth_gradient((256, 256))
    x = np.moveaxis(image, -1, 0)[None]
    keep = choose_reference(image, image)
    assert keep.reference == "input" and keep.difference == 0.0 and keep.metric == "dE2000"
    inorm = np.moveaxis(run(models.InstanceNormModel(), x)[0], 0, -1)
    change = choose_reference(inorm, image)
    assert change.reference == "thumbnail" and change.difference > 1.0
    assert "differs from the input by" in change.reason and change.to_dict()["reference"] == "thumbnail"
    slight = choose_reference(image + np.float32(0.3 / 255), image)  # 0.3 DN: below 1 dE2000
    assert slight.reference == "input" and 0 < slight.difference < 1.0
    up = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # a x2 model's output: compared on the input grid
    assert choose_reference(up, image).difference < 1e-9
    assert choose_reference(up[:, :, ::-1], image).reference == "thumbnail"
    grey = choose_reference(image[..., :1], image)
    assert (
        grey.reference == "thumbnail" and np.isnan(grey.difference) and grey.to_dict()["difference"] is None
    )


# ----------------------------------------------------------------------------- a colour-changing model
def test_instance_norm_default_reconcile_beats_no_reconcile():
    """InstanceNorm model, cosine, tile 256, overlap 64, default options (auto reference, regression anchors).

    Worst 128-px neighbour step at most 0.6 x and worst 64-px block error not above no reconciliation's, both
    against whole-image inference.
    """
    size = 1024
    image = gradient_photo((size, size), "float32")
    plan = make_plan(
        (size, size),
        tile=256,
        overlap=64,
        channels=3,
        dtype="float32",
        blend="cosine",
        reconcile="gain-offset",
    )
    model = models.InstanceNormModel()
    truth = whole(model, image)
    outputs = window_outputs(model, image, plan)
    raw = blend(plan, outputs)
    corr, choice = reconcile(model, image, plan, outputs)
    fixed = blend(plan, outputs, corr)
    old, _ = reconcile(model, image, plan, outputs, reference="input", anchor_fit="moments", anchor=1.0)
    before = blend(plan, outputs, old)
    figs = {
        name: (block_step_dn(img, truth, block=128), block_error_dn(img, truth, block=64))
        for name, img in (("none", raw), ("default", fixed), ("input anchor, moments", before))
    }
    print(
        f"reference {choice.reference} ({choice.difference:.2f} dE2000); "
        + "; ".join(f"{k}: step {s:.2f} DN, block error {e:.2f} DN" for k, (s, e) in figs.items())
    )
    assert choice.reference == "thumbnail"
    assert figs["default"][0] <= 0.6 * figs["none"][0]
    assert figs["default"][1] <= figs["none"][1]


@pytest.mark.parametrize("name", ["photo", "smooth"])
def test_without_reference_it_never_hurts(name):
    """``reference=None``: windows anchored to themselves, seams fixed, colours not moved away from the model.

    Worst 128-px step and worst 64-px block error no worse than without reconciliation (5 % slack on the
    step); the pairs-only solve this replaces made both several times worse.
    """
    image = gradient_photo((1024, 1024), "float32") if name == "photo" else smooth_gradient((1024, 1024))
    plan = make_plan((1024, 1024), tile=256, overlap=64, channels=3, dtype="float32", blend="cosine")
    model = models.InstanceNormModel()
    truth = whole(model, image)
    outputs = window_outputs(model, image, plan)
    corr, _ = reconcile(model, image, plan, outputs, reference=None)
    assert corr.info["self_anchored"] and corr.info["anchors"] == plan.n_windows
    raw, fixed = blend(plan, outputs), blend(plan, outputs, corr)
    s0, s1 = block_step_dn(raw, truth, block=128), block_step_dn(fixed, truth, block=128)
    e0, e1 = block_error_dn(raw, truth, block=64), block_error_dn(fixed, truth, block=64)
    print(f"{name}, no reference: step {s0:.2f} -> {s1:.2f} DN, block error {e0:.2f} -> {e1:.2f} DN")
    assert np.ptp(corr.gain) > 1e-3  # the pairs did ask for corrections
    assert s1 <= 1.05 * s0 and e1 <= e0
