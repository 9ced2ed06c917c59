"""Start-up self-checks run against a cluster before a job is submitted.

:func:`check_gpu_restrictions` proves, on the actual cluster, that a task tilegraph submits with
``resources={"GPU": 1}`` reaches the scheduler with that restriction and runs on a worker that
declares the resource. Graph optimisations have dropped such restrictions silently before (fused
``dask.annotate`` layers, see the ecosystem notes §2.1), which would put model tasks on CPU-only
workers or start several models on one GPU.
"""

from __future__ import annotations

import os
import uuid

from tilegraph.errors import ResourceRestrictionError

__all__ = ["check_gpu_restrictions"]

#: The restriction tilegraph puts on model tasks when workers declare GPUs.
GPU_RESTRICTION = {"GPU": 1}


def _where_am_i() -> dict:
    """Runs on a worker: who it is, what it declares and which GPUs it may see."""
    from distributed import get_worker

    w = get_worker()
    return {
        "address": w.address,
        "name": w.name,
        "resources": dict(w.state.total_resources),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _scheduler_view(dask_scheduler, key: str) -> dict:
    """Runs on the scheduler: the task's restriction, the GPU workers and the fusion setting."""
    import dask

    ts = dask_scheduler.tasks.get(key)
    gpu_workers = {
        ws.address: ws.name for ws in dask_scheduler.workers.values() if ws.resources.get("GPU", 0) >= 1
    }
    return {
        "found": ts is not None,
        "restrictions": dict(ts.resource_restrictions or {}) if ts is not None else None,
        "gpu_workers": gpu_workers,
        "fuse_active": dask.config.get("optimization.fuse.active", None),
    }


def check_gpu_restrictions(client, *, timeout: float = 60.0) -> dict:
    """Verify that GPU-restricted tasks reach the scheduler restricted and run on a GPU worker.

    A tiny task is submitted with ``resources={"GPU": 1}`` through
    :meth:`tilegraph.engine.executor.DaskExecutor.submit`, the path model tasks take. Once it has
    run (and while its future is still held), its ``TaskState.resource_restrictions`` is read on the
    scheduler with ``client.run_on_scheduler``; the task itself reports the worker it ran on.

    Parameters
    ----------
    client
        A connected ``distributed.Client``.
    timeout
        Seconds to wait for the task (a GPU worker may still be loading a model).

    Returns
    -------
    dict
        ``key``, ``restrictions`` (as the scheduler holds them), ``worker`` and ``worker_name`` (where the
        task ran), ``worker_resources``, ``cuda_visible_devices`` (of that worker), ``gpu_workers``
        (``{address: name}`` of every worker declaring GPU) and ``scheduler_fuse_active`` (the
        scheduler's ``optimization.fuse.active``, informational: tilegraph does not rely on
        annotations, but user graphs with ``dask.annotate`` lose them when it is not ``False``).

    Raises
    ------
    tilegraph.errors.ResourceRestrictionError
        No worker declares GPU; the restriction did not reach the scheduler; the task ran on a
        worker without GPU; or it did not run within ``timeout``.
    """
    from distributed import TimeoutError as DaskTimeoutError
    from distributed import wait

    from tilegraph.engine.dask_executor import DaskExecutor

    key = f"tg-check-gpu-{uuid.uuid4().hex[:8]}"
    before = client.run_on_scheduler(_scheduler_view, key=key)
    if not before["gpu_workers"]:
        raise ResourceRestrictionError(
            "no worker of this cluster declares the GPU resource",
            hint="start GPU workers with `dask worker ... --resources GPU=1` or tilegraph.cluster.gpu.gpu_cluster()",
        )
    executor = DaskExecutor(client, own_cluster=False)
    future = executor.submit(_where_am_i, key=key, resources=dict(GPU_RESTRICTION))
    try:
        try:
            wait([future], timeout=timeout)
        except (TimeoutError, DaskTimeoutError):
            seen = client.run_on_scheduler(_scheduler_view, key=key)
            raise ResourceRestrictionError(
                f"a GPU-restricted check task did not run within {timeout:g} s "
                f"(restrictions on the scheduler: {seen['restrictions']!r})",
                hint="check that the GPU workers are alive and not saturated",
            ) from None
        where = future.result()
        # Read the restriction only now: the submission travels on the client's batched stream and
        # may not have reached the scheduler yet right after submit(). A held task keeps it.
        seen = client.run_on_scheduler(_scheduler_view, key=key)
    finally:
        executor.cancel([future])
    report = {
        "key": key,
        "restrictions": seen["restrictions"],
        "worker": where["address"],
        "worker_name": where["name"],
        "worker_resources": where["resources"],
        "cuda_visible_devices": where["cuda_visible_devices"],
        "gpu_workers": seen["gpu_workers"],
        "scheduler_fuse_active": seen["fuse_active"],
    }
    if not seen["found"] or seen["restrictions"] != GPU_RESTRICTION:
        raise ResourceRestrictionError(
            f"a task submitted with resources={GPU_RESTRICTION!r} reached the scheduler with "
            f"restrictions {seen['restrictions']!r}",
            hint="model tasks would run unrestricted; report this as a tilegraph bug",
        )
    if where["address"] not in seen["gpu_workers"] or where["resources"].get("GPU", 0) < 1:
        raise ResourceRestrictionError(
            f"a GPU-restricted task ran on worker {where['name']!r} ({where['address']}), "
            f"which declares {where['resources']!r}",
            hint="model tasks would run on CPU-only workers; report this as a tilegraph bug",
        )
    return report
