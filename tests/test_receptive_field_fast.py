"""The budgeted receptive-field proposal behind ``tilegraph plan --model``.

Exact answers are checked against independent analysis (the same anchors as test_receptive_field.py);
the time budget is checked with a simulated clock that a slow model advances, so the tests are fast
and deterministic whatever the machine does.
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from tilegraph.errors import ModelOutputError
from tilegraph.infer.receptive_field import (
    HaloProposal,
    global_context_ops,
    measure_receptive_field,
    propose_halo,
)
from tilegraph.testing.models import Downscaler, LocalConv, ReferenceUNet, Upscaler


class _SqueezeExcite(nn.Module):
    """Conv, a squeeze-and-excitation gate (global average pool), conv: every output sees the window."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h * torch.sigmoid(self.gate(self.pool(h))))


class _Needs8(nn.Module):
    """A stride-8 encoder-decoder that declares nothing and fails on sizes not multiple of 8."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.down = nn.Conv2d(3, 8, 8, stride=8)
        self.up = nn.ConvTranspose2d(8, 3, 8, stride=8)
        self.skip = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.up(torch.relu(self.down(x))) + self.skip(x)  # shapes differ unless H, W % 8 == 0


class _SimClock:
    """A clock that only the (simulated) model advances: ``rate`` seconds per pixel plus ``fixed`` per call."""

    def __init__(self, rate: float, fixed: float = 0.0) -> None:
        self.now = 0.0
        self.rate, self.fixed = rate, fixed

    def __call__(self) -> float:
        return self.now

    def slow(self, module: nn.Module):
        """``module`` as a numpy callable that costs simulated time (declarations copied)."""
        m = module.double().eval()

        def run(batch):
            self.now += self.fixed + self.rate * batch.shape[0] * batch.shape[2] * batch.shape[3]
            with torch.no_grad():
                return m(torch.from_numpy(np.asarray(batch, dtype=np.float64))).numpy()

        for key in ("scale", "stride", "halo", "in_channels"):
            if getattr(module, key, None) is not None:
                setattr(run, key, getattr(module, key))
        return run


# ----------------------------------------------------------------------------- exact answers


@pytest.mark.parametrize("layers", [1, 4])
def test_local_convolutions_exact(layers):
    p = propose_halo(LocalConv(layers=layers, seed=layers))
    assert isinstance(p, HaloProposal)
    assert (p.radius, p.halo, p.overlap, p.exact, p.exceeds) == (layers, layers, 2 * layers, True, False)
    assert p.precision == "float64"
    assert f"Proposed halo {layers} px" in str(p)


def test_unet_every_phase_matches_structural_analysis():
    model = ReferenceUNet(base=4, depth=2)
    p = propose_halo(model)
    assert p.exact and p.stride == 4 and p.phases == (4, 4)
    # the structural analysis in test_receptive_field.py: radius per phase {0: 22, 1: 23, 2: 23, 3: 22}
    assert p.field is not None
    assert {dy: r for (dy, dx), r in p.field.per_position.items()} == {0: 22, 1: 23, 2: 23, 3: 22}
    assert p.radius == 23 == model.halo and p.halo == 24
    assert "rounded up to the stride 4" in p.explanation


def test_same_answer_as_the_exhaustive_probe():
    for model in (Downscaler(factor=8), Upscaler(scale=2), LocalConv(layers=2, dilation=3)):
        slow = measure_receptive_field(model)
        fast = propose_halo(model)
        assert (fast.radius, fast.halo, fast.scale, fast.stride) == (
            slow.radius,
            slow.halo,
            slow.scale,
            slow.stride,
        )


def test_zero_radius_says_no_overlap_is_needed():
    def pointwise(batch):
        return batch * 2.0 + 1.0

    p = propose_halo(pointwise)
    assert p.radius == 0 and p.halo == 0
    assert "no overlap" in p.explanation


def test_scale_read_from_the_output_when_undeclared():
    class Up(nn.Module):
        def forward(self, x):
            return nn.functional.interpolate(x, scale_factor=4, mode="nearest")

    p = propose_halo(Up())
    assert p.scale == "4" and p.radius == 0


def test_undeclared_stride_is_inferred_from_accepted_sizes():
    p = propose_halo(_Needs8())
    assert p.stride == 8 and p.stride_inferred
    assert "multiples of 8 px" in p.explanation
    exact = measure_receptive_field(_Needs8(), stride=8)
    assert p.radius == exact.radius and p.halo == exact.halo


# ----------------------------------------------------------------------------- global context


def test_global_pooling_is_explained_not_measured_forever():
    t0 = time.perf_counter()
    p = propose_halo(_SqueezeExcite(), max_radius=96)
    assert time.perf_counter() - t0 < 10
    assert p.exceeds and p.global_context and p.halo is None and p.overlap is None
    assert p.radius > 96
    assert any("AdaptiveAvgPool2d" in op for op in p.global_ops)
    text = p.explanation
    assert "whole window" in text and "crop with a large overlap is impossible" in text
    assert "thumbnail" in text and "tile='auto'" in text  # what to do instead
    assert "AdaptiveAvgPool2d" in text


def test_structural_scan_finds_window_statistics():
    ops = global_context_ops(nn.Sequential(nn.Conv2d(3, 3, 3), nn.InstanceNorm2d(3), nn.GroupNorm(1, 3)))
    assert any(o.startswith("InstanceNorm2d ×1") for o in ops) and any(
        o.startswith("GroupNorm ×1") for o in ops
    )
    assert global_context_ops(LocalConv(layers=2)) == ()


# ----------------------------------------------------------------------------- the time budget


def _box(radius: int, stride: int):
    """A (2r+1)^2 box mean in numpy, declaring ``stride``: exact radius ``r`` at every phase, cheap to run."""

    def box(batch):  # separable sliding sums: each output adds only its own window (no cumsum drift)
        x = np.pad(np.asarray(batch, dtype=np.float64), ((0, 0), (0, 0), (radius, radius), (radius, radius)))
        k = 2 * radius + 1
        x = np.lib.stride_tricks.sliding_window_view(x, k, axis=2).sum(axis=-1)
        return np.lib.stride_tricks.sliding_window_view(x, k, axis=3).sum(axis=-1) / k**2

    box.stride = stride  # type: ignore[attr-defined]
    return box


@pytest.mark.parametrize("budget", [1.5, 3.0, 30.0])
def test_budget_is_kept_with_a_slow_model(budget):
    # ~1 s per 640 x 640 image (a DBNet-size network on 2 cores), 10 ms per call
    clock = _SimClock(rate=1.0 / 640**2, fixed=0.01)
    box = _box(37, 8)

    def slow(batch):
        clock.now += clock.fixed + clock.rate * batch.shape[0] * batch.shape[2] * batch.shape[3]
        return box(batch)

    slow.stride = 8  # type: ignore[attr-defined]
    p = propose_halo(slow, time_budget=budget, max_radius=128, clock=clock)
    assert clock.now <= budget + 1e-9  # never started a step that would overrun
    assert p.seconds <= budget and p.stride == 8
    # whatever fitted, the proposal is safe: at least the true radius, rounded up to the stride
    assert p.halo is not None and p.halo >= 37 and p.halo % 8 == 0
    if p.phases[0] < p.phases[1]:
        assert p.stopped == "budget" and p.halo == 48 and "plus one stride step" in p.explanation
    else:
        assert p.exact and p.halo == 40 and p.precision == "float64"
    if budget == 1.5:
        assert p.phases[0] < p.phases[1]  # the budget really bit


def test_tiny_budget_gives_a_lower_bound_and_says_so():
    clock = _SimClock(rate=40.0 / 640**2)  # 40 s per 640 x 640 image: only the calibration fits
    p = propose_halo(clock.slow(ReferenceUNet(base=4, depth=2)), time_budget=5.0, clock=clock)
    assert p.halo is None and not p.exact
    assert p.stopped == "budget"
    assert "budget" in p.explanation and "lower bound" in p.explanation


def test_fixed_cost_per_call_does_not_forbid_large_probes():
    # 0.3 s per call whatever the size (a converted graph's Python overhead) and little per pixel
    clock = _SimClock(rate=0.2 / 640**2, fixed=0.3)
    p = propose_halo(clock.slow(_SqueezeExcite()), time_budget=10.0, max_radius=200, clock=clock)
    assert p.exceeds and p.global_context  # the reach test ran at 200+ px despite the fixed cost


# ----------------------------------------------------------------------------- errors


def test_model_failing_at_every_size_is_reported():
    def broken(batch):
        raise RuntimeError("boom")

    with pytest.raises(ModelOutputError, match="boom"):
        propose_halo(broken)


def test_non_finite_output_is_reported():
    with pytest.raises(ModelOutputError, match="NaN"):
        propose_halo(lambda b: np.full_like(b, np.nan))


def test_declared_scale_is_checked():
    with pytest.raises(ModelOutputError, match="declared scale 2"):
        propose_halo(LocalConv(layers=1), scale=2)


# ----------------------------------------------------------------------------- a real DBNet (optional)


@pytest.mark.skipif(
    importlib.util.find_spec("rapidocr_onnxruntime") is None
    or importlib.util.find_spec("onnxruntime") is None,
    reason="rapidocr-onnxruntime (ships PP-OCRv4's DBNet as ONNX) not installed",
)
def test_dbnet_answers_within_a_minute():
    import os

    from tilegraph.infer.formats import load_model_file

    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # not imported: it needs cv2
    assert spec is not None and spec.origin is not None
    package = os.path.dirname(spec.origin)
    path = os.path.join(package, "models", "ch_PP-OCRv4_det_infer.onnx")
    t0 = time.perf_counter()
    model = load_model_file(path)
    p = propose_halo(model, channels=3)
    elapsed = time.perf_counter() - t0
    assert elapsed < 60
    assert p.stride == 32 and p.stride_inferred
    assert p.exceeds and p.halo is None and not math.isnan(p.seconds)
    assert any("GlobalAveragePool" in op for op in p.global_ops)
    assert "crop with a large overlap is impossible" in p.explanation
