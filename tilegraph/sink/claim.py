"""One writer per destination: an exclusive claim with a heartbeat (issue 10, point 2).

A run calls :func:`acquire_claim` before it writes anything for a destination. The claim is the
file ``<destination>.tilegraph/claim.json`` holding the run id, host, pid, start time and the
holder's heartbeat settings; a background thread refreshes it every ``heartbeat_interval`` seconds
(the file's modification time locally, a ``heartbeat`` field on object stores) and checks on each beat
that the file still names this run. :meth:`Claim.release` removes it at the end; only the holder may
write the completion marker, which :func:`assert_holder` checks just before.

A second run gets :class:`DestinationClaimedError` naming the holder (host, pid, run id, age of its
heartbeat). A claim is *stale* when its heartbeat is older than ``stale_after`` seconds (the larger of
the taker's and the holder's own setting), or at once when the holder ran on this very machine (same
host name, boot id and pid namespace) and its process is gone. Only a stale claim can be taken over,
and only when the caller allows it (``takeover=True``, i.e. ``resume=True`` or ``overwrite=True``).

Atomicity
---------
* **Local and network file systems.** The claim is written completely to a temporary file and then
  published with ``os.link`` (fails with ``EEXIST`` if a claim exists; atomic on POSIX file systems and
  NFS), falling back to ``O_CREAT | O_EXCL`` where hard links are unsupported. A takeover renames the
  stale claim to a unique name (only one taker's ``rename`` can succeed), checks that the renamed file is
  the very one it judged stale (same device, inode and modification time), deletes it, and then
  competes for the claim like a new run; if the check fails the file is put back. Exactly one run
  holds the claim at a time; a holder judged stale that was in fact only frozen notices on its next
  heartbeat (:attr:`Claim.lost`, ``on_lost``) and :func:`assert_holder` refuses it the completion
  marker.
* **fsspec URLs (object stores).** Best effort: an exclusive create (``mode="xb"``, a conditional PUT
  where the file system implements it), else "absent, then write, wait ``settle`` seconds, read back
  and keep the claim only if it still names this run". Two runs starting within the same fraction of a
  second may both believe they won on a store without conditional writes; the read-back on every
  heartbeat makes the loser notice within one heartbeat interval. Heartbeat ages there are measured
  with the reader's clock (clock skew adds to them).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tilegraph.errors import ClaimLostError, DestinationClaimedError
from tilegraph.sink.safety import (
    atomic_write_json,
    host_identity,
    join,
    local_path,
    read_json,
    sidecar_path,
    url_fs,
)

__all__ = [
    "Claim",
    "ClaimInfo",
    "ClaimToken",
    "DestinationClaimedError",
    "ClaimLostError",
    "acquire_claim",
    "assert_holder",
    "read_claim",
    "claim_path",
    "break_stale_claim",
    "HEARTBEAT_INTERVAL",
    "STALE_AFTER",
]

log = logging.getLogger("tilegraph.claim")

#: Default seconds between heartbeats.
HEARTBEAT_INTERVAL = 5.0
#: Default seconds without a heartbeat after which a claim is stale.
STALE_AFTER = 60.0
_CLAIM_NAME = "claim.json"
_UNREADABLE_GRACE = 5.0  # a claim file still empty after this long (O_EXCL writer died) is stale


def claim_path(destination: str | os.PathLike) -> str:
    """Path (or URL) of the claim file of ``destination``."""
    return join(sidecar_path(destination), _CLAIM_NAME)


# --------------------------------------------------------------------------------------------------
# reading a claim


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), ``None`` if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()[19]


def _pid_alive(pid: int, start: str | None) -> bool | None:
    """Is process ``pid`` (started at ``start``) alive on this machine? ``None``: cannot tell."""
    if os.path.isdir("/proc/self"):
        now = _proc_start(pid)
        if now is None:
            return False
        return None if start is None else now == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return None
    return None  # exists, but the pid may have been reused: cannot tell


@dataclass(frozen=True)
class ClaimInfo:
    """A claim as read from its file.

    Attributes
    ----------
    path
        The claim file.
    run_id, host, pid, started
        Who holds it and since when (``started``: seconds since the epoch).
    heartbeat_age
        Seconds since its last heartbeat, measured against the file system's clock when local.
    stale_after, heartbeat_interval
        The holder's own settings.
    holder_alive
        ``False`` when the holder ran on this machine and its process is gone, ``True`` when it
        runs here, ``None`` when it ran elsewhere (only the heartbeat tells).
    """

    path: str
    run_id: str
    host: str
    pid: int
    started: float
    heartbeat_age: float
    stale_after: float = STALE_AFTER
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    holder_alive: bool | None = None
    destination: str | None = None
    extra: dict = field(default_factory=dict)
    stat: tuple[int, int, int] | None = None  # (st_dev, st_ino, st_mtime_ns) when local

    def is_stale(self, stale_after: float | None = None) -> bool:
        """True when the holder is known dead or its heartbeat is older than the larger timeout."""
        if self.holder_alive is False:
            return True
        if self.run_id == "unknown":  # an empty or unreadable claim file: its writer died before writing it
            return self.heartbeat_age > _UNREADABLE_GRACE
        limit = max(float(stale_after if stale_after is not None else STALE_AFTER), float(self.stale_after))
        return self.heartbeat_age > limit

    def describe(self) -> str:
        """One line naming the holder, for errors and ``tilegraph info``."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "?"
        state = {False: ", its process is gone", True: ", running", None: ""}[self.holder_alive]
        return (
            f"run {self.run_id} on host {self.host} (pid {self.pid}), started {when}, "
            f"last heartbeat {self.heartbeat_age:.1f} s ago{state}"
        )


def _fs_now(folder: str) -> float:
    """The file system's current time (mtime of a file written now), or the local clock."""
    probe = os.path.join(folder, f".now-{uuid.uuid4().hex}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError:
        return time.time()


def _info_from(path: str, data: dict | None, *, age: float, stat: tuple[int, int, int] | None) -> ClaimInfo:
    data = data or {}
    me = host_identity()
    alive: bool | None = None
    same_machine = (
        data.get("host") == me["host"]
        and bool(me["boot_id"])
        and data.get("boot_id") == me["boot_id"]
        and data.get("pid_ns") == me["pid_ns"]
    )
    if same_machine and isinstance(data.get("pid"), int):
        alive = _pid_alive(int(data["pid"]), data.get("proc_start"))
    return ClaimInfo(
        path=path,
        run_id=str(data.get("run_id", "unknown")),
        host=str(data.get("host", "unknown")),
        pid=int(data.get("pid", -1)),
        started=float(data.get("started", 0.0)),
        heartbeat_age=max(0.0, age),
        stale_after=float(data.get("stale_after", STALE_AFTER)),
        heartbeat_interval=float(data.get("heartbeat_interval", HEARTBEAT_INTERVAL)),
        holder_alive=alive,
        destination=data.get("destination"),
        extra=dict(data.get("extra") or {}),
        stat=stat,
    )


def _read_local(path: str) -> tuple[dict | None, os.stat_result] | None:
    """``(content, stat)`` of a local claim file, ``None`` if absent. Content ``None``: not valid JSON."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        chunks = []
        while True:
            block = os.read(fd, 65536)
            if not block:
                break
            chunks.append(block)
    finally:
        os.close(fd)
    try:
        data = json.loads(b"".join(chunks)) if chunks else None
    except ValueError:
        data = None
    return (data if isinstance(data, dict) else None), st


def read_claim(destination: str | os.PathLike) -> ClaimInfo | None:
    """The current claim on ``destination``, or ``None`` if nobody holds it."""
    path = claim_path(destination)
    local = local_path(path)
    if local is not None:
        got = _read_local(local)
        if got is None:
            return None
        data, st = got
        age = _fs_now(os.path.dirname(local)) - st.st_mtime
        if data is None:  # being written by an O_EXCL writer, or its writer died before writing
            data = {
                "run_id": "unknown",
                "stale_after": _UNREADABLE_GRACE,
                "heartbeat_interval": _UNREADABLE_GRACE,
            }
        return _info_from(local, data, age=age, stat=(st.st_dev, st.st_ino, st.st_mtime_ns))
    data = read_json(path)
    if data is None:
        fs, root = url_fs(path)
        if not fs.exists(root):
            return None
        data = {"run_id": "unknown", "stale_after": _UNREADABLE_GRACE}
    beat = float(data.get("heartbeat", data.get("started", 0.0)))
    return _info_from(path, data, age=time.time() - beat, stat=None)


# --------------------------------------------------------------------------------------------------
# the claim a run holds


@dataclass(frozen=True)
class ClaimToken:
    """A picklable handle a worker task can use to check that its run still holds the claim."""

    path: str
    run_id: str

    def held(self) -> bool:
        """True while the claim file names this run."""
        data = read_json(self.path)
        return isinstance(data, dict) and data.get("run_id") == self.run_id

    def check(self) -> None:
        """Raise :class:`ClaimLostError` unless the claim file names this run."""
        if not self.held():
            raise ClaimLostError(
                f"run {self.run_id} no longer holds the destination's claim",
                path=self.path,
                hint="another run took the destination over; this run's results are not published",
            )


class Claim:
    """The exclusive claim this run holds on a destination (see the module notes).

    Use as a context manager (released on exit) or call :meth:`release`.
    """

    def __init__(
        self,
        destination: str,
        path: str,
        content: dict,
        *,
        heartbeat_interval: float,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.destination = destination
        self.path = path
        self.run_id: str = content["run_id"]
        self.content = content
        self.heartbeat_interval = float(heartbeat_interval)
        self.on_lost = on_lost
        self._lost: str | None = None
        self._released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    # ----------------------------------------------------------------- state
    @property
    def lost(self) -> str | None:
        """Why the claim was lost (noticed on a heartbeat), or ``None`` while held."""
        return self._lost

    def token(self) -> ClaimToken:
        """A picklable :class:`ClaimToken` for worker tasks."""
        return ClaimToken(self.path, self.run_id)

    def held(self) -> bool:
        """Read the claim file now: does it still name this run?"""
        return not self._released and self._lost is None and self.token().held()

    def check(self) -> None:
        """Raise :class:`ClaimLostError` unless this run holds the claim right now (reads the file)."""
        if self._released:
            raise ClaimLostError(f"run {self.run_id} already released its claim", path=self.path)
        if self._lost is not None:
            raise ClaimLostError(
                f"run {self.run_id} lost the destination's claim: {self._lost}",
                path=self.path,
                hint="another run took the destination over; run again with resume=True once it is done",
            )
        self.token().check()

    # ----------------------------------------------------------------- heartbeat
    def heartbeat(self) -> bool:
        """One heartbeat: check the file still names this run, then refresh it. False if lost."""
        if self._released or self._lost is not None:
            return False
        local = local_path(self.path)
        try:
            data = read_json(self.path)
            if not isinstance(data, dict) or data.get("run_id") != self.run_id:
                holder = data.get("run_id") if isinstance(data, dict) else None
                self._mark_lost(f"the claim file now names {holder or 'nobody'}")
                return False
            if local is not None:
                os.utime(local, None)
            else:
                self.content = {**self.content, "heartbeat": time.time()}
                atomic_write_json(self.path, self.content)
        except OSError as exc:  # transient trouble (network file system): keep trying
            log.warning("claim heartbeat failed for %s: %s", self.path, exc)
            return True
        self.beats += 1
        return True

    def _mark_lost(self, reason: str) -> None:
        self._lost = reason
        log.error("destination claim lost (%s): %s", self.path, reason)
        if self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:  # a callback must never kill the heartbeat thread silently
                log.exception("on_lost callback failed")

    def start_heartbeat(self) -> None:
        """Start the background thread that beats every :attr:`heartbeat_interval` seconds."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.heartbeat_interval):
                if not self.heartbeat():
                    return

        self._thread = threading.Thread(target=loop, name=f"tilegraph-claim-{self.run_id[:8]}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread (the claim stays; it goes stale after ``stale_after``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.heartbeat_interval))
            self._thread = None

    # ----------------------------------------------------------------- release
    def release(self) -> bool:
        """Stop the heartbeat and remove the claim file if it still names this run.

        Returns
        -------
        bool
            True if the claim was removed; False if it had been lost (nothing is removed then).
        """
        self.stop_heartbeat()
        if self._released:
            return False
        self._released = True
        data = read_json(self.path)
        if not isinstance(data, dict) or data.get("run_id") != self.run_id:
            return False
        local = local_path(self.path)
        if local is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local)
        else:
            fs, root = url_fs(self.path)
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(root)
        return True

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else ("lost" if self._lost else "held")
        return f"Claim({self.destination!r}, run_id={self.run_id!r}, {state})"


def assert_holder(claim: Claim) -> None:
    """Raise :class:`ClaimLostError` unless ``claim`` is held right now (call before the completion marker)."""
    claim.check()


# --------------------------------------------------------------------------------------------------
# acquiring


def _create_local(path: str, payload: bytes) -> bool:
    """Publish a complete claim file at ``path`` atomically; False if one exists."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.ENOSYS,
            errno.EMLINK,
            errno.EXDEV,
        ):
            raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    # no hard links here: O_CREAT | O_EXCL (a reader may briefly see an empty file: treated as "being written")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _create_url(path: str, payload: bytes, settle: float) -> bool:
    """Best-effort exclusive create on an fsspec URL (see the module notes)."""
    fs, root = url_fs(path)
    try:
        with fs.open(root, "xb") as f:
            f.write(payload)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError, TypeError):
        pass  # no exclusive mode here
    if fs.exists(root):
        return False
    fs.pipe(root, payload)
    time.sleep(settle)
    try:
        data = json.loads(fs.cat_file(root))
    except (FileNotFoundError, ValueError):
        return False
    return bool(isinstance(data, dict) and data.get("run_id") == json.loads(payload)["run_id"])


def _take_over_local(info: ClaimInfo) -> None:
    """Remove the stale claim ``info`` if it is still exactly that file (see the module notes)."""
    path = info.path
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else took it over first
    got = _read_local(aside)
    st = got[1] if got else None
    same = st is not None and info.stat == (st.st_dev, st.st_ino, st.st_mtime_ns)
    if same:
        os.unlink(aside)
        log.warning("took over a stale claim: %s", info.describe())
        return
    # it changed between the check and the rename (a fresh claim, or the holder came back): put it back
    try:
        os.link(aside, path)
    except FileExistsError:
        log.error(
            "claim %s was replaced during a takeover; its holder will notice on its next heartbeat", path
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


def _take_over_url(info: ClaimInfo) -> None:
    fs, root = url_fs(info.path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(root)
    log.warning("took over a stale claim: %s", info.describe())


def acquire_claim(
    destination: str | os.PathLike,
    *,
    run_id: str | None = None,
    takeover: bool = False,
    stale_after: float = STALE_AFTER,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    heartbeat: bool = True,
    on_lost: Callable[[str], None] | None = None,
    extra: dict | None = None,
    settle: float = 1.0,
) -> Claim:
    """Take the exclusive claim on ``destination`` before anything is written.

    Parameters
    ----------
    destination
        Local path or fsspec URL of the output.
    run_id
        This run's id (default: a new random one).
    takeover
        Allow taking over a stale claim (``resume=True`` or ``overwrite=True``).
    stale_after
        Seconds without a heartbeat after which another run's claim is stale (the holder's own,
        larger setting wins).
    heartbeat_interval
        Seconds between this run's heartbeats (keep it well below ``stale_after``).
    heartbeat
        Start the heartbeat thread now.
    on_lost
        Called (from the heartbeat thread) with a reason if the claim is found taken over.
    extra
        Small JSON-able dict recorded in the claim (e.g. the model's name).
    settle
        Seconds to wait before the read-back on object stores without exclusive create.

    Returns
    -------
    Claim
        The held claim (heartbeat running unless ``heartbeat=False``).

    Raises
    ------
    DestinationClaimedError
        Another run holds the claim (alive, or stale while ``takeover`` is False). The message names
        the holder: run id, host, pid, start time and heartbeat age.
    """
    dest = os.fspath(destination)
    if heartbeat_interval <= 0 or stale_after <= heartbeat_interval:
        raise ValueError("need 0 < heartbeat_interval < stale_after")
    path = claim_path(dest)
    local = local_path(path)
    run = run_id or uuid.uuid4().hex
    content = {
        "tilegraph_claim": 1,
        "run_id": run,
        **host_identity(),
        "pid": os.getpid(),
        "proc_start": _proc_start(os.getpid()),
        "started": time.time(),
        "heartbeat": time.time(),
        "heartbeat_interval": float(heartbeat_interval),
        "stale_after": float(stale_after),
        "destination": dest,
        "extra": dict(extra or {}),
    }
    payload = json.dumps(content, sort_keys=True).encode()
    if local is not None:
        os.makedirs(os.path.dirname(local), exist_ok=True)
    else:
        fs, root = url_fs(path)
        fs.makedirs(root.rsplit("/", 1)[0], exist_ok=True)
    deadline = time.monotonic() + 4 * _UNREADABLE_GRACE
    while time.monotonic() < deadline:
        won = _create_local(local, payload) if local is not None else _create_url(path, payload, settle)
        if won:
            claim = Claim(
                dest, local or path, content, heartbeat_interval=heartbeat_interval, on_lost=on_lost
            )
            if heartbeat:
                claim.start_heartbeat()
            return claim
        info = read_claim(dest)
        if info is None:
            continue  # released or taken over meanwhile: try again
        if info.run_id == "unknown" and not info.is_stale(stale_after):
            time.sleep(0.05)  # being written by an O_EXCL writer
            continue
        if not info.is_stale(stale_after):
            _refuse(dest, info, stale_after, stale=False)
        if not takeover:
            _refuse(dest, info, stale_after, stale=True)
        if local is not None:
            _take_over_local(info)
        else:
            _take_over_url(info)
    raise DestinationClaimedError(
        "could not take the destination's claim: it keeps changing hands",
        path=dest,
        hint="another process is competing for this destination; stop it and retry",
    )


def _refuse(dest: str, info: ClaimInfo, stale_after: float, *, stale: bool) -> None:
    if stale:
        msg = f"the destination is claimed by a run that seems to have stopped: {info.describe()}"
        hint = "pass resume=True to continue it, overwrite=True to start over, or run `tilegraph clean`"
    else:
        limit = max(stale_after, info.stale_after)
        msg = f"another run is writing this destination: {info.describe()}"
        hint = (
            "wait for it to finish or stop it; once its heartbeat has stopped for "
            f"{limit:.0f} s, resume=True or overwrite=True can take the destination over"
        )
    err = DestinationClaimedError(msg, path=dest, hint=hint)
    err.holder = info
    raise err


def break_stale_claim(
    destination: str | os.PathLike, *, stale_after: float = STALE_AFTER
) -> ClaimInfo | None:
    """Remove the claim on ``destination`` if it is stale (for ``tilegraph clean``).

    Returns
    -------
    ClaimInfo or None
        The claim that was removed, or ``None`` when there was none.

    Raises
    ------
    DestinationClaimedError
        The claim is live: nothing is removed.
    """
    dest = os.fspath(destination)
    info = read_claim(dest)
    if info is None:
        return None
    if not info.is_stale(stale_after):
        _refuse(dest, info, stale_after, stale=False)
    if local_path(info.path) is not None:
        _take_over_local(info)
    else:
        _take_over_url(info)
    return info
