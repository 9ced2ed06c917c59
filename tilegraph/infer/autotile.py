"""``tile="auto"``: size windows and batches to the memory of the device the model runs on.

:func:`choose_tile` runs short forward passes of the real model, on the device it will use, over
random windows of growing size, and keeps the largest window (then the largest batch) whose measured
peak memory fits a budget with a margin. Runs on a worker, inside a task that holds the model's
resources (:func:`probe_tile` is that task).

How memory is measured
----------------------
CUDA
    ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` after ``reset_peak_memory_stats``,
    minus the memory allocated before the first probe (the model's weights and workspaces). The budget
    is the device's free memory (``torch.cuda.mem_get_info``) plus what torch's allocator holds unused.
CPU
    Peak resident set size (RSS) of the process during the pass, minus the RSS before the first probe.
    On Linux the kernel's own high-water mark is used: writing ``5`` to ``/proc/self/clear_refs``
    resets ``VmHWM`` in ``/proc/self/status`` to the current RSS, and the kernel raises it on every
    page it maps, so no short spike is missed. ``getrusage`` maxrss cannot be reset, which is why it is
    not used. Where ``clear_refs`` cannot be written (macOS, locked-down containers) a thread samples
    RSS every millisecond (torch releases the GIL in its kernels); spikes shorter than that may be
    missed, which the margin covers. Before each pass ``malloc_trim(0)`` (glibc) hands freed heap
    memory back to the system, so memory freed by an earlier pass but kept by the C allocator does not
    hide the next pass's growth. The budget is the memory available to the process (``psutil``, or a
    Dask worker's ``memory_limit`` when lower). The whole process is measured: run it before other
    tasks start.

Search
------
Windows are tried at batch 1 from the smallest candidate up, then batches ``2, 4, 8, ...`` at the
chosen window; the search stops at the first size that does not fit (memory grows with size). Peak
memory is modelled as ``a + b * pixels * batch`` (least squares over the passes so far): a size
predicted to need more than 1.1x (CPU) or 1.5x (CUDA) the limit is not run but recorded as
``"skipped"``, which on CPU keeps a pass from using much more memory than the budget. The chosen
size is always one that ran and fitted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tilegraph.errors import OutOfMemoryError
from tilegraph.infer.oom import free_device_cache, is_oom
from tilegraph.infer.runner import BadOutput, BatchRunner, get_runner
from tilegraph.infer.spec import ModelSpec
from tilegraph.plan.normalize import coerce_overlap

__all__ = ["AutoTile", "choose_tile", "probe_tile", "candidate_tiles", "measure_peak", "DEFAULT_CANDIDATES"]

DEFAULT_CANDIDATES = (256, 384, 512, 768, 1024, 1536, 2048)
_SKIP_FACTOR = {"cpu": 1.1, "cuda": 1.5}  # run a size only if predicted peak <= factor * limit


@dataclass(frozen=True)
class AutoTile:
    """The window and batch :func:`choose_tile` picked, and what it measured.

    Attributes
    ----------
    tile : int
        Window side in source pixels (a multiple of the alignment).
    batch : int
        Windows per model call.
    overlap : int
        Overlap in pixels for the requested ``overlap_fraction`` at this tile (see
        :func:`tilegraph.plan.normalize.coerce_overlap`); the plan may use another overlap.
    peak_bytes : int
        Measured peak memory growth of a pass at ``(tile, batch)``.
    budget_bytes : int
        Memory the model may use: given, or measured free memory (divided by ``concurrency``).
    limit_bytes : int
        ``budget_bytes * margin``: a size fits when its peak is at most this.
    device : str
        Where the passes ran (``"cpu"``, ``"cuda:0"``, ...).
    method : str
        ``"cuda"``, ``"vmhwm"`` (Linux RSS high-water mark) or ``"rss-sampling"``.
    probes : tuple of (int, int, int or str)
        Every size considered, in order: ``(tile, batch, result)`` where ``result`` is the measured
        peak in bytes, ``"oom"`` (the pass raised an out-of-memory error), ``"skipped"`` (predicted
        over the limit, not run) or ``"slow"`` (predicted to take longer than ``max_probe_s``).
    seconds : float
        Time spent choosing.
    """

    tile: int
    batch: int
    overlap: int
    peak_bytes: int
    budget_bytes: int
    limit_bytes: int
    device: str
    method: str
    probes: tuple[tuple[int, int, int | str], ...]
    seconds: float

    def to_dict(self) -> dict:
        """Plain JSON-able data, for the output's metadata."""
        d = asdict(self)
        d["probes"] = [list(p) for p in self.probes]
        d["seconds"] = round(self.seconds, 3)
        return d


def candidate_tiles(
    align: int,
    *,
    candidates: Sequence[int] | None = None,
    min_tile: int = 0,
    max_tile: int | None = None,
) -> list[int]:
    """Window sides to try, ascending, each a multiple of ``align``.

    Parameters
    ----------
    align
        Required multiple (lcm of the model stride and the down-scale factor).
    candidates
        Sides to try; those that are not positive multiples of ``align`` are dropped. ``None``:
        :data:`DEFAULT_CANDIDATES`, each rounded to the nearest multiple of ``align`` (at least ``align``).
    min_tile
        Sides below this are dropped (e.g. the overlap plus ``align``, so that ``tile > overlap``).
    max_tile
        Typically the image's larger side: when some sides exceed ``max_tile`` rounded up to ``align``,
        they are replaced by that rounded value, so that one window covers the whole image and no larger
        window is tried.

    Raises
    ------
    ValueError
        ``align < 1`` or no side is left.
    """
    align = int(align)
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    if candidates is None:
        sides = {max(align, align * round(c / align)) for c in DEFAULT_CANDIDATES}
    else:
        sides = {int(c) for c in candidates if int(c) > 0 and int(c) % align == 0}
    sides = {s for s in sides if s >= min_tile}
    if max_tile is not None:
        cap = max(align, -(-int(max_tile) // align) * align, -(-int(min_tile) // align) * align)
        if not sides or max(sides) > cap:
            sides = {s for s in sides if s <= cap} | {cap}
    if not sides:
        raise ValueError(
            f"no candidate tile is a multiple of {align} and at least {min_tile}: {list(candidates or [])}"
        )
    return sorted(sides)


def choose_tile(
    runner_or_model,
    *,
    channels: int,
    dtype,
    align: int,
    overlap_fraction: float = 0.125,
    candidates: Sequence[int] | None = None,
    budget_bytes: int | None = None,
    margin: float = 0.8,
    max_batch: int = 16,
    device: str | None = None,
    min_tile: int = 0,
    max_tile: int | None = None,
    concurrency: int = 1,
    max_probe_s: float | None = 30.0,
    out_dtype="float32",
    seed: int = 0,
) -> AutoTile:
    """Pick the largest window, then the largest batch, whose measured peak memory fits the budget.

    Parameters
    ----------
    runner_or_model
        A :class:`~tilegraph.infer.runner.BatchRunner` (its device and precision are used), or a torch
        module / numpy callable, wrapped in a runner on ``device``.
    channels
        Channels the model sees.
    dtype
        Source dtype of the raw windows (``"uint8"``, ``"uint16"``, ``"float32"``, ...): the passes go
        through :meth:`BatchRunner.run_raw` exactly as a run does.
    align
        Windows are multiples of this (lcm of the model stride and the down-scale factor).
    overlap_fraction
        Used only to report :attr:`AutoTile.overlap`.
    candidates
        Window sides to try (see :func:`candidate_tiles`).
    budget_bytes
        Memory the passes may grow by; ``None``: measured (free device memory on CUDA, available
        memory on CPU), divided by ``concurrency``.
    margin
        Fraction of the budget a pass may use (the rest is for fragmentation, read-ahead buffers, ...).
    max_batch
        Largest batch tried; batches tried are the powers of two below it, then ``max_batch``.
    device
        For a model (not a runner): ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` (CUDA if available).
        For a runner it must be ``None`` or the runner's device.
    min_tile, max_tile
        Bounds on the window side (see :func:`candidate_tiles`).
    concurrency
        Model tasks that run at once against the same memory (e.g. worker threads on CPU).
    max_probe_s
        A size whose pass is predicted (from the passes so far, linearly in pixels) to take longer than
        this is not run (recorded as ``"slow"``) and the search stops there; ``None``: no limit.
    out_dtype
        Output dtype asked of the model (the tile store's).
    seed
        Seed of the random windows.

    Returns
    -------
    AutoTile

    Raises
    ------
    tilegraph.errors.OutOfMemoryError
        Even the smallest candidate window, alone, does not fit.
    ValueError
        Bad arguments.
    """
    t_start = time.perf_counter()
    if not 0.0 < margin <= 1.0:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    if max_batch < 1 or concurrency < 1:
        raise ValueError("max_batch and concurrency must be >= 1")
    runner = _as_runner(runner_or_model, device)
    tiles = candidate_tiles(align, candidates=candidates, min_tile=min_tile, max_tile=max_tile)
    meter = _Meter(runner.device)
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)

    def run(tile: int, batch: int) -> float:
        raw = _random_raw(rng, batch, tile, channels, dtype)
        t = time.perf_counter()
        try:
            runner.run_raw(raw, channels=channels, out_dtype=out_dtype)
        except BadOutput:  # random input may upset a model; the memory was used all the same
            pass
        return time.perf_counter() - t

    # warm-up: kernels, workspaces and lazily loaded code belong to the baseline, not to a pass
    try:
        run(tiles[0], 1)
    except Exception as exc:
        if not is_oom(exc):
            raise
        warm_oom = True
    else:
        warm_oom = False
    if warm_oom:
        free_device_cache()
        raise _too_small(tiles[0], runner.device, None, None)
    meter.settle()
    base = meter.current()
    if budget_bytes is None:
        budget_bytes = meter.available() // int(concurrency)
    budget_bytes = int(budget_bytes)
    limit = int(budget_bytes * margin)
    skip_factor = _SKIP_FACTOR["cuda" if meter.cuda else "cpu"]

    probes: list[tuple[int, int, int | str]] = []
    points: list[tuple[float, float, float]] = []  # (pixels * batch, peak, seconds) of passes that ran
    peaks: dict[tuple[int, int], int] = {}

    def attempt(tile: int, batch: int) -> bool:
        work = float(tile * tile * batch)
        if points:
            if _predict_peak(points, work) > skip_factor * limit:
                probes.append((tile, batch, "skipped"))
                return False
            if max_probe_s is not None and _predict_seconds(points, work) > max_probe_s:
                probes.append((tile, batch, "slow"))
                return False
        try:
            peak_abs, seconds = meter.measure(lambda: run(tile, batch))
        except Exception as exc:
            if not is_oom(exc):
                raise
            oom = True
        else:
            oom = False
        if oom:
            free_device_cache()
            probes.append((tile, batch, "oom"))
            return False
        peak = max(0, int(peak_abs - base))
        probes.append((tile, batch, peak))
        points.append((work, float(peak), seconds))
        peaks[(tile, batch)] = peak
        return peak <= limit

    tile = None
    for t in tiles:
        if not attempt(t, 1):
            break
        tile = t
    if tile is None:
        result = probes[-1][2] if probes else None
        raise _too_small(tiles[0], runner.device, result, limit)
    batch = 1
    for b in _batches(max_batch)[1:]:
        if not attempt(tile, b):
            break
        batch = b
    meter.settle()
    return AutoTile(
        tile=tile,
        batch=batch,
        overlap=coerce_overlap(float(overlap_fraction), (tile, tile), int(align))[0],
        peak_bytes=peaks[(tile, batch)],
        budget_bytes=budget_bytes,
        limit_bytes=limit,
        device=meter.device,
        method=meter.method,
        probes=tuple(probes),
        seconds=time.perf_counter() - t_start,
    )


def probe_tile(spec: ModelSpec, model_payload, **kwargs) -> AutoTile:
    """Task form of :func:`choose_tile` on this worker's cached runner for ``spec``.

    ``kwargs`` are those of :func:`choose_tile` (``channels``, ``dtype``, ``align`` at least). Submit it
    with the model's resources so it runs on the device (and in the process) that will run the model.
    """
    return choose_tile(get_runner(spec, model_payload), **kwargs)


def measure_peak(runner, raw: np.ndarray, *, channels: int, out_dtype="float32") -> int:
    """Peak memory growth, in bytes, of one :meth:`BatchRunner.run_raw` call on ``raw``.

    Measured as :func:`choose_tile` does, from the memory in use just before the call (after freeing
    caches). Out-of-memory errors propagate.

    Parameters
    ----------
    runner
        A :class:`~tilegraph.infer.runner.BatchRunner`.
    raw
        Windows ``(N, H, W, C)`` in the source dtype.
    channels
        Channels the model sees.
    out_dtype
        Output dtype asked of the model.
    """
    meter = _Meter(runner.device)
    meter.settle()
    base = meter.current()
    peak_abs, _ = meter.measure(lambda: runner.run_raw(raw, channels=channels, out_dtype=out_dtype))
    return max(0, int(peak_abs - base))


# ----------------------------------------------------------------------------- helpers


def _as_runner(obj, device: str | None) -> BatchRunner:
    if isinstance(obj, BatchRunner):
        if device is not None and _same_device(device, obj.device) is False:
            raise ValueError(f"device={device!r} but the runner runs on {obj.device!r}")
        return obj
    torch = sys.modules.get("torch")
    is_module = torch is not None and isinstance(obj, torch.nn.Module)
    if not is_module and not callable(obj):
        raise ValueError(f"expected a BatchRunner, a torch module or a callable, got {type(obj).__name__}")
    kind = "module" if is_module else "callable"
    spec = ModelSpec(kind=kind, name=type(obj).__name__, device=device or "auto")
    return BatchRunner(obj, spec)


def _same_device(a: str, b: str) -> bool:
    a, b = str(a), str(b)
    if a == b or a == "auto":
        return True
    return a.split(":")[0] == b.split(":")[0] and (":" not in a or ":" not in b)


def _batches(max_batch: int) -> list[int]:
    out = [1 << k for k in range(int(max_batch).bit_length()) if (1 << k) <= max_batch]
    if out[-1] != max_batch:
        out.append(int(max_batch))
    return out


def _random_raw(
    rng: np.random.Generator, batch: int, tile: int, channels: int, dtype: np.dtype
) -> np.ndarray:
    shape = (batch, tile, tile, channels)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, 0), info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
    raise ValueError(f"unsupported source dtype {dtype}")


def _predict_peak(points: list[tuple[float, float, float]], work: float) -> float:
    """Least-squares line ``a + b * work`` through the passes so far (proportional with one pass)."""
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    if len(points) >= 2 and np.ptp(xs) > 0:
        slope, intercept = np.polyfit(xs, ys, 1)
        if slope > 0:
            return float(intercept + slope * work)
    k = int(np.argmax(xs))
    return float(ys[k] / xs[k] * work)


def _predict_seconds(points: list[tuple[float, float, float]], work: float) -> float:
    """Proportional to pixels from the largest pass so far (conservative: fixed costs scale too)."""
    x, _, s = max(points, key=lambda p: p[0])
    return s / x * work


def _too_small(tile: int, device: str, result, limit) -> OutOfMemoryError:
    if result == "oom" or result is None:
        what = "runs out of memory"
    elif result in ("skipped", "slow"):
        what = "was not tried"
    else:
        what = f"needs {_mib(result)} of {_mib(limit)} allowed"
    return OutOfMemoryError(
        f"tile='auto': even a single {tile} x {tile} window {what} on {device}",
        hint="free memory on the device, use precision='fp16', or give a smaller tile explicitly",
    )


def _mib(n) -> str:
    return f"{n / 2**20:.0f} MiB"


_LIBC = None


def _malloc_trim() -> None:
    """Give freed C-heap memory back to the system (glibc only; no-op elsewhere)."""
    global _LIBC
    if _LIBC is None:
        try:
            name = ctypes.util.find_library("c") or "libc.so.6"
            lib = ctypes.CDLL(name)
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC is not False and _LIBC is not True and _LIBC is not None:
        _LIBC.malloc_trim(0)


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where not allowed."""
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, b"5")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class _Meter:
    """Memory in use, available and peak during a call, on one device."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        if self.cuda:
            import torch

            dev = torch.device(device)
            if dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
            self.dev = dev
            self.device = str(dev)
            self.method = "cuda"
        else:
            import psutil

            self.proc = psutil.Process()
            self.device = "cpu"
            self.method = "vmhwm" if (_proc_status("VmHWM") is not None and _reset_hwm()) else "rss-sampling"

    def settle(self, *, collect: bool = True) -> None:
        """Free what can be freed: garbage (``collect``), the CUDA cache, the C heap's free pages."""
        if collect:
            gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.dev)
            torch.cuda.empty_cache()
        else:
            _malloc_trim()

    def current(self) -> int:
        if self.cuda:
            import torch

            return int(torch.cuda.memory_allocated(self.dev))
        return int(self.proc.memory_info().rss)

    def available(self) -> int:
        if self.cuda:
            import torch

            free, _total = torch.cuda.mem_get_info(self.dev)
            return int(free + torch.cuda.memory_reserved(self.dev) - torch.cuda.memory_allocated(self.dev))
        import psutil

        avail = int(psutil.virtual_memory().available)
        limit = _dask_memory_limit()
        if limit:
            avail = min(avail, max(0, limit - self.current()))
        return avail

    def measure(self, fn) -> tuple[int, float]:
        """``(absolute peak during fn(), fn's return value)``; exceptions of ``fn`` propagate."""
        self.settle(collect=False)  # a full collection costs ~0.1 s with torch loaded; done once before
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.dev)
            value = fn()
            torch.cuda.synchronize(self.dev)
            peak = max(torch.cuda.max_memory_allocated(self.dev), torch.cuda.max_memory_reserved(self.dev))
            return int(peak), value
        if self.method == "vmhwm" and _reset_hwm():
            value = fn()
            hwm = _proc_status("VmHWM") or 0
            return max(hwm, self.current()), value
        sampler = _RssSampler(self.proc)
        with sampler:
            value = fn()
        return max(sampler.peak, self.current()), value


class _RssSampler:
    """Sample the process RSS every millisecond in a thread; ``peak`` is the largest sample."""

    def __init__(self, proc, interval: float = 0.001):
        self.proc, self.interval = proc, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tilegraph-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _dask_memory_limit() -> int | None:
    """The Dask worker's ``memory_limit`` when this runs inside a worker, else ``None``."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        worker = distributed.get_worker()
    except Exception:
        return None
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    if limit is None:
        limit = getattr(worker, "memory_limit", None)
    return int(limit) if limit else None
