"""Colour reconciliation and seam metrics end to end, through ``tilegraph.run`` (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tilegraph
from tilegraph.engine.thumbnail import thumbnail_inference
from tilegraph.infer.spec import describe_model
from tilegraph.quality import seam_metrics
from tilegraph.source import open_source
from tilegraph.testing import smooth_gradient

torch = pytest.importorskip("torch")
from tilegraph.testing import models  # noqa: E402

N = 20  # 20 x 20 windows
TILE, OVERLAP = 64, 16
SIZE = (N - 1) * (TILE - OVERLAP) + TILE  # exactly N windows per axis


@pytest.fixture(scope="module")
def image():
    return smooth_gradient((SIZE, SIZE), "float32")


def _run(tmp_path, image, model, name, **kw):
    return tilegraph.run(
        image,
        tmp_path / f"{name}.zarr",
        model=model,
        tile=TILE,
        overlap=OVERLAP,
        client="inprocess",
        qa=str(tmp_path / f"{name}.qa"),
        **kw,
    )


def test_drift_model_seams_fall_below_half_a_dn(tmp_path, image):
    model = models.DriftModel(seed=3)
    raw = _run(tmp_path, image, model, "raw", blend="cosine")
    fixed = _run(tmp_path, image, model, "fixed", blend="cosine", reconcile="gain-offset")
    assert raw.plan.grid == (N, N)
    raw_step = raw.report["metrics"]["seams"]["worst_step"]
    step = fixed.report["metrics"]["seams"]["worst_step"]
    assert raw_step > 2.0, raw_step  # the drift is visible without reconciliation
    assert step < 0.5, (raw_step, step)
    colour = fixed.report["metrics"]["colour"]
    assert colour["neighbour"]["max"] < 0.5 and colour["p95"] < 2.0, colour
    meta = fixed.output.attrs["tilegraph"]["reconcile"]
    assert meta["mode"] == "gain-offset" and meta["max_abs_gain_minus_1"] > 0.005
    # the report on disk holds the same numbers
    on_disk = json.loads(open(fixed.report["paths"]["json"]).read())
    assert on_disk["metrics"]["seams"]["worst_step"] == pytest.approx(step)
    assert "<table" in fixed._repr_html_()


def test_gradient_ratio_flags_drift_but_not_an_exact_model(tmp_path, image):
    drift = _run(tmp_path, image, models.DriftModel(seed=4), "drift", blend="crop")
    exact = _run(tmp_path, image, models.LocalConv(channels=3, layers=2), "exact", blend="crop")
    assert drift.report["metrics"]["gradient_ratio"]["value"] > 1.5
    assert 0.9 <= exact.report["metrics"]["gradient_ratio"]["value"] <= 1.1


def test_instance_norm_worst_neighbour_colour_difference_halved(tmp_path):
    """A model that changes colour per window, anchored to the model run on a thumbnail of the image."""
    size = 11 * 48 + 64  # 12 x 12 windows
    image = smooth_gradient((size, size), "float32")
    model = models.InstanceNormModel(channels=3)
    kw = dict(tile=TILE, overlap=OVERLAP, client="inprocess", blend="cosine")
    raw = tilegraph.run(image, tmp_path / "a.zarr", model=model, qa=str(tmp_path / "a.qa"), **kw)
    fixed = tilegraph.run(
        image,
        tmp_path / "b.zarr",
        model=model,
        qa=str(tmp_path / "b.qa"),
        reconcile="gain-offset",
        reconcile_options={"reference": "thumbnail"},
        **kw,
    )
    # both measured against the same reference: the model run on the thumbnail (what the run anchors to)
    factor = -(-size // 256)  # the default thumbnail: longest side max(tile, 256)
    thumb = thumbnail_inference(
        open_source(image), describe_model(model), model, factor=factor, align=1, channels=3
    )
    before = seam_metrics(np.asarray(raw.output[:]), raw.plan, reference=thumb)["colour"]["neighbour"]["max"]
    after = fixed.report["metrics"]["colour"]["neighbour"]["max"]
    assert after <= 0.5 * before, (before, after)


def test_smooth_field_brings_a_seamless_output_back_without_new_steps(tmp_path, image):
    """An exact model that shifts colour everywhere: the smooth field corrects it and adds no step."""

    def warm(batch):
        return batch * np.float32(1.04) + np.float32(0.01)

    raw = _run(tmp_path, image, warm, "warm", blend="cosine")
    res = _run(
        tmp_path,
        image,
        warm,
        "field",
        blend="cosine",
        reconcile="gain-offset",
        reconcile_options={"field": True},
    )
    assert res.output.attrs["tilegraph"]["reconcile"]["options"]["field"] is True
    assert res.report["metrics"]["seams"]["worst_step"] < 0.5
    assert res.report["metrics"]["colour"]["mean"] < 0.5 * raw.report["metrics"]["colour"]["mean"]
