"""Cluster deployment: per-GPU workers, real ``dask scheduler``/``dask worker`` processes, the GPU
self-check and cancellation on Ctrl-C.

Runs on a CPU-only machine: GPU ids are fake (``gpus=["0", "1"]``), which is enough to check the
pinning (each worker's ``CUDA_VISIBLE_DEVICES``) and the placement (``resources={"GPU": 1}``).
Clusters are module-scoped to keep the file fast.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from distributed import Client, LocalCluster, get_task_stream  # noqa: E402

import tilegraph  # noqa: E402
from tilegraph.cluster.checks import check_gpu_restrictions  # noqa: E402
from tilegraph.cluster.gpu import FUSION_ENV, gpu_cluster, gpu_spec, scheduler_command, worker_commands  # noqa: E402
from tilegraph.cluster.local import connect, lean_environ  # noqa: E402
from tilegraph.engine.dask_executor import DaskExecutor  # noqa: E402
from tilegraph.errors import ClusterError, ResourceRestrictionError  # noqa: E402

DASK = str(Path(sys.executable).with_name("dask"))
JOB = dict(tile=64, overlap=16, progress=False)


# --------------------------------------------------------------------------- helpers and fixtures


def _numpy_models():
    """Plain numpy models, defined in a function so that cloudpickle ships them by value.

    Workers then import neither this test module nor torch (``tilegraph.testing.models`` imports
    torch, which costs seconds in every fresh worker process on a small machine).
    """

    def identity(batch):
        return np.array(batch, copy=True)

    def window_dependent(batch):  # depends on the whole window: any placement difference would show
        return (np.sqrt(batch) + batch.mean(axis=(2, 3), keepdims=True)).astype(np.float32)

    def slow_identity(batch):  # simulated GPU time, no CPU work
        time.sleep(0.1 * len(batch))
        return np.array(batch, copy=True)

    return identity, window_dependent, slow_identity


IDENTITY, WINDOW_DEPENDENT, SLOW_IDENTITY = _numpy_models()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _tg_keys_on_scheduler(dask_scheduler) -> list[str]:
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith("tg-")]


def _tg_keys_on_worker(dask_worker) -> list[str]:
    return [str(k) for k in dask_worker.state.tasks if str(k).startswith("tg-")]


def _running_infer(dask_scheduler) -> int:
    return sum(
        1
        for k, ts in dask_scheduler.tasks.items()
        if str(k).startswith("tg-infer-") and ts.state == "processing"
    )


def _poll(fn, *, timeout: float, interval: float = 0.1):
    """Call ``fn`` until it returns something falsy or ``timeout`` passes; returns the last value."""
    deadline = time.monotonic() + timeout
    value = fn()
    while value and time.monotonic() < deadline:
        time.sleep(interval)
        value = fn()
    return value


def _split_env(command: str) -> tuple[dict[str, str], list[str]]:
    """Split ``VAR=value ... argv`` (what :func:`worker_commands` returns) into env and argv."""
    tokens = shlex.split(command)
    env = {}
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        k, _, v = tokens.pop(0).partition("=")
        env[k] = v
    return env, tokens


class _Processes:
    """Subprocesses started by one fixture, each in its own session so its children stop with it."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = self.directory / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.procs)

    def stop(self) -> None:
        for proc, _ in reversed(self.procs):  # workers first, then the scheduler
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """``dask scheduler`` plus two ``dask worker`` processes: ``gpu-0`` (GPU=1) and ``cpu-0`` (none)."""
    directory = tmp_path_factory.mktemp("cli-cluster")
    scheduler_file = directory / "scheduler.json"
    base_env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    procs = _Processes(directory)
    client = None
    try:
        scheduler = procs.start(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            {**base_env, **FUSION_ENV},
            "scheduler",
        )
        deadline = time.monotonic() + 60
        address = None
        while address is None:
            if scheduler.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dask scheduler did not start\n{procs.logs()}")
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        local = ["--host", "127.0.0.1", "--no-dashboard"]
        (gpu_command,) = worker_commands(address, gpus=["0"], threads=2, executable=DASK, extra_args=local)
        env, argv = _split_env(gpu_command)
        procs.start(argv, {**base_env, **env}, "worker-gpu-0")
        procs.start(
            [DASK, "worker", address, "--name", "cpu-0", "--nthreads", "2", *local],
            {**base_env, **FUSION_ENV},
            "worker-cpu-0",
        )
        client = Client(address, timeout="30s")
        try:
            client.wait_for_workers(2, timeout=90)
        except TimeoutError:
            pytest.fail(f"dask workers did not start\n{procs.logs()}")
        yield address, client
    finally:
        if client is not None:
            client.close()
        procs.stop()


@pytest.fixture(scope="module")
def gpu_client():
    """:func:`gpu_cluster` with two fake GPUs on this CPU machine."""
    with gpu_cluster(gpus=["0", "1"], threads_per_worker=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture(scope="module")
def local_cluster():
    """A ``LocalCluster`` of two worker processes declaring no resources."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def local_client(local_cluster):
    with Client(local_cluster) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


# --------------------------------------------------------------------------- (a) per-GPU helper


def test_gpu_cluster_pins_one_gpu_per_worker(gpu_client):
    visible = gpu_client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    fusion = gpu_client.run(lambda: os.environ.get("DASK_OPTIMIZATION__FUSE__ACTIVE"))
    info = gpu_client.run(
        lambda dask_worker: (
            dask_worker.name,
            dict(dask_worker.state.total_resources),
            dask_worker.state.nthreads,
        )
    )
    assert sorted(visible.values()) == ["0", "1"]  # each worker sees a different, single GPU
    assert set(fusion.values()) == {"False"}
    for address, (name, resources, nthreads) in info.items():
        assert name == f"gpu-{visible[address]}"
        assert resources == {"GPU": 1}
        assert nthreads >= 2  # reads, blends and writes run beside the model


def test_worker_commands_and_spec_match_gpu_cluster():
    commands = worker_commands("tcp://10.0.0.5:8786", gpus=[0, "1"], threads=4, memory_limit="16GB")
    assert len(commands) == 2
    for gpu, command in zip(["0", "1"], commands, strict=True):
        env, argv = _split_env(command)
        assert env == {"CUDA_VISIBLE_DEVICES": gpu, **FUSION_ENV, **lean_environ()}
        assert argv[:3] == ["dask", "worker", "tcp://10.0.0.5:8786"]
        options = dict(zip(argv[3::2], argv[4::2], strict=True))
        assert options == {
            "--name": f"gpu-{gpu}",
            "--nthreads": "4",
            "--resources": "GPU=1",
            "--memory-limit": "16GB",
        }
    assert "dask-worker" not in " ".join(commands)
    (plain,) = worker_commands("tcp://10.0.0.5:8786", gpus=["0"], threads=4, lean=False)
    assert _split_env(plain)[0] == {"CUDA_VISIBLE_DEVICES": "0", **FUSION_ENV}
    assert scheduler_command(port=8786).split()[:3] == [
        "DASK_OPTIMIZATION__FUSE__ACTIVE=False",
        "dask",
        "scheduler",
    ]

    spec = json.loads(gpu_spec(gpus=["0", "1"], threads=2))
    assert set(spec) == {"gpu-0", "gpu-1"}
    assert spec["gpu-1"]["cls"] == "distributed.Nanny"
    assert spec["gpu-1"]["opts"]["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert spec["gpu-1"]["opts"]["resources"] == {"GPU": 1}
    assert spec["gpu-1"]["opts"]["memory_limit"] == 0.5  # an equal share of the node's memory


@pytest.mark.parametrize(
    "kwargs", [dict(gpus=["0", "0"]), dict(gpus=["0,1"]), dict(gpus=[]), dict(gpus=["0"], threads=1)]
)
def test_worker_commands_refuse_bad_settings(kwargs):
    with pytest.raises(ClusterError):
        worker_commands("tcp://10.0.0.5:8786", **kwargs)


# --------------------------------------------------------------------------- (b) dask scheduler + dask worker


def test_cli_cluster_model_tasks_run_only_on_the_gpu_worker(cli_cluster, tmp_path):
    address, client = cli_cluster
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpu_workers = {a for a, w in workers.items() if (w.get("resources") or {}).get("GPU")}
    assert {w["name"] for w in workers.values()} == {"gpu-0", "cpu-0"}
    assert len(gpu_workers) == 1
    assert set(
        client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"), workers=list(gpu_workers)).values()
    ) == {"0"}

    image = _image(256, 256)
    with get_task_stream(client) as stream:
        result = tilegraph.run(
            image,
            tmp_path / "o.zarr",
            model=IDENTITY,
            batch_size=2,
            batches_per_task=1,
            client=address,
            **JOB,
        )
    np.testing.assert_array_equal(result.output[...], image)

    model_tasks = [t for t in stream.data if str(t["key"]).startswith(("tg-infer-", "tg-probe-"))]
    n_tasks = result.extra["model_tasks"]
    assert sum(str(t["key"]).startswith("tg-infer-") for t in model_tasks) == n_tasks > 1
    assert {t["worker"] for t in model_tasks} == gpu_workers
    # The self-check in connect() ran through the same path and landed on the GPU worker as well.
    checks = [t for t in stream.data if str(t["key"]).startswith("tg-check-gpu-")]
    assert checks and {t["worker"] for t in checks} == gpu_workers
    # connect() opened a Client for the address; run() must have closed it again.
    others = _poll(
        lambda: [
            c
            for c in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients))
            if c not in ("fire-and-forget", client.id)
        ],
        timeout=10,
    )
    assert others == []


def test_cli_cluster_gpu_worker_started_from_worker_commands_is_lean(cli_cluster):
    _, client = cli_cluster
    workers = client.scheduler_info(n_workers=-1)["workers"]
    (gpu,) = [a for a, w in workers.items() if w["name"] == "gpu-0"]

    def settings():
        import os

        import dask

        return (
            os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.admin.system-monitor.interval"),
        )

    got = client.run(settings, workers=[gpu])[gpu]
    assert got == (str(32 * 2**20), str(64 * 2**20), False, "2s")


def test_cli_cluster_self_check_reports_the_gpu_worker(cli_cluster):
    _, client = cli_cluster
    report = check_gpu_restrictions(client)
    assert report["restrictions"] == {"GPU": 1}
    assert report["worker_name"] == "gpu-0"
    assert report["cuda_visible_devices"] == "0"
    assert list(report["gpu_workers"].values()) == ["gpu-0"]
    assert report["scheduler_fuse_active"] is False  # DASK_OPTIMIZATION__FUSE__ACTIVE reached the scheduler


# --------------------------------------------------------------------------- (c) LocalCluster == in-process


def test_local_cluster_output_equals_in_process(local_client, tmp_path):
    image = _image(200, 232, seed=1)
    kwargs = dict(model=WINDOW_DEPENDENT, output_dtype="float32", blend="cosine", **JOB)
    expected = tilegraph.run(image, tmp_path / "inprocess.zarr", client="inprocess", **kwargs)
    got = tilegraph.run(image, tmp_path / "cluster.zarr", client=local_client, **kwargs)
    assert got.plan.n_windows > 4
    np.testing.assert_array_equal(got.output[...], expected.output[...])
    assert local_client.status == "running"  # a client given by the caller is left open


def test_local_cluster_runs_the_output_kinds(local_client, tmp_path):
    """Labels, detections and masks cross process boundaries (kinds, candidates and tables pickle)."""
    from tilegraph.testing.task_models import BlobDetector, ConnectedComponents, separate_objects_image

    image = separate_objects_image((300, 360), n_objects=40, seed=6, boxes_apart=True)
    run = dict(tile=128, overlap=48, blend="crop")
    labels = {
        c: np.asarray(
            tilegraph.run(
                image, tmp_path / f"{i}.zarr", model=ConnectedComponents(), task="labels", client=c, **run
            ).output
        )
        for i, c in enumerate(("inprocess", local_client))
    }
    np.testing.assert_array_equal(labels["inprocess"], labels[local_client])
    boxes = [
        tilegraph.run(image, None, model=BlobDetector(), task="detections", client=c, **run).detections
        for c in ("inprocess", local_client)
    ]
    np.testing.assert_array_equal(boxes[0], boxes[1])
    mask = np.zeros(image.shape[:2], bool)
    mask[:100, :120] = True
    got = tilegraph.run(
        image,
        tmp_path / "m.zarr",
        model=numpy_identity_float,
        mask=mask,
        mask_fill=0,
        client=local_client,
        **run,
    )
    out = np.asarray(got.output)
    assert got.extra["mask"]["windows_run"] < got.plan.n_windows
    np.testing.assert_array_equal(out[:100, :120], image[:100, :120])
    assert not out[100:].any() and not out[:, 120:].any()


def numpy_identity_float(batch: np.ndarray) -> np.ndarray:
    """A numpy model returning its input (module level, so that workers can unpickle it)."""
    return np.asarray(batch, np.float32)


# --------------------------------------------------------------------------- (d) Ctrl-C cancels the job


def test_keyboard_interrupt_cancels_the_job_on_the_cluster(local_cluster, local_client, tmp_path):
    image = _image(512, 512, seed=2)
    model = SLOW_IDENTITY  # 0.1 s per window, 121 windows: about 6 s on two workers, far longer than we wait
    main = threading.main_thread().ident
    lock = threading.Lock()
    state = {"armed": True, "fired": False}

    def interrupt_once_the_model_runs():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = local_client.run_on_scheduler(_running_infer)
            with lock:
                if not state["armed"]:
                    return
                if running:
                    state["fired"] = True
                    signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C delivers
                    return
            time.sleep(0.05)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    caught = None
    try:
        with Client(local_cluster) as client:  # the job's own client: closing it would release everything
            timer = threading.Thread(target=interrupt_once_the_model_runs, daemon=True)
            try:
                try:
                    timer.start()
                    tilegraph.run(
                        image,
                        tmp_path / "o.zarr",
                        model=model,
                        batch_size=2,
                        batches_per_task=1,
                        client=client,
                        **JOB,
                    )
                finally:
                    with lock:
                        state["armed"] = False
            except KeyboardInterrupt as exc:
                caught = exc
            timer.join(timeout=5)
            # Checked while the job's client is still open: nothing of the job may remain.
            left_on_scheduler = _poll(
                lambda: local_client.run_on_scheduler(_tg_keys_on_scheduler), timeout=15
            )
            left_on_workers = _poll(
                lambda: [k for keys in local_client.run(_tg_keys_on_worker).values() for k in keys],
                timeout=15,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert state["fired"] and isinstance(caught, KeyboardInterrupt)
    assert left_on_scheduler == []
    assert left_on_workers == []


# --------------------------------------------------------------------------- (e) start-up self-check


def test_self_check_passes_on_gpu_workers(gpu_client):
    report = check_gpu_restrictions(gpu_client)
    assert report["restrictions"] == {"GPU": 1}
    assert report["worker_name"] in ("gpu-0", "gpu-1")
    assert report["cuda_visible_devices"] == report["worker_name"].removeprefix("gpu-")
    assert sorted(report["gpu_workers"].values()) == ["gpu-0", "gpu-1"]


def test_self_check_raises_without_gpu_workers(local_client):
    with pytest.raises(ResourceRestrictionError, match="declares the GPU resource"):
        check_gpu_restrictions(local_client)


def test_connect_runs_the_self_check_and_catches_dropped_restrictions(gpu_client, monkeypatch):
    executor = connect(gpu_client)
    assert executor.model_resources == {"GPU": 1}

    original = DaskExecutor.submit

    def submit_dropping_resources(self, fn, *args, key, resources=None):
        return original(self, fn, *args, key=key, resources=None)

    monkeypatch.setattr(DaskExecutor, "submit", submit_dropping_resources)  # a regression that loses them
    with pytest.raises(ResourceRestrictionError, match="reached the scheduler with restrictions"):
        connect(gpu_client)
    assert gpu_client.status == "running"  # the caller's client is not closed by a failed check


def test_run_with_a_client_that_is_not_the_default(tmp_path):
    import numpy as np
    from distributed import Client, LocalCluster

    import tilegraph

    img = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as client:
            res = tilegraph.run(img, tmp_path / "o.zarr", model=IDENTITY, tile=32, overlap=8, client=client)
    np.testing.assert_array_equal(np.asarray(res.output[:]), img)


def test_embedded_cpu_cluster_lets_the_model_use_the_cores():
    from distributed import Client

    from tilegraph.cluster.local import embedded_cluster

    with embedded_cluster() as cluster, Client(cluster) as client:
        threads = client.run(lambda: __import__("os").environ.get("OMP_NUM_THREADS"))
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
    expected = str(max(1, (__import__("os").cpu_count() or 1)))
    assert set(threads.values()) == {expected}
    assert resources == [{"MODEL": 1}]


def test_embedded_cluster_is_lean_and_runs_two_model_tasks_per_worker():
    """Quiet monitoring, heap-friendly allocator settings, and a thread for blending beside two model tasks."""
    import dask
    from distributed import Client

    from tilegraph.cluster.local import LEAN_CONFIG, embedded_cluster

    def settings():
        import os

        import dask

        return (
            os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            os.environ.get("MALLOC_ARENA_MAX"),
            dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.admin.tick.interval"),
        )

    with embedded_cluster(n_workers=1) as cluster, Client(cluster) as client:
        (got,) = client.run(settings).values()
        (nthreads,) = client.nthreads().values()
        executor = DaskExecutor(client)
        assert executor.model_resources == {"MODEL": 1}  # exclusive model work (probe, autotile)
        assert executor.infer_resources == {"MODEL": 0.5}  # two model tasks at once
    assert got == (str(32 * 2**20), str(64 * 2**20), "2", False, "1s")
    assert nthreads == max(2, os.cpu_count() or 1) + 1
    # the settings were scoped to starting the cluster: this process's config and environment are untouched
    assert dask.config.get("distributed.worker.profile.enabled") is True
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
    assert LEAN_CONFIG["distributed.worker.profile.enabled"] is False

    with embedded_cluster(n_workers=1, lean=False) as cluster, Client(cluster) as client:
        (got,) = client.run(settings).values()
    assert got[0] is None and got[2] is None and got[3] is True  # distributed's defaults


def _ordering_functions():
    """Functions shipped by value (see _numpy_models): a slow task, one that must come after it, a failing one."""

    def slow(path):
        import time

        time.sleep(0.5)
        end = time.time()
        with open(path, "w") as fh:
            fh.write(repr(end))
        return end

    def after(path):  # takes one argument: a Dask dependency would have passed the slow task's result too
        import time

        with open(path) as fh:
            ended = float(fh.read())
        return {"started": time.time(), "slow_ended": ended}

    def fails(path):
        raise ValueError(f"broken on purpose ({path})")

    return slow, after, fails


def test_deferred_tasks_start_after_their_predecessors_without_their_results(local_client, tmp_path):
    from tilegraph.engine.dask_executor import Deferred

    slow, after, fails = _ordering_functions()
    ex = DaskExecutor(local_client)
    token = os.urandom(4).hex()
    path = str(tmp_path / "stamp")
    first = ex.map(slow, [path], keys=[f"tg-test-slow-{token}"])
    (second,) = ex.map(after, [path], keys=[f"tg-test-after-{token}"], after=[first])
    assert isinstance(second, Deferred)
    assert second.future is None  # held on the client while the slow task runs
    results = ex.wait(first + [second])
    assert results[1]["slow_ended"] == results[0]
    assert results[1]["started"] >= results[0]
    deps = local_client.run_on_scheduler(
        lambda dask_scheduler, key: len(dask_scheduler.tasks[key].dependencies), key=second.key
    )
    assert deps == 0  # ordering only: nothing was transferred
    # result() alone also waits for the predecessors and submits the task
    (again,) = ex.map(after, [path], keys=[f"tg-test-again-{token}"], after=[first])
    assert again.result()["slow_ended"] == results[0]

    # a failing predecessor raises its own error and its followers are never submitted
    bad = ex.map(fails, [path], keys=[f"tg-test-fails-{token}"])
    (never,) = ex.map(after, [path], keys=[f"tg-test-never-{token}"], after=[bad])
    with pytest.raises(ValueError, match="broken on purpose"):
        ex.wait(bad + [never])
    assert never.future is None and never.status == "cancelled"


def _turn_taking_model(log_dir):
    """A numpy model that logs when each forward pass starts and ends, per process (shipped by value)."""

    def model(batch):
        import os
        import time

        start = time.time()
        time.sleep(0.15)
        with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a") as fh:
            fh.write(f"{start} {time.time()}\n")
        return np.array(batch, copy=True)

    return model


def test_two_model_tasks_per_worker_take_turns_on_the_model(gpu_client, tmp_path):
    """Model tasks overlap on a worker (one reads/writes while the other computes), forward passes never do."""
    log_dir = tmp_path / "forward"
    log_dir.mkdir()
    image = _image(256, 256, seed=3)
    with get_task_stream(gpu_client) as stream:
        result = tilegraph.run(
            image,
            tmp_path / "o.zarr",
            model=_turn_taking_model(str(log_dir)),
            batch_size=2,
            client=gpu_client,
            **JOB,
        )
    np.testing.assert_array_equal(result.output[...], image)
    # forward passes within one worker process never overlap
    for log in log_dir.iterdir():
        spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
        assert len(spans) > 1
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:], strict=False)), spans
    # but two model tasks did run at the same time on one worker
    infer = [t for t in stream.data if str(t["key"]).startswith("tg-infer-")]
    assert len(infer) == result.extra["model_tasks"] >= len(result.plan.tasks())
    by_worker: dict = {}
    for t in infer:
        (compute,) = [s for s in t["startstops"] if s["action"] == "compute"]
        by_worker.setdefault(t["worker"], []).append((compute["start"], compute["stop"]))
    overlapped = False
    for spans in by_worker.values():
        spans.sort()
        overlapped |= any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
    assert overlapped
