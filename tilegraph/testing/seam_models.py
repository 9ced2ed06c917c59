"""Seam test kit: a generative stand-in with invented texture and shading, a window-store harness, scores.

Everything here drives :class:`~tilegraph.blend.abc.Blender` objects directly, without the engine:

* :class:`ShadedTextureModel`: a smooth local filter plus, per window, structured texture (streaks of
  about 10 px) and low-frequency shading (an offset and a ramp along each axis, per channel) that no
  per-window gain and offset removes; :meth:`ShadedTextureModel.base` is the deterministic part;
* :func:`measure_strips`, :func:`blend_image`: run the strip pass and blend boxes over window outputs
  held in memory (:func:`tilegraph.testing.windows.window_outputs`, :class:`~tilegraph.testing.windows.ArrayReader`,
  re-exported here);
* :func:`seam_scores`: texture ratio, gradient ratio and band steps over the plan's seam lines, as the
  seam issue defines them (steps against a truth such as whole-image inference).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from tilegraph.blend.abc import Blender, Box, overlap_strips
from tilegraph.plan.plan import Plan
from tilegraph.testing.models import _Declared, _finish, _near_identity_conv, _seeded, content_seed
from tilegraph.testing.windows import ArrayReader, window_outputs

__all__ = [
    "ShadedTextureModel",
    "ConfidenceModel",
    "make_shaded_texture_model",
    "ArrayReader",
    "window_outputs",
    "measure_strips",
    "blend_image",
    "seam_scores",
    "band_steps",
]


class ShadedTextureModel(_Declared):
    """Smooth filter + per-window structured texture + per-window shading (offset and ramps).

    Each window ``i`` (batch element) gets ``y_i = smooth(x_i) + t_i + s_i`` where ``t_i`` is Gaussian
    noise filtered anisotropically (``sigma = (0.7, streak / 4)`` px: streaks about ``streak`` px long),
    scaled to ``texture_dn`` DN and shared by the channels, and ``s_i(c, v, u) = b + g_y (v - 1/2) +
    g_x (u - 1/2)`` per channel with ``b`` uniform in ``+-shading_dn`` DN and ``g_y, g_x`` in
    ``+-2 shading_dn`` (each ramp reaches up to ``+-shading_dn`` at the window edges; ``u, v`` in [0, 1]
    across the window). Everything is drawn from an RNG seeded by :func:`content_seed` of the window, so
    overlapping windows invent different texture and shading, reproducibly.

    Parameters
    ----------
    channels
        Input and output channels.
    texture_dn
        Standard deviation of the texture in DN (1/255).
    shading_dn
        Amplitude of the offset and of each ramp in DN.
    streak
        Length of the streaks in pixels.
    seed
        Seed of the weights and of the invented parts.
    """

    stride = 1
    halo = 1

    def __init__(
        self,
        channels: int = 3,
        texture_dn: float = 2.0,
        shading_dn: float = 2.0,
        streak: float = 10.0,
        seed: int = 0,
    ) -> None:
        super().__init__(channels, channels)
        self.seed, self.texture_dn, self.shading_dn, self.streak = (
            int(seed),
            float(texture_dn),
            float(shading_dn),
            float(streak),
        )
        gen = torch.Generator().manual_seed(self.seed)
        with _seeded(self.seed):
            self.smooth = _near_identity_conv(channels, channels, gen, noise=0.01)
        _finish(self)

    def invented(self, tile: torch.Tensor | np.ndarray) -> np.ndarray:
        """The float64 texture plus shading ``(C, H, W)`` this model adds to one window ``(C, H, W)``."""
        c, h, w = (int(v) for v in tile.shape)
        rng = np.random.default_rng(content_seed(tile, self.seed))
        tex = gaussian_filter(rng.standard_normal((h, w)), (0.7, self.streak / 4), mode="wrap")
        tex *= self.texture_dn / 255.0 / max(float(tex.std()), 1e-12)
        amp = self.shading_dn / 255.0
        b = amp * rng.uniform(-1.0, 1.0, size=c)
        gy, gx = (2.0 * amp * rng.uniform(-1.0, 1.0, size=c) for _ in range(2))  # +-amp at the window edges
        v = (np.arange(h) + 0.5) / h - 0.5
        u = (np.arange(w) + 0.5) / w - 0.5
        shade = b[:, None, None] + gy[:, None, None] * v[None, :, None] + gx[:, None, None] * u[None, None, :]
        return tex[None] + shade

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic part (the smooth filter), the truth the invented parts deviate from."""
        return self.smooth(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Smooth, then add each window's invented texture and shading."""
        y = self.smooth(x)
        extra = np.stack([self.invented(x[i]) for i in range(x.shape[0])])
        return y + torch.from_numpy(extra).to(device=y.device, dtype=y.dtype)


class ConfidenceModel(_Declared):
    """A model that declares ``confidence = True``: ``base``'s output plus one last channel, its confidence.

    The confidence of each window is a constant drawn from ``[low, 1]`` by an RNG seeded by
    :func:`content_seed` of the window (``constant`` fixes it), times ``profile`` of the window position
    when ``peaked`` (1 at the centre, ``low`` at the borders: trust the middle of a window most).

    Parameters
    ----------
    base
        The model whose output is returned (default: an identity on ``channels``).
    channels
        Channels of the base when it is the identity.
    low
        Smallest confidence.
    constant
        A fixed confidence for every window (``None``: drawn per window).
    peaked
        Multiply by a raised-cosine profile across the window.
    seed
        Seed of the draws.
    """

    confidence = True

    def __init__(
        self,
        base: torch.nn.Module | None = None,
        channels: int = 3,
        low: float = 0.1,
        constant: float | None = None,
        peaked: bool = False,
        seed: int = 0,
    ) -> None:
        from tilegraph.testing.models import Identity

        inner = base if base is not None else Identity(channels)
        out = getattr(inner, "out_channels", None) or channels
        super().__init__(getattr(inner, "in_channels", None) or channels, out)
        self.base = inner
        self.stride, self.halo = int(getattr(inner, "stride", 1)), int(getattr(inner, "halo", 0))
        self.low, self.constant, self.peaked, self.seed = float(low), constant, bool(peaked), int(seed)

    def weight(self, tile: torch.Tensor | np.ndarray) -> np.ndarray:
        """The confidence ``(H, W)`` this model returns for one window ``(C, H, W)`` (float64)."""
        _, h, w = (int(v) for v in tile.shape)
        if self.constant is not None:
            c = float(self.constant)
        else:
            c = float(np.random.default_rng(content_seed(tile, self.seed)).uniform(self.low, 1.0))
        out = np.full((h, w), c)
        if self.peaked:
            py = np.sin(np.pi * (np.arange(h) + 0.5) / h) ** 2
            px = np.sin(np.pi * (np.arange(w) + 0.5) / w) ** 2
            out *= self.low + (1 - self.low) * np.outer(py, px)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x)`` with the confidence channel appended last."""
        y = self.base(x)
        conf = np.stack([self.weight(x[i]) for i in range(x.shape[0])])[:, None]
        return torch.cat([y, torch.from_numpy(conf).to(device=y.device, dtype=y.dtype)], dim=1)


# ----------------------------------------------------------------------------- harness
def measure_strips(blender: Blender, plan: Plan, read: ArrayReader) -> Any:
    """Run the strip pass of ``blender`` (if it has one) over every strip, then combine; else ``None``."""
    if not blender.strip_pass:
        return None
    results = {(s.a, s.b): blender.measure_strip(plan, s, read, None) for s in overlap_strips(plan)}
    return blender.combine_strips(plan, results)


def blend_image(
    blender: Blender,
    plan: Plan,
    read: ArrayReader,
    *,
    chunk: int | tuple[int, int] | None = None,
    strips: Any = None,
    box: Box | None = None,
) -> np.ndarray:
    """Blend ``box`` (default the whole output) in chunks of ``chunk`` px (default: one box) ``(h, w, C)``."""
    y0, y1, x0, x1 = box if box is not None else (0, plan.out_shape[0], 0, plan.out_shape[1])
    cy, cx = (chunk, chunk) if isinstance(chunk, int) else (chunk or (y1 - y0, x1 - x0))
    out = None
    for a in range(y0, y1, cy):
        for b in range(x0, x1, cx):
            sub = (a, min(y1, a + cy), b, min(x1, b + cx))
            part = np.asarray(blender.blend(plan, sub, read, strips=strips))
            if out is None:
                out = np.empty((y1 - y0, x1 - x0, part.shape[-1]), dtype=part.dtype)
            out[a - y0 : sub[1] - y0, b - x0 : sub[3] - x0] = part
    assert out is not None
    return out


# ----------------------------------------------------------------------------- scores
def _luma_dn(img: np.ndarray) -> np.ndarray:
    img = img if img.ndim == 3 else img[..., None]
    dn = img.astype(np.float64) * 255.0
    if dn.shape[-1] >= 3:
        return dn[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    return dn.mean(-1)


def _seam_positions(plan: Plan) -> dict[str, list[tuple[int, list[tuple[int, int]]]]]:
    """Seam lines per axis: ``(position, [(lo, hi) segment extents])``."""
    out: dict[str, list[tuple[int, list[tuple[int, int]]]]] = {"x": [], "y": []}
    for name, grid, other in (("x", plan.x, plan.y), ("y", plan.y, plan.x)):
        for i in range(grid.count - 1):
            c = grid.cut(i)
            if 0 < c < grid.out_size:
                segs = [other.keep(j) for j in range(other.count) if other.keep(j)[1] > other.keep(j)[0]]
                out[name].append((c, segs))
    return out


def band_steps(
    out: np.ndarray, truth: np.ndarray, plan: Plan, *, band: int | None = None, across: bool = False
) -> np.ndarray:
    """Per seam segment: mean of the residual ``out - truth`` (luma, DN) over ``band`` px after the seam
    minus the mean over ``band`` px before it (default ``band``: half the overlap, at least 2).

    ``across``: the bands lie beyond the overlap on either side instead of against the seam line (the
    jump across the whole overlap, for cuts routed anywhere in it).
    """
    res = _luma_dn(out) - _luma_dn(truth)
    steps = []
    for name, lines in _seam_positions(plan).items():
        grid = plan.x if name == "x" else plan.y
        h = band or max(2, math.ceil(grid.out_overlap / 2))
        off = math.ceil(grid.out_overlap / 2) if across else 0
        r = res if name == "x" else res.T
        for c, segs in lines:
            a0, a1 = max(0, c - off - h), max(0, c - off)
            b0, b1 = min(r.shape[1], c + off), min(r.shape[1], c + off + h)
            for lo, hi in segs:
                steps.append(r[lo:hi, b0:b1].mean() - r[lo:hi, a0:a1].mean())
    return np.asarray(steps)


def seam_scores(out: np.ndarray, plan: Plan, *, truth: np.ndarray | None = None, near: int = 6) -> dict:
    """Texture ratio, gradient ratio and (with ``truth``) worst band steps over the plan's seam lines.

    * texture ratio: standard deviation of the high-pass ``L - G_3 * L`` within ``near`` px of a seam
      line over the same in window interiors (farther than half the overlap plus ``near`` from every
      seam line);
    * gradient ratio: mean ``|dL|`` across the seam direction within ``near`` px of a seam line over the
      same in window interiors;
    * ``worst_step``: largest ``|band_steps|`` with half-overlap bands; ``worst_step_16``: with 16-px bands.
    """
    lum = _luma_dn(out)
    hp = lum - gaussian_filter(lum, 3.0, mode="nearest")
    h, w = lum.shape
    dist = {}
    edge = {}
    for name, size in (("x", w), ("y", h)):
        d = np.full(size, np.inf)
        idx = np.arange(size) + 0.5
        for c, _ in _seam_positions(plan)[name]:
            d = np.minimum(d, np.abs(idx - c))
        dist[name] = d
        edge[name] = np.minimum(idx, size - idx)  # distance to the image border
    ox, oy = plan.x.out_overlap, plan.y.out_overlap
    near_x, near_y = dist["x"] < near, dist["y"] < near
    # interiors: away from seam bands and from the image border (where windows show their own edges)
    int_x = (dist["x"] > ox / 2 + near) & (edge["x"] > ox / 2 + near)
    int_y = (dist["y"] > oy / 2 + near) & (edge["y"] > oy / 2 + near)
    inside_x, inside_y = edge["x"] > ox / 2 + near, edge["y"] > oy / 2 + near
    near_mask = (near_x[None, :] | near_y[:, None]) & inside_x[None, :] & inside_y[:, None]
    int_mask = int_x[None, :] & int_y[:, None]
    tr = float(hp[near_mask].std() / hp[int_mask].std()) if near_mask.any() and int_mask.any() else math.nan
    gx, gy = np.abs(np.diff(lum, axis=1)), np.abs(np.diff(lum, axis=0))
    bx = np.arange(w - 1) + 1.0  # boundary between columns k - 1 and k sits at k
    db_x = np.min([np.abs(bx - c) for c, _ in _seam_positions(plan)["x"]] or [np.full(w - 1, np.inf)], axis=0)
    by = np.arange(h - 1) + 1.0
    db_y = np.min([np.abs(by - c) for c, _ in _seam_positions(plan)["y"]] or [np.full(h - 1, np.inf)], axis=0)
    g_near = np.concatenate(
        [gx[np.ix_(inside_y, db_x < near)].ravel(), gy[np.ix_(db_y < near, inside_x)].ravel()]
    )
    in_bx = (db_x > ox / 2 + near) & (np.minimum(bx, w - bx) > ox / 2 + near)
    in_by = (db_y > oy / 2 + near) & (np.minimum(by, h - by) > oy / 2 + near)
    g_int = np.concatenate([gx[np.ix_(int_y, in_bx)].ravel(), gy[np.ix_(in_by, int_x)].ravel()])
    gr = float(g_near.mean() / g_int.mean()) if g_near.size and g_int.size else math.nan
    scores = {"texture_ratio": tr, "gradient_ratio": gr}
    if truth is not None:
        s = band_steps(out, truth, plan)
        s16 = band_steps(out, truth, plan, band=16)
        scores["worst_step"] = float(np.abs(s).max()) if s.size else 0.0
        scores["worst_step_16"] = float(np.abs(s16).max()) if s16.size else 0.0
    return scores


def make_shaded_texture_model(**kwargs: Any) -> ShadedTextureModel:
    """Factory for import paths (``tilegraph.testing.seam_models:make_shaded_texture_model``)."""
    return ShadedTextureModel(**kwargs)
