"""Global least-squares reconciliation against sequential statistical matching (issue 5).

Scenario (acceptance point "global against sequential"): a smooth colour gradient tiled on a ``--grid``
square grid (default 20 x 20 windows of 64 px, overlap 16, output scale 1), the ``DriftModel`` (per-window
gain +-3 % and offset +-3 DN on a smooth filter), plus a random linear shading ramp per window (+-``--ramp``
DN across the window, random direction), which no gain and offset can undo, so pairwise estimates disagree.
Every window output is held in memory; statistics come from :func:`tilegraph.reconcile.stats.window_stats`
(one record per window, as the engine computes them) with the input window as the reference; the result is
blended with ``cosine`` through ``blend_box(..., transform=corrections.transform)``.

Columns, all in DN (1/255 of full scale):

* worst step: the worst coherent seam step of any neighbour pair (``seam_metrics``: the jump across the
  whole overlap band once the local gradient is removed, i.e. everything the cosine ramp spreads out);
* near step: the same over 3 px each side of the band centre (``worst_near_step``);
* worst |drift|: the worst absolute difference of a window core's mean (per channel) from the reference's;
* neighbour dE00: the worst CIEDE2000 difference between neighbouring tiles' colour errors.

Then the solve alone on a ``--solve-grid`` square grid (default 100 x 100 windows of 32 px, overlap 8):
statistics per window and the global solve (one BLAS thread, like one core), against sequential matching.

Acceptance (printed, not asserted): the global solve's worst |drift| is at least 3 x lower than sequential
matching's; the solve takes under a few seconds at 100 x 100.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # "one core": must be set before numpy loads BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tilegraph.blend.merge import blend_box  # noqa: E402
from tilegraph.plan import make_plan  # noqa: E402
from tilegraph.quality.metrics import seam_metrics  # noqa: E402
from tilegraph.reconcile.apply import Corrections  # noqa: E402
from tilegraph.reconcile.solve import solve_global, solve_sequential  # noqa: E402
from tilegraph.reconcile.stats import core_box, pairs_from_windows, window_stats  # noqa: E402
from tilegraph.testing import smooth_gradient  # noqa: E402
from tilegraph.testing.models import DriftModel  # noqa: E402


def window_inputs(plan, image: np.ndarray) -> np.ndarray:
    """Every window's input ``(N, C, T, T)`` float32, padded at the far edges like the plan pads."""
    py, px = plan.padded_shape
    pad = np.pad(image, ((0, py - image.shape[0]), (0, px - image.shape[1]), (0, 0)), mode=plan.pad_mode)
    return np.stack([np.moveaxis(pad[w.y0 : w.y1, w.x0 : w.x1], -1, 0) for w in plan.windows()])


def run_model(model, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model over all windows, in batches."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch]))).numpy())
    return np.concatenate(out)


def add_ramps(outputs: np.ndarray, amplitude_dn: float, seed: int) -> np.ndarray:
    """A copy with a random linear ramp per window, ``+-amplitude_dn`` at the window's extremes."""
    rng = np.random.default_rng(seed)
    n, _, h, w = outputs.shape
    v = np.linspace(-1, 1, h)[:, None]
    u = np.linspace(-1, 1, w)[None, :]
    out = outputs.copy()
    for i in range(n):
        t = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(t), np.sin(t)
        out[i] += (amplitude_dn / 255.0 * (u * c + v * s) / (abs(c) + abs(s))).astype(np.float32)
    return out


def blend_all(plan, outputs: np.ndarray, transform=None) -> np.ndarray:
    """The whole output image ``(H, W, C)`` through ``blend_box``."""
    h, w = plan.out_shape
    return blend_box(plan, 0, h, 0, w, lambda i, r, c: outputs[i][:, r, c], transform=transform)


def worst_drift(plan, result: np.ndarray, reference: np.ndarray, margin: int) -> float:
    """Worst absolute difference (DN) of a window core's per-channel mean from the reference's."""
    worst = 0.0
    for i in range(plan.n_windows):
        y0, y1, x0, x1 = core_box(plan, i, margin=margin)
        d = result[y0:y1, x0:x1].mean((0, 1)) - reference[y0:y1, x0:x1].mean((0, 1))
        worst = max(worst, float(np.abs(d).max()) * 255)
    return worst


def scenario(args) -> None:
    size = (args.grid - 1) * (args.tile - args.overlap) + args.tile
    plan = make_plan(
        (size, size), tile=args.tile, overlap=args.overlap, channels=3, dtype="float32", blend="cosine"
    )
    image = smooth_gradient(plan.shape)
    inputs = window_inputs(plan, image)
    outputs = add_ramps(run_model(DriftModel(seed=args.seed), inputs), args.ramp, args.seed + 1)
    stats = [window_stats(plan, i, outputs[i], inputs[i]) for i in range(plan.n_windows)]
    pairs = pairs_from_windows(plan, stats)
    refs = [s.ref for s in stats]
    margin = plan.x.out_overlap // 4
    rows = {}
    cases = {
        "none": lambda: Corrections.identity(plan.n_windows, 3),
        "sequential offset": lambda: solve_sequential(plan, pairs, refs, mode="offset"),
        "global offset": lambda: solve_global(plan, pairs, refs, mode="offset"),
        "sequential gain-offset": lambda: solve_sequential(plan, pairs, refs, mode="gain-offset"),
        "global gain-offset": lambda: solve_global(plan, pairs, refs, mode="gain-offset"),
        "global adaptive": lambda: solve_global(plan, pairs, refs, mode="gain-offset", adaptive=True),
    }
    for name, make in cases.items():
        t0 = time.perf_counter()
        corr = make()
        dt = time.perf_counter() - t0
        result = blend_all(plan, outputs, corr.transform)
        m = seam_metrics(result, plan, reference=image)
        rows[name] = (
            m["seams"]["worst_step"],
            m["seams"]["worst_near_step"],
            worst_drift(plan, result, image, margin),
            m["colour"]["neighbour"]["max"],
            dt,
        )
    print(
        f"grid {plan.grid[0]} x {plan.grid[1]}, tile {args.tile}, overlap {args.overlap}, image "
        f"{plan.shape[0]} x {plan.shape[1]}, DriftModel(seed={args.seed}) + ramp +-{args.ramp} DN, blend cosine"
    )
    print(
        f"{'reconcile':<24}{'worst step':>12}{'near step':>12}{'worst |drift|':>15}{'nb dE00':>10}{'solve s':>10}"
    )
    for name, (step, band, drift, de, dt) in rows.items():
        print(f"{name:<24}{_fmt(step, 12)}{_fmt(band, 12)}{_fmt(drift, 15)}{_fmt(de, 10)}{dt:>10.3f}")
    for mode in ("offset", "gain-offset"):
        ratio = rows[f"sequential {mode}"][2] / max(rows[f"global {mode}"][2], 1e-12)
        print(
            f"{mode}: worst |drift| sequential / global = {_fmt(ratio, 0).strip()} (acceptance: >= 3) -> "
            f"{'PASS' if ratio >= 3 else 'FAIL'}"
        )


def _fmt(v: float, width: int) -> str:
    return f"{v:>{width}.3f}" if abs(v) < 1e4 else f"{v:>{width}.2e}"


def solve_scaling(args) -> None:
    n = args.solve_grid
    tile, overlap = 32, 8
    size = (n - 1) * (tile - overlap) + tile
    plan = make_plan((size, size), tile=tile, overlap=overlap, channels=3, dtype="float32", blend="cosine")
    image = smooth_gradient(plan.shape)
    inputs = window_inputs(plan, image)
    t0 = time.perf_counter()
    outputs = add_ramps(run_model(DriftModel(seed=args.seed), inputs), args.ramp, args.seed + 1)
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = [window_stats(plan, i, outputs[i], inputs[i]) for i in range(plan.n_windows)]
    t_stats = time.perf_counter() - t0
    del outputs, inputs
    pairs = pairs_from_windows(plan, stats)
    refs = [s.ref for s in stats]
    t0 = time.perf_counter()
    corr = solve_global(plan, pairs, refs)
    t_global = time.perf_counter() - t0
    t0 = time.perf_counter()
    solve_sequential(plan, pairs, refs)
    t_seq = time.perf_counter() - t0
    print(
        f"\nsolve scaling: grid {plan.grid[0]} x {plan.grid[1]} = {plan.n_windows} windows x 3 channels "
        f"(tile {tile}, overlap {overlap}, {len(pairs)} pairs), OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS')}"
    )
    print(
        f"  model {t_model:.2f} s; window_stats {t_stats:.2f} s ({1e3 * t_stats / plan.n_windows:.2f} ms/window)"
    )
    print(
        f"  solve_global {t_global:.2f} s ({corr.info['iterations']} IRLS iterations, "
        f"{corr.info['downweighted']} pair rows down-weighted); solve_sequential {t_seq:.2f} s"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=int, default=20)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--ramp", type=float, default=2.0, help="shading ramp amplitude, DN")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solve-grid", type=int, default=100, help="0 skips the scaling run")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    scenario(args)
    if args.solve_grid:
        solve_scaling(args)


if __name__ == "__main__":
    main()
