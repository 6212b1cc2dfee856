#!/usr/bin/env bash
# Builds the whole extension with its CUDA kernels (LRFUSED_CUDA=1) against a CUDA build of torch,
# without a GPU, in a fresh virtual environment, then imports it (lrfused.has_cuda_kernels() must
# be True) and runs the CPU tests there. On the project's machines `pip install torch==2.14.1`
# takes a local CUDA build (about 5.5 GB, no download); LRFUSED_CUDA_TORCH overrides it.
# Skips, saying so, where no CUDA toolkit is found.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "no CUDA toolkit at $CUDA_HOME: skipping the CUDA build check"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== fresh venv with ${LRFUSED_CUDA_TORCH:-torch==2.14.1}"
"$PYTHON" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
"$venv_python" -m pip install --quiet "${LRFUSED_CUDA_TORCH:-torch==2.14.1}" ninja numpy pytest hypothesis wheel setuptools
"$venv_python" -c "import torch; assert torch.version.cuda, 'not a CUDA build of torch'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# A copy of the tree, so that the extension built here does not replace the one of the current env.
git ls-files -z | tar --null -T - -cf - | (mkdir -p "$work/tree" && tar -xf - -C "$work/tree")
cd "$work/tree"
echo "== build with the CUDA kernels (sm_80, sm_90)"
TORCH_CUDA_ARCH_LIST="8.0;9.0" LRFUSED_CUDA=1 MAX_JOBS=2 \
  "$venv_python" -m pip install --quiet --no-build-isolation --no-deps -e . > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
if grep -E "warning: \"Py_LIMITED_API\" redefined" "$work/build.log"; then
  echo "Py_LIMITED_API is defined twice"; exit 1
fi
LRFUSED_REQUIRE_KERNELS=1 "$venv_python" -c "
import lrfused
assert lrfused.has_kernels() and lrfused.has_cuda_kernels(), 'the CUDA kernels were not registered'
print('lrfused', lrfused.__version__, 'cuda kernels:', lrfused.has_cuda_kernels())
"
echo "== the tests on the CPU, in this environment"
LRFUSED_REQUIRE_KERNELS=1 "$venv_python" -m pytest -q -p no:cacheprovider tests -x
echo "CUDA build check passed"
