"""Scaling of tilegraph with the number of worker processes on one machine (issue 4, scaling).

Pinned configuration: a model that sleeps 200 ms per 512^2 window and does no CPU work (a numpy callable
returning its input; ``--model torch`` uses ``tilegraph.testing.models.SleepModel`` instead), windows of
512 with overlap 64, cosine blending, batch 4, on a random uint8 one-channel Zarr (chunks 1024, zstd) so
that I/O stays small. For each N in 1, 2, 4, 8: a fresh ``embedded_cluster(n_workers=N)`` (N worker
processes declaring ``MODEL=1``; model tasks ask for 0.5, so two run per worker and take turns on the
model, which sleeps for one batch at a time), started and warmed before the clock by a run that gives
every worker a model task; the image has ``--per-worker`` (32) windows per worker (a grid of 4N x 8
windows), so the ideal wall time is the same for every N (32 x 0.2 s = 6.4 s of sleeping per worker).
``--per-worker 64`` doubles the job, which halves the weight of the fixed start (probe, first reads)
and end (last blends, clean-up) against the steady throughput.

Each N is timed ``--repeats`` (3) times on the same cluster and the median run counts (this machine is
shared and noisy; all runs are printed). Printed per N: windows/s, the ideal N x the single-worker
figure, the efficiency (acceptance: >= 0.9 up to N = 8, printed, not asserted), and where the CPU went: CPU seconds of the workers and of this process
(client plus the LocalCluster's scheduler, which runs here) per window, of all processes (those two, the
nannies and anything else the cluster runs) per window, and the cores busy on average (all processes).
With two cores, N = 8 at 5 windows/s per worker leaves about 50 ms of CPU per window for everything
tilegraph and Dask do; the CPU columns show whether that is the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from _common import cpu_seconds, fmt_rows, tree_cpu_seconds, w_cpu_seconds, write_random_zarr


class SleepPerWindow:
    """Numpy model: sleeps ``seconds`` per window of the batch, returns the batch itself (no CPU work)."""

    __name__ = "SleepPerWindow"

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds * batch.shape[0])
        return batch


def make_model(kind: str, seconds: float):
    if kind == "torch":
        from tilegraph.testing.models import SleepModel

        return SleepModel(seconds_per_window=seconds)
    return SleepPerWindow(seconds)


def _batches_per_task(args) -> int:
    """Batches per model task: the option given, else tilegraph.run's default."""
    import inspect

    import tilegraph

    if args.batches_per_task is not None:
        return args.batches_per_task
    return int(inspect.signature(tilegraph.run).parameters["batches_per_task"].default)


def run_n(n: int, args, work: str, model) -> dict:
    from distributed import Client

    import tilegraph
    from tilegraph.cluster.local import embedded_cluster

    stride = args.tile - args.overlap
    gy, gx = args.per_worker * n // args.cols, args.cols
    shape = (gy * stride + args.overlap, gx * stride + args.overlap)
    in_path, out_path = f"{work}/in-{n}.zarr", f"{work}/out-{n}.zarr"
    write_random_zarr(in_path, shape, args.channels, chunk=1024, seed=n)
    # the warm-up gives every worker a model task and blends (model tasks are dealt round-robin), so
    # that no worker pays its first imports (torch: about 3 s here) on the clock
    warm = f"{work}/warm-{n}.zarr"
    warm_rows = -(-n * args.batch * _batches_per_task(args) // args.cols) + 1
    write_random_zarr(
        warm,
        (warm_rows * stride + args.overlap, args.cols * stride + args.overlap),
        args.channels,
        chunk=1024,
        seed=0,
    )
    kw = dict(
        model=model,
        tile=args.tile,
        overlap=args.overlap,
        blend=args.blend,
        batch_size=args.batch,
        overwrite=True,
        progress=False,
    )
    if args.batches_per_task is not None:
        kw["batches_per_task"] = args.batches_per_task
    cluster = embedded_cluster(n_workers=n, threads_per_worker=args.threads_per_worker)
    client = Client(cluster)
    try:
        client.wait_for_workers(n)
        nthreads = sorted(set(client.nthreads().values()))
        t = time.perf_counter()
        tilegraph.run(warm, f"{work}/warm-out-{n}.zarr", client=client, **kw)
        warm_s = time.perf_counter() - t
        runs = []
        for _ in range(args.repeats):
            w0 = client.run(w_cpu_seconds)
            c0, a0 = cpu_seconds(), tree_cpu_seconds()
            t = time.perf_counter()
            res = tilegraph.run(in_path, out_path, client=client, **kw)
            wall = time.perf_counter() - t
            c1, a1 = cpu_seconds(), tree_cpu_seconds()
            w1 = client.run(w_cpu_seconds)
            wcpu = sum(w1[k] - w0[k] for k in w1 if k in w0)
            runs.append((wall, res, wcpu, c1 - c0, a1 - a0))
    finally:
        with contextlib.suppress(Exception):
            client.close()
        with contextlib.suppress(Exception):
            cluster.close()
        for path in (in_path, out_path, warm, f"{work}/warm-out-{n}.zarr"):
            shutil.rmtree(path, ignore_errors=True)
    runs.sort(key=lambda r: r[0])
    wall, res, wcpu, ccpu, acpu = runs[len(runs) // 2]  # the median run (by wall time)
    windows = res.plan.n_windows
    return {
        "n": n,
        "shape": shape,
        "windows": windows,
        "wall_s": wall,
        "walls": [r[0] for r in runs],
        "warm_s": warm_s,
        "wps": windows / wall,
        "worker_cpu_s": wcpu,
        "client_cpu_s": ccpu,
        "all_cpu_s": acpu,
        "threads": nthreads,
        "timings": res.timings,
        "tasks": len(res.plan.tasks()) if hasattr(res.plan, "tasks") else len(res.plan.batches()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2,4,8", help="comma list of worker process counts")
    p.add_argument("--per-worker", type=int, default=32, help="windows per worker (multiple of --cols)")
    p.add_argument("--cols", type=int, default=8, help="windows per image row")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds per window")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--blend", default="cosine")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument(
        "--batches-per-task", type=int, default=None, help="passed to tilegraph.run (default: its own)"
    )
    p.add_argument("--threads-per-worker", type=int, default=None, help="default: embedded_cluster's choice")
    p.add_argument("--model", choices=("numpy", "torch"), default="numpy")
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs per N on the same cluster; the median counts"
    )
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if args.per_worker % args.cols:
        p.error("--per-worker must be a multiple of --cols")
    ns = [int(x) for x in args.workers.split(",")]
    import tilegraph

    model = make_model(args.model, args.sleep)
    print(
        f"bench_scaling: N in {ns}, {args.model} model sleeping {args.sleep * 1000:.0f} ms per window, tile {args.tile}, "
        f"overlap {args.overlap}, blend {args.blend}, batch {args.batch}, batches per task "
        f"{args.batches_per_task or 'tilegraph default'}, {args.channels}-channel uint8, "
        f"{args.per_worker} windows per worker; tilegraph {tilegraph.__version__}, {os.cpu_count()} cpus",
        flush=True,
    )
    work = tempfile.mkdtemp(prefix="tg-scale-", dir=args.workdir)
    results = []
    try:
        for n in ns:
            r = run_n(n, args, work, model)
            results.append(r)
            print(
                f"  N={n}: {r['windows']} windows in {r['tasks']} model tasks on {r['shape'][0]}x{r['shape'][1]}, "
                f"{r['wall_s']:.2f} s (median of {' / '.join(f'{w:.2f}' for w in r['walls'])}), "
                f"{r['wps']:.2f} windows/s (warm-up {r['warm_s']:.1f} s, threads/worker {r['threads']})",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    single = next((r["wps"] for r in results if r["n"] == 1), None)
    print()
    print(
        f"== bench_scaling (issue 4): model sleeping {args.sleep * 1000:.0f} ms per {args.tile}^2 window, no CPU work; "
        f"{os.cpu_count()} cpus; a fresh cluster per N, started and warmed before the clock"
    )
    rows = []
    for r in results:
        ideal = r["n"] * single if single else None
        eff = r["wps"] / ideal if ideal else None
        bound = r["windows"] * args.sleep / r["n"]
        rows.append(
            [
                r["n"],
                r["windows"],
                r["tasks"],
                f"{r['wall_s']:.2f}",
                f"{bound:.2f}",
                f"{r['wps']:.2f}",
                f"{ideal:.2f}" if ideal else "-",
                f"{eff:.3f}" if eff else "-",
                f"{1000 * r['worker_cpu_s'] / r['windows']:.1f}",
                f"{1000 * r['client_cpu_s'] / r['windows']:.1f}",
                f"{1000 * r['all_cpu_s'] / r['windows']:.1f}",
                f"{r['all_cpu_s'] / r['wall_s']:.2f}",
            ]
        )
    print(
        fmt_rows(
            [
                "N",
                "windows",
                "model tasks",
                "seconds",
                "sleep-bound s",
                "windows/s",
                "ideal N x single",
                "efficiency",
                "worker CPU ms/window",
                "client+scheduler CPU ms/window",
                "all processes CPU ms/window",
                "cores busy",
            ],
            rows,
        )
    )
    effs = [r["wps"] / (r["n"] * single) for r in results if single]
    if effs:
        low = min(effs)
        print(
            f"lowest efficiency {low:.3f} (acceptance >= 0.9 up to N = 8: {'PASS' if low >= 0.9 else 'FAIL'})"
        )
    for r in results:
        t = r["timings"]
        print(
            f"  N={r['n']} timings: total {t['total_s']:.2f} = prepare {t['prepare_s']:.2f} + run {t['run_s']:.2f}; "
            f"task sums: read {t['read_s_sum']:.2f}, model {t['model_s_sum']:.2f}, write {t['write_s_sum']:.2f}, "
            f"blend {t['blend_s_sum']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
