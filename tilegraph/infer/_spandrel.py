"""A torch module around a spandrel ``ImageModelDescriptor``: what the runner and the probe can use.

Imports torch (and, when called, spandrel); :mod:`tilegraph.infer.formats` imports this module only when
a checkpoint is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SpandrelModel"]


class SpandrelModel(torch.nn.Module):
    """An architecture spandrel detected, with what its descriptor declares as attributes.

    Calls the network the way spandrel's descriptor does (its ``call_fn``, padding to the size
    requirements and cropping back, output clamped to ``[0, 1]``), on whole batches, and without a
    reference to the descriptor (so ``copy.deepcopy``, ``.to()`` and ``.double()`` act on the network).

    Attributes
    ----------
    scale, in_channels, out_channels : int
        From the descriptor.
    stride : int
        The descriptor's ``size_requirements.multiple_of``.
    halo : None
        Unknown; measure it with :func:`tilegraph.infer.receptive_field.propose_halo`.
    architecture : str
        spandrel's architecture id (``"ESRGAN"``, ``"SPAN"``...).
    tiling : str
        spandrel's tiling advice: ``"SUPPORTED"``, ``"DISCOURAGED"`` or ``"INTERNAL"``.
    min_size : int
        Smallest input side the network accepts.
    square : bool
        Whether the network needs square inputs.
    """

    def __init__(self, descriptor: Any, *, source: str | None = None) -> None:
        super().__init__()
        self.net = descriptor.model
        self._call_fn = getattr(descriptor, "_call_fn", None)
        req = descriptor.size_requirements
        self.scale = int(descriptor.scale)
        self.in_channels = int(descriptor.input_channels)
        self.out_channels = int(descriptor.output_channels)
        self.stride = int(req.multiple_of)
        self.halo: int | None = None
        self.min_size = int(req.minimum)
        self.square = bool(req.square)
        self.architecture = str(descriptor.architecture.id)
        self.tiling = str(getattr(descriptor.tiling, "name", descriptor.tiling))
        self.purpose = str(descriptor.purpose)
        self.supports_half = bool(descriptor.supports_half)
        self.supports_bfloat16 = bool(descriptor.supports_bfloat16)
        self.source = source
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on ``(N, C, H, W)`` in ``[0, 1]``; returns ``(N, C', H*scale, W*scale)``."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        x = _pad(x, h, w, self.min_size, self.stride, self.square)
        y = self._call_fn(self.net, x) if self._call_fn is not None else self.net(x)
        y = y.clamp(0, 1)
        if y.shape[-2] != h * self.scale or y.shape[-1] != w * self.scale:
            y = y[..., : h * self.scale, : w * self.scale]
        return y

    def extra_repr(self) -> str:
        return f"architecture={self.architecture}, scale={self.scale}, stride={self.stride}, tiling={self.tiling}"


def _pad(x: torch.Tensor, h: int, w: int, minimum: int, multiple: int, square: bool) -> torch.Tensor:
    """Pad bottom/right as spandrel does: reflect as far as it can, then replicate."""
    th, tw = max(h, minimum), max(w, minimum)
    if square:
        th = tw = max(th, tw)
    th, tw = -(-th // multiple) * multiple, -(-tw // multiple) * multiple
    ph, pw = th - h, tw - w
    if not ph and not pw:
        return x
    rh, rw = min(ph, h - 1), min(pw, w - 1)
    x = F.pad(x, (0, rw, 0, rh), mode="reflect")
    if ph - rh or pw - rw:
        x = F.pad(x, (0, pw - rw, 0, ph - rh), mode="replicate")
    return x
