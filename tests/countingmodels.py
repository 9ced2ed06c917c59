"""Models that count how often they are built or unpickled in each process (for transport tests)."""

from __future__ import annotations

import numpy as np
import torch

COUNTS = {"unpickled": 0, "built": 0}


class CountingIdentity(torch.nn.Module):
    """Identity whose unpickling is counted per process."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(256, 256), requires_grad=False)  # some bytes to carry

    def forward(self, x):
        return x + self.weight.sum()

    def __setstate__(self, state):
        COUNTS["unpickled"] += 1
        super().__setstate__(state)


class Scale(torch.nn.Module):
    """y = gain * x with a learnable gain (for weights loading tests)."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.gain


def make_scale():
    COUNTS["built"] += 1
    return Scale()


def counts(dask_worker=None):
    return dict(COUNTS)


def numpy_half(batch: np.ndarray) -> np.ndarray:
    return batch * 0.5
