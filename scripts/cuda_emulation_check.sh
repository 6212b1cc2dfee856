#!/usr/bin/env bash
# Executes lrfused's CUDA kernels on the CPU under HIP-CPU (tests/cuda/emulation/emulation.h says
# what that shows and what it cannot), then proves the tests can fail: copies of the kernel with one
# planted bug each must each make them fail. Prints a closing line "N passed, M failed".
#
#   bash scripts/cuda_emulation_check.sh
#
# HIP_CPU_ROOT: HIP-CPU's checkout (default ../shared/third_party/hip-cpu beside the project), a
# test dependency never copied into the project. Outside CI a missing one skips, saying so; in CI
# (CI=1, set by .ci/run) it fails. Needs TBB (libtbb-dev, installed here when missing) and g++.
# Built with -ffp-contract=off: the kernel is built with --fmad=false on a GPU, and the tests
# compare with a host reference bit for bit.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
HIP_CPU_ROOT=${HIP_CPU_ROOT:-$root/../shared/third_party/hip-cpu}
CXX=${CXX:-g++}
if [ ! -f "$HIP_CPU_ROOT/include/hip/hip_runtime.h" ]; then
  if [ "${CI:-0}" = 1 ]; then
    echo "HIP-CPU not found at $HIP_CPU_ROOT (set HIP_CPU_ROOT): the CUDA emulation check cannot run"; exit 1
  fi
  echo "HIP-CPU not found at $HIP_CPU_ROOT (set HIP_CPU_ROOT): skipping the CUDA emulation check"; exit 0
fi
if [ ! -f /usr/include/tbb/tbb.h ] && [ ! -f /usr/include/oneapi/tbb.h ]; then
  echo "installing libtbb-dev"
  { apt-get update -qq && apt-get install -y -qq libtbb-dev; } > /dev/null 2>&1 \
    || { echo "libtbb-dev could not be installed"; exit 1; }
fi
work=${LRFUSED_EMU_BUILD:-$(mktemp -d)}
mkdir -p "$work"
[ -z "${LRFUSED_EMU_BUILD:-}" ] && trap 'rm -rf "$work"' EXIT

# What the emulated device reports as its SM count (the tests change it to show it is cached).
export LRFUSED_EMU_SMS=${LRFUSED_EMU_SMS:-4}
passed=0
failed=0
result() {  # name status(0 = pass)
  if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "PASS $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}

flags=(-std=c++17 -O1 -ffp-contract=off -fno-strict-aliasing -pthread -x c++ -w -DLRFUSED_CUDA_EMULATION
       -I"$root/tests/cuda/emulation" -I"$HIP_CPU_ROOT/include")
# build OUT KERNEL_SOURCE TEST_SOURCE: one test binary against one copy of the kernel.
build() {
  local out=$1 kernel=$2 test=$3 objects=$1.objects
  mkdir -p "$objects"
  "$CXX" "${flags[@]}" -I"$root/csrc" -I"$(dirname "$(dirname "$kernel")")" -c "$kernel" -o "$objects/kernel.o" &&
  "$CXX" "${flags[@]}" -I"$root/csrc" -c "$test" -o "$objects/test.o" &&
  "$CXX" -pthread "$objects/test.o" "$objects/kernel.o" -o "$out" -ltbb
}

tests=(tests/cuda/test_kernel.cu tests/cuda/test_step_launch.cu)
echo "== the kernel tests under the CPU emulation (HIP-CPU at $HIP_CPU_ROOT)"
for test in "${tests[@]}"; do
  name=$(basename "$test" .cu)
  if build "$work/$name" "$root/csrc/cuda/adam_step_kernel.cu" "$root/$test" > "$work/$name.build.log" 2>&1; then
    "$work/$name" > "$work/$name.log" 2>&1
    status=$?
    tail -3 "$work/$name.log"
    result "$test" "$status"
  else
    tail -20 "$work/$name.build.log"
    result "$test (build)" 1
  fi
done

# Each mutant is the kernel with one planted bug; the pattern must match (or the mutant would be
# the kernel itself) and the tests must fail on it. A removed __threadfence is not among them: on
# x86 (TSO, seq_cst atomics) it cannot be seen.
declare -A mutants=(
  [no_loop_end_barrier]='s|^    __syncthreads\(\);  // every thread is done with `claimed`.*$|    /* planted: no barrier */|'
  [no_counter_reset]='s|^    args.counters->next_task = 0u;$|    /* planted: next_task not reset */|'
  [first_block_writes]='s|is_last = ticket == gridDim.x - 1;|is_last = ticket == 0;|'
)
echo "== mutants: each must make the tests fail"
for mutant in no_loop_end_barrier no_counter_reset first_block_writes; do
  copy="$work/mutants/$mutant/cuda"
  mkdir -p "$copy"
  cp "$root"/csrc/cuda/*.cuh "$copy/"
  ln -sfn "$root/csrc/common" "$work/mutants/$mutant/common"  # the kernel includes ../common/
  sed -E "${mutants[$mutant]}" "$root/csrc/cuda/adam_step_kernel.cu" > "$copy/adam_step_kernel.cu"
  if cmp -s "$copy/adam_step_kernel.cu" "$root/csrc/cuda/adam_step_kernel.cu"; then
    result "mutant $mutant (its pattern matched nothing in the kernel)" 1
    continue
  fi
  caught=0
  for test in "${tests[@]}"; do
    name=$(basename "$test" .cu)
    binary="$work/mutants/$mutant/$name"
    if ! build "$binary" "$copy/adam_step_kernel.cu" "$root/$test" > "$binary.build.log" 2>&1; then
      tail -20 "$binary.build.log"; caught=-1; break
    fi
    # A mutant may also hang (a barrier that never opens) or crash: both count as caught.
    timeout 120 "$binary" > "$binary.log" 2>&1
    status=$?
    if [ "$status" != 0 ]; then
      caught=1
      echo "  $mutant: $test exits $status, $(grep -c '^FAIL' "$binary.log") failed checks"
    fi
  done
  case $caught in
    1) result "mutant $mutant caught" 0 ;;
    0) result "mutant $mutant passed every test" 1 ;;
    *) result "mutant $mutant (build)" 1 ;;
  esac
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
