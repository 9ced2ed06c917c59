"""An array-like view of a :class:`Source` (``shape``, ``dtype``, 2-D slicing), read lazily."""

from __future__ import annotations

import numpy as np

from tilegraph.source.abc import Source

__all__ = ["SourceView"]


class SourceView:
    """Slice a source like a ``(rows, cols, channels)`` array; each slice reads only its region."""

    def __init__(self, source: Source):
        self.source = source
        self.shape = (*source.shape, source.channels)
        self.dtype = np.dtype(source.dtype)
        self.ndim = 3

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        index = index + (slice(None),) * (3 - len(index))
        ys, xs, cs = index
        if (
            not (isinstance(ys, slice) and isinstance(xs, slice))
            or ys.step not in (None, 1)
            or xs.step not in (None, 1)
        ):
            raise IndexError("SourceView supports contiguous row/column slices only")
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        return self.source.read(y0, y1, x0, x1)[:, :, cs]
