#!/usr/bin/env bash
# Compiles the torch-free CUDA sources (csrc/cuda/*_kernel.cu) with nvcc for sm_80 and sm_90 and
# fails when any kernel entry spills registers (note [Block shape] in fused_adam_kernel.cuh), then
# builds the standalone kernel test (tests/cuda/test_kernel.cu), which runs where there is a GPU.
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
  # ptxas prints, per kernel, "Compiling entry function ...", "Function properties ..." and then
  # its stack and spill line.
  spills=$(awk '/Compiling entry function/ {entry=$0; getline; getline;
                if ($0 ~ /[1-9][0-9]* bytes spill (stores|loads)/) print entry " -> " $0}' \
    "$out/ptxas.log")
  if [ -n "$spills" ]; then
    echo "register spills in kernel entries:"; echo "$spills"; exit 1
  fi
  echo "  $(grep -c 'Compiling entry function' "$out/ptxas.log") kernel entries, none spills"
done
echo "nvcc: tests/cuda/test_kernel.cu"
"$NVCC" "${flags[@]}" -lineinfo -Icsrc tests/cuda/test_kernel.cu csrc/cuda/fused_adam_kernel.cu -o "$out/test_kernel"
echo "CUDA compile check passed"
