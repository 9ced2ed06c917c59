"""One writer per destination (issue 10, point 2): the claim, its heartbeat and takeover."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import time

import pytest

from tilegraph.sink.claim import (
    ClaimInfo,
    ClaimLostError,
    DestinationClaimedError,
    _take_over_local,
    acquire_claim,
    assert_holder,
    break_stale_claim,
    claim_path,
    read_claim,
)


def current(dest: str) -> ClaimInfo:
    """The claim on ``dest`` (there must be one)."""
    info = read_claim(dest)
    assert info is not None
    return info


# --------------------------------------------------------------------------------------------------
# helpers run in spawned processes (importable: this module is on the children's sys.path)


def _race(dest: str, run_id: str, barrier, release, results, takeover: bool, stale_after: float) -> None:
    barrier.wait(timeout=60)
    try:
        claim = acquire_claim(
            dest, run_id=run_id, takeover=takeover, stale_after=stale_after, heartbeat_interval=0.2
        )
    except DestinationClaimedError as exc:
        results.put(("refused", run_id, str(exc), exc.holder.run_id if exc.holder else None))
        return
    results.put(("won", run_id, "", None))
    release.wait(timeout=60)  # hold the claim until every competitor has tried
    claim.release()


def _hold_then_die(dest: str, ready) -> None:
    acquire_claim(dest, run_id="doomed", heartbeat_interval=0.2, stale_after=30.0)
    ready.set()
    time.sleep(60)  # killed long before


def _race_round(dest: str, n: int, *, takeover: bool = False, stale_after: float = 60.0) -> list[tuple]:
    ctx = mp.get_context("spawn")
    barrier, release, results = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(dest, f"run-{i}", barrier, release, results, takeover, stale_after))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(n)]
    release.set()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


# --------------------------------------------------------------------------------------------------


def test_two_processes_racing_for_one_claim_exactly_one_wins(tmp_path):
    for k in range(3):
        dest = str(tmp_path / f"out{k}.zarr")
        got = _race_round(dest, 2)
        winners = [g for g in got if g[0] == "won"]
        losers = [g for g in got if g[0] == "refused"]
        assert len(winners) == 1 and len(losers) == 1
        # the loser's error names the holder: run id, host, pid, heartbeat age
        _, _, message, holder = losers[0]
        assert holder == winners[0][1]
        assert winners[0][1] in message and "pid" in message and "host" in message and "heartbeat" in message
        assert read_claim(dest) is None  # released by the winner


def test_racing_takeover_of_a_stale_claim_has_one_winner(tmp_path):
    dest = str(tmp_path / "out.zarr")
    stale = acquire_claim(dest, run_id="crashed", heartbeat=False, stale_after=1.0, heartbeat_interval=0.5)
    old = time.time() - 3600
    os.utime(stale.path, (old, old))  # its heartbeat stopped an hour ago
    got = _race_round(dest, 3, takeover=True, stale_after=1.0)
    assert sorted(g[0] for g in got) == ["refused", "refused", "won"]
    winner = next(g[1] for g in got if g[0] == "won")
    assert all(g[3] == winner for g in got if g[0] == "refused")
    assert stale.release() is False  # the crashed run's claim is gone; releasing must not remove another's


def test_live_claim_is_refused_even_with_takeover(tmp_path):
    dest = str(tmp_path / "out.zarr")
    with acquire_claim(dest, run_id="alive", heartbeat_interval=0.05, stale_after=2.0) as claim:
        time.sleep(0.3)
        assert claim.beats >= 1 and not claim.lost
        for takeover in (False, True):
            with pytest.raises(DestinationClaimedError) as info:
                acquire_claim(dest, takeover=takeover, stale_after=2.0, heartbeat_interval=0.5)
            holder = info.value.holder
            assert holder is not None and holder.run_id == "alive" and holder.pid == os.getpid()
            assert holder.holder_alive is True and holder.heartbeat_age < 1.0
            assert "another run is writing" in str(info.value) and "alive" in str(info.value)
        with pytest.raises(DestinationClaimedError):
            break_stale_claim(dest, stale_after=2.0)
        assert_holder(claim)
    assert not os.path.exists(claim_path(dest))


def test_claim_of_a_killed_process_on_this_machine_is_stale_at_once(tmp_path):
    dest = str(tmp_path / "out.zarr")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_then_die, args=(dest, ready))
    p.start()
    assert ready.wait(timeout=60)
    assert current(dest).holder_alive is True
    p.kill()
    p.join(timeout=30)
    info = current(dest)
    assert info.run_id == "doomed" and info.holder_alive is False and info.is_stale(30.0)
    with pytest.raises(DestinationClaimedError, match="resume=True"):
        acquire_claim(dest, stale_after=30.0, heartbeat_interval=1.0)  # no takeover asked
    claim = acquire_claim(dest, run_id="resumer", takeover=True, stale_after=30.0, heartbeat_interval=1.0)
    assert current(dest).run_id == "resumer"
    claim.release()


def _foreign_claim(dest: str, *, age: float, run_id: str = "elsewhere-run") -> str:
    """A claim written by a run on another host, last heartbeat ``age`` seconds ago."""
    path = claim_path(dest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = {"run_id": run_id, "host": "node-17", "pid": 4242, "started": time.time() - age - 10}
    body.update(stale_after=5.0, heartbeat_interval=1.0, boot_id="other", pid_ns="other")
    with open(path, "w") as f:
        json.dump(body, f)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_heartbeat_age_decides_for_claims_from_other_hosts(tmp_path):
    dest = str(tmp_path / "out.zarr")
    _foreign_claim(dest, age=1.0)
    with pytest.raises(DestinationClaimedError) as info:
        acquire_claim(dest, takeover=True, stale_after=5.0, heartbeat_interval=1.0)
    holder = info.value.holder
    assert "node-17" in str(info.value) and "4242" in str(info.value)
    assert holder is not None and holder.holder_alive is None
    _foreign_claim(dest, age=600.0)
    with pytest.raises(DestinationClaimedError, match="seems to have stopped"):
        acquire_claim(dest, takeover=False, stale_after=5.0, heartbeat_interval=1.0)
    claim = acquire_claim(dest, run_id="mine", takeover=True, stale_after=5.0, heartbeat_interval=1.0)
    assert claim.held()
    claim.release()
    # a holder's own, longer timeout wins over the taker's shorter one
    _foreign_claim(dest, age=4.0)
    with pytest.raises(DestinationClaimedError):
        acquire_claim(dest, takeover=True, stale_after=1.0, heartbeat_interval=0.5)


def test_a_frozen_holder_loses_its_claim_and_cannot_complete(tmp_path):
    dest = str(tmp_path / "out.zarr")
    reasons: list[str] = []
    a = acquire_claim(dest, run_id="frozen", heartbeat=False, stale_after=1.0, heartbeat_interval=0.5)
    a.on_lost = reasons.append
    t = time.time() - 60
    os.utime(a.path, (t, t))  # as if its process had been suspended for a minute
    b = acquire_claim(dest, run_id="taker", takeover=True, stale_after=1.0, heartbeat_interval=0.5)
    assert a.heartbeat() is False and a.lost and reasons and "taker" in reasons[0]
    with pytest.raises(ClaimLostError):
        assert_holder(a)
    token = pickle.loads(pickle.dumps(a.token()))  # what a worker task would check
    with pytest.raises(ClaimLostError):
        token.check()
    assert a.release() is False and current(dest).run_id == "taker"
    assert_holder(b)
    b.release()
    with pytest.raises(ClaimLostError):
        assert_holder(b)


def test_takeover_puts_back_a_claim_that_changed_after_it_was_judged(tmp_path):
    dest = str(tmp_path / "out.zarr")
    _foreign_claim(dest, age=600.0, run_id="slow-but-alive")
    info = current(dest)
    assert info.is_stale(5.0)
    os.utime(claim_path(dest))  # its heartbeat arrives between the check and the rename
    _take_over_local(info)
    again = read_claim(dest)
    assert again is not None and again.run_id == "slow-but-alive" and not again.is_stale(5.0)
    leftovers = [n for n in os.listdir(os.path.dirname(claim_path(dest))) if n != "claim.json"]
    assert leftovers == []


def test_empty_claim_file_of_a_dead_writer_goes_stale(tmp_path):
    dest = str(tmp_path / "out.zarr")
    path = claim_path(dest)
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()
    t = time.time() - 30
    os.utime(path, (t, t))
    assert current(dest).run_id == "unknown" and current(dest).is_stale()
    claim = acquire_claim(dest, run_id="after", takeover=True, heartbeat_interval=1.0)
    assert current(dest).run_id == "after"
    claim.release()


def test_heartbeat_thread_refreshes_and_stops(tmp_path):
    dest = str(tmp_path / "out.zarr")
    claim = acquire_claim(dest, heartbeat_interval=0.05, stale_after=1.0)
    t0 = os.stat(claim.path).st_mtime_ns
    time.sleep(0.5)
    assert os.stat(claim.path).st_mtime_ns > t0 and claim.beats >= 2
    claim.stop_heartbeat()
    beats = claim.beats
    time.sleep(0.2)
    assert claim.beats == beats
    assert claim.release() and read_claim(dest) is None
    with pytest.raises(ValueError):
        acquire_claim(dest, heartbeat_interval=5.0, stale_after=5.0)


def test_claims_on_fsspec_urls(tmp_path):
    dest = f"memory://claims-{os.getpid()}-{time.time_ns()}/out.zarr"
    a = acquire_claim(dest, run_id="url-a", heartbeat_interval=0.05, stale_after=1.0, settle=0.01)
    time.sleep(0.2)
    assert a.beats >= 1 and a.held()
    with pytest.raises(DestinationClaimedError, match="url-a"):
        acquire_claim(dest, settle=0.01, heartbeat_interval=0.5, stale_after=1.0)
    a.stop_heartbeat()
    time.sleep(1.2)  # its heartbeat stops: stale after 1 s
    b = acquire_claim(
        dest, run_id="url-b", takeover=True, heartbeat_interval=0.5, stale_after=1.0, settle=0.01
    )
    assert a.heartbeat() is False and b.held()
    assert b.release() and read_claim(dest) is None
