"""Which workers run model tasks: the ``GPU``/``MODEL`` resources the cluster's workers declare."""

from __future__ import annotations

__all__ = ["model_resources"]


def _restrictions_on_scheduler(dask_scheduler, keys):
    out = {}
    for k in keys:
        ts = dask_scheduler.tasks.get(k)
        if ts is not None:
            out[k] = dict(ts.resource_restrictions or {})
    return out


def model_resources(client) -> dict | None:
    """Resource restriction for model tasks: ``{"GPU": 1}`` if any worker declares GPUs.

    Workers of tilegraph's embedded CPU cluster declare ``MODEL=1`` so that one model task runs per
    worker while reading, blending and writing use the other threads.
    """
    workers = _worker_info(client)
    names: set[str] = set()
    for info in workers.values():
        names.update((info.get("resources") or {}).keys())
    for name in ("GPU", "MODEL"):
        if name in names:
            return {name: 1}
    return None


def _worker_info(client) -> dict:
    """The scheduler's description of every worker, by address (all of them, not distributed's first few)."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return info.get("workers", {})


def _workers_with(client, resource: str) -> dict[str, int]:
    """The workers declaring ``resource``: address -> thread count."""
    return {
        a: int(w.get("nthreads", 1) or 1)
        for a, w in _worker_info(client).items()
        if resource in (w.get("resources") or {})
    }


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False
