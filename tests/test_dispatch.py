"""Model tasks dealt by place and kept one ahead per worker; reads ahead across tasks; probes remembered (issue 13)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilegraph.engine.dispatch import Dispatcher, Queued, bands, deal, stripe_of, stripes
from tilegraph.engine.infer import STRIPE_CHUNKS, place
from tilegraph.engine.readahead import ReadAhead


class _Stub:
    """What :class:`Queued` needs of an executor."""

    def __init__(self):
        self._results: dict = {}


def _tasks(n: int) -> list[Queued]:
    ex = _Stub()
    return [Queued(print, (i,), f"t-{i}", {"MODEL": 0.5}, [], ex) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), n=st.integers(1, 9), data=st.data())
def test_bands_split_by_rows_into_equal_counts_each_swept_by_column(rows, cols, n, data):
    near = [(float(r * 100), float(c * 100)) for r in range(rows) for c in range(cols)]
    perm = data.draw(st.permutations(range(len(near))))
    near = [near[i] for i in perm]
    out = bands(near, n)
    assert len(out) == n
    assert sorted(i for b in out for i in b) == list(range(len(near)))  # every task once
    sizes = [len(b) for b in out]
    assert max(sizes) - min(sizes) <= 1
    for a, b in zip(out, out[1:], strict=False):  # bands go down the image
        if a and b:
            assert max(near[i][0] for i in a) <= min(near[i][0] for i in b)
    for b in out:  # each band left to right
        xs = [near[i][1] for i in b]
        assert xs == sorted(xs)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 14),
    cols=st.integers(1, 10),
    n=st.integers(1, 5),
    stripe=st.sampled_from([100.0, 250.0, 300.0, 5000.0]),
    data=st.data(),
)
def test_bands_with_stripes_keep_their_tasks_and_sweep_each_stripe_left_to_right_in_turn(
    rows, cols, n, stripe, data
):
    near = [(float(r * 100 - 40), float(c * 100)) for r in range(rows) for c in range(cols)]  # from y = -40
    perm = data.draw(st.permutations(range(len(near))))
    near = [near[i] for i in perm]
    plain, striped = bands(near, n), bands(near, n, stripe)
    assert [sorted(b) for b in striped] == [sorted(b) for b in plain]  # the same tasks to each worker
    where = stripes(near, striped, stripe)
    for b in striped:
        top = min((near[i][0] for i in b), default=0.0)
        assert all(where[i] == stripe_of(near[i][0] - top, stripe) for i in b)  # counted from the band's top
        order = [(where[i], near[i][1]) for i in b]
        assert order == sorted(order)  # stripe after stripe (from the band's top), each left to right
        if b and max(near[i][0] for i in b) - top < stripe:
            assert {where[i] for i in b} == {0}  # a band no taller than a stripe is swept in one
    assert stripe_of(-40.0, stripe) == 0 and stripe_of(stripe, stripe) == 1 and stripe_of(5.0, None) == 0


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 17),
    cols=st.integers(1, 17),
    n=st.integers(1, 9),
    size=st.integers(1, 8),
    stripe=st.sampled_from([None, 300.0, 700.0]),
)
def test_deal_cuts_each_band_into_tasks_along_its_sweep(rows, cols, n, size, stripe):
    """Windows to workers: every window once, bands of near-equal windows, tasks of ``size`` consecutive
    windows of one band's sweep (so a task never wraps from the right edge to the left), each lane in
    sweep order and ending at its band's last column."""
    near = [(float(r * 216), float(c * 216)) for r in range(rows) for c in range(cols)]
    dealt = deal(near, n, size, stripe)
    band_windows = bands(near, n, stripe)
    assert sorted(i for g in dealt.groups for i in g) == list(range(len(near)))
    assert len(dealt.lanes) == n and sorted(t for lane in dealt.lanes for t in lane) == list(
        range(len(dealt.groups))
    )
    where = stripes(near, band_windows, stripe)
    for lane, band in zip(dealt.lanes, band_windows, strict=True):
        swept = [i for t in lane for i in dealt.groups[t]]
        assert swept == band  # the band's sweep, cut in order
        assert all(len(dealt.groups[t]) == size for t in lane[:-1]) and all(dealt.groups[t] for t in lane)
        assert [dealt.stripes[t] for t in lane] == [where[dealt.groups[t][0]] for t in lane]
        for t in lane:  # within a stripe a task moves only rightwards: it never wraps to the left edge
            g = dealt.groups[t]
            if len({where[i] for i in g}) == 1:
                xs = [near[i][1] for i in g]
                assert xs == sorted(xs)
        if lane and stripe is None:
            assert max(near[i][1] for i in band) in {near[i][1] for i in dealt.groups[lane[-1]]}


def test_dispatcher_keeps_each_worker_one_ahead_then_takes_over_the_longest_lane():
    tasks = _tasks(10)
    d = Dispatcher(slots=2)
    d.assign(tasks, ["w1", "w0"], lanes=[[0, 1, 2, 3, 4, 5, 6, 7], [8, 9]])
    first = d.take({"w0": 1, "w1": 1})  # one thread each: one running, one waiting
    assert [t.key for t in first["w0"]] == ["t-0", "t-1"]  # lanes go to workers sorted by address
    assert [t.key for t in first["w1"]] == ["t-8", "t-9"]
    assert d.take({"w0": 1, "w1": 1}) == {}  # full
    for t in first["w0"] + first["w1"]:
        t.future = object()  # submitted
    assert d.finished("t-8") and d.finished("t-9")
    assert not d.finished("t-8")  # once
    stolen = d.take({"w0": 1, "w1": 1})
    assert [t.key for t in stolen["w1"]] == ["t-7", "t-6"]  # from the far end of w0's lane
    assert "w0" not in stolen
    more = d.take({"w0": 4, "w1": 1})  # more threads: min(slots, threads) + 1 in flight
    assert [t.key for t in more["w0"]] == ["t-2"]


def test_dispatcher_gives_a_dead_workers_lane_to_the_live_ones_and_skips_cancelled_tasks():
    tasks = _tasks(6)
    d = Dispatcher(slots=1)
    d.assign(tasks, ["a", "b"], lanes=[[0, 1, 2], [3, 4, 5]])
    tasks[1].cancelled = True
    got = d.take({"a": 1})  # "b" is gone: its lane waits for "a"
    assert [t.key for t in got["a"]] == ["t-0", "t-2"]
    for t in got["a"]:
        t.future = object()
        d.finished(t.key)
    got = d.take({"a": 1})
    assert [t.key for t in got["a"]] == ["t-5", "t-4"]
    d.drop([tasks[3]])
    for t in got["a"]:
        t.future = object()
        d.finished(t.key)
    assert d.take({"a": 1}) == {} and not d


def test_read_ahead_hands_over_once_keeps_a_bounded_number_and_raises_the_readers_error():
    ra = ReadAhead(limit=2)
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.05)
        return np.ones(3)

    ra.start(("run", (1, 2)), slow)
    ra.start(("run", (1, 2)), lambda: pytest.fail("read twice"))  # held already: not read again
    np.testing.assert_array_equal(ra.take(("run", (1, 2))).result(), np.ones(3))
    assert ra.take(("run", (1, 2))) is None  # taken once
    ra.start(("run", (3,)), lambda: np.zeros(1))
    ra.start(("run", (4,)), lambda: np.zeros(1))
    ra.start(("run", (5,)), lambda: np.zeros(1))
    assert len(ra) == 2 and ra.take(("run", (3,))) is None  # the oldest was dropped

    def broken():
        raise OSError("chunk c.0.0 truncated")

    ra.start(("run", (6,)), broken)
    with pytest.raises(OSError, match="truncated"):
        ra.take(("run", (6,))).result()


@pytest.mark.slow
def test_model_workers_sweep_their_own_band_and_runs_equal_the_in_process_result(tmp_path):
    """Two model workers: each runs the windows of one half of the image (rows), the result is exact."""
    import zarr
    from distributed import Client, get_task_stream

    import tilegraph
    from tilegraph.cluster.local import embedded_cluster

    rng = np.random.default_rng(3)
    img = rng.random((700, 900, 3), dtype=np.float32)
    src = str(tmp_path / "in.zarr")
    zarr.create_array(store=src, shape=img.shape, chunks=(256, 256, 3), dtype="float32")[:] = img
    kw = dict(tile=128, overlap=32, blend="cosine", batch_size=2, progress=False)
    expected = np.asarray(
        tilegraph.run(img, str(tmp_path / "local.zarr"), model=_double, client="inprocess", **kw).output
    )
    with embedded_cluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        with get_task_stream(client) as ts:
            res = tilegraph.run(src, str(tmp_path / "out.zarr"), model=_double, client=client, **kw)
        probes = sum(str(t["key"]).startswith("tg-probe-") for t in ts.data)
        with get_task_stream(client) as ts2:  # the same model again: its probe is remembered
            tilegraph.run(src, str(tmp_path / "again.zarr"), model=_double, client=client, **kw)
        again = sum(str(t["key"]).startswith("tg-probe-") for t in ts2.data)
    np.testing.assert_allclose(np.asarray(zarr.open_array(str(tmp_path / "out.zarr"))), expected, atol=1e-6)
    assert probes == 1 and again == 0
    plan = res.plan
    dealt = deal(  # as the run dealt them
        [place(plan, [i]) for i in range(plan.n_windows)], 2, plan.batch_size, STRIPE_CHUNKS * 256
    )
    groups, lanes = dealt.groups, dealt.lanes
    assert res.extra["model_tasks"] == len(groups)
    ran: dict[int, str] = {}
    for t in ts.data:
        key = str(t["key"])
        if key.startswith("tg-infer-"):
            ran[int(key.rsplit("-", 1)[1])] = t["worker"]
    assert sorted(ran) == list(range(len(groups))) and len(set(ran.values())) == 2
    owners = [ran[lane[0]] for lane in lanes]  # each band's first task is dealt to its worker
    assert owners[0] != owners[1]
    for lane, owner in zip(lanes, owners, strict=True):
        # the owner swept its band from the near end; whatever the other worker took came from the far end
        mine = [k for k, g in enumerate(lane) if ran[g] == owner]
        taken = [k for k, g in enumerate(lane) if ran[g] != owner]
        assert mine == list(range(len(mine))), (mine, taken)


def _plus_one(x):
    return x + 1


@pytest.mark.slow
def test_queued_model_tasks_run_from_wait_and_from_result_alone():
    """Model tasks are queued on the client; ``wait`` deals them, ``result()`` alone submits one."""
    from distributed import Client

    from tilegraph.cluster.local import embedded_cluster
    from tilegraph.engine.dask_executor import DaskExecutor

    with embedded_cluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        ex = DaskExecutor(client)
        handles = ex.map(
            _plus_one, list(range(6)), keys=[f"tg-test-q-{i}" for i in range(6)], resources=ex.infer_resources
        )
        assert all(isinstance(h, Queued) for h in handles)
        assert sum(h.future is not None for h in handles) == 2  # one thread: one running, one ahead
        assert handles[5].result() == 6  # submitted on its own, to any model worker
        assert ex.wait(handles) == [1, 2, 3, 4, 5, 6]
        assert not ex._dispatch


def _double(x):
    return x * 2


def test_model_tasks_of_several_batches_read_ahead_and_give_the_image(tmp_path):
    """``batches_per_task`` > 1: each task reads its later batches and its successor's first batch ahead
    (the forward pass's timings were once assigned to the name of the read-ahead, and the task failed
    with ``'float' object has no attribute 'start'``)."""
    import tilegraph

    img = np.random.default_rng(0).random((600, 600, 3), dtype=np.float32)
    kw = dict(tile=128, overlap=32, batch_size=2, batches_per_task=3, client="inprocess", progress=False)
    res = tilegraph.run(img, str(tmp_path / "out.zarr"), model=_double, **kw)
    np.testing.assert_allclose(np.asarray(res.output), 2 * img, atol=1e-6)


def test_a_batch_of_neighbouring_windows_is_read_as_one_region_and_equals_windows_read_one_by_one():
    """Blocks of grid rows and columns, and runs along a row or a column, are read at once; the windows cut
    from them (padding at the edges included) equal each window read alone, and keep the batch's order."""
    from types import SimpleNamespace

    from tilegraph import make_plan
    from tilegraph.engine.infer_task import _read_run, _runs_of
    from tilegraph.source import read_padded
    from tilegraph.source.open import open_source

    rng = np.random.default_rng(0)
    img = rng.random((300, 330, 3), dtype=np.float32)
    plan = make_plan(img.shape[:2], tile=96, overlap=24, channels=3, dtype="float32", blend="cosine")
    cols = plan.grid[1]
    at = lambda r, c: r * cols + c  # noqa: E731
    assert _runs_of(plan, [at(0, 0), at(0, 1), at(1, 0), at(1, 1)]) == [
        [at(0, 0), at(0, 1), at(1, 0), at(1, 1)]
    ]
    assert _runs_of(plan, [at(0, 2), at(1, 2), at(2, 2), at(3, 2)]) == [
        [at(0, 2), at(1, 2), at(2, 2), at(3, 2)]
    ]
    assert _runs_of(plan, [at(0, cols - 1), at(1, 0), at(1, 1)]) == [[at(0, cols - 1)], [at(1, 0), at(1, 1)]]
    assert _runs_of(plan, [at(0, 0), at(1, 0), at(1, 1)]) == [[at(0, 0), at(1, 0)], [at(1, 1)]]  # no turning
    ctx = SimpleNamespace(plan=plan, source=open_source(img))
    for batch in (
        [at(2, 1), at(2, 2), at(3, 1), at(3, 2)],
        [at(3, cols - 1), at(2, cols - 1)],
        [at(0, 0), at(0, 1)],
    ):
        got = [w for run in _runs_of(plan, batch) for w in _read_run(ctx, run)]
        for i, w in zip(batch, got, strict=True):
            win = plan.window(i)
            np.testing.assert_array_equal(
                w, read_padded(ctx.source, win.y0, win.y1, win.x0, win.x1, plan.pad_mode)
            )
