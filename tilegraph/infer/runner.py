"""Turn a :class:`ModelSpec` (plus, for instances, the model object) into a batch function.

Runs on workers. Models are built once per process and cached by the spec's token; a model given by
import path is imported and given its weights here, never on the client.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tilegraph._cast import astype_float
from tilegraph.errors import ModelError, ModelLoadError
from tilegraph.infer.spec import ModelSpec

__all__ = ["BatchRunner", "get_runner", "clear_cache", "evict"]

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

    Notes
    -----
    One runner exists per model and process, shared by the model tasks running there (two by
    default, see :class:`~tilegraph.engine.executor.DaskExecutor`). :meth:`run_raw` runs one batch
    at a time: the device (or, on CPU, all the worker's cores) is the model's, and the page-locked
    host buffers are shared. The other task meanwhile reads, converts and writes outside the lock.
    """

    def __init__(self, fn, spec: ModelSpec):
        self.spec = spec
        torch_mod = sys.modules.get("torch")
        #: The model as built or received (before any copy or device move): what it declares is read here.
        self.model = fn
        # a factory given by import path may return a numpy callable as well as a torch module
        self.is_torch = torch_mod is not None and isinstance(fn, torch_mod.nn.Module)
        self._pinned: dict = {}
        self._device_lock = threading.Lock()
        #: When the thread holding the model (:attr:`holder`) took it (``time.monotonic()``), for the watchdog.
        self.holding_since: float | None = None
        self.holder: int | None = None
        #: Set when a forward pass never returned: threads waiting for the model give up, naming it.
        self.stuck: str | None = None
        self._times = threading.local()  # per thread: seconds holding the model and waiting for it
        #: Largest batch that fitted after an out-of-memory error, per window shape ``(h, w, C)``;
        #: shared by the model tasks of this process, so later batches start at a size that fits.
        self.fitted_batches: dict[tuple, int] = {}
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
        """Model output for a float32 ``(N, C, H, W)`` batch, as a numpy array (float32 if floating)."""
        y = self.forward_nchw(np.ascontiguousarray(batch))
        return _to_numpy(y, None)

    def forward_nchw(self, batch: np.ndarray):
        """Run on a float32 NCHW numpy batch; returns the raw model output (tensor or array)."""
        if not self.is_torch:
            return np.asarray(self.fn(batch))
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device != "cpu":
                x = x.pin_memory().to(self.device, non_blocking=True)
            return self._forward(x)

    def run_raw(
        self, raw: np.ndarray, *, channels: int, out_dtype, count_boxes: list | None = None
    ) -> tuple[np.ndarray, int]:
        """Run on raw windows ``(N, H, W, C)`` in the source dtype; returns ``(N, C', H', W')`` and clips.

        The dtype conversion (integers to [0, 1]) happens on the model's device, after the copy, so
        only source bytes cross the bus; the output is cast to ``out_dtype`` on the device too. For
        an integer ``out_dtype`` the output is scaled by its maximum, rounded and clipped there, and
        the number of clipped values is returned (0 otherwise), counted only inside
        ``count_boxes`` (one ``(rows, cols)`` pair of slices per window, e.g. the region ``crop``
        keeps) when given.

        Raises
        ------
        BadOutput
            Carries the problem (``"dtype"`` or ``"nonfinite"`` with the bad batch element).
        """
        integer_max = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else None
        if not self.is_torch:
            x = np.moveaxis(raw[..., :channels], -1, 1).astype(np.float32)
            if integer_max is not None:
                x *= np.float32(1.0 / integer_max)
            x = np.ascontiguousarray(x)
            with self._turn():  # one batch at a time (see the class notes)
                y = np.asarray(self.fn(x))
            return _to_numpy(y, out_dtype, with_clips=True, count_boxes=count_boxes)
        with self._turn():
            return self._run_torch(raw, channels, integer_max, out_dtype, count_boxes)

    @contextlib.contextmanager
    def _turn(self):
        """Hold the model for one batch; the time waited and held accrue to this thread."""
        t0 = time.perf_counter()
        while not self._device_lock.acquire(timeout=1.0):
            if self.stuck is not None:
                raise ModelError(f"the model is stuck on {self.stuck}; this process cannot use it any more")
        try:
            t1 = time.perf_counter()
            self.holding_since, self.holder = time.monotonic(), threading.get_ident()
            try:
                yield
            finally:
                self.holding_since = self.holder = None
                times = self._times
                times.wait = getattr(times, "wait", 0.0) + (t1 - t0)
                times.held = getattr(times, "held", 0.0) + (time.perf_counter() - t1)
        finally:
            self._device_lock.release()

    def take_times(self) -> tuple[float, float]:
        """Seconds this thread held the model and waited for it since the last call; resets them."""
        times = self._times
        held, wait = getattr(times, "held", 0.0), getattr(times, "wait", 0.0)
        times.held = times.wait = 0.0
        return held, wait

    def _run_torch(self, raw, channels, integer_max, out_dtype, count_boxes=None):
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(raw))
            if self.device != "cpu":
                t = self._staged(t).to(self.device, non_blocking=True)
            x = t[..., :channels].permute(0, 3, 1, 2).float()  # NHWC storage = channels_last
            if integer_max is not None:
                x.mul_(1.0 / integer_max)
            if not self.spec.channels_last and x.device.type != "cpu":
                x = x.contiguous()  # on CPU the NHWC view is as fast or faster; on GPUs keep one format
            y = self._forward(x)
            return _to_numpy(y, out_dtype, with_clips=True, count_boxes=count_boxes)

    def _staged(self, t):
        """Copy ``t`` into a reused page-locked host buffer (one per shape and dtype).

        Safe to reuse: the next call starts only after this call's output came back to the host,
        which orders it after the non-blocking upload.
        """
        import torch

        key = (tuple(t.shape), t.dtype)
        buf = self._pinned.get(key)
        if buf is None:
            if len(self._pinned) > 4:  # shapes change rarely (last batch of a task); keep a few
                self._pinned.clear()
            buf = self._pinned[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t)
        return buf

    def _forward(self, x):
        import torch

        if self.spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.spec.precision)
        if amp is not None:
            with torch.autocast(device_type=x.device.type, dtype=amp):
                return self.fn(x)
        return self.fn(x)


class BadOutput(Exception):
    """The model output broke the contract (raised inside :meth:`BatchRunner.run_raw`)."""

    def __init__(self, kind: str, detail: str, element: int = 0):
        super().__init__(detail)
        self.kind, self.detail, self.element = kind, detail, element


def _count_outside(bad, count_boxes) -> int:
    """Clipped values counted over the whole batch, or inside each window's box only."""
    if count_boxes is None:
        return int(bad.sum())
    return int(sum(bad[k, :, rows, cols].sum() for k, (rows, cols) in enumerate(count_boxes)))


def _to_numpy(y, out_dtype, *, with_clips: bool = False, count_boxes=None):
    """Check dtype and finiteness (on the device for tensors) and return numpy in ``out_dtype``.

    Integer ``out_dtype``: ``round(y * max)`` clipped to the dtype's range; with ``with_clips`` the
    result is ``(array, clipped count)``, counted inside ``count_boxes`` only when given.
    """
    target = np.dtype(np.float32 if out_dtype is None else out_dtype)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(y, torch.Tensor):
        if not y.is_floating_point():
            raise BadOutput("dtype", f"model returned a {y.dtype} tensor, expected floats")
        if y.ndim >= 1 and y.numel():
            # NaN and Inf propagate through a sum: one cheap reduction per window, no mask, no copy
            finite = torch.isfinite(y.float().sum(dim=tuple(range(1, y.ndim))))
            if not bool(finite.all()):  # the exact test (a sum of large finite values can overflow)
                finite = torch.isfinite(y).flatten(1).all(dim=1)
            if not bool(finite.all()):
                raise BadOutput("nonfinite", "model returned NaN or Inf", int((~finite).nonzero()[0, 0]))
        clipped = 0
        if target.kind == "u":
            top = float(np.iinfo(target).max)
            y = y.float() * top if y.dtype != torch.float32 else y.mul(top)
            y.round_()
            lo, hi = torch.aminmax(y)
            if float(lo) < 0 or float(hi) > top:
                clipped = _count_outside((y < 0) | (y > top), count_boxes)
                y.clamp_(0, top)
            wide = torch.uint8 if target.itemsize == 1 else torch.int32
            out = y.to(wide).contiguous().cpu().numpy()  # NCHW on the device: no host-side transpose
            if out.dtype != target:
                out = out.astype(target)
        else:
            out = y.to(getattr(torch, target.name)).contiguous().cpu().numpy()
        return (out, clipped) if with_clips else out
    y = np.asarray(y)
    if y.dtype.kind != "f":
        raise BadOutput("dtype", f"model returned {y.dtype}, expected floats")
    if y.ndim >= 1 and y.size:
        flat = y.reshape(y.shape[0], -1)
        finite = np.isfinite(flat.sum(axis=1, dtype=np.float64))  # NaN and Inf propagate through a sum
        if not finite.all():  # the exact test
            finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            raise BadOutput("nonfinite", "model returned NaN or Inf", int(np.argmin(finite)))
    clipped = 0
    if target.kind == "u":
        top = float(np.iinfo(target).max)
        r = np.rint(y.astype(np.float32) * np.float32(top))
        clipped = _count_outside((r < 0) | (r > top), count_boxes)
        out = np.clip(r, 0, top).astype(target)
    else:
        out = y if y.dtype == target else astype_float(y, target)
    return (out, clipped) if with_clips else out


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

            state: Any = load_file(path)
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


def evict(runner: BatchRunner) -> None:
    """Forget ``runner`` in this process's cache (it is stuck): the next task builds a fresh one."""
    with _LOCK:
        for key in [k for k, r in _CACHE.items() if r is runner]:
            del _CACHE[key]


def clear_cache() -> None:
    """Forget every cached model in this process (frees GPU memory held by them)."""
    with _LOCK:
        _CACHE.clear()
