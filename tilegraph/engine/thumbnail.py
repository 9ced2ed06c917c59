"""The run's one thumbnail inference: the model run once on a thumbnail of the whole image, cached.

Every feature that needs the whole picture (the thumbnail reference of reconciliation and its
``"auto"`` choice, ``norm_sync="thumbnail"``, passes that take low frequencies or statistics from it)
asks :class:`Thumbnails` and the model runs once per run, at the size given by the ``thumbnail``
option (longest side; default the window, at least 256, or at least 1024 with
``norm_sync="thumbnail"``).

With ``norm_sync="thumbnail"`` the same forward records every GroupNorm/InstanceNorm layer's
statistics; a thumbnail larger than the window is run in windows with the exact algorithm instead
(statistics over the whole thumbnail, never a forward larger than a window), and the statistics of a
thumbnail half as large are compared with them, to say when they vary strongly with scale.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from tilegraph.engine.executor import Executor
from tilegraph.errors import PlanError
from tilegraph.infer.runner import get_runner
from tilegraph.infer.spec import ModelSpec
from tilegraph.plan.plan import Plan
from tilegraph.source.abc import Source

__all__ = ["Thumbnails", "ThumbnailResult", "thumbnail_inference", "thumbnail_task", "thumbnail_input"]


@dataclass(frozen=True)
class ThumbnailResult:
    """The run's thumbnail inference.

    Attributes
    ----------
    output : numpy.ndarray
        ``(h', w', C')`` float32 model output, one pixel spanning ``factor`` output pixels whatever the
        scale; for a detections model (``output="boxes"``) its ``(k, 6)`` boxes in thumbnail pixels.
    input : numpy.ndarray
        ``(h, w, C)`` float32 thumbnail the model saw (integers scaled to [0, 1]), before alignment padding.
    norm_stats : dict or None
        Global statistics per normalisation layer (``norm_sync="thumbnail"``).
    info : dict
        How the statistics were obtained (one forward or in windows) and how much they vary with scale.
    """

    output: np.ndarray
    input: np.ndarray
    norm_stats: dict | None = None
    info: dict = field(default_factory=dict)


def thumbnail_input(
    source: Source, *, factor: int, align: int, channels: int, extra_channels: int = 0
) -> tuple[np.ndarray, int, int]:
    """The thumbnail batch ``(1, C, ah, aw)`` float32 (area-averaged by ``factor``, padded to ``align``).

    Read band by band, so memory stays at one band plus the thumbnail. ``extra_channels``: coarse-to-fine
    input channels the model takes, given a flat prior ``1 / extra_channels``. Also returns the
    thumbnail's own extent ``(h, w)`` before padding.
    """
    h, w = source.shape
    th, tw = -(-h // factor), -(-w // factor)
    acc = np.zeros((th, tw, source.channels), np.float64)
    band = factor * max(1, 512 // factor)
    for y0 in range(0, h, band):
        block = source.read(y0, min(h, y0 + band), 0, w).astype(np.float64)
        if np.dtype(source.dtype).kind == "u":
            block /= float(np.iinfo(source.dtype).max)
        ph, pw = -(-block.shape[0] // factor) * factor - block.shape[0], tw * factor - w
        block = np.pad(block, ((0, ph), (0, pw), (0, 0)), mode="edge")
        r = block.reshape(block.shape[0] // factor, factor, tw, factor, -1).mean(axis=(1, 3))
        acc[y0 // factor : y0 // factor + r.shape[0]] = r
    ah, aw = -(-th // align) * align, -(-tw // align) * align
    small = np.pad(acc, ((0, ah - th), (0, aw - tw), (0, 0)), mode="reflect" if min(th, tw) > 1 else "edge")
    x = np.moveaxis(small[..., :channels], -1, 0)[None].astype(np.float32)
    if extra_channels:
        flat = np.full((1, extra_channels) + x.shape[2:], 1.0 / extra_channels, np.float32)
        x = np.concatenate([x, flat], axis=1)
    return np.ascontiguousarray(x), th, tw


def thumbnail_inference(
    source: Source,
    spec: ModelSpec,
    payload,
    *,
    factor: int,
    align: int,
    channels: int,
    output: str = "array",
    extra_channels: int = 0,
) -> np.ndarray:
    """Task: the model run once on a thumbnail of the whole image (area-averaged by ``factor``).

    Returns ``(h, w, C')`` float32 in the model's output units, where one pixel spans ``factor``
    source pixels (times the scale). ``output="boxes"`` (a detections model): its ``(k, 6)`` boxes in
    thumbnail pixels instead, clipped to the thumbnail. ``extra_channels``: coarse-to-fine input
    channels the model takes, given a flat prior ``1 / extra_channels`` here (the thumbnail is the
    coarse pass).
    """
    return thumbnail_task(source, spec, payload, (factor, align, channels, output, extra_channels)).output


def thumbnail_task(
    source: Source, spec: ModelSpec, payload, geometry: tuple, norm: dict | None = None
) -> ThumbnailResult:
    """Task: the thumbnail inference, recording normalisation statistics when ``norm`` is given.

    ``geometry`` is ``(factor, align, channels[, output, extra_channels])``. ``norm`` holds the run's
    ``window`` and ``overlap`` (pairs) and ``scale``: a thumbnail larger than the window is run in
    windows with the exact algorithm.
    """
    factor, align, channels, output, extra = (*geometry, "array", 0)[:5]
    x, th, tw = thumbnail_input(source, factor=factor, align=align, channels=channels, extra_channels=extra)
    runner = get_runner(spec, payload)
    small = np.ascontiguousarray(np.moveaxis(x[0, :channels], 0, -1)[:th, :tw])
    if output == "boxes":
        boxes = np.array(runner(x, output="boxes")[0], np.float64).reshape(-1, 6).copy()
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, tw)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, th)
        return ThumbnailResult(boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])], small)
    if norm is None or not runner.is_torch:
        xm, m = _with_margin(x, th, tw, align, margin=max(8, int(spec.halo or 0) // factor))
        y = runner(xm)[0]
        if spec.confidence:  # a confidence channel is not an output
            y = y[:-1]
        s = y.shape[1] / xm.shape[2]
        o = int(round(m * s))
        out = np.moveaxis(y, 0, -1)[o : o + int(round(th * s)), o : o + int(round(tw * s))]
        return ThumbnailResult(np.ascontiguousarray(out), small)
    seen = np.ascontiguousarray(np.moveaxis(x[0], 0, -1)[:th, :tw])  # what the model sees (coarse prior too)
    out, stats, info = _norm_thumbnail(runner.module, x, seen, align=align, **norm)
    info = dict(info, factor=factor)
    half = _half(seen)
    if factor == 1:  # the thumbnail is the image: its statistics are the whole image's
        info["variation"] = {
            "worst": 0.0,
            "recommend_exact": False,
            "note": "the thumbnail is the full image",
        }
    elif half is not None and stats:
        from tilegraph.infer.normsync import stats_variation

        hx = np.ascontiguousarray(_aligned(half, align))
        _, half_stats, _ = _norm_thumbnail(runner.module, hx, half, align=align, **norm)
        variation = stats_variation(half_stats, stats)
        info["variation"] = {
            "worst": variation["worst"],
            "recommend_exact": variation["recommend_exact"],
            "compared": [list(half.shape[:2]), [th, tw]],
        }
    return ThumbnailResult(out, small, stats, info)


def _with_margin(x: np.ndarray, th: int, tw: int, align: int, *, margin: int) -> tuple[np.ndarray, int]:
    """The thumbnail batch with ``margin`` (rounded up to ``align``, at most the thumbnail's extent) mirrored
    pixels of context on every side, so the model's own border handling (zero padding) falls outside the
    thumbnail as it falls outside the whole image; returns the batch and the margin used."""
    m = min(-(-margin // align) * align, max(0, min(th, tw) - 1) // align * align)
    if m == 0:
        return x, 0
    ah, aw = -(-(th + 2 * m) // align) * align, -(-(tw + 2 * m) // align) * align
    widths = ((0, 0), (0, 0), (m, ah - th - m), (m, aw - tw - m))
    return np.ascontiguousarray(np.pad(x[:, :, :th, :tw], widths, mode="reflect")), m


def _aligned(small: np.ndarray, align: int) -> np.ndarray:
    """``(h, w, C)`` padded by reflection to a multiple of ``align``, as ``(1, C, ah, aw)``."""
    th, tw = small.shape[:2]
    ah, aw = -(-th // align) * align, -(-tw // align) * align
    pad = np.pad(small, ((0, ah - th), (0, aw - tw), (0, 0)), mode="reflect" if min(th, tw) > 1 else "edge")
    return np.moveaxis(pad, -1, 0)[None].astype(np.float32)


def _half(small: np.ndarray) -> np.ndarray | None:
    """The thumbnail at half its size (2 x 2 means), or ``None`` when too small to compare."""
    h, w = (small.shape[0] // 2) * 2, (small.shape[1] // 2) * 2
    if min(h, w) < 32:
        return None
    return small[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3)).astype(np.float32)


def _norm_thumbnail(module, x: np.ndarray, small: np.ndarray, *, align: int, window, overlap, scale):
    """Output ``(h', w', C')`` and statistics of the thumbnail: one recording forward when it fits a window,
    else the exact algorithm over windows of it (output stitched with ``crop``)."""
    import torch

    from tilegraph.infer.normsync import exact_stats, find_norm_layers, record_forward, tiled_windows

    th, tw = small.shape[:2]
    s = float(scale)
    if th > window[0] or tw > window[1]:
        example = np.zeros((1, small.shape[2], *window), np.float32) + 0.5
        report = find_norm_layers(module, example=example)
        plan = _thumbnail_plan(small, window, overlap, align, scale, report)
        if plan is not None:
            from tilegraph.blend.merge import blend_box

            stats, more = exact_stats(module, small, plan, report=report)
            outs = tiled_windows(module, small, plan, stats=stats)
            oh, ow = plan.out_shape
            out = blend_box(plan, 0, oh, 0, ow, lambda i, r, c: outs[i][:, r, c], mode="crop")
            info = {"method": "exact in windows", "shape": [th, tw], "windows": plan.n_windows, **more}
            return np.ascontiguousarray(out, dtype=np.float32), stats, info
    y, stats = record_forward(module, x)
    y = y.detach().to("cpu", torch.float32).numpy()[0]
    out = np.moveaxis(y, 0, -1)[: int(round(th * s)), : int(round(tw * s))]
    return np.ascontiguousarray(out), stats, {"method": "one forward", "shape": [th, tw]}


def _thumbnail_plan(small, window, overlap, align: int, scale, report) -> Plan | None:
    """A window grid over the thumbnail that the exact algorithm accepts, or ``None``."""
    from tilegraph.infer.normsync import check_alignment
    from tilegraph.plan import make_plan
    from tilegraph.plan.normalize import lcm

    step = lcm(2 * report.total_stride, align)
    ov = tuple(max(step, math.ceil(o / step) * step) for o in overlap)
    if any(o >= t for o, t in zip(ov, window, strict=True)):
        return None
    try:
        plan = make_plan(
            small.shape[:2],
            tile=tuple(window),
            overlap=ov,
            channels=small.shape[2],
            dtype="float32",
            scale=scale,
            model_stride=align,
            blend="crop",
            origin=0,  # windows start at the thumbnail's start, as in a norm_sync="exact" run
        )
        check_alignment(plan, report)
    except PlanError:
        return None
    return plan


class Thumbnails:
    """One cached thumbnail inference per run (client side; computed on first use, on a model worker).

    Parameters
    ----------
    executor, source, spec, payload
        Where and what to run.
    plan
        Gives the default size (the window, at least 256 px) and the alignment.
    channels
        Channels the model sees.
    size
        Longest side of the thumbnail in source pixels (the run's ``thumbnail`` option).
    token
        The run's id, for the task key.
    output
        What the model returns (``"boxes"``: a detections model).
    extra_channels
        Coarse-to-fine input channels the model takes (a flat prior here).
    norm_stats
        Record the normalisation layers' statistics too (``norm_sync="thumbnail"``); the default size
        is then at least 1024 px.
    """

    def __init__(
        self,
        executor: Executor,
        source: Source,
        spec: ModelSpec,
        payload,
        *,
        plan: Plan,
        channels: int,
        size: int | None,
        token: str,
        output: str = "array",
        extra_channels: int = 0,
        norm_stats: bool = False,
    ) -> None:
        self._args = (executor, source, spec, payload)
        self.plan = plan
        self.channels = channels
        self.output = output  # what the model returns ("boxes": a detections model)
        self.extra_channels = extra_channels  # coarse-to-fine input channels (a flat prior here)
        self.size = int(size or max(1024 if norm_stats else 256, *plan.window_shape))
        self.factor = max(1, -(-max(source.shape) // self.size))
        self.token = token
        self.norm_stats = norm_stats
        self._value: ThumbnailResult | None = None
        self._lock = threading.Lock()
        self.calls = 0

    def result(self) -> ThumbnailResult:
        """The thumbnail inference (output, input, statistics); runs the model once per run."""
        with self._lock:
            if self._value is None:
                executor, source, spec, payload = self._args
                norm = None
                if self.norm_stats:
                    p = self.plan
                    norm = {
                        "window": tuple(p.window_shape),
                        "overlap": tuple(p.overlap),
                        "scale": p.scale_fraction,
                    }
                h = executor.submit(
                    thumbnail_task,
                    source,
                    spec,
                    payload,
                    (self.factor, self.plan.align, self.channels, self.output, self.extra_channels),
                    norm,
                    key=f"tg-thumbnail-{self.token}",
                    resources=executor.model_resources,
                )
                self._value = executor.wait([h])[0]
                self.calls += 1
        assert self._value is not None
        return self._value

    def get(self) -> tuple[np.ndarray, float]:
        """``(thumbnail output (h, w, C'), output pixels per thumbnail pixel)``; runs the model once."""
        # the output is (h / factor) * s pixels for an image of h * s output pixels: each of its pixels
        # spans `factor` output pixels, whatever the scale
        return self.result().output, float(self.factor)
