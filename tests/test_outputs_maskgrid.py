"""Mask-aware grids (issue 14): offsets that cut the fewest masked objects, windows that touch the mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tilegraph.errors import InputError
from tilegraph.outputs.maskgrid import choose_grid, shifted_plan, windows_touching
from tilegraph.plan import make_plan
from tilegraph.testing.task_models import separate_objects_image

F = 4  # thumbnail factor


@pytest.fixture(scope="module")
def masks():
    # objects (some cut by the region's border) crowded into one region of the image, like a subject
    region = separate_objects_image((210, 250), n_objects=400, size_range=(10, 50), gap=1, seed=5, channels=1)
    thumb = np.zeros((300, 360), bool)
    thumb[20:230, 30:280] = region[..., 0] > 127
    full = np.repeat(np.repeat(thumb, F, 0), F, 1)  # the image-resolution mask the thumbnail stands for
    return thumb, full


def cut_objects(labels: np.ndarray, plan, offset: int, axis: str) -> tuple[set, list]:
    """Objects with pixels on both sides of each seam, from full-resolution labels (independent check)."""
    size = labels.shape[0] if axis == "y" else labels.shape[1]
    shifted = make_plan((size + offset, 8), tile=plan.tile[0], overlap=plan.overlap[0])
    cut, per = set(), []
    for i in range(shifted.y.count - 1):
        c = shifted.y.cut(i) - offset
        if c >= size:
            continue
        a, b = (labels[c - 1], labels[c]) if axis == "y" else (labels[:, c - 1], labels[:, c])
        s = set(np.intersect1d(a[a > 0], b[b > 0]).tolist())
        cut |= s
        per.append(len(s))
    return cut, per


def test_offsets_minimise_cut_objects_and_seams_report_crossings(masks):
    thumb, full = masks
    assert 0.15 <= full.mean() <= 0.3  # about 20 % of the image is masked
    plan = make_plan(full.shape, tile=256, overlap=64, blend="crop")
    grid = choose_grid(thumb, plan=plan)
    labels, n = ndimage.label(full, structure=np.ones((3, 3), bool))
    assert grid.objects == n
    total_cut = set()
    for k, axis in enumerate(("y", "x")):
        offsets, cost = grid.costs[axis]
        brute = np.array([len(cut_objects(labels, plan, int(o), axis)[0]) for o in offsets])
        assert np.array_equal(cost, brute)  # every candidate offset evaluated exactly
        chosen = grid.offset[k]
        assert brute[list(offsets).index(chosen)] == brute.min()
        cut, per = cut_objects(labels, plan, chosen, axis)
        assert [s.crossings for s in grid.seams if s.axis == axis] == per
        total_cut |= cut
    assert grid.objects_cut == len(total_cut)
    unshifted = cut_objects(labels, plan, 0, "y")[0] | cut_objects(labels, plan, 0, "x")[0]
    assert grid.objects_cut_unshifted == len(unshifted)
    assert grid.objects_cut < grid.objects_cut_unshifted  # the shift helps on this mask


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_only_windows_touching_the_mask_run(masks, blend):
    thumb, full = masks
    plan = make_plan(full.shape, tile=256, overlap=64, blend=blend)
    grid = choose_grid(thumb, plan=plan)
    run = grid.plan
    assert run.shape == plan.shape and run.origin == (-grid.offset[0], -grid.offset[1])
    expected = []
    for w in run.windows():
        (y0, y1), (x0, x1) = (
            (run.y.keep(w.row), run.x.keep(w.col))
            if blend == "crop"
            else (run.y.footprint(w.row), run.x.footprint(w.col))
        )
        if full[max(0, y0) : y1, max(0, x0) : x1].any():
            expected.append(w.index)
    assert grid.windows.tolist() == expected
    assert 0 < grid.windows.size < run.n_windows and grid.skipped == run.n_windows - len(expected)
    assert grid.report()["windows_run"] == len(expected)


def test_empty_mask_and_alignment():
    plan = make_plan((512, 640), tile=128, overlap=32, model_stride=8, blend="crop")
    grid = choose_grid(np.zeros((64, 80), bool), plan=plan)
    assert grid.offset == (0, 0) and grid.objects == 0 and grid.windows.size == 0
    mask = np.zeros((64, 80), bool)
    mask[10:14, 10:40] = True
    grid = choose_grid(mask, plan=plan)
    assert all(o % 8 == 0 for o in grid.offset)
    assert all(o % 8 == 0 for o in grid.costs["y"][0])
    with pytest.raises(InputError):
        shifted_plan(plan, (3, 0))
    assert windows_touching(mask, plan=plan).size > 0
