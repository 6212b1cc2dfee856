#!/usr/bin/env bash
# The GPU runbook, writing each step's log (and results) under $OUT (default ./gpu-suite-out) as it
# goes, so that a call killed at its limit still returns what was done. Needs nothing outside the
# repository. The one call a lent GPU gets (its device time is 15 minutes in all, 10 a command):
#
#   bash benchmarks/gpu_suite.sh all           # every step below in priority order, each with its own
#                                              #   time budget, 540 s in all (LRFUSED_GPU_BUDGET_S);
#                                              #   on a machine without a GPU: the probe, then "no GPU"
#
# Prepared here first: `bash scripts/gpu_prebuild.sh` (about 5 minutes on 2 cores, no GPU), then one
# device call of `bash benchmarks/gpu_suite.sh all` with gpu-prebuilt carried and a 540 s limit.
#
# The build step uses a carried gpu-prebuilt/ (made here without a GPU by scripts/gpu_prebuild.sh:
# lrfused/_C.abi3.so, bin/test_kernel, bin/test_step_launch, bin/test_tensor_tables and a
# BUILD_INFO whose "torch X" line names the torch it was built against) when it matches the
# device's torch, and builds on the device otherwise (~3 min). The steps, also one per call:
#
#   bash benchmarks/gpu_suite.sh probe         # nvidia-smi; torch, CUDA, nvcc, setuptools, ninja, pytest,
#                                              #   hypothesis versions; compute-sanitizer present?  (~10 s)
#   bash benchmarks/gpu_suite.sh build         # gpu-prebuilt/ when it matches this torch, else pip install
#                                              #   -e . with the CUDA kernels (sm_90) and the standalone
#                                              #   kernel tests, into build/gpu                 (~3 min)
#   bash benchmarks/gpu_suite.sh kernel-test   # build/gpu/test_kernel --huge, test_step_launch and
#                                              #   test_tensor_tables, then
#                                              #   under compute-sanitizer memcheck, racecheck and synccheck
#   bash benchmarks/gpu_suite.sh cuda-tests    # tests/test_cuda.py and the device-parametrised tests
#   bash benchmarks/gpu_suite.sh suite         # the whole test suite
#   bash benchmarks/gpu_suite.sh bench-quick   # bench_cuda.py --quick                            (~1 min)
#   bash benchmarks/gpu_suite.sh bench-host    # bench_host.py --quick --device cuda: the host's cost of
#                                              #   a step beside torch's, params on the GPU      (~30 s)
#   bash benchmarks/gpu_suite.sh bench-full [CASES]
#                                              # bench_cuda.py, all cases or those matching CASES
#                                              #   (comma-separated substrings, e.g. "tensor" then
#                                              #   "GPT-2,Llama,10000" if one call would be too long)
#
# A later step assumes the earlier ones ran on the same machine (build/gpu and the extension
# survive between calls while the machine stays warm). Benchmark results are also copied to
# benchmarks/results/ (in $OUT/results/ for fetching back). Exit status: the step's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-suite-out}
mkdir -p "$OUT"
step=${1:-}
shift || true
build=build/gpu
prebuilt=gpu-prebuilt
# The extension may be the prebuilt one copied into lrfused/ (no install): import it from here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

log() { tee -a "$OUT/$step.log"; }

has_gpu() { python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null; }

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
      here_torch=$(python3 -c "import torch; print(torch.__version__)" 2> /dev/null)
      if [ -f "$prebuilt/BUILD_INFO" ] && grep -qx "torch $here_torch" "$prebuilt/BUILD_INFO"; then
        echo "== the prebuilt extension and kernel tests ($prebuilt/BUILD_INFO):"
        cat "$prebuilt/BUILD_INFO"
        cp "$prebuilt"/lrfused/_C*.so lrfused/ && mkdir -p "$build" && cp "$prebuilt"/bin/* "$build/" || exit 1
        python3 -c "import lrfused; print('kernels', lrfused.has_kernels(), 'cuda kernels', lrfused.has_cuda_kernels())" \
          && exit 0
        echo "== the prebuilt extension does not load: building here"
        rm -f lrfused/_C*.so
      elif [ -d "$prebuilt" ]; then
        echo "== $prebuilt/ was built for $(grep '^torch' "$prebuilt/BUILD_INFO" 2> /dev/null), this is torch $here_torch: building here"
      fi
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
    LRFUSED_REQUIRE_KERNELS=1 python3 -m pytest -q -p no:cacheprovider -ra tests/test_cuda.py tests/test_optimizer.py tests/test_planner.py \
      tests/test_compile.py tests/test_finder.py "$@" 2>&1 | log
    exit "${PIPESTATUS[0]}"
    ;;
  kernel-test)
    {
      status=0
      echo "== test_kernel --huge"
      "$build/test_kernel" --huge || status=1
      echo "== test_step_launch"
      "$build/test_step_launch" || status=1
      echo "== test_tensor_tables"
      timeout 60 "$build/test_tensor_tables" || status=1
      if command -v compute-sanitizer > /dev/null; then
        # Each run gets a share of the step's time, so that one slow tool cannot starve the others;
        # the tools in the order of what they find most (memcheck first), the quick tests first. A
        # run cut at its share gives no verdict, which is said, and is not an error found.
        share=${LRFUSED_SANITIZER_S:-15}
        for tool in memcheck racecheck synccheck; do
          for test in test_tensor_tables test_step_launch test_kernel; do
            echo "== compute-sanitizer --tool $tool $test (at most ${share} s)"
            rc=0
            timeout -k 5 "$share" compute-sanitizer --tool "$tool" --error-exitcode 3 "$build/$test" || rc=$?
            case $rc in
              0) echo "$tool $test: no errors" ;;
              124|137) echo "$tool $test: not finished in ${share} s, no verdict" ;;
              *) echo "$tool $test: exit $rc"; status=1 ;;
            esac
          done
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
  bench-host)
    python3 benchmarks/bench_host.py --quick --device cuda --out "$OUT/results" 2>&1 | log
    status=${PIPESTATUS[0]}
    mkdir -p benchmarks/results && cp "$OUT"/results/host-*.json benchmarks/results/ 2>/dev/null
    exit "$status"
    ;;
  all)
    # Priority order: what cannot be learnt without a GPU first. Each step is its own process with
    # a timeout of its budget or what is left, whichever is less, so a slow step costs only itself.
    started=$(date +%s)
    total=${LRFUSED_GPU_BUDGET_S:-540}
    : > "$OUT/all.log"
    run_step() {  # name budget_s [args]
      local name=$1 budget=$2 left
      shift 2
      left=$((total - ($(date +%s) - started) - 10))
      [ "$budget" -gt "$left" ] && budget=$left
      if [ "$budget" -lt 15 ]; then
        echo "$name: not run, $left s left" | tee -a "$OUT/all.log"
        return
      fi
      echo "== $name (at most $budget s)" | tee -a "$OUT/all.log"
      timeout -k 10 "$budget" bash "$0" "$name" "$@"
      echo "$name: exit $? after $(($(date +%s) - started)) s in all" | tee -a "$OUT/all.log"
    }
    run_step probe 30
    if ! has_gpu; then
      echo "no GPU: the GPU steps are not run" | tee -a "$OUT/all.log"
      exit 0
    fi
    run_step build 240
    run_step kernel-test 180
    run_step cuda-tests 150
    run_step bench-quick 120
    run_step bench-host 60
    echo "all: $(($(date +%s) - started)) s" | tee -a "$OUT/all.log"
    ;;
  *)
    sed -n '2,30p' "$0" >&2
    exit 2
    ;;
esac
