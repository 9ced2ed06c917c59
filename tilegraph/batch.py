"""Many images, one cluster: :func:`run_many` (``run()`` given a list, a glob or a folder; ``tilegraph run "photos/*.tif" out/``).

Every image runs on one cluster, with the model loaded once per worker (models are cached per worker
process by their content token, and an instance is sent to the workers once for the whole batch).
A few images are in flight at once, so the windows of several images share the model's device; each
output is written as soon as its image finishes, and a line says so. An image that fails (a corrupt
file, a model error on it) is reported and skipped; the others go on. The end is one summary table.
"""

from __future__ import annotations

import glob
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from tilegraph.errors import InputError, TilegraphError
from tilegraph.options import RunOptions

__all__ = ["BatchItem", "BatchResult", "expand_sources", "is_batch", "output_for", "run_many"]

#: Suffixes of the files a folder contributes (Zarr folders are images too).
IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg", ".zarr")
_GLOB = set("*?[")


def _is_zarr_folder(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, m)) for m in ("zarr.json", ".zarray", ".zgroup"))


def is_batch(source: Any) -> bool:
    """Whether ``source`` names several images: a list or tuple, a glob, or a folder that is not a Zarr."""
    if isinstance(source, list | tuple):
        return True
    if isinstance(source, str | os.PathLike) and not isinstance(source, bytes):
        text = os.fspath(source)
        if "://" in text:
            return False
        if _GLOB & set(text) and not os.path.exists(text):
            return True
        return os.path.isdir(text) and not _is_zarr_folder(text)
    return False


def expand_sources(source: Any) -> list[Any]:
    """The images of a list, a glob (sorted) or a folder (its image files, sorted).

    Raises
    ------
    tilegraph.errors.InputError
        Nothing matched.
    """
    if isinstance(source, list | tuple):
        items: list[Any] = []
        for s in source:
            items.extend(expand_sources(s) if isinstance(s, str) and _GLOB & set(s) else [s])
        found = items
    else:
        text = os.fspath(source)
        if os.path.isdir(text) and not _is_zarr_folder(text):
            names = sorted(os.listdir(text))
            found = [os.path.join(text, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
        else:
            found = sorted(glob.glob(text))
    if not found:
        raise InputError(f"no image matches {source!r}", hint="check the folder or the pattern (quote globs)")
    return found


def _stem(source: Any, index: int) -> tuple[str, str]:
    if isinstance(source, str | os.PathLike):
        name = os.path.basename(os.fspath(source).rstrip("/"))
        lower = name.lower()
        for suffix in (".ome.zarr", ".ome.tif", ".ome.tiff"):
            if lower.endswith(suffix):
                return name[: -len(suffix)], name[-len(suffix) :]
        stem, suffix = os.path.splitext(name)
        return stem, suffix
    return f"image-{index:04d}", ""


def output_for(source: Any, index: int, destination: str) -> str:
    """Where the output of ``source`` goes: ``destination`` with ``{stem}`` filled in, or a file in that folder.

    In a folder, the output keeps the source's suffix when tilegraph writes that format (TIFF, PNG,
    JPEG, Zarr), else it is a Zarr named after the source.
    """
    from tilegraph.sink import SINKS

    stem, suffix = _stem(source, index)
    if "{" in destination:
        return destination.format(stem=stem, name=stem + suffix, index=index, suffix=suffix)
    written = {s for name in SINKS.names() for s in SINKS.get(name).suffixes}
    keep = suffix if suffix.lower() in written else ".zarr"
    return os.path.join(destination, stem + keep)


@dataclass
class BatchItem:
    """One image of a batch: where it went, and its result or its error."""

    source: Any
    destination: str
    result: Any = None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        return (
            os.fspath(self.source)
            if isinstance(self.source, str | os.PathLike)
            else type(self.source).__name__
        )


@dataclass
class BatchResult:
    """What :func:`run_many` returns: one :class:`BatchItem` per image, in the order given."""

    items: list[BatchItem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[BatchItem]:
        return [i for i in self.items if not i.ok]

    @property
    def results(self) -> list[Any]:
        """The :class:`~tilegraph.engine.result.RunResult` of each image that finished."""
        return [i.result for i in self.items if i.ok]

    def table(self) -> str:
        """The summary table (one row per image, then the totals)."""
        rows = [("#", "source", "status", "windows", "seconds", "MP/s", "output or error")]
        for k, item in enumerate(self.items, 1):
            if item.ok:
                s = item.result.summary()
                rows.append(
                    (
                        str(k),
                        item.label,
                        "ok",
                        str(s["windows"]),
                        f"{item.seconds:.1f}",
                        f"{s['megapixels_per_s']:.2f}",
                        item.destination,
                    )
                )
            else:
                err = item.error
                text = str(err) if isinstance(err, TilegraphError) else f"{type(err).__name__}: {err}"
                rows.append((str(k), item.label, "FAILED", "-", f"{item.seconds:.1f}", "-", text))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
        lines = [
            "  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows
        ]
        n, bad = len(self.items), len(self.failed)
        lines.append(f"{n - bad} of {n} images written, {bad} failed, in {self.seconds:.1f} s")
        return "\n".join(lines)

    def summary(self) -> dict:
        return {"images": len(self.items), "failed": len(self.failed), "seconds": round(self.seconds, 3)}

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        import html

        body = "".join(
            f"<tr><td><pre>{html.escape(line)}</pre></td></tr>" for line in self.table().splitlines()
        )
        return f"<table>{body}</table>"


class _SharedOnce:
    """An executor that sends each model object to the workers once for the whole batch."""

    def __init__(self, executor: Any) -> None:
        self._executor = executor
        self._sent: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def share(self, obj: Any, *, model_only: bool = False) -> Any:
        if not model_only:
            return self._executor.share(obj)
        with self._lock:
            hit = self._sent.get(id(obj))
            if hit is None or hit[0] is not obj:
                hit = self._sent[id(obj)] = (obj, self._executor.share(obj, model_only=True))
            return hit[1]

    def close(self) -> None:  # the batch closes the real executor itself
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._executor, name)


def run_many(
    sources: Any,
    destination: str | os.PathLike,
    *,
    model: Any,
    options: RunOptions | None = None,
    client: Any = None,
    security: Any = None,
    concurrency: int = 2,
    stream: TextIO | None = None,
) -> BatchResult:
    """Run ``model`` over every image of ``sources`` on one cluster (see the module notes).

    Parameters
    ----------
    sources
        A list of images (paths or arrays), a glob (``"photos/*.tif"``) or a folder.
    destination
        A folder (created; each output named after its source) or a template such as
        ``"out/{stem}.png"``.
    model, client, security
        As for :func:`tilegraph.run`.
    options
        The options of every run (progress is shown per image, as one line when each finishes).
    concurrency
        Images in flight at once (their windows share the workers).
    stream
        Where the per-image lines go (default ``sys.stderr``; nothing when progress is off).

    Returns
    -------
    BatchResult
        Per image its result or error; :meth:`BatchResult.table` is the summary.
    """
    from tilegraph.cluster.local import connect
    from tilegraph.pipeline import execute

    items = expand_sources(sources)
    dest = os.fspath(destination)
    if "{" not in dest:
        os.makedirs(dest, exist_ok=True)
    opts = options or RunOptions()
    show = opts.execution.progress is not False
    quiet = replace(opts, execution=replace(opts.execution, progress=False))
    out = stream or sys.stderr
    batch = BatchResult(items=[BatchItem(s, output_for(s, k, dest)) for k, s in enumerate(items)])
    names = [b.destination for b in batch.items]
    if len(set(names)) != len(names):
        raise InputError(
            "two images of the batch would be written to the same output",
            hint="give a destination template with {index}, e.g. 'out/{stem}-{index}.tif'",
        )
    started = time.perf_counter()
    executor = connect(client, security=security, allowed_failures=opts_allowed(options))
    shared = _SharedOnce(executor)
    done = [0]
    lock = threading.Lock()

    def one(item: BatchItem) -> BatchItem:
        t0 = time.perf_counter()
        try:
            item.result = execute(item.source, item.destination, model=model, options=quiet, executor=shared)
        except Exception as exc:  # reported in the table; the other images go on
            item.error = exc
        item.seconds = time.perf_counter() - t0
        if show:
            with lock:
                done[0] += 1
                status = f"-> {item.destination}" if item.ok else f"FAILED: {item.error}"
                out.write(f"[{done[0]}/{len(items)}] {item.label} {status} ({item.seconds:.1f} s)\n")
                out.flush()
        return item

    try:
        with ThreadPoolExecutor(
            max_workers=max(1, int(concurrency)), thread_name_prefix="tilegraph-batch"
        ) as pool:
            for f in as_completed([pool.submit(one, item) for item in batch.items]):
                f.result()
    finally:
        executor.close()
    batch.seconds = time.perf_counter() - started
    return batch


def opts_allowed(options: RunOptions | None) -> int | None:
    """The run's ``allowed_failures`` (worker deaths per task), if any."""
    return options.execution.allowed_failures if options is not None else None
