"""The impulse probe measures exact receptive-field radii (checked against independent analysis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tilegraph.errors import ModelOutputError
from tilegraph.infer.receptive_field import ReceptiveField, measure_receptive_field
from tilegraph.testing.models import (
    Downscaler,
    InstanceNormModel,
    LocalConv,
    ReferenceUNet,
    Upscaler,
    WrongShapeModel,
    numpy_box3,
    unet_radius,
)

# ----------------------------------------------------------------------------- independent analysis


def _unet_dependencies(depth: int, length: int) -> list[tuple[int, int]]:
    """Input interval each output index of the anchor U-Net depends on, along one axis (structurally).

    Propagates index intervals through the architecture: 3x3 conv (padding 1), 2x2 max-pool,
    2x2 stride-2 transposed conv, concatenation and 1x1 conv; independent of weights and of the probe.
    """

    def conv3(a):
        n = len(a)
        return [(a[max(i - 1, 0)][0], a[min(i + 1, n - 1)][1]) for i in range(n)]

    def pool(a):
        return [
            (min(a[2 * i][0], a[2 * i + 1][0]), max(a[2 * i][1], a[2 * i + 1][1])) for i in range(len(a) // 2)
        ]

    def up(a):
        return [a[i // 2] for i in range(2 * len(a))]

    def cat(a, b):
        return [(min(p[0], q[0]), max(p[1], q[1])) for p, q in zip(a, b, strict=True)]

    x = [(i, i) for i in range(length)]
    skips = []
    for level in range(depth + 1):
        x = conv3(conv3(pool(x) if level else x))
        skips.append(x)
    skips.pop()
    for _ in range(depth):
        x = conv3(conv3(cat(up(x), skips.pop())))
    return x


def _unet_radius_by_phase(depth: int) -> dict[int, int]:
    """Exact radius per impulse phase (position modulo the stride), far from the borders."""
    stride = 2**depth
    length = 32 * stride
    deps = _unet_dependencies(depth, length)
    out = {}
    for p in range(length // 2, length // 2 + stride):
        out[p % stride] = max(abs(q - p) for q, (lo, hi) in enumerate(deps) if lo <= p <= hi)
    return out


class _Anisotropic(nn.Module):
    """A 1 x 5 horizontal convolution: radius 0 along rows, 2 along columns."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, (1, 5), padding=(0, 2))

    def forward(self, x):
        return self.conv(x)


class _Resample(nn.Module):
    """Pure nearest up-sampling or average-pooling: no context beyond the output pixel's footprint."""

    def __init__(self, scale) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        if self.scale == "1/4":
            return F.avg_pool2d(x, 4)
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class _DeadZone(nn.Module):
    """``x + conv5x5(relu(-x - 5))``: the 5x5 branch only wakes up for a large negative input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 5, padding=2)

    def forward(self, x):
        return x + self.conv(F.relu(-x - 5.0))


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_stacked_3x3_convolutions(layers):
    rf = measure_receptive_field(LocalConv(layers=layers, seed=layers))
    assert isinstance(rf, ReceptiveField)
    assert rf.bounded
    assert (rf.radius, rf.radius_yx, rf.halo, rf.overlap, rf.stride) == (
        layers,
        (layers, layers),
        layers,
        2 * layers,
        1,
    )


def test_dilated_convolutions():
    rf = measure_receptive_field(LocalConv(layers=2, dilation=3))
    assert rf.bounded
    assert rf.radius == 6 == LocalConv(layers=2, dilation=3).halo


def test_radius_is_per_axis():
    rf = measure_receptive_field(_Anisotropic())
    assert rf.radius_yx == (0, 2)
    assert rf.radius == 2


def test_unet_matches_structural_analysis_at_every_phase():
    expected = _unet_radius_by_phase(2)
    assert expected == {0: 22, 1: 23, 2: 23, 3: 22}  # the analysis itself, written out
    rf = measure_receptive_field(ReferenceUNet(base=4, depth=2), size=96)
    assert rf.bounded and rf.stride == 4
    assert {dy: r for (dy, dx), r in rf.per_position.items()} == expected
    assert rf.radius == max(expected.values()) == ReferenceUNet(base=4, depth=2).halo
    assert rf.halo == 24 and rf.overlap == 48  # rounded up to the stride


def test_single_phase_underestimates_a_strided_model():
    rf = measure_receptive_field(ReferenceUNet(base=4, depth=2), size=96, positions=[(0, 0)])
    assert rf.radius == 22  # one phase misses the worst case (23): why the default probes every phase


def test_unet_radius_formula_against_analysis():
    for depth in (1, 2, 3, 4):
        assert max(_unet_radius_by_phase(depth).values()) == unet_radius(depth) == 7 * 2**depth - 5


@pytest.mark.parametrize("scale", [2, 4])
def test_upscaler_radius_in_source_pixels(scale):
    rf = measure_receptive_field(Upscaler(scale=scale))
    assert rf.scale == str(scale)
    assert rf.radius == 2 == Upscaler(scale=scale).halo


def test_downscaler_radius_and_aligned_halo():
    model = Downscaler(factor=8)
    rf = measure_receptive_field(model)
    assert (rf.scale, rf.stride) == ("1/8", 8)
    assert rf.radius == model.halo == 9
    assert rf.halo == 16 and rf.overlap == 32
    assert rf.per_position[(0, 0)] == 9 and rf.per_position[(3, 3)] == 5  # the footprint depends on phase


@pytest.mark.parametrize("scale", [2, "1/4"])
def test_pure_resampling_has_zero_radius(scale):
    # a naive output-offset / scale conversion would report 1 here
    rf = measure_receptive_field(_Resample(scale), scale=scale)
    assert rf.bounded and rf.radius == 0


def test_relu_dead_zone_needs_large_impulses_of_both_signs():
    assert measure_receptive_field(_DeadZone()).radius == 2
    assert measure_receptive_field(_DeadZone(), magnitudes=(1.0, -1.0, 1000.0)).radius == 0


def test_numpy_callable():
    rf = measure_receptive_field(numpy_box3)
    assert rf.radius == 1 == numpy_box3.halo


def test_window_statistics_are_not_bounded():
    rf = measure_receptive_field(InstanceNormModel(), max_radius=24)
    assert not rf.bounded
    assert rf.halo is None and rf.overlap is None
    assert rf.radius > 24


def test_fixed_size_too_small_is_not_bounded():
    rf = measure_receptive_field(LocalConv(layers=5), size=8)
    assert not rf.bounded and rf.halo is None


def test_user_model_is_not_modified():
    model = LocalConv(layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_receptive_field(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_wrong_output_shape_is_reported():
    with pytest.raises(ModelOutputError, match="shape"):
        measure_receptive_field(WrongShapeModel())


def test_non_finite_output_is_reported():
    def bad(batch):
        return np.full_like(batch, np.nan)

    with pytest.raises(ModelOutputError, match="NaN"):
        measure_receptive_field(bad)
