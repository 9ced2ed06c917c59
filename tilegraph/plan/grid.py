"""One axis of the window grid: pure integer geometry, no I/O.

Conventions (shared by every stage):

* windows start at ``origin, origin + S, origin + 2S, ...`` in source pixels, ``S = tile - overlap``;
  ``origin`` is 0, or negative (``crop`` starts at minus half the overlap, so that its cuts fall on
  multiples of ``S``); positions before 0 are padded like those past the far edge;
* the image is padded at its far edge so that the last window fits: the windows span
  ``[origin, origin + padded)`` with ``padded = (count - 1) * S + tile``;
* a window's output footprint is ``[start * s, (start + tile) * s)`` for the scale ``s``;
* ``crop`` keeps from window ``i`` the output interval ``[cut(i - 1), cut(i))``, where ``cut(i)`` is
  the middle of the overlap of windows ``i`` and ``i + 1`` (rounded down), clipped to the output size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["AxisGrid", "make_axis"]


@dataclass(frozen=True)
class AxisGrid:
    """Window geometry along one axis.

    Attributes
    ----------
    size : int
        Image extent in source pixels.
    tile : int
        Effective window extent in source pixels (shrunk for images smaller than a window).
    stride : int
        Distance between window starts in source pixels.
    count : int
        Number of windows.
    scale : Fraction
        Output pixels per source pixel.
    origin : int
        Source start of window 0 (0, or negative: near-edge padding), a multiple of the alignment.
    """

    size: int
    tile: int
    stride: int
    count: int
    scale: Fraction
    origin: int = 0

    @property
    def padded(self) -> int:
        """Source extent the windows span, from ``origin`` (near padding included) to the last window's end."""
        return (self.count - 1) * self.stride + self.tile

    @property
    def pad(self) -> tuple[int, int]:
        """Source pixels padded before 0 and past the image's far edge."""
        return -self.origin, self.origin + self.padded - self.size

    @property
    def overlap(self) -> int:
        """Overlap of neighbouring windows in source pixels (0 with a single window)."""
        return self.tile - self.stride if self.count > 1 else 0

    @property
    def out_size(self) -> int:
        """Output extent: ``size * s`` up, ``ceil(size / k)`` down."""
        return math.ceil(self.size * self.scale)

    @property
    def out_tile(self) -> int:
        """Window extent in output pixels."""
        return int(self.tile * self.scale)

    @property
    def out_overlap(self) -> int:
        """Overlap in output pixels."""
        return int(self.overlap * self.scale)

    def start(self, i: int) -> int:
        """Source start of window ``i`` (negative for a first window that starts in the near padding)."""
        return self.origin + i * self.stride

    def out_start(self, i: int) -> int:
        """Output start of window ``i`` (exact: starts are multiples of the alignment)."""
        # integer arithmetic (exact here, and Fraction arithmetic costs microseconds per call)
        v = self.start(i) * self.scale.numerator
        q = abs(v) // self.scale.denominator
        return q if v >= 0 else -q  # int(): towards zero, as before

    def cut(self, i: int) -> int:
        """Output position of the seam between window ``i`` and ``i + 1``."""
        if i < 0:
            return 0
        if i >= self.count - 1:
            return self.out_size
        mid2 = self.start(i + 1) + self.start(i) + self.tile  # twice the overlap centre, source px
        return min(self.out_size, mid2 * self.scale.numerator // (2 * self.scale.denominator))

    def keep(self, i: int) -> tuple[int, int]:
        """Output interval that ``crop`` keeps from window ``i``."""
        return self.cut(i - 1), self.cut(i)

    def footprint(self, i: int) -> tuple[int, int]:
        """Output interval covered by window ``i``, clipped to the output size."""
        lo = self.out_start(i)
        return lo, min(self.out_size, lo + self.out_tile)

    def covering(self, lo: int, hi: int, *, crop: bool) -> range:
        """Windows whose contribution intersects the output interval ``[lo, hi)``.

        With ``crop=True`` the contribution is the kept interval, otherwise the whole footprint.
        """
        first: int | None = None
        last = -1
        # candidate range from the footprints, then filter exactly
        # floor((lo - origin * s - out_tile) / (stride * s)) with s = n / d, in integers
        n, d = self.scale.numerator, self.scale.denominator
        step = self.stride * n
        i0 = max(0, (lo * d - self.origin * n - self.out_tile * d) // step - 1) if step > 0 else 0
        i1 = min(self.count - 1, (hi * d - self.origin * n) // step + 1) if step > 0 else 0
        for i in range(i0, i1 + 1):
            a, b = self.keep(i) if crop else self.footprint(i)
            if a < hi and b > lo and b > a:
                first = i if first is None else first
                last = i
        if first is None:
            return range(0)
        return range(first, last + 1)


def make_axis(size: int, tile: int, overlap: int, scale: Fraction, align: int, origin: int = 0) -> AxisGrid:
    """Build an :class:`AxisGrid`; the window shrinks to the aligned image extent if larger.

    ``origin`` (0 or negative, a multiple of ``align``) starts the grid in the near padding; an image
    that one window covers gets a single window at 0 whatever the origin.
    """
    eff = min(tile, -(-size // align) * align)
    stride = tile - overlap
    if eff < tile or size <= tile:
        return AxisGrid(size=size, tile=eff, stride=stride, count=1, scale=scale)
    count = -(-(size - origin - tile) // stride) + 1
    if origin and origin == -(overlap // 2):  # cuts on multiples of S: no kept interval longer than S
        count = max(count, -(-size // stride))
    return AxisGrid(size=size, tile=tile, stride=stride, count=count, scale=scale, origin=origin)
