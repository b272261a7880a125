#!/usr/bin/env bash
# One GPU-machine call for the fused SLA kernel: build the torch-cuda library, run its GPU tests, the four
# compute-sanitizer tools over tests/gpu/sla_fused_sanitizer.py, then bench/vision_gpu.py with the time left.
# Fits the device tool's 10-minute call (TOTAL_S, default 570 s); writes 5 files under $OUT:
#   summary.txt (exit codes and timings), tests.log, sanitizer.log, bench.log, vision_gpu/results.json
#     bash tests/gpu/run_sla_fused_device.sh                    # from the repository root
# A second call can give the benchmark a whole budget: python3 bench/vision_gpu.py --out $OUT/vision_gpu
set -u
OUT=${OUT:-/tmp/sla_fused_out}
TOTAL_S=${TOTAL_S:-570}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:/tmp/site:${PYTHONPATH:-}"
start=$(date +%s)
summary="$OUT/summary.txt"
: > "$summary"
step() {  # step NAME LOG TIMEOUT CMD...: run, append the exit code and seconds to the summary
  local name=$1 log=$2 limit=$3 t0 rc
  shift 3
  t0=$(date +%s)
  echo "== $name: $*" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$summary"
}

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$summary" 2>&1
step build "$OUT/tests.log" 240 python3 -m slab_edge.native.build torch-cuda
step gpu_tests "$OUT/tests.log" 300 python3 -m pytest tests/gpu -m gpu -k sla_fused -q -p no:cacheprovider

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | tail -1)
if [ -n "$SAN" ]; then
  for tool in memcheck racecheck synccheck initcheck; do
    extra=()
    [ "$tool" = racecheck ] && extra=(--racecheck-report all)
    step "sanitizer_$tool" "$OUT/sanitizer.log" 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$SAN" --tool "$tool" "${extra[@]}" --error-exitcode 1 python3 tests/gpu/sla_fused_sanitizer.py
  done
else
  echo "sanitizer: compute-sanitizer not found (PATH, /usr/local/cuda*/bin)" | tee -a "$summary"
fi

left=$(( TOTAL_S - ($(date +%s) - start) - 20 ))
if [ "$left" -gt 60 ]; then
  budget=$(python3 -c "print(round($left / 60 - 0.3, 2))")
  step bench "$OUT/bench.log" "$left" python3 bench/vision_gpu.py --out "$OUT/vision_gpu" --budget-minutes "$budget"
else
  echo "bench: skipped, ${left}s left" | tee -a "$summary"
fi
echo "total $(( $(date +%s) - start ))s" | tee -a "$summary"
