"""The per-process cache of decoded source chunks: every chunk decoded once, bounded, never stale across runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
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


def _chunk(k):
    return lambda: np.full(100, len(str(k)), np.float64)  # 800 bytes


def test_release_keeps_an_entry_until_its_last_reader_plus_slack_then_drops_it():
    from tilegraph.source.chunk_cache import SLACK, STALE

    cache = ChunkCache(budget_bytes=10**6)
    for k in "abc":
        cache.get(k, _chunk(k))
    cache.get("other-run", _chunk(0))  # loaded, never named by a release
    assert cache.release([("a", 0), ("b", 2)]) == 0  # tick 1: a kept until tick 1 + SLACK, b until 3 + SLACK
    cache.release([("b", 5)])  # tick 2: a later reader of b plans further: the longest wins (7 + SLACK)
    for _ in range(SLACK - 1):
        cache.release([])
    assert "a" in cache._items
    cache.release([])  # tick 2 + SLACK: a's time is up
    assert "a" not in cache._items and "b" in cache._items
    while cache._tick < STALE:
        cache.release([])
    assert "c" in cache._items and "other-run" in cache._items
    cache.release([])  # STALE + 1 ticks after loading, never named: gone
    assert "c" not in cache._items and "other-run" not in cache._items
    while cache._tick < 7 + SLACK:
        cache.release([])
    assert "b" in cache._items
    cache.release([])
    assert len(cache) == 0 and cache.nbytes == 0 and not cache._expire and not cache._loaded
    assert cache.peak_bytes == 4 * 800
    cache.get("a", _chunk(1))  # a reader after its time decodes it again, and it expires again
    assert cache.misses == 5 and len(cache) == 1


def test_release_without_readers_is_a_tick_and_lru_eviction_forgets_the_plan():
    cache = ChunkCache(budget_bytes=2 * 800)
    cache.get("a", _chunk(1))
    cache.release([("a", 100)])
    cache.get("b", _chunk(2))
    cache.get("c", _chunk(3))  # over budget: a (least recently used) goes, with its plan
    assert list(cache._items) == ["b", "c"] and "a" not in cache._expire


def _double(x):
    return x * 2


def test_a_run_keeps_about_one_stripe_of_chunks_decoded_whatever_the_image_size(tmp_path, monkeypatch):
    """The model tasks sweep the image in stripes of a few chunk rows and release what they read
    (:func:`tilegraph.engine.infer.chunk_releases`): the chunks held stay a stripe's working set as the
    image grows (an LRU alone held every chunk of the larger image), each chunk is decoded about once
    (the rows at stripe boundaries twice), nothing is left at the end but the last few tasks' chunks,
    and the output is what it was."""
    import tilegraph
    from tilegraph.engine.infer import STRIPE_CHUNKS
    from tilegraph.source import chunk_cache as cc

    chunk = 128
    held = {}
    for size in (512, 1536):
        monkeypatch.setattr(cc, "_CACHE", None)  # a fresh cache per run
        img = np.random.default_rng(size).random((size, size, 3), dtype=np.float32)
        src = str(tmp_path / f"in-{size}.zarr")
        zarr.create_array(store=src, shape=img.shape, chunks=(chunk, chunk, 3), dtype="float32")[:] = img
        res = tilegraph.run(
            src,
            str(tmp_path / f"out-{size}.zarr"),
            model=_double,
            tile=64,
            overlap=16,
            blend="multiband",
            batch_size=4,
            client="inprocess",
            progress=False,
        )
        np.testing.assert_allclose(np.asarray(res.output), 2 * img, atol=1e-5)
        cache = cc.chunk_cache()
        n = (size // chunk) ** 2
        held[size] = cache.peak_bytes // (chunk * chunk * 3 * 4)
        rows = size // chunk
        boundaries = -(-rows // STRIPE_CHUNKS) - 1  # a chunk row per stripe boundary is decoded twice
        assert n <= cache.misses <= n + 2 * boundaries * (size // chunk)
        assert len(cache) <= 12  # what the last tasks read, kept a few ticks longer
    assert held[512] <= 16
    assert held[1536] <= 24, held  # of 144 chunks, a stripe's held at a time


def _cache_state(dask_worker=None) -> dict:
    from tilegraph.source.chunk_cache import chunk_cache

    c = chunk_cache()
    return {"peak": c.peak_bytes, "held": len(c), "misses": c.misses, "tick": c._tick}


@pytest.mark.slow
def test_workers_keep_about_one_stripe_of_chunks_decoded(tmp_path):
    """Two model workers, each sweeping its band in stripes: each one's cache peaks at a stripe's chunks
    and is about empty once the run is done (tasks that ran on the other worker included)."""
    from distributed import Client

    import tilegraph
    from tilegraph.cluster.local import embedded_cluster

    chunk, size = 128, 1536
    img = np.random.default_rng(5).random((size, size, 3), dtype=np.float32)
    src = str(tmp_path / "in.zarr")
    zarr.create_array(store=src, shape=img.shape, chunks=(chunk, chunk, 3), dtype="float32")[:] = img
    with embedded_cluster(n_workers=2, threads_per_worker=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        tilegraph.run(
            src,
            str(tmp_path / "out.zarr"),
            model=_double,
            tile=128,
            overlap=32,
            blend="multiband",
            batch_size=4,
            client=client,
            progress=False,
        )
        states = client.run(_cache_state)
    out = np.asarray(zarr.open_array(str(tmp_path / "out.zarr")))
    np.testing.assert_allclose(out, 2 * img, atol=1e-5)
    one = chunk * chunk * 3 * 4
    for state in states.values():  # 144 chunks, 72 and more in each worker's band
        assert state["peak"] <= 36 * one, states
        assert state["held"] <= 24, states  # the last tasks' chunks, kept a few ticks longer
    assert sum(s["misses"] for s in states.values()) <= 1.6 * (size // chunk) ** 2, states
