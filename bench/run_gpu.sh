#!/usr/bin/env bash
# Run bench/bench_gpu.py (then bench/bench_scaling.py if time is left) on the GPU machine, from the repo root.
#
# The GPU image has torch but not dask, distributed, zarr or monai: they come as wheels in .whl/
# (made here by `bash bench/gpu_wheels.sh`; .whl/ is ignored through .git/info/exclude). Through the device
# tool:   run(command="bash bench/run_gpu.sh", carry=[".whl"], timeout_s=480)
# Everything it prints goes also to $OUT/gpu_bench.txt (and the numbers to $OUT/gpu_bench.json) when $OUT is set.
#
# Environment: TOTAL_S (default 360) is the time for the whole script, BUDGET_S (default TOTAL_S - 90) the
# budget of bench_gpu.py; PY, WHL, SITE override python3, .whl and /tmp/site (for a dry run elsewhere).
# Extra arguments go to bench_gpu.py (e.g. --cpu --size 256 for a dry run).
set -uo pipefail
START=$(date +%s)
TOTAL_S=${TOTAL_S:-360}
BUDGET_S=${BUDGET_S:-$((TOTAL_S - 90))}
PY=${PY:-python3}
WHL=${WHL:-.whl}
SITE=${SITE:-/tmp/site}
OUTDIR=${OUT:-}
LOG=/dev/null
JSON=()
if [ -n "$OUTDIR" ]; then
  LOG="$OUTDIR/gpu_bench.txt"
  JSON=(--json "$OUTDIR/gpu_bench.json")
fi

"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl \
  || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
export PYTHONPATH="$SITE:$PWD"
export PYTHONUNBUFFERED=1
export DASK_DISTRIBUTED__LOGGING__DISTRIBUTED=error  # no shutdown warnings in the log
{
  echo "== run_gpu.sh $(date -u +%FT%TZ); wheels installed in $(( $(date +%s) - START )) s"
  nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
  "$PY" -c "import sys, torch, numpy, dask, distributed, zarr, tilegraph; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'dask', dask.__version__, \
'zarr', zarr.__version__, 'tilegraph', tilegraph.__file__)"
  "$PY" -c "import monai; print('monai', monai.__version__)" 2>&1 | tail -1
} 2>&1 | tee -a "$LOG"

timeout -k 10 $((BUDGET_S + 60)) "$PY" bench/bench_gpu.py --budget "$BUDGET_S" ${JSON[@]+"${JSON[@]}"} "$@" 2>&1 | tee -a "$LOG"
RC=${PIPESTATUS[0]}
echo "bench_gpu.py exit status $RC after $(( $(date +%s) - START )) s" | tee -a "$LOG"

LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
if [ "$#" -eq 0 ] && [ "$LEFT" -ge 75 ]; then
  # the scaling benchmark needs no GPU, but the GPU machine has 16 cores (this one has 2)
  timeout -k 10 $((LEFT - 5)) "$PY" bench/bench_scaling.py --workers 1,2,4,8 2>&1 \
    | grep -v -E "distributed\.(nanny|worker|core|scheduler) - (WARNING|INFO)" | tee -a "$LOG"
  echo "bench_scaling.py exit status ${PIPESTATUS[0]} after $(( $(date +%s) - START )) s" | tee -a "$LOG"
else
  echo "bench_scaling.py skipped ($LEFT s left, or arguments given)" | tee -a "$LOG"
fi
exit "$RC"
