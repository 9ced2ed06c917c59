"""One rule for what a model declares, read identically from an instance, an import path or a file.

A model may declare, as attributes, ``scale`` (``2``, ``4``, ``"1/8"``), ``in_channels``,
``out_channels``, ``stride`` (its total stride), ``halo`` (context pixels each side needs) and
``confidence`` (``True``: it returns one channel more, its confidence in each pixel, which multiplies
the blend weights and is not written; ``out_channels`` then counts the channels without it).
The rule is applied where the model object exists: on the client for instances, and on a worker,
by the probe, for every model (so a model built from an import path or loaded from a file declares
exactly as an instance does).

Attributes of torch's own layers are not declarations: a bare ``torch.nn.Conv2d`` has a ``stride``
tuple and ``in_channels``/``out_channels`` describing the layer, which would be wrong as a model's
total stride; modules defined in ``torch.*`` declare nothing. A declared value of the wrong type is
an error naming the attribute. TorchScript modules and ``torch.fx.GraphModule``s (their classes live
in ``torch.*``) keep the attributes of the module they were made from: those are read, and values
of the wrong type (a scripted ``Conv2d``'s ``stride`` tuple) are ignored.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from tilegraph.errors import ModelLoadError

__all__ = ["DECLARABLE", "declarations"]

DECLARABLE = ("scale", "in_channels", "out_channels", "stride", "halo", "confidence")


def _is_torch_layer(model: object) -> bool:
    module = type(model).__module__ or ""
    return module == "torch" or module.startswith("torch.")


def _is_converted(model: object) -> bool:
    """A TorchScript module or a GraphModule: a torch class carrying the original model's attributes."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(model, torch.jit.ScriptModule | torch.fx.GraphModule)


def declarations(model: object, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """What ``model`` declares (see the module notes); names in ``skip`` are not read (given explicitly).

    Returns
    -------
    dict
        A subset of :data:`DECLARABLE`; ``scale`` as a string (``"2"``, ``"1/8"``), ``confidence`` a
        bool, the others ints.

    Raises
    ------
    tilegraph.errors.ModelLoadError
        A declaration of the wrong type (a tuple stride, a negative halo...).
    """
    from tilegraph.infer.formats import ModulePayload

    if isinstance(model, ModulePayload):
        return {k: v for k, v in model.declared.items() if v is not None and k not in skip}
    lenient = _is_converted(model)
    if _is_torch_layer(model) and not lenient:
        return {}
    out: dict[str, Any] = {}
    for name in DECLARABLE:
        if name in skip:
            continue
        value = getattr(model, name, None)
        if value is None or callable(value):
            continue
        if name == "scale":
            try:
                frac = Fraction(str(value)) if not isinstance(value, Fraction) else value
            except (ValueError, ZeroDivisionError):
                frac = None
            if isinstance(value, bool) or frac is None or frac <= 0:
                if lenient:
                    continue
                raise ModelLoadError(
                    f"the model's scale attribute {value!r} is not a scale",
                    hint="declare scale as 2, 4 or '1/8', or pass scale= to run()",
                )
            out[name] = str(frac)
            continue
        if name == "confidence":
            if not isinstance(value, bool):
                raise ModelLoadError(
                    f"the model's confidence attribute {value!r} is not a declaration (True or False was expected)",
                    hint="declare confidence = True when the model returns a confidence channel last",
                )
            out[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "halo" else 1):
            if lenient:
                continue
            raise ModelLoadError(
                f"the model's {name} attribute {value!r} is not a declaration (a positive int was expected)",
                hint=f"rename the attribute, or pass {'model_stride' if name == 'stride' else name}= to run()",
            )
        out[name] = int(value)
    return out
