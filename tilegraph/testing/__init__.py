"""The shipped test kit: deterministic models, synthetic images and the whole-image reference.

``import tilegraph.testing`` imports neither torch nor dask: names are resolved on first use, and
torch is imported only when a name from :mod:`tilegraph.testing.models` is requested.

* :mod:`tilegraph.testing.models`: test models (exact local, non-local, slow, out-of-memory, broken);
* :mod:`tilegraph.testing.images`: :func:`coordinate_image`, :func:`decode_coordinates`, :func:`gradient_photo`;
* :mod:`tilegraph.testing.reference`: :func:`whole_image_inference`;
* :mod:`tilegraph.testing.stages`: :class:`Stages`, a run driven stage by stage;
* :mod:`tilegraph.testing.blenders`: :class:`FirstWindow` (a blend mode) and :class:`Negate` (a pass);
* :mod:`tilegraph.testing.seam_models`: :class:`ShadedTextureModel` (the generative stand-in: structured
  texture and low-frequency shading per window), :class:`ConfidenceModel` (declares a confidence channel),
  :func:`seam_scores` (texture ratio, gradient ratio and band steps over the seam lines).
"""

from __future__ import annotations

import importlib

_MODELS = (
    "Identity",
    "LocalConv",
    "ReferenceUNet",
    "Upscaler",
    "Downscaler",
    "DriftModel",
    "InstanceNormModel",
    "GenerativeModel",
    "SleepModel",
    "OOMModel",
    "WrongShapeModel",
    "NaNModel",
    "RaisingModel",
    "WrongDtypeModel",
    "numpy_identity",
    "numpy_box3",
    "content_seed",
    "unet_radius",
)
_IMAGES = ("coordinate_image", "decode_coordinates", "gradient_photo", "smooth_gradient")
_REFERENCE = ("whole_image_inference",)

_WHERE = {
    "Stages": "tilegraph.testing.stages",
    "FirstWindow": "tilegraph.testing.blenders",
    "Negate": "tilegraph.testing.blenders",
    "ShadedTextureModel": "tilegraph.testing.seam_models",
    "ConfidenceModel": "tilegraph.testing.seam_models",
    "seam_scores": "tilegraph.testing.seam_models",
    **{name: "tilegraph.testing.models" for name in _MODELS},
    **{name: "tilegraph.testing.images" for name in _IMAGES},
    **{name: "tilegraph.testing.reference" for name in _REFERENCE},
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """Import the module that defines ``name`` on first access (PEP 562)."""
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'tilegraph.testing' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
