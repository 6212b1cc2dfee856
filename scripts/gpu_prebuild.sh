#!/usr/bin/env bash
# Builds here, without a GPU, everything benchmarks/gpu_suite.sh needs on the device machine, into
# gpu-prebuilt/ (git-ignored, carried by the device call): the extension with its CUDA kernels
# against the device image's torch (2.11.0, CUDA 13.0; the library is abi3, so Python 3.11 here
# builds what Python 3.12 there loads) for sm_90, and the standalone kernel tests.
#
#   bash scripts/gpu_prebuild.sh
#
# That torch is installed with --no-deps into a virtual environment of its own (build/torch-gpu;
# without --no-deps pip would fetch gigabytes of CUDA libraries that compiling does not need),
# never into the environment of the tests. Env: LRFUSED_GPU_TORCH (default torch==2.11.0),
# TORCH_CUDA_ARCH_LIST (default 9.0), CUDA_HOME (default /usr/local/cuda), NVCC.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PYTHON=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
arch=${TORCH_CUDA_ARCH_LIST:-9.0}
venv=build/torch-gpu
out=gpu-prebuilt
[ -x "$NVCC" ] || { echo "no nvcc at $NVCC"; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
"$venv/bin/python" -c "import torch" 2> /dev/null \
  || "$venv/bin/python" -m pip install --quiet --no-deps "${LRFUSED_GPU_TORCH:-torch==2.11.0}"
"$venv/bin/python" -m pip install --quiet setuptools ninja numpy typing_extensions sympy filelock jinja2 networkx fsspec
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
echo "== torch $torch_version (CUDA $("$venv/bin/python" -c "import torch; print(torch.version.cuda)")), sm_${arch/./}"

# A copy of the tracked tree, so that nothing built here lands in the working tree's lrfused/.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | tar --null -T - -cf - | (mkdir -p "$work/tree" && tar -xf - -C "$work/tree")
(cd "$work/tree" && TORCH_CUDA_ARCH_LIST="$arch" LRFUSED_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} \
  "$root/$venv/bin/python" setup.py build_ext --inplace > "$work/build.log" 2>&1) \
  || { tail -40 "$work/build.log"; exit 1; }

rm -rf "$out"
mkdir -p "$out/lrfused" "$out/bin"
cp "$work"/tree/lrfused/_C*.so "$out/lrfused/"
gencode="arch=compute_${arch/./},code=sm_${arch/./}"
for test in test_kernel test_step_launch; do
  "$NVCC" -std=c++17 -O3 --fmad=false -Xcompiler -ffp-contract=off -lineinfo -gencode "$gencode" -Icsrc \
    "tests/cuda/$test.cu" csrc/cuda/adam_step_kernel.cu -o "$out/bin/$test"
done
{
  echo "torch $torch_version"
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- csrc tests/cuda || echo ' (with uncommitted changes)')"
  echo "arch sm_${arch/./}"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m) with $("$NVCC" --version | tail -1)"
} > "$out/BUILD_INFO"
cat "$out/BUILD_INFO"
du -sh "$out"
