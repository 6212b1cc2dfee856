#!/usr/bin/env bash
# Executes lrfused's CUDA code on the CPU under HIP-CPU (tests/cuda/emulation/emulation.h says what
# that shows and what it cannot): the kernel tests (tests/cuda/test_kernel.cu, test_step_launch.cu)
# and the torch-free host logic of the tensor tables (test_tensor_tables.cu). Then proves the tests
# can fail: copies of the kernel or of the table logic with one planted bug each must each make the
# tests that use them fail. Prints a closing line "N passed, M failed".
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
       -I"$root/tests/cuda/emulation" -I"$HIP_CPU_ROOT/include" -I"$root/csrc")
# The csrc/cuda sources each test links (its own source is tests/cuda/<name>.cu).
declare -A sources=(
  [test_kernel]=adam_step_kernel.cu
  [test_step_launch]='adam_step_kernel.cu tensor_tables.cu'
  [test_tensor_tables]=tensor_tables.cu
)
tests=(test_kernel test_step_launch test_tensor_tables)
# compile SOURCE OBJECT [-I DIR]: one translation unit.
compile() {
  local source=$1 object=$2
  shift 2
  "$CXX" "${flags[@]}" "$@" -c "$source" -o "$object"
}
# link OUT TEST_NAME CUDA_DIR: the test's object with the csrc/cuda sources it needs, from CUDA_DIR
# (the project's, or a mutant's copy), each compiled once beside OUT.
link() {
  local out=$1 name=$2 dir=$3 objects=() source object
  for source in ${sources[$name]}; do
    object="$(dirname "$out")/$source.o"
    [ -f "$object" ] || compile "$dir/$source" "$object" || return 1
    objects+=("$object")
  done
  "$CXX" -pthread "$work/$name.test.o" "${objects[@]}" -o "$out" -ltbb
}

echo "== the CUDA tests under the CPU emulation (HIP-CPU at $HIP_CPU_ROOT)"
for name in "${tests[@]}"; do
  if compile "$root/tests/cuda/$name.cu" "$work/$name.test.o" > "$work/$name.build.log" 2>&1 &&
     link "$work/$name" "$name" "$root/csrc/cuda" >> "$work/$name.build.log" 2>&1; then
    timeout 300 "$work/$name" > "$work/$name.log" 2>&1
    status=$?
    grep -E '^(FAIL|ok  )' "$work/$name.log" | head -20
    tail -1 "$work/$name.log"
    result "tests/cuda/$name.cu" "$status"
  else
    tail -20 "$work/$name.build.log"
    result "tests/cuda/$name.cu (build)" 1
  fi
done

# Each mutant is one csrc/cuda source with one planted bug; the pattern must match (or the mutant
# would be the source itself) and the tests that link that source must fail on it. A removed
# __threadfence is not among them: on x86 (TSO, seq_cst atomics) it cannot be seen.
declare -A mutants=(
  [no_loop_end_barrier]='adam_step_kernel.cu|s|^    __syncthreads\(\);  // every thread is done with `claimed`.*$|    /* planted: no barrier */|'
  [no_counter_reset]='adam_step_kernel.cu|s|^    args.counters->next_task = 0u;$|    /* planted: next_task not reset */|'
  [first_block_writes]='adam_step_kernel.cu|s|is_last = ticket == gridDim.x - 1;|is_last = ticket == 0;|'
  [int32_chunk_offset]='adam_step_kernel.cu|s|^  const int64_t begin = static_cast<int64_t>\(work.chunk\) \* kChunkSize;$|  const int64_t begin = static_cast<int32_t>(static_cast<uint32_t>(work.chunk) * kChunkSize);|'
  [no_wait_for_the_fill]='tensor_tables.cu|s|^    if \(\(error = cudaStreamWaitEvent\(stream, table.filled, 0\)\) != cudaSuccess\) return error;$|    /* planted: no wait */|'
  [graph_holds_no_table]='tensor_tables.cu|s|^    if \(\(error = keep_for_graph\(stream, set.current\)\) != cudaSuccess\) return error;$|    /* planted: no reference */|'
  [freed_on_cuda_thread]='tensor_tables.cu|s|^  release_later\(std::move\(\*table\)\);$|  /* planted: the reference dropped on the callback thread */|'
  [writer_drops_host_writes]='adam_step_kernel.cu|s|^  if \(moves_words\(d\)\) \{$|  if (d.count > 0) {|'
  [streams_keyed_by_handle]='tensor_tables.cu|s|^  if \(\(error = cudaStreamGetId\(stream, &stream_id\)\) != cudaSuccess\) return error;$|  stream_id = reinterpret_cast<uintptr_t>(stream);|'
)
echo "== mutants: each must make the tests fail"
for mutant in no_loop_end_barrier no_counter_reset first_block_writes int32_chunk_offset no_wait_for_the_fill \
              graph_holds_no_table freed_on_cuda_thread streams_keyed_by_handle writer_drops_host_writes; do
  file=${mutants[$mutant]%%|*}
  pattern=${mutants[$mutant]#*|}
  copy="$work/mutants/$mutant/cuda"
  mkdir -p "$copy"
  cp "$root"/csrc/cuda/*.cuh "$root"/csrc/cuda/*.cu "$copy/"
  ln -sfn "$root/csrc/common" "$work/mutants/$mutant/common"  # the sources include ../common/
  sed -E "$pattern" "$root/csrc/cuda/$file" > "$copy/$file"
  if cmp -s "$copy/$file" "$root/csrc/cuda/$file"; then
    result "mutant $mutant (its pattern matched nothing in $file)" 1
    continue
  fi
  caught=0
  for name in "${tests[@]}"; do
    [[ " ${sources[$name]} " == *" $file "* ]] || continue
    [ -f "$work/$name.test.o" ] || { caught=-1; break; }
    binary="$work/mutants/$mutant/$name"
    if ! link "$binary" "$name" "$copy" > "$binary.build.log" 2>&1; then
      tail -20 "$binary.build.log"; caught=-1; break
    fi
    # A mutant may also hang (a barrier that never opens) or crash: both count as caught.
    timeout 120 "$binary" > "$binary.log" 2>&1
    status=$?
    if [ "$status" != 0 ]; then
      caught=1
      echo "  $mutant: $name exits $status, $(grep -c '^FAIL' "$binary.log") failed checks"
    fi
  done
  case $caught in
    1) result "mutant $mutant caught" 0 ;;
    0) result "mutant $mutant passed every test" 1 ;;
    *) result "mutant $mutant (build)" 1 ;;
  esac
done
echo "the CUDA emulation check took $SECONDS s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
