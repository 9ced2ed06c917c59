"""Strong scaling: a fixed float32 RGB image, 1 to 8 worker processes on the same cores (issue 13).

Pinned configuration: a 3600^2 float32 RGB Zarr (chunks 1024, default codecs), windows of 256 with
overlap 40 (17 x 17 = 289 windows), a numpy model that sleeps 200 ms per window and does no work,
cosine blending, batch 4. For each N: a fresh ``embedded_cluster(n_workers=N, threads_per_worker=1)``
started and warmed before the clock (every worker runs a model task first), then the run is timed
``--repeats`` times and the median counts. The image is the same for every N, so the ideal time is
the single worker's divided by N; efficiency = speed-up / N (acceptance: >= 0.9 up to N = 8, printed).

Unlike the weak-scaling ``bench_scaling.py`` (1-channel uint8), this reads 12-byte pixels and 256-px
windows from 1024-px chunks: tilegraph's own work per window (reads, conversions, writes, blends)
shows, since 8 workers sleeping 200 ms per window leave 50 ms of the 2 cores per window for it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from _common import w_cpu_seconds
from bench_scaling import SleepPerWindow


def _float_zarr(path: str, size: int, seed: int = 0) -> None:
    import zarr

    z = zarr.create_array(
        store=path, shape=(size, size, 3), chunks=(1024, 1024, 3), dtype="float32", overwrite=True
    )
    rng = np.random.default_rng(seed)
    for y in range(0, size, 1024):
        for x in range(0, size, 1024):
            z[y : y + 1024, x : x + 1024] = rng.random(
                (min(1024, size - y), min(1024, size - x), 3), dtype=np.float32
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2,4,8")
    p.add_argument("--size", type=int, default=3600)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=40)
    p.add_argument("--sleep", type=float, default=0.2)
    p.add_argument("--blend", default="cosine")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None)
    a = p.parse_args(argv)

    from distributed import Client

    import tilegraph
    from tilegraph.cluster.local import embedded_cluster

    model = SleepPerWindow(a.sleep)
    work = tempfile.mkdtemp(prefix="tg-strong-", dir=a.workdir)
    src, warm = os.path.join(work, "in.zarr"), os.path.join(work, "warm.zarr")
    _float_zarr(src, a.size)
    ns = [int(n) for n in a.workers.split(",")]
    kw = dict(
        model=model,
        tile=a.tile,
        overlap=a.overlap,
        blend=a.blend,
        batch_size=a.batch,
        overwrite=True,
        progress=False,
    )
    print(
        f"bench_strong_scaling: {a.size}^2 float32 RGB, tile {a.tile}, overlap {a.overlap}, {a.blend}, model "
        f"sleeping {a.sleep * 1000:.0f} ms per window, N in {ns}, {os.cpu_count()} cpus",
        flush=True,
    )
    rows = []
    try:
        for n in ns:
            _float_zarr(warm, (2 * n * a.batch // 2 + 1) * (a.tile - a.overlap) + a.overlap, seed=1)
            cluster = embedded_cluster(n_workers=n, threads_per_worker=1)
            client = Client(cluster)
            try:
                client.wait_for_workers(n)
                tilegraph.run(warm, os.path.join(work, "warm-out.zarr"), client=client, **kw)
                walls, windows, wcpu = [], 0, []
                for _ in range(a.repeats):
                    w0 = client.run(w_cpu_seconds)
                    t = time.perf_counter()
                    res = tilegraph.run(src, os.path.join(work, "out.zarr"), client=client, **kw)
                    walls.append(time.perf_counter() - t)
                    w1 = client.run(w_cpu_seconds)
                    wcpu.append(sum(w1[k] - w0[k] for k in w1 if k in w0))
                    windows = res.plan.n_windows
            finally:
                with contextlib.suppress(Exception):
                    client.close()
                with contextlib.suppress(Exception):
                    cluster.close()
            wall = statistics.median(walls)
            rows.append((n, windows, wall, statistics.median(wcpu) / windows))
            print(
                f"  N={n}: {windows} windows, {[round(w, 2) for w in walls]} s, worker CPU "
                f"{rows[-1][3] * 1000:.0f} ms per window",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = min(rows, key=lambda r: r[0])  # the fewest workers measured (N = 1 normally), whatever the order
    base = first[2] * first[0]
    print(
        f"\n== bench_strong_scaling (issue 13): {a.size}^2 float32 RGB, {rows[0][1]} windows of {a.tile}, "
        f"{a.sleep * 1000:.0f} ms per window, one thread per worker"
    )
    print(f"{'N':>3} {'seconds':>8} {'ideal':>8} {'efficiency':>10} {'worker CPU ms/window':>21}")
    for n, _, wall, cpw in rows:
        print(f"{n:>3} {wall:8.2f} {base / n:8.2f} {base / n / wall:10.3f} {cpw * 1000:21.0f}")
    worst = min(base / n / wall for n, _, wall, _ in rows)
    print(
        f"lowest efficiency {worst:.3f} (acceptance >= 0.9 up to N = 8: {'PASS' if worst >= 0.9 else 'FAIL'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
