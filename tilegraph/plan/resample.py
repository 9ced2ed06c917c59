"""Input pixels at the output's scale (pure numpy): pass-through channels and reconciliation anchors."""

from __future__ import annotations

import numpy as np

from tilegraph.plan.plan import Plan

__all__ = ["to_output_scale"]


def to_output_scale(plan: Plan, raw: np.ndarray, first: int = 0) -> np.ndarray:
    """Channels ``first:`` of raw windows ``(N, h, w, C)`` as ``(N, c, H', W')`` float32 at the output scale.

    Integers are scaled to [0, 1]; up-scales repeat pixels, down-scales average ``k x k`` blocks.
    """
    x = np.moveaxis(raw[..., first:], -1, 1).astype(np.float32)
    if raw.dtype.kind in "ui":
        x *= np.float32(1.0 / np.iinfo(raw.dtype).max)
    s = plan.scale_fraction
    if s > 1:
        k = int(s)
        return x.repeat(k, axis=2).repeat(k, axis=3)
    if s < 1:
        k = s.denominator
        n, c, h, w = x.shape
        return x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))
    return x
