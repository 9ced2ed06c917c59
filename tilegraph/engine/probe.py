"""Before tiling: probe the model on a worker (what it declares, its channels and scale) and size windows.

The probe runs as a model task (same resources and process as the model tasks), so a model given by
import path is built, and declares, exactly where it will run.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from tilegraph.engine.context import ProbeResult
from tilegraph.engine.executor import Executor
from tilegraph.errors import InputError, ModelError, ModelOutputError
from tilegraph.infer.declare import declarations
from tilegraph.infer.runner import get_runner
from tilegraph.infer.spec import ModelSpec
from tilegraph.plan.normalize import coerce_scale, lcm
from tilegraph.source.abc import Source

__all__ = ["model_channels", "probe", "probe_task", "checked_scale", "autotile"]

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


def probe_task(spec: ModelSpec, payload, source_channels: int) -> ProbeResult:
    """Task: build (or receive) the model, read its declarations, run it once on a small grey input."""
    runner = get_runner(spec, payload)
    declared = declarations(runner.model, skip=spec.overrides)
    eff = spec.with_declarations(declared)
    channels, passthrough = model_channels(source_channels, eff.in_channels)
    den = coerce_scale(eff.scale).denominator if eff.scale else 8
    a = lcm(int(eff.stride or 1), den)
    size = a * math.ceil(64 / a)
    x = np.full((1, channels, size, size), 0.5, dtype=np.float32)
    try:
        y = runner.forward_nchw(x)
    except ModelError:
        raise
    except Exception as exc:
        from tilegraph.infer.formats import constraints

        note = constraints(runner.model)["note"]  # e.g. an ONNX graph that takes one fixed size only
        raise ModelOutputError(f"model raised {exc!r} on a {size}x{size} probe input", hint=note) from exc
    shape = tuple(getattr(y, "shape", ()))
    if len(shape) != 4 or shape[0] != 1:
        raise ModelOutputError(
            f"model returned shape {shape} for input (1, {channels}, {size}, {size}); expected (N, C, H, W)"
        )
    return ProbeResult(
        declared=declared,
        model_channels=channels,
        passthrough=passthrough,
        out_channels=int(shape[1]),
        in_size=size,
        out_size=(int(shape[2]), int(shape[3])),
        device=runner.device,
    )


def probe(executor: Executor, spec: ModelSpec, payload, source: Source, token: str) -> ProbeResult:
    """Run :func:`probe_task` as exclusive model work; errors name the source (no window exists yet)."""
    try:
        h = executor.submit(
            probe_task,
            spec,
            payload,
            source.channels,
            key=f"tg-probe-{token}",
            resources=executor.model_resources,
        )
        return executor.wait([h])[0]
    except ModelError as exc:
        if exc.path is not None or exc.window is not None:
            raise
        # the model is at fault, not the image: name the model (its file, if it has one), never the source
        raise type(exc)(
            f"model {spec.name}: {exc.message} (probe before tiling)",
            path=spec.target if spec.kind == "file" else None,
            hint=exc.hint or "run the model by hand on a small batch (N, C, H, W) and check its output",
        ) from exc


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
