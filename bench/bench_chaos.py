"""Worker kills, ten repetitions each: is every run's output bit-identical to a clean run?

On tilegraph's embedded CPU cluster of 3 worker processes, one worker (the one that computed the most
windows so far) is SIGKILLed when the model has computed 20 %, 50 % or 80 % of the windows, or three
times in one run (20 %, 50 %, 80 %); nannies restart the killed workers. Each run's output is compared
with an in-process clean run. Prints one line per run and a summary; the CI test
(``tests/test_chaos.py``) runs three repetitions of the same scenarios.

    python bench/bench_chaos.py [--reps 10] [--windows 7] [--seconds-per-window 0.02]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np

SCENARIOS = {"20%": [0.2], "50%": [0.5], "80%": [0.8], "three": [0.2, 0.5, 0.8]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--windows", type=int, default=7, help="windows per side (tile 48, stride 32)")
    parser.add_argument("--seconds-per-window", type=float, default=0.02)
    args = parser.parse_args()

    from distributed import Client

    import tilegraph
    from tilegraph.cluster.local import embedded_cluster
    from tilegraph.testing.chaos import CountingCallable, kill_worker_when, thresholds, total_calls

    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    side = 32 * args.windows
    img = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    job = dict(tile=48, overlap=16, batch_size=1, out_chunks=64, progress=False)
    n = args.windows**2
    print(
        f"# tilegraph {tilegraph.__version__}, python {platform.python_version()}, {os.cpu_count()} cores, "
        f"{side}x{side} uint8 RGB, {n} windows, {args.seconds_per_window} s per window, 3 worker processes",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ref = tilegraph.run(
            img, f"{tmp}/ref.zarr", model=CountingCallable(f"{tmp}/ref"), client="inprocess", **job
        )
        reference = np.asarray(ref.output[:])
        cluster = embedded_cluster(n_workers=3)
        client = Client(cluster)

        def running() -> list[int]:
            # a worker process killed before it told its nanny it started is never restarted
            # (distributed 2026.8), so only started worker processes are killed
            return [
                w.pid
                for w in cluster.workers.values()
                if w.pid and w.process and w.process.status.name == "running"
            ]

        tally: dict[str, list[int]] = {s: [0, 0, 0] for s in SCENARIOS}  # identical, differing, failed
        try:
            for rep in range(args.reps):
                for name, fractions in SCENARIOS.items():
                    folder = f"{tmp}/{name}-{rep}"
                    model = CountingCallable(folder, seconds_per_window=args.seconds_per_window)
                    killer = kill_worker_when(folder, thresholds(n, fractions), pids=running, timeout=300)
                    t0 = time.perf_counter()
                    try:
                        res = tilegraph.run(img, f"{folder}.zarr", model=model, client=client, **job)
                        same = np.array_equal(np.asarray(res.output[:]), reference)
                        outcome = "identical" if same else "DIFFERS"
                        tally[name][0 if same else 1] += 1
                    except Exception as exc:  # reported, counted as a failure
                        outcome = f"FAILED {type(exc).__name__}: {exc}"
                        tally[name][2] += 1
                    finally:
                        killer.stop()
                    kills = sum(1 for _, _, pid in killer.fired if pid is not None)
                    print(
                        f"rep {rep} {name:>5}: {outcome}; {kills} worker(s) killed at calls "
                        f"{[c for _, c, _ in killer.fired]}; {total_calls(folder)} model calls for {n} windows; "
                        f"{time.perf_counter() - t0:.1f} s",
                        flush=True,
                    )
        finally:
            client.close()
            cluster.close()
    print("# summary (identical / differing / failed):")
    for name, (same, diff, failed) in tally.items():
        print(f"#   {name:>5}: {same} / {diff} / {failed}")
    return 0 if all(d == 0 and f == 0 for _, d, f in tally.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
