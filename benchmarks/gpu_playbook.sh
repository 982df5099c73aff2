#!/usr/bin/env bash
# The GPU playbook: everything a lent GPU machine should do, in one run of
# under 10 minutes on an H100 with no network.
#
#   benchmarks/gpu_playbook.sh OUTDIR
#
# Builds the extension (CUDA kernels for the card's arch), runs the whole test
# suite on the GPU machine, runs `rnnkernels check`, benchmarks every built
# backend against cuDNN (torch.nn) and scaled_dot_product_attention in fp32
# and bf16, and writes at most 8 files into OUTDIR (the device tool brings
# back 8): env_build.log, tests.log, check.log, bench_float32.md,
# bench_bfloat16.md, triton_rnn.md, summary.md. Commit the .md tables to
# benchmarks/results/ with the card and the date.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_playbook.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
SUMMARY="$OUT/summary.md"
START=$(date +%s)
echo "# GPU playbook $(date -u '+%Y-%m-%d %H:%M UTC')" > "$SUMMARY"

# step NAME LOG TIMEOUT_S COMMAND...: runs one step, records its exit code and time.
step() {
  local name=$1 log=$2 limit=$3
  shift 3
  local t0=$(date +%s)
  echo "== $name: $*" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "- $name: exit $rc in $(( $(date +%s) - t0 )) s (log: $(basename "$log"))" >> "$SUMMARY"
  return $rc
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  python -c "import triton; print('triton', triton.__version__)" || echo "triton missing"
  nvcc --version | tail -1
} > "$OUT/env_build.log" 2>&1
head -3 "$OUT/env_build.log" | sed 's/^/    /' >> "$SUMMARY"

step build "$OUT/env_build.log" 200 python -m pip install --no-build-isolation --no-deps -e . || {
  echo "build failed: see env_build.log" >> "$SUMMARY"; exit 1; }
python -c "import torch, rnnkernels; print('built parts:', torch.ops.rnnkernels.build_info()); print('rnn backends on cuda:', rnnkernels.backends.available('cuda')); print('attention backends on cuda:', rnnkernels.backends.available('cuda', op='attention'))" >> "$OUT/env_build.log" 2>&1
tail -3 "$OUT/env_build.log" | sed 's/^/    /' >> "$SUMMARY"

step tests "$OUT/tests.log" 120 python -m pytest -q tests
tail -3 "$OUT/tests.log" | sed 's/^/    /' >> "$SUMMARY"

step check "$OUT/check.log" 45 python -m rnnkernels check --cases 10
tail -2 "$OUT/check.log" | sed 's/^/    /' >> "$SUMMARY"

for dtype in float32 bfloat16; do
  step "bench $dtype" "$OUT/bench_$dtype.log" 80 \
    python -m rnnkernels bench --device cuda --dtype "$dtype" --markdown --out-dir "$OUT"
  mv "$OUT/bench_cuda_$dtype.md" "$OUT/bench_$dtype.md" 2>/dev/null
  grep -E "median speedup" "$OUT/bench_$dtype.log" | sed 's/^/    /' >> "$SUMMARY"
  cat "$OUT/bench_$dtype.log" >> "$OUT/tests.log"; rm -f "$OUT/bench_$dtype.log"
done

if python -c "import rnnkernels.benchmarks.triton_rnn" 2>/dev/null; then
  step "triton rnn sweep" "$OUT/check.log" 60 python -m rnnkernels.benchmarks.triton_rnn --out "$OUT/triton_rnn.md"
fi
echo "total: $(( $(date +%s) - START )) s" >> "$SUMMARY"
cat "$SUMMARY"
