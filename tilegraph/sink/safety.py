"""Destination safety: what ``overwrite=True`` may replace, and scratch space tilegraph owns.

Rules (issue 10, point 1):

* A destination that **is**, **contains** or **is contained in** the source is always refused
  (symbolic links resolved, hard links detected; URLs compared as strings).
* ``overwrite=True`` replaces only

  - a previous tilegraph Zarr output: a folder whose ``zarr.json`` holds a dict under
    ``attributes["tilegraph"]`` and whose entries are all Zarr's own (``zarr.json``, chunk keys,
    ``*.partial`` orphans of zarr's atomic writes, child nodes obeying the same rule);
  - a previous tilegraph TIFF, PNG or JPEG output: a file carrying tilegraph's provenance (TIFF
    private tag 65000, PNG ``iTXt`` ``tilegraph``, JPEG comment), as
    :func:`tilegraph.sink.tiff_sink.read_provenance` reads it;
  - an empty folder.

  Anything else (a folder of unrelated files, a symbolic link, a file without tilegraph's
  provenance) raises :class:`~tilegraph.errors.DestinationError` naming the path, what was found
  and what to do; nothing is deleted.
* Scratch space is always a **fresh** subfolder ``tilegraph-<run>-<random>`` that
  :func:`make_scratch` creates inside the folder the user names (``scratch=``), with a marker file;
  :func:`remove_scratch` removes a folder only if it carries that marker, so a user's folder is never
  emptied.

The module also holds the small file helpers the claim, publication and manifest modules share:
the *sidecar* folder ``<destination>.tilegraph`` beside every destination (claim, manifest, staging
and default scratch live there), atomic JSON writes, and local-path/URL handling.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tilegraph.errors import DestinationError

__all__ = [
    "DestinationState",
    "check_replaceable",
    "remove_previous_output",
    "is_tilegraph_output",
    "overlap_with_source",
    "make_scratch",
    "adopt_scratch",
    "remove_scratch",
    "is_scratch",
    "read_scratch_marker",
    "sidecar_path",
    "SCRATCH_MARKER",
    "SCRATCH_PREFIX",
    "SIDECAR_SUFFIX",
]

#: Suffix of the folder beside a destination that holds its claim, manifest, staging and scratch.
SIDECAR_SUFFIX = ".tilegraph"
#: Name of the marker file in every scratch folder tilegraph creates.
SCRATCH_MARKER = ".tilegraph-scratch.json"
#: Prefix of every scratch folder tilegraph creates.
SCRATCH_PREFIX = "tilegraph-"

DestinationKind = Literal["absent", "empty-folder", "tilegraph-zarr", "tilegraph-file", "foreign"]

# entries of a Zarr node folder that zarr itself writes
_CHUNK_NAME = re.compile(r"^(c|c[./]\d+([./]\d+)*|\d+([./]\d+)*)$")
_PARTIAL = re.compile(r".*\.[0-9a-f]{32}\.partial$")


# --------------------------------------------------------------------------------------------------
# paths, URLs and small file helpers shared by claim, publish and manifest


def local_path(path: str | os.PathLike) -> str | None:
    """Absolute local path of ``path`` (``file://`` stripped), or ``None`` for another URL scheme."""
    text = os.fspath(path)
    if "://" in text and not text.startswith("file://"):
        return None
    return os.path.abspath(text.removeprefix("file://"))


def url_fs(path: str) -> tuple[Any, str]:
    """``(filesystem, root)`` of an fsspec URL."""
    import fsspec

    return fsspec.core.url_to_fs(path)


def sidecar_path(destination: str | os.PathLike) -> str:
    """The folder beside ``destination`` where tilegraph keeps the claim, manifest, staging and scratch.

    ``out.zarr`` -> ``out.zarr.tilegraph`` (the same for URLs: ``s3://b/out.zarr.tilegraph``).
    """
    text = os.fspath(destination)
    local = local_path(text)
    if local is not None:
        return local.rstrip(os.sep) + SIDECAR_SUFFIX
    return text.rstrip("/") + SIDECAR_SUFFIX


def join(base: str, *parts: str) -> str:
    """Join a local path or URL with further parts."""
    if local_path(base) is not None:
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *parts])


def exists(path: str) -> bool:
    """Does anything exist at ``path`` (a symbolic link counts, even a dangling one)?"""
    local = local_path(path)
    if local is not None:
        return os.path.lexists(local)
    fs, root = url_fs(path)
    return bool(fs.exists(root))


def atomic_write_bytes(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or the new, never a mixture.

    Locally: a temporary file in the same folder, ``fsync``, then ``os.replace``. On other
    fsspec URLs one ``pipe`` (whole-object PUTs are atomic on object stores).
    """
    local = local_path(path)
    if local is None:
        fs, root = url_fs(path)
        fs.pipe(root, data)
        return
    folder = os.path.dirname(local)
    tmp = os.path.join(folder, f".{os.path.basename(local)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any, *, fsync: bool = True) -> None:
    """:func:`atomic_write_bytes` of compact, sorted JSON."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default).encode()
    atomic_write_bytes(path, data, fsync=fsync)


def _json_default(obj: Any) -> Any:
    """JSON for numpy scalars/arrays, tuples and sets (anything else: ``str``)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    return str(obj)


def read_json(path: str) -> Any | None:
    """The JSON content of ``path``, or ``None`` if it is missing, empty or not (yet) valid JSON."""
    local = local_path(path)
    try:
        if local is not None:
            with open(local, "rb") as f:
                data = f.read()
        else:
            fs, root = url_fs(path)
            data = fs.cat_file(root)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def host_identity() -> dict[str, str]:
    """Host name plus what tells two processes apart on one machine (boot id, pid namespace)."""
    ident = {"host": socket.gethostname(), "boot_id": "", "pid_ns": ""}
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            ident["boot_id"] = f.read().strip()
    with contextlib.suppress(OSError):
        ident["pid_ns"] = os.readlink("/proc/self/ns/pid")
    return ident


# --------------------------------------------------------------------------------------------------
# the source must never be touched


def _as_list(source_path: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    if source_path is None:
        return []
    if isinstance(source_path, str | os.PathLike):
        return [os.fspath(source_path)]
    return [os.fspath(s) for s in source_path if s is not None]


def overlap_with_source(
    destination: str | os.PathLike, source_path: str | os.PathLike | Sequence[str | os.PathLike] | None
) -> str | None:
    """How ``destination`` overlaps the source: ``"is"``, ``"contains"``, ``"inside"`` or ``None``.

    Local paths are compared after resolving symbolic links (and as the same file when they are hard
    links to one inode); URLs are compared as strings. A local path and a URL never overlap.
    """
    dest = os.fspath(destination)
    for src in _as_list(source_path):
        ld, ls = local_path(dest), local_path(src)
        if ld is not None and ls is not None:
            rd, rs = os.path.realpath(ld), os.path.realpath(ls)
            if rd == rs:
                return "is"
            with contextlib.suppress(OSError):
                if os.path.exists(rd) and os.path.exists(rs) and os.path.samefile(rd, rs):
                    return "is"
            common = os.path.commonpath([rd, rs])
            if common == rd:
                return "contains"
            if common == rs:
                return "inside"
        elif ld is None and ls is None:
            d, s = dest.rstrip("/"), src.rstrip("/")
            if d == s:
                return "is"
            if s.startswith(d + "/"):
                return "contains"
            if d.startswith(s + "/"):
                return "inside"
    return None


def _refuse_source_overlap(destination: str, source_path: Any) -> None:
    how = overlap_with_source(destination, source_path)
    if how is None:
        return
    text = {
        "is": "the destination is the source itself",
        "contains": "the destination contains the source",
        "inside": "the destination lies inside the source",
    }[how]
    raise DestinationError(
        f"{text}; tilegraph never writes over or inside its input",
        path=destination,
        hint="write to a path outside the source (e.g. a sibling folder)",
    )


# --------------------------------------------------------------------------------------------------
# what is at the destination


@dataclass(frozen=True)
class DestinationState:
    """What :func:`check_replaceable` found at a destination.

    Attributes
    ----------
    path
        The destination as given.
    kind
        ``"absent"``, ``"empty-folder"``, ``"tilegraph-zarr"`` or ``"tilegraph-file"`` (the only
        kinds :func:`check_replaceable` lets through; ``"foreign"`` is what it refuses).
    complete
        For a tilegraph output: its completion marker; ``None`` otherwise or when unknown.
    """

    path: str
    kind: DestinationKind
    complete: bool | None = None

    @property
    def exists(self) -> bool:
        """Something is at the destination."""
        return self.kind != "absent"


def _listdir(path: str) -> list[str]:
    local = local_path(path)
    if local is not None:
        return sorted(os.listdir(local))
    fs, root = url_fs(path)
    root = root.rstrip("/")
    return sorted(
        p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if p.rstrip("/") != root
    )


def _isdir(path: str) -> bool:
    local = local_path(path)
    if local is not None:
        return os.path.isdir(local) and not os.path.islink(local)
    fs, root = url_fs(path)
    return bool(fs.isdir(root))


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _zarr_node_problem(path: str, depth: int = 0) -> tuple[str | None, dict | None]:
    """``(problem, tilegraph_attrs)``: why ``path`` is not a tilegraph Zarr node (``None`` if it is)."""
    meta = read_json(join(path, "zarr.json"))
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        return f"it is not a Zarr v3 store (no zarr.json) but holds {_shown(_listdir(path))}", None
    tg = (meta.get("attributes") or {}).get("tilegraph")
    if depth == 0 and not isinstance(tg, dict):
        return "its zarr.json has no tilegraph attributes (not written by tilegraph)", None
    foreign = []
    for name in _listdir(path):
        if name == "zarr.json" or _PARTIAL.match(name):
            continue
        child = join(path, name)
        if _CHUNK_NAME.match(name) and meta.get("node_type") == "array":
            continue
        if meta.get("node_type") == "group" and _isdir(child):
            problem, _ = _zarr_node_problem(child, depth + 1)
            if problem is None:
                continue
        foreign.append(name)
    if foreign:
        return f"it holds entries Zarr did not write ({_shown(foreign)})", None
    return None, tg if isinstance(tg, dict) else None


def _file_provenance(path: str) -> dict | None:
    """tilegraph's provenance in a TIFF, PNG or JPEG file, or ``None`` (never reads an unknown file)."""
    local = local_path(path)
    if local is None:
        return None
    try:
        with open(local, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    known = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    if not (head[:4] in known or head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8")):
        return None
    from tilegraph.sink.tiff_sink import read_provenance

    try:
        prov = read_provenance(local)
    except Exception:  # a damaged file is not ours to judge as tilegraph's
        return None
    return prov if isinstance(prov, dict) and "tilegraph_version" in prov else None


def is_tilegraph_output(path: str | os.PathLike) -> bool:
    """True when ``path`` is a previous tilegraph output (Zarr folder or TIFF/PNG/JPEG file)."""
    return _inspect(os.fspath(path))[0] in ("tilegraph-zarr", "tilegraph-file")


def _inspect(path: str) -> tuple[DestinationKind, str | None, bool | None]:
    """``(kind, why_foreign, complete)`` of what is at ``path``."""
    local = local_path(path)
    if not exists(path):
        return "absent", None, None
    if local is not None and os.path.islink(local):
        return "foreign", "it is a symbolic link (give the real path)", None
    if _isdir(path):
        if not _listdir(path):
            return "empty-folder", None, None
        problem, tg = _zarr_node_problem(path)
        if problem is None:
            complete = tg.get("complete") if tg else None
            return "tilegraph-zarr", None, None if complete is None else bool(complete)
        return "foreign", problem, None
    prov = _file_provenance(path)
    if prov is not None:
        return "tilegraph-file", None, True
    return "foreign", "it is a file without tilegraph's provenance", None


def check_replaceable(
    destination: str | os.PathLike,
    *,
    source_path: str | os.PathLike | Sequence[str | os.PathLike] | None,
    overwrite: bool,
) -> DestinationState:
    """Check that a run may write ``destination``; delete nothing.

    Parameters
    ----------
    destination
        Local path or fsspec URL of the output.
    source_path
        The source's path or URL (several allowed; ``None`` for an in-memory source).
    overwrite
        Whether the user allows replacing a previous output.

    Returns
    -------
    DestinationState
        What is there now (``"absent"``, ``"empty-folder"``, ``"tilegraph-zarr"``,
        ``"tilegraph-file"``).

    Raises
    ------
    DestinationError
        The destination is, contains or lies inside the source; or something exists there and
        ``overwrite`` is False; or ``overwrite`` is True but what is there is not a previous
        tilegraph output nor an empty folder.
    """
    dest = os.fspath(destination)
    _refuse_source_overlap(dest, source_path)
    kind, why, complete = _inspect(dest)
    if kind == "absent":
        return DestinationState(dest, kind)
    if not overwrite:
        what = {
            "empty-folder": "an empty folder",
            "tilegraph-zarr": "a previous tilegraph output",
            "tilegraph-file": "a previous tilegraph output",
            "foreign": "something tilegraph did not write",
        }[kind]
        hint = (
            "pass overwrite=True to replace it, resume=True to continue an interrupted run, or choose a new path"
            if kind != "foreign"
            else "choose a new path; overwrite=True would refuse it too"
        )
        raise DestinationError(f"the destination exists ({what})", path=dest, hint=hint)
    if kind == "foreign":
        raise DestinationError(
            f"overwrite=True replaces only a previous tilegraph output or an empty folder, and {why}",
            path=dest,
            hint="choose a new path, or move or delete it yourself if you are sure",
        )
    return DestinationState(dest, kind, complete)


def remove_previous_output(
    destination: str | os.PathLike,
    *,
    source_path: str | os.PathLike | Sequence[str | os.PathLike] | None,
) -> DestinationState:
    """Delete a previous tilegraph output or an empty folder at ``destination`` (checked again first).

    Use it where a destination cannot be replaced by a rename (object stores); on a file system
    :func:`tilegraph.sink.publish.publish` swaps the new output in and keeps the old one readable
    until then.

    Returns
    -------
    DestinationState
        What was there (and is now gone).

    Raises
    ------
    DestinationError
        As :func:`check_replaceable` with ``overwrite=True``: nothing is deleted then.
    """
    dest = os.fspath(destination)
    state = check_replaceable(dest, source_path=source_path, overwrite=True)
    local = local_path(dest)
    if state.kind == "absent":
        return state
    if local is not None:
        if state.kind == "empty-folder":
            os.rmdir(local)
        elif state.kind == "tilegraph-file":
            os.unlink(local)
        else:
            shutil.rmtree(local)
        return state
    fs, root = url_fs(dest)
    fs.rm(root, recursive=state.kind != "tilegraph-file")
    return state


# --------------------------------------------------------------------------------------------------
# scratch space


def read_scratch_marker(path: str | os.PathLike) -> dict | None:
    """The marker of a scratch folder tilegraph created, or ``None`` if ``path`` is not one."""
    text = os.fspath(path)
    name = text.rstrip("/").rstrip(os.sep).replace(os.sep, "/").rsplit("/", 1)[-1]
    if not name.startswith(SCRATCH_PREFIX):
        return None
    marker = read_json(join(text, SCRATCH_MARKER))
    if not isinstance(marker, dict) or marker.get("tilegraph_scratch") != 1:
        return None
    return marker


def is_scratch(path: str | os.PathLike) -> bool:
    """True when ``path`` is a scratch folder tilegraph created (name prefix and marker file)."""
    return read_scratch_marker(path) is not None


def make_scratch(
    parent: str | os.PathLike,
    *,
    run_id: str | None = None,
    destination: str | None = None,
    source_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> str:
    """Create a fresh scratch folder ``<parent>/tilegraph-<run>-<random>`` with its marker file.

    ``parent`` (the user's ``scratch=``, or the destination's sidecar) is created if missing and
    never emptied or removed; only the new subfolder is tilegraph's.

    Parameters
    ----------
    parent
        Folder (or URL) to create the scratch folder in.
    run_id
        The run's id, recorded in the marker and the folder name.
    destination
        The destination this scratch serves, recorded in the marker (for ``tilegraph clean``).
    source_path
        Refuse a ``parent`` inside the source.

    Returns
    -------
    str
        The new folder's path (or URL).

    Raises
    ------
    DestinationError
        ``parent`` lies inside the source, is a file, or cannot be created.
    """
    base = os.fspath(parent)
    if overlap_with_source(base, source_path) in ("is", "inside"):
        raise DestinationError(
            "scratch space inside the source is refused; tilegraph never writes inside its input",
            path=base,
            hint="give scratch= a folder outside the source",
        )
    run = (run_id or uuid.uuid4().hex)[:12]
    marker = {
        "tilegraph_scratch": 1,
        "run_id": run_id,
        "destination": destination,
        "created": time.time(),
        **host_identity(),
        "pid": os.getpid(),
    }
    local = local_path(base)
    for _ in range(8):
        name = f"{SCRATCH_PREFIX}{run}-{uuid.uuid4().hex[:8]}"
        path = join(base, name)
        if local is not None:
            try:
                os.makedirs(local, exist_ok=True)
                os.mkdir(os.path.join(local, name))  # fails if it exists: the folder is new, hence ours
            except FileExistsError:
                continue
            except OSError as exc:
                raise DestinationError(
                    f"cannot create scratch space: {exc.strerror or exc}",
                    path=base,
                    hint="give scratch= a writable folder",
                ) from exc
        else:
            fs, root = url_fs(path)
            if fs.exists(root):
                continue
            fs.makedirs(root, exist_ok=True)
        atomic_write_json(join(path, SCRATCH_MARKER), marker)
        return path
    raise DestinationError("cannot find a fresh scratch folder name", path=base)


def adopt_scratch(path: str | os.PathLike, *, run_id: str, destination: str | None = None) -> str:
    """Take over a previous run's scratch folder (on resume): checked, then its marker names ``run_id``.

    Raises
    ------
    DestinationError
        ``path`` is not a tilegraph scratch folder, or it serves another destination.
    """
    text = os.fspath(path)
    marker = read_scratch_marker(text)
    if marker is None:
        raise DestinationError("not a tilegraph scratch folder (no marker)", path=text, hint="start over")
    if destination is not None and marker.get("destination") not in (None, destination):
        raise DestinationError(
            f"this scratch folder serves another destination ({marker.get('destination')})",
            path=text,
            hint="start over with overwrite=True",
        )
    marker = {**marker, "run_id": run_id, "adopted": time.time(), **host_identity(), "pid": os.getpid()}
    atomic_write_json(join(text, SCRATCH_MARKER), marker)
    return text


def remove_scratch(path: str | os.PathLike) -> None:
    """Remove a scratch folder tilegraph created, and nothing else.

    The marker file is removed last, so a removal interrupted half way can be finished later.

    Raises
    ------
    DestinationError
        ``path`` is not a scratch folder made by :func:`make_scratch` (wrong name or no marker):
        nothing is deleted.
    """
    text = os.fspath(path)
    if not exists(text):
        return
    if not is_scratch(text):
        raise DestinationError(
            "refusing to delete a folder tilegraph did not create (no scratch marker)",
            path=text,
            hint="tilegraph removes only the tilegraph-* subfolders it made inside scratch=",
        )
    local = local_path(text)
    if local is None:
        fs, root = url_fs(text)
        fs.rm(root, recursive=True)
        return
    for name in os.listdir(local):
        if name == SCRATCH_MARKER:
            continue
        child = os.path.join(local, name)
        if os.path.isdir(child) and not os.path.islink(child):
            shutil.rmtree(child)
        else:
            os.unlink(child)
    os.unlink(os.path.join(local, SCRATCH_MARKER))
    os.rmdir(local)
