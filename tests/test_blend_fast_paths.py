"""The fast paths of blending: normalised separable weights, band-only weighting, float16 casts."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilegraph._cast import astype_float
from tilegraph.blend.merge import blend_box
from tilegraph.blend.windows import axis_weights, normalized_axis_weights
from tilegraph.plan import make_plan
from tilegraph.plan.grid import make_axis


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 700),
    tile=st.integers(8, 128),
    frac=st.floats(0.0, 0.5),
    mode=st.sampled_from(["linear", "cosine", "gaussian", "crop"]),
    up=st.sampled_from([Fraction(1), Fraction(2), Fraction(1, 2)]),
)
def test_normalised_weights_sum_to_one_over_the_output(size, tile, frac, mode, up):
    overlap = int(tile * frac)
    if up.denominator > 1:
        tile, overlap = tile - tile % 2, overlap - overlap % 2
    axis = make_axis(size, tile, overlap, up, up.denominator)
    total = np.zeros(axis.count * axis.out_tile + axis.out_size, np.float64)
    for i in range(axis.count):
        lo = axis.out_start(i)
        w = normalized_axis_weights(axis, i, mode)
        assert not w.flags.writeable  # cached: nobody may change it
        total[lo : lo + axis.out_tile] += w
    np.testing.assert_allclose(total[: axis.out_size], 1.0, rtol=1e-6)


@pytest.mark.parametrize("mode", ["linear", "cosine", "gaussian"])
def test_blend_equals_the_divided_weighted_sum_and_leaves_inputs_alone(mode):
    rng = np.random.default_rng(0)
    plan = make_plan((150, 170), tile=48, overlap=16, channels=2, blend=mode)
    oy, ox = plan.out_window_shape
    outputs = [rng.random((2, oy, ox), dtype=np.float32) for _ in range(plan.n_windows)]
    copies = [o.copy() for o in outputs]
    got = blend_box(plan, 10, 140, 5, 160, lambda i, r, c: outputs[i][:, r, c])
    for a, b in zip(outputs, copies, strict=True):
        np.testing.assert_array_equal(a, b)  # views of the caller's arrays were not modified
    # reference: weights as outer products, summed and divided
    acc = np.zeros((2, 150, 170), np.float64)
    wsum = np.zeros((150, 170), np.float64)
    for i in range(plan.n_windows):
        w = plan.window(i)
        y0, x0 = plan.y.out_start(w.row), plan.x.out_start(w.col)
        wy, wx = axis_weights(plan.y, w.row, mode), axis_weights(plan.x, w.col, mode)
        weight = np.outer(wy, wx)
        ys, xs = slice(y0, min(150, y0 + oy)), slice(x0, min(170, x0 + ox))
        h, ww = ys.stop - ys.start, xs.stop - xs.start
        acc[:, ys, xs] += outputs[i][:, :h, :ww] * weight[:h, :ww]
        wsum[ys, xs] += weight[:h, :ww]
    expected = (acc / wsum)[:, 10:140, 5:160]
    np.testing.assert_allclose(np.moveaxis(got, -1, 0), expected, atol=2e-6)


def test_float16_casts_match_numpy_bit_for_bit():
    pytest.importorskip("torch")  # the fast path is used when torch is imported
    import torch  # noqa: F401

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_003) * 10.0 ** rng.uniform(-9, 6, 200_003)).astype(np.float32)
    x[:9] = [np.nan, np.inf, -np.inf, 65504, 65520, 65519.99, 6e-8, 2.98e-8, -0.0]
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    got = astype_float(x, np.float16)
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))
    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    back = astype_float(every, np.float32)
    nan = np.isnan(every)
    np.testing.assert_array_equal(back[~nan].view(np.uint32), every[~nan].astype(np.float32).view(np.uint32))
    assert np.isnan(back[nan]).all()  # NaN stays NaN (torch may set the quiet bit)
    strided = x[:200_000].reshape(8, -1)[:, ::2]  # non-contiguous input
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(astype_float(strided, np.float16), strided.astype(np.float16))
