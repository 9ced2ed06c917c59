"""Whole-image reference: what a tiled run must reproduce for an exact local model.

torch is imported only when the model is a torch module.
"""

from __future__ import annotations

import importlib
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["whole_image_inference"]


def _resolve(model):
    """An import path ``"package.module:factory"`` becomes ``factory()``; anything else is returned."""
    if isinstance(model, str):
        module, _, attr = model.partition(":")
        return getattr(importlib.import_module(module), attr)()
    return model


def _to_float(image: np.ndarray) -> np.ndarray:
    """Integers scaled to ``[0, 1]`` by their dtype maximum; floats unscaled; float32 either way."""
    if image.dtype.kind in "ui":
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    if image.dtype.kind == "f":
        return image.astype(np.float32)
    raise TypeError(f"unsupported image dtype {image.dtype}")


def _run(model, batch: np.ndarray) -> np.ndarray:
    """Run ``model`` on one float32 batch ``(N, C, H, W)`` and return float32 numpy."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        params = list(model.parameters()) + list(model.buffers())
        device = params[0].device if params else torch.device("cpu")
        with torch.inference_mode():
            out = model(torch.from_numpy(batch).to(device))
        if not torch.is_floating_point(out):
            raise TypeError(f"model returned {out.dtype}, expected a float tensor")
        return out.detach().to("cpu", torch.float32).numpy()
    out = model(batch)
    if hasattr(out, "detach"):  # a torch tensor from a callable
        out = out.detach().cpu().numpy()
    out = np.asarray(out)
    if out.dtype.kind != "f":
        raise TypeError(f"model returned {out.dtype}, expected floats")
    return out.astype(np.float32, copy=False)


def whole_image_inference(image: np.ndarray, model, plan) -> np.ndarray:
    """The model run once on the whole image, padded at its far edges exactly as ``plan`` pads it.

    The image is padded with :func:`numpy.pad` (``plan.pad_mode``) to ``plan.padded_shape``, converted
    to float32 (integers divided by their dtype maximum, floats unscaled), run as one batch element, and
    the output is cropped back to ``plan.out_shape``. For an exact local model whose receptive field fits
    in the plan's halo, a crop-centre tiled run equals this up to float rounding.

    Parameters
    ----------
    image
        ``(H, W, C)`` or ``(H, W)`` array in its native dtype, of ``plan.shape``.
    model
        A ``torch.nn.Module`` (run under ``torch.inference_mode`` on its own device, normally the CPU), a
        callable on numpy ``(N, C, H, W)`` float32 batches, or an import path ``"package.module:factory"``.
    plan
        The :class:`~tilegraph.plan.plan.Plan` of the tiled run.

    Returns
    -------
    numpy.ndarray
        float32 ``(H_out, W_out, C')``, not rounded nor clipped.

    Raises
    ------
    ValueError
        If the image does not match the plan or the model output has the wrong size.
    TypeError
        If the model returns integers.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C) or (H, W), got shape {image.shape}")
    h, w = image.shape[:2]
    if (h, w) != tuple(plan.shape):
        raise ValueError(f"image is {h} x {w} but the plan is for {plan.shape[0]} x {plan.shape[1]}")
    ph, pw = plan.padded_shape
    (top, bottom), (left, right) = plan.pad_widths
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"plan padded shape {ph} x {pw} is smaller than the image {h} x {w}")
    mode: Any = plan.pad_mode
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode=mode)
    batch = np.ascontiguousarray(_to_float(padded).transpose(2, 0, 1)[None])
    out = _run(_resolve(model), batch)
    s = Fraction(plan.scale)
    want = (int(ph * s), int(pw * s))
    if out.ndim != 4 or out.shape[0] != 1 or tuple(out.shape[2:]) != want:
        raise ValueError(
            f"model output has shape {tuple(out.shape)}, expected (1, C', {want[0]}, {want[1]}) for "
            f"input (1, {batch.shape[1]}, {ph}, {pw}) at scale {plan.scale}"
        )
    oh, ow = plan.out_shape
    oy, ox = int(top * s), int(left * s)  # the image starts after the near padding
    return np.ascontiguousarray(out[0, :, oy : oy + oh, ox : ox + ow].transpose(1, 2, 0))
