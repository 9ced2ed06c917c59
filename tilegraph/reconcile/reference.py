"""The reconciliation reference's geometry (pure numpy).

A reference anchors the global solve (``algorithms.md`` §5.5): ``"input"`` (the source at the output
scale), ``"thumbnail"`` (the model run once on a thumbnail of the whole image) or ``"auto"``, which
chooses between them by measurement (:func:`tilegraph.quality.reference.choose_reference`).

:func:`reference_region` gives one window's part of the thumbnail output at output resolution (bilinear,
the same as the engine's model tasks compute), and :func:`thumbnail_sigma` the low-pass that makes a
window comparable with it.
"""

from __future__ import annotations

import numpy as np

from tilegraph.plan.plan import Plan

__all__ = ["REFERENCES", "reference_region", "thumbnail_sigma"]

REFERENCES = ("auto", "input", "thumbnail", None)


def reference_region(plan: Plan, index: int, thumb: np.ndarray, factor: float) -> np.ndarray:
    """The thumbnail output over window ``index``'s output footprint, bilinear, ``(C, h, w)`` float32.

    Parameters
    ----------
    plan
        The run's plan.
    index
        Flat window index.
    thumb
        The model run on the thumbnail, ``(th, tw, C)``.
    factor
        Output pixels per thumbnail pixel.
    """
    w = plan.window(index)
    oy, ox = plan.out_window_shape
    y0, x0 = plan.y.out_start(w.row), plan.x.out_start(w.col)
    ty = np.clip((np.arange(y0, y0 + oy) + 0.5) / factor - 0.5, 0, thumb.shape[0] - 1)
    tx = np.clip((np.arange(x0, x0 + ox) + 0.5) / factor - 0.5, 0, thumb.shape[1] - 1)
    iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
    iy1, ix1 = np.minimum(iy + 1, thumb.shape[0] - 1), np.minimum(ix + 1, thumb.shape[1] - 1)
    fy, fx = (ty - iy)[:, None, None], (tx - ix)[None, :, None]
    top = thumb[iy][:, ix] * (1 - fx) + thumb[iy][:, ix1] * fx
    bottom = thumb[iy1][:, ix] * (1 - fx) + thumb[iy1][:, ix1] * fx
    return np.moveaxis((top * (1 - fy) + bottom * fy).astype(np.float32), -1, 0)


def thumbnail_sigma(factor: float) -> float:
    """Low-pass (output pixels) that brings a window to the detail of a thumbnail ``factor`` times smaller."""
    return float(max(1.0, factor))
