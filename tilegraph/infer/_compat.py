"""Import helpers for optional model-format packages (spandrel, onnx2torch) and their torchvision need.

PyPI's torchvision wheels for Linux are built against CUDA builds of torch. Beside a CPU build of torch
(``torch==2.13.0+cpu``, as on the development machines) ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist``: torchvision's compiled operators cannot
load, and one of its modules registers a fake kernel for ``nms`` without checking that they did.
spandrel and onnx2torch import torchvision at import time, although the restoration architectures
and the operators a converted network uses never call those compiled operators.

:func:`ensure_torchvision_importable` imports torchvision as it is and, only when that fails for this
reason, declares the two operator schemas torchvision expects and imports it again, so that its
pure-Python parts work (its detection operators stay unavailable, as they are anyway without the
library). With a matching torchvision, or none installed, it changes nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from types import ModuleType

from tilegraph.errors import ModelLoadError

__all__ = ["ensure_torchvision_importable", "import_spandrel", "import_onnx2torch", "import_onnxruntime"]

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_SHIM: object | None = None  # the torch.library.Library holding the declared schemas (kept alive)

# schemas of the operators torchvision's ``_meta_registrations`` registers fake kernels for unconditionally
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` work beside a torch build its compiled operators do not match.

    Imports torchvision as it is; only if that fails because its compiled operators are missing
    (``operator torchvision::nms does not exist``) are the two schemas declared and the import retried.
    A matching torchvision is thus imported untouched.

    Returns
    -------
    bool
        True when the schemas had to be declared (torchvision's compiled operators are unavailable).
    """
    global _SHIM
    with _LOCK:
        if _SHIM is not None:
            return True
        if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
            return False
        try:
            import torchvision  # noqa: F401
        except ImportError:
            return False  # the caller's own import reports it
        except RuntimeError as exc:
            if "torchvision::" not in str(exc):
                raise
        else:
            return False
        import torch

        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # the half-imported package: imported afresh below
        shim = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            if not hasattr(torch.ops.torchvision, schema.split("(")[0]):
                shim.define(schema)
        _SHIM = shim
        import torchvision  # noqa: F401,F811

        log.warning(
            "torchvision's compiled operators do not load beside torch %s (a torchvision wheel built for "
            "another torch); its detection operators are unavailable, which image-to-image models do not use",
            torch.__version__,
        )
        return True


def import_spandrel() -> ModuleType:
    """Import spandrel (and spandrel_extra_arches when installed), or raise :class:`ModelLoadError`."""
    ensure_torchvision_importable()
    try:
        import spandrel
    except ImportError as exc:
        raise ModelLoadError(
            f"loading a checkpoint by its architecture needs spandrel: {exc}",
            hint="pip install 'spandrel>=0.4' (or give model='package.module:factory' with weights=...)",
        ) from exc
    try:  # optional: more architectures, registered once
        import spandrel_extra_arches

        with _LOCK:
            if not getattr(spandrel_extra_arches, "_tilegraph_installed", False):
                spandrel_extra_arches._tilegraph_installed = True
                spandrel_extra_arches.install()
    except ImportError:
        pass
    except Exception as exc:  # an incompatible version: the core architectures still work
        log.warning("spandrel_extra_arches could not register its architectures: %r", exc)
    return spandrel


def import_onnx2torch() -> ModuleType:
    """Import onnx2torch, or raise :class:`ModelLoadError` saying how to install it."""
    ensure_torchvision_importable()
    try:
        import onnx2torch
    except ImportError as exc:
        raise ModelLoadError(
            f"converting ONNX to torch needs onnx2torch: {exc}", hint="pip install onnx onnx2torch"
        ) from exc
    return onnx2torch


def import_onnxruntime() -> ModuleType:
    """Import onnxruntime, or raise :class:`ModelLoadError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(
            f"running ONNX models needs onnxruntime: {exc}",
            hint="pip install onnxruntime (onnxruntime-gpu on CUDA workers)",
        ) from exc
    return onnxruntime
