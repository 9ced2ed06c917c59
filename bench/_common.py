"""Helpers shared by the CPU benchmarks: chunked Zarr inputs, RSS/CPU sampling, tables.

The functions whose names start with ``w_`` run on Dask workers through ``client.run`` (they take
``dask_worker``); the workers import this module from the script's directory, which Dask puts on their
``sys.path``.
"""

from __future__ import annotations

import os
import resource
import threading
import time

import numpy as np

MiB = 2**20


def write_random_zarr(
    path: str, shape: tuple[int, int], channels: int = 3, chunk: int = 1024, seed: int = 0, compressors="auto"
) -> None:
    """A random uint8 Zarr (YXC, or YX for one channel) written chunk by chunk (never whole in memory)."""
    import zarr

    h, w = shape
    full = (h, w, channels) if channels > 1 else (h, w)
    chunks = (chunk, chunk, channels) if channels > 1 else (chunk, chunk)
    z = zarr.create_array(
        store=path, shape=full, chunks=chunks, dtype="uint8", overwrite=True, compressors=compressors
    )
    rng = np.random.default_rng(seed)
    for y in range(0, h, chunk):
        for x in range(0, w, chunk):
            ch, cw = min(chunk, h - y), min(chunk, w - x)
            block = rng.integers(0, 256, (ch, cw) + full[2:], dtype=np.uint8)
            z[y : y + ch, x : x + cw] = block


class RssSampler:
    """Peak resident set size of one process, sampled in a daemon thread every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02, pid: int | None = None):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.start_rss = self.proc.memory_info().rss
        self.peak = self.start_rss
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            self.samples += 1
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=5)
        end = self.proc.memory_info().rss
        self.peak = max(self.peak, end)
        return {"start": self.start_rss, "peak": self.peak, "end": end, "samples": self.samples}


def ru_maxrss_bytes() -> int:
    """Lifetime peak RSS of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    t = os.times()
    return t.user + t.system


def tree_cpu_seconds() -> float:
    """User + system CPU seconds so far of this process and all its descendants (nannies, workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:  # exited meanwhile
            continue
        total += t.user + t.system
    return total


def w_start_rss(dask_worker, interval: float = 0.02) -> int:
    """Start an RSS sampler in this worker (replacing any earlier one); returns the RSS now."""
    old = getattr(dask_worker, "_tg_rss_sampler", None)
    if old is not None:
        old.stop()
    s = RssSampler(interval)
    dask_worker._tg_rss_sampler = s
    return s.start_rss


def w_stop_rss(dask_worker) -> dict:
    """Stop this worker's sampler: start/peak/end RSS in bytes plus the lifetime ``ru_maxrss``."""
    s = dask_worker._tg_rss_sampler
    out = s.stop()
    out["ru_maxrss"] = ru_maxrss_bytes()
    out["pid"] = os.getpid()
    return out


def w_cpu_seconds(dask_worker=None) -> float:
    """CPU seconds used so far by this worker process."""
    return cpu_seconds()


def fmt_rows(headers: list[str], rows: list[list], aligns: str | None = None) -> str:
    """A plain text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    aligns = aligns or ("<" + ">" * (len(headers) - 1))
    out = []
    for k, r in enumerate(cells):
        out.append(
            "  ".join(
                c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(r, widths, aligns, strict=True)
            )
        )
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def now() -> float:
    return time.perf_counter()
