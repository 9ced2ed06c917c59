"""Issue 12 acceptance figures, driven without the engine (window outputs in memory, blenders called directly).

Prints, at the issue's geometry (tile 256, overlap 64, 4 x 4 windows over a smooth gradient):
texture ratio, gradient ratio and worst seam step (half-overlap bands, against the model's smooth part) of
every mode on the generative stand-in, alone and after reconcile="gain-offset"; the drift model's worst
16-px neighbour step for crop and poisson. Run: ``python bench/seam_figures.py``.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tilegraph.blend import BLENDERS, get_blender, overlap_strips  # noqa: E402
from tilegraph.plan import make_plan  # noqa: E402
from tilegraph.reconcile.solve import solve_global  # noqa: E402
from tilegraph.reconcile.stats import neighbour_pairs, pair_stats, reference_stats  # noqa: E402
from tilegraph.testing import models  # noqa: E402
from tilegraph.testing.images import smooth_gradient  # noqa: E402
from tilegraph.testing.reference import whole_image_inference  # noqa: E402
from tilegraph.testing.seam_models import (  # noqa: E402
    ArrayReader,
    ShadedTextureModel,
    seam_scores,
    window_outputs,
)
from tilegraph.testing.windows import window_inputs  # noqa: E402

MODES = [
    ("crop", "none"),
    ("cosine", "none"),
    ("cosine", "preserve"),
    ("multiband", "none"),
    ("multiband", "preserve"),
    ("seam", "none"),
    ("poisson", "none"),
]


def run(mode, detail, plan, outputs, transform=None):
    b = (
        get_blender(mode)
        if detail == "none"
        else BLENDERS.get(mode)(SimpleNamespace(mode=mode, detail=detail))
    )
    read = ArrayReader(outputs)
    strips = None
    if b.strip_pass:
        strips = b.combine_strips(
            plan, {(s.a, s.b): b.measure_strip(plan, s, read, transform) for s in overlap_strips(plan)}
        )
    h, w = plan.out_shape
    return np.asarray(b.blend(plan, (0, h, 0, w), read, transform=transform, strips=strips))


def main() -> None:
    torch.set_num_threads(1)
    n, tile, overlap = 4, 256, 64
    size = (n - 1) * (tile - overlap) + tile
    plan = make_plan((size, size), tile=tile, overlap=overlap, channels=3, dtype="float32")
    image = smooth_gradient(plan.shape)
    for name, model in (
        ("generative stand-in", ShadedTextureModel()),
        ("drift model", models.DriftModel(seed=0)),
    ):
        outputs = window_outputs(model, plan, image)
        truth = whole_image_inference(image, model.smooth, plan)
        inputs = window_inputs(plan, image)
        pairs = [pair_stats(plan, a, b, outputs[a], outputs[b]) for a, b in neighbour_pairs(plan)]
        refs = [reference_stats(plan, i, outputs[i], inputs[i]) for i in range(plan.n_windows)]
        rec = solve_global(plan, pairs, refs, mode="gain-offset").transform
        print(
            f"\n{name}: texture ratio / gradient ratio / worst step (half-overlap bands) / worst 16-px step, DN"
        )
        for mode, detail in MODES:
            for label, tr in (("alone", None), ("+ gain-offset", rec)):
                s = seam_scores(run(mode, detail, plan, outputs, tr), plan, truth=truth)
                print(
                    f"  {mode:9s} {detail:8s} {label:14s} {s['texture_ratio']:6.3f} {s['gradient_ratio']:6.3f}"
                    f" {s['worst_step']:6.3f} {s['worst_step_16']:6.3f}"
                )


if __name__ == "__main__":
    main()
