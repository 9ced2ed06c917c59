"""Deterministic test models that follow the tilegraph model contract.

Every model takes a batch ``(N, C, H, W)`` of floats and returns ``(N, C', H*s, W*s)``; it declares
``scale``, ``in_channels``, ``out_channels``, ``stride`` and ``halo`` as attributes. Weights are built in
``__init__`` from a fixed seed (the global torch RNG is left untouched), modules are in eval mode, float32,
with ``requires_grad`` off. Models work in any float dtype (the receptive-field probe runs them in float64)
and on any device.

Every model also has a factory (``make_local_conv`` ...) taking keyword arguments, so an import path such
as ``"tilegraph.testing.models:make_local_conv"`` works; the classes themselves work as import paths too.

Groups:

* exact local models: :class:`Identity`, :class:`LocalConv`, :class:`ReferenceUNet`, :class:`Upscaler`,
  :class:`Downscaler`, :func:`numpy_identity`, :func:`numpy_box3`;
* non-local models (tiled differs from whole on purpose): :class:`DriftModel`,
  :class:`InstanceNormModel`, :class:`GenerativeModel`; their randomness is a function of the window
  content, so results never depend on task order, batching or placement;
* behaviour: :class:`SleepModel` (slow, no CPU work) and :class:`OOMModel` (raises out-of-memory);
* broken: :class:`WrongShapeModel`, :class:`NaNModel`, :class:`RaisingModel`, :class:`WrongDtypeModel`.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tilegraph.testing.images import coordinate_image, decode_coordinates, gradient_photo

__all__ = [
    "Identity",
    "LocalConv",
    "ReferenceUNet",
    "Upscaler",
    "Downscaler",
    "DriftModel",
    "InstanceNormModel",
    "GenerativeModel",
    "SleepModel",
    "OOMModel",
    "WrongShapeModel",
    "NaNModel",
    "RaisingModel",
    "WrongDtypeModel",
    "numpy_identity",
    "numpy_box3",
    "content_seed",
    "unet_radius",
    "coordinate_image",
    "decode_coordinates",
    "gradient_photo",
    "make_identity",
    "make_local_conv",
    "make_reference_unet",
    "make_upscaler",
    "make_downscaler",
    "make_drift_model",
    "make_instance_norm_model",
    "make_generative_model",
    "make_sleep_model",
    "make_oom_model",
]

# ----------------------------------------------------------------------------- helpers


@contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG inside the block and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _finish(module: nn.Module) -> nn.Module:
    """Eval mode, float32, no gradients."""
    module.float().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _soft(y: torch.Tensor) -> torch.Tensor:
    """Mild, strictly increasing nonlinearity that keeps 0 and 1 fixed (no dead zone)."""
    return y + 0.03 * torch.sin(math.pi * y)


def _near_identity_conv(
    cin: int,
    cout: int,
    gen: torch.Generator,
    *,
    dilation: int = 1,
    source: list[int] | None = None,
    noise: float = 0.02,
) -> nn.Conv2d:
    """A 3x3 convolution close to a smoothing of input channel ``source[o]`` for each output ``o``.

    Every tap of every channel gets a small random perturbation (so the support is the full 3x3 square
    and no path cancels), then the 9 taps from each input channel are shifted to sum to exactly 1 (the
    source channel) or 0 (the others): a constant image maps to itself plus a small bias, and outputs
    stay near the input range.
    """
    conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
    smooth = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    w = noise * torch.randn(cout, cin, 3, 3, generator=gen)
    w -= w.mean(dim=(2, 3), keepdim=True)
    src = source if source is not None else [o % cin for o in range(cout)]
    for o in range(cout):
        w[o, src[o]] += smooth
    with torch.no_grad():
        conv.weight.copy_(w)
        assert conv.bias is not None
        conv.bias.copy_(0.002 * torch.randn(cout, generator=gen))
    return conv


def content_seed(tile: torch.Tensor | np.ndarray, seed: int = 0) -> int:
    """A 64-bit seed derived from ``seed`` and the bytes of one window (deterministic, order-free).

    Parameters
    ----------
    tile
        One batch element ``(C, H, W)`` (tensor on any device, or numpy array).
    seed
        The model's own seed.
    """
    if isinstance(tile, torch.Tensor):
        arr = tile.detach().to("cpu").contiguous().numpy()
    else:
        arr = np.ascontiguousarray(tile)
    h = hashlib.blake2b(digest_size=8, key=str(int(seed)).encode())
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(arr.tobytes())
    return int.from_bytes(h.digest(), "little")


def unet_radius(depth: int) -> int:
    """Exact receptive-field radius (source px) of :class:`ReferenceUNet` of ``depth``: ``7 * 2**depth - 5``.

    Worst case over the impulse position modulo the stride ``2**depth``; 107 px for the anchor (depth 4).
    """
    return 7 * 2**depth - 5


class _Declared(nn.Module):
    """Base with the declared contract attributes."""

    scale: int | str = 1
    stride: int = 1
    halo: int = 0

    def __init__(self, in_channels: int | None, out_channels: int | None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, scale={self.scale}, "
            f"stride={self.stride}, halo={self.halo}"
        )


# ----------------------------------------------------------------------------- exact local models


class Identity(_Declared):
    """Returns (a copy of) its input: any channel count, ``halo = 0``.

    Parameters
    ----------
    channels
        Declared channel count; ``None`` accepts any.
    """

    halo = 0

    def __init__(self, channels: int | None = None) -> None:
        super().__init__(channels, channels)
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Copy of ``x`` (a copy, so callers may reuse or modify input buffers)."""
        return x.clone()


class LocalConv(_Declared):
    """Stacked 3x3 (optionally dilated) convolutions: an exact local model.

    Each layer is close to a mild smoothing (weights sum to 1 per output channel plus small random
    perturbations), separated by a mild strictly increasing nonlinearity, so outputs stay near the input
    range. Zero padding at the image border.

    Parameters
    ----------
    channels
        Input and output channels.
    layers
        Number of convolutions.
    dilation
        Dilation of every convolution.
    seed
        Seed of the weights.

    Attributes
    ----------
    halo : int
        ``layers * dilation``, the exact receptive-field radius.
    """

    stride = 1

    def __init__(self, channels: int = 3, layers: int = 2, dilation: int = 1, seed: int = 0) -> None:
        super().__init__(channels, channels)
        gen = torch.Generator().manual_seed(int(seed))
        with _seeded(seed):
            self.convs = nn.ModuleList(
                [_near_identity_conv(channels, channels, gen, dilation=dilation) for _ in range(layers)]
            )
        self.layers, self.dilation = int(layers), int(dilation)
        self.halo = self.layers * self.dilation
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the convolutions."""
        for i, conv in enumerate(self.convs):
            x = conv(x) if i == 0 else conv(_soft(x))
        return x


class _Block(nn.Sequential):
    """Two 3x3 conv + ReLU, as in the GPU anchor."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class ReferenceUNet(_Declared):
    """The restoration U-Net of the performance anchor (``shared/anchors/gpu_anchor.py``), seeded.

    The layer names match the anchor's ``UNet`` (``down``, ``up``, ``dec``, ``out``), so state dicts are
    interchangeable. ``base=32, depth=4`` is the anchor (about 7.8 M parameters); small ``base`` keeps tests
    fast with the same geometry.

    Parameters
    ----------
    channels
        Input and output channels.
    base
        Width of the first level (doubled at each level).
    depth
        Number of 2x down-samplings; the total stride is ``2**depth``.
    residual
        ``False`` (default): exactly the anchor model (default PyTorch init, output not near the input).
        ``True``: returns ``x + 0.1 * unet(x)``, close to the input, for visual demos.
    seed
        Seed of the weights.

    Attributes
    ----------
    stride : int
        ``2**depth``; windows must start at multiples of it.
    halo : int
        Exact receptive-field radius ``7 * 2**depth - 5`` (107 for depth 4). Crop-centre tiling equals
        whole-image inference only with at least this much context.
    """

    def __init__(
        self, channels: int = 3, base: int = 32, depth: int = 4, residual: bool = False, seed: int = 0
    ) -> None:
        super().__init__(channels, channels)
        widths = [base * 2**i for i in range(depth + 1)]
        with _seeded(seed):
            self.down = nn.ModuleList(
                [_Block(channels, widths[0])] + [_Block(widths[i], widths[i + 1]) for i in range(depth)]
            )
            self.up = nn.ModuleList(
                [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))]
            )
            self.dec = nn.ModuleList([_Block(widths[i] * 2, widths[i]) for i in reversed(range(depth))])
            self.out = nn.Conv2d(widths[0], channels, 1)
        self.depth, self.residual = int(depth), bool(residual)
        self.stride = 2**self.depth
        self.halo = unet_radius(self.depth)
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """U-Net forward (plus the residual when enabled)."""
        inp = x
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        y = self.out(x)
        return inp + 0.1 * y if self.residual else y


class Upscaler(_Declared):
    """Super-resolution stand-in: a 3x3 conv, then a 3x3 conv to ``C * s**2`` channels and pixel shuffle.

    Output is close to a smoothed nearest-neighbour up-sampling of the input.

    Parameters
    ----------
    scale
        2 or 4 (any integer >= 2 works).
    channels
        Input and output channels.
    seed
        Seed of the weights.

    Attributes
    ----------
    halo : int
        2 (source px), the exact receptive-field radius.
    """

    stride = 1
    halo = 2

    def __init__(self, scale: int = 2, channels: int = 3, seed: int = 0) -> None:
        super().__init__(channels, channels)
        s = int(scale)
        if s < 2 or s != scale:
            raise ValueError(f"Upscaler scale must be an integer >= 2, got {scale!r}")
        self.scale = s
        gen = torch.Generator().manual_seed(int(seed))
        with _seeded(seed):
            self.body = _near_identity_conv(channels, channels, gen)
            self.expand = _near_identity_conv(
                channels, channels * s * s, gen, source=[k // (s * s) for k in range(channels * s * s)]
            )
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Up-sample by ``scale``."""
        return F.pixel_shuffle(self.expand(_soft(self.body(x))), int(self.scale))


class Downscaler(_Declared):
    """VAE-encoder stand-in: 3x3 conv, average pooling by ``factor``, 3x3 conv to ``out_channels``.

    Output channel ``o`` is close to the local mean of input channel ``o mod channels``.

    Parameters
    ----------
    factor
        Down-sampling factor (8 gives ``scale = "1/8"``).
    channels
        Input channels.
    out_channels
        Output (latent) channels.
    seed
        Seed of the weights.

    Attributes
    ----------
    scale : str
        ``"1/factor"``.
    stride : int
        ``factor``.
    halo : int
        ``factor + 1`` (source px beyond an output pixel's footprint), the exact receptive-field radius.
    """

    def __init__(self, factor: int = 8, channels: int = 3, out_channels: int = 4, seed: int = 0) -> None:
        super().__init__(channels, out_channels)
        self.factor = int(factor)
        self.scale = f"1/{self.factor}"
        self.stride = self.factor
        self.halo = self.factor + 1
        gen = torch.Generator().manual_seed(int(seed))
        with _seeded(seed):
            self.body = _near_identity_conv(channels, channels, gen)
            self.head = _near_identity_conv(channels, out_channels, gen)
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Down-sample by ``factor``."""
        return self.head(F.avg_pool2d(_soft(self.body(x)), self.factor))


# ----------------------------------------------------------------------------- non-local models


class DriftModel(_Declared):
    """A smooth local filter followed by a per-window random gain and offset (colour drift).

    Each batch element ``i`` gets ``y_i = g_i * smooth(x_i) + b_i`` with ``g_i`` uniform in
    ``[1 - gain, 1 + gain]`` and ``b_i`` uniform in ``[-offset_dn, offset_dn] / 255``, drawn from an RNG
    seeded by :func:`content_seed` of the window: the same window gives the same drift whatever the batch,
    order or worker. Neighbouring windows get different drifts, which reconciliation must remove.

    Parameters
    ----------
    seed
        Seed of the weights and of the drifts.
    gain
        Relative gain amplitude (0.03 = +-3 %).
    offset_dn
        Offset amplitude in 8-bit steps (3 = +-3/255).
    channels
        Input and output channels.

    Attributes
    ----------
    halo : int
        1: the local part; the drift itself depends on the whole window.
    """

    stride = 1
    halo = 1

    def __init__(self, seed: int = 0, gain: float = 0.03, offset_dn: float = 3, channels: int = 3) -> None:
        super().__init__(channels, channels)
        self.seed, self.gain, self.offset_dn = int(seed), float(gain), float(offset_dn)
        gen = torch.Generator().manual_seed(self.seed)
        with _seeded(self.seed):
            self.smooth = _near_identity_conv(channels, channels, gen, noise=0.01)
        _finish(self)

    def drift(self, tile: torch.Tensor | np.ndarray) -> tuple[float, float]:
        """``(gain, offset)`` that this model applies to one window ``(C, H, W)``."""
        rng = np.random.default_rng(content_seed(tile, self.seed))
        g = 1.0 + self.gain * rng.uniform(-1.0, 1.0)
        b = self.offset_dn / 255.0 * rng.uniform(-1.0, 1.0)
        return float(g), float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Smooth, then apply each window's drift."""
        y = self.smooth(x)
        params = [self.drift(x[i]) for i in range(x.shape[0])]
        g = torch.tensor([p[0] for p in params], dtype=y.dtype, device=y.device).view(-1, 1, 1, 1)
        b = torch.tensor([p[1] for p in params], dtype=y.dtype, device=y.device).view(-1, 1, 1, 1)
        return y * g + b


class InstanceNormModel(_Declared):
    """``x + 0.1 * conv(InstanceNorm(conv(x)))``: output depends on each window's own statistics.

    Parameters
    ----------
    channels
        Input and output channels.
    hidden
        Channels of the normalised feature map.
    seed
        Seed of the weights.

    Attributes
    ----------
    halo : int
        2: the local part only; the normalisation statistics span the whole window.
    """

    stride = 1
    halo = 2

    def __init__(self, channels: int = 3, hidden: int = 8, seed: int = 0) -> None:
        super().__init__(channels, channels)
        gen = torch.Generator().manual_seed(int(seed))
        with _seeded(seed):
            self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
            self.norm = nn.InstanceNorm2d(hidden, affine=True)
            self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)
            with torch.no_grad():
                self.norm.weight.copy_(1.0 + 0.2 * torch.randn(hidden, generator=gen))
                self.norm.bias.copy_(0.2 * torch.randn(hidden, generator=gen))
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual through a per-window normalisation."""
        return x + 0.1 * self.conv2(torch.tanh(self.norm(self.conv1(x))))


class GenerativeModel(_Declared):
    """A smooth local filter plus independent fine texture per window ("hallucinated" detail).

    The texture is Gaussian noise of standard deviation ``amplitude`` drawn from an RNG seeded by
    :func:`content_seed` of the window, so it is reproducible but uncorrelated between overlapping windows.

    Parameters
    ----------
    channels
        Input and output channels.
    amplitude
        Standard deviation of the texture (0.02 is about 5 steps of 8 bits).
    seed
        Seed of the weights and the texture.

    Attributes
    ----------
    halo : int
        1: the local part only.
    """

    stride = 1
    halo = 1

    def __init__(self, channels: int = 3, amplitude: float = 0.02, seed: int = 0) -> None:
        super().__init__(channels, channels)
        self.seed, self.amplitude = int(seed), float(amplitude)
        gen = torch.Generator().manual_seed(self.seed)
        with _seeded(self.seed):
            self.smooth = _near_identity_conv(channels, channels, gen, noise=0.01)
        _finish(self)

    def texture(self, tile: torch.Tensor | np.ndarray) -> np.ndarray:
        """The float64 texture ``(C, H, W)`` this model adds to one window ``(C, H, W)``."""
        rng = np.random.default_rng(content_seed(tile, self.seed))
        return self.amplitude * rng.standard_normal(tuple(tile.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Smooth, then add each window's texture."""
        y = self.smooth(x)
        noise = np.stack([self.texture(x[i]) for i in range(x.shape[0])])
        return y + torch.from_numpy(noise).to(device=y.device, dtype=y.dtype)


# ----------------------------------------------------------------------------- behaviour


class SleepModel(_Declared):
    """Identity that sleeps ``seconds_per_window`` per batch element (simulated GPU time, no CPU work).

    Parameters
    ----------
    seconds_per_window
        Sleep per batch element.
    """

    halo = 0

    def __init__(self, seconds_per_window: float = 0.2) -> None:
        super().__init__(None, None)
        self.seconds_per_window = float(seconds_per_window)
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sleep, then return a copy of ``x``."""
        time.sleep(self.seconds_per_window * x.shape[0])
        return x.clone()


class OOMModel(_Declared):
    """Identity that raises :class:`torch.OutOfMemoryError` on batches that are too large.

    Parameters
    ----------
    max_batch
        Largest batch size that succeeds (``None``: no limit).
    max_pixels
        Largest ``H * W`` per window that succeeds (``None``: no limit).

    Attributes
    ----------
    calls : list of tuple
        Shapes of every batch seen by this instance (in this process), failed ones included.
    """

    halo = 0

    def __init__(self, max_batch: int | None = None, max_pixels: int | None = None) -> None:
        super().__init__(None, None)
        self.max_batch, self.max_pixels = max_batch, max_pixels
        self.calls: list[tuple[int, ...]] = []
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Copy of ``x``, or an out-of-memory error."""
        self.calls.append(tuple(x.shape))
        n, _, h, w = x.shape
        if (self.max_batch is not None and n > self.max_batch) or (
            self.max_pixels is not None and h * w > self.max_pixels
        ):
            need = x.numel() * x.element_size() * 8 / 2**20
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {need:.2f} MiB (simulated by OOMModel: batch {n}, "
                f"window {h} x {w}, max_batch={self.max_batch}, max_pixels={self.max_pixels})"
            )
        return x.clone()


# ----------------------------------------------------------------------------- broken models


class WrongShapeModel(_Declared):
    """Returns one row and one column fewer than the contract requires."""

    def __init__(self) -> None:
        super().__init__(None, None)
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` cropped by one row and one column."""
        return x[..., :-1, :-1].clone()


class NaNModel(_Declared):
    """Identity that writes ``value`` (NaN by default) at one pixel of channel 0 of every window.

    Parameters
    ----------
    value
        The bad value (``float("inf")`` for an Inf test).
    position
        ``(row, col)`` inside the window; ``None`` is the window centre.
    """

    def __init__(self, value: float = float("nan"), position: tuple[int, int] | None = None) -> None:
        super().__init__(None, None)
        self.value, self.position = float(value), position
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Copy of ``x`` with one bad value per window."""
        y = x.clone()
        r, c = self.position if self.position is not None else (x.shape[2] // 2, x.shape[3] // 2)
        y[:, 0, r, c] = self.value
        return y


class RaisingModel(_Declared):
    """Raises :class:`RuntimeError` on every call.

    Parameters
    ----------
    message
        The error message.
    """

    def __init__(self, message: str = "RaisingModel: deliberate failure") -> None:
        super().__init__(None, None)
        self.message = message
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raise."""
        raise RuntimeError(self.message)


class WrongDtypeModel(_Declared):
    """Returns an int64 tensor of the right shape instead of a float one."""

    def __init__(self) -> None:
        super().__init__(None, None)
        _finish(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``round(255 * x)`` as int64."""
        return torch.round(x * 255).to(torch.int64)


# ----------------------------------------------------------------------------- numpy callables


def numpy_identity(batch: np.ndarray) -> np.ndarray:
    """Plain numpy model: a copy of ``batch`` ``(N, C, H, W)``."""
    return np.array(batch, copy=True)


def numpy_box3(batch: np.ndarray) -> np.ndarray:
    """Plain numpy model: 3x3 mean filter with zero padding, same dtype as ``batch`` ``(N, C, H, W)``.

    Carries ``halo = 1`` and ``stride = 1`` as function attributes.
    """
    batch = np.asarray(batch)
    h, w = batch.shape[-2:]
    p = np.pad(batch, ((0, 0), (0, 0), (1, 1), (1, 1)))
    acc = np.zeros(batch.shape, dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            acc += p[..., dy : dy + h, dx : dx + w]
    return (acc / 9.0).astype(batch.dtype if batch.dtype.kind == "f" else np.float32)


numpy_box3.halo = 1  # type: ignore[attr-defined]
numpy_box3.stride = 1  # type: ignore[attr-defined]

# ----------------------------------------------------------------------------- factories (import paths)


def make_identity(**kwargs) -> Identity:
    """Factory for ``"tilegraph.testing.models:make_identity"``; kwargs as :class:`Identity`."""
    return Identity(**kwargs)


def make_local_conv(**kwargs) -> LocalConv:
    """Factory for ``"tilegraph.testing.models:make_local_conv"``; kwargs as :class:`LocalConv`."""
    return LocalConv(**kwargs)


def make_reference_unet(**kwargs) -> ReferenceUNet:
    """Factory for ``"tilegraph.testing.models:make_reference_unet"``; kwargs as :class:`ReferenceUNet`."""
    return ReferenceUNet(**kwargs)


def make_upscaler(**kwargs) -> Upscaler:
    """Factory for ``"tilegraph.testing.models:make_upscaler"``; kwargs as :class:`Upscaler`."""
    return Upscaler(**kwargs)


def make_downscaler(**kwargs) -> Downscaler:
    """Factory for ``"tilegraph.testing.models:make_downscaler"``; kwargs as :class:`Downscaler`."""
    return Downscaler(**kwargs)


def make_drift_model(**kwargs) -> DriftModel:
    """Factory for ``"tilegraph.testing.models:make_drift_model"``; kwargs as :class:`DriftModel`."""
    return DriftModel(**kwargs)


def make_instance_norm_model(**kwargs) -> InstanceNormModel:
    """Factory for ``"tilegraph.testing.models:make_instance_norm_model"``; kwargs as :class:`InstanceNormModel`."""
    return InstanceNormModel(**kwargs)


def make_generative_model(**kwargs) -> GenerativeModel:
    """Factory for ``"tilegraph.testing.models:make_generative_model"``; kwargs as :class:`GenerativeModel`."""
    return GenerativeModel(**kwargs)


def make_sleep_model(**kwargs) -> SleepModel:
    """Factory for ``"tilegraph.testing.models:make_sleep_model"``; kwargs as :class:`SleepModel`."""
    return SleepModel(**kwargs)


def make_oom_model(**kwargs) -> OOMModel:
    """Factory for ``"tilegraph.testing.models:make_oom_model"``; kwargs as :class:`OOMModel`."""
    return OOMModel(**kwargs)
