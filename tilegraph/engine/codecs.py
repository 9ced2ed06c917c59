"""The workers' Zarr codec pipeline: zarr-python's, or the zarrs Rust pipeline where installed.

``execution_options={"codec_pipeline": ...}``: ``"auto"`` (default) uses zarrs on every worker that
has it (``pip install tilegraph[fast]``), ``"zarrs"`` requires it, ``"zarr-python"`` keeps zarr's own.
Set on the workers of a Dask cluster for their process (tilegraph's tasks are their Zarr readers and
writers); a run in this process (``client="inprocess"``) leaves this process's zarr settings alone.
"""

from __future__ import annotations

import importlib.util

from tilegraph.engine.executor import Executor, InProcessExecutor
from tilegraph.errors import ClusterError

__all__ = ["ZARRS_PIPELINE", "configure_codecs", "use_pipeline"]

ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
ZARR_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"


def use_pipeline(choice: str) -> str:
    """Task run on each worker: select the codec pipeline; returns the one in use."""
    import zarr

    if choice == "zarr-python":
        zarr.config.set({"codec_pipeline.path": ZARR_PIPELINE})
        return "zarr-python"
    if importlib.util.find_spec("zarrs") is not None:
        zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE})
        return "zarrs"
    if choice == "zarrs":
        raise ClusterError(
            "the zarrs codec pipeline is not installed on this worker", hint="pip install zarrs"
        )
    return "zarr-python"


def configure_codecs(executor: Executor, choice: str) -> list[str]:
    """Select the codec pipeline on every worker; returns the pipelines in use (for the metadata)."""
    if isinstance(executor, InProcessExecutor):
        return []
    client = getattr(executor, "client", None)
    if client is None:
        return []
    used = client.run(use_pipeline, choice)
    return sorted(set(used.values()))
