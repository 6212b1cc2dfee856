#!/usr/bin/env bash
# Builds here, without a GPU, what benchmarks/gpu_suite.sh needs on the device machine, into
# gpu-prebuilt/ (git-ignored; the device call carries it): the extension with its CUDA kernels for
# sm_90 against the device image's torch (2.11.0, CUDA 13.0), as lrfused/_C.abi3.so (stable ABI:
# built with Python 3.11 here, loaded by 3.12 there), the standalone CUDA tests, and a BUILD_INFO
# whose "torch X" line the suite compares with the device's torch.
#
#   bash scripts/gpu_prebuild.sh
#
# That torch is installed with --no-deps into a virtual environment of its own (build/torch-gpu,
# about 1.2 GB; never the tests' environment): without --no-deps pip would fetch gigabytes of CUDA
# libraries, and without them `import torch` fails (no cuDNN), so setup.py, which imports torch,
# cannot build against it. CMake can: TorchConfig.cmake (the project's CMakeLists.txt) needs no
# Python torch. It names nvrtc, which lrfused never calls and this machine's toolkit lacks: it is
# pointed at torch's own nvrtc wrapper and dropped from the library by --as-needed. The library's
# undefined symbols are then checked against torch 2.11.0's and CUDA's libraries, the nearest this
# machine comes to loading it. Env: LRFUSED_GPU_TORCH (default torch==2.11.0), CUDA_HOME
# (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default 9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
arch=${TORCH_CUDA_ARCH_LIST:-9.0}
venv=build/torch-gpu
out=gpu-prebuilt
[ -x "$NVCC" ] || { echo "no nvcc at $NVCC"; exit 1; }
command -v cmake > /dev/null || { echo "cmake not found"; exit 1; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ ! -f "$site/torch/share/cmake/Torch/TorchConfig.cmake" ]; then
  "$venv/bin/python" -m pip install --quiet --no-deps "${LRFUSED_GPU_TORCH:-torch==2.11.0}"
fi
torch_dir=$site/torch
torch_version=$(sed -n "s/^__version__ = '\(.*\)'$/\1/p" "$torch_dir/version.py")
torch_cuda=$(sed -n "s/^cuda: Optional\[str\] = '\(.*\)'$/\1/p" "$torch_dir/version.py")
echo "== torch $torch_version (CUDA ${torch_cuda:-?}), sm_${arch/./}, not imported"

work=build/gpu-prebuild
rm -rf "$work"
cmake -S . -B "$work" -DLRFUSED_TESTS=OFF -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_dir/share/cmake" -DPython3_EXECUTABLE="$(command -v python3)" \
  -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="${arch/./}" -DTORCH_CUDA_ARCH_LIST="$arch" \
  -DCUDA_nvrtc_LIBRARY="$torch_dir/lib/libcaffe2_nvrtc.so" \
  -DCMAKE_SHARED_LINKER_FLAGS="-Wl,--as-needed" \
  -DCMAKE_CXX_FLAGS="-DPy_LIMITED_API=0x030b0000" -DCMAKE_CUDA_FLAGS="-lineinfo" > "$work.configure.log" 2>&1 \
  || { tail -30 "$work.configure.log"; exit 1; }
grep -q "lrfused: building the CUDA kernels" "$work.configure.log" || { cat "$work.configure.log"; exit 1; }
cmake --build "$work" -j "${MAX_JOBS:-2}" > "$work.build.log" 2>&1 || { tail -40 "$work.build.log"; exit 1; }
library=$work/liblrfused_ops.so

# Every symbol the library needs must be defined by a library it names (found in torch 2.11.0's or
# CUDA's folders, or the system's), or be Python's C API (the interpreter provides it).
defined=$(mktemp)
trap 'rm -f "$defined"' EXIT
for needed in $(readelf -d "$library" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
  found=""
  for dir in "$torch_dir/lib" "$CUDA_HOME/lib64" /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64; do
    [ -f "$dir/$needed" ] && { found=$dir/$needed; break; }
  done
  [ -n "$found" ] || { echo "$needed: not found in torch's, CUDA's or the system's libraries"; exit 1; }
  echo "  needs $needed ($found)"
  nm -D --defined-only "$found" | awk '{print $NF}' >> "$defined"
done
missing=$(nm -D --undefined-only "$library" | awk '{print $NF}' | sed 's/@.*//' | grep -v '^_\?Py' \
  | grep -vxFf <(sed 's/@.*//' "$defined") | grep -v '^__gmon_start__\|^_ITM_\|^__cxa_finalize' || true)
if [ -n "$missing" ]; then
  echo "symbols that no needed library defines:"; echo "$missing" | head -20; exit 1
fi
echo "  every undefined symbol is defined by a library it names"

rm -rf "$out"
mkdir -p "$out/lrfused" "$out/bin"
cp "$library" "$out/lrfused/_C.abi3.so"
LRFUSED_NVCC_OUT="$work/nvcc" bash scripts/nvcc_check.sh > "$work.nvcc.log" 2>&1 || { tail -30 "$work.nvcc.log"; exit 1; }
cp "$work"/nvcc/test_kernel "$work"/nvcc/test_step_launch "$work"/nvcc/test_tensor_tables "$out/bin/"
{
  echo "torch $torch_version"
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- csrc tests/cuda CMakeLists.txt || echo ' (with uncommitted changes)')"
  echo "arch sm_${arch/./}"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m) with $("$NVCC" --version | tail -1)"
} > "$out/BUILD_INFO"
cat "$out/BUILD_INFO"
du -sh "$out"
size=$(du -sm "$out" | cut -f1)
[ "$size" -lt 64 ] || { echo "$out is $size MiB: more than a device call carries (64 MiB)"; exit 1; }
echo "gpu prebuild done: carry $out"
