"""Models given as files (ONNX, TorchScript, spandrel checkpoints), their declarations, and transport.

Three questions a model file raises, answered here so that the engine can treat every format alike:

* **What is it and how is it run?** :func:`load_model_file` detects the format and returns something the
  runner calls: an :class:`OnnxModel` (a numpy callable backed by an onnxruntime session, CUDA execution
  provider on GPU workers), a TorchScript module (``torch.jit.load``), or a :class:`SpandrelModel`
  (architecture detected from the state dict by spandrel). Loads are cached per process, so a worker
  loads each file once.
* **What does it declare?** :func:`declarations` gives ``scale``, ``in_channels``, ``out_channels``,
  ``stride`` and ``halo`` the same way for every kind of model (``None`` where unknown);
  :func:`constraints` gives the size constraints and tiling advice on top.
* **How does it reach a worker?** :func:`to_payload` turns a model cloudpickle cannot send (a
  ``torch.fx.GraphModule`` from onnx2torch fails with ``PicklingError: excessively deep recursion``; a
  TorchScript module cannot be pickled at all) into a :class:`ModulePayload` of bytes (``torch.save`` of
  the whole module, ``torch.jit.save``, or the ONNX file); :func:`from_payload` rebuilds it on the
  worker, once per process.

Checkpoints are read with ``torch.load(weights_only=True)``: a file that pickles code or objects other
than tensors is refused with :class:`~tilegraph.errors.ModelLoadError` naming it.

torch, onnxruntime and spandrel are imported only when a file of their kind is loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import threading
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from tilegraph.errors import ModelLoadError, ModelOutputError

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "DECLARED",
    "ModulePayload",
    "OnnxModel",
    "detect_format",
    "load_model_file",
    "onnx_to_torch",
    "default_providers",
    "declarations",
    "constraints",
    "to_payload",
    "from_payload",
    "needs_payload",
    "load_counts",
    "clear_model_cache",
]

#: Formats :func:`load_model_file` reads.
FORMATS = ("onnx", "torchscript", "checkpoint")
#: File suffixes :func:`load_model_file` accepts, and the format each usually holds (``.pt``/``.pth``
#: files are told apart by content: a TorchScript archive has a ``code/`` folder).
SUFFIXES = {
    ".onnx": "onnx",
    ".pt": "torchscript or checkpoint",
    ".pth": "torchscript or checkpoint",
    ".ts": "torchscript",
    ".jit": "torchscript",
    ".ckpt": "checkpoint",
    ".safetensors": "checkpoint",
    ".bin": "checkpoint",
}
#: The declarations every model may carry (see :mod:`tilegraph.infer.spec`).
DECLARED = ("scale", "in_channels", "out_channels", "stride", "halo")

_LOCK = threading.RLock()
_CACHE: dict[tuple, Any] = {}
_LOADS: Counter = Counter()  # loads per format in this process (tests count them)


# ----------------------------------------------------------------------------- detection and loading


def detect_format(path: str | os.PathLike) -> str:
    """The format of a model file: ``"onnx"``, ``"torchscript"`` or ``"checkpoint"``.

    Parameters
    ----------
    path
        A model file.

    Raises
    ------
    ModelLoadError
        If the file does not exist or its suffix is not one of :data:`SUFFIXES`.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ModelLoadError("model file not found", path=p, hint="give the path of an existing file")
    suffix = os.path.splitext(p)[1].lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".ts", ".jit"):
        return "torchscript"
    if suffix == ".safetensors":
        return "checkpoint"
    if suffix in (".pt", ".pth", ".ckpt", ".bin"):
        return "torchscript" if _is_torchscript_archive(p) else "checkpoint"
    raise ModelLoadError(
        f"unknown model file suffix {suffix or '(none)'!r}",
        path=p,
        hint="supported: " + ", ".join(f"{k} ({v})" for k, v in SUFFIXES.items()),
    )


def _is_torchscript_archive(path: str) -> bool:
    """True for a zip written by ``torch.jit.save`` (it holds ``code/`` and ``constants.pkl``)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def load_model_file(
    path: str | os.PathLike,
    *,
    providers: list | tuple | None = None,
    device: str = "auto",
    cache: bool = True,
) -> Any:
    """Load a model file into something the runner calls, once per process.

    Parameters
    ----------
    path
        ``.onnx`` (onnxruntime), a TorchScript archive (``torch.jit.save``; ``.pt``/``.pth``/``.ts``), or
        a checkpoint (``.pth``/``.pt``/``.ckpt``/``.bin`` read with ``weights_only=True``, or
        ``.safetensors``) whose architecture spandrel detects from the state dict.
    providers
        onnxruntime execution providers. Default: CUDA (then CPU) when onnxruntime has the CUDA provider
        and a GPU is visible and ``device`` is not ``"cpu"``; CPU otherwise.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``; for ONNX the provider choice. Torch models are loaded on
        the CPU; the runner moves them.
    cache
        Reuse the model loaded earlier in this process from the same file (same size and mtime) and
        options.

    Returns
    -------
    OnnxModel or torch.nn.Module
        An :class:`OnnxModel` (numpy ``(N, C, H, W)`` float32 in and out), a TorchScript module, or a
        :class:`~tilegraph.infer._spandrel.SpandrelModel`. Each carries its declarations as attributes
        (:func:`declarations`).

    Raises
    ------
    ModelLoadError
        Missing file, unknown suffix, unreadable or corrupt file, a pickled checkpoint that holds more
        than weights, an architecture spandrel does not know, or a missing optional package.
    """
    p = os.path.abspath(os.fspath(path))
    kind = detect_format(p)
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns, kind, tuple(providers) if providers else None, device)
    if cache:
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                return hit
    with _LOCK:
        if cache and key in _CACHE:
            return _CACHE[key]
        if kind == "onnx":
            model: Any = OnnxModel(p, providers=providers, device=device)
        elif kind == "torchscript":
            model = _load_torchscript(p)
        else:
            model = _load_checkpoint(p)
        _LOADS[kind] += 1
        if cache:
            _CACHE[key] = model
    return model


def load_counts() -> dict[str, int]:
    """How many files of each format this process loaded (cache hits not counted)."""
    with _LOCK:
        return dict(_LOADS)


def clear_model_cache() -> None:
    """Forget the models loaded in this process (and their counts)."""
    with _LOCK:
        _CACHE.clear()
        _LOADS.clear()
        _PAYLOADS.clear()


def _load_torchscript(path: str, data: bytes | None = None) -> Any:
    import torch

    try:
        module = torch.jit.load(io.BytesIO(data) if data is not None else path, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"cannot load TorchScript archive: {exc}", path=path) from exc
    return module.eval()


def _read_state_dict(path: str) -> dict:
    """The tensors of a checkpoint, read without running pickled code."""
    if path.lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file

            return dict(load_file(path, device="cpu"))
        except Exception as exc:
            raise ModelLoadError(f"cannot read safetensors file: {exc}", path=path) from exc
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            "this checkpoint pickles Python objects other than weights (a whole model or training state); "
            "tilegraph loads checkpoints with weights_only=True and does not run code from files",
            path=path,
            hint="save model.state_dict() (or safetensors) or a TorchScript archive instead; if you trust "
            "the file, load it yourself and pass the module as model=",
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot read checkpoint: {exc}", path=path) from exc
    if not isinstance(state, dict):
        raise ModelLoadError(
            f"checkpoint holds a {type(state).__name__}, not a state dict",
            path=path,
            hint="save model.state_dict()",
        )
    return state


def _load_checkpoint(path: str) -> Any:
    from tilegraph.infer._compat import import_spandrel

    state = _read_state_dict(path)
    spandrel = import_spandrel()
    state = spandrel.canonicalize_state_dict(state)
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError as exc:
        raise ModelLoadError(
            f"no architecture known to spandrel {spandrel.__version__} matches this state dict",
            path=path,
            hint="for weights of your own network give model='package.module:factory' with weights=; "
            "pip install spandrel-extra-arches adds architectures",
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"spandrel could not build the model: {exc!r}", path=path) from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ModelLoadError(
            f"{descriptor.architecture.name} is a {type(descriptor).__name__} (it needs more than one "
            "image per call, e.g. a mask); tilegraph runs image-to-image models",
            path=path,
        )
    from tilegraph.infer._spandrel import SpandrelModel

    return SpandrelModel(descriptor, source=path)


# ----------------------------------------------------------------------------- ONNX


def _cuda_visible() -> bool:
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None and vis.strip() in ("", "-1"):
        return False
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.cuda.is_available())
        except Exception:  # pragma: no cover - broken driver
            return False
    return os.path.exists("/dev/nvidiactl") or vis is not None


def default_providers(device: str = "auto") -> list:
    """onnxruntime providers for ``device``: CUDA first where available and asked, then CPU."""
    from tilegraph.infer._compat import import_onnxruntime

    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            f"device='cuda' but onnxruntime {ort.__version__} has no CUDA provider (it has {available})",
            hint="pip install onnxruntime-gpu on GPU workers",
        )
    if device != "cpu" and "CUDAExecutionProvider" in available and (device == "cuda" or _cuda_visible()):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _dim(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and v > 0 else None


class OnnxModel:
    """An ONNX image model run by onnxruntime: a callable on numpy ``(N, C, H, W)`` batches.

    Built by :func:`load_model_file`; the session is created once per process (pickling sends the path,
    or the file's bytes for a :class:`ModulePayload`, never the session).

    Parameters
    ----------
    path
        The ``.onnx`` file.
    providers
        onnxruntime execution providers; default :func:`default_providers` for ``device``.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    data
        The file's bytes, to build the session without reading ``path`` (a worker without the file).

    Attributes
    ----------
    scale : str or None
        Output size over input size when both are fixed in the graph, else ``None`` (the engine probes).
    in_channels, out_channels : int or None
        From the graph's input and output shapes.
    stride, halo : None
        An ONNX graph does not state them.
    fixed_size : tuple of int or None
        ``(H, W)`` when the graph accepts only that size.
    input_name, output_name : str
    providers : list of str
        The providers the session uses.
    """

    def __init__(
        self,
        path: str,
        *,
        providers: list | tuple | None = None,
        device: str = "auto",
        data: bytes | None = None,
    ) -> None:
        from tilegraph.infer._compat import import_onnxruntime

        ort = import_onnxruntime()
        self.path = path
        self.name = os.path.basename(path)
        self.device = device
        self._data = data  # kept when built from bytes: pickling then sends the bytes
        self._requested = list(providers) if providers else None
        try:
            chosen = self._requested or default_providers(device)
        except ModelLoadError as exc:
            raise ModelLoadError(exc.message, path=path, hint=exc.hint) from exc
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 4  # errors reach the caller as exceptions, not as console logs
            self._session = ort.InferenceSession(
                data if data is not None else path, sess_options=options, providers=chosen
            )
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot load the model: {exc}", path=path) from exc
        self.providers = list(self._session.get_providers())
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ModelLoadError(
                f"the ONNX graph has {len(inputs)} inputs {names}; tilegraph feeds one image batch",
                path=path,
                hint="export the model with a single (N, C, H, W) input",
            )
        inp, out = inputs[0], self._session.get_outputs()[0]
        if inp.type not in _ORT_FLOATS:
            raise ModelLoadError(
                f"the ONNX input {inp.name!r} is {inp.type}; tilegraph feeds floats", path=path
            )
        if len(inp.shape) != 4:
            raise ModelLoadError(
                f"the ONNX input {inp.name!r} has shape {inp.shape}; tilegraph feeds (N, C, H, W)", path=path
            )
        self.input_name, self.output_name = inp.name, out.name
        self._in_dtype = _ORT_FLOATS[inp.type]
        n, c, h, w = (_dim(v) for v in inp.shape)
        oshape = list(out.shape) if out.shape is not None else []
        oc, oh, ow = (_dim(v) for v in oshape[1:4]) if len(oshape) == 4 else (None, None, None)
        self.batch_size = n  # fixed batch size of the graph (often 1), or None
        self.in_channels = c
        self.out_channels = oc
        self.fixed_size = (h, w) if h and w else None
        self.scale: str | None = None
        if h and w and oh and ow and Fraction(oh, h) == Fraction(ow, w):
            self.scale = str(Fraction(oh, h))
        self.stride: int | None = None
        self.halo: int | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run on ``(N, C, H, W)`` floats; returns float32 ``(N, C', H', W')``."""
        x = np.ascontiguousarray(batch, dtype=self._in_dtype)
        if x.ndim != 4:
            raise ModelOutputError(f"ONNX model {self.name} needs (N, C, H, W) batches, got shape {x.shape}")
        if self.batch_size is not None and x.shape[0] != self.batch_size:
            if x.shape[0] % self.batch_size:
                raise ModelOutputError(
                    f"ONNX model {self.name} takes batches of exactly {self.batch_size}, got {x.shape[0]}"
                )
            parts = [self._run(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
            return np.concatenate(parts, axis=0)
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        y = self._session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(y, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path!r}, providers={self.providers})"

    def __reduce__(self):
        # the session cannot be pickled: send the path (the worker opens it once, cached by file), or the
        # bytes it was built from
        if self._data is not None:
            return (
                _onnx_from_payload,
                (_payload("onnx", self._data, self.name, declarations(self)), self.device),
            )
        return (_onnx_from_path, (self.path, self._requested, self.device))


def _onnx_from_payload(payload: ModulePayload, device: str) -> Any:
    return from_payload(payload, device=device)


def _onnx_from_path(path: str, providers: list | None, device: str) -> Any:
    try:
        return load_model_file(path, providers=providers, device=device)
    except ModelLoadError as exc:
        if not os.path.exists(path):
            raise ModelLoadError(
                "ONNX model file not found on this worker",
                path=path,
                hint="put the file on a file system every worker sees, or send it with "
                "tilegraph.infer.formats.to_payload(model)",
            ) from exc
        raise


def onnx_to_torch(path: str | os.PathLike) -> Any:
    """Convert an ONNX file to a ``torch.fx.GraphModule`` with onnx2torch (for torch-side features).

    Weights stored as ``Constant`` nodes (as paddle2onnx writes them) are moved to initializers first,
    which onnx2torch needs. The result is a torch module: it runs in float64 for the receptive-field
    probe, under autocast, with ``channels_last``; send it to workers with :func:`to_payload`.

    Raises
    ------
    ModelLoadError
        If onnx or onnx2torch is missing or the conversion fails.
    """
    from tilegraph.infer._compat import import_onnx2torch

    p = os.fspath(path)
    o2t = import_onnx2torch()
    import onnx

    try:
        proto = onnx.load(p)
    except Exception as exc:
        raise ModelLoadError(f"cannot read ONNX file: {exc}", path=p) from exc
    graph = proto.graph
    kept = []
    for node in graph.node:
        attrs = list(node.attribute)
        if node.op_type == "Constant" and len(attrs) == 1 and attrs[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    try:
        module = o2t.convert(proto)
    except Exception as exc:
        raise ModelLoadError(f"onnx2torch cannot convert the model: {exc!r}", path=p) from exc
    return module.eval()


# ----------------------------------------------------------------------------- declarations


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    return None


def declarations(model: Any) -> dict:
    """What ``model`` declares: ``scale``, ``in_channels``, ``out_channels``, ``stride``, ``halo``.

    The same for every kind of model: attributes of a torch module or callable (TorchScript modules keep
    the attributes that were scripted), an :class:`OnnxModel` (channels and, for fixed sizes, scale from
    the graph's shapes), a :class:`~tilegraph.infer._spandrel.SpandrelModel` (scale and channels from
    spandrel's descriptor, stride from its ``multiple_of``) or a :class:`ModulePayload`.

    Returns
    -------
    dict
        The five keys of :data:`DECLARED`; ``None`` where unknown. ``scale`` is a string (``"4"``,
        ``"1/8"``); the others are ints. Values of the wrong type (``nn.Conv2d.stride`` is a tuple) count
        as unknown.
    """
    if isinstance(model, ModulePayload):
        return dict(model.declared)
    out: dict[str, Any] = {}
    for key in DECLARED:
        try:
            v = getattr(model, key, None)
        except Exception:  # a property that fails, a TorchScript attribute of an odd type
            v = None
        if key == "scale":
            if v is None or isinstance(v, bool):
                out[key] = None
            elif isinstance(v, (int, np.integer, str, Fraction)):
                out[key] = str(v)
            elif isinstance(v, float) and v > 0:
                out[key] = str(Fraction(v).limit_denominator(64))
            else:
                out[key] = None
        else:
            iv = _int_or_none(v)
            out[key] = iv if iv is None or iv >= 0 else None
    return out


def constraints(model: Any) -> dict:
    """Size constraints and tiling advice, where the model states them.

    Returns
    -------
    dict
        ``min_size`` (int or None), ``fixed_size`` (``(H, W)`` or None), ``square`` (bool), ``tiling``
        (``"SUPPORTED"``, ``"DISCOURAGED"``, ``"INTERNAL"`` or None: spandrel's advice; DISCOURAGED marks
        models with global context, whose tiles differ from whole-image output) and ``note`` (a sentence
        for the user, or None).
    """
    tiling = getattr(model, "tiling", None)
    fixed = getattr(model, "fixed_size", None)
    note = None
    if tiling == "DISCOURAGED":
        note = (
            f"spandrel marks {getattr(model, 'architecture', 'this architecture')} as not suited to tiling "
            "(global context): tiles will differ from whole-image output; use the largest tile that fits"
        )
    elif tiling == "INTERNAL":
        note = f"{getattr(model, 'architecture', 'this architecture')} tiles internally"
    elif fixed:
        note = f"the model accepts only {fixed[0]} x {fixed[1]} inputs: use tile={fixed[0]} (square) or re-export"
    return {
        "min_size": _int_or_none(getattr(model, "min_size", None)),
        "fixed_size": tuple(fixed) if fixed else None,
        "square": bool(getattr(model, "square", False)),
        "tiling": tiling if isinstance(tiling, str) else None,
        "note": note,
    }


# ----------------------------------------------------------------------------- transport


@dataclass(frozen=True)
class ModulePayload:
    """A model as bytes, for models cloudpickle cannot send.

    Attributes
    ----------
    kind : {"torch.save", "torchscript", "onnx"}
        How :func:`from_payload` rebuilds it.
    data : bytes
        ``torch.save`` of the whole module, ``torch.jit.save`` of a TorchScript module, or an ONNX file.
    name : str
        The model's class or file name (for messages).
    sha256 : str
        Hash of ``data``: the per-process cache key (rebuilt once per worker process).
    declared : dict
        :func:`declarations` of the original model (rebuilding loses nothing, but reading needs no load).
    requires : tuple of str
        Top-level packages the classes in the module come from (they must be importable on workers).
    """

    kind: str
    data: bytes = field(repr=False)
    name: str
    sha256: str
    declared: dict = field(default_factory=dict)
    requires: tuple = ()

    def __len__(self) -> int:
        return len(self.data)


_PAYLOADS: dict[str, Any] = {}


def _is_graph_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.fx.GraphModule)


def _is_script_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.jit.ScriptModule)


def needs_payload(obj: Any) -> bool:
    """True when ``obj`` should travel as a :class:`ModulePayload` rather than through cloudpickle.

    TorchScript modules (not picklable), ``torch.fx.GraphModule`` (fragile: deep graphs exceed the
    recursion limit in cloudpickle) and any object cloudpickle fails on.
    """
    if isinstance(obj, ModulePayload):
        return False
    if _is_script_module(obj) or _is_graph_module(obj):
        return True
    import cloudpickle

    try:
        cloudpickle.dumps(obj)
    except Exception:  # PicklingError, RecursionError, TypeError ("cannot pickle '...' object")
        return True
    return False


def _requires(module: Any) -> tuple:
    names = set()
    for m in module.modules():
        top = type(m).__module__.split(".")[0]
        if top not in ("torch", "builtins", "__main__"):
            names.add(top)
    return tuple(sorted(names))


def to_payload(model: Any, *, force: bool = False) -> Any:
    """``model`` ready to send to workers: itself when cloudpickle can send it, else a :class:`ModulePayload`.

    Parameters
    ----------
    model
        A torch module, an :class:`OnnxModel`, a TorchScript module or any callable.
    force
        Always build a payload (for a torch module: ``torch.save`` bytes) even when cloudpickle works.

    Returns
    -------
    object or ModulePayload
        An :class:`OnnxModel` always becomes a payload of its file's bytes (workers need not see the
        file); a TorchScript module is saved with ``torch.jit.save``; another torch module that needs it
        (:func:`needs_payload`) with ``torch.save`` of the whole module (its classes must be importable
        on the workers: :attr:`ModulePayload.requires` names their packages).

    Raises
    ------
    ModelLoadError
        If the model can be sent neither way.
    """
    if isinstance(model, ModulePayload):
        return model
    declared = declarations(model)
    if isinstance(model, OnnxModel):
        data = model._data
        if data is None:
            with open(model.path, "rb") as f:
                data = f.read()
        return _payload("onnx", data, model.name, declared)
    if not force and not needs_payload(model):
        return model
    import torch

    buf = io.BytesIO()
    if _is_script_module(model):
        torch.jit.save(model, buf)
        return _payload("torchscript", buf.getvalue(), type(model).__name__, declared)
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"model {type(model).__name__} cannot be sent to workers: cloudpickle fails on it",
            hint="give the model as an import path 'package.module:factory' built on each worker",
        )
    name = getattr(model, "_get_name", lambda: type(model).__name__)()
    try:
        torch.save(model, buf)
    except Exception as exc:
        raise ModelLoadError(
            f"model {name} cannot be sent to workers: neither cloudpickle nor torch.save can serialise it "
            f"({exc!r})",
            hint="give the model as an import path 'package.module:factory', or save it with "
            "torch.jit.save and give the file",
        ) from exc
    return _payload("torch.save", buf.getvalue(), name, declared, _requires(model))


def _payload(kind: str, data: bytes, name: str, declared: dict, requires: tuple = ()) -> ModulePayload:
    return ModulePayload(
        kind=kind,
        data=data,
        name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        declared=dict(declared),
        requires=requires,
    )


def from_payload(payload: Any, *, device: str = "auto") -> Any:
    """Rebuild a model from :func:`to_payload`'s result, once per process; other objects pass through.

    Parameters
    ----------
    payload
        A :class:`ModulePayload`, or a model that travelled as itself.
    device
        For an ONNX payload, the provider choice (see :func:`default_providers`).

    Returns
    -------
    object
        The model (eval mode for torch modules), shared by the callers in this process.

    Raises
    ------
    ModelLoadError
        If the bytes cannot be turned back into the model (typically: a class of the module cannot be
        imported on this worker).
    """
    if not isinstance(payload, ModulePayload):
        return payload
    key = f"{payload.sha256}|{device}"
    with _LOCK:
        hit = _PAYLOADS.get(key)
        if hit is not None:
            return hit
        model = _rebuild(payload, device)
        _LOADS[f"payload:{payload.kind}"] += 1
        _PAYLOADS[key] = model
        return model


def _rebuild(payload: ModulePayload, device: str) -> Any:
    if payload.kind == "onnx":
        return OnnxModel(payload.name, device=device, data=payload.data)
    if payload.kind == "torchscript":
        return _load_torchscript(payload.name, payload.data)
    if payload.kind != "torch.save":
        raise ModelLoadError(f"unknown payload kind {payload.kind!r} for model {payload.name}")
    import torch

    try:
        # bytes this job made itself with torch.save (not a file from elsewhere): full unpickling is safe
        module = torch.load(io.BytesIO(payload.data), map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as exc:
        need = ", ".join(payload.requires) or "the model's own module"
        raise ModelLoadError(
            f"model {payload.name} cannot be rebuilt on this worker: {exc}",
            hint=f"install {need} in every worker's environment",
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"model {payload.name} cannot be rebuilt on this worker: {exc!r}") from exc
    return module.eval()
