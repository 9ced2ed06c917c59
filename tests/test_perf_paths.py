"""The fast paths of issue 13 give the same pixels as the general ones."""

from __future__ import annotations

import numpy as np
import pytest

import tilegraph
from tilegraph.testing import models


@pytest.mark.parametrize("scale", [1, 2])
def test_direct_crop_equals_the_tile_store_path_and_the_whole_image(tmp_path, scale):
    image = np.random.default_rng(0).integers(0, 65536, (170, 230, 3), dtype=np.uint16)
    model = models.LocalConv(channels=3, layers=2) if scale == 1 else models.Upscaler(scale=2)
    direct = tilegraph.run(
        image, tmp_path / "d.zarr", model=model, tile=64, overlap=16, blend="crop", client="inprocess"
    )
    assert direct.extra.get("direct_crop") is True
    assert direct.output.chunks[:2] == (48 * scale, 48 * scale)  # one stride at the output scale
    stored = tilegraph.run(
        image,
        tmp_path / "s.zarr",
        model=model,
        tile=64,
        overlap=16,
        blend="crop",
        out_chunks=100,
        client="inprocess",
    )
    assert "direct_crop" not in stored.extra
    np.testing.assert_array_equal(np.asarray(direct.output[:]), np.asarray(stored.output[:]))
    for key in ("read_mp_per_core_s", "model_mp_per_core_s", "write_mp_per_core_s"):
        assert direct.timings[key] > 0
    assert "blend_mp_per_core_s" not in direct.timings and stored.timings["blend_mp_per_core_s"] > 0


def test_direct_crop_clipped_counts_and_a_bad_window_is_named(tmp_path):
    from tilegraph.errors import ModelOutputError

    image = np.full((100, 100, 3), 200, np.uint8)
    res = tilegraph.run(
        image,
        tmp_path / "c.zarr",
        model=lambda b: b * 2,
        tile=48,
        overlap=16,
        blend="crop",
        client="inprocess",
    )
    assert res.extra["direct_crop"] and res.clipped == 100 * 100 * 3
    with pytest.raises(ModelOutputError) as info:
        tilegraph.run(
            image,
            tmp_path / "n.zarr",
            model=models.NaNModel(),
            tile=48,
            overlap=16,
            blend="crop",
            client="inprocess",
        )
    assert info.value.window is not None


def test_huge_finite_outputs_clip_and_are_not_called_nan(tmp_path):
    """Finiteness is read from the scaled window extremes; a finite value that overflows when scaled still clips."""
    image = np.zeros((40, 40, 3), np.uint8)
    res = tilegraph.run(
        image,
        tmp_path / "h.zarr",
        model=lambda b: b + 1e37,
        tile=24,
        overlap=8,
        blend="crop",
        client="inprocess",
    )
    assert res.clipped == 40 * 40 * 3 and (np.asarray(res.output[:]) == 255).all()


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge", "constant"])
def test_padded_reads_by_runs_equal_the_index_map(mode):
    """Windows reaching into the padding are copied as runs of slices; every pixel where numpy.pad puts it."""
    from tilegraph.source.array_source import ArraySource
    from tilegraph.source.padding import pad_indices, read_padded

    rng = np.random.default_rng(1)
    checked = 0
    for shape in [(37, 41, 3), (5, 3, 1), (1, 1, 2), (100, 7, 3), (2, 9, 1)]:
        image = rng.integers(0, 255, shape).astype(np.uint8)
        for _ in range(30):
            y0, x0 = int(rng.integers(-30, shape[0])), int(rng.integers(-30, shape[1]))
            y1, x1 = y0 + int(rng.integers(1, 80)), x0 + int(rng.integers(1, 80))
            iy, ix = pad_indices(y0, y1, shape[0], mode), pad_indices(x0, x1, shape[1], mode)
            if not (iy >= 0).any() or not (ix >= 0).any():
                continue
            expected = np.zeros((y1 - y0, x1 - x0, shape[2]), np.uint8)
            my, mx = iy >= 0, ix >= 0
            expected[np.ix_(my, mx)] = image[np.ix_(iy[my], ix[mx])]
            np.testing.assert_array_equal(read_padded(ArraySource(image), y0, y1, x0, x1, mode), expected)
            checked += 1
    assert checked > 50
