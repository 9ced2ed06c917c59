"""The reconciliation reference, chosen by measurement: ``reference="auto"``.

Two candidates anchor the colours of a reconciled run:

* ``"input"``: the source itself at the output scale. Right for models that keep colours (restoration,
  denoising, super-resolution), wrong for models that change them on purpose (enhancement, style,
  normalisation networks): anchoring those to the input moves the output towards the input's colours.
* ``"thumbnail"``: the model run once on a thumbnail of the whole image. Right whenever the model's
  colours are meant to differ from the input's.

:func:`choose_reference` compares the low-passed model-on-thumbnail output with the low-passed input
thumbnail: above ``threshold`` ΔE2000 on average the model changes colours and the thumbnail is the
reference, otherwise the input. The measured difference travels with the choice, so the metadata and the
report can show why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from tilegraph.quality.metrics import delta_e2000, srgb_to_lab

__all__ = ["ReferenceChoice", "choose_reference"]


@dataclass(frozen=True)
class ReferenceChoice:
    """The reference ``reference="auto"`` picked, and why.

    Attributes
    ----------
    reference : str
        ``"thumbnail"`` or ``"input"``.
    difference : float
        Mean difference between the low-passed thumbnail output and the low-passed input thumbnail: ΔE2000
        for 1, 3 or 4 channels (sRGB, the first three), else mean absolute difference in DN. NaN when they
        cannot be compared (different channel counts).
    metric : str
        ``"dE2000"``, ``"DN"`` or ``"none"``.
    threshold : float
        The threshold used, in the same unit.
    reason : str
        One sentence for the report.
    """

    reference: str
    difference: float
    metric: str
    threshold: float
    reason: str

    def to_dict(self) -> dict:
        """Plain data for the output's metadata."""
        d = float(self.difference)
        return {
            "reference": self.reference,
            "difference": None if math.isnan(d) else d,
            "metric": self.metric,
            "threshold": self.threshold,
            "reason": self.reason,
        }


def _hwc(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be (H, W, C) or (H, W), got shape {np.shape(a)}")
    return arr


def _to_grid(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``a`` resampled to ``shape``: block means for integer down-factors, else linear interpolation."""
    h, w = a.shape[:2]
    if (h, w) == shape:
        return a
    fy, fx = h / shape[0], w / shape[1]
    if fy == int(fy) and fx == int(fx) and fy >= 1 and fx >= 1:
        by, bx = int(fy), int(fx)
        return a.reshape(shape[0], by, shape[1], bx, -1).mean(axis=(1, 3))
    return zoom(a, (shape[0] / h, shape[1] / w, 1), order=1, mode="nearest", grid_mode=True)


def choose_reference(
    thumb_output,
    thumb_input,
    *,
    threshold: float = 1.0,
    sigma: float = 1.0,
    full_scale: float = 1.0,
) -> ReferenceChoice:
    """``reference="auto"``: anchor to the thumbnail output when the model changes colours, else the input.

    Parameters
    ----------
    thumb_output
        The model run on the thumbnail, ``(h', w', C')`` in the model's output units.
    thumb_input
        The thumbnail the model ran on, ``(h, w, C)`` in the same units (integers already scaled).
        When the model scales, the output is brought to the input thumbnail's grid first (block means).
    threshold
        Mean ΔE2000 (or DN for other channel counts) above which the thumbnail is the reference.
    sigma
        Gaussian low-pass applied to both, in thumbnail pixels (0 disables it).
    full_scale
        Value of full scale (1.0 for data in ``[0, 1]``); colours are compared on ``value / full_scale``.

    Returns
    -------
    ReferenceChoice
    """
    out, inp = _hwc(thumb_output, "thumb_output"), _hwc(thumb_input, "thumb_input")
    if out.shape[2] != inp.shape[2]:
        return ReferenceChoice(
            "thumbnail",
            float("nan"),
            "none",
            float(threshold),
            f"the model changes the channel count ({inp.shape[2]} to {out.shape[2]}): the input cannot be a "
            "reference",
        )
    out = _to_grid(out, inp.shape[:2]) / float(full_scale)
    inp = inp / float(full_scale)
    if sigma > 0:
        out = gaussian_filter(out, sigma=(sigma, sigma, 0), mode="nearest")
        inp = gaussian_filter(inp, sigma=(sigma, sigma, 0), mode="nearest")
    c = out.shape[2]
    if c in (1, 3, 4):
        k = 1 if c == 1 else 3
        diff = float(np.mean(delta_e2000(srgb_to_lab(out[..., :k]), srgb_to_lab(inp[..., :k]))))
        metric = "dE2000"
    else:
        diff = float(np.mean(np.abs(out - inp)) * 255.0)
        metric = "DN"
    if diff > threshold:
        ref, why = "thumbnail", "the model changes colours"
    else:
        ref, why = "input", "the model keeps colours"
    reason = (
        f"{why}: its output on the thumbnail differs from the input by {diff:.2f} {metric} on average "
        f"(threshold {threshold:g}), so the {'model run on the thumbnail' if ref == 'thumbnail' else 'input'} "
        "anchors the colours"
    )
    return ReferenceChoice(ref, diff, metric, float(threshold), reason)
