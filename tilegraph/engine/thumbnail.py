"""The run's one thumbnail inference: the model run once on a thumbnail of the whole image, cached.

Every feature that needs the whole picture (the thumbnail reference of reconciliation, passes that
take low frequencies or statistics from it) asks :class:`Thumbnails` and the model runs once per run,
at the size given by the ``thumbnail`` option (longest side; default the window, at least 256).
"""

from __future__ import annotations

import threading

import numpy as np

from tilegraph.engine.executor import Executor
from tilegraph.infer.runner import get_runner
from tilegraph.infer.spec import ModelSpec
from tilegraph.plan.plan import Plan
from tilegraph.source.abc import Source

__all__ = ["Thumbnails", "thumbnail_inference"]


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

    Read band by band, so memory stays at one band plus the thumbnail. Returns ``(h, w, C')`` float32
    in the model's output units, where one pixel spans ``factor`` source pixels (times the scale).
    ``output="boxes"`` (a detections model): its ``(k, 6)`` boxes in thumbnail pixels instead, clipped
    to the thumbnail. ``extra_channels``: coarse-to-fine input channels the model takes, given a flat
    prior ``1 / extra_channels`` here (the thumbnail is the coarse pass).
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
    if output == "boxes":
        boxes = np.array(get_runner(spec, payload)(np.ascontiguousarray(x), output="boxes")[0], np.float64)
        boxes = boxes.reshape(-1, 6).copy()
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, tw)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, th)
        return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    y = get_runner(spec, payload)(np.ascontiguousarray(x))[0]
    s = y.shape[1] / ah
    return np.ascontiguousarray(np.moveaxis(y, 0, -1)[: int(round(th * s)), : int(round(tw * s))])


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
    ) -> None:
        self._args = (executor, source, spec, payload)
        self.plan = plan
        self.channels = channels
        self.output = output  # what the model returns ("boxes": a detections model)
        self.extra_channels = extra_channels  # coarse-to-fine input channels (a flat prior here)
        self.size = int(size or max(256, *plan.window_shape))
        self.factor = max(1, -(-max(source.shape) // self.size))
        self.token = token
        self._value: np.ndarray | None = None
        self._lock = threading.Lock()
        self.calls = 0

    def get(self) -> tuple[np.ndarray, float]:
        """``(thumbnail output (h, w, C'), output pixels per thumbnail pixel)``; runs the model once."""
        with self._lock:
            if self._value is None:
                executor, source, spec, payload = self._args
                h = executor.submit(
                    _call_thumbnail,
                    source,
                    spec,
                    payload,
                    (self.factor, self.plan.align, self.channels, self.output, self.extra_channels),
                    key=f"tg-thumbnail-{self.token}",
                    resources=executor.model_resources,
                )
                self._value = executor.wait([h])[0]
                self.calls += 1
        assert self._value is not None
        # the output is (h / factor) * s pixels for an image of h * s output pixels: each of its pixels
        # spans `factor` output pixels, whatever the scale
        return self._value, float(self.factor)


def _call_thumbnail(source: Source, spec: ModelSpec, payload, geometry: tuple) -> np.ndarray:
    factor, align, channels, output, extra = geometry
    return thumbnail_inference(
        source,
        spec,
        payload,
        factor=factor,
        align=align,
        channels=channels,
        output=output,
        extra_channels=extra,
    )
