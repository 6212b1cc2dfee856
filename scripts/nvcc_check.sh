#!/usr/bin/env bash
# Compiles the torch-free CUDA sources (csrc/cuda/*_kernel.cu) with nvcc for sm_80 and sm_90 and
# fails when an element loop spills registers (note [Block shape] in adam_step_kernel.cuh), then
# builds the torch-free host logic (csrc/cuda/tensor_tables.cu) and the standalone CUDA tests
# (tests/cuda/test_kernel.cu, test_step_launch.cu, test_tensor_tables.cu), which run where there
# is a GPU (and on the CPU under emulation: scripts/cuda_emulation_check.sh).
# Skips, saying so, where nvcc is absent. The flags are those of setup.py: --fmad=false keeps the
# CUDA kernel to the CPU kernel's roundings (no contraction into fused multiply-adds).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/bin/nvcc)}
if [ ! -x "$NVCC" ]; then
  echo "nvcc not found: skipping the CUDA compile check"
  exit 0
fi
# LRFUSED_NVCC_OUT keeps the objects and the test binary (the GPU runbook runs it from there).
if [ -n "${LRFUSED_NVCC_OUT:-}" ]; then
  out=$LRFUSED_NVCC_OUT
  mkdir -p "$out"
else
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
flags=(-std=c++17 -O3 --fmad=false -Xcompiler -Wall --Werror all-warnings
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
for source in csrc/cuda/*_kernel.cu; do
  echo "nvcc: $source (sm_80, sm_90)"
  "$NVCC" "${flags[@]}" -Xptxas -v -c "$source" -o "$out/$(basename "$source" .cu).o" 2> "$out/ptxas.log" \
    || { cat "$out/ptxas.log"; exit 1; }
  # ptxas prints, per function, "Function properties for NAME" and then its stack and spill line.
  # The element loops (Adam's update_chunk and the other rules' update_rule_chunk, outlined per
  # dtype and flags) must not spill; the kernel entry
  # and the once-per-chunk or once-per-launch functions around them may save a few registers
  # across their calls, which is printed.
  awk '/Function properties for/ {name=$0; getline; if ($0 ~ /[1-9][0-9]* bytes spill/) print name " -> " $0}' \
    "$out/ptxas.log" > "$out/spills.txt"
  if grep -Eq "update_(rule_)?chunk" "$out/spills.txt"; then
    echo "register spills in the element loops:"; grep -E "update_(rule_)?chunk" "$out/spills.txt"; exit 1
  fi
  if [ -s "$out/spills.txt" ]; then
    echo "  spills outside the element loops (once per chunk or per launch):"
    sed 's/^ptxas info *: Function properties for /    /' "$out/spills.txt"
  fi
  echo "  $(grep -Ec 'Function properties for .*update_(rule_)?chunk' "$out/ptxas.log") element loops, none spills"
done
# The host reference of the test is built with -ffp-contract=off: the device side has --fmad=false,
# and a host compiler that contracts a*b+c into an FMA (gcc does on aarch64, a GH200) would round
# differently from the kernel and fail the bit-for-bit comparison.
declare -A sources=([test_kernel]=adam_step_kernel.cu [test_step_launch]='adam_step_kernel.cu tensor_tables.cu'
                    [test_tensor_tables]=tensor_tables.cu)
for test in test_kernel test_step_launch test_tensor_tables; do
  echo "nvcc: tests/cuda/$test.cu"
  # shellcheck disable=SC2046 # one word per source
  "$NVCC" "${flags[@]}" -Xcompiler -ffp-contract=off -lineinfo -Icsrc "tests/cuda/$test.cu" \
    $(printf 'csrc/cuda/%s ' ${sources[$test]}) -o "$out/$test"
done
echo "CUDA compile check passed"
