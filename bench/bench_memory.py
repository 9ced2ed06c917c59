"""Peak memory of tilegraph's workers and client as the image grows (issue 2 b).

Pinned configuration: a one-layer 3x3 convolution (``tilegraph.testing.models.LocalConv(layers=1)``) as
the model, float32 on CPU; random uint8 RGB Zarr inputs of 4096^2, 8192^2 and 16384^2 (chunks 1024,
zstd, generated chunk by chunk, never whole in memory); tilegraph's defaults otherwise (tile 512,
overlap 64, cosine blending, batch 4, output chunks 1024); Zarr -> Zarr on a ``LocalCluster`` of worker
processes (``embedded_cluster(n_workers=--workers)``, default 2), a fresh cluster per size.

Measured per size: each worker's peak RSS during the run (a psutil sampling thread in every worker,
started through ``client.run`` before the run, every 20 ms) and its lifetime ``ru_maxrss`` (the cluster
is new, so this covers start-up too), and the client process's peak RSS during the run (the same
sampler here). Acceptance (printed, not asserted): each worker's peak within 1.5x across the sizes, under
2 GiB, and the client under 1 GiB. ``--sizes`` runs smaller sizes (e.g. on CI-like machines).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time

from _common import MiB, RssSampler, fmt_rows, w_start_rss, w_stop_rss, write_random_zarr


def _import_torch() -> str:
    import torch

    return torch.__version__


def run_size(size: int, args, work: str) -> dict:
    from distributed import Client

    import tilegraph
    from tilegraph.cluster.local import embedded_cluster
    from tilegraph.testing.models import LocalConv

    in_path, out_path = f"{work}/in-{size}.zarr", f"{work}/out-{size}.zarr"
    t = time.perf_counter()
    write_random_zarr(in_path, (size, size), 3, chunk=min(1024, size), seed=size)
    gen_s = time.perf_counter() - t
    model = LocalConv(channels=3, layers=1)
    cluster = embedded_cluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker)
    client = Client(cluster)
    try:
        client.wait_for_workers(args.workers)
        client.run(_import_torch)  # torch's own RSS is part of the "before" column, its import not of the run
        client.run(w_start_rss)
        local = RssSampler()
        t = time.perf_counter()
        res = tilegraph.run(
            in_path,
            out_path,
            model=model,
            tile=args.tile,
            overlap=args.overlap,
            blend=args.blend,
            client=client,
            overwrite=True,
            progress=False,
        )
        wall = time.perf_counter() - t
        client_rss = local.stop()
        workers = client.run(w_stop_rss)
    finally:
        with contextlib.suppress(Exception):
            client.close()
        with contextlib.suppress(Exception):
            cluster.close()
        shutil.rmtree(in_path, ignore_errors=True)
        shutil.rmtree(out_path, ignore_errors=True)
    w = [workers[k] for k in sorted(workers)]
    return {
        "size": size,
        "windows": res.plan.n_windows,
        "gen_s": gen_s,
        "wall_s": wall,
        "mp_s": size * size / 1e6 / wall,
        "timings": res.timings,
        "workers": w,
        "client": client_rss,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="4096,8192,16384", help="comma list of image sides")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads-per-worker", type=int, default=None, help="default: embedded_cluster's choice")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--blend", default="cosine")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="tg-mem-", dir=args.workdir)
    import torch

    import tilegraph

    print(
        f"bench_memory: sizes {sizes}, LocalConv(layers=1) float32, tile {args.tile}, overlap {args.overlap}, "
        f"blend {args.blend}, {args.workers} worker processes; tilegraph {tilegraph.__version__}, torch "
        f"{torch.__version__}, {os.cpu_count()} cpus",
        flush=True,
    )
    results = []
    try:
        for size in sizes:
            r = run_size(size, args, work)
            peaks = ", ".join(f"{x['peak'] / MiB:.0f}" for x in r["workers"])
            print(
                f"  {size}^2: {r['windows']} windows, {r['wall_s']:.1f} s ({r['mp_s']:.2f} MP/s), input written in "
                f"{r['gen_s']:.1f} s; worker peaks MiB [{peaks}], client peak {r['client']['peak'] / MiB:.0f} MiB",
                flush=True,
            )
            results.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"== bench_memory (issue 2 b): peak RSS, LocalConv(layers=1), tile {args.tile}, overlap {args.overlap}, "
        f"blend {args.blend}, {args.workers} worker processes, a fresh cluster per size"
    )
    rows = []
    for r in results:
        w = r["workers"]
        rows.append(
            [
                f"{r['size']}^2",
                r["windows"],
                f"{r['wall_s']:.1f}",
                f"{r['mp_s']:.2f}",
                " / ".join(f"{x['peak'] / MiB:.0f}" for x in w),
                " / ".join(f"{x['ru_maxrss'] / MiB:.0f}" for x in w),
                " / ".join(f"{x['start'] / MiB:.0f}" for x in w),
                f"{r['client']['peak'] / MiB:.0f}",
                f"{r['client']['start'] / MiB:.0f}",
            ]
        )
    print(
        fmt_rows(
            [
                "image",
                "windows",
                "seconds",
                "MP/s",
                "worker peak MiB (sampled)",
                "worker ru_maxrss MiB",
                "worker RSS before MiB",
                "client peak MiB",
                "client before MiB",
            ],
            rows,
        )
    )
    wmax = [max(x["peak"] for x in r["workers"]) for r in results]
    wmax_ru = [max(x["ru_maxrss"] for x in r["workers"]) for r in results]
    cmax = max(r["client"]["peak"] for r in results)
    ratio = max(wmax) / min(wmax)
    ratio_ru = max(wmax_ru) / min(wmax_ru)
    print(
        f"ratio max/min over sizes of the largest worker peak: {ratio:.3f} sampled, {ratio_ru:.3f} ru_maxrss "
        f"(acceptance <= 1.5: {'PASS' if max(ratio, ratio_ru) <= 1.5 else 'FAIL'})"
    )
    print(
        f"largest worker peak {max(max(wmax), max(wmax_ru)) / MiB:.0f} MiB (acceptance < 2048: "
        f"{'PASS' if max(max(wmax), max(wmax_ru)) < 2 * 1024 * MiB else 'FAIL'}); largest client peak during a run "
        f"{cmax / MiB:.0f} MiB (acceptance < 1024: {'PASS' if cmax < 1024 * MiB else 'FAIL'})"
    )
    for r in results:
        t = r["timings"]
        print(
            f"  {r['size']}^2 timings: total {t['total_s']:.1f} s = prepare {t['prepare_s']:.1f} + run {t['run_s']:.1f}; "
            f"task sums: read {t['read_s_sum']:.1f}, model {t['model_s_sum']:.1f}, write {t['write_s_sum']:.1f}, "
            f"blend {t['blend_s_sum']:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
