"""Every broken or hostile input gets a typed tilegraph error naming the file or window, and nothing
that looks like a complete output is left behind."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tifffile

import tilegraph
from tilegraph.errors import TilegraphError
from tilegraph.testing.corrupt import Case, load_model, make_corpus

_CORPUS_DIR = tempfile.mkdtemp(prefix="tilegraph-corpus-")
atexit.register(shutil.rmtree, _CORPUS_DIR, True)
CASES: list[Case] = make_corpus(_CORPUS_DIR)
BY_NAME = {c.name: c for c in CASES}


def _param(case: Case):
    return pytest.param(case, id=case.name)


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_corpus_covers_the_issue():
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)
    required = {
        "tiff_truncated_50", "png_truncated_half", "jpeg_truncated_half", "zero_byte", "directory",
        "wrong_extension", "ifd_entry_count", "tiff_huge_dimensions", "png_huge_dimensions",
        "jpeg_huge_dimensions", "float_nan", "float_inf", "tiff_cmyk", "jpeg_cmyk",
        "tiff_unknown_compression", "destination_is_source", "model_wrong_shape", "model_wrong_dtype",
        "model_nan", "model_raises", "png_bad_crc", "jpeg_truncated_scan", "tile_offset_past_eof",
        "zero_width", "tiff_1bit", "tiff_12bit", "tiff_complex", "tiff_5_channels", "bad_magic_tif",
    }  # fmt: skip
    assert required <= set(BY_NAME)
    for case in CASES:
        assert issubclass(case.expected_error_type, TilegraphError)
        assert case.when in ("open", "read", "run")
        assert os.path.exists(case.path)
        small = os.path.isdir(case.path) or os.path.getsize(case.path) < 200_000
        assert small, f"{case.name} should be a small file"


@pytest.mark.parametrize("case", [_param(c) for c in CASES if c.when in ("open", "read")])
def test_bad_input_is_refused_with_a_typed_error(case):
    before = None if os.path.isdir(case.path) else _digest(case.path)
    with pytest.raises(TilegraphError) as info:
        src = tilegraph.open_source(case.path)
        assert case.when == "read", f"{case.name} opened but should have been refused at open"
        src.read(0, src.shape[0], 0, src.shape[1])
    err = info.value
    assert isinstance(err, case.expected_error_type), f"{type(err).__name__}: {err}"
    message = str(err)
    assert any(name in message for name in case.mentions()), message
    if before is not None:
        assert _digest(case.path) == before  # inputs are never modified


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name) for c in CASES if c.when != "run"],
)
def test_bad_input_errors_say_what_to_do(case):
    with pytest.raises(TilegraphError) as info:
        src = tilegraph.open_source(case.path)
        src.read(0, src.shape[0], 0, src.shape[1])
    assert info.value.hint, str(info.value)


@pytest.mark.parametrize("case", [_param(c) for c in CASES if c.when == "run"])
def test_bad_run_is_refused_and_leaves_no_output(case, tmp_path):
    src_digest = _digest(case.path)
    dest_dir = os.path.dirname(case.destination)
    before = set(os.listdir(dest_dir))
    existed = os.path.exists(case.destination)
    with pytest.raises(TilegraphError) as info:
        tilegraph.run(
            case.path,
            case.destination,
            model=load_model(case.model),
            tile=64,
            overlap=8,
            blend="crop",
            client="inprocess",
        )
    err = info.value
    assert isinstance(err, case.expected_error_type), f"{type(err).__name__}: {err}"
    assert any(name in str(err) for name in case.mentions()), str(err)
    assert _digest(case.path) == src_digest  # the source is untouched
    if not existed:
        assert not os.path.exists(case.destination)
    suffix = os.path.splitext(case.destination)[1]
    new = set(os.listdir(dest_dir)) - before
    assert not [n for n in new if n.endswith(suffix)], new  # nothing that looks like a finished image


def test_huge_header_refused_before_allocating():
    import tracemalloc

    for name in ("tiff_huge_dimensions", "png_huge_dimensions", "jpeg_huge_dimensions"):
        tracemalloc.start()
        with pytest.raises(BY_NAME[name].expected_error_type):
            tilegraph.open_source(BY_NAME[name].path)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 20 * 2**20, (name, peak)


def test_full_disk_during_a_run(tmp_path):
    """A file-size limit in a child process stands in for a full disk: typed error, no output left."""
    src = str(tmp_path / "in.tif")
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        src, rng.integers(0, 65535, (256, 256, 3), dtype=np.uint16), photometric="rgb", tile=(64, 64)
    )
    out_dir = tmp_path / "dest"
    out_dir.mkdir()
    dest = str(out_dir / "full.tif")
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
import tilegraph
from tilegraph.errors import TilegraphError
from tilegraph.testing.models import numpy_identity
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
try:
    tilegraph.run({src!r}, {dest!r}, model=numpy_identity, tile=64, overlap=8, client="inprocess",
                  scratch={str(tmp_path / "scratch")!r})
except TilegraphError as exc:
    print(type(exc).__name__ + ":", exc)
    sys.exit(0)
sys.exit(3)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("SinkError:"), out.stdout
    assert "full.tif" in out.stdout or "scratch" in out.stdout
    assert not os.path.exists(dest)
    assert not [n for n in os.listdir(out_dir) if n.endswith(".tif")]
