"""Output kinds through ``tilegraph.run`` (issue 14): labels, detections, probabilities, diff-merge, masks.

Every result is judged against the truth: the same model run on the whole image (the task models'
outputs depend only on the pixels they see, so whole-image inference is exact), never against the
stitching's own intermediate results.
"""

from __future__ import annotations

import csv
import uuid

import numpy as np
import pytest
import zarr
from scipy import ndimage

import tilegraph
from tilegraph._cast import to_output_dtype
from tilegraph.errors import DestinationError, InputError
from tilegraph.options import DiffMergeOptions
from tilegraph.outputs.diffmerge import band_split, change_map, change_mask
from tilegraph.outputs.labels_kind import labels_dtype
from tilegraph.plan import make_plan
from tilegraph.testing.images import gradient_photo
from tilegraph.testing.task_models import (
    BlobDetector,
    ColourEdit,
    ConnectedComponents,
    PixelClassifier,
    band_edge_steps,
    separate_objects_image,
)

RUN: dict = {"tile": 256, "overlap": 96, "client": "inprocess"}


def whole_image(model, image: np.ndarray):
    """The model on the whole image (the truth a tiled run must reproduce)."""
    return model(image.astype(np.float32).transpose(2, 0, 1)[None] / np.float32(np.iinfo(image.dtype).max))


# --------------------------------------------------------------------------- labels
def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> None:
    assert np.array_equal(a == 0, b == 0), "background differs"
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
    pairs = pairs[pairs[:, 0] > 0]
    assert np.unique(pairs[:, 0]).size == pairs.shape[0], "a stitched label covers several objects"
    assert np.unique(pairs[:, 1]).size == pairs.shape[0], "an object got several stitched labels"


def objects_crossing_seams(ref: np.ndarray, plan) -> int:
    crossing: set = set()
    for i in range(plan.grid[0] - 1):
        c = plan.y.cut(i)
        crossing |= set(np.intersect1d(ref[c - 1], ref[c]).tolist())
    for i in range(plan.grid[1] - 1):
        c = plan.x.cut(i)
        crossing |= set(np.intersect1d(ref[:, c - 1], ref[:, c]).tolist())
    crossing.discard(0)
    return len(crossing)


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_labels_equal_whole_image_labelling(tmp_path, blend):
    image = separate_objects_image((700, 900), n_objects=120, seed=1)
    model = ConnectedComponents()
    res = tilegraph.run(image, tmp_path / "labels.zarr", model=model, task="labels", blend=blend, **RUN)
    out = np.asarray(res.output)
    ref = whole_image(model, image)[0, 0]
    assert out.dtype == np.int32 and out.shape == ref.shape
    assert objects_crossing_seams(ref, res.plan) >= 30  # many objects really cross seams
    same_up_to_renumbering(out, ref)
    assert np.array_equal(np.unique(out), np.arange(ref.max() + 1))  # one label per object, 1..M
    report = res.extra["labels"]
    border = {int(v) for v in np.concatenate([ref[0], ref[-1], ref[:, 0], ref[:, -1]]) if v}
    assert report["objects"] == ref.max() and report["border_objects"] == len(border) > 0
    assert report["disagreeing_pairs"] == 0  # the model is consistent across windows
    attrs = zarr.open_array(res.path).attrs["tilegraph"]
    assert attrs["labels"]["objects"] == ref.max() and attrs["complete"] is True


@pytest.mark.parametrize("connectivity", [4, 8])
def test_labels_of_objects_larger_than_a_window(tmp_path, connectivity):
    image = separate_objects_image((900, 1000), n_objects=60, big=True, seed=2)
    model = ConnectedComponents(connectivity=connectivity)
    res = tilegraph.run(image, tmp_path / "big.zarr", model=model, task="labels", blend="crop", **RUN)
    out = np.asarray(res.output)
    ref = whole_image(model, image)[0, 0]
    sizes = ndimage.find_objects(ref)
    assert (
        max(max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in sizes) > 2 * 256
    )  # larger than a window
    same_up_to_renumbering(out, ref)


def test_labels_dtype_and_refusals(tmp_path):
    small = make_plan((1000, 1000), tile=256, overlap=32)
    assert labels_dtype(small) == "int32"
    huge = make_plan((300_000, 300_000), tile=1024, overlap=64)  # could hold more labels than int32 counts
    assert labels_dtype(huge) == "int64" and labels_dtype(huge, "int32") == "int32"
    image = separate_objects_image((200, 200), n_objects=5, seed=0)
    with pytest.raises(InputError, match="int32 or int64"):
        tilegraph.run(
            image, tmp_path / "x.zarr", model=ConnectedComponents(), task="labels", output_dtype="uint8"
        )
    with pytest.raises(InputError, match="writes an image"):
        tilegraph.run(image, None, model=ConnectedComponents(), task="labels")
    with pytest.raises(InputError, match="reconcile= works on float maps"):
        tilegraph.run(
            image, tmp_path / "r.zarr", model=ConnectedComponents(), task="labels", reconcile="offset"
        )
    with pytest.raises(InputError, match="tile='auto'"):
        tilegraph.run(image, None, model=BlobDetector(), task="detections", tile="auto", client="inprocess")


# --------------------------------------------------------------------------- detections
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(
        np.minimum(a["x1"][:, None], b["x1"][None]) - np.maximum(a["x0"][:, None], b["x0"][None]), 0, None
    )
    ih = np.clip(
        np.minimum(a["y1"][:, None], b["y1"][None]) - np.maximum(a["y0"][:, None], b["y0"][None]), 0, None
    )
    inter = iw * ih
    area_a = (a["x1"] - a["x0"]) * (a["y1"] - a["y0"])
    area_b = (b["x1"] - b["x0"]) * (b["y1"] - b["y0"])
    return inter / (area_a[:, None] + area_b[None] - inter)


@pytest.fixture(scope="module")
def blobs():
    image = separate_objects_image((700, 900), n_objects=110, seed=3, boxes_apart=True)
    model = BlobDetector()
    from tilegraph.outputs.detections import as_detections

    return image, model, as_detections(whole_image(model, image)[0])


@pytest.mark.parametrize(
    ("merge", "metric"), [("greedy_nmm", "ios"), ("nms", "iou"), ("nmm", "ios"), ("nms", "ios")]
)
def test_detections_match_whole_image_boxes_one_to_one(blobs, merge, metric):
    image, model, whole = blobs
    res = tilegraph.run(
        image,
        None,
        model=model,
        task="detections",
        detection_options={"merge": merge, "metric": metric},
        **RUN,
    )
    det = res.detections
    assert det.dtype.names == ("x0", "y0", "x1", "y1", "score", "label") and res.path == ""
    report = res.extra["detections"]
    assert report["candidates"] > 2 * whole.size and report["cut_candidates"] > 50  # duplicates, cut boxes
    iou = box_iou(whole, det)
    best = iou.argmax(axis=1)
    assert det.size == whole.size  # no extra boxes
    assert np.unique(best).size == whole.size  # one to one
    assert iou.max(axis=1).min() >= 0.9
    assert np.array_equal(det["label"][best], whole["label"])


def test_detections_written_as_a_table(blobs, tmp_path):
    image, model, whole = blobs
    res = tilegraph.run(image, tmp_path / "boxes.csv", model=model, task="detections", **RUN)
    with open(res.path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == res.detections.size == whole.size
    assert [float(r["x0"]) for r in rows] == res.detections["x0"].tolist()
    with pytest.raises(DestinationError, match="table"):  # an array destination for rows
        tilegraph.run(image, tmp_path / "boxes.zarr", model=model, task="detections", **RUN)
    with pytest.raises(DestinationError, match="not an image"):  # a table destination for an image
        tilegraph.run(image, tmp_path / "image.csv", model=PixelClassifier(), **RUN)
    empty = tilegraph.run(np.zeros((300, 300, 3), np.uint8), None, model=model, task="detections", **RUN)
    assert empty.detections.size == 0 and empty.detections.dtype.names[0] == "x0"


def test_full_image_pass_recovers_objects_larger_than_a_window():
    image = separate_objects_image((700, 900), n_objects=60, seed=4, big=True, boxes_apart=True)
    model = BlobDetector()
    from tilegraph.outputs.detections import as_detections

    whole = as_detections(whole_image(model, image)[0])
    big = whole[((whole["x1"] - whole["x0"]) > 256) | ((whole["y1"] - whole["y0"]) > 256)]
    assert big.size == 3
    tiles = tilegraph.run(image, None, model=model, task="detections", thumbnail=450, **RUN)
    full = tilegraph.run(
        image,
        None,
        model=model,
        task="detections",
        thumbnail=450,
        detection_options={"full_image": True},
        **RUN,
    )
    assert box_iou(big, tiles.detections).max(axis=1).max() < 0.9  # windows alone cannot see them whole
    assert box_iou(big, full.detections).max(axis=1).min() >= 0.9
    assert full.extra["detections"]["full_image_boxes"] > 0


# --------------------------------------------------------------------------- probabilities
def colourful(shape=(300, 420)) -> np.ndarray:
    rng = np.random.default_rng(7)
    small = rng.random((shape[0] // 20 + 1, shape[1] // 20 + 1, 3))
    return (ndimage.zoom(small, (20, 20, 1), order=1)[: shape[0], : shape[1]] * 255).round().astype(np.uint8)


@pytest.mark.parametrize("blend", ["cosine", "crop"])
def test_probabilities_that_tile_exactly_give_the_whole_image_argmax(tmp_path, blend):
    image = colourful()
    model = PixelClassifier(4)
    ref = model.probabilities(whole_image(lambda b: b, image))[0]
    run = dict(task="probabilities", blend=blend, tile=128, overlap=32, client="inprocess")
    probs = tilegraph.run(image, tmp_path / "p.zarr", model=model, **run)
    out = np.asarray(probs.output)
    assert out.dtype == np.float32 and out.shape == (*image.shape[:2], 4)
    assert np.abs(out - np.moveaxis(ref, 0, -1)).max() < 1e-5
    top = tilegraph.run(image, tmp_path / "a.zarr", model=model, argmax=True, **run)
    arg = np.asarray(top.output)
    truth = ref.argmax(axis=0)
    assert arg.dtype == np.uint8 and arg.shape == truth.shape
    assert np.bincount(truth.ravel(), minlength=4).min() > 5000  # every class is really there
    top2 = np.sort(ref, axis=0)[-2:]
    assert (top2[1] - top2[0]).min() > 1e-6  # no pixel where a float rounding could flip the argmax
    assert np.array_equal(arg, truth)


def bilinear(thumb: np.ndarray, shape: tuple[int, int], factor: float) -> np.ndarray:
    """Pixel-centre bilinear up-sampling of ``thumb`` ``(h, w, K)`` to ``shape``."""
    ty = np.clip((np.arange(shape[0]) + 0.5) / factor - 0.5, 0, thumb.shape[0] - 1)
    tx = np.clip((np.arange(shape[1]) + 0.5) / factor - 0.5, 0, thumb.shape[1] - 1)
    iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
    iy1, ix1 = np.minimum(iy + 1, thumb.shape[0] - 1), np.minimum(ix + 1, thumb.shape[1] - 1)
    fy, fx = (ty - iy)[:, None, None], (tx - ix)[None, :, None]
    top = thumb[iy][:, ix] * (1 - fx) + thumb[iy][:, ix1] * fx
    bottom = thumb[iy1][:, ix] * (1 - fx) + thumb[iy1][:, ix1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("mode", ["keyword", "channel"])
def test_coarse_to_fine_gives_each_window_the_upsampled_thumbnail_output(tmp_path, mode):
    image = colourful((240, 320))
    model = PixelClassifier(3, coarse=mode, mix=0.5)
    res = tilegraph.run(
        image,
        tmp_path / "c.zarr",
        model=model,
        task="probabilities",
        coarse=mode,
        thumbnail=80,
        tile=96,
        overlap=32,
        client="inprocess",
    )
    # the truth: the model on the area-averaged thumbnail (factor 4: 320 / 80), up-sampled
    f = 4
    small = image.astype(np.float64).reshape(60, f, 80, f, 3).mean(axis=(1, 3)) / 255
    x = np.moveaxis(small, -1, 0)[None].astype(np.float32)
    if mode == "channel":  # the coarse pass itself gets a flat prior
        x = np.concatenate([x, np.full((1, 3, 60, 80), 1 / 3, np.float32)], axis=1)
    thumb = np.moveaxis(model(x)[0], 0, -1)
    prior = bilinear(thumb, image.shape[:2], f)
    own = np.moveaxis(model.probabilities(whole_image(lambda b: b, image))[0], 0, -1)
    expected = 0.5 * own + 0.5 * prior
    out = np.asarray(res.output)
    assert np.abs(out - expected).max() < 1e-4
    assert np.abs(out - own).max() > 0.05  # the prior really changed the output


# --------------------------------------------------------------------------- diff-merge
CENTRE, RADIUS = (160.0, 160.0), 70.0


@pytest.fixture(scope="module")
def edited_photo():
    image = gradient_photo((420, 480), "uint8")
    yy, xx = np.mgrid[0:420, 0:480]
    image[np.hypot(yy - CENTRE[0], xx - CENTRE[1]) < RADIUS] = (220, 60, 40)  # what the model recolours
    model = ColourEdit()
    edited = np.moveaxis(whole_image(model, image)[0], 0, -1)
    return image, model, edited


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_diff_merge_keeps_the_input_bit_for_bit_outside_the_change(tmp_path, edited_photo, blend):
    image, model, edited = edited_photo
    res = tilegraph.run(
        image,
        tmp_path / "dm.zarr",
        model=model,
        diff_merge=True,
        blend=blend,
        tile=192,
        overlap=64,
        out_chunks=160,
        client="inprocess",
    )
    out = np.asarray(res.output)
    plan = res.plan
    cuts = [plan.y.cut(i) for i in range(plan.grid[0] - 1)] + [plan.x.cut(i) for i in range(plan.grid[1] - 1)]
    assert sum(CENTRE[0] - RADIUS < c < CENTRE[0] + RADIUS for c in cuts) >= 2  # the region crosses two seams
    opts = DiffMergeOptions()
    mask = change_mask(change_map(image, edited), options=opts)
    band, interior = band_split(mask, band=opts.band)
    assert 0 < mask.mean() < 0.2
    assert np.array_equal(out[~mask], image[~mask])  # outside the change mask: the input, bit for bit
    cast = to_output_dtype(edited, np.uint8)[0]
    if blend == "crop":  # the blended output is the model's output exactly
        assert np.array_equal(out[interior], cast[interior])
    else:  # blending equal values may move a float by an ulp
        assert np.abs(out[interior].astype(int) - cast[interior]).max() <= 1
    out_dn, orig_dn, model_dn = (
        out.astype(np.float64),
        image.astype(np.float64),
        edited.astype(np.float64) * 255,
    )
    outer, n_outer = band_edge_steps(out_dn, orig_dn, band, ~mask, centre=CENTRE)
    inner, n_inner = band_edge_steps(out_dn, model_dn, band, interior, centre=CENTRE)
    assert n_outer > 300 and n_inner > 300
    assert outer <= 0.5 and inner <= 0.5
    pasted = np.where(mask[..., None], cast, image).astype(np.float64)  # the check can fail: a hard paste
    assert band_edge_steps(pasted, orig_dn, band, ~mask, centre=CENTRE)[0] > 1.0


def test_diff_merge_needs_scale_one_and_the_source_dtype(tmp_path, edited_photo):
    image, model, _ = edited_photo
    with pytest.raises(InputError, match="dtype"):
        tilegraph.run(
            image,
            tmp_path / "f.zarr",
            model=model,
            diff_merge=True,
            output_dtype="float32",
            client="inprocess",
        )


# --------------------------------------------------------------------------- masks
class CountingInvert:
    """``1 - x``, counting the windows it runs on."""

    scale = 1

    def __init__(self) -> None:
        self.windows = 0
        self.nonce = uuid.uuid4().hex  # models are cached per process by content: one runner per instance

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[-1] > 64:  # not the probe
            self.windows += batch.shape[0]
        return (1 - batch).astype(np.float32)


@pytest.fixture(scope="module")
def masked_photo():
    image = gradient_photo((600, 720), "uint8")
    region = separate_objects_image((440, 560), n_objects=400, size_range=(12, 50), gap=2, seed=5, channels=1)
    mask = np.zeros((600, 720), bool)
    mask[80:520, 100:660] = region[..., 0] > 127
    return image, mask


def touching(mask: np.ndarray, plan) -> list[int]:
    """Windows whose contribution (kept box for crop, footprint otherwise) holds a masked pixel."""
    out = []
    for w in plan.windows():
        if plan.blend == "crop":
            (y0, y1), (x0, x1) = plan.y.keep(w.row), plan.x.keep(w.col)
        else:
            (y0, y1), (x0, x1) = plan.y.footprint(w.row), plan.x.footprint(w.col)
        if mask[max(0, y0) : y1, max(0, x0) : x1].any():
            out.append(w.index)
    return out


@pytest.mark.parametrize(
    ("grid", "fill", "blend"),
    [
        ("regular", "input", "cosine"),
        ("regular", 7, "crop"),
        ("mask-aware", "input", "crop"),
        ("mask-aware", 0, "cosine"),
    ],
)
def test_mask_runs_only_windows_touching_it_and_fills_outside(tmp_path, masked_photo, grid, fill, blend):
    image, mask = masked_photo
    assert 0.15 <= mask.mean() <= 0.25  # about 20 % of the image matters
    model = CountingInvert()
    res = tilegraph.run(
        image,
        tmp_path / "m.zarr",
        model=model,
        mask=mask,
        mask_fill=fill,
        grid=grid,
        blend=blend,
        tile=128,
        overlap=32,
        batch_size=1,
        client="inprocess",
    )
    out, plan = np.asarray(res.output), res.plan
    expected = touching(mask, plan)
    report = res.extra["mask"]
    assert model.windows == report["windows_run"] == len(expected) < plan.n_windows  # counted
    assert report["windows_skipped"] == plan.n_windows - len(expected)
    outside = np.broadcast_to(~mask[..., None], image.shape)
    fill_values = image if fill == "input" else np.full_like(image, fill)
    assert np.array_equal(out[outside], fill_values[outside])  # exactly the chosen fill
    assert np.array_equal(out[mask], (255 - image)[mask])  # inside: the whole-image model output
    if grid == "mask-aware":
        g = report["grid"]
        assert plan.origin == (-g["offset"][0], -g["offset"][1])
        assert g["objects_cut"] <= g["objects_cut_unshifted"]


def test_mask_from_a_callable_on_a_thumbnail(tmp_path, masked_photo):
    image, _ = masked_photo

    def bright_top_left(thumb: np.ndarray) -> np.ndarray:
        m = np.zeros(thumb.shape[:2], bool)
        m[: thumb.shape[0] // 3, : thumb.shape[1] // 3] = True
        return m

    model = CountingInvert()
    res = tilegraph.run(
        image,
        tmp_path / "c.zarr",
        model=model,
        mask=bright_top_left,
        mask_fill=0,
        tile=128,
        overlap=32,
        client="inprocess",
    )
    out = np.asarray(res.output)
    assert res.extra["mask"]["windows_run"] < res.plan.n_windows
    assert np.array_equal(out[:150, :180], 255 - image[:150, :180]) and not out[300:, 400:].any()
