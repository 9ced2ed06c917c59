"""Test models with per-sample normalisation layers, and the figures that judge tiling them.

Models (random weights from a fixed seed, eval mode, float32, no gradients; the global torch RNG is left
untouched):

* :class:`~tilegraph.testing.models.InstanceNormModel` (re-exported): conv, InstanceNorm, tanh, 1x1 conv;
* :class:`TwoGroupNormModel`: two GroupNorm layers in a residual stack;
* :class:`TinyVAEDecoder`: a small VAE-like decoder (GroupNorm ResNet blocks, three x2 nearest
  up-samplings, no attention), 4 latent channels to 3, ``scale = 8``;
* :class:`StridedGroupNorm`: GroupNorm at half resolution (total stride 2), for the alignment rule;
* :class:`BatchNormTraining`: a BatchNorm layer left in training mode (statistics per batch).

Figures (all in DN, 1/255 of full scale, per channel, worst channel), against a truth such as
whole-image inference:

* :func:`block_step_dn`: worst difference of the error's mean between neighbouring ``block``-px blocks
  (a seam or colour step the eye sees);
* :func:`block_error_dn`: worst absolute mean error of any ``block``-px block (colour wrong in place).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tilegraph.testing.models import InstanceNormModel, _Declared, _finish, _seeded

__all__ = [
    "InstanceNormModel",
    "TwoGroupNormModel",
    "TinyVAEDecoder",
    "StridedGroupNorm",
    "BatchNormTraining",
    "make_two_group_norm_model",
    "make_tiny_vae_decoder",
    "block_means",
    "block_step_dn",
    "block_error_dn",
]


def _randomise_affine(norm: nn.GroupNorm, gen: torch.Generator) -> None:
    weight, bias = norm.weight, norm.bias
    with torch.no_grad():
        weight.copy_(1.0 + 0.2 * torch.randn(tuple(weight.shape), generator=gen))
        bias.copy_(0.2 * torch.randn(tuple(bias.shape), generator=gen))


class TwoGroupNormModel(_Declared):
    """``x + 0.1 * conv3(silu(GN2(conv2(silu(GN1(conv1(x)))))))``: two GroupNorm layers, radius 2.

    Parameters
    ----------
    channels
        Input and output channels.
    hidden
        Channels of the normalised feature maps.
    groups
        GroupNorm groups.
    seed
        Seed of the weights.

    Attributes
    ----------
    halo : int
        2: the local part only; the normalisation statistics span the whole window.
    """

    stride = 1
    halo = 2

    def __init__(self, channels: int = 3, hidden: int = 16, groups: int = 4, seed: int = 0) -> None:
        super().__init__(channels, channels)
        gen = torch.Generator().manual_seed(int(seed) + 1)
        with _seeded(seed):
            self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
            self.norm1 = nn.GroupNorm(groups, hidden)
            self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
            self.norm2 = nn.GroupNorm(groups, hidden)
            self.conv3 = nn.Conv2d(hidden, channels, 1)
            _randomise_affine(self.norm1, gen)
            _randomise_affine(self.norm2, gen)
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual through two per-window normalisations."""
        h = F.silu(self.norm1(self.conv1(x)))
        h = F.silu(self.norm2(self.conv2(h)))
        return x + 0.1 * self.conv3(h)


class _ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, plus the input (the VAE decoder's ResNet block)."""

    def __init__(self, channels: int, groups: int, gen: torch.Generator) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        _randomise_affine(self.norm1, gen)
        _randomise_affine(self.norm2, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class _Up(nn.Module):
    """Nearest x2 up-sampling and a 3x3 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TinyVAEDecoder(_Declared):
    """A small VAE-like decoder: latent ``(N, 4, h, w)`` to image ``(N, 3, 8h, 8w)``.

    ``conv_in``, a GroupNorm ResNet block, then three times (x2 nearest up-sampling, 3x3 conv, ResNet
    block except after the last), and ``GroupNorm, SiLU, conv_out``: seven GroupNorm layers at
    resolutions x1, x1, x2, x2, x4, x4, x8, no attention. Random weights.

    Parameters
    ----------
    latent_channels, out_channels
        Channels in and out.
    widths
        Feature channels at x1, x2, x4 and x8.
    groups
        GroupNorm groups (divides every width).
    seed
        Seed of the weights.

    Attributes
    ----------
    halo : int
        Receptive radius in latent pixels, rounded up: ``1 + 2 + (1/2)(1 + 2) + (1/4)(1 + 2) + (1/8)(1 + 1)``
        = 5.5, so 6.
    """

    scale = 8
    stride = 1
    halo = 6

    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        widths: tuple[int, int, int, int] = (16, 8, 4, 4),
        groups: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_channels, out_channels)
        gen = torch.Generator().manual_seed(int(seed) + 2)
        w0, w1, w2, w3 = widths
        with _seeded(seed):
            self.conv_in = nn.Conv2d(latent_channels, w0, 3, padding=1)
            self.mid = _ResBlock(w0, groups, gen)
            self.up1 = _Up(w0, w1)
            self.block1 = _ResBlock(w1, groups, gen)
            self.up2 = _Up(w1, w2)
            self.block2 = _ResBlock(w2, groups, gen)
            self.up3 = _Up(w2, w3)
            self.norm_out = nn.GroupNorm(groups, w3, eps=1e-6)
            self.conv_out = nn.Conv2d(w3, out_channels, 3, padding=1)
            _randomise_affine(self.norm_out, gen)
            with torch.no_grad():
                self.conv_out.weight.mul_(0.5)
        _finish(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode a latent batch."""
        h = self.mid(self.conv_in(z))
        h = self.block1(self.up1(h))
        h = self.block2(self.up2(h))
        h = self.up3(h)
        return 0.5 + 0.25 * self.conv_out(F.silu(self.norm_out(h)))


class StridedGroupNorm(_Declared):
    """Stride-2 conv, GroupNorm at half resolution, x2 up-sampling: total stride 2, radius 5.

    With ``norm_sync="exact"`` half the overlap must be a multiple of 2 (the kept regions fall on whole
    pixels of the half-resolution layer).
    """

    stride = 2
    halo = 6

    def __init__(self, seed: int = 5) -> None:
        super().__init__(3, 3)
        g = torch.Generator().manual_seed(int(seed))
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(4, 8)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(tuple(p.shape), generator=g))
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual through a half-resolution GroupNorm."""
        h = self.mid(F.silu(self.norm(self.down(x))))
        return x + 0.2 * self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class BatchNormTraining(_Declared):
    """``conv, BatchNorm (training mode), conv``: statistics per batch of windows (a warning names it)."""

    halo = 2

    def __init__(self, seed: int = 0) -> None:
        super().__init__(3, 3)
        with _seeded(seed):
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        _finish(self)
        self.bn.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual through a batch normalisation."""
        return x + 0.1 * self.conv2(torch.tanh(self.bn(self.conv1(x))))


def make_two_group_norm_model(**kwargs) -> TwoGroupNormModel:
    """Factory for :class:`TwoGroupNormModel` (import-path friendly)."""
    return TwoGroupNormModel(**kwargs)


def make_tiny_vae_decoder(**kwargs) -> TinyVAEDecoder:
    """Factory for :class:`TinyVAEDecoder` (import-path friendly)."""
    return TinyVAEDecoder(**kwargs)


# --------------------------------------------------------------------------- figures
def block_means(image: np.ndarray, block: int) -> np.ndarray:
    """Means over whole ``block x block`` blocks ``(rows, cols, C)`` (a partial last row/column is left out)."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    by, bx = a.shape[0] // block, a.shape[1] // block
    if by == 0 or bx == 0:
        raise ValueError(f"image {a.shape[:2]} is smaller than one {block}-px block")
    a = a[: by * block, : bx * block]
    return a.reshape(by, block, bx, block, -1).mean(axis=(1, 3))


def _error_dn(result: np.ndarray, truth: np.ndarray) -> np.ndarray:
    r, t = np.asarray(result, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if r.shape != t.shape:
        raise ValueError(f"result {r.shape} and truth {t.shape} differ in shape")
    scale = 255.0 / np.iinfo(result.dtype).max if np.asarray(result).dtype.kind in "ui" else 255.0
    tscale = 255.0 / np.iinfo(truth.dtype).max if np.asarray(truth).dtype.kind in "ui" else 255.0
    return r * scale - t * tscale


def block_step_dn(result: np.ndarray, truth: np.ndarray, *, block: int = 128) -> float:
    """Worst step, in DN, of the error's block means between horizontally or vertically neighbouring blocks.

    Parameters
    ----------
    result, truth
        ``(H, W, C)`` images (floats in ``[0, 1]`` or integers; converted to DN).
    block
        Block side in pixels; blocks start at ``(0, 0)``.
    """
    m = block_means(_error_dn(result, truth), block)
    steps = [np.abs(np.diff(m, axis=0)).max(initial=0.0), np.abs(np.diff(m, axis=1)).max(initial=0.0)]
    return float(max(steps))


def block_error_dn(result: np.ndarray, truth: np.ndarray, *, block: int = 64) -> float:
    """Worst absolute mean error, in DN, over ``block``-px blocks (any channel)."""
    return float(np.abs(block_means(_error_dn(result, truth), block)).max())
