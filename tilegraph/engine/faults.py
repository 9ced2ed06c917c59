"""Errors from the cluster, as tilegraph errors: what happened, which windows, and that ``resume=True`` continues.

:func:`cluster_error` turns what ``distributed`` raises when a run loses its scheduler or a task keeps
killing its workers into :class:`~tilegraph.errors.SchedulerLostError` and
:class:`~tilegraph.errors.WorkerLostError` (naming the windows of the task), and
:func:`connection_error` what it raises when a client cannot connect (refused, timed out, TLS) into
:class:`~tilegraph.errors.ClusterConnectionError`.
"""

from __future__ import annotations

from concurrent.futures import CancelledError
from typing import Any

from tilegraph.errors import (
    RESUME_HINT,
    ClusterConnectionError,
    SchedulerLostError,
    TilegraphError,
    WorkerLostError,
)

__all__ = ["cluster_error", "connection_error", "windows_of_key"]


def windows_of_key(key: Any, run: Any, inference: Any) -> list[int]:
    """Flat window indices a task (by key) worked on: a model task's windows, a blend chunk's windows."""
    text = str(key[0] if isinstance(key, tuple) else key)
    if run is None or not text.startswith("tg-") or not text.endswith(tuple("0123456789")):
        return []
    head, _, index = text.rpartition("-")
    i = int(index)
    if head == f"tg-infer-{run.token}" and inference is not None and i < len(inference.groups):
        return list(inference.groups[i])
    if head == f"tg-blend-{run.token}":
        plan = run.plan
        cy, cx = divmod(i, plan.chunk_grid[1])
        if cy < plan.chunk_grid[0]:
            return list(run.context.blender.windows_for_box(plan, plan.chunk_box(cy, cx)))
    return []


def _describe(run: Any, windows: list[int]) -> tuple[tuple[int, int] | None, str]:
    if not windows:
        return None, ""
    cells = [(run.plan.window(i).row, run.plan.window(i).col) for i in windows]
    shown = ", ".join(f"({r}, {c})" for r, c in cells[:8]) + (
        f" and {len(cells) - 8} more" if len(cells) > 8 else ""
    )
    return cells[0], f" (windows {shown})"


def _client_running(executor: Any) -> bool:
    client = getattr(executor, "client", None)
    return client is None or getattr(client, "status", "running") == "running"


def cluster_error(exc: BaseException, *, run: Any, inference: Any, executor: Any) -> TilegraphError | None:
    """The tilegraph error for ``exc`` raised by ``distributed`` during a run, or ``None`` to keep ``exc``."""
    if isinstance(exc, TilegraphError) or not hasattr(executor, "client"):
        return None
    path = getattr(run, "destination", None)
    name = type(exc).__name__
    if name == "KilledWorker":
        from tilegraph.engine.watchdog import killers

        key = getattr(exc, "task", exc.args[0] if exc.args else "?")
        ctx = getattr(run, "context", None)
        # the windows in the model when workers died, else the task distributed blamed
        culprits = killers(getattr(ctx, "inflight", None)) or windows_of_key(key, run, inference)
        window, listed = _describe(run, culprits)
        allowed = getattr(exc, "allowed_failures", None)
        return WorkerLostError(
            f"a task{listed} was running on {'more than ' + str(allowed) if allowed is not None else 'several'} "
            "workers that died; it is likely what kills them (memory, a crash in the model or a driver)",
            path=path,
            window=window,
            hint=f"check the workers' logs and memory limits, then {RESUME_HINT}; allowed_failures= raises the limit",
        )
    if name == "NoWorkersError":
        from tilegraph.engine.watchdog import killers

        window, listed = _describe(run, killers(getattr(getattr(run, "context", None), "inflight", None)))
        return WorkerLostError(
            f"every worker died and none came back for {getattr(exc, 'seconds', 0):.0f} s"
            + (
                f"; the model was running windows{listed[len(' (windows') - 1 :].rstrip(')')} at the deaths"
                if listed
                else ""
            ),
            path=path,
            window=window,
            hint=f"check the workers' logs and memory limits, then restart the cluster and {RESUME_HINT}",
        )
    lost = not _client_running(executor)
    reason = getattr(exc, "reason", "")
    if isinstance(exc, CancelledError) and (lost or reason == "scheduler-connection-lost"):
        return _scheduler_lost(executor, path)
    if lost and (isinstance(exc, OSError | TimeoutError | CancelledError) or name == "CommClosedError"):
        return _scheduler_lost(executor, path)
    return None


def _scheduler_lost(executor: Any, path: str | None) -> SchedulerLostError:
    address = getattr(getattr(executor, "client", None), "scheduler", None)
    where = getattr(address, "address", None) or "the scheduler"
    return SchedulerLostError(
        f"lost the connection to {where} during the run (the scheduler died or the network failed); "
        "the work finished so far is kept",
        path=path,
        hint=f"restart the cluster, then {RESUME_HINT}",
    )


def connection_error(exc: BaseException, address: str) -> ClusterConnectionError:
    """A :class:`~tilegraph.errors.ClusterConnectionError` saying why connecting to ``address`` failed."""
    text = str(exc) or type(exc).__name__
    tls = address.startswith("tls://")
    if isinstance(exc, TypeError) and "ssl" in text.lower():
        return ClusterConnectionError(
            f"cannot connect to {address}: TLS needs certificates ({text})",
            hint="pass security=distributed.security.Security(...) (CLI --tls-ca-file/--tls-cert/--tls-key) or "
            "set dask's distributed.comm.tls configuration",
        )
    if "ssl" in text.lower() or "certificate" in text.lower() or (tls and "handshake" in text.lower()):
        return ClusterConnectionError(
            f"TLS failure connecting to {address}: {text}",
            hint="check the CA, certificate and key given (security= or --tls-*) against the scheduler's",
        )
    hint = "check that the scheduler runs and the address is right"
    if not tls:
        hint += "; a scheduler started with TLS needs a tls:// address and certificates (security=)"
    return ClusterConnectionError(f"cannot connect to the scheduler at {address}: {text}", hint=hint)
