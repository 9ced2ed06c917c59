"""The model contract and its small, picklable description (:class:`ModelSpec`).

Contract: a model takes a batch ``(N, C, H, W)`` float32 and returns ``(N, C', H*s, W*s)``. It may
declare, as attributes, ``scale`` (``2``, ``4``, ``"1/8"``), ``in_channels``, ``out_channels``,
``stride`` (its total stride: window starts and sizes are multiples of it) and ``halo`` (pixels of
context each side needs). Arguments given to :func:`tilegraph.run` override the attributes.

Three forms are accepted:

* a ``torch.nn.Module`` instance (sent to each worker once, never with every task);
* an import path ``"package.module:factory"`` with optional ``weights`` (safetensors, or a torch
  checkpoint loaded with ``weights_only=True``), loaded once per worker process;
* a plain callable on numpy arrays.

This module imports neither torch nor distributed.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass, field

from tilegraph.errors import ModelLoadError

__all__ = ["ModelSpec", "describe_model", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to build or find the model, and what the model declares.

    Attributes
    ----------
    kind : {"module", "path", "callable"}
    name : str
        Human-facing name (class name or import path).
    target : str or None
        ``"package.module:factory"`` for ``kind="path"``.
    weights : str or None
        Weights file for ``kind="path"``.
    scale, in_channels, out_channels, stride, halo
        Declared (or given) properties; ``None`` when unknown.
    precision : {"fp32", "fp16", "bf16"}
        Autocast precision, opt-in.
    channels_last : bool
        Use ``torch.channels_last`` memory format, opt-in.
    device : str
        ``"auto"`` (the worker's GPU if it has one, else CPU), ``"cpu"`` or ``"cuda"``.
    token : str
        Identity of the model for the per-process cache.
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
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    token: str = ""
    weights_sha256: str | None = None

    def to_dict(self) -> dict:
        """Plain data for metadata."""
        return asdict(self)


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
    """Build the :class:`ModelSpec` of ``model``; explicit arguments override declared attributes.

    Never imports or builds a model given by path (that happens on the workers).
    """
    if precision not in PRECISIONS:
        raise ModelLoadError(f"precision {precision!r} not supported; use one of {PRECISIONS}")
    if isinstance(model, str):
        if ":" not in model:
            raise ModelLoadError(
                f"model path {model!r} must look like 'package.module:factory'",
                hint="name the module and the function or class that builds the model",
            )
        kind, name, target = "path", model, model
        declared = {}
        weights_sha = _weights_hash(weights)  # read once; recorded in the output's provenance
        token_src = f"path|{model}|{weights_sha}|{sorted((factory_kwargs or {}).items())}"
    elif callable(model):
        kind = "module" if _is_torch_module(model) else "callable"
        name = type(model).__name__ if kind == "module" else getattr(model, "__name__", type(model).__name__)
        target = None
        weights_sha = None
        declared = {
            k: getattr(model, k, None) for k in ("scale", "in_channels", "out_channels", "stride", "halo")
        }
        token_src = f"{kind}|{name}|{id(model)}"
        if weights:
            raise ModelLoadError("weights= applies only to a model given by import path")
    else:
        raise ModelLoadError(
            f"a model must be a torch module, a callable or an import path, got {type(model).__name__}"
        )

    def pick(given, key):
        return given if given is not None else declared.get(key)

    sc = pick(scale, "scale")
    token = hashlib.sha1(f"{token_src}|{precision}|{channels_last}|{compile}|{device}".encode()).hexdigest()[
        :16
    ]
    return ModelSpec(
        kind=kind,
        name=name,
        target=target,
        weights=weights,
        factory_kwargs=dict(factory_kwargs or {}),
        scale=None if sc is None else str(sc),
        in_channels=pick(in_channels, "in_channels"),
        out_channels=pick(out_channels, "out_channels"),
        stride=pick(stride, "stride"),
        halo=pick(halo, "halo"),
        precision=precision,
        channels_last=bool(channels_last),
        compile=bool(compile),
        device=device,
        token=token,
        weights_sha256=weights_sha,
    )
