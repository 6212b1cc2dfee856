#!/usr/bin/env bash
# The GPU runbook: one step per call, each well under the device machine's 10 minutes a command,
# each writing its log (and results) under $OUT (default ./gpu-suite-out). Needs nothing outside
# the repository. On the device machine, in this order:
#
#   bash benchmarks/gpu_suite.sh probe         # nvidia-smi; torch, CUDA, nvcc, setuptools, ninja, pytest,
#                                              #   hypothesis versions; compute-sanitizer present?  (~10 s)
#   bash benchmarks/gpu_suite.sh build         # pip install -e . with the CUDA kernels (sm_90) and the
#                                              #   standalone kernel test, into build/gpu       (~3 min)
#   bash benchmarks/gpu_suite.sh cuda-tests    # tests/test_cuda.py and the device-parametrised tests
#   bash benchmarks/gpu_suite.sh kernel-test   # build/gpu/test_kernel --huge, then under compute-sanitizer
#                                              #   memcheck, racecheck and synccheck (without --huge)
#   bash benchmarks/gpu_suite.sh suite         # the whole test suite
#   bash benchmarks/gpu_suite.sh bench-quick   # bench_cuda.py --quick                            (~1 min)
#   bash benchmarks/gpu_suite.sh bench-full [CASES]
#                                              # bench_cuda.py, all cases or those matching CASES
#                                              #   (comma-separated substrings, e.g. "tensor" then
#                                              #   "GPT-2,Llama,10000" if one call would be too long)
#
# A later step assumes the earlier ones ran on the same machine (build/gpu and the editable
# install survive between calls while the machine stays warm). Benchmark results are also copied
# to benchmarks/results/ (in $OUT/results/ for fetching back). Exit status: the step's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-suite-out}
mkdir -p "$OUT"
step=${1:-}
shift || true
build=build/gpu

log() { tee -a "$OUT/$step.log"; }

case "$step" in
  probe)
    {
      nvidia-smi || echo "nvidia-smi failed"
      python3 - <<'PY'
import importlib, shutil, subprocess
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1), "L2 MiB", round(getattr(p, "L2_cache_size", 0) / 2**20, 1))
for name in ("setuptools", "ninja", "pytest", "hypothesis", "numpy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:  # noqa: BLE001 - a probe reports whatever it finds
        print(name, "missing:", error)
for tool in ("nvcc", "compute-sanitizer", "ncu"):
    path = shutil.which(tool)
    print(tool, path or "not found")
if shutil.which("nvcc"):
    print(subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1])
PY
    } 2>&1 | log
    ;;
  build)
    {
      echo "== pip install -e . (LRFUSED_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0})"
      export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} LRFUSED_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
      if ! python3 -m pip install --no-build-isolation --no-deps -e .; then
        # setuptools older than 70.1 without the wheel package cannot make an editable install
        # (no bdist_wheel) and the machine has no network: build in place instead, which the
        # later steps import from the repository root just the same.
        echo "== pip install -e . failed: building in place (python3 setup.py build_ext --inplace)"
        python3 setup.py build_ext --inplace || exit 1
      fi
      python3 -c "import lrfused; print('kernels', lrfused.has_kernels(), 'cuda kernels', lrfused.has_cuda_kernels())"
      echo "== standalone kernel test"
      LRFUSED_NVCC_OUT=$build bash scripts/nvcc_check.sh || exit 1
    } 2>&1 | log
    exit "${PIPESTATUS[0]}"
    ;;
  cuda-tests)
    LRFUSED_REQUIRE_KERNELS=1 python3 -m pytest -q -p no:cacheprovider -ra tests/test_cuda.py tests/test_optim.py \
      tests/test_compile.py tests/test_finder.py "$@" 2>&1 | log
    exit "${PIPESTATUS[0]}"
    ;;
  kernel-test)
    {
      status=0
      echo "== test_kernel --huge"
      "$build/test_kernel" --huge || status=1
      if command -v compute-sanitizer > /dev/null; then
        for tool in memcheck racecheck synccheck; do
          echo "== compute-sanitizer --tool $tool"
          compute-sanitizer --tool "$tool" --error-exitcode 3 "$build/test_kernel" || status=1
        done
      else
        echo "compute-sanitizer not found"; status=1
      fi
      exit $status
    } 2>&1 | log
    exit "${PIPESTATUS[0]}"
    ;;
  suite)
    LRFUSED_REQUIRE_KERNELS=1 python3 -m pytest -q -p no:cacheprovider -ra "$@" 2>&1 | log
    exit "${PIPESTATUS[0]}"
    ;;
  bench-quick|bench-full)
    args=(--out "$OUT/results")
    [ "$step" = bench-quick ] && args+=(--quick)
    [ -n "${1:-}" ] && args+=(--cases "$1")
    python3 benchmarks/bench_cuda.py "${args[@]}" 2>&1 | log
    status=${PIPESTATUS[0]}
    mkdir -p benchmarks/results && cp "$OUT"/results/*.json "$OUT"/results/*.md benchmarks/results/ 2>/dev/null
    exit "$status"
    ;;
  *)
    sed -n '2,25p' "$0" >&2
    exit 2
    ;;
esac
