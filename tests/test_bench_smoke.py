"""The benchmark scripts under bench/ run end to end at the tiniest sizes and print their tables.

Timings are never checked here (benchmarks print ratios; tests do not time anything). The scripts
run as subprocesses in parallel to keep the wall time down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

CASES = {
    "bench_core_cpu.py": (
        [
            "--size",
            "128",
            "--tile",
            "64",
            "--overlap",
            "16",
            "--base",
            "4",
            "--blends",
            "crop",
            "--threads",
            "1",
        ],
        [
            "== bench_core_cpu (issue 2 a)",
            "1 model alone over tilegraph's windows",
            "2 tilegraph crop",
            "3 hand-written map_overlap chunks 48 depth 8",
            "ratio tilegraph crop / model alone =",
            "windows as planned: True, as many and as large as row 1's: True",
        ],
    ),
    "bench_memory.py": (
        ["--sizes", "128,256", "--workers", "1", "--tile", "64", "--overlap", "16"],
        [
            "== bench_memory (issue 2 b)",
            "worker peak MiB (sampled)",
            "client peak MiB",
            "128^2",
            "256^2",
            "ratio max/min over sizes of the largest worker peak:",
            "largest client peak during a run",
        ],
    ),
    "bench_scaling.py": (
        [
            "--workers",
            "1,2",
            "--per-worker",
            "4",
            "--cols",
            "2",
            "--sleep",
            "0.01",
            "--tile",
            "64",
            "--overlap",
            "16",
        ],
        ["== bench_scaling (issue 4)", "ideal N x single", "efficiency", "lowest efficiency"],
    ),
    "bench_detections.py": (
        ["--small", "500", "--large", "2000", "--repeat", "2", "--repeat-large", "1"],
        ["time per box at", "worst ratio: wall"],
    ),
    "bench_gpu.py": (
        [
            "--cpu",
            "--size",
            "128",
            "--tile",
            "64",
            "--overlap",
            "16",
            "--rrdb-size",
            "16",
            "--rrdb-tile",
            "8",
            "--rrdb-overlap",
            "2",
            "--threads",
            "1",
            "--blends",
            "crop",
        ],
        [
            "== tilegraph bench_gpu (CPU mode)",
            "U-Net table: 128x128",
            "RRDB x4 table",
            "ratio (d) crop / (a) model alone:",
            "ratio (d) crop / (b) MONAI:",
            "ratio (d) crop / (c) map_overlap:",
            "windows as planned, as many and as large as row (a)'s: True",
        ],
    ),
    "bench_normsync.py": (
        [
            "--size",
            "224",
            "--tile",
            "128",
            "--overlap",
            "32",
            "--latent",
            "56",
            "--latent-tile",
            "32",
            "--latent-overlap",
            "8",
            "--blends",
            "crop",
        ],
        ["== bench_normsync (issue 11)", "InstanceNorm:", "two GroupNorm:", "VAE-like decoder:", "exact "],
    ),
}


@pytest.mark.slow
def test_bench_scripts_run_and_print_tables(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = "error"
    procs = {}
    for script, (args, _) in CASES.items():
        log = open(tmp_path / f"{script}.log", "w")
        cmd = [sys.executable, str(BENCH / script), *args, "--workdir", str(tmp_path)]
        procs[script] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    failures = []
    for script, (proc, log) in procs.items():
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        log.close()
        out = (tmp_path / f"{script}.log").read_text()
        missing = [s for s in CASES[script][1] if s not in out]
        if rc != 0 or missing or _real_tracebacks(out):
            failures.append(f"{script}: rc={rc}, missing {missing}\n{out[-3000:]}")
    assert not failures, "\n\n".join(failures)


def _real_tracebacks(out: str) -> list[str]:
    """Tracebacks in a log, except distributed's own heartbeat noise while clusters shut down."""
    chunks = out.split("Traceback (most recent call last):")[1:]
    noise = ("CommClosedError", "StreamClosedError")
    return [c[:2000] for c in chunks if not any(n in c[:4000] for n in noise)]
