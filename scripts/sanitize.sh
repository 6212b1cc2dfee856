#!/usr/bin/env bash
# The C++ unit tests of csrc/common and the CPU op tests (the step ops and the eager table
# included) under AddressSanitizer and UndefinedBehaviorSanitizer. The sanitized extension is built into a temporary folder, so the
# installed (optimised) one is left alone. Needs gcc with libasan and libubsan.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags="-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"

echo "== C++ unit tests of csrc/common under ASan + UBSan"
g++ $flags -Icsrc tests/cpp/test_common.cpp -o "$work/test_common"
"$work/test_common"

echo "== CPU op tests under ASan + UBSan"
LRFUSED_SANITIZE=1 "$PYTHON" setup.py -q build_ext --build-temp "$work/build" --build-lib "$work/lib" > "$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
(cd lrfused && find . -name "*.py" -exec cp --parents {} "$work/lib/lrfused/" \;)
# Python and torch are not instrumented: only lrfused's own code is checked; leaks of the
# interpreter at exit are not ours to report.
export ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# An editable install of lrfused maps the package to the source tree through a meta-path finder
# that would win over PYTHONPATH: the runner drops it, so that the sanitized build is imported.
cat > "$work/run_tests.py" <<PY
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, "$work/lib")
import lrfused._C
assert lrfused._C.__file__.startswith("$work"), lrfused._C.__file__
print("testing the sanitized build:", lrfused._C.__file__)
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", "$work", "-c", "/dev/null",
                      "tests/test_optimizer.py", "tests/test_ops.py", "tests/test_planner.py",
                      "-k", "not missing_library"]))
PY
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" LRFUSED_REQUIRE_KERNELS=1 \
  "$PYTHON" "$work/run_tests.py"
echo "sanitizers: no error"
