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
    workers = (
        client.scheduler_info(n_workers=-1).get("workers", {})
        if _accepts_n_workers(client)
        else (client.scheduler_info().get("workers", {}))
    )
    names: set[str] = set()
    for info in workers.values():
        names.update((info.get("resources") or {}).keys())
    for name in ("GPU", "MODEL"):
        if name in names:
            return {name: 1}
    return None


def _workers_with(client, resource: str) -> list[str]:
    """Addresses of the workers declaring ``resource``."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return [a for a, w in info.get("workers", {}).items() if resource in (w.get("resources") or {})]


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False
