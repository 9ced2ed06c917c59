"""In-process reference drivers of norm-statistics sync (tests and benchmarks; the engine has its own).

:func:`tiled_exact` runs ``norm_sync="exact"`` over every window of an in-memory image with
:mod:`tilegraph.infer.normsync`'s per-batch calls and stitches the result with a blend mode
(:func:`stitch`), so tests can compare the algorithm, without the engine, against whole-image inference.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from tilegraph.infer.normsync import exact_stats, tiled_windows
from tilegraph.plan.plan import Plan

__all__ = ["stitch", "tiled_exact"]


def stitch(
    plan: Plan, outputs: np.ndarray, *, mode: str | None = None, transform: Callable | None = None
) -> np.ndarray:
    """Blend window outputs ``(N, C', h, w)`` into the image ``(H', W', C')`` with the plan's blend mode."""
    from tilegraph.blend.merge import blend_box

    h, w = plan.out_shape
    return blend_box(plan, 0, h, 0, w, lambda i, r, c: outputs[i][:, r, c], mode=mode, transform=transform)


def tiled_exact(
    module, image: np.ndarray, plan: Plan, *, batch_size: int = 4, mode: str = "crop"
) -> tuple[np.ndarray, dict]:
    """``norm_sync="exact"`` in process: the passes, then the output stitched (``crop`` by default).

    Returns
    -------
    tuple
        ``(output (H', W', C') float32, info)``; ``info`` has the statistics and the cost.
    """
    stats, info = exact_stats(module, image, plan, batch_size=batch_size)
    t0 = time.perf_counter()
    outputs = tiled_windows(module, image, plan, stats=stats, batch_size=batch_size)
    out = stitch(plan, outputs, mode=mode)
    info = {
        **info,
        "passes": info["passes"] + 1,
        "window_forwards": info["window_forwards"] + plan.n_windows,
        "seconds": info["seconds"] + time.perf_counter() - t0,
        "stats": stats,
    }
    return out, info
