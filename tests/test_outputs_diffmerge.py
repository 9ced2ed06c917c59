"""Diff-merge (issue 14): unchanged pixels bit-identical, changed interior = model, Poisson band without steps."""

from __future__ import annotations

import numpy as np
import pytest

from tilegraph._cast import to_output_dtype
from tilegraph.errors import InputError
from tilegraph.outputs.diffmerge import (
    DiffMergeOptions,
    band_split,
    change_map,
    change_mask,
    diff_merge,
    halo_box,
    merge_chunk,
)
from tilegraph.testing.images import gradient_photo
from tilegraph.testing.task_models import band_edge_steps, region_edit

SHAPE = (420, 480)
CENTRE, RADIUS = (160.0, 160.0), 70.0  # crosses the chunk seams at row 160 and column 160
CHUNK = 160


def edge_steps(out_dn, ref_dn, inner, outer, segment=32):
    """Worst coherent step (DN) across the edge between ``inner`` and ``outer`` (see ``band_edge_steps``)."""
    return band_edge_steps(out_dn, ref_dn, inner, outer, centre=CENTRE, segment=segment)


@pytest.fixture(scope="module", params=["uint8", "uint16"])
def merged(request):
    image = gradient_photo(SHAPE, request.param)
    edited = region_edit(image, center=CENTRE, radius=RADIUS, noise_dn=0.6, tint_dn=1.5)
    opts = DiffMergeOptions()
    out, stats = diff_merge(image, edited, options=opts, chunks=CHUNK)
    return image, edited, opts, out, stats


def test_outside_the_mask_bit_identical_inside_equal_to_the_model(merged):
    image, edited, opts, out, stats = merged
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    dist = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
    far = dist > RADIUS + 2 + opts.grow + 2  # beyond the changed disk, its soft edge and the mask's halo
    assert np.array_equal(out[far], image[far])
    cast = to_output_dtype(edited, image.dtype)[0]
    deep = dist < RADIUS + opts.grow - opts.band - 2  # inside the mask, away from the band
    assert np.array_equal(out[deep], cast[deep])
    mask = change_mask(change_map(image, edited), options=opts)
    band, interior = band_split(mask, band=opts.band)
    assert np.array_equal(out[~mask], image[~mask])  # everything unmasked: the input, bit for bit
    assert np.array_equal(out[interior], cast[interior])
    assert stats["mask"] == mask.sum() and stats["band"] == band.sum()
    # the mask found the disk (grown by the halo) and nothing else: the noise and tint stayed below ΔE 3
    assert not mask[far].any() and mask[dist < RADIUS + opts.grow - 1].all()


def test_band_has_no_step_along_either_edge(merged):
    image, edited, opts, out, _ = merged
    top = np.iinfo(image.dtype).max
    out_dn = out.astype(np.float64) * 255 / top
    orig_dn = image.astype(np.float64) * 255 / top
    model_dn = edited.astype(np.float64) * 255
    mask = change_mask(change_map(image, edited), options=opts)
    band, interior = band_split(mask, band=opts.band)
    outer, n_outer = edge_steps(out_dn, orig_dn, band, ~mask)
    inner, n_inner = edge_steps(out_dn, model_dn, band, interior)
    assert n_outer > 300 and n_inner > 300
    assert outer <= 0.5 and inner <= 0.5
    # the check can fail: pasting the model's pixels into the mask without the blend leaves the 1.5-DN tint
    pasted = (
        np.where(mask[..., None], to_output_dtype(edited, image.dtype)[0], image).astype(np.float64)
        * 255
        / top
    )
    assert edge_steps(pasted, orig_dn, band, ~mask)[0] > 1.0


def test_chunkwise_equals_one_chunk(merged):
    image, edited, opts, out, _ = merged
    whole, _ = diff_merge(image, edited, options=opts, chunks=max(SHAPE))
    diff = np.abs(out.astype(np.int64) - whole.astype(np.int64))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 10  # rounding of the membrane at most


def test_grey_and_float_images():
    grey = gradient_photo((200, 220), "uint16", channels=1)[..., 0]
    edited = region_edit(grey, center=(100.0, 110.0), radius=40.0, shift=(0.3,), noise_dn=0.5)[..., 0]
    out, stats = diff_merge(grey, edited, chunks=100)
    assert out.shape == grey.shape and out.dtype == grey.dtype and stats["interior"] > 0
    corner = (slice(0, 30), slice(0, 30))
    assert np.array_equal(out[corner], grey[corner])
    photo = gradient_photo((120, 140), "float32")
    edited = region_edit(photo, center=(60.0, 70.0), radius=25.0, noise_dn=0.5)
    out, _ = diff_merge(photo, edited, chunks=64)
    assert out.dtype == np.float32 and np.array_equal(out[:10, :10], photo[:10, :10])


def test_options_and_shapes_are_checked():
    with pytest.raises(InputError):
        DiffMergeOptions(band=0)
    with pytest.raises(InputError):
        DiffMergeOptions(threshold=-1)
    opts = DiffMergeOptions(band=8, grow=4, open_radius=1, close_radius=1)
    assert opts.halo == 4 * 8 + 8 + (2 + 2 + 4) + 1
    assert halo_box((100, 200, 0, 50), shape=(300, 300), options=opts) == (
        100 - opts.halo,
        200 + opts.halo,
        0,
        50 + opts.halo,
    )
    a = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(InputError):
        merge_chunk(a, a[:40], box=(0, 50, 0, 50), read_box=(0, 50, 0, 50), shape=(50, 50))
    with pytest.raises(InputError):
        diff_merge(a, np.zeros((50, 60, 3), np.float32))
    with pytest.raises(InputError):
        change_map(np.zeros((4, 4, 2)), np.zeros((4, 4, 2)))
