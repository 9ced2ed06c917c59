"""The deployment files under ``cluster/``: valid YAML and shell, and no removed console scripts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1] / "cluster"
SBATCH = ROOT / "slurm" / "tilegraph-gpu.sbatch"
K8S = ROOT / "kubernetes" / "daskcluster.yaml"
REMOVED = ("dask-scheduler", "dask-worker")  # console scripts removed in distributed 2026.6


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["spec"]["containers"]


def _command(container: dict) -> list[str]:
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


@pytest.fixture(scope="module")
def k8s_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def test_daskcluster_overrides_the_removed_commands(k8s_documents):
    (cluster,) = [d for d in k8s_documents if d["kind"] == "DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"

    (scheduler,) = _containers(cluster["spec"]["scheduler"])
    scheduler_cmd = _command(scheduler)
    assert scheduler_cmd[:2] == ["dask", "scheduler"]
    env = {e["name"]: e["value"] for e in scheduler.get("env", [])}
    assert env.get("DASK_OPTIMIZATION__FUSE__ACTIVE") == "False"  # fusion runs on the scheduler
    assert "nvidia.com/gpu" not in str(scheduler.get("resources", {}))

    (worker,) = _containers(cluster["spec"]["worker"])
    worker_cmd = _command(worker)
    assert worker_cmd[:2] == ["dask", "worker"]
    assert worker_cmd[worker_cmd.index("--resources") + 1] == "GPU=1"
    assert int(worker_cmd[worker_cmd.index("--nthreads") + 1]) >= 2
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    from tilegraph.cluster.local import lean_environ

    worker_env = {e["name"]: e["value"] for e in worker.get("env", [])}
    assert {k: worker_env.get(k) for k in lean_environ()} == lean_environ()  # lean workers


def test_no_yaml_command_uses_a_removed_script(k8s_documents):
    commands = []
    for doc in k8s_documents:
        spec = doc["spec"]
        for part in ("scheduler", "worker"):
            if part in spec:
                commands += [_command(c) for c in _containers(spec[part])]
    assert len(commands) == 3  # scheduler, GPU workers, optional CPU workers
    for command in commands:
        assert command and command[0] == "dask"
        assert not set(command) & set(REMOVED)


def test_cpu_worker_group_declares_no_gpu(k8s_documents):
    (group,) = [d for d in k8s_documents if d["kind"] == "DaskWorkerGroup"]
    (cluster,) = [d for d in k8s_documents if d["kind"] == "DaskCluster"]
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]
    (worker,) = _containers(group["spec"]["worker"])
    assert "--resources" not in _command(worker)
    assert "nvidia.com/gpu" not in str(worker.get("resources", {}))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_sbatch_script_pins_one_gpu_per_worker_with_the_dask_cli():
    text = SBATCH.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))  # no comments
    assert "#SBATCH --gres=gpu:" in text
    assert "srun" in code
    assert "export CUDA_VISIBLE_DEVICES=$gpu" in code
    assert '"$DASK" scheduler' in code and '"$DASK" worker' in code
    assert "--resources GPU=1" in code
    assert "DASK_OPTIMIZATION__FUSE__ACTIVE=False" in code
    for removed in REMOVED:
        assert removed not in code


def test_readme_names_the_files_and_the_pitfalls():
    text = (ROOT / "README.md").read_text()
    for needle in (
        "slurm/tilegraph-gpu.sbatch",
        "kubernetes/daskcluster.yaml",
        "DASK_OPTIMIZATION__FUSE__ACTIVE=False",
        "dask-scheduler",
        "--resources GPU=1",
        "CUDA_VISIBLE_DEVICES",
    ):
        assert needle in text


def test_sbatch_script_starts_lean_workers():
    """The SLURM script exports exactly tilegraph's lean settings (kept in step with LEAN_CONFIG)."""
    import re

    from tilegraph.cluster.local import lean_environ

    exported = dict(re.findall(r"\b(DASK_DISTRIBUTED__\w+|MALLOC_[A-Z_]+)=(\S+)", SBATCH.read_text()))
    assert exported == lean_environ()


def test_tls_variants_pass_the_certificates_everywhere():
    """Kubernetes: scheduler and GPU workers take the same three files, the scheduler listens on tls only;
    SLURM: the same flags reach the scheduler, every worker and `tilegraph run`."""
    (cluster,) = [
        d for d in yaml.safe_load_all((ROOT / "kubernetes" / "daskcluster-tls.yaml").read_text()) if d
    ]
    (scheduler,) = _containers(cluster["spec"]["scheduler"])
    (worker,) = _containers(cluster["spec"]["worker"])
    for cmd in (_command(scheduler), _command(worker)):
        assert cmd[0] == "dask" and not set(cmd) & set(REMOVED)
        for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
            assert cmd[cmd.index(flag) + 1].startswith("/etc/tilegraph-tls/")
    sched = _command(scheduler)
    assert sched[sched.index("--protocol") + 1] == "tls"
    assert _command(worker)[_command(worker).index("--resources") + 1] == "GPU=1"
    code = "\n".join(line for line in SBATCH.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert code.count('${TLS_ARGS[@]+"${TLS_ARGS[@]}"}') == 2  # the scheduler and `tilegraph run`
    assert '${tls[@]+"${tls[@]}"}' in code and "--protocol tls" in code
