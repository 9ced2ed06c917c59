"""Turn a :class:`ModelSpec` (plus, for instances, the model object) into a batch function.

Runs on workers. Models are built once per process and cached by the spec's token; a model given by
import path is imported and given its weights here, never on the client.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tilegraph._cast import astype_float
from tilegraph.errors import ModelError, ModelLoadError
from tilegraph.infer.spec import ModelSpec

__all__ = ["BatchRunner", "OUTPUTS", "convert_output", "get_runner", "clear_cache", "evict"]

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
        #: The module on its device, in eval mode, before ``torch.compile`` (what norm sync shadows).
        self.module = fn
        if self.is_torch:
            import torch

            dev = spec.device
            if dev == "auto":
                dev = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = dev
            training = any(m.training for m in fn.modules())  # eval() below would switch them off
            if training or dev != "cpu" or spec.channels_last or spec.compile:
                fn = copy.deepcopy(fn)  # never modify the caller's module
            module = fn.to(dev).eval()
            if spec.channels_last:
                module = module.to(memory_format=torch.channels_last)
            self.module = module
            if spec.compile:
                module = torch.compile(module)
            self.fn = module

    def __call__(self, batch: np.ndarray, *, output: str = "array") -> Any:
        """Model output for a float32 ``(N, C, H, W)`` batch, as numpy (float32 if floating).

        ``output`` is what the model returns (:func:`convert_output`): ``"array"`` (checked floats),
        ``"labels"`` (integers as they are) or ``"boxes"`` (a list of ``(k, 6)`` arrays per window).
        """
        y = self.forward_nchw(np.ascontiguousarray(batch), output=output)
        if output == "array":
            return _to_numpy(y, None)
        return convert_output(y, output, None, n=len(batch))[0]

    def forward_nchw(self, batch: np.ndarray, *, output: str = "array"):
        """Run on a float32 NCHW numpy batch; returns the raw model output (tensor or array; for
        ``output="boxes"`` the list the model returned)."""
        if not self.is_torch:
            y = self.fn(batch)
            return y if output == "boxes" else np.asarray(y)
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device != "cpu":
                x = x.pin_memory().to(self.device, non_blocking=True)
            return self._forward(x)

    def run_raw(
        self,
        raw: np.ndarray,
        *,
        channels: int,
        out_dtype,
        count_boxes: list | None = None,
        output: str = "array",
        extra: np.ndarray | None = None,
        keywords: Mapping[str, np.ndarray] | None = None,
        module: Callable | None = None,
    ) -> tuple[Any, int]:
        """Run on raw windows ``(N, H, W, C)`` in the source dtype; returns ``(N, C', H', W')`` and clips.

        The dtype conversion (integers to [0, 1]) happens on the model's device, after the copy, so
        only source bytes cross the bus; the output is cast to ``out_dtype`` on the device too. For
        an integer ``out_dtype`` the output is scaled by its maximum, rounded and clipped there, and
        the number of clipped values is returned (0 otherwise), counted only inside
        ``count_boxes`` (one ``(rows, cols)`` pair of slices per window, e.g. the region ``crop``
        keeps) when given. ``module`` replaces the model for this call only (a torch module on the
        model's device, e.g. a norm-synced shadow of :attr:`module`); other calls are unaffected.

        ``output`` is what the model returns (:func:`convert_output`: checked floats, integer labels
        passed as they are, or a list of ``(k, 6)`` boxes per window). ``extra`` ``(N, K, H, W)``
        float32 is appended to the input channels, and ``keywords`` are passed to the model as
        keyword arguments (numpy arrays, on the model's device for torch): what coarse-to-fine gives
        each window.

        Raises
        ------
        BadOutput
            Carries the problem (``"dtype"`` or ``"nonfinite"`` with the bad batch element).
        """
        integer_max = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else None
        if not self.is_torch:
            # transpose in the source dtype (cheap), then one float conversion and an in-place scale:
            # measured 3.5x faster than converting the strided view directly
            x = np.ascontiguousarray(np.moveaxis(raw[..., :channels], -1, 1))
            if integer_max is not None:
                x = np.multiply(x, np.float32(1.0 / integer_max), dtype=np.float32)  # one pass
            else:
                x = x.astype(np.float32, copy=False)
            if extra is not None:
                x = np.concatenate([x, extra.astype(np.float32, copy=False)], axis=1)
            with self._turn():  # one batch at a time (see the class notes)
                y = self.fn(x, **(keywords or {}))
            if output != "array":
                return convert_output(y, output, out_dtype, n=len(raw))
            return _to_numpy(np.asarray(y), out_dtype, with_clips=True, count_boxes=count_boxes)
        with self._turn():
            return self._run_torch(
                raw,
                channels,
                integer_max,
                out_dtype,
                count_boxes,
                output=output,
                extra=extra,
                keywords=keywords,
                module=module,
            )

    def apply_raw(self, raw: np.ndarray, *, channels: int, fn: Callable) -> Any:
        """``fn(x)`` on raw windows ``(N, H, W, C)``, with ``x`` the tensor :meth:`run_raw` gives the model.

        ``x`` is ``(N, channels, H, W)`` float32 on the model's device (integers scaled to [0, 1]); ``fn``
        runs in the model's turn, under ``inference_mode`` and the run's autocast precision, and its
        result is returned as it is (norm sync's statistics passes return a few floats).
        """
        if not self.is_torch:
            raise TypeError("apply_raw needs a torch model")
        integer_max = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else None
        import torch

        with self._turn(), torch.inference_mode():
            x = self._device_input(raw, channels, integer_max)
            return self._forward(x, module=fn)

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

    def _run_torch(
        self,
        raw,
        channels,
        integer_max,
        out_dtype,
        count_boxes=None,
        *,
        output="array",
        extra=None,
        keywords=None,
        module=None,
    ):
        import torch

        with torch.inference_mode():
            x = self._device_input(raw, channels, integer_max, extra)
            kwargs = {
                k: torch.from_numpy(np.ascontiguousarray(v)).to(x.device) for k, v in (keywords or {}).items()
            }
            y = self._forward(x, module=module, **kwargs)
            if output != "array":
                return convert_output(y, output, out_dtype, n=len(raw))
            return _to_numpy(y, out_dtype, with_clips=True, count_boxes=count_boxes)

    def _device_input(self, raw, channels, integer_max, extra=None):
        """Raw windows as the model's float32 NCHW input on its device (call under inference mode);
        ``extra`` ``(N, K, H, W)`` channels appended (coarse-to-fine)."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(raw))
        if self.device != "cpu":
            t = self._staged(t).to(self.device, non_blocking=True)
        x = t[..., :channels].permute(0, 3, 1, 2).float()  # NHWC storage = channels_last
        if integer_max is not None:
            x.mul_(1.0 / integer_max)
        if extra is not None:
            x = torch.cat([x, torch.from_numpy(np.ascontiguousarray(extra, np.float32)).to(x.device)], dim=1)
        if not self.spec.channels_last and x.device.type != "cpu":
            x = x.contiguous()  # on CPU the NHWC view is as fast or faster; on GPUs keep one format
        return x

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

    def _forward(self, x, module=None, **kwargs):
        import torch

        fn = self.fn if module is None else module
        if self.spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.spec.precision)
        if amp is not None:
            with torch.autocast(device_type=x.device.type, dtype=amp):
                return fn(x, **kwargs)
        return fn(x, **kwargs)


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


#: What a model may return (:attr:`tilegraph.outputs.abc.OutputKind.model_output`).
OUTPUTS = ("array", "labels", "boxes")


def _host(v) -> np.ndarray:
    """A tensor or array-like as numpy on the host."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def convert_output(y, output: str, out_dtype, *, n: int) -> tuple[Any, int]:
    """A model's output that is not a float map, as numpy: ``(value, 0)`` (nothing is clipped).

    ``"labels"``: integer (or integral float) labels ``(N, 1, H, W)`` as they are; booleans, complex
    numbers and objects are refused. ``"boxes"``: a list (or tuple) of ``n`` arrays ``(k, 6)``, one
    per window, returned as a numpy object array of float64 arrays (so that batches split after an
    out-of-memory error concatenate). Shapes and values are checked by the output kind.

    Raises
    ------
    BadOutput
        ``"dtype"``: not what the kind expects.
    """
    if output == "labels":
        arr = _host(y)
        if arr.dtype.kind not in "uif":
            raise BadOutput("dtype", f"labels model returned {arr.dtype}, expected integer labels")
        if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1) if arr.ndim else np.array([True])
            raise BadOutput("nonfinite", "labels model returned NaN or Inf", int(np.argmax(bad)))
        return arr, 0
    if output == "boxes":
        if isinstance(y, np.ndarray) and y.dtype == object:
            y = list(y)
        if not isinstance(y, list | tuple) or len(y) != n:
            got = f"a list of {len(y)}" if isinstance(y, list | tuple) else type(y).__name__
            raise BadOutput(
                "dtype",
                f"detections model returned {got} for a batch of {n} windows, expected a list of {n} (k, 6) arrays",
            )
        out = np.empty(n, dtype=object)
        for k, boxes in enumerate(y):
            out[k] = _host(boxes).astype(np.float64, copy=False)
        return out, 0
    raise ValueError(f"unknown model output {output!r}; use one of {OUTPUTS}")


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

    def check_finite(rows) -> None:
        finite = np.isfinite(rows)
        if not finite.all():  # the exact test on the model's own values
            exact = np.isfinite(y.reshape(y.shape[0], -1)).all(axis=1)
            if not exact.all():
                raise BadOutput("nonfinite", "model returned NaN or Inf", int(np.argmin(exact)))

    clipped = 0
    if target.kind == "u":
        top = float(np.iinfo(target).max)
        r = np.multiply(y, np.float32(top), dtype=np.float32)  # one temporary, rounded and clipped in place
        np.rint(r, out=r)
        if r.ndim >= 1 and r.size:
            # per-window extremes: NaN and Inf show in them (no separate finiteness pass), and they tell
            # whether anything clips
            flat = r.reshape(r.shape[0], -1)
            lo, hi = flat.min(axis=1), flat.max(axis=1)
            check_finite(lo + hi)
            if float(lo.min()) < 0 or float(hi.max()) > top:
                clipped = _count_outside((r < 0) | (r > top), count_boxes)
                np.clip(r, 0, top, out=r)
        out = r.astype(target)
    else:
        if y.ndim >= 1 and y.size:
            # NaN and Inf propagate through a sum (in the output's own precision: a sum that overflows
            # only sends the batch to the exact test)
            wide = np.float32 if y.dtype.itemsize < 4 else None  # float16 sums of a window overflow
            check_finite(y.reshape(y.shape[0], -1).sum(axis=1, dtype=wide))
        out = y if y.dtype == target else astype_float(y, target)
    return (out, clipped) if with_clips else out


def _build_from_path(spec: ModelSpec):
    """Import and call the factory of ``spec.target``; the model it returns, of any supported kind.

    The path may also name the model itself (a module instance, a numpy function of the batch). A
    factory may return a torch module, a numpy callable, a model file's path (loaded with
    :func:`tilegraph.infer.formats.load_model_file`) or a :class:`~tilegraph.infer.formats.ModulePayload`.
    """
    module_name, _, attr = (spec.target or "").partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "") == module_name.split(".")[0]
        raise ModelLoadError(
            f"cannot import model factory {spec.target!r} on this worker: {exc}",
            hint=(
                f"install the package that holds {module_name!r} in every worker's environment "
                "(pip install -e . for your own project), or send a single-file module to a running "
                f"cluster with client.upload_file('{module_name.replace('.', '/')}.py'); the embedded "
                "cluster imports modules of the current folder"
            )
            if missing
            else "the module must import cleanly on every worker (same environment)",
        ) from exc
    if _is_factory(factory, spec.factory_kwargs):
        try:
            model = factory(**spec.factory_kwargs)
        except Exception as exc:
            raise ModelLoadError(f"model factory {spec.target!r} failed: {exc!r}") from exc
    else:
        model = factory  # the path names the model itself: an instance, or a function of the batch
    from tilegraph.infer import formats

    if isinstance(model, str | os.PathLike):
        model = formats.load_model_file(model, device=spec.device)
    elif isinstance(model, formats.ModulePayload):
        model = formats.from_payload(model, device=spec.device)
    if not callable(model):
        raise ModelLoadError(
            f"model factory {spec.target!r} returned {type(model).__name__}, not a model",
            hint="return a torch.nn.Module, a callable on numpy (N, C, H, W) batches or a model file's path",
        )
    if spec.weights:
        torch_mod = sys.modules.get("torch")
        if torch_mod is None or not isinstance(model, torch_mod.nn.Module):
            raise ModelLoadError(
                f"weights= needs a torch module, but {spec.target!r} returned {type(model).__name__}",
                path=spec.weights,
            )
        _load_weights(model, spec.weights)
    return model


def _is_factory(obj, kwargs: dict) -> bool:
    """Whether an import path names something to call for the model (a class, a factory) or the model itself.

    Classes and callables that take no required argument (or are given ``factory_kwargs``) build the
    model; a torch module instance, a callable needing one argument (the batch) or any other object is
    the model.
    """
    import inspect

    if kwargs or isinstance(obj, type):
        return True
    torch_mod = sys.modules.get("torch")
    if not callable(obj) or (torch_mod is not None and isinstance(obj, torch_mod.nn.Module)):
        return False
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind()
        return True
    except TypeError:
        return False


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

    ``payload`` is the model object for ``kind="module"``/``"callable"``, as sent (a
    :class:`~tilegraph.infer.formats.ModulePayload` is rebuilt here, once per process); ignored for
    ``"path"`` (the factory is imported and called here) and ``"file"`` (the file is loaded here).
    """
    runner = _CACHE.get(spec.token)
    if runner is not None:
        return runner
    with _LOCK:
        runner = _CACHE.get(spec.token)
        if runner is None:
            fn: Callable
            if spec.kind == "path":
                fn = _build_from_path(spec)
            elif spec.kind == "file":
                from tilegraph.infer.formats import load_model_file

                fn = load_model_file(spec.target or spec.name, device=spec.device)
            else:
                if payload is None:
                    raise ModelLoadError(f"model {spec.name!r} did not reach this worker")
                from tilegraph.infer.formats import from_payload

                fn = from_payload(payload, device=spec.device)
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
