"""Seam metrics and the QA report (issue 5): what the metrics flag, units, block-wise reading, the page."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from tilegraph.quality.metrics import (
    delta_e2000,
    difference_metrics,
    seam_metrics,
    solar_curve,
    srgb_to_lab,
    to_dn,
)
from tilegraph.quality.report import summary_html, summary_rows, write_report
from tilegraph.testing.windows import blend_windows, grid_plan, window_outputs

torch = pytest.importorskip("torch")
models = pytest.importorskip("tilegraph.testing.models")


# ----------------------------------------------------------------------------- helpers
def textured_gradient(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with fine random texture (no structure aligned to any grid)."""
    y = (np.arange(h)[:, None] + 0.5) / h
    x = (np.arange(w)[None, :] + 0.5) / w
    base = np.stack(
        [0.2 + 0.5 * y + 0.2 * x, 0.3 + 0.3 * x + 0.1 * np.sin(3 * y), 0.8 - 0.4 * y + 0.1 * x * y], -1
    )
    noise = gaussian_filter(np.random.default_rng(seed).standard_normal((h, w, 1)), (1.2, 1.2, 0))
    return (base + 0.006 * noise).astype(np.float32)  # grain of about 0.4 DN per pixel


def tiled(plan, model, image: np.ndarray) -> np.ndarray:
    return blend_windows(plan, window_outputs(model, plan, image))


@pytest.fixture(scope="module")
def crop_case():
    torch.set_num_threads(1)
    plan = grid_plan(10, blend="crop")
    image = textured_gradient(*plan.shape)
    exact = tiled(plan, models.LocalConv(), image)
    drift = tiled(plan, models.DriftModel(seed=0), image)
    return plan, image, exact, drift


# ----------------------------------------------------------------------------- units and colour
def test_dn_units():
    assert to_dn(np.array([255], np.uint8))[0] == 255
    assert to_dn(np.array([257, 65535], np.uint16)).tolist() == [1.0, 255.0]
    np.testing.assert_allclose(to_dn(np.array([1.0, 1 / 255], np.float32)), [255.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("lab1", "lab2", "expected"),
    [  # Sharma, Wu and Dalal (2005), table 1, pairs 1, 7, 13, 17, 25
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
        ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0011), 7.2195),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
        ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ],
)
def test_delta_e2000_reference_pairs(lab1, lab2, expected):
    assert delta_e2000(np.array(lab1), np.array(lab2)) == pytest.approx(expected, abs=1e-4)
    assert delta_e2000(np.array(lab2), np.array(lab1)) == pytest.approx(expected, abs=1e-4)


def test_srgb_to_lab_anchors():
    lab = srgb_to_lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.01)
    assert lab[2, 0] == pytest.approx(53.39, abs=0.02)


def test_solar_curve_amplifies_small_steps():
    v = np.array([5 / 12, 5 / 12 + 1 / 255])  # where the 3-cycle curve is steepest
    s = solar_curve(v, cycles=3)
    assert abs(s[1] - s[0]) > 4 / 255  # slope up to 3 pi near mid-tones


# ----------------------------------------------------------------------------- what the metrics flag
def test_gradient_ratio_flags_crop_on_drift_not_exact(crop_case):
    plan, _, exact, drift = crop_case
    m_exact = seam_metrics(exact, plan)
    m_drift = seam_metrics(drift, plan)
    print(
        f"SGR exact {m_exact['gradient_ratio']['value']:.3f}, drift {m_drift['gradient_ratio']['value']:.3f}"
    )
    assert 0.9 <= m_exact["gradient_ratio"]["value"] <= 1.1
    assert m_drift["gradient_ratio"]["value"] > 1.5
    assert m_exact["seams"]["p95_step"] < 0.5 < 1.0 < m_drift["seams"]["worst_step"]
    assert m_exact["seams"]["visible"] <= 0.02 * m_exact["seams"]["count"] < m_drift["seams"]["visible"]
    assert m_drift["period"]["max_db"] > m_exact["period"]["max_db"] + 10


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_planted_one_dn_step_is_found(crop_case, dtype):
    plan, _, exact, _ = crop_case
    line = 4
    cut = plan.x.cut(line)
    planted = exact.copy()
    planted[:, cut:] += 1 / 255
    if dtype == "uint8":
        planted = np.clip(np.rint(planted * 255), 0, 255).astype(np.uint8)
    m = seam_metrics(planted, plan)
    top = m["seams"]["worst_lines"][0]
    assert (top["axis"], top["line"], top["pos"]) == ("x", line, cut)
    assert top["mean_step"] == pytest.approx(1.0, abs=0.2)
    rows = plan.grid[0]
    on_line = [s for s in m["seams"]["worst"][:rows] if s["axis"] == "x" and s["pos"] == cut]
    assert len(on_line) >= 0.8 * min(rows, len(m["seams"]["worst"]))
    assert all(abs(v["mean_step"]) < 0.35 for v in m["seams"]["worst_lines"][1:])
    assert m["seams"]["visible"] >= rows // 2


def test_texture_ratio_shows_detail_loss_of_generative_blends():
    torch.set_num_threads(1)
    model = models.GenerativeModel(amplitude=0.02)
    ratios = {}
    for blend in ("crop", "cosine"):
        plan = grid_plan(8, blend=blend)
        image = textured_gradient(*plan.shape, seed=2)
        ratios[blend] = seam_metrics(tiled(plan, model, image), plan)["texture_ratio"]["value"]
    print(f"texture ratio at seams: {ratios}")
    assert 0.9 <= ratios["crop"] <= 1.2
    assert ratios["cosine"] < 0.85  # two independent textures averaged at the overlap centre


def test_colour_drift_and_fidelity(crop_case):
    plan, image, exact, drift = crop_case
    m = seam_metrics(drift, plan, reference=image, whole=exact)
    c = m["colour"]
    assert c["max"] >= c["p95"] >= c["mean"] > 0
    assert c["neighbour"]["max"] > 0.5  # +-3 % / +-3 DN per window is visible side by side
    assert 0 <= c["tile_share"] <= 1
    f = m["fidelity"]
    assert f["max_abs_dn"] > 1 and np.isfinite(f["psnr_seam"]) and np.isfinite(f["psnr_interior"])
    same = seam_metrics(exact, plan, reference=image, whole=exact)["fidelity"]
    assert same["max_abs_dn"] == 0 and same["psnr"] == float("inf")
    # a reference at a quarter of the resolution gives nearly the same colour drift
    small = image.reshape(image.shape[0] // 4, 4, image.shape[1] // 4, 4, 3).mean((1, 3))
    m4 = seam_metrics(drift, plan, reference=small)["colour"]
    assert m4["mean"] == pytest.approx(c["mean"], abs=0.3)


def test_blockwise_reading_matches_whole_array(crop_case):
    zarr = pytest.importorskip("zarr")
    plan, image, _, drift = crop_case
    z = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=drift.shape, chunks=(100, 100, 3), dtype="float32"
    )
    z[:] = drift
    whole = seam_metrics(drift, plan, reference=image, chunk=4096)
    blocks = seam_metrics(z, plan, reference=image, chunk=120)
    assert blocks["seams"]["worst_step"] == pytest.approx(whole["seams"]["worst_step"], rel=1e-6)
    assert blocks["gradient_ratio"]["value"] == pytest.approx(whole["gradient_ratio"]["value"], rel=1e-6)
    assert blocks["texture_ratio"]["value"] == pytest.approx(whole["texture_ratio"]["value"], rel=1e-5)
    assert blocks["colour"]["p95"] == pytest.approx(whole["colour"]["p95"], rel=1e-6)
    assert blocks["period"]["max_db"] == pytest.approx(whole["period"]["max_db"], abs=1e-3)
    json.dumps(blocks)  # plain data


def test_difference_metrics():
    a = np.zeros((40, 50, 3), np.uint8)
    b = a.copy()
    b[3, 4, 1] = 2
    d = difference_metrics(a, b, chunk=16)
    assert d["max_abs_dn"] == 2 and d["psnr"] > 60
    assert difference_metrics(a, a)["psnr"] == float("inf")


# ----------------------------------------------------------------------------- the report
def test_report_json_and_html_carry_the_same_numbers(crop_case, tmp_path):
    plan, image, _, drift = crop_case
    metrics = seam_metrics(drift, plan, reference=image)
    paths = write_report(metrics, drift, plan, tmp_path, title="drift, crop")
    doc = json.loads(paths["json"].read_text())
    page = paths["html"].read_text()
    assert doc["metrics"]["seams"]["worst_step"] == pytest.approx(metrics["seams"]["worst_step"])
    for row, jrow in zip(summary_rows(metrics), doc["summary"], strict=True):
        assert jrow["key"] == row["key"] and jrow["text"] == row["text"]
        assert f"data-key='{row['key']}'" in page and f">{row['text']}<" in page
    images = [p for k, p in paths.items() if k not in ("json", "html")]
    assert {"heatmap", "seam1", "seam1_solar", "corner", "corner_solar"} <= set(paths)
    for p in images:
        assert f"report_files/{p.name}" in page
        with Image.open(p) as im:
            assert im.size[0] > 16 and im.size[1] > 16
    # the worst seam's crop through the solar curve shows more contrast than the plain crop
    with Image.open(paths["seam1"]) as a, Image.open(paths["seam1_solar"]) as b:
        assert np.asarray(b, dtype=float).std() > np.asarray(a, dtype=float).std()
    assert "<table" in summary_html(metrics, title="t")


def test_report_embedded(crop_case, tmp_path):
    plan, _, exact, _ = crop_case
    paths = write_report(seam_metrics(exact, plan), exact, plan, tmp_path, embed=True)
    assert set(paths) == {"json", "html"}
    assert paths["html"].read_text().count("src='data:image/png;base64,") >= 2


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="needs a headless Chromium (Debian package: chromium)")
def test_report_opens_in_a_real_browser(crop_case, tmp_path):
    plan, image, _, drift = crop_case
    paths = write_report(seam_metrics(drift, plan, reference=image), drift, plan, tmp_path)
    probe = (
        "<script>window.addEventListener('load',()=>{const a=Array.from(document.images);"
        "const ok=a.filter(i=>i.complete&&i.naturalWidth>0).length;"
        "document.body.setAttribute('data-imgcheck',ok+'/'+a.length);});</script></body>"
    )
    page = paths["html"].read_text()
    check = tmp_path / "check.html"
    check.write_text(page.replace("</body>", probe))
    broken = tmp_path / "broken.html"  # control: one picture missing must be noticed
    broken.write_text(
        page.replace("report_files/heatmap.png", "report_files/missing.png").replace("</body>", probe)
    )
    n_img = page.count("<img ")

    def run(*args) -> str:
        with tempfile.TemporaryDirectory() as profile:
            cmd = [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                *args,
            ]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout

    dom = run("--virtual-time-budget=5000", "--dump-dom", check.as_uri())
    assert f'data-imgcheck="{n_img}/{n_img}"' in dom
    dom = run("--virtual-time-budget=5000", "--dump-dom", broken.as_uri())
    assert f'data-imgcheck="{n_img - 1}/{n_img}"' in dom
    shot = tmp_path / "shot.png"
    run(f"--screenshot={shot}", "--window-size=1200,1600", paths["html"].as_uri())
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"), dtype=float)
    assert px.std() > 10  # not a blank page
