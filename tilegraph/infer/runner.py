"""Turn a :class:`ModelSpec` (plus, for instances, the model object) into a batch function.

Runs on workers. Models are built once per process and cached by the spec's token; a model given by
import path is imported and given its weights here, never on the client.
"""

from __future__ import annotations

import copy
import importlib
import threading
from collections.abc import Callable

import numpy as np

from tilegraph.errors import ModelLoadError
from tilegraph.infer.spec import ModelSpec

__all__ = ["BatchRunner", "get_runner", "clear_cache"]

_CACHE: dict[str, BatchRunner] = {}
_LOCK = threading.Lock()


class BatchRunner:
    """Call a model on float32 ``(N, C, H, W)`` numpy batches; returns float32 numpy.

    Parameters
    ----------
    fn
        A torch module or a numpy callable.
    spec
        Precision, channels_last, compile and device choices.
    """

    def __init__(self, fn, spec: ModelSpec):
        self.spec = spec
        self.is_torch = spec.kind in ("module", "path")
        self.device = "cpu"
        self.fn = fn
        if self.is_torch:
            import torch

            dev = spec.device
            if dev == "auto":
                dev = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = dev
            if fn.training or dev != "cpu" or spec.channels_last or spec.compile:
                fn = copy.deepcopy(fn)  # never modify the caller's module
            module = fn.to(dev).eval()
            if spec.channels_last:
                module = module.to(memory_format=torch.channels_last)
            if spec.compile:
                module = torch.compile(module)
            self.fn = module

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.is_torch:
            return np.asarray(self.fn(batch))
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch))
            if self.device != "cpu":
                x = x.pin_memory().to(self.device, non_blocking=True)
            if self.spec.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.spec.precision)
            if amp is not None:
                with torch.autocast(device_type=x.device.type, dtype=amp):
                    y = self.fn(x)
            else:
                y = self.fn(x)
            if not isinstance(y, torch.Tensor):
                return np.asarray(y)
            if not y.is_floating_point():
                return y.cpu().numpy()
            return y.float().cpu().numpy()


def _build_from_path(spec: ModelSpec):
    module_name, _, attr = (spec.target or "").partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"cannot import model factory {spec.target!r}: {exc}",
            hint="the module must be importable on every worker (same environment)",
        ) from exc
    try:
        model = factory(**spec.factory_kwargs)
    except Exception as exc:
        raise ModelLoadError(f"model factory {spec.target!r} failed: {exc!r}") from exc
    if spec.weights:
        _load_weights(model, spec.weights)
    return model


def _load_weights(model, path: str) -> None:
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
    except FileNotFoundError:
        raise ModelLoadError("weights file not found", path=path) from None
    except Exception as exc:
        raise ModelLoadError(f"cannot read weights: {exc}", path=path) from exc
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise ModelLoadError(f"weights do not fit the model: {exc}", path=path) from exc


def get_runner(spec: ModelSpec, payload=None) -> BatchRunner:
    """The cached :class:`BatchRunner` for ``spec`` in this process, built on first use.

    ``payload`` is the model object for ``kind="module"``/``"callable"`` (ignored for ``"path"``).
    """
    runner = _CACHE.get(spec.token)
    if runner is not None:
        return runner
    with _LOCK:
        runner = _CACHE.get(spec.token)
        if runner is None:
            fn: Callable = _build_from_path(spec) if spec.kind == "path" else payload
            if fn is None:
                raise ModelLoadError(f"model {spec.name!r} did not reach this worker")
            runner = BatchRunner(fn, spec)
            _CACHE[spec.token] = runner
    return runner


def clear_cache() -> None:
    """Forget every cached model in this process (frees GPU memory held by them)."""
    with _LOCK:
        _CACHE.clear()
