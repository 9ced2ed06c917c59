"""The model contract and its small, picklable description (:class:`ModelSpec`).

Contract: a model takes a batch ``(N, C, H, W)`` float32 and returns ``(N, C', H*s, W*s)``. It may
declare, as attributes, ``scale`` (``2``, ``4``, ``"1/8"``), ``in_channels``, ``out_channels``,
``stride`` (its total stride: window starts and sizes are multiples of it) and ``halo`` (pixels of
context each side needs), read by :func:`tilegraph.infer.declare.declarations` wherever the model
exists (the probe reads them on a worker for every kind of model). Arguments given to
:func:`tilegraph.run` override the attributes: :func:`describe_model` records only those, and
:meth:`ModelSpec.with_declarations` fills the rest from what the probe read.

Four forms are accepted:

* a ``torch.nn.Module`` instance (sent to each worker once, never with every task; a
  ``torch.fx.GraphModule``, a TorchScript module or anything cloudpickle cannot send travels as
  bytes, :func:`tilegraph.infer.formats.to_payload`);
* an import path ``"package.module:factory"`` with optional ``weights`` (safetensors, or a torch
  checkpoint loaded with ``weights_only=True``), loaded once per worker process; the factory may
  return any supported kind of model (a torch module, a numpy callable, a model file's path);
* a model file (``.onnx``, a TorchScript archive, a spandrel checkpoint ``.pth``/``.safetensors``...,
  :data:`tilegraph.infer.formats.SUFFIXES`), loaded once per worker process;
* a plain callable on numpy arrays.

This module imports neither torch nor distributed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import asdict, dataclass, field

from tilegraph.errors import ModelLoadError
from tilegraph.options import ModelOptions

__all__ = ["ModelSpec", "describe_model", "is_model_file", "spec_for", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to build or find the model, and what the model declares.

    Attributes
    ----------
    kind : {"module", "path", "file", "callable"}
    name : str
        Human-facing name (class name, import path or file name).
    target : str or None
        ``"package.module:factory"`` for ``kind="path"``; the absolute file path for ``kind="file"``.
    weights : str or None
        Weights file for ``kind="path"``.
    scale, in_channels, out_channels, stride, halo
        Declared (or given) properties; ``None`` when unknown.
    confidence : bool or None
        The model returns a confidence channel last (declared; ``out_channels`` excludes it).
    precision : {"fp32", "fp16", "bf16"}
        Autocast precision, opt-in.
    channels_last : bool
        Use ``torch.channels_last`` memory format, opt-in.
    device : str
        ``"auto"`` (the worker's GPU if it has one, else CPU), ``"cpu"`` or ``"cuda"``.
    token : str
        Identity of the model for the per-process cache: for instances a hash of the class and of
        the weights' bytes (a model changed in place gets a new token), for import paths the path,
        the weights file's hash and the factory's arguments.
    declared : dict
        What the model itself declared (filled after the probe), for the metadata.
    """

    kind: str
    name: str
    target: str | None = None
    weights: str | None = None
    factory_kwargs: dict = field(default_factory=dict)
    scale: str | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    stride: int | None = None
    halo: int | None = None
    confidence: bool | None = None
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    token: str = ""
    weights_sha256: str | None = None
    declared: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain data for metadata."""
        return asdict(self)

    @property
    def overrides(self) -> tuple[str, ...]:
        """Declarable properties given explicitly (they win over the model's own attributes)."""
        return tuple(
            k
            for k in ("scale", "in_channels", "out_channels", "stride", "halo")
            if getattr(self, k) is not None
        )

    def with_declarations(self, declared: dict) -> ModelSpec:
        """This spec with the properties not given explicitly taken from ``declared``."""
        from dataclasses import replace

        fill = {k: v for k, v in declared.items() if getattr(self, k, None) is None}
        return replace(self, **fill, declared=dict(declared))


def _is_torch_module(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _weights_hash(path: str | None) -> str | None:
    if not path:
        return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights: {exc.strerror}", path=path) from exc
    return h.hexdigest()


def _content_token(model) -> str:
    """Hash of a model instance's content: its pickled bytes (code, settings and weights).

    A model changed in place, or a new one reusing a freed object's memory, gets a new token, so
    workers reload it. Pickling copies the weights once (about as fast as hashing them). A model
    that cannot be pickled falls back to its class, its tensors' bytes and its identity.
    """
    h = hashlib.sha256()
    cls = type(model)
    h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    try:
        import cloudpickle

        h.update(cloudpickle.dumps(model))
        return h.hexdigest()
    except Exception:
        pass
    h.update(f"id:{id(model)}".encode())
    if _is_torch_module(model):
        for name, t in model.state_dict().items():
            h.update(name.encode())
            data = t.detach().cpu().contiguous().view(-1)
            h.update(data.view(__import__("torch").uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


def is_model_file(model: object) -> bool:
    """Whether ``model`` names a model file rather than an import path.

    A path object, or a string ending in a model file suffix (``.onnx``, ``.pt``, ``.pth``,
    ``.safetensors``...), or naming an existing file.
    """
    if isinstance(model, os.PathLike):
        return True
    if not isinstance(model, str):
        return False
    from tilegraph.infer.formats import SUFFIXES

    return os.path.splitext(model)[1].lower() in SUFFIXES or os.path.isfile(model)


def describe_model(
    model,
    *,
    weights: str | None = None,
    scale=None,
    in_channels: int | None = None,
    out_channels: int | None = None,
    stride: int | None = None,
    halo: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    device: str = "auto",
    factory_kwargs: dict | None = None,
) -> ModelSpec:
    """Build the :class:`ModelSpec` of ``model`` with the explicit overrides given here.

    What the model itself declares is read by the probe on a worker (every kind of model alike)
    and merged with :meth:`ModelSpec.with_declarations`. Never imports or builds a model given by
    path (that happens on the workers).
    """
    if precision not in PRECISIONS:
        raise ModelLoadError(f"precision {precision!r} not supported; use one of {PRECISIONS}")
    if is_model_file(model):
        path = os.path.abspath(os.fspath(model))
        if not os.path.isfile(path):
            raise ModelLoadError("model file not found", path=path, hint="give the path of an existing file")
        if weights or factory_kwargs:
            raise ModelLoadError(
                "weights= and factory_kwargs= apply only to a model given by import path",
                path=path,
                hint="a model file holds its weights",
            )
        kind, name, target = "file", os.path.basename(path), path
        weights_sha = _weights_hash(path)  # the file is the model: its hash is its identity
        token_src = f"file|{path}|{weights_sha}"
    elif isinstance(model, str):
        if ":" not in model:
            raise ModelLoadError(
                f"model path {model!r} must look like 'package.module:factory'",
                hint="name the module and the function or class that builds the model",
            )
        kind, name, target = "path", model, model
        weights_sha = _weights_hash(weights)  # read once; recorded in the output's provenance
        token_src = f"path|{model}|{weights_sha}|{sorted((factory_kwargs or {}).items())}"
    elif callable(model):
        kind = "module" if _is_torch_module(model) else "callable"
        name = type(model).__name__ if kind == "module" else getattr(model, "__name__", type(model).__name__)
        target = None
        weights_sha = None
        token_src = f"{kind}|{_content_token(model)}"
        if weights:
            raise ModelLoadError("weights= applies only to a model given by import path")
    else:
        raise ModelLoadError(
            f"a model must be a torch module, a callable, an import path or a model file, got {type(model).__name__}"
        )

    token = hashlib.sha1(f"{token_src}|{precision}|{channels_last}|{compile}|{device}".encode()).hexdigest()[
        :16
    ]
    return ModelSpec(
        kind=kind,
        name=name,
        target=target,
        weights=weights,
        factory_kwargs=dict(factory_kwargs or {}),
        scale=None if scale is None else str(scale),
        in_channels=in_channels,
        out_channels=out_channels,
        stride=stride,
        halo=halo,
        precision=precision,
        channels_last=bool(channels_last),
        compile=bool(compile),
        device=device,
        token=token,
        weights_sha256=weights_sha,
    )


def spec_for(model, options: ModelOptions) -> ModelSpec:
    """:func:`describe_model` with the run's typed model options."""
    return describe_model(
        model,
        weights=options.weights,
        scale=options.scale,
        in_channels=options.in_channels,
        out_channels=options.out_channels,
        stride=options.stride,
        halo=options.halo,
        precision=options.precision,
        channels_last=options.channels_last,
        compile=options.compile,
        device=options.device,
        factory_kwargs=dict(options.factory_kwargs or {}),
    )
