"""The resume manifest beside a destination, and the leftovers of crashed runs (issue 10, point 4).

Layout of the sidecar folder ``<destination>.tilegraph/``::

    claim.json                    the run's claim (tilegraph.sink.claim)
    manifest.json                 identity of the job: plan, model, options, runs, staging/scratch paths
    records/<kind>/<run>-<rnd>.json   append-only: one small file per finished task, {"ids": ranges}
    durable/<kind>.json           compacted union of the records of one kind
    passes/<name>.json            result of each finished pass (norm statistics, colour statistics,
                                  seam paths, pyramid levels ...)
    staging-<run>/                the Zarr output being written (tilegraph.sink.publish)
    tilegraph-<run>-<rnd>/        default scratch (tile store) (tilegraph.sink.safety.make_scratch)

*Kinds* are free names; ``"windows"`` (flat window indices whose model output is durable in the tile
store) and ``"chunks"`` (flat output-chunk indices ``cy * n_chunk_cols + cx`` durable in the output)
are the two the engine uses, and a pass may record its own items (``"seams"``...).

Writes and their atomicity
    ``manifest.json``, ``durable/*`` and ``passes/*`` are rewritten whole through a temporary file and a
    rename (small files, written by the claim holder only). Records are never rewritten: each finished
    task adds one file (temporary name, then rename), so many workers finishing windows never contend
    for one file; :meth:`Manifest.durable` unions the compacted file and the records, and
    :meth:`Manifest.compact` (claim holder, while no task of that kind runs: at the start of a resume
    and at the end of a pass) folds records into ``durable/<kind>.json`` and deletes exactly the records
    it folded. A task writes its record only **after** its data write returned, so a record always means
    "durable"; the absence of a record means "do it again" (chunk presence in the store means nothing
    when zarr skips chunks equal to the fill value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tilegraph.errors import InputError, ResumeMismatchError
from tilegraph.sink.claim import STALE_AFTER, break_stale_claim, read_claim
from tilegraph.sink.safety import (
    SCRATCH_PREFIX,
    SIDECAR_SUFFIX,
    atomic_write_json,
    is_scratch,
    local_path,
    read_json,
    read_scratch_marker,
    remove_scratch,
    sidecar_path,
)

__all__ = [
    "IdRanges",
    "Manifest",
    "RecordWriter",
    "Difference",
    "ResumeMismatchError",
    "ResumeWork",
    "resume_work",
    "Leftover",
    "find_leftovers",
    "remove_leftover",
    "clean",
    "destination_status",
    "sweep_partials",
    "DEFAULT_IGNORED_OPTIONS",
    "MANIFEST_FORMAT",
]

MANIFEST_FORMAT = "tilegraph-manifest"
_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")

#: Option paths (dotted, prefix match) that do not change the output, ignored by :meth:`Manifest.compare`.
DEFAULT_IGNORED_OPTIONS: tuple[str, ...] = (
    "execution",
    "quality",
    "output.overwrite",
    "output.resume",
    "output.keep_tile_store",
    "output.scratch",
    "output.check_space",
)


# --------------------------------------------------------------------------------------------------
# compact sets of indices


class IdRanges:
    """An immutable set of non-negative integers stored as sorted, disjoint half-open ranges.

    ``IdRanges.from_ids([0, 1, 2, 7])`` holds ``[(0, 3), (7, 8)]``; windows finished in raster order
    stay a handful of ranges however many there are.
    """

    __slots__ = ("_ranges",)

    def __init__(self, ranges: Iterable[tuple[int, int] | Sequence[int]] = ()) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted((int(r[0]), int(r[1])) for r in ranges):
            if a < 0 or b < a:
                raise ValueError(f"bad range [{a}, {b})")
            if a == b:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._ranges: tuple[tuple[int, int], ...] = tuple(merged)

    @classmethod
    def from_ids(cls, ids: Iterable[int]) -> IdRanges:
        """The set of ``ids``."""
        out: list[tuple[int, int]] = []
        for i in sorted({int(v) for v in ids}):
            if out and out[-1][1] == i:
                out[-1] = (out[-1][0], i + 1)
            else:
                out.append((i, i + 1))
        return cls(out)

    @classmethod
    def from_json(cls, data: Any) -> IdRanges:
        """From ``[[start, stop], ...]`` as :meth:`to_json` writes it."""
        return cls(tuple(r) for r in (data or []))

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The half-open ranges."""
        return self._ranges

    def to_json(self) -> list[list[int]]:
        """``[[start, stop], ...]``."""
        return [[a, b] for a, b in self._ranges]

    def union(self, *others: IdRanges) -> IdRanges:
        """The union with ``others``."""
        return IdRanges([*self._ranges, *(r for o in others for r in o._ranges)])

    __or__ = union

    def missing(self, n: int) -> list[int]:
        """Indices in ``range(n)`` not in the set."""
        out: list[int] = []
        pos = 0
        for a, b in self._ranges:
            if a >= n:
                break
            out.extend(range(pos, a))
            pos = max(pos, b)
        out.extend(range(pos, n))
        return out

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, int):
            return False
        import bisect

        k = bisect.bisect_right([a for a, _ in self._ranges], item) - 1
        return k >= 0 and item < self._ranges[k][1]

    def __iter__(self) -> Iterator[int]:
        for a, b in self._ranges:
            yield from range(a, b)

    def __len__(self) -> int:
        return sum(b - a for a, b in self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdRanges) and other._ranges == self._ranges

    def __hash__(self) -> int:
        return hash(self._ranges)

    def __repr__(self) -> str:
        return f"IdRanges({list(self._ranges)})"


def _ranges_of(ids: Iterable[int] | IdRanges) -> IdRanges:
    return ids if isinstance(ids, IdRanges) else IdRanges.from_ids(ids)


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"bad {what} name {name!r}: letters, digits and _ . : - only")
    return name


# --------------------------------------------------------------------------------------------------
# records written by tasks


@dataclass(frozen=True)
class RecordWriter:
    """Picklable writer of append-only records; send it to worker tasks.

    A task calls :meth:`add` once, after its data write returned. With ``token`` (a
    :class:`tilegraph.sink.claim.ClaimToken`) it first checks that its run still holds the claim.
    A record is published by an atomic rename, so it survives the death of any process, as the
    chunks it vouches for do (zarr writes them the same way). It is not flushed to the disk
    (``fsync=False``) by default: zarr does not flush the chunks either, so a flushed record could
    not make the pair survive a power cut, and the flush cost 4 to 9 ms of every task.
    """

    sidecar: str
    run_id: str
    token: Any = None
    fsync: bool = False

    def add(self, kind: str, ids: Iterable[int] | IdRanges, **extra: Any) -> str:
        """Record ``ids`` of ``kind`` as durable (one new file); returns its path.

        ``extra`` (small, JSON-able) is stored with the record, e.g. the task's timing.
        """
        _check_name(kind, "record kind")
        if self.token is not None:
            self.token.check()
        folder = os.path.join(self.sidecar, "records", kind)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.run_id[:12]}-{uuid.uuid4().hex[:12]}.json")
        body = {"ids": _ranges_of(ids).to_json(), "run_id": self.run_id, "time": time.time(), **extra}
        atomic_write_json(path, body, fsync=self.fsync)
        return path


# --------------------------------------------------------------------------------------------------
# comparing identities


@dataclass(frozen=True)
class Difference:
    """One field that differs between the interrupted run and this one."""

    section: str  # "plan", "model" or "options"
    key: str  # dotted path inside the section
    recorded: Any
    current: Any

    def __str__(self) -> str:
        return f"{self.section}.{self.key}: {self.recorded!r} then, {self.current!r} now"


_MISSING = "<absent>"


def _plain(obj: Any) -> Any:
    """JSON-normal form (tuples become lists, numpy scalars numbers)."""
    import json

    from tilegraph.sink.safety import _json_default

    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        obj = obj.to_dict()
    return json.loads(json.dumps(obj, default=_json_default, sort_keys=True))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not obj and prefix:
            out[prefix] = {}
        return out
    return {prefix: obj}


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in ignore)


def _diff(section: str, recorded: Any, current: Any, ignore: Sequence[str] = ()) -> list[Difference]:
    a, b = _flatten(_plain(recorded)), _flatten(_plain(current))
    out = []
    for key in sorted(set(a) | set(b)):
        if _ignored(key, ignore):
            continue
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va != vb:
            out.append(Difference(section, key, va, vb))
    return out


# --------------------------------------------------------------------------------------------------
# the manifest


class Manifest:
    """The resume manifest of one destination (see the module notes).

    Build it with :meth:`create` (a new run) or :meth:`open` (a resume, ``tilegraph info``).
    """

    def __init__(self, destination: str, data: dict) -> None:
        self.destination = destination
        self.sidecar = sidecar_path(destination)
        self.data = data

    # ----------------------------------------------------------------- construction
    @staticmethod
    def path_of(destination: str | os.PathLike) -> str:
        """``<destination>.tilegraph/manifest.json``."""
        return os.path.join(sidecar_path(destination), "manifest.json")

    @classmethod
    def exists(cls, destination: str | os.PathLike) -> bool:
        """Is there a manifest (an unfinished or running job) for ``destination``?"""
        return os.path.exists(cls.path_of(destination))

    @classmethod
    def create(
        cls,
        destination: str | os.PathLike,
        *,
        plan: Any,
        model: Mapping[str, Any],
        options: Any,
        run_id: str,
        n_windows: int | None = None,
        n_chunks: int | None = None,
        staging: str | None = None,
        scratch: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Start the manifest of a new job (replacing any previous one: call it holding the claim).

        Parameters
        ----------
        destination
            The output path (local file system; object stores keep only the completion marker).
        plan
            ``Plan.to_dict()`` (or a plan, or any JSON-able mapping).
        model
            The model's identity: at least a content hash (``{"name", "weights_sha256", "token"}``).
        options
            ``RunOptions.to_dict()`` (or the options object).
        run_id
            The run creating it.
        n_windows, n_chunks
            Totals, for progress and ``tilegraph info``.
        staging, scratch
            Where this job's output is staged and its tile store lives (reused on resume).
        extra
            Anything else small and JSON-able.
        """
        dest = os.fspath(destination)
        if local_path(dest) is None:
            raise InputError(
                "resume manifests are kept on file systems only",
                path=dest,
                hint="object-store outputs rely on the completion marker; rerun with overwrite=True after a crash",
            )
        cls.remove_state(dest)
        now = time.time()
        data = {
            "format": MANIFEST_FORMAT,
            "version": _VERSION,
            "destination": os.path.abspath(dest),
            "created": now,
            "runs": [{"run_id": run_id, "started": now, "pid": os.getpid()}],
            "plan": _plain(plan),
            "model": _plain(dict(model)),
            "options": _plain(options),
            "n_windows": n_windows,
            "n_chunks": n_chunks,
            "staging": staging,
            "scratch": scratch,
            "extra": _plain(dict(extra or {})),
        }
        os.makedirs(sidecar_path(dest), exist_ok=True)
        m = cls(dest, data)
        m._save()
        return m

    @classmethod
    def open(cls, destination: str | os.PathLike) -> Manifest | None:
        """The manifest of ``destination``, or ``None`` if there is none (or it is not tilegraph's)."""
        dest = os.fspath(destination)
        data = read_json(cls.path_of(dest))
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            return None
        return cls(dest, data)

    def _save(self) -> None:
        atomic_write_json(self.path_of(self.destination), self.data)

    # ----------------------------------------------------------------- identity
    @property
    def runs(self) -> list[dict]:
        """The runs that worked on this job, oldest first."""
        return list(self.data.get("runs", []))

    def add_run(self, run_id: str) -> None:
        """Record that ``run_id`` resumes this job."""
        self.data["runs"] = [*self.runs, {"run_id": run_id, "started": time.time(), "pid": os.getpid()}]
        self._save()

    def update(self, **fields: Any) -> None:
        """Set top-level fields (``staging=``, ``scratch=``, ``n_chunks=`` ...) and save."""
        for key, value in fields.items():
            self.data[key] = _plain(value)
        self._save()

    def get(self, key: str, default: Any = None) -> Any:
        """A top-level field."""
        return self.data.get(key, default)

    def compare(
        self,
        plan: Any,
        model: Mapping[str, Any],
        options: Any,
        *,
        ignore: Sequence[str] = DEFAULT_IGNORED_OPTIONS,
    ) -> list[Difference]:
        """What differs between the recorded job and ``plan``, ``model`` and ``options``.

        ``ignore`` lists option paths (dotted, prefix match) that do not change the output; the
        plan and the model are compared whole. An empty list means the job can be resumed.
        """
        return [
            *_diff("plan", self.data.get("plan"), plan),
            *_diff("model", self.data.get("model"), dict(model)),
            *_diff("options", self.data.get("options"), options, ignore),
        ]

    def check_resumable(
        self,
        plan: Any,
        model: Mapping[str, Any],
        options: Any,
        *,
        ignore: Sequence[str] = DEFAULT_IGNORED_OPTIONS,
    ) -> None:
        """Raise :class:`ResumeMismatchError` saying what differs, if anything does."""
        diffs = self.compare(plan, model, options, ignore=ignore)
        if not diffs:
            return
        shown = "; ".join(str(d) for d in diffs[:6]) + (
            f"; and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        )
        sections = sorted({d.section for d in diffs})
        raise ResumeMismatchError(
            f"cannot resume: the {' and '.join(sections)} differ from the interrupted run ({shown})",
            path=self.destination,
            hint="rerun with the original settings and model, or pass overwrite=True to start over",
        )

    # ----------------------------------------------------------------- durable sets
    def writer(self, run_id: str, *, token: Any = None, fsync: bool = False) -> RecordWriter:
        """A picklable :class:`RecordWriter` for this job's tasks."""
        return RecordWriter(self.sidecar, run_id, token, fsync)

    def record(self, kind: str, ids: Iterable[int] | IdRanges, *, run_id: str, **extra: Any) -> str:
        """Record ``ids`` of ``kind`` from the driver (same as a task's :meth:`RecordWriter.add`)."""
        return self.writer(run_id).add(kind, ids, **extra)

    def _records(self, kind: str) -> list[str]:
        folder = os.path.join(self.sidecar, "records", kind)
        try:
            return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".json"))
        except FileNotFoundError:
            return []

    def _compacted(self, kind: str) -> tuple[str | None, IdRanges]:
        data = read_json(os.path.join(self.sidecar, "durable", f"{kind}.json"))
        if not isinstance(data, dict):
            return None, IdRanges()
        return data.get("generation"), IdRanges.from_json(data.get("ids"))

    def _read(self, kind: str) -> tuple[IdRanges, list[str]]:
        """``(union, record files read)``, consistent even while :meth:`compact` runs elsewhere."""
        for _ in range(5):
            gen, ids = self._compacted(kind)
            files, parts = [], []
            for path in self._records(kind):
                data = read_json(path)
                if isinstance(data, dict):
                    parts.append(IdRanges.from_json(data.get("ids")))
                    files.append(path)
            if self._compacted(kind)[0] == gen:
                return ids.union(*parts), files
        return ids.union(*parts), files

    def durable(self, kind: str) -> IdRanges:
        """Every id of ``kind`` recorded as durable (compacted file and records together)."""
        return self._read(_check_name(kind, "record kind"))[0]

    def durable_windows(self) -> IdRanges:
        """Windows whose model output is durable in the tile store."""
        return self.durable("windows")

    def durable_chunks(self) -> IdRanges:
        """Output chunks durable in the output."""
        return self.durable("chunks")

    def kinds(self) -> list[str]:
        """Record kinds present."""
        names: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            names |= set(os.listdir(os.path.join(self.sidecar, "records")))
        with contextlib.suppress(FileNotFoundError):
            names |= {
                n[:-5] for n in os.listdir(os.path.join(self.sidecar, "durable")) if n.endswith(".json")
            }
        return sorted(n for n in names if _NAME.match(n))

    def compact(self, kind: str | None = None) -> None:
        """Fold the records of ``kind`` (default: every kind) into ``durable/<kind>.json``.

        Call it holding the claim, while no task writes records of that kind.
        """
        for k in [kind] if kind is not None else self.kinds():
            _check_name(k, "record kind")
            ids, files = self._read(k)
            if not files:
                continue
            folder = os.path.join(self.sidecar, "durable")
            os.makedirs(folder, exist_ok=True)
            atomic_write_json(
                os.path.join(folder, f"{k}.json"), {"ids": ids.to_json(), "generation": uuid.uuid4().hex}
            )
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def forget(self, kind: str) -> None:
        """Drop every record of ``kind`` (e.g. ``"windows"`` when the tile store is gone)."""
        _check_name(kind, "record kind")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.sidecar, "durable", f"{kind}.json"))
        shutil.rmtree(os.path.join(self.sidecar, "records", kind), ignore_errors=True)

    # ----------------------------------------------------------------- passes
    def pass_done(self, name: str, result: Any = None, *, run_id: str | None = None) -> None:
        """Record that pass ``name`` finished with its small, JSON-able ``result``."""
        _check_name(name, "pass")
        folder = os.path.join(self.sidecar, "passes")
        os.makedirs(folder, exist_ok=True)
        body = {"name": name, "result": _plain(result), "finished": time.time(), "run_id": run_id}
        atomic_write_json(os.path.join(folder, f"{name}.json"), body)

    def pass_record(self, name: str) -> dict | None:
        """``{"name", "result", "finished", "run_id"}`` of a finished pass, or ``None``."""
        data = read_json(os.path.join(self.sidecar, "passes", f"{_check_name(name, 'pass')}.json"))
        return data if isinstance(data, dict) and data.get("name") == name else None

    def pass_result(self, name: str) -> Any:
        """The result of a finished pass, or ``None`` if it did not finish."""
        rec = self.pass_record(name)
        return None if rec is None else rec.get("result")

    def is_pass_done(self, name: str) -> bool:
        """Did pass ``name`` finish?"""
        return self.pass_record(name) is not None

    def passes_done(self) -> list[str]:
        """Names of the finished passes, in the order they finished."""
        try:
            names = [n[:-5] for n in os.listdir(os.path.join(self.sidecar, "passes")) if n.endswith(".json")]
        except FileNotFoundError:
            return []
        recs = [r for r in (self.pass_record(n) for n in names if _NAME.match(n)) if r is not None]
        return [r["name"] for r in sorted(recs, key=lambda r: r.get("finished", 0.0))]

    def next_pass(self, order: Sequence[str]) -> str | None:
        """The first pass in ``order`` that did not finish (``None``: all did)."""
        done = set(self.passes_done())
        return next((p for p in order if p not in done), None)

    def forget_pass(self, name: str) -> None:
        """Forget that pass ``name`` finished (it will run again)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.sidecar, "passes", f"{_check_name(name, 'pass')}.json"))

    # ----------------------------------------------------------------- removal
    @staticmethod
    def remove_state(destination: str | os.PathLike) -> None:
        """Delete the manifest, records, compacted sets and pass results (not claim, staging, scratch)."""
        side = sidecar_path(destination)
        for sub in ("records", "durable", "passes"):
            shutil.rmtree(os.path.join(side, sub), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(side, "manifest.json"))

    def remove(self) -> None:
        """:meth:`remove_state` of this manifest's destination (after a successful publish)."""
        self.remove_state(self.destination)

    def summary(self) -> dict:
        """Small dict for ``tilegraph info``: totals, durable counts, passes, runs."""
        out: dict[str, Any] = {
            "destination": self.data.get("destination"),
            "created": self.data.get("created"),
            "runs": [r.get("run_id") for r in self.runs],
            "passes_done": self.passes_done(),
            "model": self.data.get("model"),
            "staging": self.data.get("staging"),
            "scratch": self.data.get("scratch"),
        }
        for kind, total in (("windows", self.data.get("n_windows")), ("chunks", self.data.get("n_chunks"))):
            out[kind] = {"durable": len(self.durable(kind)), "total": total}
        return out


# --------------------------------------------------------------------------------------------------
# what a resume recomputes


@dataclass(frozen=True)
class ResumeWork:
    """What is left to do: output chunks to write and the windows they still need."""

    chunks: list[int]
    windows: list[int]
    durable_chunks: int = 0
    durable_windows: int = 0
    windows_skipped: int = 0  # not durable, but every chunk they feed is

    def describe(self) -> str:
        """One line for the progress display."""
        return (
            f"resuming: {len(self.chunks)} chunks to write ({self.durable_chunks} done), "
            f"{len(self.windows)} windows to compute ({self.durable_windows} durable, "
            f"{self.windows_skipped} no longer needed)"
        )


def resume_work(
    *,
    n_windows: int,
    n_chunks: int,
    windows_for_chunk: Callable[[int], Iterable[int]],
    durable_windows: IdRanges | Iterable[int] = (),
    durable_chunks: IdRanges | Iterable[int] = (),
) -> ResumeWork:
    """The chunks left to write and the windows left to compute for them.

    A chunk is redone unless it is durable; a window is computed only if a chunk still to be written
    needs it and it is not durable in the tile store.

    Parameters
    ----------
    n_windows, n_chunks
        Totals of the plan.
    windows_for_chunk
        Flat chunk index -> flat indices of the windows it needs (e.g. through
        ``Plan.chunk_box`` and ``Plan.windows_for_box``).
    durable_windows, durable_chunks
        From :meth:`Manifest.durable_windows` / :meth:`Manifest.durable_chunks`.
    """
    dw, dc = _ranges_of(durable_windows), _ranges_of(durable_chunks)
    chunks = dc.missing(n_chunks)
    needed: set[int] = set()
    for c in chunks:
        needed.update(int(w) for w in windows_for_chunk(c))
    bad = [w for w in needed if not 0 <= w < n_windows]
    if bad:
        raise ValueError(f"windows_for_chunk returned windows outside 0..{n_windows - 1}: {sorted(bad)[:5]}")
    windows = sorted(w for w in needed if w not in dw)
    not_durable = n_windows - len([w for w in dw if w < n_windows])
    return ResumeWork(
        chunks=chunks,
        windows=windows,
        durable_chunks=n_chunks - len(chunks),
        durable_windows=len([w for w in dw if w < n_windows]),
        windows_skipped=not_durable - len(windows),
    )


# --------------------------------------------------------------------------------------------------
# leftovers of crashed runs (tilegraph clean / tilegraph info)

LeftoverKind = Literal[
    "claim", "manifest", "staging", "replaced", "scratch", "partial", "legacy-scratch", "sidecar"
]
_PARTIAL_FILE = re.compile(r"(.*\.[0-9a-f]{32}\.partial|\..+\.partial-[0-9a-f]{12}|\..+\.[0-9a-f]{32}\.tmp)$")
_LEGACY = re.compile(r".+\.tilegraph-tmp-[0-9a-f]{8}$")
_LEGACY_CONTENT = {"tiles.zarr", "source.zarr", "output.zarr"}


@dataclass(frozen=True)
class Leftover:
    """Something a crashed (or running) run left behind.

    Attributes
    ----------
    path
        What to remove.
    kind
        ``claim``, ``manifest`` (with records and pass results), ``staging`` (a partial output),
        ``replaced`` (an old output moved aside by an interrupted publish), ``scratch`` (tile store,
        staged source), ``partial`` (a temporary file of an interrupted atomic write),
        ``legacy-scratch`` (``<destination>.tilegraph-tmp-<token>`` of tilegraph before issue 10),
        ``sidecar`` (the empty sidecar folder itself).
    destination
        The destination it belongs to, when known.
    live
        A run holding a live claim on that destination may still use it: never removed.
    """

    path: str
    kind: LeftoverKind
    destination: str | None = None
    run_id: str | None = None
    live: bool = False
    age_s: float | None = None
    nbytes: int | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        """Plain data."""
        return dataclasses.asdict(self)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        for n in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, n))
    return total


def _age(path: str) -> float | None:
    try:
        return max(0.0, time.time() - os.stat(path).st_mtime)
    except OSError:
        return None


def _claim_live(destination: str, stale_after: float) -> tuple[bool, str | None, str]:
    info = read_claim(destination)
    if info is None:
        return False, None, ""
    return (not info.is_stale(stale_after)), info.run_id, info.describe()


def _sidecar_leftovers(destination: str, stale_after: float, deep: bool) -> list[Leftover]:
    from tilegraph.sink.publish import REPLACED_PREFIX, STAGING_PREFIX

    side = sidecar_path(destination)
    if not os.path.isdir(side):
        return []
    live, holder, described = _claim_live(destination, stale_after)
    out: list[Leftover] = []

    def add(path: str, kind: LeftoverKind, run_id: str | None = None, detail: str = "") -> None:
        out.append(
            Leftover(path, kind, destination, run_id, live, _age(path), _size(path) if deep else None, detail)
        )

    manifest = Manifest.open(destination)
    for name in sorted(os.listdir(side)):
        path = os.path.join(side, name)
        if name == "claim.json":
            add(path, "claim", holder, described)
        elif name in ("manifest.json", "records", "durable", "passes"):
            has_manifest = os.path.exists(os.path.join(side, "manifest.json"))
            if name == "manifest.json" or not has_manifest:
                detail = ""
                if manifest is not None:
                    s = manifest.summary()
                    detail = (
                        f"{s['windows']['durable']}/{s['windows']['total']} windows and "
                        f"{s['chunks']['durable']}/{s['chunks']['total']} chunks durable; "
                        f"passes done: {', '.join(s['passes_done']) or 'none'}"
                    )
                add(path, "manifest", None, detail)
                has_manifest = True
        elif name.startswith(STAGING_PREFIX):
            add(path, "staging", name[len(STAGING_PREFIX) :], "partial output (resume=True continues it)")
        elif name.startswith(REPLACED_PREFIX):
            add(path, "replaced", None, "previous output moved aside by an interrupted publish")
        elif name.startswith(SCRATCH_PREFIX) and is_scratch(path):
            marker = read_scratch_marker(path) or {}
            add(path, "scratch", marker.get("run_id"), "tile store and staged source")
        elif _PARTIAL_FILE.match(name) or name.startswith(".now-") or ".stale-" in name:
            add(path, "partial")
    scratch = manifest.get("scratch") if manifest is not None else None
    if scratch and os.path.dirname(os.path.abspath(scratch)) != side and is_scratch(scratch):
        marker = read_scratch_marker(scratch) or {}
        add(scratch, "scratch", marker.get("run_id"), "tile store and staged source (in scratch=)")
    return out


def _partials_in(destination: str, live: bool) -> list[Leftover]:
    """``*.partial`` orphans of zarr's atomic writes inside an output folder (walks it)."""
    out = []
    for root, _dirs, files in os.walk(destination):
        for n in files:
            if _PARTIAL_FILE.match(n):
                p = os.path.join(root, n)
                out.append(Leftover(p, "partial", destination, None, live, _age(p), os.path.getsize(p)))
    return out


def sweep_partials(folder: str | os.PathLike, *, older_than: float = 0.0) -> list[str]:
    """Delete ``*.<uuid>.partial`` orphans of zarr's atomic writes under ``folder``; returns them.

    Call it on a staging output or tile store the resuming run has just taken over (claim held, the
    folder renamed to this run's name), so no other writer can be mid-write there.
    """
    removed = []
    for item in _partials_in(os.fspath(folder), False):
        if (item.age_s or 0.0) >= older_than:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.path)
            removed.append(item.path)
    return removed


def find_leftovers(
    where: str | os.PathLike, *, stale_after: float = STALE_AFTER, deep: bool = True
) -> list[Leftover]:
    """Leftovers of crashed runs for a destination, or in a folder (its direct entries).

    Parameters
    ----------
    where
        A destination (its sidecar, its staging and scratch, ``*.partial`` files inside it and export
        temporaries beside it), or a folder: every destination with a sidecar in it, ``tilegraph-*``
        scratch folders with their marker (a ``scratch=`` folder), legacy ``*.tilegraph-tmp-*``
        folders and temporary files of interrupted exports.
    stale_after
        Seconds without heartbeat after which a claim no longer protects its leftovers.
    deep
        Also measure sizes and walk output folders for ``*.partial`` orphans.
    """
    path = os.path.abspath(os.fspath(where))
    if local_path(path) is None:
        return []
    out: list[Leftover] = []
    seen: set[str] = set()

    def extend(items: list[Leftover]) -> None:
        for item in items:
            if item.path not in seen:
                seen.add(item.path)
                out.append(item)

    if path.endswith(SIDECAR_SUFFIX) and os.path.isdir(path):
        path = path[: -len(SIDECAR_SUFFIX)]  # the sidecar itself names its destination
    # ``where`` as a destination
    live = _claim_live(path, stale_after)[0]
    extend(_sidecar_leftovers(path, stale_after, deep))
    if deep and os.path.isdir(path):
        from tilegraph.sink.safety import is_tilegraph_output

        if is_tilegraph_output(path):
            extend(_partials_in(path, live))
    parent, base = os.path.dirname(path), os.path.basename(path)
    with contextlib.suppress(FileNotFoundError):
        for n in os.listdir(parent):
            if n.startswith(f".{base}.partial-"):
                p = os.path.join(parent, n)
                extend([Leftover(p, "partial", path, None, live, _age(p), os.path.getsize(p))])
    # ``where`` as a folder holding destinations or scratch folders
    if os.path.isdir(path) and not os.path.isdir(sidecar_path(path)):
        for n in sorted(os.listdir(path)):
            p = os.path.join(path, n)
            if n.endswith(SIDECAR_SUFFIX) and os.path.isdir(p):
                extend(_sidecar_leftovers(p[: -len(SIDECAR_SUFFIX)], stale_after, deep))
            elif n.startswith(SCRATCH_PREFIX) and is_scratch(p):
                marker = read_scratch_marker(p) or {}
                dest = marker.get("destination")
                live = bool(dest) and _claim_live(str(dest), stale_after)[0]
                extend(
                    [
                        Leftover(
                            p,
                            "scratch",
                            dest,
                            marker.get("run_id"),
                            live,
                            _age(p),
                            _size(p) if deep else None,
                        )
                    ]
                )
            elif _LEGACY.match(n) and os.path.isdir(p) and set(os.listdir(p)) <= _LEGACY_CONTENT:
                extend(
                    [Leftover(p, "legacy-scratch", n.rsplit(".tilegraph-tmp-", 1)[0], None, False, _age(p))]
                )
            elif n.startswith(".") and ".partial-" in n and _PARTIAL_FILE.match(n) and os.path.isfile(p):
                dest = os.path.join(path, n[1:].rsplit(".partial-", 1)[0])
                live = _claim_live(dest, stale_after)[0]
                extend([Leftover(p, "partial", dest, None, live, _age(p), os.path.getsize(p))])
    return out


def remove_leftover(item: Leftover, *, stale_after: float = STALE_AFTER) -> None:
    """Remove one leftover found by :func:`find_leftovers` (checked again first).

    Raises
    ------
    tilegraph.sink.claim.DestinationClaimedError
        The destination's claim is live (a run is using it): nothing is removed.
    """
    from tilegraph.sink.claim import DestinationClaimedError

    if item.destination is not None:
        live, _, described = _claim_live(item.destination, stale_after)
        if live:
            raise DestinationClaimedError(
                f"a running job uses this: {described}",
                path=item.path,
                hint="wait for it to finish or stop it first",
            )
    if item.kind == "claim":
        assert item.destination is not None
        break_stale_claim(item.destination, stale_after=stale_after)
    elif item.kind == "manifest":
        assert item.destination is not None
        Manifest.remove_state(item.destination)
    elif item.kind == "scratch":
        remove_scratch(item.path)
    elif item.kind in ("staging", "replaced", "legacy-scratch"):
        shutil.rmtree(item.path, ignore_errors=False)
    elif item.kind == "partial":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(item.path)
    elif item.kind == "sidecar":
        with contextlib.suppress(OSError):
            os.rmdir(item.path)


def clean(
    where: str | os.PathLike, *, stale_after: float = STALE_AFTER, dry_run: bool = False
) -> list[Leftover]:
    """Remove every leftover under ``where`` that no live run protects; returns what was (or would be) removed.

    Empty sidecar folders are removed too.
    """
    items = [i for i in find_leftovers(where, stale_after=stale_after) if not i.live]
    # the claim last: while it exists, a crashed run's leftovers stay attributable
    items.sort(key=lambda i: i.kind == "claim")
    if dry_run:
        return items
    done = []
    for item in items:
        remove_leftover(item, stale_after=stale_after)
        done.append(item)
    for dest in {i.destination for i in done if i.destination}:
        side = sidecar_path(dest)
        with contextlib.suppress(OSError):
            os.rmdir(side)
    return done


def destination_status(destination: str | os.PathLike, *, stale_after: float = STALE_AFTER) -> dict:
    """Everything ``tilegraph info DEST`` shows about a destination's state.

    Keys: ``destination``, ``kind`` (what is there: ``absent``, ``empty-folder``, ``tilegraph-zarr``,
    ``tilegraph-file``, ``foreign``), ``complete``, ``claim`` (holder line or ``None``), ``claim_live``,
    ``manifest`` (:meth:`Manifest.summary` or ``None``), ``leftovers`` (list of dicts).
    """
    from tilegraph.sink.safety import _inspect

    dest = os.path.abspath(os.fspath(destination))
    kind, why, complete = _inspect(dest)
    info = read_claim(dest)
    manifest = Manifest.open(dest)
    return {
        "destination": dest,
        "kind": kind,
        "foreign_reason": why,
        "complete": complete,
        "claim": info.describe() if info is not None else None,
        "claim_live": bool(info is not None and not info.is_stale(stale_after)),
        "manifest": manifest.summary() if manifest is not None else None,
        "leftovers": [i.to_dict() for i in find_leftovers(dest, stale_after=stale_after, deep=False)],
    }
