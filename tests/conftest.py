"""Shared fixtures: keep torch single-threaded-ish and dask quiet on 2-core CI machines."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "error")


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return torch


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)
