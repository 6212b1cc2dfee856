#!/usr/bin/env bash
# Everything that needs a GPU, in one call (for the device machine): build with the CUDA kernels,
# run the whole test suite (the CUDA tests included), run the CUDA benchmark. Logs and results
# go to $OUT (default ./gpu-suite-out); the benchmark results also to benchmarks/results/.
#   python3 -m pip install --no-build-isolation --no-deps -e .   is the build step used here.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-suite-out}
mkdir -p "$OUT"
status=0

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
echo "== build" | tee "$OUT/build.log"
LRFUSED_CUDA=1 python3 -m pip install --no-build-isolation --no-deps -e . >> "$OUT/build.log" 2>&1 || {
  echo "build failed: see build.log"; tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import lrfused; print('cuda kernels:', lrfused.has_cuda_kernels())" | tee -a "$OUT/build.log"

echo "== tests"
LRFUSED_REQUIRE_KERNELS=1 python3 -m pytest -q -p no:cacheprovider tests > "$OUT/tests.log" 2>&1 || status=1
tail -15 "$OUT/tests.log"

echo "== CUDA benchmark"
python3 benchmarks/bench_cuda.py --out "$OUT" ${BENCH_ARGS:-} > "$OUT/bench_cuda.log" 2>&1 || status=1
tail -60 "$OUT/bench_cuda.log"
mkdir -p benchmarks/results && cp "$OUT"/*.json "$OUT"/*.md benchmarks/results/ 2>/dev/null || true
exit $status
