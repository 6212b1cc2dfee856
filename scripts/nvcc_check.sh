#!/usr/bin/env bash
# Compiles the torch-free CUDA sources (csrc/cuda/*_kernel.cu) with nvcc for sm_80 and sm_90, as a
# compile check on machines with a CUDA toolkit and no GPU. Skips, saying so, where nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/bin/nvcc)}
if [ ! -x "$NVCC" ]; then
  echo "nvcc not found: skipping the CUDA compile check"
  exit 0
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
sources=(csrc/cuda/*_kernel.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "no torch-free CUDA sources to compile"
  exit 0
fi
for source in "${sources[@]}"; do
  echo "nvcc: $source (sm_80, sm_90)"
  "$NVCC" -std=c++17 -O3 -Xcompiler -Wall --Werror all-warnings \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -c "$source" -o "$out/$(basename "$source" .cu).o"
done
echo "CUDA compile check passed"
