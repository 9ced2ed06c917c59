"""Seam and colour metrics over the plan's real seam lines, computed block by block (pure numpy/scipy).

The image is any array-like ``(H, W, C)`` or ``(H, W)`` that slices lazily (numpy, Zarr, ...); it is read
in blocks whose borders sit half-way between seams, so every seam's neighbourhood is inside one block and
only small per-seam sums are kept between blocks. All values are in DN, 1/255 of full scale whatever the
dtype (uint8 x1, uint16 /257, floats x255). Luminance for the seam metrics is Rec. 709 luma of the first
three channels (the channel itself for one channel, the channel mean otherwise); colour metrics treat the
data as sRGB (D65) unless an ICC profile says otherwise (matrix/TRC RGB profiles, CIELAB D50; see
:mod:`tilegraph.quality.icc`) and compare block means in linear light, as CIELAB, with CIEDE2000.

Seam lines (``algorithms.md`` §6) are the plan's cut lines ``plan.x.cut(c)`` / ``plan.y.cut(r)`` (for
weighted blends these are the overlap-band centres), split into segments, one per neighbouring window pair.
For each segment, with ``p(u)`` the luminance profile across the seam averaged along it:

* **step**: the jump of the profile at the seam once the local gradient is removed: one line with a
  common slope and an intercept per side is fitted outside ``c +- e`` (``e = m`` for ``crop``, half the
  overlap band for weighted blends, so a ramp's whole jump counts), with one pass of outlier rejection so a
  thin content line beside the seam does not count; ``z`` is the step over its standard error, which the
  texture left after averaging along the seam sets: texture averages out, a coherent step does not.
  ``near_step`` is the plain version (median of ``m`` pixels after the seam minus the ``m`` before, less
  the fitted gradient);
* **gradient ratio** (SGR): mean ``|dL|`` across the seam over the same at interior offsets;
* **texture ratio** (TCR): standard deviation of ``L - G_3 * L`` within 3 px of the seam over interiors.

Image-wide: the power of the absolute luminance-gradient profile (steps of either sign add up) at the tile
period and its harmonics against neighbouring frequencies (dB); ΔE2000 of block means against a reference (mean, p95, max, and between
neighbouring tiles); PSNR of the tiled result against whole-image inference in seam bands and interiors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from tilegraph._colour import _linear_to_lab, _srgb_to_linear, delta_e2000, srgb_to_lab  # noqa: F401 (icc imports them from here)
from tilegraph.plan.grid import AxisGrid
from tilegraph.plan.plan import Plan
from tilegraph.plan.weights import heaviside_profile, routed_profile, step_profile
from tilegraph.quality.icc import RGBToLab, colour_converter

__all__ = [
    "SeamProfile",
    "seam_metrics",
    "seam_shape",
    "difference_metrics",
    "seam_lines",
    "to_dn",
    "read_dn",
    "luminance",
    "srgb_to_lab",
    "delta_e2000",
    "solar_curve",
]

LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
HP_SIGMA = 3.0
HP_HALO = 10
#: A seam's step counts only beyond this many noise floors: a cut (``crop`` and routed seams) ...
STEP_FLOORS_SHARP = 4.0
#: ... and a ramp, whose statistic sees the content at the overlap's scale (heavier tails on photographs).
STEP_FLOORS_RAMP = 6.0


# --------------------------------------------------------------------------- units and colour
def to_dn(block) -> np.ndarray:
    """Values in DN (1/255 of full scale) as float32: uint8 x1, uint16 /257, other integers by their max, floats x255."""
    arr = np.asarray(block)
    if arr.dtype.kind in "ui":
        top = np.iinfo(arr.dtype).max
        return arr.astype(np.float32) * np.float32(255.0 / top)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32) * np.float32(255.0)
    raise TypeError(f"unsupported dtype {arr.dtype}")


def read_dn(image, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` in DN as float32 ``(h, w, C)`` (a 2-D image gets one channel)."""
    block = to_dn(image[y0:y1, x0:x1])
    return block[..., None] if block.ndim == 2 else block


def luminance(dn: np.ndarray) -> np.ndarray:
    """Luma ``(h, w)`` of a DN block ``(h, w, C)``: Rec. 709 weights on RGB, else the channel mean."""
    c = dn.shape[-1]
    if c == 3 or c == 4:
        return dn[..., :3] @ LUMA
    if c == 1:
        return dn[..., 0]
    return dn.mean(axis=-1)


def solar_curve(v: np.ndarray, *, cycles: float = 3.0) -> np.ndarray:
    """Retoucher's solar curve ``1/2 - 1/2 cos(2 pi n v)`` on ``[0, 1]`` (slope up to ``pi n``)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * cycles * np.asarray(v, dtype=np.float64))


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Segment:
    axis: str  # "x": vertical seam line at column pos; "y": horizontal line at row pos
    line: int  # seam index along the axis (between windows line and line + 1)
    pos: int
    lo: int  # extent along the seam
    hi: int
    a: int
    b: int


def seam_lines(plan: Plan) -> list[dict]:
    """Every seam segment of the plan, one per neighbouring window pair, as plain dicts.

    Keys: ``axis`` (``"x"``: a vertical line at column ``pos``; ``"y"``: a horizontal line at row ``pos``),
    ``line`` (seam index), ``pos``, ``lo``/``hi`` (extent along the line) and the window indices ``a``/``b``.
    """
    return [s.__dict__.copy() for s in _segments(plan)]


def _segments(plan: Plan) -> list[_Segment]:
    rows, cols = plan.grid
    h, w = plan.out_shape
    out = []
    for c in range(cols - 1):
        x = plan.x.cut(c)
        if 0 < x < w:
            for r in range(rows):
                lo, hi = plan.y.keep(r)
                if hi > lo:
                    out.append(_Segment("x", c, x, lo, hi, r * cols + c, r * cols + c + 1))
    for r in range(rows - 1):
        y = plan.y.cut(r)
        if 0 < y < h:
            for c in range(cols):
                lo, hi = plan.x.keep(c)
                if hi > lo:
                    out.append(_Segment("y", r, y, lo, hi, r * cols + c, (r + 1) * cols + c))
    return out


def _keep_centres(axis: AxisGrid) -> list[int]:
    return [(lo + hi) // 2 for lo, hi in (axis.keep(i) for i in range(axis.count))]


def _radius(axis: AxisGrid, cap: int) -> int:
    """Largest half-width around every seam that stays between the neighbouring keep centres."""
    centres = _keep_centres(axis)
    best = cap
    for i in range(axis.count - 1):
        c = axis.cut(i)
        if 0 < c < axis.out_size:
            best = min(best, c - centres[i], centres[i + 1] - c)
    return max(0, best)


def _block_edges(axis: AxisGrid, chunk: int) -> list[int]:
    """Block borders at keep centres (never within a seam's neighbourhood), about ``chunk`` apart."""
    edges = [0]
    for m in _keep_centres(axis):
        if m - edges[-1] >= chunk and m < axis.out_size:
            edges.append(m)
    if edges[-1] != axis.out_size:
        edges.append(axis.out_size)
    return edges


def _colour_edges(axis: AxisGrid, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour-block borders (each window's keep interval split into parts of about ``block``) and owners."""
    edges, owner = [], []
    for i in range(axis.count):
        lo, hi = axis.keep(i)
        if hi <= lo:
            continue
        k = max(1, round((hi - lo) / block))
        cuts = np.linspace(lo, hi, k + 1).round().astype(int)
        for j in range(k):
            edges.append(int(cuts[j]))
            owner.append(i)
    edges.append(axis.out_size)
    return np.asarray(edges), np.asarray(owner)


# --------------------------------------------------------------------------- accumulators
class _SeamAcc:
    """Per-segment sums of the profile across the seam, of |gradient| and of high-pass moments."""

    def __init__(self, n_seg: int, radius: int):
        r2 = 2 * radius
        self.n = np.zeros(n_seg)
        self.prof = np.zeros((n_seg, r2))
        self.gabs = np.zeros((n_seg, r2 - 1))
        self.hps = np.zeros((n_seg, r2))
        self.hpq = np.zeros((n_seg, r2))

    def add(self, s: int, strip: np.ndarray, hp: np.ndarray) -> None:
        """``strip``/``hp``: ``(along, 2R)`` luminance / high-pass, seam between columns R-1 and R."""
        strip = strip.astype(np.float64)
        hp = hp.astype(np.float64)
        self.n[s] += strip.shape[0]
        self.prof[s] += strip.sum(0)
        self.gabs[s] += np.abs(np.diff(strip, axis=1)).sum(0)
        self.hps[s] += hp.sum(0)
        self.hpq[s] += (hp * hp).sum(0)


# --------------------------------------------------------------------------- the seam step estimator
@dataclass(frozen=True)
class _StepSpec:
    """How the step across every seam of one axis is estimated (see :func:`seam_shape`).

    ``filt`` applied to ``2 R`` profile samples centred on a line gives the band step there (the
    least-squares amplitude of the seam shape under a quadratic content model, times ``kappa``);
    ``parallel`` are the offsets of the parallel lines (seam-free) whose statistic is the noise floor.
    """

    shape: np.ndarray  # s(v) over v = -R + 1/2 ... R - 1/2
    kappa: float  # band step of the shape (mean over [0, band) - mean over [-band, 0))
    transition: int  # half-width where 0 < s < 1
    R: int
    filt: np.ndarray
    near: tuple[int, ...]
    psi: np.ndarray  # the statistic's response at the near lines to the seam shape (1 at the seam line)
    threshold: float  # floors a step must exceed to count (content statistics have heavy tails)
    parallel: tuple[int, ...]
    band: int


SeamProfile = Callable[[str, int], np.ndarray]
"""``profile(axis, half)``: a blend mode's response to a unit step across a seam of ``axis`` (``"x"`` or
``"y"``), ``2 half`` samples centred on the seam line, NaN where unknown
(:meth:`tilegraph.blend.Blender.seam_profile` bound to the plan)."""


def seam_shape(plan: Plan, axis: str, half: int, profile: SeamProfile | None = None) -> np.ndarray:
    """Profile of the blend's response to a unit step between two windows, ``2 half`` samples across a seam.

    ``s[half + v]`` is the output at offset ``v`` from the seam line (``v = -half .. half - 1``) when the
    window before the seam outputs 0 and the one after it 1. ``profile`` (the mode's own, given by the
    caller: this package does not import blend modes) wins; without it ``crop`` cuts on the line, the
    weighted modes (``linear``, ``cosine``, ``gaussian``) give their normalised ramps, and any other mode
    is taken as a cut routed somewhere in the overlap (NaN across it: the step is then the jump between
    the two sides of the overlap).
    """
    grid = plan.x if axis == "x" else plan.y
    if grid.count < 2 or plan.blend == "crop":
        return heaviside_profile(half)
    if profile is not None:
        s = np.asarray(profile(axis, half), dtype=np.float64)
        if s.shape != (2 * half,):
            raise ValueError(f"seam profile of {plan.blend!r} has shape {s.shape}, expected ({2 * half},)")
        return s
    if plan.blend in ("linear", "cosine", "gaussian"):
        return step_profile(grid, plan.blend, half)
    return routed_profile(grid, half)


def _step_spec(plan: Plan, axis: str, m: int, profile: SeamProfile | None = None) -> _StepSpec:
    grid = plan.x if axis == "x" else plan.y
    stride = int(grid.stride * grid.scale)
    band = max(m, math.ceil(grid.out_overlap / 2))
    probe = max(8, min(stride, band + 16))
    s_full = seam_shape(plan, axis, probe, profile)
    v = np.arange(2 * probe) - probe
    routed = bool(np.isnan(s_full).any())  # the cut's place in the overlap is unknown: fit the sides only
    if routed:
        unknown = np.flatnonzero(np.isnan(s_full))
        trans = int(max(abs(v[unknown[0]]), abs(v[unknown[-1]] + 1)))
    else:
        inside = np.flatnonzero((s_full > 0.005) & (s_full < 0.995))
        trans = 0 if inside.size == 0 else int(max(abs(v[inside[0]]), abs(v[inside[-1]] + 1)))
        trans = min(trans, band)
    R = trans + max(6, trans // 2)
    # room for at least one seam-free parallel line between neighbouring seams: 2 (R + trans) <= stride
    R = max(trans + 2, min(R, stride // 2 - trans))
    if R <= probe:
        s = s_full[probe - R : probe + R]
    else:
        s = np.concatenate([np.zeros(R - probe), s_full, np.ones(R - probe)])
    vv = np.arange(2 * R) - R + 0.5
    # content: a cubic across the line for sharp shapes (a soft edge centred on the line is odd, and
    # must not read as a step); a line for ramps (whose shape a cubic would absorb) and routed cuts
    degree = 3 if trans <= 2 else 1
    known = np.isfinite(s)
    X = np.stack([(vv / R) ** k for k in range(degree + 1)] + [np.where(known, s, 0.0)], axis=1)
    pinv = np.zeros((X.shape[1], X.shape[0]))
    pinv[:, known] = np.linalg.pinv(X[known])
    if routed:
        kappa = 1.0  # the whole jump across the overlap
    else:
        kappa = float(s_full[probe : probe + band].mean() - s_full[probe - band : probe].mean())
        kappa = kappa if kappa > 1e-3 else 1.0
    filt = kappa * pinv[-1]
    s = np.where(known, s, 0.5)
    k_near = max(3, trans // 4)
    near = tuple(k for k in range(-k_near, k_near + 1) if k != 0)
    ext = np.concatenate([np.zeros(k_near), s, np.ones(k_near)])
    psi = np.array([ext[k_near - k : k_near - k + 2 * R] @ filt for k in near]) / kappa
    lo_off, hi_off = R + trans, stride - trans - R
    step = max(1, R // 2)
    offs = list(range(lo_off, hi_off + 1, step)) if hi_off >= lo_off else []
    parallel = tuple(sorted({o for o in offs} | {-o for o in offs}))
    threshold = STEP_FLOORS_SHARP if trans <= 2 else STEP_FLOORS_RAMP
    return _StepSpec(s, kappa, trans, R, filt, near, psi, threshold, parallel, band)


class _StepAcc:
    """Per-segment sums of the step statistic, per sub-segment of ``group`` pixels along the seam.

    Column 0 is the seam line, the others the parallel lines of the axis's :class:`_StepSpec`; the
    statistic is linear in the pixels, so sums over rows split between read blocks add up exactly.
    """

    def __init__(self, segs: list[_Segment], n_lines: int, target: int = 16):
        self.group = [max(4, math.ceil((s.hi - s.lo) / target)) for s in segs]
        n_bins = [math.ceil((s.hi - s.lo) / g) for s, g in zip(segs, self.group, strict=True)]
        self.sums = [np.zeros((k, n_lines)) for k in n_bins]
        self.cnt = [np.zeros(k) for k in n_bins]

    def add(self, i: int, seg: _Segment, along0: int, values: np.ndarray) -> None:
        """``values``: ``(along, n_lines)`` per-pixel statistics starting ``along0`` along the seam."""
        k = (np.arange(along0, along0 + values.shape[0]) - seg.lo) // self.group[i]
        np.add.at(self.sums[i], k, values.astype(np.float64))
        np.add.at(self.cnt[i], k, 1.0)

    def lines(self, i: int) -> np.ndarray:
        """Per-bin means ``(bins, n_lines)`` of the bins that got pixels."""
        ok = self.cnt[i] > 0
        return self.sums[i][ok] / self.cnt[i][ok, None]


def _robust_mean(v: np.ndarray) -> np.ndarray:
    """Interquartile mean along axis 0 (the mean of the middle half; the median for fewer than 4)."""
    n = v.shape[0]
    if n < 4:
        return np.median(v, axis=0)
    s = np.sort(v, axis=0)
    q = n // 4
    return s[q : n - q].mean(axis=0)


def _line_statistics(block: np.ndarray, pos: int, spec: _StepSpec) -> np.ndarray | None:
    """The step statistic of every row of ``block`` (rows along the seam, columns across) at the seam
    line (block column ``pos``) and at its parallel lines: ``(rows, 1 + len(parallel))``; ``None`` when
    the block does not hold the seam line's neighbourhood."""
    R = spec.R
    offs = (0,) + spec.near + spec.parallel
    cols = []
    for o in offs:
        t = pos + o
        if t - R < 0 or t + R > block.shape[1]:
            if abs(o) <= len(spec.near):
                return None
            cols.append(np.full(block.shape[0], np.nan, dtype=np.float64))
            continue
        cols.append(block[:, t - R : t + R].astype(np.float64) @ spec.filt)
    return np.stack(cols, axis=1)


# --------------------------------------------------------------------------- main entry
def seam_metrics(
    image,
    plan: Plan,
    *,
    reference=None,
    whole=None,
    m: int = 3,
    radius: int = 32,
    block: int | None = None,
    chunk: int = 1024,
    top_k: int = 8,
    remove_global_colour: bool = False,
    grid_limit: int = 50_000,
    icc_profile: bytes | None = None,
    seam_profile: SeamProfile | None = None,
) -> dict:
    """Seam, texture, periodicity, colour-drift and fidelity metrics of a stitched output.

    Parameters
    ----------
    image
        The stitched output ``(H, W, C)`` or ``(H, W)`` with ``(H, W) == plan.out_shape``; numpy, Zarr or any
        array-like that slices lazily (read block by block, never whole).
    plan
        The plan that produced it (seam positions, blend mode, overlap).
    reference
        Optional reference ``(h, w, C)`` of the same scene at any resolution (e.g. the input, or the model
        run on a thumbnail) for the colour drift; its pixels are assigned to blocks by their centres.
    whole
        Optional whole-image inference result, same shape as ``image``, for the fidelity PSNR.
    m
        Pixels per side for the step (2-4).
    radius
        Half-width of the profile across each seam (capped so neighbourhoods stay between keep centres).
    block
        Colour block size in output pixels (default: half the output stride, clipped to 8-128).
    chunk
        Approximate read block size in output pixels.
    top_k
        Number of worst segments and seam lines listed.
    remove_global_colour
        Subtract the global mean Lab offset before ΔE (for tasks that legitimately change colour).
    grid_limit
        Per-segment step grids are included when there are at most this many segments.
    icc_profile
        ICC profile of ``image`` and ``reference`` (they share it) for the colour metrics; ``None`` means
        sRGB. A profile that is not a matrix/TRC RGB profile falls back to sRGB; ``units.colour_space``
        records which was used.
    seam_profile
        The blend mode's response to a step across a seam (:data:`SeamProfile`;
        ``functools.partial(blender.seam_profile, plan)``), which the step estimator fits; default: known
        for the built-in modes, else a cut routed anywhere in the overlap (see :func:`seam_shape`).

    Returns
    -------
    dict
        Plain data (JSON-able); see the module notes. Keys: ``units`` (``values``, ``colour_space``),
        ``geometry``, ``seams``, ``gradient_ratio``, ``texture_ratio``, ``period``, ``colour`` (or ``None``),
        ``fidelity`` (or ``None``).
    """
    h, w = plan.out_shape
    if tuple(image.shape[:2]) != (h, w):
        raise ValueError(f"image is {tuple(image.shape[:2])}, the plan's output {h} x {w}")
    if whole is not None and tuple(whole.shape) != tuple(image.shape):
        raise ValueError(f"whole has shape {tuple(whole.shape)}, image {tuple(image.shape)}")
    weighted = plan.blend != "crop"
    specs = {"x": _step_spec(plan, "x", m, seam_profile), "y": _step_spec(plan, "y", m, seam_profile)}
    half_band = {a: specs[a].transition for a in ("x", "y")}
    rad = {
        "x": _radius(plan.x, max(radius, half_band["x"] + 12)),
        "y": _radius(plan.y, max(radius, half_band["y"] + 12)),
    }
    segs = _segments(plan)
    by_axis = {
        "x": [i for i, s in enumerate(segs) if s.axis == "x"],
        "y": [i for i, s in enumerate(segs) if s.axis == "y"],
    }
    accs = {a: _SeamAcc(len(segs), max(rad[a], 1)) for a in ("x", "y")}
    usable = {a: rad[a] >= m + 2 for a in ("x", "y")}
    steps = {a: _StepAcc(segs, 1 + len(specs[a].near) + len(specs[a].parallel)) for a in ("x", "y")}
    halo = {
        a: max(HP_HALO, int(((plan.x if a == "x" else plan.y).stride * plan.scale_fraction) // 2) + 2)
        for a in ("x", "y")
    }
    n_ch = 1 if len(image.shape) == 2 else int(image.shape[2])
    colour_ok = reference is not None and n_ch in (1, 3, 4)
    stride_out = (plan.y.stride * plan.scale_fraction, plan.x.stride * plan.scale_fraction)
    cblock = block or int(min(128, max(8, min(stride_out) // 2)))
    conv = colour_converter(icc_profile, channels=3 if n_ch != 1 else 1)
    if colour_ok:
        cey, coy = _colour_edges(plan.y, cblock)
        cex, cox = _colour_edges(plan.x, cblock)
        ncol = 3 if n_ch != 1 else 1
        c_sum = np.zeros((len(cey) - 1, len(cex) - 1, ncol))
        c_cnt = np.zeros((len(cey) - 1, len(cex) - 1))
        r_sum = np.zeros_like(c_sum)
        r_cnt = np.zeros_like(c_cnt)
        rh, rw = reference.shape[:2]
    colprof = np.zeros(w)
    rowprof = np.zeros(h)
    if whole is not None:
        band_x = np.zeros(w, dtype=bool)
        band_y = np.zeros(h, dtype=bool)
        bw = max(m, specs["x"].band, specs["y"].band, 2)
        for s in segs:
            arr = band_x if s.axis == "x" else band_y
            arr[max(0, s.pos - bw) : s.pos + bw] = True
        fid: dict[str, float] = {"sq_band": 0.0, "n_band": 0.0, "sq_int": 0.0, "n_int": 0.0, "max": 0.0}

    ey, ex = _block_edges(plan.y, chunk), _block_edges(plan.x, chunk)
    for by0, by1 in zip(ey[:-1], ey[1:], strict=True):
        for bx0, bx1 in zip(ex[:-1], ex[1:], strict=True):
            hy0, hy1 = max(0, by0 - halo["y"]), min(h, by1 + halo["y"])
            hx0, hx1 = max(0, bx0 - halo["x"]), min(w, bx1 + halo["x"])
            dn = read_dn(image, hy0, hy1, hx0, hx1)
            lum = luminance(dn)
            hp = lum - gaussian_filter(lum, HP_SIGMA, mode="nearest")
            core = (slice(by0 - hy0, by1 - hy0), slice(bx0 - hx0, bx1 - hx0))
            lc, hc = lum[core], hp[core]
            # seams near the image border: the step statistic reads the border mirrored (never "n/a")
            py0, py1 = halo["y"] - (by0 - hy0), halo["y"] - (hy1 - by1)
            px0, px1 = halo["x"] - (bx0 - hx0), halo["x"] - (hx1 - bx1)
            lum_p = (
                np.pad(lum, ((py0, py1), (px0, px1)), mode="symmetric") if py0 or py1 or px0 or px1 else lum
            )
            # |gradient| profiles (the halo gives the left/top neighbour of the first column/row)
            gx = np.abs(np.diff(lum[core[0], max(0, bx0 - 1 - hx0) : bx1 - hx0], axis=1)).sum(0)
            colprof[bx1 - len(gx) : bx1] += gx
            gy = np.abs(np.diff(lum[max(0, by0 - 1 - hy0) : by1 - hy0, core[1]], axis=0)).sum(1)
            rowprof[by1 - len(gy) : by1] += gy
            for axis in ("x", "y"):
                r = rad[axis]
                for i in by_axis[axis]:
                    s = segs[i]
                    if axis == "x":
                        if not (bx0 < s.pos < bx1):
                            continue
                        lo, hi = max(s.lo, by0), min(s.hi, by1)
                        if lo >= hi:
                            continue
                        stat = _line_statistics(
                            lum_p[lo - hy0 + py0 : hi - hy0 + py0, :], s.pos - hx0 + px0, specs[axis]
                        )
                        sl = (slice(lo - by0, hi - by0), slice(s.pos - r - bx0, s.pos + r - bx0))
                        strip, hps = lc[sl], hc[sl]
                    else:
                        if not (by0 < s.pos < by1):
                            continue
                        lo, hi = max(s.lo, bx0), min(s.hi, bx1)
                        if lo >= hi:
                            continue
                        stat = _line_statistics(
                            lum_p[:, lo - hx0 + px0 : hi - hx0 + px0].T, s.pos - hy0 + py0, specs[axis]
                        )
                        sl = (slice(s.pos - r - by0, s.pos + r - by0), slice(lo - bx0, hi - bx0))
                        strip, hps = lc[sl].T, hc[sl].T
                    if stat is not None:
                        steps[axis].add(i, s, lo, stat)
                    if usable[axis] and strip.shape[1] == 2 * r:
                        accs[axis].add(i, strip, hps)
            if colour_ok:
                _colour_add(dn[core], by0, bx0, cey, cex, c_sum, c_cnt, conv)
                ry0, ry1 = _ref_index(by0, h, rh), _ref_index(by1, h, rh)
                rx0, rx1 = _ref_index(bx0, w, rw), _ref_index(bx1, w, rw)
                if ry1 > ry0 and rx1 > rx0:
                    ref_dn = read_dn(reference, ry0, ry1, rx0, rx1)
                    ycen = (np.arange(ry0, ry1) + 0.5) * h / rh
                    xcen = (np.arange(rx0, rx1) + 0.5) * w / rw
                    _colour_add_mapped(ref_dn, ycen, xcen, cey, cex, r_sum, r_cnt, conv)
            if whole is not None:
                wd = read_dn(whole, by0, by1, bx0, bx1)
                diff2 = ((dn[core] - wd) ** 2).astype(np.float64)
                mask = band_y[by0:by1, None] | band_x[None, bx0:bx1]
                per_px = diff2.sum(-1)
                fid["sq_band"] += float(per_px[mask].sum())
                fid["n_band"] += int(mask.sum()) * diff2.shape[-1]
                fid["sq_int"] += float(per_px[~mask].sum())
                fid["n_int"] += int((~mask).sum()) * diff2.shape[-1]
                fid["max"] = max(fid["max"], float(np.sqrt(diff2.max(initial=0.0))))

    seam_rows = _finish_segments(segs, accs, steps, specs, rad, half_band, m, usable)
    out: dict[str, Any] = {
        "units": {"values": "DN (1/255 of full scale)", "colour_space": conv.description},
        "geometry": {
            "shape": [h, w],
            "channels": n_ch,
            "blend": plan.blend,
            "grid": list(plan.grid),
            "stride_out": [float(v) for v in stride_out],
            "overlap_out": [plan.y.out_overlap, plan.x.out_overlap],
            "radius": [rad["y"], rad["x"]],
            "m": m,
            "step_fit": {
                a: {
                    "half_width": specs[a].R,
                    "transition": specs[a].transition,
                    "band": specs[a].band,
                    "kappa": specs[a].kappa,
                    "parallel_lines": len(specs[a].parallel),
                    "threshold_floors": specs[a].threshold,
                }
                for a in ("x", "y")
            },
            "colour_block": cblock,
        },
    }
    out.update(_summarise_seams(plan, segs, seam_rows, top_k, grid_limit, weighted))
    out["period"] = {
        "x": _period_power(colprof, float(stride_out[1])),
        "y": _period_power(rowprof, float(stride_out[0])),
    }
    vals = [v["max_db"] for v in out["period"].values() if v["max_db"] is not None]
    out["period"]["max_db"] = max(vals) if vals else None
    out["colour"] = (
        _colour_summary(plan, c_sum, c_cnt, r_sum, r_cnt, coy, cox, remove_global_colour, top_k, conv)
        if colour_ok
        else None
    )
    if whole is not None:
        out["fidelity"] = {
            "band_halfwidth": bw,
            "psnr_seam": _psnr(fid["sq_band"], fid["n_band"]),
            "psnr_interior": _psnr(fid["sq_int"], fid["n_int"]),
            "psnr": _psnr(fid["sq_band"] + fid["sq_int"], fid["n_band"] + fid["n_int"]),
            "max_abs_dn": fid["max"],
        }
    else:
        out["fidelity"] = None
    return out


def _psnr(sq: float, n: float) -> float | None:
    if n == 0:
        return None
    mse = sq / n
    return float("inf") if mse == 0 else float(10 * math.log10(255.0**2 / mse))


def _ref_index(pos: int, size: int, ref_size: int) -> int:
    """First reference index whose pixel centre maps at or after output position ``pos``."""
    return int(min(ref_size, max(0, math.ceil(pos * ref_size / size - 0.5))))


def _colour_add(dn: np.ndarray, y0: int, x0: int, cey, cex, c_sum, c_cnt, conv: RGBToLab) -> None:
    ycen = np.arange(y0, y0 + dn.shape[0]) + 0.5
    xcen = np.arange(x0, x0 + dn.shape[1]) + 0.5
    _colour_add_mapped(dn, ycen, xcen, cey, cex, c_sum, c_cnt, conv)


def _colour_add_mapped(dn: np.ndarray, ycen, xcen, cey, cex, acc, cnt, conv: RGBToLab) -> None:
    """Add linear-light sums of ``dn`` pixels (centres ``ycen``/``xcen`` in output px) into colour blocks."""
    ncol = acc.shape[-1]
    v = np.clip(dn[..., :ncol] / 255.0, 0.0, 1.0)
    lin = conv.linearize(v.astype(np.float64))
    iy = np.clip(np.searchsorted(cey, ycen, side="right") - 1, 0, len(cey) - 2)
    ix = np.clip(np.searchsorted(cex, xcen, side="right") - 1, 0, len(cex) - 2)
    uy, sy = np.unique(iy, return_index=True)
    ux, sx = np.unique(ix, return_index=True)
    part = np.add.reduceat(np.add.reduceat(lin, sy, axis=0), sx, axis=1)
    acc[np.ix_(uy, ux)] += part
    cy = np.diff(np.append(sy, len(iy)))
    cx = np.diff(np.append(sx, len(ix)))
    cnt[np.ix_(uy, ux)] += cy[:, None] * cx[None, :]


def _finish_segments(segs, accs, steps, specs, rad, half_band, m, usable) -> list[dict | None]:
    """Per-segment numbers: the step (above the noise floor), its floor, gradient and texture sums.

    The raw step of a segment is the interquartile mean, over sub-segments along the seam, of the
    band step estimated at the seam line; its noise floor is what the same statistic does on the
    seam-free parallel lines of the same segment (RMS), pooled half-and-half with the median floor of
    the axis (a segment has few parallel lines of its own). The reported ``step`` is the part of the
    raw step beyond three floors (zero when the content alone could explain it).
    """
    raw: list[tuple[float, float | None, float, int] | None] = []
    for i, s in enumerate(segs):
        spec = specs[s.axis]
        values = steps[s.axis].lines(i)
        nn = 1 + len(spec.near)
        if values.shape[0] == 0 or not np.all(np.isfinite(values[:, :nn])):
            raw.append(None)
            continue
        finite = np.all(np.isfinite(values), axis=0)
        means = _robust_mean(values[:, finite])
        nb = values.shape[0]
        se = float(np.std(values[:, 0]) / math.sqrt(max(nb - 1, 1))) * 1.1 if nb > 1 else 0.0
        if spec.transition <= 2:  # a cut on the line: content at the line itself shows on the near lines
            near_res = means[1:nn] - means[0] * spec.psi
            se = max(se, float(np.sqrt(np.mean(near_res**2))))
        par = means[nn:]
        floor = float(np.sqrt(np.mean(par**2))) if par.size else None
        raw.append((float(means[0]), floor, se, nb))
    axis_floor = {}
    for a in ("x", "y"):
        fl = [
            r[1] for s, r in zip(segs, raw, strict=True) if r is not None and s.axis == a and r[1] is not None
        ]
        axis_floor[a] = float(np.sqrt(np.mean(np.square(fl)))) if fl else None
    rows: list[dict | None] = []
    for i, s in enumerate(segs):
        est = raw[i]
        if est is None:
            rows.append(None)
            continue
        value, floor, se, nb = est
        spec = specs[s.axis]
        if spec.transition <= 2:  # a cut: the near lines tell content at the line from a step
            sigma = se
        else:  # a ramp: the near lines cannot, the parallel lines bound what content does
            sigma = max(se, floor or 0.0, axis_floor[s.axis] or 0.0)
        z = abs(value) / sigma if sigma > 0 else (math.inf if value else 0.0)
        k = spec.threshold
        excess = value * min(1.0, max(0.0, (z - k) / k))  # 0 below k floors, the whole raw step from 2 k
        row: dict = {
            "step": float(excess),
            "raw_step": value,
            "floor": float(sigma),
            "z": float(min(z, 1e6)),
            "near_step": None,
            "g_seam": None,
            "g_int": None,
            "hp_near": (0.0, 0.0, 0),
            "hp_far": (0.0, 0.0, 0),
            "n": float(nb),
        }
        acc, r = accs[s.axis], rad[s.axis]
        n = acc.n[i]
        if usable[s.axis] and n > 0:
            p = acc.prof[i] / n
            beta = float(np.median(np.diff(p)))
            row["near_step"] = float(np.median(p[r : r + m]) - np.median(p[r - m : r]) - beta * m)
            g = acc.gabs[i] / n  # g[k - 1]: |difference| between columns k - 1 and k
            first = half_band[s.axis] + 2
            offs = list(range(first, r)) if first < r else [max(1, r // 2)]
            row["g_seam"] = float(g[r - 1])
            row["g_int"] = float(np.mean([g[r + o - 1] for o in offs] + [g[r - o - 1] for o in offs]))
            near_cols = list(range(r - 3, r + 3))
            far_cols = [r + o for o in offs] + [r - 1 - o for o in offs]
            row["hp_near"] = (float(acc.hps[i][near_cols].sum()), float(acc.hpq[i][near_cols].sum()), n * 6)
            row["hp_far"] = (
                float(acc.hps[i][far_cols].sum()),
                float(acc.hpq[i][far_cols].sum()),
                n * len(far_cols),
            )
        rows.append(row)
    return rows


def _pooled_std(parts) -> float | None:
    s = sum(p[0] for p in parts)
    q = sum(p[1] for p in parts)
    n = sum(p[2] for p in parts)
    if n == 0:
        return None
    mean = s / n
    return math.sqrt(max(q / n - mean * mean, 0.0))


def _ratio(a, b) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return float(a / b)


def _summarise_seams(plan, segs, rows, top_k, grid_limit, weighted) -> dict:
    ok = [(s, r) for s, r in zip(segs, rows, strict=True) if r is not None]
    steps = np.array([abs(r["step"]) for _, r in ok])
    raws = np.array([abs(r["raw_step"]) for _, r in ok])
    floors = np.array([r["floor"] for _, r in ok])
    near = [abs(r["near_step"]) for _, r in ok if r["near_step"] is not None]
    seams: dict = {"count": len(ok), "expected": len(segs)}
    if ok:
        seams.update(
            worst_step=float(steps.max()),
            mean_step=float(steps.mean()),
            p95_step=float(np.percentile(steps, 95)),
            worst_raw_step=float(raws.max()),
            noise_floor=float(np.median(floors)),
            worst_noise_floor=float(floors.max()),
            worst_near_step=float(max(near)) if near else None,
            visible=int(sum(1 for _, r in ok if abs(r["step"]) >= 0.5)),
        )
        order = np.lexsort((-raws, -steps))[:top_k]
        seams["worst"] = [_segment_record(*ok[i]) for i in order]
        lines: dict = {}
        for s, r in ok:
            key = (s.axis, s.line)
            tot = lines.setdefault(key, [s.pos, 0.0, 0.0, 0.0])
            tot[1] += r["raw_step"] * r["n"]
            tot[2] += r["n"]
            tot[3] += r["floor"] * r["n"]
        ranked = sorted(lines.items(), key=lambda kv: -abs(kv[1][1] / kv[1][2]))[:top_k]
        seams["worst_lines"] = [
            {
                "axis": k[0],
                "line": k[1],
                "pos": v[0],
                "mean_step": float(v[1] / v[2]),
                "floor": float(v[3] / v[2]),
            }
            for k, v in ranked
        ]
    else:
        seams.update(
            worst_step=None,
            mean_step=None,
            p95_step=None,
            worst_raw_step=None,
            noise_floor=None,
            worst_noise_floor=None,
            worst_near_step=None,
            visible=0,
            worst=[],
            worst_lines=[],
        )
    if len(segs) <= grid_limit:
        rows_, cols_ = plan.grid
        gx = np.full((rows_, max(cols_ - 1, 0)), np.nan)
        gy = np.full((max(rows_ - 1, 0), cols_), np.nan)
        for s, r in ok:
            if s.axis == "x":
                gx[s.a // cols_, s.line] = r["step"]
            else:
                gy[s.line, s.a % cols_] = r["step"]
        seams["step_grid"] = {"x": _nan_list(gx), "y": _nan_list(gy)}
    ok_g = [(s, r) for s, r in ok if r["g_seam"] is not None]
    g_seam = sum(r["g_seam"] * r["n"] for _, r in ok_g)
    g_int = sum(r["g_int"] * r["n"] for _, r in ok_g)
    per_axis = {}
    for axis in ("x", "y"):
        sub = [r for s, r in ok_g if s.axis == axis]
        per_axis[axis] = _ratio(sum(r["g_seam"] * r["n"] for r in sub), sum(r["g_int"] * r["n"] for r in sub))
    tcr = _ratio(_pooled_std([r["hp_near"] for _, r in ok_g]), _pooled_std([r["hp_far"] for _, r in ok_g]))
    return {
        "seams": seams,
        "gradient_ratio": {"value": _ratio(g_seam, g_int), "per_axis": per_axis},
        "texture_ratio": {"value": tcr},
    }


def _nan_list(a: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in a]


def _segment_record(s: _Segment, r: dict) -> dict:
    if s.axis == "x":
        box = [s.lo, s.hi, s.pos, s.pos]
    else:
        box = [s.pos, s.pos, s.lo, s.hi]
    return {
        "axis": s.axis,
        "line": s.line,
        "pos": s.pos,
        "extent": [s.lo, s.hi],
        "box": box,
        "windows": [s.a, s.b],
        "step": r["step"],
        "raw_step": r["raw_step"],
        "floor": r["floor"],
        "near_step": r["near_step"],
        "z": r["z"],
        "gradient_ratio": _ratio(r["g_seam"], r["g_int"]),
    }


def _period_power(profile: np.ndarray, period: float, *, harmonics: int = 4) -> dict:
    """Power of ``profile`` at ``k / period`` against the median of neighbouring frequencies, in dB."""
    n = len(profile)
    res = {"period": period, "harmonics_db": [], "max_db": None}
    if n < 4 * period or period < 2:
        return res
    p = profile - profile.mean()
    win = np.hanning(n)
    x = np.arange(n)
    wp = win * p

    def power(f: np.ndarray) -> np.ndarray:
        return np.abs(np.exp(-2j * np.pi * np.outer(f, x)) @ wp) ** 2

    out = []
    for k in range(1, harmonics + 1):
        f = k / period
        if f >= 0.5:
            break
        near = f + np.array([j for j in range(-8, 9) if abs(j) >= 2]) / n
        near = near[(near > 0) & (near < 0.5)]
        base = np.median(power(near))
        peak = power(np.array([f]))[0]
        out.append(float(10 * math.log10(max(peak, 1e-30) / max(base, 1e-30))))
    res["harmonics_db"] = out
    res["max_db"] = max(out) if out else None
    return res


def _colour_summary(plan, c_sum, c_cnt, r_sum, r_cnt, coy, cox, remove_global, top_k, conv) -> dict | None:
    ok = (c_cnt > 0) & (r_cnt > 0)
    if not ok.any():
        return None
    lab_o = conv.linear_to_lab(c_sum / np.maximum(c_cnt, 1)[..., None])
    lab_r = conv.linear_to_lab(r_sum / np.maximum(r_cnt, 1)[..., None])
    err = lab_o - lab_r
    if remove_global:
        err = err - err[ok].mean(axis=0)
    de = delta_e2000(lab_r + err, lab_r)
    vals = de[ok]
    rows_, cols_ = plan.grid
    tile = coy[:, None] * cols_ + cox[None, :]
    n_t = rows_ * cols_
    t_cnt = np.bincount(tile[ok], minlength=n_t).astype(float)
    t_err = np.stack(
        [np.bincount(tile[ok], weights=err[ok][:, k], minlength=n_t) for k in range(3)], -1
    ).astype(np.float64)
    t_ref = np.stack(
        [np.bincount(tile[ok], weights=lab_r[ok][:, k], minlength=n_t) for k in range(3)], -1
    ).astype(np.float64)
    t_de = np.bincount(tile[ok], weights=vals, minlength=n_t).astype(np.float64)
    has = t_cnt > 0
    t_err[has] /= t_cnt[has, None]
    t_ref[has] /= t_cnt[has, None]
    t_de[has] /= t_cnt[has]
    nb = []
    for r in range(rows_):
        for c in range(cols_):
            i = r * cols_ + c
            for j in ((i + 1) if c + 1 < cols_ else None, (i + cols_) if r + 1 < rows_ else None):
                if j is not None and has[i] and has[j]:
                    mid = 0.5 * (t_ref[i] + t_ref[j])
                    nb.append((float(delta_e2000(mid + t_err[i], mid + t_err[j])), i, j))
    nbv = np.array([v for v, _, _ in nb]) if nb else np.zeros(0)
    total = float(vals.var())
    between = float(np.average((t_de[has] - vals.mean()) ** 2, weights=t_cnt[has])) if has.any() else 0.0
    worst_nb = sorted(nb, reverse=True)[:top_k]
    return {
        "blocks": list(de.shape),
        "mean": float(vals.mean()),
        "p95": float(np.percentile(vals, 95)),
        "max": float(vals.max()),
        "tile_share": between / total if total > 0 else 0.0,
        "neighbour": {
            "mean": float(nbv.mean()) if len(nbv) else None,
            "p95": float(np.percentile(nbv, 95)) if len(nbv) else None,
            "max": float(nbv.max()) if len(nbv) else None,
            "worst": [{"windows": [i, j], "delta_e": v} for v, i, j in worst_nb],
        },
        "global_offset_removed": bool(remove_global),
    }


def difference_metrics(a, b, *, chunk: int = 1024) -> dict:
    """How far two results of the same region differ (e.g. the tile grid shifted by half a tile), in DN.

    Parameters
    ----------
    a, b
        Arrays ``(H, W, C)`` or ``(H, W)`` of the same shape (numpy, Zarr, ...), read in blocks.
    chunk
        Block side in pixels.

    Returns
    -------
    dict
        ``max_abs_dn``, ``mean_abs_dn`` and ``psnr`` (dB, 255 peak; ``inf`` when identical).
    """
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    h, w = a.shape[:2]
    sq = ab = 0.0
    n = 0
    mx = 0.0
    for y0 in range(0, h, chunk):
        for x0 in range(0, w, chunk):
            d = (
                read_dn(a, y0, min(h, y0 + chunk), x0, min(w, x0 + chunk))
                - read_dn(b, y0, min(h, y0 + chunk), x0, min(w, x0 + chunk))
            ).astype(np.float64)
            sq += float((d * d).sum())
            ab += float(np.abs(d).sum())
            n += d.size
            mx = max(mx, float(np.abs(d).max(initial=0.0)))
    return {"max_abs_dn": mx, "mean_abs_dn": ab / max(n, 1), "psnr": _psnr(sq, n)}
