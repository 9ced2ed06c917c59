"""Instance labels stitched across windows (issue 14): equal to whole-image labelling up to renumbering."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tilegraph.errors import InputError, ModelOutputError
from tilegraph.outputs.labels import (
    assemble_chunk,
    compact_labels,
    label_dtype,
    match_windows,
    neighbour_pairs,
    prepare_window,
    resolve_labels,
)
from tilegraph.plan import make_plan
from tilegraph.testing.task_models import ConnectedComponents, separate_objects_image


def _windows(image, plan):
    (top, bottom), (left, right) = plan.pad_widths
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode=plan.pad_mode)
    for win in plan.windows():
        block = padded[win.y0 + top : win.y1 + top, win.x0 + left : win.x1 + left]
        yield win, block.astype(np.float32).transpose(2, 0, 1)[None] / 255


def stitch(image, plan, model, *, perturb=None, **options):
    """The labels pipeline in-process: per window, per pair, client, per chunk."""
    store, infos = {}, []
    for win, batch in _windows(image, plan):
        labels = model(batch)[0]
        if perturb is not None:
            labels = perturb(win.index, labels)
        local, info = prepare_window(labels, plan=plan, index=win.index)
        store[win.index] = local
        infos.append(info)
    matches = [match_windows(store[a], store[b], plan=plan, a=a, b=b) for a, b in neighbour_pairs(plan)]
    res = resolve_labels(infos, matches, n_windows=plan.n_windows, **options)
    out = np.zeros(plan.out_shape, res.dtype)
    for cy in range(plan.chunk_grid[0]):
        for cx in range(plan.chunk_grid[1]):
            box = plan.chunk_box(cy, cx)
            luts = res.luts(plan.windows_for_box(*box, crop=True))
            out[box[0] : box[1], box[2] : box[3]] = assemble_chunk(
                box, plan=plan, read_window=store.__getitem__, luts=luts
            )
    return out, res


def whole(image, model):
    return model(image.astype(np.float32).transpose(2, 0, 1)[None] / 255)[0, 0]


def assert_same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> None:
    assert np.array_equal(a == 0, b == 0), "background differs"
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
    pairs = pairs[pairs[:, 0] > 0]
    assert np.unique(pairs[:, 0]).size == pairs.shape[0], "a stitched label covers several objects"
    assert np.unique(pairs[:, 1]).size == pairs.shape[0], "an object got several stitched labels"


def objects_crossing_seams(ref: np.ndarray, plan) -> int:
    cuts_y = [plan.y.cut(i) for i in range(plan.grid[0] - 1)]
    cuts_x = [plan.x.cut(i) for i in range(plan.grid[1] - 1)]
    crossing = set()
    for c in cuts_y:
        crossing |= set(np.intersect1d(ref[c - 1], ref[c]).tolist())
    for c in cuts_x:
        crossing |= set(np.intersect1d(ref[:, c - 1], ref[:, c]).tolist())
    crossing.discard(0)
    return len(crossing)


PLAN: dict = {"tile": 256, "overlap": 96, "blend": "crop", "out_chunks": 300}


def test_small_objects_equal_whole_image_labelling():
    image = separate_objects_image((700, 900), n_objects=120, seed=1)
    plan = make_plan(image.shape[:2], **PLAN)
    model = ConnectedComponents()
    out, res = stitch(image, plan, model)
    ref = whole(image, model)
    assert objects_crossing_seams(ref, plan) >= 30  # many objects really cross seams
    assert_same_up_to_renumbering(out, ref)
    assert res.n_objects == ref.max() == out.max()
    assert np.array_equal(np.unique(out), np.arange(res.n_objects + 1))  # compact 0..M
    assert res.dtype == np.int32 and out.dtype == np.int32
    assert res.disagreements.size == 0 and res.unmatched_pieces == 0  # exact model: nothing to report


@pytest.mark.parametrize("connectivity", [4, 8])
def test_objects_larger_than_a_window_get_one_label(connectivity):
    image = separate_objects_image((900, 1000), n_objects=60, big=True, seed=2)
    plan = make_plan(image.shape[:2], **PLAN)
    model = ConnectedComponents(connectivity=connectivity)
    out, res = stitch(image, plan, model)
    ref = whole(image, model)
    extents = [max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndimage.find_objects(ref)]
    assert sum(e > 256 for e in extents) >= 3  # ring, spiral, snake: larger than a window
    assert max(extents) >= 900  # the snake crosses the whole width
    assert_same_up_to_renumbering(out, ref)
    assert res.n_objects == ref.max()


def test_border_report_lists_exactly_the_objects_touching_the_border():
    image = separate_objects_image((600, 700), n_objects=90, seed=4)
    plan = make_plan(image.shape[:2], **PLAN)
    model = ConnectedComponents()
    out, res = stitch(image, plan, model)
    edge = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
    expected = np.unique(edge[edge > 0])
    assert expected.size >= 3
    assert np.array_equal(np.sort(res.border_objects), expected)
    assert res.report()["border_objects"] == expected.size


def test_disagreeing_windows_are_reported():
    image = separate_objects_image((600, 700), n_objects=90, seed=4)
    plan = make_plan(image.shape[:2], **PLAN)
    model = ConnectedComponents()
    victim = plan.grid[1] + 1  # an interior window

    def shrink(index, labels):  # one window sees thinner objects: shape disagreement in its strips
        if index != victim:
            return labels
        return np.where(ndimage.binary_erosion(labels[0] > 0, iterations=4), labels[0], 0)[None]

    _, res = stitch(image, plan, model, perturb=shrink, report_iou=0.9)
    assert res.disagreements.size > 0
    assert set(res.disagreements["window_a"]) | set(res.disagreements["window_b"]) >= {victim}
    assert np.all(res.disagreements["group_iou"] < 0.9)
    assert res.unmatched_pieces > 0  # thin pieces vanished in the victim
    assert res.report()["disagreeing_pairs"] == res.disagreements.size


def test_compact_labels_and_errors():
    arr = np.array([[0, 7, 7], [10**9, 0, 3]], np.int64)
    out, k = compact_labels(arr)
    assert k == 3 and out.dtype == np.uint32
    assert out.tolist() == [[0, 2, 2], [3, 0, 1]]
    assert compact_labels(np.array([[0.0, 2.0]]))[1] == 1
    with pytest.raises(ModelOutputError):
        compact_labels(np.array([[0, -1]]))
    with pytest.raises(ModelOutputError):
        compact_labels(np.array([[0.5, 1.0]]))
    plan = make_plan((300, 300), **PLAN)
    with pytest.raises(ModelOutputError) as err:
        prepare_window(np.zeros((1, 10, 10), np.int32), plan=plan, index=0)
    assert err.value.window == (0, 0)


def test_label_dtype_and_missing_tables():
    assert label_dtype(2**31 - 1) == np.int32
    assert label_dtype(2**31) == np.int64
    image = separate_objects_image((300, 400), n_objects=20, seed=3)
    plan = make_plan(image.shape[:2], **PLAN)
    store, infos = {}, []
    for win, batch in _windows(image, plan):
        store[win.index], info = prepare_window(ConnectedComponents()(batch)[0], plan=plan, index=win.index)
        infos.append(info)
    res = resolve_labels(infos, [], n_windows=plan.n_windows)
    with pytest.raises(InputError):
        assemble_chunk(plan.chunk_box(0, 0), plan=plan, read_window=store.__getitem__, luts={})
    with pytest.raises(InputError):
        resolve_labels(infos, [], metric="dice")
    assert res.lut(0).size == infos[0].count + 1
