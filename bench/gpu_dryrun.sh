#!/usr/bin/env bash
# Dry run of bench/run_gpu.sh on this (CPU) machine, in an environment shaped like the GPU image: a fresh
# venv that sees only the packages the GPU image has (torch, numpy, scipy, ... linked from an existing venv),
# the wheels of bench/gpu_wheels.sh (for this Python version) installed with `pip --target`, tilegraph
# from the source tree through PYTHONPATH. Catches a missing wheel or an import the GPU image cannot satisfy
# before the one GPU run. Run from the repo root:
#   bash bench/gpu_dryrun.sh /tmp/probe-venv/bin/python
# Extra arguments go to bench_gpu.py (default: a tiny CPU configuration).
set -euo pipefail
SRC_PY=${1:?usage: bench/gpu_dryrun.sh PYTHON_WITH_TORCH [bench_gpu args]}
shift
ARGS=("$@")
if [ ${#ARGS[@]} -eq 0 ]; then
  ARGS=(--cpu --size 256 --tile 128 --overlap 16 --threads 1)
fi
D=${DRYRUN_DIR:-/tmp/tg-gpu-dryrun}
rm -rf "$D"
mkdir -p "$D/farm" "$D/out"
SP=$("$SRC_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
BASE=$("$SRC_PY" -c "import sys; print(sys._base_executable)")
PYVER=$("$SRC_PY" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
"$BASE" -m venv "$D/venv"
# what the GPU image has (see .library/device/KINDS.md), linked from the source venv when it has it
for name in torch torchgen functorch numpy numpy.libs scipy scipy.libs tifffile psutil cloudpickle msgpack toolz \
    tlz yaml _yaml click packaging sortedcontainers PIL pillow.libs safetensors zipp jinja2 markupsafe fsspec \
    filelock mpmath networkx sympy typing_extensions.py urllib3; do
  [ -e "$SP/$name" ] && ln -s "$SP/$name" "$D/farm/$name"
done
for dist in "$SP"/*.dist-info; do
  case $(basename "$dist") in
    torch-*|numpy-*|scipy-*|tifffile-*|psutil-*|cloudpickle-*|msgpack-*|toolz-*|pyyaml-*|click-*|packaging-*|\
    sortedcontainers-*|pillow-*|safetensors-*|zipp-*|jinja2-*|markupsafe-*|fsspec-*|filelock-*|mpmath-*|\
    networkx-*|sympy-*|typing_extensions-*|urllib3-*) ln -s "$dist" "$D/farm/" ;;
  esac
done
PURE=$("$D/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$D/farm" > "$PURE/farm.pth"
if "$D/venv/bin/python" -c "import dask" 2>/dev/null; then
  echo "the dry-run venv already sees dask: not a GPU-like environment" >&2
  exit 1
fi
PYVER=$PYVER PYTHON="$SRC_PY" bash bench/gpu_wheels.sh "$D/whl" | tail -1
PY="$D/venv/bin/python" WHL="$D/whl" SITE="$D/site" OUT="$D/out" TOTAL_S=${TOTAL_S:-400} \
  bash bench/run_gpu.sh "${ARGS[@]}"
echo "dry run output in $D/out: $(ls "$D/out")"
