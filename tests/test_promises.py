"""Promises of the README that a second reading found broken, each driven through :func:`tilegraph.run`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tilegraph
from tilegraph.testing import models, whole_image_inference


def test_rgba_model_sees_rgb_unless_it_declares_four_channels(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 4), dtype=np.uint8)
    seen: list[int] = []

    def grey(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape[1])
        return np.repeat(batch.mean(axis=1, keepdims=True), 3, axis=1)

    res = tilegraph.run(image, tmp_path / "a.zarr", model=grey, tile=32, overlap=8, client="inprocess")
    out = np.asarray(res.output[:])
    assert set(seen) == {3}  # declared nothing: RGB only
    assert out.shape == (70, 90, 4)
    np.testing.assert_array_equal(out[..., 3], image[..., 3])  # alpha passes through exactly
    expected = np.rint(image[..., :3].astype(np.float32).mean(axis=-1) / 255 * 255)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1

    def four(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape[1])
        return batch

    four.in_channels = 4  # type: ignore[attr-defined]
    seen.clear()
    res = tilegraph.run(image, tmp_path / "b.zarr", model=four, tile=32, overlap=8, client="inprocess")
    assert set(seen) == {4}
    np.testing.assert_array_equal(np.asarray(res.output[:]), image)


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_clipped_counts_only_values_the_output_keeps(tmp_path, blend):
    """A 40 x 40 x 3 image whose every output value clips: 4,800 values, overlap and padding not counted."""
    image = np.full((40, 40, 3), 100, np.uint8)

    def too_bright(batch: np.ndarray) -> np.ndarray:
        return batch + 2.0

    res = tilegraph.run(
        image, tmp_path / "c.zarr", model=too_bright, tile=24, overlap=8, blend=blend, client="inprocess"
    )
    assert res.clipped == 40 * 40 * 3
    assert res.output.attrs["tilegraph"]["clipped"] == 40 * 40 * 3
    assert (np.asarray(res.output[:]) == 255).all()


@pytest.mark.parametrize("stride", [1, 2])
def test_bare_torch_layer_is_a_model_and_its_attributes_are_not_declarations(tmp_path, stride):
    """``nn.Conv2d`` has ``stride`` (a tuple) and channel attributes describing the layer, not the model."""
    conv = torch.nn.Conv2d(3, 3, 3, padding=1, stride=stride)
    image = np.random.default_rng(1).random((64, 80, 3)).astype(np.float32)
    res = tilegraph.run(
        image, tmp_path / "d.zarr", model=conv, tile=32, overlap=8, blend="crop", client="inprocess"
    )
    assert res.plan.scale == ("1" if stride == 1 else "1/2")  # the probe measures the scale
    whole = whole_image_inference(image, conv, res.plan)
    out = np.asarray(res.output[:])
    assert out.shape == whole.shape
    if stride == 1:  # receptive radius 1 fits in half the overlap: crop is exact
        np.testing.assert_allclose(out, whole, atol=1e-5)


def test_a_declaration_of_the_wrong_type_is_named(tmp_path):
    from tilegraph.errors import ModelLoadError

    class Odd(torch.nn.Module):
        stride = (2, 2)

        def forward(self, x):
            return x

    with pytest.raises(ModelLoadError, match=r"stride attribute \(2, 2\)"):
        tilegraph.run(
            np.zeros((32, 32, 3), np.uint8),
            tmp_path / "e.zarr",
            model=Odd(),
            tile=16,
            overlap=4,
            client="inprocess",
        )
    # given explicitly, the attribute is not read
    res = tilegraph.run(
        np.zeros((32, 32, 3), np.uint8),
        tmp_path / "f.zarr",
        model=Odd(),
        tile=16,
        overlap=4,
        model_stride=1,
        client="inprocess",
    )
    assert res.plan.model_stride == 1


def test_qa_reports_psnr_against_whole_image_inference(tmp_path, capsys):
    """run(qa=True) and ``tilegraph qa --model`` both measure the tiled output against the whole-image run."""
    from tilegraph.cli import main
    from tilegraph.testing import models, smooth_gradient

    image = smooth_gradient((120, 150), "uint8")
    model = models.DriftModel(seed=1)
    res = tilegraph.run(
        image,
        tmp_path / "q.zarr",
        model=model,
        tile=48,
        overlap=16,
        blend="crop",
        qa=True,
        client="inprocess",
    )
    fid = res.report["metrics"]["fidelity"]
    assert fid is not None and fid["max_abs_dn"] > 0.5  # the drift model does not tile exactly
    assert 10 < fid["psnr"] < 80
    exact = tilegraph.run(
        image,
        tmp_path / "x.zarr",
        model=models.LocalConv(channels=3, layers=2),
        tile=48,
        overlap=16,
        blend="crop",
        qa=True,
        client="inprocess",
    )
    assert exact.report["metrics"]["fidelity"]["max_abs_dn"] == 0  # an exact model under crop: identical

    src = str(tmp_path / "src.zarr")
    import zarr

    zarr.create_array(store=src, shape=image.shape, chunks=(64, 64, 3), dtype="uint8")[:] = image
    out = str(tmp_path / "cli.zarr")
    path = "tilegraph.testing.models:make_drift_model"
    assert (
        main(
            [
                "run",
                src,
                out,
                "--model",
                path,
                "--tile",
                "48",
                "--overlap",
                "16",
                "--blend",
                "crop",
                "--inprocess",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["qa", out, "--model", path]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 10 < summary["psnr_vs_whole_db"] < 80
    assert main(["qa", out]) == 0  # without a model: says how to get the figure
    assert "--model" in json.loads(capsys.readouterr().out)["psnr_vs_whole"]


def test_thumbnail_pixels_span_factor_output_pixels_at_any_scale(tmp_path):
    """The run's thumbnail inference covers the whole output: its extent times the factor is the output's."""
    from tilegraph.testing import Stages

    image = np.random.default_rng(2).random((150, 90, 3)).astype(np.float32)
    stages = Stages(
        image, tmp_path / "t.zarr", model=models.Upscaler(scale=2), tile=64, overlap=16, thumbnail=32
    )
    run = stages.prepare()
    thumb, factor = run.thumbnails.get()
    oh, ow = run.plan.out_shape
    assert abs(thumb.shape[0] * factor - oh) < 2 * factor and abs(thumb.shape[1] * factor - ow) < 2 * factor
