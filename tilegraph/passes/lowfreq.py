"""``lowfreq="thumbnail"``: low frequencies from the model run once on a thumbnail of the whole image.

Generative and restoration models invent low-frequency shading per window; the run's one thumbnail
inference sees the whole picture at once and shades it consistently (the idea of HiWave and of latent
wavelet diffusion). This pass keeps the blended output's high frequencies and takes its low
frequencies from the thumbnail output, bilinearly up-sampled::

    out = y + gate * (L(thumb) - L(y))

split at a cut-off derived from the thumbnail's scale ``f`` (output pixels per thumbnail pixel): a
Gaussian of ``sigma = 2 f`` (default), or the approximation of a ``sym4`` wavelet decomposition of
``ceil(log2(2 f))`` levels (``split="wavelet"``, pywavelets).

The thumbnail's low frequencies are not the whole-image result's: a model run at another scale shades
differently (a stack of convolutions differs by tens of DN at ``sigma = 4``). So the pass corrects only
where the windows themselves show that they invented their low frequencies: ``gate`` is, per window,
how much its low-passed output disagrees with its neighbours' over their overlaps (0 below
``agree_dn``, 1 from ``disagree_dn``, linear between), spread over the image with the cosine weights of
the grid. Windows that agree (a model that tiles exactly) are left exactly as they are.

Chunk-wise with a halo of ``4 sigma`` (Gaussian: the result equals a whole-image filtering; wavelet:
the decimation grid is anchored at multiples of ``2^L`` and the halo holds the filters' support).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from scipy.ndimage import gaussian_filter

from tilegraph.errors import InputError
from tilegraph.passes.abc import Box, Pass, PassContext, WindowOutputs
from tilegraph.plan.grid import AxisGrid
from tilegraph.plan.plan import Plan
from tilegraph.plan.weights import normalized_axis_weights

__all__ = ["LowFreqPass", "upsample", "window_disagreement"]

SPLITS = ("gaussian", "wavelet")


def upsample(thumb: np.ndarray, factor: float, box: Box) -> np.ndarray:
    """The thumbnail ``(h, w, C)`` bilinearly up-sampled over output ``box`` (pixel centres), ``(rows, cols, C)``."""
    y0, y1, x0, x1 = box
    ty = np.clip((np.arange(y0, y1) + 0.5) / factor - 0.5, 0, thumb.shape[0] - 1)
    tx = np.clip((np.arange(x0, x1) + 0.5) / factor - 0.5, 0, thumb.shape[1] - 1)
    iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
    iy1, ix1 = np.minimum(iy + 1, thumb.shape[0] - 1), np.minimum(ix + 1, thumb.shape[1] - 1)
    fy, fx = (ty - iy)[:, None, None], (tx - ix)[None, :, None]
    t = thumb.astype(np.float64)
    top = t[iy][:, ix] * (1 - fx) + t[iy][:, ix1] * fx
    bottom = t[iy1][:, ix] * (1 - fx) + t[iy1][:, ix1] * fx
    return top * (1 - fy) + bottom * fy


def _trim(plan: Plan, axis: AxisGrid) -> int:
    """Output px at a window's edges that its model output may get wrong (the model's halo, or a quarter of
    the overlap when it declares none), kept under half the overlap."""
    halo = plan.halo
    t = math.ceil(halo * axis.scale) + 1 if halo is not None else math.ceil(axis.out_overlap / 4)
    return max(0, min(t, axis.out_overlap // 2 - 1))


def window_disagreement(plan: Plan, windows: WindowOutputs, index: int, sigma: float) -> float:
    """Largest RMS (DN, 1/255 of the model's unit range) over the channels of the low-passed difference
    between window ``index`` and a 4-neighbour over their shared footprint less its edges (0 without
    neighbours).

    The edges of the shared footprint (:func:`_trim`: where a window's output sees its own border) are
    left out: a model that tiles exactly agrees with its neighbours everywhere else. The low-pass
    (Gaussian, ``sigma`` px, at most a quarter of the region's width) removes texture the windows invent
    independently; what is left is the shading they disagree on.
    """
    rows, cols = plan.grid
    r, c = divmod(index, cols)
    ty, tx = _trim(plan, plan.y), _trim(plan, plan.x)
    worst = 0.0
    for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
        if not (0 <= rr < rows and 0 <= cc < cols):
            continue
        (ay0, ay1), (ax0, ax1) = plan.y.footprint(r), plan.x.footprint(c)
        (by0, by1), (bx0, bx1) = plan.y.footprint(rr), plan.x.footprint(cc)
        y0, y1, x0, x1 = max(ay0, by0) + ty, min(ay1, by1) - ty, max(ax0, bx0) + tx, min(ax1, bx1) - tx
        if y0 >= y1 or x0 >= x1:
            continue
        regions = []
        for i, (wr, wc) in ((index, (r, c)), (rr * cols + cc, (rr, cc))):
            oy, ox = plan.y.out_start(wr), plan.x.out_start(wc)
            regions.append(windows(i, slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)).astype(np.float64))
        d = regions[1] - regions[0]
        s = max(0.5, min(sigma, (y1 - y0) / 4, (x1 - x0) / 4))
        low = gaussian_filter(d, (0, s, s), mode="nearest")
        worst = max(worst, float(np.sqrt((low * low).mean(axis=(1, 2))).max()) * 255.0)
    return worst


class LowFreqPass(Pass):
    """Low frequencies from the thumbnail inference where windows disagree (see the module notes).

    Parameters
    ----------
    split
        ``"gaussian"`` or ``"wavelet"``.
    agree_dn, disagree_dn
        Disagreement (DN) below which a window is left as it is, and from which it takes the thumbnail's
        low frequencies in full.
    """

    name: ClassVar[str] = "lowfreq"

    def __init__(self, split: str = "gaussian", *, agree_dn: float = 0.1, disagree_dn: float = 0.5) -> None:
        if split not in SPLITS:
            raise InputError(f"lowfreq split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.agree_dn, self.disagree_dn = float(agree_dn), float(disagree_dn)
        self.sigma = 2.0
        self.levels = 1
        self._gates: dict[int, float] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_gates": {}}

    def halo(self, plan: Plan) -> int:
        if self.split == "wavelet":
            return 8 * 2**self.levels
        return math.ceil(4 * self.sigma)

    def in_box(self, plan: Plan, box: Box, shape: tuple[int, int]) -> Box:
        """The box plus the halo; for the wavelet, starting on a multiple of ``2^L`` (chunk-invariant)."""
        y0, y1, x0, x1 = super().in_box(plan, box, shape)
        if self.split == "wavelet":
            step = 2**self.levels
            y0, x0 = y0 // step * step, x0 // step * step
        return y0, y1, x0, x1

    def prepare(self, ctx: PassContext) -> Any:
        thumb, factor = ctx.thumbnail()
        self.sigma = max(2.0, 2.0 * float(factor))
        self.levels = max(1, math.ceil(math.log2(2.0 * float(factor))))
        return {
            "thumb": np.ascontiguousarray(thumb, dtype=np.float32),
            "factor": float(factor),
            "windows": ctx.windows(),
        }

    def _gate(self, plan: Plan, windows: WindowOutputs | None, box: Box) -> np.ndarray | float:
        """Per-pixel gate over ``box`` ``(rows, cols, 1)``: the windows' gates with the grid's cosine weights."""
        if windows is None:
            return 1.0  # no window outputs to tell: the thumbnail's low frequencies everywhere
        y0, y1, x0, x1 = box
        gate = np.zeros((y1 - y0, x1 - x0), dtype=np.float64)
        span = max(self.disagree_dn - self.agree_dn, 1e-9)
        for index in plan.windows_for_box(y0, y1, x0, x1, crop=False):
            if index not in self._gates:
                a = window_disagreement(plan, windows, index, self.sigma)
                self._gates[index] = float(np.clip((a - self.agree_dn) / span, 0.0, 1.0))
            g = self._gates[index]
            if g == 0.0:
                continue
            w = plan.window(index)
            oy, ox = plan.y.out_start(w.row), plan.x.out_start(w.col)
            wy = normalized_axis_weights(plan.y, w.row, "cosine")
            wx = normalized_axis_weights(plan.x, w.col, "cosine")
            a0, a1, b0, b1 = max(y0, oy), min(y1, oy + wy.size), max(x0, ox), min(x1, ox + wx.size)
            if a0 < a1 and b0 < b1:
                gate[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] += g * np.outer(
                    wy[a0 - oy : a1 - oy], wx[b0 - ox : b1 - ox]
                )
        return gate[..., None]

    def _low(self, a: np.ndarray) -> np.ndarray:
        """Low frequencies of ``a`` ``(h, w, C)`` (float64)."""
        if self.split == "gaussian":
            return gaussian_filter(a, (self.sigma, self.sigma, 0), mode="reflect", truncate=4.0)
        import pywt

        levels = min(self.levels, pywt.dwtn_max_level(a.shape[:2], "sym4"))
        if levels < 1:
            return a.mean(axis=(0, 1), keepdims=True) + np.zeros_like(a)
        coeffs = pywt.wavedec2(a, "sym4", mode="symmetric", level=levels, axes=(0, 1))
        coeffs = [coeffs[0]] + [tuple(np.zeros_like(d) for d in level) for level in coeffs[1:]]
        return pywt.waverec2(coeffs, "sym4", mode="symmetric", axes=(0, 1))[: a.shape[0], : a.shape[1]]

    def apply(self, plan: Plan, box: Box, block: np.ndarray, in_box: Box, state: Any) -> np.ndarray:
        y0, y1, x0, x1 = box
        inner = (slice(y0 - in_box[0], y1 - in_box[0]), slice(x0 - in_box[2], x1 - in_box[2]))
        own = block[inner]
        if state is None:
            return np.array(own, dtype=np.float32)
        gate = self._gate(plan, state["windows"], box)
        if not np.any(gate):
            return np.array(own, dtype=np.float32)
        ref = upsample(state["thumb"], state["factor"], in_box)
        c = min(ref.shape[-1], block.shape[-1])  # pass-through channels (alpha) are not the model's
        diff = ref[..., :c] - block[..., :c].astype(np.float64)
        low = self._low(diff)[inner]
        out = np.array(own, dtype=np.float32)
        out[..., :c] += (gate * low).astype(np.float32)
        return out

    def describe(self) -> dict:
        return {
            "name": self.name,
            "split": self.split,
            "cutoff": "sigma = 2 thumbnail pixels"
            if self.split == "gaussian"
            else "ceil(log2(2 f)) sym4 levels",
            "agree_dn": self.agree_dn,
            "disagree_dn": self.disagree_dn,
        }
