"""One Dask worker process per GPU, without dask-cuda.

dask-cuda cannot be installed beside dask/distributed 2026.8, so tilegraph pins GPUs itself: one
``distributed.Nanny`` per GPU id, each with ``CUDA_VISIBLE_DEVICES`` set to that single id (inside
the worker the GPU is then ``cuda:0``) and declaring ``resources={"GPU": 1}``. Model tasks are
submitted with ``resources={"GPU": 0.5}``, so two model tasks run per GPU worker at a time, taking
turns on the device (one batch at a time), while the worker's other threads blend and write.

Three equivalent forms are offered:

* :func:`gpu_cluster`: a ``SpecCluster`` on this machine (used by :func:`tilegraph.run` when no
  client is given and GPUs are visible);
* :func:`worker_commands` (with :func:`scheduler_command`): ``dask worker`` command lines, one per
  GPU, for a node of a batch system or a shell;
* :func:`gpu_spec`: the JSON for ``dask spec SCHEDULER --spec '...'``, all GPUs of a node in one
  command.

Every form also sets ``DASK_OPTIMIZATION__FUSE__ACTIVE=False`` in the worker environment (and
:func:`scheduler_command` on the scheduler, where it matters: in distributed 2026.8 the low-level
graph optimisation, which drops resource annotations, runs on the scheduler).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from typing import Any

from tilegraph.errors import ClusterError

__all__ = [
    "gpu_cluster",
    "worker_commands",
    "scheduler_command",
    "gpu_spec",
    "worker_env",
    "worker_name",
    "FUSION_ENV",
]

#: Environment that turns off low-level task fusion (which drops resource annotations).
FUSION_ENV = {"DASK_OPTIMIZATION__FUSE__ACTIVE": "False"}

#: Fewest threads per GPU worker: model tasks (up to two at once) and blending share them.
MIN_THREADS = 2

#: Default threads per GPU worker at least: two model tasks and one blend task at once.
DEFAULT_MIN_THREADS = 3


def _gpu_ids(gpus: Sequence[str | int] | None) -> list[str]:
    """Normalise ``gpus`` to a non-empty list of distinct id strings (default: the visible GPUs)."""
    if gpus is None:
        from tilegraph.cluster.local import visible_gpus

        ids = visible_gpus()
        if not ids:
            raise ClusterError(
                "no GPU is visible to this process",
                hint="pass gpus=[...] explicitly, or check CUDA_VISIBLE_DEVICES and nvidia-smi",
            )
    else:
        if isinstance(gpus, (str, int)):
            gpus = [gpus]
        ids = [str(g).strip() for g in gpus]
        if not ids or any(not g or "," in g for g in ids):
            raise ClusterError(f"gpus must be a non-empty list of single GPU ids, got {list(gpus)!r}")
    if len(set(ids)) != len(ids):
        raise ClusterError(f"GPU ids must be distinct, got {ids!r}", hint="each GPU gets exactly one worker")
    return ids


def _threads(threads: int | None, n_gpus: int) -> int:
    """Threads per GPU worker: the given number, or this machine's cores shared among the GPUs."""
    if threads is None:
        return max(DEFAULT_MIN_THREADS, (os.cpu_count() or 1) // n_gpus)
    threads = int(threads)
    if threads < MIN_THREADS:
        raise ClusterError(
            f"a GPU worker needs at least {MIN_THREADS} threads, got {threads}",
            hint="one thread runs the model; the others read, blend and write beside it",
        )
    return threads


def _memory_limit(memory_limit: str | float | int | None, n_gpus: int) -> str | float | int:
    """Per-worker memory limit; ``"auto"`` and ``None`` mean an equal share of the node's memory.

    Dask's own ``"auto"`` gives each worker ``nthreads / cores`` of the memory, which starves a GPU
    worker that has few threads on a many-core node; a fraction ``1 / n_gpus`` is resolved by each
    worker against the memory of the machine it runs on.
    """
    if memory_limit is None or memory_limit == "auto":
        return round(1.0 / n_gpus, 6)
    return memory_limit


def worker_name(gpu: str, prefix: str = "gpu-") -> str:
    """Name of the worker pinned to ``gpu``: ``gpu-<id>`` (``<prefix><id>``)."""
    return f"{prefix}{gpu}"


def worker_env(gpu: str) -> dict[str, str]:
    """Environment of the worker pinned to ``gpu``: ``CUDA_VISIBLE_DEVICES`` and fusion off."""
    return {"CUDA_VISIBLE_DEVICES": str(gpu), **FUSION_ENV}


def gpu_cluster(
    *,
    gpus: Sequence[str | int] | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | int | None = "auto",
    scheduler_port: int = 0,
    dashboard_address: str | None = ":0",
    cpu_workers: int = 0,
    cpu_threads: int = 4,
    lean: bool = True,
):
    """Start a local cluster with one worker process per GPU (and optional CPU-only workers).

    Parameters
    ----------
    gpus
        GPU ids (``"0"``, ``"1"``, UUIDs or MIG ids). ``None``: those visible to this process
        (:func:`tilegraph.cluster.local.visible_gpus`). Explicit ids need no GPU to be present,
        which is how tests run on CPU machines.
    threads_per_worker
        Threads per worker, at least 2 (the model uses one, reading, blending and writing the
        others). ``None``: this machine's cores divided among the GPUs, at least 2.
    memory_limit
        Per-worker memory limit as ``distributed`` accepts it (bytes, ``"16GB"``, a fraction of the
        machine's memory, ``0`` for none). ``"auto"`` or ``None``: an equal share, ``1 / len(gpus)``.
    scheduler_port
        Port of the scheduler (``0``: a free one). The scheduler listens on 127.0.0.1.
    cpu_workers, cpu_threads
        Extra worker processes without a GPU (``CUDA_VISIBLE_DEVICES=""``, no ``GPU`` resource) for
        blending and writing, so storage codecs run in several processes beside the GPU workers.
    dashboard_address
        Address of the dashboard (``":0"``: a free port; ``None``: no dashboard).
    lean
        Start the scheduler and workers with :data:`tilegraph.cluster.local.LEAN_CONFIG` (quiet
        monitoring, allocator settings; see :func:`tilegraph.cluster.local.lean_settings`);
        ``False`` keeps distributed's defaults.

    Returns
    -------
    distributed.SpecCluster
        Workers named ``gpu-<id>``, each a ``Nanny`` whose worker has
        ``CUDA_VISIBLE_DEVICES=<id>``, ``DASK_OPTIMIZATION__FUSE__ACTIVE=False`` and
        ``resources={"GPU": 1}``. The cluster does not scale: it has exactly one worker per GPU.

    Raises
    ------
    tilegraph.errors.ClusterError
        No GPU visible and none given, duplicate ids, or fewer than 2 threads per worker.

    Examples
    --------
    >>> from distributed import Client
    >>> cluster = gpu_cluster(gpus=["0", "1"])              # doctest: +SKIP
    >>> client = Client(cluster)                            # doctest: +SKIP
    >>> client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])  # doctest: +SKIP
    {'tcp://127.0.0.1:40123': '0', 'tcp://127.0.0.1:40125': '1'}
    """
    import dask
    from distributed import Nanny, Scheduler, SpecCluster

    from tilegraph.cluster.local import DASK_CONFIG, lean_settings

    ids = _gpu_ids(gpus)
    nthreads = _threads(threads_per_worker, len(ids))
    limit = _memory_limit(memory_limit, len(ids) + max(0, int(cpu_workers)))
    # The scheduler runs in this process: it optimises graphs with this process's config.
    dask.config.set(DASK_CONFIG)
    scheduler: dict[str, Any] = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "port": scheduler_port, "dashboard_address": dashboard_address},
    }
    if dashboard_address is None:
        scheduler["options"]["dashboard"] = False
        del scheduler["options"]["dashboard_address"]
    workers = {
        worker_name(g): {
            "cls": Nanny,
            "options": {
                "name": worker_name(g),
                "host": "127.0.0.1",
                "nthreads": nthreads,
                "memory_limit": limit,
                "resources": {"GPU": 1},
                "env": worker_env(g),
                "dashboard_address": ":0",
            },
        }
        for g in ids
    }
    for i in range(max(0, int(cpu_workers))):
        workers[f"cpu-{i}"] = {
            "cls": Nanny,
            "options": {
                "name": f"cpu-{i}",
                "host": "127.0.0.1",
                "nthreads": int(cpu_threads),
                "memory_limit": limit,
                "env": {**FUSION_ENV, "CUDA_VISIBLE_DEVICES": ""},
                "dashboard_address": ":0",
            },
        }
    # the scheduler (here) and the workers (the nannies pass this config on) read it when they start
    with lean_settings(lean):
        return SpecCluster(workers=workers, scheduler=scheduler, name="tilegraph-gpu")


def scheduler_command(*, host: str | None = None, port: int = 8786, dashboard_address: str = ":8787") -> str:
    """The ``dask scheduler`` command line, with fusion off in its environment.

    Parameters
    ----------
    host
        Address to listen on (``None``: dask's default, all interfaces).
    port
        Scheduler port.
    dashboard_address
        Dashboard address.

    Returns
    -------
    str
        E.g. ``DASK_OPTIMIZATION__FUSE__ACTIVE=False dask scheduler --port 8786 --dashboard-address :8787``.
        (The ``dask-scheduler`` console script was removed in distributed 2026.6.)
    """
    args = ["dask", "scheduler", "--port", str(port), "--dashboard-address", dashboard_address]
    if host:
        args += ["--host", host]
    return _shell(FUSION_ENV, args)


def worker_commands(
    scheduler_address: str,
    *,
    gpus: Sequence[str | int] | None = None,
    threads: int | None = None,
    memory_limit: str | float | int | None = None,
    name_prefix: str = "gpu-",
    executable: str = "dask",
    extra_args: Sequence[str] = (),
    lean: bool = True,
) -> list[str]:
    """``dask worker`` command lines equivalent to :func:`gpu_cluster`, one per GPU.

    Parameters
    ----------
    scheduler_address
        E.g. ``"tcp://10.0.0.5:8786"``.
    gpus
        GPU ids on the node where the commands will run (``None``: those visible here).
    threads
        ``--nthreads`` per worker, at least 2 (``None``: this machine's cores divided among the GPUs).
    memory_limit
        ``--memory-limit`` per worker (``None``: ``1/len(gpus)`` of the node's memory, resolved by
        each worker on its own node).
    name_prefix
        Worker names are ``<name_prefix><gpu id>``. Names must be unique in the whole cluster (the
        scheduler refuses a second worker with a taken name), so with several nodes include the
        host, e.g. ``name_prefix=f"{socket.gethostname()}-gpu-"``.
    executable
        The ``dask`` command (e.g. ``/opt/venv/bin/dask``). Never ``dask-worker``: that script was
        removed in distributed 2026.6.
    extra_args
        More ``dask worker`` options, appended as given (``--host``, ``--local-directory``, ...).
    lean
        Prefix the variables of :func:`tilegraph.cluster.local.lean_environ` (quiet monitoring,
        allocator settings), as :func:`gpu_cluster` does with ``lean=True``.

    Returns
    -------
    list of str
        Shell command lines, e.g.
        ``CUDA_VISIBLE_DEVICES=0 DASK_OPTIMIZATION__FUSE__ACTIVE=False DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False
        ... dask worker tcp://10.0.0.5:8786 --name gpu-0 --nthreads 8 --resources GPU=1 --memory-limit 0.5``.
        Run each in the background (``&``) on the GPU node.
    """
    ids = _gpu_ids(gpus)
    nthreads = _threads(threads, len(ids))
    limit = _memory_limit(memory_limit, len(ids))
    out = []
    for g in ids:
        args = [
            *shlex.split(executable),
            "worker",
            scheduler_address,
            "--name",
            worker_name(g, name_prefix),
            "--nthreads",
            str(nthreads),
            "--resources",
            "GPU=1",
            "--memory-limit",
            str(limit),
            *extra_args,
        ]
        env = worker_env(g)
        if lean:
            from tilegraph.cluster.local import lean_environ

            env = {**env, **lean_environ()}
        out.append(_shell(env, args))
    return out


def gpu_spec(
    *,
    gpus: Sequence[str | int] | None = None,
    threads: int | None = None,
    memory_limit: str | float | int | None = None,
    name_prefix: str = "gpu-",
) -> str:
    """JSON for ``dask spec SCHEDULER --spec '<json>'``: all GPU workers of a node in one command.

    Parameters
    ----------
    gpus, threads, memory_limit, name_prefix
        As in :func:`worker_commands`.

    Returns
    -------
    str
        ``{"gpu-0": {"cls": "distributed.Nanny", "opts": {"name": "gpu-0", "nthreads": ...,
        "memory_limit": ..., "resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": "0", ...}}}, ...}``.
        The scheduler's address is given to ``dask spec`` as its first argument.
    """
    ids = _gpu_ids(gpus)
    nthreads = _threads(threads, len(ids))
    limit = _memory_limit(memory_limit, len(ids))
    spec = {
        worker_name(g, name_prefix): {
            "cls": "distributed.Nanny",
            "opts": {
                "name": worker_name(g, name_prefix),
                "nthreads": nthreads,
                "memory_limit": limit,
                "resources": {"GPU": 1},
                "env": worker_env(g),
            },
        }
        for g in ids
    }
    return json.dumps(spec)


def _shell(env: dict[str, str], args: Sequence[str]) -> str:
    """A shell command line ``VAR=value ... arg ...`` with every part quoted as needed."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *(shlex.quote(a) for a in args)])
