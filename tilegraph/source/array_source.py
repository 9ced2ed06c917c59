"""In-process arrays: numpy, dask and zarr arrays held by the caller."""

from __future__ import annotations

import numpy as np

from tilegraph.source.abc import Source, dims_of, infer_layout, region_index, to_yxc

__all__ = ["ArraySource"]


class ArraySource(Source):
    """An in-memory numpy array, or any array-like with ``shape``, ``dtype`` and slicing.

    It is not ``shareable``: before a run on separate processes the pipeline stages it to the run's
    scratch Zarr, so pixels travel through storage, never through the scheduler.
    """

    shareable = False

    def __init__(self, array, *, layout: str | None = None, name: str = "<array>"):
        self.array = array
        self.path = name
        self.layout = infer_layout(tuple(array.shape), layout, path=name)
        self.shape, self.channels = dims_of(tuple(array.shape), self.layout)
        self.dtype = np.dtype(array.dtype)
        self._check_dtype()

    def read(self, y0, y1, x0, x1):
        block = self.array[region_index(self.layout, y0, y1, x0, x1)]
        if hasattr(block, "compute"):
            block = block.compute()
        return to_yxc(np.asarray(block), self.layout)
