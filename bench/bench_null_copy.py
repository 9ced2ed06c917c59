"""tilegraph's own cost per megapixel, with a model that costs nothing, against dask's Zarr copy (issue 13).

Pinned configuration: an 8192^2 uint8 RGB Zarr (chunks 1024, zarr's default codecs), tile 1024,
overlap 128, a null model (``lambda x: x``, a numpy callable: no torch on the clock). Rows, in one
run, on the same cores:

1. dask's threaded ``da.from_zarr(src).to_zarr(dst)`` of the same array (the I/O floor: decode,
   encode, nothing else);
2. ``tilegraph.run`` with ``blend="crop"`` on tilegraph's embedded cluster (started before the clock
   and warmed by a small run);
3. the same with ``blend="cosine"``.

Each row is timed ``--repeats`` times and the median counts. Acceptance (printed, not asserted):
``crop`` >= 0.7x and ``cosine`` >= 0.5x the copy's throughput, the copy using zarr-python's codec
pipeline (dask's default). ``--pipelines`` repeats the tilegraph rows for each Zarr codec pipeline of
the workers (``zarr-python``, ``zarrs`` where installed), side by side. The run's per-stage timings
(read, model, write, blend task sums) are printed for each tilegraph row.
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
from _common import write_random_zarr


def null_model(batch: np.ndarray) -> np.ndarray:
    """The identity as a numpy callable: tilegraph's cost alone."""
    return batch


def _copy(src: str, dst: str, threads: int) -> float:
    import dask
    import dask.array as da

    shutil.rmtree(dst, ignore_errors=True)
    t = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=threads):
        da.from_zarr(src).to_zarr(dst, overwrite=True)
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="embedded cluster workers (default: its choice)")
    p.add_argument("--blends", default="crop,cosine")
    p.add_argument("--pipelines", default="zarr-python", help="comma list: zarr-python, zarrs")
    p.add_argument("--workdir", default=None)
    a = p.parse_args(argv)

    from distributed import Client

    import tilegraph
    from tilegraph.cluster.local import embedded_cluster

    cores = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="tilegraph-nullcopy-", dir=a.workdir)
    src = os.path.join(work, "in.zarr")
    mp = a.size * a.size / 1e6
    print(
        f"bench_null_copy: {a.size}^2 uint8 RGB Zarr ({mp:.1f} MP, chunks 1024, default codecs), tile {a.tile}, "
        f"overlap {a.overlap}, null numpy model, {cores} cpus, median of {a.repeats}",
        flush=True,
    )
    write_random_zarr(src, (a.size, a.size), 3, chunk=1024)
    rows: list[tuple[str, float, dict | None]] = []
    try:
        copies = [_copy(src, os.path.join(work, "copy.zarr"), cores) for _ in range(a.repeats)]
        rows.append(("dask threaded from_zarr(...).to_zarr(...)", statistics.median(copies), None))
        print(f"  copy: {[round(c, 2) for c in copies]} s", flush=True)
        cluster = embedded_cluster(n_workers=a.workers)
        client = Client(cluster)
        try:
            small = os.path.join(work, "warm.zarr")
            write_random_zarr(small, (2 * a.tile, 2 * a.tile), 3, chunk=1024, seed=1)
            for pipeline in a.pipelines.split(","):
                kw = dict(
                    model=null_model,
                    tile=a.tile,
                    overlap=a.overlap,
                    client=client,
                    progress=False,
                    execution_options={"codec_pipeline": pipeline},
                )
                for blend in a.blends.split(","):
                    tilegraph.run(
                        small, os.path.join(work, "warm-out.zarr"), blend=blend, overwrite=True, **kw
                    )
                for blend in a.blends.split(","):
                    walls, last = [], None
                    for _ in range(a.repeats):
                        out = os.path.join(work, f"out-{blend}.zarr")
                        shutil.rmtree(out, ignore_errors=True)
                        t = time.perf_counter()
                        last = tilegraph.run(src, out, blend=blend, **kw)
                        walls.append(time.perf_counter() - t)
                    print(f"  tilegraph {blend} ({pipeline}): {[round(w, 2) for w in walls]} s", flush=True)
                    assert last is not None
                    rows.append(
                        (
                            f"tilegraph {blend} ({pipeline} codecs, null model)",
                            statistics.median(walls),
                            last.timings,
                        )
                    )
        finally:
            with contextlib.suppress(Exception):
                client.close()
            with contextlib.suppress(Exception):
                cluster.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    copy_s = rows[0][1]
    print(
        f"\n== bench_null_copy (issue 13): {a.size}^2 uint8 RGB, tile {a.tile}, overlap {a.overlap}, {cores} cpus"
    )
    print(f"{'row':<52} {'seconds':>8} {'MP/s':>8} {'x copy':>7}")
    for name, sec, _ in rows:
        print(f"{name:<52} {sec:8.2f} {mp / sec:8.1f} {copy_s / sec:7.2f}")
    print("(the copy uses zarr-python's codec pipeline, dask's default)")
    targets = {"crop": 0.7, "cosine": 0.5}
    for name, sec, timings in rows[1:]:
        blend = name.split()[1]
        ratio = copy_s / sec
        target = targets.get(blend)
        verdict = (
            "" if target is None else f" (acceptance >= {target}: {'PASS' if ratio >= target else 'FAIL'})"
        )
        print(f"ratio {name.split(', null')[0]}) / copy = {ratio:.3f}{verdict}")
        if timings:
            keys = ("prepare_s", "run_s", "read_s_sum", "model_s_sum", "write_s_sum", "blend_s_sum")
            print("  " + ", ".join(f"{k} {timings.get(k, float('nan')):.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
