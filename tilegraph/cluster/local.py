"""The embedded cluster used when :func:`tilegraph.run` gets no client, and client resolution."""

from __future__ import annotations

import contextlib
import os

from tilegraph.errors import ClusterError

__all__ = ["LEAN_CONFIG", "connect", "embedded_cluster", "lean_environ", "lean_settings", "visible_gpus"]

#: dask config every tilegraph client and embedded scheduler uses: no low-level fusion (it drops
#: resource annotations), no array query planning (drops all annotations).
DASK_CONFIG = {"optimization.fuse.active": False, "array.query-planning": False}

_PRE_SPAWN = "distributed.nanny.pre-spawn-environ."  # config keys a nanny turns into worker environment

#: Settings of the clusters tilegraph starts itself (``lean=True``, the default), measured on the 2-core
#: CI machine:
#:
#: * monitoring: distributed's defaults (a stack-sampling profiler every 10 ms, an event-loop tick
#:   every 20 ms, memory checks every 100 ms, resource sampling every 500 ms) cost an idle worker
#:   process about 5 % of a core; these intervals, about 0.5 %. What is lost: the dashboard's
#:   "Profile" page stays empty and its resource plots refresh every 2 s; memory limits are checked
#:   twice a second.
#: * allocator: the nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes
#:   glibc's mmap threshold at 128 KiB, so every window-sized buffer is a fresh ``mmap`` whose pages
#:   the kernel faults in and zeroes: more than half of a worker's CPU per window was kernel time.
#:   Buffers up to 32 MiB now come from the heap and are reused; free memory beyond 64 MiB is still
#:   given back to the system, and two malloc arenas (not 8 per core) bound what the heap keeps.
#:   Worker CPU per window fell from 23 to 14 ms; the memory benchmark (8192^2, 2 workers) ran
#:   at 10.4 MP/s instead of 5.6, with worker peaks of 445 MiB instead of 392.
LEAN_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 64 * 2**20,
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
    "distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 2,
}


def visible_gpus() -> list[str]:
    """GPU ids visible to this process (``CUDA_VISIBLE_DEVICES`` or what torch sees), without CUDA init."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
    except (OSError, subprocess.SubprocessError):
        return []


def embedded_cluster(
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit="auto",
    lean: bool = True,
):
    """Start a ``LocalCluster`` of worker processes suited to this machine.

    With GPUs: one worker per GPU, pinned through ``CUDA_VISIBLE_DEVICES`` and declaring
    ``GPU=1`` (see :func:`tilegraph.cluster.gpu.gpu_cluster`), plus CPU-only workers of 4 threads on
    the remaining cores for blending and writing. Without: ``n_workers`` processes
    (default 1) declaring ``MODEL=1``; model tasks ask for half of it, so two run per worker and
    take turns on the model (one batch at a time, with all the worker's cores) while the other reads
    and writes, and blends use the remaining threads.

    ``lean`` (default) starts the scheduler and workers with :data:`LEAN_CONFIG` (quiet monitoring,
    allocator settings); ``lean=False`` keeps distributed's defaults, e.g. to use the dashboard's
    profiler.
    """
    import dask

    from tilegraph.cluster.console import check_main_guard

    check_main_guard()  # before any worker process exists: a clear error, not a spawn traceback
    dask.config.set(DASK_CONFIG)
    if dask.config.get("distributed.deploy.lost-worker-timeout", "15s") == "15s":
        # LocalCluster closes a worker slot for good when its worker has not come back 15 s after any
        # earlier loss, so a worker killed twice within 15 s (OOM, a crashing model) was gone for the
        # rest of the run (measured: 3 kills in 8 s left no worker at all); keep restarting them
        dask.config.set({"distributed.deploy.lost-worker-timeout": "1 hour"})
    gpus = visible_gpus()
    if gpus and n_workers is None:
        from tilegraph.cluster.gpu import gpu_cluster

        cores = os.cpu_count() or 1
        per_gpu = threads_per_worker or 4
        spare = max(0, cores - per_gpu * len(gpus))
        return gpu_cluster(
            gpus=gpus,
            threads_per_worker=per_gpu,
            memory_limit=memory_limit,
            cpu_workers=spare // 4,
            cpu_threads=4,
            lean=lean,
        )
    # the scheduler (here) and the workers (the nannies pass this config on) read it when they start
    before = {name: os.environ.get(name) for name in _allocator_environ()}
    with lean_settings(lean):
        cluster = _local_cluster(n_workers, threads_per_worker, memory_limit)
    if lean:
        _restore_on_close(cluster, before)
    return cluster


def _restore_on_close(cluster, before: dict[str, str | None]) -> None:
    """Leave this process's environment as it was once ``cluster`` closes.

    A nanny that restarts a lost worker copies its ``pre-spawn-environ`` into this process's
    ``os.environ`` again (long after :func:`lean_settings` restored it), so the allocator variables
    are restored once more when the cluster closes.
    """
    close = cluster.close

    def close_and_restore(*args, **kwargs):
        try:
            return close(*args, **kwargs)
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    cluster.close = close_and_restore


def lean_environ() -> dict[str, str]:
    """:data:`LEAN_CONFIG` as environment variables, for workers started by hand (``dask worker``).

    Dask settings become ``DASK_...`` variables; the allocator variables are given as they are
    (a nanny prefers them to its own ``pre-spawn-environ`` defaults and its worker inherits them).
    """
    env = {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in LEAN_CONFIG.items()
        if not key.startswith(_PRE_SPAWN)
    }
    return {**env, **_allocator_environ()}


def _allocator_environ() -> dict[str, str]:
    """The allocator variables of :data:`LEAN_CONFIG` (its ``pre-spawn-environ`` entries)."""
    return {k[len(_PRE_SPAWN) :]: str(v) for k, v in LEAN_CONFIG.items() if k.startswith(_PRE_SPAWN)}


@contextlib.contextmanager
def lean_settings(lean: bool = True):
    """Apply :data:`LEAN_CONFIG` while a cluster starts, and leave this process as it was.

    distributed's nannies prefer a variable already in this process's ``os.environ`` to their
    ``pre-spawn-environ`` config (and a nanny started earlier, e.g. by another cluster, leaves its own
    there), then copy the result into ``os.environ`` before spawning each worker and leave it there.
    So the allocator variables are set here while the cluster starts and restored afterwards: later
    processes (and clusters started with ``lean=False``) do not inherit them.
    """
    import dask

    if not lean:
        yield
        return
    wanted = _allocator_environ()
    before = {name: os.environ.get(name) for name in wanted}
    try:
        os.environ.update(wanted)
        with dask.config.set(LEAN_CONFIG):
            yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _local_cluster(n_workers, threads_per_worker, memory_limit):
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    n = n_workers or 1
    # two model tasks at once (taking turns on the model, see DaskExecutor) and the blends beside them
    threads = threads_per_worker or max(2, cores // n) + 1
    # distributed starts workers with OMP_NUM_THREADS=1; one model task runs per worker (MODEL=1), so
    # let torch use the worker's cores for it
    compute = str(max(1, cores // n))
    return LocalCluster(
        n_workers=n,
        threads_per_worker=threads,
        processes=True,
        resources={"MODEL": 1},
        memory_limit=memory_limit,
        dashboard_address=":0",
        env={
            "DASK_OPTIMIZATION__FUSE__ACTIVE": "False",
            "OMP_NUM_THREADS": compute,
            "MKL_NUM_THREADS": compute,
            "OPENBLAS_NUM_THREADS": compute,
        },
    )


def _embedded_executor():
    """A :class:`DaskExecutor` on a new embedded cluster set up for a console (:mod:`tilegraph.cluster.console`).

    distributed's log records (tracebacks of failed tasks included) go to a debug log, in this
    process (scheduler, nannies) and on the workers, whose ``sys.path`` starts with the current folder.
    """
    from distributed import Client

    from tilegraph.cluster.console import WorkerSetup, debug_log_path, divert_logs
    from tilegraph.engine.dask_executor import DaskExecutor

    log = debug_log_path()
    restore = divert_logs(log)
    try:
        cluster = embedded_cluster()
        executor = DaskExecutor(Client(cluster), own_cluster=True)
    except BaseException:
        restore()
        raise
    executor.on_close.append(restore)
    executor.log_path = log
    try:
        executor.client.register_plugin(WorkerSetup(os.getcwd(), log))
    except BaseException:
        executor.close()
        raise
    return executor


def connect(client, *, security=None, allowed_failures: int | None = None):
    """Resolve the ``client=`` argument of :func:`tilegraph.run` to an executor.

    ``None``: an embedded cluster (closed after the run); ``"inprocess"``: no cluster at all; a
    scheduler address ``"tcp://host:8786"`` or ``"tls://host:8786"``; or a ``distributed.Client``.

    ``security`` (a ``distributed.security.Security``) is used to connect to an address; without it,
    dask's TLS configuration (``distributed.comm.tls.*``) applies. ``allowed_failures`` sets the
    scheduler's worker deaths per task before ``KilledWorker`` (default: the scheduler's own, 3).

    Raises
    ------
    tilegraph.errors.ClusterConnectionError
        The scheduler refused the connection, did not answer in time, or TLS failed.
    """
    from tilegraph.engine.dask_executor import DaskExecutor
    from tilegraph.engine.executor import InProcessExecutor

    if client in ("inprocess", "sync", "synchronous"):
        return InProcessExecutor()
    import dask
    from distributed import Client

    dask.config.set(DASK_CONFIG)
    if client is None:
        executor = _embedded_executor()
    elif isinstance(client, str):
        from tilegraph.engine.faults import connection_error

        timeout = dask.config.get("distributed.comm.timeouts.connect", "30s")
        try:
            # own_cluster=True: close() closes this Client we opened (it has no cluster object to close).
            kwargs = {"security": security} if security is not None else {}
            executor = DaskExecutor(Client(client, timeout=timeout, **kwargs), own_cluster=True)
        except (OSError, TimeoutError, TypeError, ValueError) as exc:
            raise connection_error(exc, client) from exc
    elif isinstance(client, Client):
        executor = DaskExecutor(client, own_cluster=False)
    else:
        raise ClusterError(
            f"client must be None, 'inprocess', an address or a distributed.Client, got {client!r}"
        )
    try:
        if allowed_failures is not None:
            executor.set_allowed_failures(allowed_failures)
        if executor.model_resources == {
            "GPU": 1
        }:  # start-up self-check: GPU restrictions reach the scheduler
            from tilegraph.cluster.checks import check_gpu_restrictions

            check_gpu_restrictions(executor.client)
    except BaseException:
        executor.close()
        raise
    return executor
