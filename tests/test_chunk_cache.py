"""The per-process cache of decoded source chunks: every chunk decoded once, bounded, never stale across runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import zarr

from tilegraph.source.chunk_cache import ChunkCache
from tilegraph.source.zarr_source import ZarrSource


def test_lru_by_bytes_and_single_decode_under_concurrency():
    cache = ChunkCache(budget_bytes=3 * 800)
    loads: list[int] = []

    def loader(k):
        def load():
            loads.append(k)
            time.sleep(0.05)
            return np.full(100, k, np.float64)  # 800 bytes

        return load

    threads = [threading.Thread(target=cache.get, args=(1, loader(1))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == [1]  # six concurrent readers, one decode
    for k in (2, 3, 4):
        cache.get(k, loader(k))
    assert cache.get(2, loader(2))[0] == 2 and loads == [1, 2, 3, 4]  # 1 was evicted first (LRU)
    cache.get(1, loader(1))
    assert loads[-1] == 1
    out = cache.get(2, loader(2))
    assert not out.flags.writeable


def test_zarr_source_reads_through_the_cache_identically(tmp_path):
    data = np.random.default_rng(0).random((300, 260, 3)).astype(np.float32)
    path = str(tmp_path / "s.zarr")
    zarr.create_array(store=path, shape=data.shape, chunks=(128, 128, 3), dtype="float32")[:] = data
    plain, cached = ZarrSource(path), ZarrSource(path).cached("run-a")
    for box in [(0, 300, 0, 260), (5, 77, 120, 250), (127, 129, 127, 129), (250, 300, 0, 10)]:
        np.testing.assert_array_equal(cached.read(*box), plain.read(*box))
        np.testing.assert_array_equal(cached.read(*box), data[box[0] : box[1], box[2] : box[3]])


def test_a_new_run_never_sees_an_old_runs_chunks(tmp_path):
    path = str(tmp_path / "s.zarr")
    arr = zarr.create_array(store=path, shape=(64, 64), chunks=(32, 32), dtype="uint8")
    arr[:] = 1
    assert ZarrSource(path).cached("run-1").read(0, 64, 0, 64).max() == 1
    arr[:] = 7  # the file changes between two runs in the same worker process
    assert ZarrSource(path).cached("run-2").read(0, 64, 0, 64).min() == 7
