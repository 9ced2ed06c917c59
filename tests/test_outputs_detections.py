"""Detections merged across windows (issue 14): SAHI's NMS/NMM with IoU/IoS on a spatial grid."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from tilegraph.errors import DestinationError, InputError, ModelOutputError
from tilegraph.outputs.detections import (
    CANDIDATE_DTYPE,
    DETECTION_DTYPE,
    MERGES,
    METRICS,
    Detections,
    as_detections,
    merge_detections,
    overlapping_pairs,
    to_pandas,
    window_candidates,
    write_detections,
)
from tilegraph.plan import make_plan
from tilegraph.testing.task_models import BlobDetector, separate_objects_image


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.minimum(a["x1"][:, None], b["x1"][None]) - np.maximum(a["x0"][:, None], b["x0"][None])
    iy = np.minimum(a["y1"][:, None], b["y1"][None]) - np.maximum(a["y0"][:, None], b["y0"][None])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_a = (a["x1"] - a["x0"]) * (a["y1"] - a["y0"])
    area_b = (b["x1"] - b["x0"]) * (b["y1"] - b["y0"])
    return inter / (area_a[:, None] + area_b[None] - inter)


@pytest.fixture(scope="module")
def tiled_run():
    image = separate_objects_image((700, 900), n_objects=110, seed=3, boxes_apart=True)
    plan = make_plan(image.shape[:2], tile=256, overlap=96, blend="crop")
    model = BlobDetector()
    (top, bottom), (left, right) = plan.pad_widths
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    candidates = []
    for win in plan.windows():
        block = padded[win.y0 + top : win.y1 + top, win.x0 + left : win.x1 + left]
        batch = block.astype(np.float32).transpose(2, 0, 1)[None] / 255
        candidates.append(window_candidates(model(batch)[0], plan=plan, index=win.index))
    whole = as_detections(model(image.astype(np.float32).transpose(2, 0, 1)[None] / 255)[0])
    return candidates, whole


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("metric", METRICS)
def test_merged_boxes_match_whole_image_one_to_one(tiled_run, merge, metric):
    candidates, whole = tiled_run
    allc = np.concatenate(candidates)
    assert allc.size > 2 * whole.size and allc["cut"].sum() > 50  # many duplicates and cut boxes
    assert np.any((whole["x0"] == 0) | (whole["y0"] == 0) | (whole["x1"] == 900) | (whole["y1"] == 700))
    out = merge_detections(candidates, merge=merge, metric=metric, threshold=0.5)
    assert isinstance(out, Detections) and isinstance(out, np.ndarray) and out.dtype == DETECTION_DTYPE
    assert out.size == whole.size  # no extra, none missing
    m = iou_matrix(out, whole)
    rows, cols = linear_sum_assignment(-m)
    assert np.all(m[rows, cols] >= 0.9)
    assert np.array_equal(out["label"][rows], whole["label"][cols])
    assert np.all(np.diff(out["score"]) <= 0)  # sorted by decreasing score


def test_cut_boxes_would_be_extra_without_the_cut_rule(tiled_run):
    candidates, whole = tiled_run
    blind = np.concatenate(candidates)
    blind["cut"] = False
    out = merge_detections(blind, merge="nms", metric="iou", threshold=0.5)
    assert out.size > whole.size  # pieces of objects cut by window edges survive as extra boxes


def _reference(d: np.ndarray, merge: str, metric: str, threshold: float, agnostic: bool) -> set:
    """Sequential O(n^2) SAHI-style reference on uncut boxes."""
    n = d.size
    order = sorted(range(n), key=lambda k: (-float(d["score"][k]), k))

    def match(a: int, b: int) -> bool:
        if not agnostic and d["label"][a] != d["label"][b]:
            return False
        iw = min(d["x1"][a], d["x1"][b]) - max(d["x0"][a], d["x0"][b])
        ih = min(d["y1"][a], d["y1"][b]) - max(d["y0"][a], d["y0"][b])
        if iw <= 0 or ih <= 0:
            return False
        inter = iw * ih
        aa = (d["x1"][a] - d["x0"][a]) * (d["y1"][a] - d["y0"][a])
        ab = (d["x1"][b] - d["x0"][b]) * (d["y1"][b] - d["y0"][b])
        return inter / (aa + ab - inter if metric == "iou" else min(aa, ab)) >= threshold

    groups = []
    if merge == "nmm":
        parent = list(range(n))

        def find(k: int) -> int:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        for a in range(n):
            for b in range(a + 1, n):
                if match(a, b):
                    parent[find(a)] = find(b)
        comp: dict = {}
        for k in order:
            comp.setdefault(find(k), []).append(k)
        groups = list(comp.values())
    else:
        removed = set()
        for pos, a in enumerate(order):
            if a in removed:
                continue
            grp = [a]
            for b in order[pos + 1 :]:
                if b not in removed and match(a, b):
                    removed.add(b)
                    grp.append(b)
            groups.append(grp if merge == "greedy_nmm" else [a])
    out = set()
    for g in groups:
        head = g[0]
        out.add(
            (
                min(d["x0"][g]),
                min(d["y0"][g]),
                max(d["x1"][g]),
                max(d["y1"][g]),
                float(d["score"][head]),
                int(d["label"][head]),
            )
        )
    return out


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("agnostic", [False, True])
def test_grid_merge_equals_sequential_reference(merge, metric, agnostic):
    rng = np.random.default_rng(7)
    centres = rng.uniform(0, 400, (70, 2))
    rows = []
    for cy, cx in centres:  # clusters of jittered duplicates, some overlapping each other
        size = rng.uniform(8, 60, 2)
        for _ in range(int(rng.integers(1, 6))):
            j = rng.normal(0, 3, 4)
            rows.append(
                (
                    cx + j[0],
                    cy + j[1],
                    cx + size[1] + j[2],
                    cy + size[0] + j[3],
                    rng.random(),
                    rng.integers(0, 2),
                )
            )
    d = as_detections(np.array(rows))
    got = merge_detections(d, merge=merge, metric=metric, threshold=0.5, class_agnostic=agnostic)
    want = _reference(np.asarray(d), merge, metric, 0.5, agnostic)
    assert got.size == len(want)
    assert {tuple(r) for r in got.tolist()} == {
        (a, b, c, e, float(np.float32(s)), int(lb)) for a, b, c, e, s, lb in want
    }


def test_overlapping_pairs_equal_brute_force():
    rng = np.random.default_rng(3)
    n = 400
    x0, y0 = rng.uniform(0, 500, n), rng.uniform(0, 500, n)
    w = np.where(rng.random(n) < 0.1, rng.uniform(50, 200, n), rng.uniform(2, 30, n))  # some wide boxes
    h = rng.uniform(2, 30, n)
    x1, y1 = x0 + w, y0 + h
    for cell in (None, 7.0, 1000.0):
        i, j = overlapping_pairs(x0, y0, x1, y1, cell=cell)
        got = set(zip(i.tolist(), j.tolist(), strict=True))
        assert len(got) == i.size  # each pair once
        iw = np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])
        ih = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
        bi, bj = np.nonzero(np.triu((iw > 0) & (ih > 0), 1))
        assert got == set(zip(bi.tolist(), bj.tolist(), strict=True))


def test_window_candidates_shift_clip_and_flag_cuts():
    plan = make_plan((500, 600), tile=256, overlap=96)
    win = plan.window(plan.grid[1] + 1)  # row 1, col 1: interior edges on every side
    boxes = np.array(
        [
            [10, 10, 50, 50, 0.9, 1],  # whole
            [0, 20, 30, 60, 0.8, 0],  # touches the left edge
            [200, 230, 256, 250, 0.7, 0],  # touches the right edge
        ],
        np.float32,
    )
    c = window_candidates(boxes, plan=plan, index=win.index)
    assert c.dtype == CANDIDATE_DTYPE
    assert c["cut"].tolist() == [False, True, True]
    assert c["x0"][0] == win.x0 + 10 and c["y0"][0] == win.y0 + 10
    assert np.all(c["window"] == win.index)
    last = plan.n_windows - 1  # far corner window reaches into the padding
    lw = plan.window(last)
    beyond = np.array([[590 - lw.x0, 10, 256, 40, 0.5, 0], [250, 250, 256, 256, 0.5, 0]], np.float32)
    c = window_candidates(beyond, plan=plan, index=last)
    assert c.size == 1 and c["x1"][0] == 600 and not c["cut"][0]  # clipped to the image, not cut
    with pytest.raises(ModelOutputError):
        window_candidates(np.zeros((2, 5)), plan=plan, index=0)
    with pytest.raises(ModelOutputError):
        window_candidates(np.array([[5, 0, 1, 1, 0.5, 0]]), plan=plan, index=0)


def test_options_are_checked():
    d = as_detections(np.array([[0, 0, 10, 10, 0.5, 0]]))
    for bad in ({"merge": "soft"}, {"metric": "giou"}, {"threshold": 0}, {"cut_cover": 1.5}):
        with pytest.raises(InputError):
            merge_detections(d, **bad)
    assert merge_detections([], merge="nms").size == 0


def test_writers_and_pandas(tmp_path, monkeypatch):
    d = as_detections(np.array([[1.5, 2, 10, 20, 0.75, 3], [0, 0, 5, 5, 0.25, 1]]))
    path = write_detections(d, tmp_path / "boxes.csv")
    back = np.genfromtxt(path, delimiter=",", names=True)
    assert back.dtype.names == ("x0", "y0", "x1", "y1", "score", "label")
    assert np.allclose(back["x0"], d["x0"]) and np.allclose(back["score"], d["score"])
    with pytest.raises(DestinationError):
        write_detections(d, tmp_path / "boxes.csv")  # exists
    with pytest.raises(DestinationError):
        write_detections(d, tmp_path / "boxes.json")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(DestinationError, match="pyarrow"):
        write_detections(d, tmp_path / "boxes.parquet")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(InputError, match="pandas"):
        d.to_pandas()
    monkeypatch.undo()
    pd = pytest.importorskip("pandas")
    frame = to_pandas(d)
    assert list(frame.columns) == ["x0", "y0", "x1", "y1", "score", "label"] and len(frame) == 2
    pytest.importorskip("pyarrow")
    p = d.write(tmp_path / "boxes.parquet")
    assert np.allclose(pd.read_parquet(p)["y1"].to_numpy(), d["y1"])
