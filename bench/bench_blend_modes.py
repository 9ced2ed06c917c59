"""Every blend mode side by side on the test kit's models (issue 12), and blend throughput per core.

Part 1, quality, through ``tilegraph.run`` (in process, float32 output), at the issue's geometry (tile 256,
overlap 64, 4 x 4 windows over ``smooth_gradient``): for each model of the test kit and each mode (and
option), the texture ratio, the worst seam step (half-overlap bands, DN) and the gradient ratio over the
plan's seam lines, measured against the truth (:func:`tilegraph.testing.seam_models.seam_scores`): the
model's deterministic part run on the whole image for the generative stand-in and the drift model,
whole-image inference for the exact models; the worst 16-px step; the largest error against that truth
(DN; for exact models the error against whole-image inference); and the QA's own worst step
(:func:`tilegraph.quality.metrics.seam_metrics`, no truth). Models: the generative stand-in
(``ShadedTextureModel``: streaky texture and per-window offset and ramps), the drift model (per-window
gain and offset), stacked convolutions (``LocalConv``) and identity. Texture and gradient ratios are
printed for the model that invents texture (on the smooth test image the other outputs have none: their
ratios would only measure the steps).

Part 2, throughput: each mode blends the same output box of random window outputs, one core
(``OMP_NUM_THREADS=1``, thread CPU time, the best of interleaved rounds so other load hits every mode
alike), in MP/s, and the ratio to ``cosine``; the strip pass of ``seam`` and ``poisson`` per megapixel of
output apart. Run::

    OMP_NUM_THREADS=1 python bench/bench_blend_modes.py [--quick] [--skip-quality] [--skip-speed]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

MODES: list[tuple[str, dict]] = [
    ("crop", {"blend": "crop"}),
    ("cosine", {"blend": "cosine"}),
    ("cosine detail=preserve", {"blend": "cosine", "detail": "preserve"}),
    ("multiband", {"blend": "multiband"}),
    ("multiband detail=preserve", {"blend": "multiband", "detail": "preserve"}),
    ("seam", {"blend": "seam"}),
    ("poisson", {"blend": "poisson"}),
    ("cosine lowfreq=thumbnail", {"blend": "cosine", "lowfreq": "thumbnail"}),
    ("poisson lowfreq=thumbnail", {"blend": "poisson", "lowfreq": "thumbnail"}),
    ("cosine refine=seams", {"blend": "cosine", "refine": "seams"}),
    ("poisson refine=seams", {"blend": "poisson", "refine": "seams"}),
    ("crop reconcile=gain-offset", {"blend": "crop", "reconcile": "gain-offset"}),
    (
        "cosine detail=preserve gain-offset",
        {"blend": "cosine", "detail": "preserve", "reconcile": "gain-offset"},
    ),
    ("poisson reconcile=gain-offset", {"blend": "poisson", "reconcile": "gain-offset"}),
]


def quality(args) -> None:
    import torch

    import tilegraph
    from tilegraph.blend import get_blender
    from tilegraph.quality.metrics import seam_metrics
    from tilegraph.testing import models
    from tilegraph.testing.images import smooth_gradient
    from tilegraph.testing.reference import whole_image_inference
    from tilegraph.testing.seam_models import ShadedTextureModel, seam_scores

    torch.set_num_threads(1)
    n, tile, overlap = (3, 256, 64) if args.quick else (4, 256, 64)
    size = (n - 1) * (tile - overlap) + tile
    image = smooth_gradient((size, size))
    kit = [
        ("generative stand-in", ShadedTextureModel(), "smooth part"),
        ("drift model", models.DriftModel(seed=0), "smooth part"),
        ("stacked convolutions", models.LocalConv(), "whole image"),
        ("identity", models.Identity(), "whole image"),
    ]
    print(
        f"== quality through tilegraph.run: tile {tile}, overlap {overlap}, {n} x {n} windows ({size}^2), "
        "smooth_gradient; steps in DN (8-bit), against the truth named per model"
    )
    head = (
        f"{'model':21s} {'mode':35s} {'texture':>7s} {'step':>6s} {'step16':>6s} {'grad':>6s} "
        f"{'max err':>8s} {'QA step':>7s} {'run s':>6s}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory(prefix="tg-bench-modes-") as tmp:
        for name, model, truth_name in kit:
            truths: dict = {}
            textured = name == "generative stand-in"  # texture and gradient ratios: of invented texture
            for k, (label, kw) in enumerate(MODES):
                t0 = time.perf_counter()
                res = tilegraph.run(
                    image,
                    os.path.join(tmp, f"{k}-{name[:4]}.zarr"),
                    model=model,
                    tile=tile,
                    overlap=overlap,
                    client="inprocess",
                    progress=False,
                    output_dtype="float32",
                    **kw,
                )
                seconds = time.perf_counter() - t0
                out = np.asarray(res.output[:])
                key = (res.plan.origin, res.plan.padded_shape)  # the near edges are padded per grid
                if key not in truths:
                    base = model.smooth if truth_name == "smooth part" else model
                    truths[key] = whole_image_inference(image, base, res.plan)
                truth = truths[key]
                s = seam_scores(out, res.plan, truth=truth)
                qa = seam_metrics(
                    out,
                    res.plan,
                    seam_profile=functools.partial(get_blender(res.plan.blend).seam_profile, res.plan),
                )
                err = float(np.abs(out - truth).max() * 255)
                texture = f"{s['texture_ratio']:7.3f}" if textured else f"{'-':>7s}"
                grad = f"{s['gradient_ratio']:6.3f}" if textured else f"{'-':>6s}"
                print(
                    f"{name:21s} {label:35s} {texture} {s['worst_step']:6.3f} {s['worst_step_16']:6.3f} {grad} "
                    f"{err:8.3f} {qa['seams']['worst_step']:7.3f} {seconds:6.2f}",
                    flush=True,
                )
            print(f"{'':21s} (truth: {truth_name})")


def speed(args) -> None:
    from tilegraph.blend import get_blender, overlap_strips
    from tilegraph.options import BlendOptions
    from tilegraph.plan import make_plan
    from tilegraph.testing.windows import ArrayReader

    rng = np.random.default_rng(0)
    size, box_side = (2048, 1024) if args.quick else (3072, 1024)
    print(
        f"\n== blend throughput, one core (thread CPU time, best of {args.repeat} interleaved rounds), "
        f"a {box_side}^2 output box of a {size}^2 image, float32 RGB window outputs"
    )
    for tile, overlap in ((512, 64), (256, 64)):
        plan = make_plan((size, size), tile=tile, overlap=overlap, channels=3, dtype="float32")
        oy, ox = plan.out_window_shape
        outputs = (0.5 + 0.02 * rng.standard_normal((plan.n_windows, 3, oy, ox))).astype(np.float32)
        read = ArrayReader(outputs)
        b0 = (size - box_side) // 2
        box = (b0, b0 + box_side, b0, b0 + box_side)
        mp = box_side * box_side / 1e6
        keys = [
            ("cosine", "none"),
            ("crop", "none"),
            ("linear", "none"),
            ("gaussian", "none"),
            ("multiband", "none"),
            ("seam", "none"),
            ("poisson", "none"),
            ("cosine", "preserve"),
            ("multiband", "preserve"),
        ]
        blenders, strips, strip_rate = {}, {}, {}
        for mode, detail in keys:
            b = get_blender(BlendOptions(mode=mode, detail=detail))
            st = None
            if b.strip_pass:
                t = time.thread_time()
                results = {(s.a, s.b): b.measure_strip(plan, s, read, None) for s in overlap_strips(plan)}
                st = b.combine_strips(plan, results)
                strip_rate[mode, detail] = size * size / 1e6 / (time.thread_time() - t)
                st = b.strips_for_task(plan, box, st)  # what the engine sends the box's task
            b.blend(plan, box, read, strips=st)  # warm-up (operator caches)
            blenders[mode, detail], strips[mode, detail] = b, st
        best = {k: np.inf for k in keys}
        for rnd in range(args.repeat):
            for k in keys:
                slow = k[0] == "poisson" or k[1] == "preserve"
                if slow and rnd >= 2:
                    continue  # a few MP/s: two rounds are enough
                t = time.thread_time()
                blenders[k].blend(plan, box, read, strips=strips[k])
                best[k] = min(best[k], time.thread_time() - t)
        for k in keys:
            extra = f", strip pass {strip_rate[k]:6.1f} MP/s" if k in strip_rate else ""
            print(
                f"tile {tile} overlap {overlap}  {k[0]:9s} {k[1]:8s} {mp / best[k]:7.1f} MP/s per core "
                f"({best['cosine', 'none'] / best[k]:.2f} x cosine){extra}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 x 3 windows and a smaller image (CI smoke)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    import tilegraph

    print(f"bench_blend_modes: tilegraph {tilegraph.__version__}, {os.cpu_count()} cpus, OMP_NUM_THREADS=1")
    if not args.skip_quality:
        quality(args)
    if not args.skip_speed:
        speed(args)


if __name__ == "__main__":
    main()
