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
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from tilegraph.errors import ModelOutputError
from tilegraph.plan.normalize import coerce_scale, lcm

__all__ = ["ReceptiveField", "measure_receptive_field"]

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


def _runner(model, device: str):
    """A function float64 numpy ``(N, C, H, W)`` -> float64 numpy, on a float64 copy of ``model``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        m = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = m(torch.from_numpy(batch).to(device))
            return out.detach().to("cpu").numpy().astype(np.float64, copy=False)

        return run

    def run_callable(batch: np.ndarray) -> np.ndarray:
        out = model(batch)
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
