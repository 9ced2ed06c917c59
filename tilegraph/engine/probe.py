"""Before tiling: probe the model on a worker (what it declares, its channels and scale) and size windows.

The probe runs as a model task (same resources and process as the model tasks), so a model given by
import path is built, and declares, exactly where it will run.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from tilegraph.engine.context import ProbeResult
from tilegraph.engine.executor import Executor
from tilegraph.errors import InputError, ModelError, ModelOutputError
from tilegraph.infer.declare import declarations
from tilegraph.infer.runner import get_runner
from tilegraph.infer.spec import ModelSpec
from tilegraph.plan.normalize import coerce_scale, lcm
from tilegraph.source.abc import Source

__all__ = ["model_channels", "probe", "probe_task", "checked_scale", "autotile", "remembered"]

#: Source channels whose last one passes around a model that declares one channel fewer (or nothing).
_ALPHA = {4: 3, 2: 1}


def model_channels(source_channels: int, declared: int | None, *, path: str | None = None) -> tuple[int, int]:
    """Channels the model sees and channels passed through (alpha), from what the model declares.

    An RGBA (or grey + alpha) image gives the model RGB (or grey) unless it declares 4 (or 2)
    channels; alpha then passes around the model, exactly.

    Raises
    ------
    tilegraph.errors.InputError
        The model declares a channel count the image cannot give.
    """
    c = source_channels
    if declared is None:
        return (_ALPHA[c], 1) if c in _ALPHA else (c, 0)
    if declared == c:
        return c, 0
    if _ALPHA.get(c) == declared:
        return declared, c - declared
    raise InputError(
        f"the model takes {declared} channels, the image has {c}",
        path=path,
        hint="convert the image or declare the model's in_channels",
    )


def _coarse_inputs(runner, eff: ModelSpec, coarse: str | None) -> tuple[str | None, int]:
    """Coarse-to-fine: the keyword the model takes the prior as, or the extra input channels it takes."""
    if coarse is None:
        return None, 0
    if coarse == "keyword":
        keyword = getattr(runner.model, "coarse_keyword", None) or "coarse"
        if not isinstance(keyword, str) or not keyword.isidentifier():
            raise ModelOutputError(f"the model's coarse_keyword {keyword!r} is not a keyword name")
        return keyword, 0
    if eff.out_channels is None:
        raise InputError(
            "coarse='channel' needs the model's class count before it runs",
            hint="declare out_channels on the model or pass out_channels= (its input takes as many extra channels)",
        )
    return None, int(eff.out_channels)


def probe_task(
    spec: ModelSpec, payload, source_channels: int, output: str = "array", coarse: str | None = None
) -> ProbeResult:
    """Task: build (or receive) the model, read its declarations, run it once on a small grey input.

    ``output``: what the model returns (:attr:`~tilegraph.outputs.abc.OutputKind.model_output`); a
    model returning boxes is taken at scale 1 with no output channels. ``coarse``: coarse-to-fine
    mode (``"channel"``: the model's declared ``in_channels`` include its class count of prior
    channels, which the probe input gets at ``1 / classes``).
    """
    runner = get_runner(spec, payload)
    declared = declarations(runner.model, skip=spec.overrides)
    eff = spec.with_declarations(declared)
    keyword, extra = _coarse_inputs(runner, eff, coarse)
    declared_in = None if eff.in_channels is None else eff.in_channels - extra
    channels, passthrough = model_channels(source_channels, declared_in)
    den = coerce_scale(eff.scale).denominator if eff.scale else 8
    a = lcm(int(eff.stride or 1), den)
    size = a * math.ceil(64 / a)
    x = np.full((1, channels + extra, size, size), 0.5, dtype=np.float32)
    if extra:
        x[:, channels:] = 1.0 / extra
    try:
        y = runner.forward_nchw(x, output=output)
    except ModelError:
        raise
    except Exception as exc:
        from tilegraph.infer.formats import constraints

        note = constraints(runner.model)["note"]  # e.g. an ONNX graph that takes one fixed size only
        raise ModelOutputError(f"model raised {exc!r} on a {size}x{size} probe input", hint=note) from exc
    common = dict(
        declared=declared,
        model_channels=channels,
        passthrough=passthrough,
        in_size=size,
        device=runner.device,
        coarse=coarse,
        coarse_keyword=keyword,
        coarse_channels=extra,
    )
    if output == "boxes":
        if not isinstance(y, list | tuple) or len(y) != 1:
            raise ModelOutputError(
                f"detections model returned {type(y).__name__} for a probe batch of one window",
                hint="return per batch a list with one (k, 6) array per window",
            )
        return ProbeResult(out_channels=0, out_size=(size, size), **common)  # type: ignore[arg-type]
    shape = tuple(getattr(y, "shape", ()))
    if len(shape) != 4 or shape[0] != 1:
        raise ModelOutputError(
            f"model returned shape {shape} for input (1, {channels}, {size}, {size}); expected (N, C, H, W)"
        )
    if output == "labels" and shape[1] != 1:
        raise ModelOutputError(
            f"labels model returned {shape[1]} channels", hint="return integer labels (N, 1, H, W)"
        )
    if extra and shape[1] != extra:
        raise ModelOutputError(
            f"model declares {extra} classes for its coarse input channels but returned {shape[1]} channels"
        )
    confidence = bool(eff.confidence)
    if confidence and shape[1] < 2:
        raise ModelOutputError(
            f"model declares confidence=True but returned {shape[1]} channel(s): the confidence channel comes "
            "last, after at least one output channel"
        )
    return ProbeResult(
        out_channels=int(shape[1]) - int(confidence),
        out_size=(int(shape[2]), int(shape[3])),
        confidence=confidence,
        **common,  # type: ignore[arg-type]
    )


def probe(
    executor: Executor,
    spec: ModelSpec,
    payload,
    source: Source,
    token: str,
    *,
    output: str = "array",
    coarse: str | None = None,
) -> ProbeResult:
    """Run :func:`probe_task` as exclusive model work; errors name the source (no window exists yet).

    A probe that succeeded is remembered for the executor's client (:func:`_probed`): a later run
    on that client with the same model (same content token and options), channels and output
    takes its result without running the model again, as a batch of files with one model does.
    """
    try:
        return remembered(
            executor,
            ("probe", spec.token, repr(spec), int(source.channels), output, coarse),
            lambda: executor.submit(
                probe_task,
                spec,
                payload,
                source.channels,
                output,
                coarse,
                key=f"tg-probe-{token}",
                resources=executor.model_resources,
            ),
        )
    except ModelError as exc:
        if exc.path is not None or exc.window is not None:
            raise
        # the model is at fault, not the image: name the model (its file, if it has one), never the source
        raise type(exc)(
            f"model {spec.name}: {exc.message} (probe before tiling)",
            path=spec.target if spec.kind == "file" else None,
            hint=exc.hint or "run the model by hand on a small batch (N, C, H, W) and check its output",
        ) from exc


_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remembered(executor: Executor, key: tuple, submit: Callable[[], Any]) -> Any:
    """The result of the task ``submit()`` submits, remembered for the executor's Dask client under ``key``.

    A later call with the same key on that client (the same model, by content token and options, and
    the same question) returns it without running the task again; in-process, the task always runs.
    At most 32 results are kept per client.
    """
    known = _probed(executor)
    if known is not None and key in known:
        return known[key]
    found = executor.wait([submit()])[0]
    if known is not None:
        if len(known) >= 32:
            known.pop(next(iter(known)))
        known[key] = found
    return found


def _probed(executor: Executor) -> dict | None:
    """Probe results remembered for the executor's Dask client (gone with the client); ``None`` in-process."""
    client = getattr(executor, "client", None)
    if client is None:
        return None
    try:
        return _PROBED.setdefault(client, {})
    except TypeError:  # not weakly referenceable
        return None


def checked_scale(spec: ModelSpec, result: ProbeResult, *, path: str | None) -> Fraction:
    """The model's scale as measured by the probe, checked against what it declares."""
    size = result.in_size
    oh, ow = result.out_size
    if oh != ow:
        raise ModelOutputError(
            f"model {spec.name} returned a non-square {oh}x{ow} output for a {size}x{size} input", path=path
        )
    measured = Fraction(oh, size)
    if spec.scale is not None:
        declared = coerce_scale(spec.scale)
        if declared != measured:
            raise ModelOutputError(
                f"model {spec.name} declares scale {declared} but maps {size} px to {oh} px ({measured})",
                path=path,
                hint="fix the model's scale attribute or the scale= argument",
            )
    return coerce_scale(measured)


def _autotile_task(spec: ModelSpec, payload, options: dict):
    """Task: :func:`tilegraph.infer.autotile.probe_tile` with its options in one dict."""
    from tilegraph.infer.autotile import probe_tile

    return probe_tile(spec, payload, **options)


def autotile(
    executor: Executor,
    spec: ModelSpec,
    payload,
    source: Source,
    *,
    channels: int,
    scale: Fraction,
    overlap,
    token: str,
):
    """``tile="auto"``: probe the real model on a worker's device for the largest window and batch.

    Runs as exclusive model work before any other; its choice and measured peak go into the metadata.
    """
    align = lcm(int(spec.stride or 1), scale.denominator)
    if not isinstance(overlap, int | float):
        raise InputError(
            "tile='auto' takes a single overlap value", hint="pass overlap as an int or a fraction"
        )
    options = dict(
        channels=channels,
        dtype=str(source.dtype),
        align=align,
        max_tile=max(source.shape),
        min_tile=(int(overlap) if isinstance(overlap, int) else 0) + align,
        max_batch=16,
    )
    h = executor.submit(
        _autotile_task, spec, payload, options, key=f"tg-autotile-{token}", resources=executor.model_resources
    )
    return executor.wait([h])[0]
