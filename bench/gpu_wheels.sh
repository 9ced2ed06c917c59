#!/usr/bin/env bash
# Download the wheels that bench/bench_gpu.py needs on the GPU machine into .whl/ (run from the repo root,
# on a machine that reaches PyPI). The GPU image has Python 3.12, torch, numpy, scipy, tifffile, psutil,
# cloudpickle, msgpack, toolz, pyyaml, click, jinja2, packaging, fsspec, sortedcontainers, urllib3 and
# typing-extensions, but none of the packages below. tilegraph itself travels as source (PYTHONPATH).
#
# Requires-Dist checked for each (extras skipped):
#   dask         click cloudpickle fsspec packaging partd pyyaml toolz (importlib_metadata only < 3.12)
#   distributed  click cloudpickle dask jinja2 locket msgpack packaging psutil pyyaml sortedcontainers
#                tblib toolz tornado urllib3 zict
#   partd        locket toolz
#   zarr         donfig google-crc32c numcodecs numpy packaging typing-extensions
#   numcodecs    numpy typing-extensions
#   donfig       pyyaml
#   monai        torch numpy
# One version each (two versions of one package stop `pip install --target`).
#
# Usage: bash bench/gpu_wheels.sh [DEST] ; PYVER=3.11 bash bench/gpu_wheels.sh /tmp/x (for a local dry run)
set -euo pipefail
DEST=${1:-.whl}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
PKGS=(
  dask==2026.8.0
  distributed==2026.8.0
  zarr==3.1.6
  numcodecs==0.16.6
  donfig==0.8.1.post1
  google-crc32c==1.9.0
  zict==3.0.0
  tblib==3.2.2
  partd==1.4.2
  locket==1.0.0
  tornado==6.6.1
  monai==1.6.1
)
if [ "$PYVER" != "3.12" ] && [ "$PYVER" != "3.13" ]; then
  PKGS+=(importlib_metadata==10.2.0 lazy_importer==0.1.0)  # only for a dry run on Python < 3.12
fi
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PKGS[@]}"
ls -l "$DEST"
du -sh "$DEST"
