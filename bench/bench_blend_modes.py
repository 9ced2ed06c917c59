"""Blend throughput of every mode, one core, in MP/s (issue 12: seam and multiband >= half of cosine).

Window outputs are random float32 (what a blend task reads from the store); each mode blends the same
output boxes; the strip pass (seam, poisson) is timed separately, per megapixel of output. Run:

    OMP_NUM_THREADS=1 python bench/bench_blend_modes.py [--size 2048] [--box 1024]
"""

from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from tilegraph.blend import BLENDERS, get_blender  # noqa: E402
from tilegraph.plan import make_plan  # noqa: E402
from tilegraph.testing.seam_models import ArrayReader, measure_strips  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--box", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for tile, overlap in ((512, 64), (256, 64)):
        plan = make_plan((args.size, args.size), tile=tile, overlap=overlap, channels=3, dtype="float32")
        oy, ox = plan.out_window_shape
        outputs = (0.5 + 0.02 * rng.standard_normal((plan.n_windows, 3, oy, ox))).astype(np.float32)
        read = ArrayReader(outputs)
        b0 = (args.size - args.box) // 2
        box = (b0, b0 + args.box, b0, b0 + args.box)
        mp = args.box * args.box / 1e6
        modes = [
            ("cosine", "none"),
            ("crop", "none"),
            ("multiband", "none"),
            ("seam", "none"),
            ("poisson", "none"),
            ("cosine", "preserve"),
        ]
        blenders, strips, t_strip = {}, {}, {}
        for mode, detail in modes:
            b = (
                get_blender(mode)
                if detail == "none"
                else BLENDERS.get(mode)(SimpleNamespace(mode=mode, detail=detail))
            )
            t = time.perf_counter()
            strips[mode, detail] = measure_strips(b, plan, read)
            t_strip[mode, detail] = time.perf_counter() - t
            b.blend(plan, box, read, strips=strips[mode, detail])  # warm-up (operator caches)
            blenders[mode, detail] = b
        best = {k: np.inf for k in modes}
        for _ in range(args.repeat):  # interleaved rounds: other load on the machine hits every mode alike
            for k in modes:
                if k[0] in ("poisson",) or k[1] == "preserve":
                    if best[k] < np.inf:
                        continue  # slow modes: one timing is enough
                t = time.perf_counter()
                blenders[k].blend(plan, box, read, strips=strips[k])
                best[k] = min(best[k], time.perf_counter() - t)
        for k in modes:
            rate = mp / best[k]
            extra = (
                f", strip pass {args.size**2 / 1e6 / t_strip[k]:6.1f} MP/s" if blenders[k].strip_pass else ""
            )
            print(
                f"tile {tile} overlap {overlap}  {k[0]:9s} {k[1]:8s} {rate:7.1f} MP/s"
                f" ({best['cosine', 'none'] / best[k]:.2f} x cosine){extra}"
            )


if __name__ == "__main__":
    main()
