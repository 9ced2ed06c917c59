"""Seam metrics that can be trusted (issue 12, item 0): steps for every blend mode, relative to what the
content does on parallel lines, with their noise floor; verdicts follow from the numbers."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from tilegraph.blend import get_blender
from tilegraph.plan import make_plan
from tilegraph.quality.metrics import seam_metrics
from tilegraph.quality.report import summary_rows

torch = pytest.importorskip("torch")
skimage = pytest.importorskip("skimage")
models = pytest.importorskip("tilegraph.testing.models")
from tilegraph.testing.reference import whole_image_inference  # noqa: E402
from tilegraph.testing.seam_models import (  # noqa: E402
    ArrayReader,
    band_steps,
    blend_image,
    measure_strips,
    window_outputs,
)

BLENDS = ("crop", "linear", "cosine", "gaussian", "multiband", "seam", "poisson")
STEPPED = BLENDS[:-1]  # poisson leaves no step to measure on the drift model
GEOMETRIES = ((256, 64), (128, 32))


def textured_gradient(h: int, w: int, seed: int = 0) -> np.ndarray:
    y = (np.arange(h)[:, None] + 0.5) / h
    x = (np.arange(w)[None, :] + 0.5) / w
    base = np.stack(
        [0.2 + 0.5 * y + 0.2 * x, 0.3 + 0.3 * x + 0.1 * np.sin(3 * y), 0.8 - 0.4 * y + 0.1 * x * y], -1
    )
    noise = gaussian_filter(np.random.default_rng(seed).standard_normal((h, w, 1)), (1.2, 1.2, 0))
    return (base + 0.006 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def seam_free_outputs():
    """Whole-image results (no seams at all) of three operators on photographs shipped in scikit-image."""
    from skimage import data, exposure, filters, img_as_float, restoration

    out = {}
    for name in ("astronaut", "coffee", "chelsea"):
        img = img_as_float(getattr(data, name)()).astype(np.float32)
        out[name, "blur"] = filters.gaussian(img, sigma=1.5, channel_axis=-1).astype(np.float32)
        out[name, "clahe"] = exposure.equalize_adapthist(img).astype(np.float32)
        out[name, "tv"] = restoration.denoise_tv_chambolle(img, weight=0.05, channel_axis=-1).astype(
            np.float32
        )
    return out


@pytest.mark.parametrize("blend", BLENDS)
def test_seam_free_outputs_report_no_step(seam_free_outputs, blend):
    worst = 0.0
    for (name, op), image in seam_free_outputs.items():
        for tile, overlap in GEOMETRIES:
            plan = make_plan(
                image.shape[:2], tile=tile, overlap=overlap, channels=3, dtype="float32", blend=blend
            )
            m = seam_metrics(image, plan, seam_profile=partial(get_blender(blend).seam_profile, plan))
            seams = m["seams"]
            assert seams["count"] == seams["expected"] > 0, (name, op, tile)  # every seam measured, no "n/a"
            assert seams["worst_step"] is not None and seams["noise_floor"] is not None
            assert seams["worst_step"] < 0.5, (name, op, tile, seams["worst"][0])
            assert seams["visible"] == 0
            rows = {r["key"]: r for r in summary_rows(m)}
            assert rows["seams.worst_step"]["ok"] is True and rows["seams.visible"]["ok"] is True
            assert rows["seams.worst_step"]["text"] != "n/a"
            worst = max(worst, seams["worst_step"])
    print(f"{blend}: worst reported step on seam-free outputs {worst:.3f} DN")


@pytest.fixture(scope="module")
def drift_case():
    torch.set_num_threads(1)
    n, tile, overlap = 8, 64, 16
    size = (n - 1) * (tile - overlap) + tile
    image = textured_gradient(size, size)
    model = models.DriftModel(seed=0)
    return image, model, tile, overlap


@pytest.mark.parametrize("blend", STEPPED)
def test_drift_step_matches_whole_image_reference(drift_case, blend):
    image, model, tile, overlap = drift_case
    plan = make_plan(image.shape[:2], tile=tile, overlap=overlap, channels=3, dtype="float32", blend=blend)
    b, read = get_blender(blend), ArrayReader(window_outputs(model, plan, image))
    out = blend_image(b, plan, read, strips=measure_strips(b, plan, read))
    truth = whole_image_inference(image, model.smooth, plan)  # the smooth filter without the drift
    # a routed cut may sit anywhere in the overlap: its step is the jump across the whole overlap
    direct = float(np.abs(band_steps(out, truth, plan, across=b.strip_pass)).max())
    m = seam_metrics(out, plan, seam_profile=partial(b.seam_profile, plan))
    qa = m["seams"]["worst_step"]
    print(f"{blend}: worst step against the whole image {direct:.3f} DN, QA {qa:.3f} DN")
    assert direct > 2.0  # the drift shows
    assert qa == pytest.approx(direct, rel=0.2)
    assert m["seams"]["visible"] > 0
    assert {r["key"]: r for r in summary_rows(m)}["seams.worst_step"]["ok"] is False


def test_exact_model_on_a_photo_reports_no_step(seam_free_outputs):
    """Crop of an exact model equals whole-image inference (a grid shift would say 0): QA must agree."""
    torch.set_num_threads(1)
    image = seam_free_outputs["astronaut", "tv"]
    plan = make_plan(image.shape[:2], tile=128, overlap=32, channels=3, dtype="float32", blend="crop")
    model = models.LocalConv()
    out = blend_image(get_blender("crop"), plan, ArrayReader(window_outputs(model, plan, image)))
    whole = whole_image_inference(image, model, plan)
    assert np.abs(out - whole).max() * 255 < 1e-3
    seams = seam_metrics(out, plan)["seams"]
    assert seams["count"] == seams["expected"] and seams["worst_step"] < 0.5 and seams["visible"] == 0


def test_real_edge_on_a_seam_is_not_a_step_but_a_planted_step_is():
    n, tile, overlap = 6, 64, 16
    size = (n - 1) * (tile - overlap) + tile
    plan = make_plan((size, size), tile=tile, overlap=overlap, channels=3, dtype="float32", blend="crop")
    image = textured_gradient(size, size, seed=3)
    row, col = plan.y.cut(2), plan.x.cut(3)
    edge = gaussian_filter((np.arange(size) >= row).astype(np.float64), 2.0)  # a soft 80 DN edge on a seam
    image = image + (80 / 255 * edge)[:, None, None].astype(np.float32)
    clean = seam_metrics(image, plan)["seams"]
    assert clean["worst_step"] < 0.5 and clean["visible"] == 0
    planted = image.copy()
    planted[:, col:] += 1.5 / 255
    found = seam_metrics(planted, plan)["seams"]
    top = found["worst"][0]
    assert (top["axis"], top["pos"]) == ("x", col)
    assert top["step"] == pytest.approx(1.5, abs=0.3)
    assert found["visible"] >= n // 2
