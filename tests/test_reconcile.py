"""Colour reconciliation (issue 5): statistics, global and sequential solves, corrections, at function level.

Window outputs are computed in memory with the shipped test models over a smooth gradient, then blended
with ``blend_box(..., transform=...)`` exactly as the engine will.
"""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from tilegraph.quality.metrics import seam_metrics
from tilegraph.reconcile.apply import Corrections
from tilegraph.reconcile.solve import solve_global, solve_sequential
from tilegraph.reconcile.stats import (
    PairStats,
    TileStats,
    neighbour_pairs,
    overlap_box,
    pair_stats,
    pairs_from_windows,
    reference_stats,
    window_stats,
)
from tilegraph.testing import smooth_gradient
from tilegraph.testing.windows import blend_windows, grid_plan, window_inputs

torch = pytest.importorskip("torch")
models = pytest.importorskip("tilegraph.testing.models")


# ----------------------------------------------------------------------------- helpers
def run_model(model, inputs: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(inputs))).numpy()


def blend_all(plan, outputs, transform=None) -> np.ndarray:
    return blend_windows(plan, outputs, transform=transform)


@pytest.fixture(scope="module")
def drift_case():
    """20 x 20 windows of the drift model over a smooth gradient, with its statistics."""
    torch.set_num_threads(1)
    plan = grid_plan(20)
    image = smooth_gradient(plan.shape)
    inputs = window_inputs(plan, image)
    model = models.DriftModel(seed=0)
    outputs = run_model(model, inputs)
    pairs = [pair_stats(plan, a, b, outputs[a], outputs[b]) for a, b in neighbour_pairs(plan)]
    refs = [reference_stats(plan, i, outputs[i], inputs[i]) for i in range(plan.n_windows)]
    return plan, image, inputs, outputs, pairs, refs, model


# ----------------------------------------------------------------------------- acceptance
def test_drift_model_seam_step_falls_below_half_dn(drift_case):
    plan, image, _, outputs, pairs, refs, _ = drift_case
    raw = seam_metrics(blend_all(plan, outputs), plan, reference=image)
    corr = solve_global(plan, pairs, refs, mode="gain-offset")
    fixed = seam_metrics(blend_all(plan, outputs, corr.transform), plan, reference=image)
    print(
        f"worst neighbour step raw {raw['seams']['worst_step']:.3f} DN -> {fixed['seams']['worst_step']:.4f} DN"
    )
    assert raw["seams"]["worst_step"] > 1.0
    assert fixed["seams"]["worst_step"] < 0.5
    assert fixed["seams"]["worst_near_step"] < 0.5
    assert fixed["seams"]["visible"] == 0
    # colour drift against the reference (the input): neighbour tiles and p95
    assert raw["colour"]["neighbour"]["max"] > 1.0
    assert fixed["colour"]["neighbour"]["max"] < 0.5
    assert fixed["colour"]["p95"] < 2.0


def test_corrections_invert_the_drift(drift_case):
    plan, _, inputs, _, pairs, refs, model = drift_case
    corr = solve_global(plan, pairs, refs)
    true = np.array([model.drift(inputs[i]) for i in range(plan.n_windows)])  # (gain, offset) per window
    # corrected = a (g y + b) + o: relative gain a g the same for all windows, offsets cancel up to a constant
    rel = corr.gain * true[:, :1]
    assert np.ptp(rel, axis=0).max() < 0.01
    resid = (corr.gain * true[:, 1:] + corr.offset) * 255
    assert np.ptp(resid, axis=0).max() < 2.0


def test_sequential_matching_is_exact_without_disagreement(drift_case):
    """With a purely affine drift every pair agrees, so chaining loses nothing: a sanity check of the baseline."""
    plan, image, _, outputs, pairs, refs, _ = drift_case
    corr = solve_sequential(plan, pairs, refs, mode="gain-offset")
    fixed = seam_metrics(blend_all(plan, outputs, corr.transform), plan, reference=image)
    assert fixed["seams"]["worst_step"] < 0.5


def test_global_beats_sequential_when_pairs_disagree(drift_case):
    """The benchmark's scenario in small: a shading ramp per window that no gain and offset undo."""
    plan, image, inputs, outputs, _, _, _ = drift_case
    rng = np.random.default_rng(1)
    v = np.linspace(-1, 1, outputs.shape[2])[:, None]
    u = np.linspace(-1, 1, outputs.shape[3])[None, :]
    shaded = outputs.copy()
    for i in range(len(shaded)):
        t = rng.uniform(0, 2 * np.pi)
        shaded[i] += (2 / 255 * (u * np.cos(t) + v * np.sin(t)) / (abs(np.cos(t)) + abs(np.sin(t)))).astype(
            np.float32
        )
    stats = [window_stats(plan, i, shaded[i], inputs[i]) for i in range(plan.n_windows)]
    pairs, refs = pairs_from_windows(plan, stats), [s.ref for s in stats]

    def worst_drift(corr):
        out = blend_all(plan, shaded, corr.transform)
        return max(
            float(np.abs(out[y0:y1, x0:x1].mean((0, 1)) - image[y0:y1, x0:x1].mean((0, 1))).max()) * 255
            for y0, y1, x0, x1 in (r.box for r in refs)
        )

    seq = worst_drift(solve_sequential(plan, pairs, refs, mode="offset"))
    glob = worst_drift(solve_global(plan, pairs, refs, mode="offset"))
    print(f"worst |drift|: sequential {seq:.2f} DN, global {glob:.2f} DN")
    assert glob * 3 <= seq


def test_instance_norm_reconciliation_halves_neighbour_delta_e():
    """A model that changes colour per window, anchored to the model run on a thumbnail."""
    torch.set_num_threads(1)
    plan = grid_plan(12)
    image = smooth_gradient(plan.shape)
    inputs = window_inputs(plan, image)
    model = models.InstanceNormModel()
    outputs = run_model(model, inputs)
    f = 4
    small = torch.nn.functional.avg_pool2d(torch.from_numpy(np.moveaxis(image, -1, 0)[None].copy()), f)
    with torch.inference_mode():
        thumb = model(small)
    up = torch.nn.functional.interpolate(thumb, scale_factor=f, mode="bilinear", align_corners=False)
    reference = np.moveaxis(up[0].numpy(), 0, -1)
    ref_windows = window_inputs(plan, reference)
    stats = [window_stats(plan, i, outputs[i], ref_windows[i], ref_sigma=f) for i in range(plan.n_windows)]
    corr = solve_global(plan, pairs_from_windows(plan, stats), [s.ref for s in stats])
    before = seam_metrics(blend_all(plan, outputs), plan, reference=reference)["colour"]["neighbour"]["max"]
    after = seam_metrics(blend_all(plan, outputs, corr.transform), plan, reference=reference)
    print(f"InstanceNorm worst neighbour-tile dE00 {before:.3f} -> {after['colour']['neighbour']['max']:.3f}")
    assert after["colour"]["neighbour"]["max"] <= 0.5 * before


def test_solve_scales_to_100_by_100():
    """Synthetic consistent statistics on 100 x 100 windows x 3 channels: the solve is fast and exact."""
    rng = np.random.default_rng(0)
    rows = cols = 100
    n, ch = rows * cols, 3
    g = 1 + 0.03 * rng.uniform(-1, 1, (n, 1))
    b = 3 / 255 * rng.uniform(-1, 1, (n, 1))
    idx = np.arange(n).reshape(rows, cols)
    a_idx = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b_idx = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    mu = rng.uniform(0.2, 0.8, (len(a_idx), ch))
    sd = rng.uniform(0.005, 0.02, (len(a_idx), ch))
    npx = 500
    pairs = []
    for k, (i, j) in enumerate(zip(a_idx, b_idx, strict=True)):
        ma, mb = g[i] * mu[k] + b[i], g[j] * mu[k] + b[j]
        sa, sb = g[i] * sd[k], g[j] * sd[k]
        pairs.append(
            PairStats(
                int(i), int(j), "x", npx, npx * ma, npx * mb, npx * (sa**2 + ma**2), npx * (sb**2 + mb**2)
            )
        )
    rmu = rng.uniform(0.2, 0.8, (n, ch))
    rsd = rng.uniform(0.005, 0.02, (n, ch))
    refs = []
    for i in range(n):
        mt, st = g[i] * rmu[i] + b[i], g[i] * rsd[i]
        refs.append(
            TileStats(
                i,
                2000,
                2000 * mt,
                2000 * (st**2 + mt**2),
                2000 * rmu[i],
                2000 * (rsd[i] ** 2 + rmu[i] ** 2),
                2000 * rmu[i] * mt,
            )
        )
    t0 = time.perf_counter()
    corr = solve_global((rows, cols), pairs, refs)
    elapsed = time.perf_counter() - t0
    print(f"100 x 100 x 3 solve: {elapsed:.2f} s, {corr.info}")
    assert elapsed < 20.0  # loose: the benchmark measures it properly
    assert np.abs(corr.gain * g - 1).max() < 0.01
    assert np.abs(corr.gain * b + corr.offset).max() * 255 < 0.5


def test_huber_limits_bad_pairs():
    """A few pairs with wrong means: the robust solve stays closer to the truth than plain least squares."""
    rng = np.random.default_rng(3)
    rows = cols = 15
    n = rows * cols
    b = 3 / 255 * rng.uniform(-1, 1, n)
    plan_pairs = [(i, i + 1) for i in range(n) if (i + 1) % cols] + [(i, i + cols) for i in range(n - cols)]
    pairs = []
    for i, j in plan_pairs:
        m = rng.uniform(0.2, 0.8, 1)
        err = 8 / 255 if rng.random() < 0.08 else 0.0
        ma, mb = m + b[i] + err, m + b[j]
        pairs.append(
            PairStats(i, j, "x", 400, 400 * ma, 400 * mb, 400 * (1e-4 + ma**2), 400 * (1e-4 + mb**2))
        )
    refs = [
        TileStats(
            i,
            900,
            900 * (0.5 + b[i : i + 1]),
            900 * (1e-4 + (0.5 + b[i : i + 1]) ** 2),
            np.array([450.0]),
            np.array([900 * (1e-4 + 0.25)]),
            np.array([0.0]),
        )
        for i in range(n)
    ]
    err = {}
    for name, huber in (("ls", None), ("huber", 2.0)):
        c = solve_global((rows, cols), pairs, refs, mode="offset", huber=huber)
        err[name] = float(np.abs(c.offset[:, 0] + b).mean() * 255)
    assert err["huber"] < 0.7 * err["ls"]


# ----------------------------------------------------------------------------- statistics
def test_window_stats_equal_pair_stats(drift_case):
    plan, _, inputs, outputs, pairs, refs, _ = drift_case
    stats = [window_stats(plan, i, outputs[i], inputs[i]) for i in range(plan.n_windows)]
    joined = pairs_from_windows(plan, stats)
    assert [(p.a, p.b) for p in joined] == [(p.a, p.b) for p in pairs]
    for p, q in zip(joined, pairs, strict=True):
        assert p.n == q.n and p.box == q.box
        np.testing.assert_allclose(p.sum_a, q.sum_a, rtol=1e-10)
        np.testing.assert_allclose(p.sumsq_b, q.sumsq_b, rtol=1e-10)
    for s, r in zip(stats, refs, strict=True):
        np.testing.assert_allclose(s.ref.sum_t, r.sum_t, rtol=1e-10)


def test_overlap_box_geometry():
    plan = grid_plan(4)
    a, right, down = 5, 6, 9
    y0, y1, x0, x1 = overlap_box(plan, a, right, margin=0)
    assert (x0, x1) == (plan.x.out_start(2), plan.x.out_start(1) + plan.x.out_tile)
    assert (y0, y1) == (plan.y.out_start(1), plan.y.out_start(1) + plan.y.out_tile)
    y0, y1, x0, x1 = overlap_box(plan, a, down, margin=2)
    assert (y0, y1) == (plan.y.out_start(2) + 2, plan.y.out_start(1) + plan.y.out_tile - 2)
    with pytest.raises(ValueError):
        overlap_box(plan, a, a + 2)


def test_stats_ignore_window_edges():
    """Garbage in the outer margin of a window (zero padding) never reaches a statistic."""
    plan = grid_plan(3)
    rng = np.random.default_rng(0)
    out = rng.random((3, *plan.out_window_shape)).astype(np.float32)
    margin = 4
    dirty = out.copy()
    dirty[:, :margin] = dirty[:, -margin:] = 100.0
    dirty[:, :, :margin] = dirty[:, :, -margin:] = 100.0
    clean = window_stats(plan, 4, out, out, margin=margin)
    noisy = window_stats(plan, 4, dirty, dirty, margin=margin)
    for k, v in clean.sides.items():
        np.testing.assert_allclose(noisy.sides[k][1], v[1])
    np.testing.assert_allclose(noisy.ref.sum_t, clean.ref.sum_t)


def test_records_pickle(drift_case):
    plan, _, inputs, outputs, pairs, refs, _ = drift_case
    ws = window_stats(plan, 21, outputs[21], inputs[21])
    for rec in (pairs[0], refs[0], ws):
        back = pickle.loads(pickle.dumps(rec))
        assert type(back) is type(rec)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pairs[3])).sum_ab, pairs[3].sum_ab)


# ----------------------------------------------------------------------------- corrections
def test_transform_is_affine_and_leaves_input_alone():
    corr = Corrections(np.array([[1.0, 2.0]]), np.array([[0.5, -1.0]]))
    region = np.ones((2, 3, 4), dtype=np.float32)
    before = region.copy()
    out = corr.transform(0, region, (slice(0, 3), slice(0, 4)))
    np.testing.assert_array_equal(region, before)
    np.testing.assert_allclose(out[0], 1.5)
    np.testing.assert_allclose(out[1], 1.0)
    assert out.dtype == np.float32


def test_strength_and_modes(drift_case):
    plan, _, _, _, pairs, refs, _ = drift_case
    full = solve_global(plan, pairs, refs)
    half = solve_global(plan, pairs, refs, strength=0.5)
    np.testing.assert_allclose(half.gain - 1, 0.5 * (full.gain - 1), atol=1e-12)
    np.testing.assert_allclose(half.offset, 0.5 * full.offset, atol=1e-12)
    none = solve_global(plan, pairs, refs, strength=0.0)
    np.testing.assert_array_equal(none.gain, 1.0)
    offset_only = solve_global(plan, pairs, refs, mode="offset")
    np.testing.assert_array_equal(offset_only.gain, 1.0)
    assert np.abs(offset_only.offset).max() > 0
    with pytest.raises(ValueError):
        solve_global(plan, pairs, refs, mode="colour-matrix")
    back = Corrections.from_dict(full.to_dict())
    np.testing.assert_array_equal(back.gain, full.gain)


def test_identity_without_statistics():
    c = solve_global((2, 3), [], [], channels=3)
    np.testing.assert_allclose(c.gain, 1.0)
    np.testing.assert_allclose(c.offset, 0.0, atol=1e-12)


def test_smooth_field_adds_no_steps():
    """Per-window constants under ``crop`` create steps at every cut; the bilinear field does not."""
    plan = grid_plan(6, blend="crop")
    image = smooth_gradient(plan.shape)
    outputs = window_inputs(plan, image)  # an exact "model": the input itself
    rng = np.random.default_rng(0)
    corr = Corrections(
        1 + 0.02 * rng.uniform(-1, 1, (plan.n_windows, 3)), 2 / 255 * rng.uniform(-1, 1, (plan.n_windows, 3))
    )
    stepped = seam_metrics(blend_all(plan, outputs, corr.transform), plan)["seams"]["worst_step"]
    field = corr.as_field(plan)
    smooth = seam_metrics(blend_all(plan, outputs, field.transform), plan)["seams"]["worst_step"]
    assert stepped > 1.0
    assert smooth < 0.05
    # the field takes each window's value at the window's centre
    for index in (0, 14, plan.n_windows - 1):
        w = plan.window(index)
        cy = sum(plan.y.footprint(w.row)) / 2
        cx = sum(plan.x.footprint(w.col)) / 2
        g, o = field.at(int(cy), int(cy) + 1, int(cx), int(cx) + 1)
        np.testing.assert_allclose(g[:, 0, 0], corr.gain[index], atol=1e-3)
        np.testing.assert_allclose(o[:, 0, 0], corr.offset[index], atol=5e-4)  # half a pixel off the centre
