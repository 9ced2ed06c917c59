"""Measure a model's receptive field with impulse probes, and propose the halo it needs.

An impulse is added to a random base image at several positions (a strided model's support depends
on where the impulse falls relative to its stride) with several signs and magnitudes (so that ReLU
dead zones and max-pooling do not hide a dependency). The model runs in float64 on a deep copy, and
the probe compares outputs *exactly*: the radius is the largest distance, in source pixels, at which
an impulse changes any output value at all. The probe image grows until the support stays well
inside it.

torch is imported only when the model is a torch module.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from tilegraph.errors import ModelOutputError
from tilegraph.plan.normalize import coerce_scale, lcm

__all__ = [
    "ReceptiveField",
    "measure_receptive_field",
    "HaloProposal",
    "propose_halo",
    "global_context_ops",
    "DEFAULT_BUDGET",
]

DEFAULT_MAGNITUDES = (1.0, -1.0, 1000.0, -1000.0)


@dataclass(frozen=True)
class ReceptiveField:
    """Result of :func:`measure_receptive_field`.

    Attributes
    ----------
    radius : int
        Largest distance (Chebyshev, in source pixels) between an impulse and the source footprint of an
        output pixel it changes, over all probes. A lower bound when ``bounded`` is false.
    radius_yx : tuple of int
        The same along rows and along columns separately.
    per_position : dict
        Radius per probed position, keyed by the ``(dy, dx)`` offset of the impulse from a point aligned to
        ``stride`` (so the key modulo ``stride`` is the phase of the impulse).
    halo : int or None
        Proposed halo: ``radius`` rounded up to a multiple of ``stride``; ``None`` if not bounded.
    overlap : int or None
        ``2 * halo``, the window overlap that makes crop-centre tiling exact; ``None`` if not bounded.
    stride : int
        Alignment used: lcm of the model stride and the down-scale factor.
    scale : str
        Output pixels per source pixel.
    size : int
        Side of the (square) probe image that gave the result, in source pixels.
    bounded : bool
        False when the support reached the probe image border at the largest size tried or exceeded
        ``max_radius``: the model is not local (normalisation over the window, global pooling, content
        noise) or its receptive field is larger than ``max_radius``.
    """

    radius: int
    radius_yx: tuple[int, int]
    per_position: dict
    halo: int | None
    overlap: int | None
    stride: int
    scale: str
    size: int
    bounded: bool


def _footprint_distance(n_out: int, p: int, s: Fraction) -> np.ndarray:
    """Distance in source px from source pixel ``p`` to the footprint of each output index ``0..n_out-1``.

    Output index ``q`` covers source pixels ``[floor(q / s), ceil((q + 1) / s) - 1]``.
    """
    q = np.arange(n_out, dtype=np.int64)
    lo = (q * s.denominator) // s.numerator
    hi = -(-((q + 1) * s.denominator) // s.numerator) - 1
    return np.maximum(np.maximum(lo - p, p - hi), 0)


def _runner(model, device: str, dtype: str = "float64"):
    """A function numpy ``(N, C, H, W)`` -> float64 numpy, on a ``dtype`` copy of ``model``.

    The input is cast to ``dtype`` (a torch module runs on a deep copy converted to it; a callable
    receives it as is and may compute in its own precision).
    """
    np_dtype = np.dtype(dtype)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        m = copy.deepcopy(model).to(device=device, dtype=getattr(torch, np_dtype.name)).eval()

        def run(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np_dtype)).to(device)
            with torch.inference_mode():
                out = m(x)
            return out.detach().to("cpu").numpy().astype(np.float64, copy=False)

        return run

    def run_callable(batch: np.ndarray) -> np.ndarray:
        out = model(np.ascontiguousarray(batch, dtype=np_dtype))
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        return np.asarray(out, dtype=np.float64)

    return run_callable


def _default_offsets(align: int) -> list[tuple[int, int]]:
    if align == 1:
        return [(0, 0)]
    phases = range(align) if align <= 16 else sorted({round(i * (align - 1) / 15) for i in range(16)})
    return [(o, o) for o in phases]


def _margin(r: int, align: int) -> int:
    """Extra room beyond the radius that the probe image must keep (catches sparse, dilated supports)."""
    return max(8, 2 * align, r // 2 + 1)


def _centre(size: int, align: int) -> int:
    """Stride-aligned point near the middle of the probe image."""
    return (size // 2 // align) * align


def _probe(run, channels, size, centre, offsets, magnitudes, scale, seed, batch_size):
    """One probe at ``size``: per-offset radius (y, x), and whether any support touched the border."""
    rng = np.random.default_rng(seed)
    base = rng.random((channels, size, size))
    probes = [(off, mag) for off in offsets for mag in magnitudes]
    factors = rng.uniform(0.5, 1.5, (len(probes), channels))
    n_out = int(size * scale)
    b = min(batch_size, len(probes))
    base_batch = np.broadcast_to(base, (b, *base.shape)).copy()
    ref = run(base_batch.copy())
    if ref.ndim != 4 or ref.shape[0] != b or ref.shape[2:] != (n_out, n_out):
        raise ModelOutputError(
            f"model returned shape {ref.shape} for a probe batch {base_batch.shape}; "
            f"expected (N, C', {n_out}, {n_out}) at scale {scale}",
            hint="check scale= and stride= given to the probe",
        )
    if not np.isfinite(ref).all():
        raise ModelOutputError("model returned NaN or Inf on the probe image (uniform noise in [0, 1))")
    radii: dict[tuple[int, int], tuple[int, int]] = {}
    touched = False
    for start in range(0, len(probes), b):
        chunk = probes[start : start + b]
        x = base_batch.copy()
        for i, ((dy, dx), mag) in enumerate(chunk):
            x[i, :, centre + dy, centre + dx] += mag * factors[start + i]
        out = run(x)
        changed = (out[: len(chunk)] != ref[: len(chunk)]).any(axis=1)
        for i, ((dy, dx), _) in enumerate(chunk):
            rows = np.flatnonzero(changed[i].any(axis=1))
            cols = np.flatnonzero(changed[i].any(axis=0))
            ry = int(_footprint_distance(n_out, centre + dy, scale)[rows].max(initial=0))
            rx = int(_footprint_distance(n_out, centre + dx, scale)[cols].max(initial=0))
            if rows.size and (rows[0] == 0 or rows[-1] == n_out - 1 or cols[0] == 0 or cols[-1] == n_out - 1):
                touched = True
            old = radii.get((dy, dx), (0, 0))
            radii[(dy, dx)] = (max(old[0], ry), max(old[1], rx))
    return radii, touched


def measure_receptive_field(
    model,
    *,
    channels: int | None = None,
    size: int | None = None,
    positions=None,
    scale=None,
    stride: int | None = None,
    max_radius: int = 512,
    magnitudes=DEFAULT_MAGNITUDES,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
) -> ReceptiveField:
    """Measure the exact receptive-field radius of ``model`` with float64 impulse probes.

    A random base image (uniform in ``[0, 1)``, float64) is run through a float64 deep copy of the model
    (the caller's model is not modified), once as is and once with an impulse added at each position
    and magnitude (per-channel factors in ``[0.5, 1.5]``). Every output value that differs at all from
    the base output counts as depending on the impulse. The radius is the largest distance in source
    pixels between the impulse and the source footprint of a changed output pixel; for ``scale = s``,
    output pixel ``q`` covers source pixels ``[floor(q / s), ceil((q + 1) / s) - 1]``.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` or a callable on numpy ``(N, C, H, W)`` arrays (it receives float64).
    channels
        Input channels; default the model's ``in_channels`` attribute, else 3.
    size
        Side of the square probe image. Default: start small and double until the support stays at least
        ``max(8, 2 * stride, radius / 2)`` pixels inside the image. A fixed size that the support reaches
        gives ``bounded=False``.
    positions
        Impulse offsets ``(dy, dx)`` from a stride-aligned point near the image centre. Default: every
        phase ``(o, o)`` for ``o < stride`` (16 evenly spread phases if the stride is larger).
    scale
        Output pixels per source pixel (``2``, ``4``, ``"1/8"``); default the model's ``scale``, else 1.
    stride
        Total model stride; default the model's ``stride``, else 1. The probe image size is a multiple of
        lcm(stride, down-scale factor).
    max_radius
        Give up (``bounded=False``) once the radius exceeds it or the image would need to exceed it.
    magnitudes
        Impulse magnitudes; both signs and a large value defeat ReLU dead zones and max-pooling.
    seed
        Seed of the base image and the channel factors.
    batch_size
        Probe images per model call.
    device
        Torch device for a module (float64 must be supported there).

    Returns
    -------
    ReceptiveField
        Radius, per-position radii and the proposed halo and overlap.

    Raises
    ------
    ModelOutputError
        If the model returns the wrong shape or non-finite values on the probe image.
    """
    frac = coerce_scale(scale if scale is not None else getattr(model, "scale", None) or 1)
    model_stride = int(stride if stride is not None else getattr(model, "stride", None) or 1)
    align = lcm(model_stride, frac.denominator)
    channels = int(channels if channels is not None else getattr(model, "in_channels", None) or 3)
    offsets = (
        [tuple(int(v) for v in p) for p in positions] if positions is not None else _default_offsets(align)
    )
    reach = max(abs(v) for p in offsets for v in p)

    def aligned(n: int) -> int:
        return -(-n // align) * align

    run = _runner(model, device)
    cap = aligned(2 * (max_radius + _margin(max_radius, align) + reach) + 2 * align + 2)
    current = aligned(size) if size is not None else aligned(max(64, 8 * align, 4 * reach + 16))
    while True:
        centre = _centre(current, align)
        if centre - reach < 0 or centre + reach >= current:
            raise ValueError(f"positions {offsets} do not fit in a probe image of size {current}")
        radii, touched = _probe(run, channels, current, centre, offsets, magnitudes, frac, seed, batch_size)
        ry = max(r[0] for r in radii.values())
        rx = max(r[1] for r in radii.values())
        r = max(ry, rx)
        room = min(centre, current - 1 - centre) - reach  # least distance from an impulse to the border
        contained = not touched and room >= r + _margin(r, align)
        if contained or size is not None or r > max_radius or current >= cap:
            break
        current = min(cap, 2 * current)
    bounded = bool(contained and r <= max_radius)
    halo = math.ceil(r / align) * align if bounded else None
    return ReceptiveField(
        radius=r,
        radius_yx=(ry, rx),
        per_position={k: max(v) for k, v in radii.items()},
        halo=halo,
        overlap=None if halo is None else 2 * halo,
        stride=align,
        scale=str(frac),
        size=current,
        bounded=bounded,
    )


# ----------------------------------------------------------------------------- a proposal within a time budget

#: Seconds :func:`propose_halo` may spend running the model, by default (``tilegraph plan --model``
#: must answer within a minute on 2 cores, model loading included).
DEFAULT_BUDGET = 40.0

# Modules and ONNX operators that mix information across the whole window (or may), for explanations.
_GLOBAL_TYPES = {
    "AdaptiveAvgPool1d": "adaptive average pooling",
    "AdaptiveAvgPool2d": "adaptive average pooling",
    "AdaptiveAvgPool3d": "adaptive average pooling",
    "AdaptiveMaxPool1d": "adaptive max pooling",
    "AdaptiveMaxPool2d": "adaptive max pooling",
    "AdaptiveMaxPool3d": "adaptive max pooling",
    "GroupNorm": "group normalisation (statistics over the window)",
    "MultiheadAttention": "attention",
    "GlobalAveragePool": "global average pooling",
    "GlobalMaxPool": "global max pooling",
    "GlobalLpPool": "global pooling",
    "InstanceNormalization": "instance normalisation (statistics over the window)",
    "GroupNormalization": "group normalisation (statistics over the window)",
    "LayerNormalization": "layer normalisation (may span the window)",
    "Attention": "attention",
}


def global_context_ops(model) -> tuple[str, ...]:
    """Layers of ``model`` that mix information across the whole window, as ``"name ×count (what)"``.

    Looks at module types of a torch module (onnx2torch's ``OnnxGlobalAveragePool...`` included) and
    at the operators of an ONNX graph (an object with a ``path`` to a ``.onnx`` file, read with the
    ``onnx`` package when installed). Only explains a measurement; never replaces it.
    """
    counts: dict[str, int] = {}
    what: dict[str, str] = {}

    def note(name: str, desc: str) -> None:
        counts[name] = counts.get(name, 0) + 1
        what[name] = desc

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        for m in model.modules():
            name = type(m).__name__
            if name in _GLOBAL_TYPES:
                note(name, _GLOBAL_TYPES[name])
            elif (
                name.startswith("InstanceNorm")
                and type(m).__module__.startswith("torch.nn")
                and not getattr(m, "track_running_stats", False)
            ):
                note(name, "instance normalisation (statistics over the window)")
            elif name.startswith("Onnx") and "Global" in name:
                note(name, "global pooling")
    else:
        path = getattr(model, "path", None)
        if isinstance(path, str) and path.lower().endswith(".onnx"):
            try:
                import onnx

                graph = onnx.load(path, load_external_data=False).graph
                for node in graph.node:
                    if node.op_type in _GLOBAL_TYPES:
                        note(node.op_type, _GLOBAL_TYPES[node.op_type])
            except Exception:  # onnx missing or unreadable: no structural hint
                pass
    return tuple(f"{k} ×{n} ({what[k]})" for k, n in counts.items())


@dataclass(frozen=True)
class HaloProposal:
    """Result of :func:`propose_halo`: the halo to use, how it was found, and why.

    Attributes
    ----------
    halo, overlap : int or None
        Proposed halo (source px, a multiple of ``stride``) and overlap ``2 * halo``; ``None`` when no
        overlap can make tiles equal whole-image output (global context, or reach beyond
        ``max_radius``) or when the probe ran out of time before the support ended.
    radius : int
        Measured radius (source px); a lower bound unless ``exact``.
    exact : bool
        The support ended inside the probe image and every stride phase was probed.
    exceeds : bool
        An impulse changed outputs farther than ``max_radius``: larger than any sensible overlap.
    global_context : bool
        One impulse changed every output pixel of the probe image (whole-window dependence).
    global_ops : tuple of str
        Layers found that mix the whole window (see :func:`global_context_ops`).
    stride : int
        Alignment of the probe (and of the halo): lcm of the model stride and the down-scale factor.
    stride_inferred : bool
        The model declared no stride; ``stride`` is the smallest size step it accepts.
    scale : str
        Output pixels per source pixel (declared, given, or read from the output shape).
    precision : str
        ``"float64"`` or ``"float32"`` for the measurement that gave ``radius``.
    phases : tuple of int
        ``(probed, of)`` stride phases of the impulse position.
    size : int
        Largest probe image side used.
    seconds : float
        Time spent running the model.
    budget : float
        The time budget it had.
    stopped : str or None
        Why the probe stopped early (``"budget"``), else ``None``.
    field : ReceptiveField or None
        The impulse measurement behind a local result.
    explanation : str
        What was measured and what to do, for people (``str(proposal)``).
    """

    halo: int | None
    overlap: int | None
    radius: int
    exact: bool
    exceeds: bool
    global_context: bool
    global_ops: tuple[str, ...]
    stride: int
    stride_inferred: bool
    scale: str
    precision: str
    phases: tuple[int, int]
    size: int
    seconds: float
    budget: float
    stopped: str | None
    field: ReceptiveField | None
    explanation: str

    def __str__(self) -> str:
        return self.explanation

    def to_dict(self) -> dict:
        """Plain data (for ``plan --json``)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "field"}
        d["global_ops"] = list(self.global_ops)
        d["phases"] = list(self.phases)
        return d


class _Clock:
    """Time spent, and time predicted per model call: ``a + b * pixels``, fitted per precision.

    A fixed cost per call (Python overhead of a converted graph, session start-up) dominates at small
    sizes, so a rate measured on small images alone would forbid every large probe: the fit uses the
    two largest image sizes measured.
    """

    def __init__(self, budget: float, clock) -> None:
        self.budget = float(budget)
        self.clock = clock
        self.start = clock()
        self.samples: dict[str, dict[float, float]] = {}

    def elapsed(self) -> float:
        return self.clock() - self.start

    def record(self, seconds: float, pixels: float, precision: str) -> None:
        """Remember the latest time of one call on ``pixels`` image pixels."""
        self.samples.setdefault(precision, {})[pixels] = max(seconds, 1e-9)

    def timed(self, run, x: np.ndarray, precision: str) -> np.ndarray:
        t0 = self.clock()
        out = run(x)
        self.record(self.clock() - t0, float(x.shape[0] * x.shape[2] * x.shape[3]), precision)
        return out

    def per_call(self, pixels: float, precision: str) -> float:
        """Predicted seconds of one call on ``pixels`` pixels (0 when nothing was measured)."""
        samples = self.samples.get(precision)
        if not samples:  # float64 not measured yet: typically several times float32 on CPUs
            return 4.0 * self.per_call(pixels, "float32") if precision != "float32" else 0.0
        (p2, t2), *rest = sorted(samples.items(), reverse=True)
        slope = t2 / p2
        offset = 0.0
        if rest:
            p1, t1 = rest[0]
            fitted = (t2 - t1) / (p2 - p1)
            if fitted > 0:
                slope, offset = fitted, max(t2 - fitted * p2, 0.0)
        return offset + slope * pixels

    def predict(self, images: int, size: int, precision: str) -> float:
        return 1.5 * images * self.per_call(float(size * size), precision)

    def fits(self, images: int, size: int, precision: str) -> bool:
        return self.elapsed() + self.predict(images, size, precision) <= self.budget


def _out_side(run, channels: int, size: int, rng) -> tuple[np.ndarray | None, Exception | None]:
    x = rng.random((1, channels, size, size))
    try:
        y = run(x)
    except Exception as exc:  # the model refuses this size (a stride it did not declare)
        return None, exc
    return y, None


def propose_halo(
    model,
    *,
    channels: int | None = None,
    scale=None,
    stride: int | None = None,
    max_radius: int = 512,
    time_budget: float = DEFAULT_BUDGET,
    magnitudes=DEFAULT_MAGNITUDES,
    precision: str = "auto",
    device: str = "cpu",
    seed: int = 0,
    clock=time.perf_counter,
) -> HaloProposal:
    """Propose a halo for ``model`` within ``time_budget`` seconds, and explain it.

    The same impulse probe as :func:`measure_receptive_field`, ordered so that the expensive cases end
    early:

    1. **Calibrate** at a small size (float32): output shape (gives the scale when not declared), the
       smallest size step the model accepts when it declares no stride (a stride-32 network refuses
       other sizes; that step is then its stride), and the seconds per pixel.
    2. **Reach test**: one impulse of each sign at the corner of a probe image just over ``max_radius``:
       if it changes an output farther than ``max_radius`` the model's receptive field is larger than
       any sensible overlap (if it changes *every* output, the model mixes the whole window); the probe
       stops there.
    3. **Measure** the local radius: impulses of every magnitude at one phase, on images doubling in size
       until the support ends well inside, then the other stride phases at that size, in float64 while
       the budget allows (float32 otherwise, and fewer phases, said in the explanation).

    Before each model call the time it will take is predicted from the calibration (time is proportional
    to pixels); a step that would overrun the budget is not started, and the result is then a lower
    bound.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` or a callable on numpy ``(N, C, H, W)`` arrays.
    channels, scale, stride
        As for :func:`measure_receptive_field`; defaults from the model's declarations (the scale from
        the output shape when undeclared; the stride from the sizes the model accepts when undeclared).
    max_radius
        Radii beyond this are "larger than any sensible overlap".
    time_budget
        Seconds of model time at most (the calibration at the smallest size always runs).
    magnitudes
        Impulse magnitudes (both signs and a large value defeat ReLU dead zones and max-pooling).
    precision
        ``"auto"`` (float64 while affordable, else float32), ``"float64"`` or ``"float32"``.
    device
        Torch device for a module.
    seed
        Seed of the base image.
    clock
        Monotonic clock in seconds (tests inject one).

    Returns
    -------
    HaloProposal
        With ``explanation`` always set.

    Raises
    ------
    ModelOutputError
        If the model fails on every probe size tried, returns the wrong shape or non-finite values.
    """
    if precision not in ("auto", "float64", "float32"):
        raise ValueError(f"precision must be 'auto', 'float64' or 'float32', got {precision!r}")
    clk = _Clock(time_budget, clock)
    declared_scale = scale if scale is not None else getattr(model, "scale", None)
    declared_stride = stride if stride is not None else getattr(model, "stride", None)
    channels = int(channels if channels is not None else getattr(model, "in_channels", None) or 3)
    ops = global_context_ops(model)
    frac = coerce_scale(declared_scale) if declared_scale is not None else None
    model_stride = int(declared_stride or 1)
    align = lcm(model_stride, frac.denominator) if frac is not None else model_stride
    runs = {"float32": _runner(model, device, "float32")}
    rng = np.random.default_rng(seed)

    def aligned(n: int) -> int:
        return -(-n // align) * align

    # 1. calibration: a size the model accepts, its output scale and (undeclared) stride
    s0 = aligned(64)
    y = None
    err: Exception | None = None
    for cand in (s0, aligned(128), aligned(256)):
        t0 = clock()
        y, err = _out_side(runs["float32"], channels, cand, rng)
        if y is not None:
            clk.record(clock() - t0, float(cand * cand), "float32")
            s0 = cand
            break
    if y is None:
        raise ModelOutputError(
            f"the model failed on {channels}-channel probe images of {s0} to {aligned(256)} px: {err!r}",
            hint="give in_channels=/stride= if the model needs them",
        ) from err
    if y.ndim != 4 or y.shape[2] != y.shape[3]:
        raise ModelOutputError(
            f"model returned shape {y.shape} for a square (1, {channels}, {s0}, {s0}) batch"
        )
    measured = Fraction(int(y.shape[2]), s0)
    if frac is None:
        frac = coerce_scale(measured)
        align = lcm(model_stride, frac.denominator)
    elif measured != frac:
        raise ModelOutputError(
            f"model returned {y.shape[2]} px for {s0} px at declared scale {frac}",
            hint="check scale= given to the probe",
        )
    inferred = False
    if declared_stride is None:  # the smallest size step the model accepts is its stride
        for step in sorted({lcm(align, 2**k) for k in range(8)}):
            y2, _ = _out_side(runs["float32"], channels, s0 + step, rng)
            if y2 is not None and y2.ndim == 4 and Fraction(int(y2.shape[2]), s0 + step) == frac:
                inferred = step > align
                align = step
                break
        else:
            raise ModelOutputError(
                f"the model accepts {s0} px probe images but no larger size up to {s0 + lcm(align, 128)} px",
                hint="a fixed input size cannot be tiled with overlap; declare stride= if it is larger",
            )
    if not np.isfinite(y).all():
        raise ModelOutputError("model returned NaN or Inf on the probe image (uniform noise in [0, 1))")
    s_cal = aligned(256)
    if s_cal > s0:  # a second size for the time fit (fixed cost per call and cost per pixel)
        clk.timed(runs["float32"], rng.random((1, channels, s_cal, s_cal)), "float32")

    mags = tuple(float(m) for m in magnitudes)
    far_mags = tuple(sorted({max(mags), min(mags)}))

    def result(**kw) -> HaloProposal:
        base = dict(
            global_ops=ops,
            stride=align,
            stride_inferred=inferred,
            scale=str(frac),
            seconds=round(clk.elapsed(), 3),
            budget=float(time_budget),
        )
        base.update(kw)
        base["explanation"] = _explain(base, max_radius)
        return HaloProposal(**base)  # type: ignore[arg-type]

    # 2. reach test at the corner of an image just larger than max_radius (run before the growth below
    #    would probe images larger than half of it: a global model then stops here, a local one with a
    #    small radius never needs it)
    s_far = aligned(max(max_radius + 2, s0))
    far = {"r": 0, "all": False, "done": False}

    def reach_test() -> HaloProposal | None:
        far["done"] = True
        if not clk.fits(1 + len(far_mags), s_far, "float32"):
            return None
        base_img = np.random.default_rng(seed).random((1, channels, s_far, s_far))
        ref = clk.timed(runs["float32"], base_img, "float32")
        dist = _footprint_distance(ref.shape[2], 0, frac)
        for mag in far_mags:
            x = base_img.copy()
            x[0, :, 0, 0] += mag
            changed = (clk.timed(runs["float32"], x, "float32")[0] != ref[0]).any(axis=0)
            rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
            far["r"] = max(far["r"], int(dist[rows].max(initial=0)), int(dist[cols].max(initial=0)))
            far["all"] = far["all"] or bool(changed.all())
        if far["r"] <= max_radius:
            return None
        return result(
            halo=None,
            overlap=None,
            radius=far["r"],
            exact=False,
            exceeds=True,
            global_context=far["all"],
            precision="float32",
            phases=(1, len(_default_offsets(align))),
            size=s_far,
            stopped=None,
            field=None,
        )

    # 3a. grow at phase 0 in float32 (float64 if asked) until the support ends well inside the image
    grow_mode = "float64" if precision == "float64" else "float32"
    if grow_mode not in runs:
        runs[grow_mode] = _runner(model, device, grow_mode)
    size = aligned(max(64, 8 * align, s0))
    cap = aligned(2 * (max_radius + _margin(max_radius, align)) + 2 * align + 2)
    n_probe = 1 + len(mags)  # one reference and one image per magnitude (batches of one: exact compare)
    radii: dict = {}
    stopped = None
    contained = False
    last_size = 0
    while True:
        if not far["done"] and 2 * size > s_far:
            verdict = reach_test()
            if verdict is not None:
                return verdict
        if not clk.fits(n_probe, size, grow_mode):
            stopped = "budget"
            break
        centre = _centre(size, align)
        radii, touched = _timed_probe(
            clk, runs[grow_mode], grow_mode, channels, size, centre, [(0, 0)], mags, frac, seed
        )
        last_size = size
        r = max(max(v) for v in radii.values())
        room = min(centre, size - 1 - centre)
        # other phases reach up to a stride further: leave room for them too
        ahead = r + align - 1
        contained = not touched and room >= ahead + _margin(ahead, align)
        if contained or size >= cap or r > max_radius:
            break
        # touched: double; else the support ended and its size says how large the image must be
        needed = aligned(2 * (ahead + _margin(ahead, align)) + 2 * align + 2)
        size = min(cap, 2 * size if touched else max(size + align, min(needed, 2 * size)))
    if not radii:  # not even the smallest measurement fitted: report what the reach test saw
        return result(
            halo=None,
            overlap=None,
            radius=far["r"],
            exact=False,
            exceeds=False,
            global_context=False,
            precision="float32",
            phases=(1 if far["done"] else 0, len(_default_offsets(align))),
            size=s_far if far["done"] else s0,
            stopped="budget",
            field=None,
        )
    # 3b. every stride phase at that size: float64 if all of them fit in the budget, else as many as fit
    all_offsets = _default_offsets(align)
    mode = grow_mode
    offsets: list = []
    if contained:
        if precision == "auto":
            runs["float64"] = _runner(model, device, "float64")
            s_cal = min(last_size, aligned(256))
            if clk.fits(1, s_cal, "float64"):  # learn the cost of float64 on a small image
                clk.timed(runs["float64"], rng.random((1, channels, s_cal, s_cal)), "float64")
                clk.timed(runs["float64"], rng.random((1, channels, s0, s0)), "float64")
            if clk.fits(n_probe * len(all_offsets), last_size, "float64"):
                mode, offsets = "float64", list(all_offsets)
        if not offsets:
            rest = [o for o in all_offsets if o != (0, 0)]
            per_phase = clk.predict(n_probe, last_size, mode)
            fit = int((clk.budget - clk.elapsed()) / max(per_phase, 1e-9))
            if fit < len(rest):  # spread the phases that fit evenly over the stride
                picks = np.unique(np.linspace(0, len(rest) - 1, max(fit, 0)).round().astype(int))
                rest = [rest[i] for i in picks]
                stopped = "budget"
            offsets = rest
        if offsets:
            centre = _centre(last_size, align)
            more, touched = _timed_probe(
                clk, runs[mode], mode, channels, last_size, centre, offsets, mags, frac, seed
            )
            radii = more if mode != grow_mode else {**radii, **more}
            r = max(max(v) for v in radii.values())
            contained = not touched and min(centre, last_size - 1 - centre) >= r + _margin(r, align)
    probed = len(radii)
    ry = max(v[0] for v in radii.values())
    rx = max(v[1] for v in radii.values())
    r = max(ry, rx)
    total = len(all_offsets)
    all_phases = probed >= total
    exceeds = r > max_radius
    halo = None
    if contained and not exceeds:
        halo = math.ceil(r / align) * align if all_phases else math.ceil((r + align - 1) / align) * align
    rf = ReceptiveField(
        radius=r,
        radius_yx=(ry, rx),
        per_position={k: max(v) for k, v in radii.items()},
        halo=halo,
        overlap=None if halo is None else 2 * halo,
        stride=align,
        scale=str(frac),
        size=last_size,
        bounded=bool(contained and not exceeds),
    )
    return result(
        halo=halo,
        overlap=None if halo is None else 2 * halo,
        radius=r,
        exact=bool(contained and all_phases and not exceeds),
        exceeds=exceeds,
        global_context=False,
        precision=mode,
        phases=(probed, total),
        size=last_size,
        stopped=stopped,
        field=rf,
    )


def _timed_probe(clk: _Clock, run, mode, channels, size, centre, offsets, mags, frac, seed):
    """:func:`_probe` with batches of one, each model call timed for the budget."""

    def timed_run(x: np.ndarray) -> np.ndarray:
        return clk.timed(run, x, mode)

    return _probe(timed_run, channels, size, centre, offsets, mags, frac, seed, 1)


def _explain(p: dict, max_radius: int) -> str:
    """The sentences ``tilegraph plan --model`` prints."""
    how = (
        f"impulse probe in {p['precision']}, {p['phases'][0]} of {p['phases'][1]} stride phase(s), "
        f"probe image up to {p['size']} px, {p['seconds']:.1f} s of a {p['budget']:.0f} s budget"
    )
    lines = []
    if p["stride_inferred"]:
        lines.append(
            f"The model accepts only sizes that are multiples of {p['stride']} px: treated as its stride "
            f"(declare stride= to skip this check)."
        )
    ops = "; ".join(p["global_ops"])
    if p["exceeds"]:
        if p["global_context"]:
            lines.append(
                f"Receptive field: the whole window. One impulse in a corner of a {p['size']} x {p['size']} "
                f"probe image changed every output pixel ({how})"
                + (f"; the model has layers that mix the whole window: {ops}." if ops else ".")
            )
        else:
            lines.append(
                f"Receptive field radius > {max_radius} px: an impulse changed outputs {p['radius']} px away "
                f"({how})" + (f"; layers that mix the whole window: {ops}." if ops else ".")
            )
        lines.append(
            "No halo makes tiles equal whole-image output: the needed overlap is larger than any sensible "
            "tile, so crop with a large overlap is impossible (proposed halo: none). What to do: "
            "(1) run the image as one window if it fits (tile='auto' picks the largest window the device "
            "holds); (2) otherwise use the largest tile that fits with a weighted blend (blend='cosine', "
            "overlap about a quarter of the tile) so that differences between windows fade instead of "
            "stepping, and reconcile='gain-offset' with reconcile_options={'reference': 'thumbnail'} to "
            "anchor every window to the model's output on a thumbnail of the whole image (global "
            "context); check the seams with qa=True."
        )
        return "\n".join(lines)
    if p["halo"] is None:
        when = (
            f"when the {p['budget']:.0f} s budget ran out"
            if p["stopped"] == "budget"
            else "at the largest probe size"
        )
        lines.append(
            f"Receptive field radius >= {p['radius']} px (a lower bound: the support did not end well "
            f"inside the probe image {when}; {how})."
            + (f" Layers that mix the whole window: {ops}." if ops else "")
        )
        lines.append(
            f"Proposed halo: none measured; use at least overlap={2 * p['radius']} with blend='crop', or "
            "give the probe more time (a larger budget, or a GPU)."
        )
        return "\n".join(lines)
    field = p["field"]
    ry, rx = field.radius_yx if field is not None else (p["radius"], p["radius"])
    lines.append(f"Receptive field radius {p['radius']} px (rows {ry}, columns {rx}; {how}).")
    why = f"the radius rounded up to the stride {p['stride']}" if p["stride"] > 1 else "the radius"
    if p["phases"][0] < p["phases"][1]:
        why += " plus one stride step, since not every stride phase was probed within the budget"
    if p["precision"] == "float32":
        why += "; measured in float32, so influences below ~1e-7 of the output's scale are not seen"
    lines.append(
        f"Proposed halo {p['halo']} px ({why}), overlap {p['overlap']} px: with blend='crop' tiles then "
        "equal whole-image output; weighted blends also mix in window borders with small weights, so "
        "they come close but are not exact."
    )
    if p["halo"] == 0:
        lines[-1] = (
            "Proposed halo 0 px: each output pixel depends only on its own source pixels; tiles need no "
            "overlap for exactness (blend='crop')."
        )
    return "\n".join(lines)
