#!/usr/bin/env bash
# The README's two commands: `bash scripts/run.sh demo` and `bash scripts/run.sh test`.
# Installs what is missing into the current Python environment, builds lrfused, then runs.
#   LRFUSED_TORCH   the torch requirement installed when torch is missing (default torch==2.13.0)
#   PYTHON          the interpreter (default python3)
#   LRFUSED_FRAMEWORKS=1  also install the frameworks of tests/test_frameworks.py (CI sets it;
#                   without them those tests skip)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
what=${1:-}
shift || true
case "$what" in
  demo|test) ;;
  *) echo "usage: bash scripts/run.sh demo|test [arguments for the demo or pytest]" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "installing ${LRFUSED_TORCH:-torch==2.13.0}"
  "$PYTHON" -m pip install --quiet "${LRFUSED_TORCH:-torch==2.13.0}"
fi
# Everything else the build, the tests and the demo use (torch itself is never upgraded here).
"$PYTHON" -m pip install --quiet ninja numpy pytest hypothesis matplotlib tqdm
"$PYTHON" -m pip install --quiet --no-build-isolation --no-deps -e .
if [ "${LRFUSED_FRAMEWORKS:-0}" = 1 ]; then
  # The constraint holds torch at the installed version: a framework never swaps it.
  pin=$(mktemp)
  "$PYTHON" -c "import torch; print('torch==' + torch.__version__)" > "$pin"
  "$PYTHON" -m pip install --quiet -c "$pin" -r tests/requirements-frameworks.txt
  rm -f "$pin"
fi

if [ "$what" = demo ]; then
  exec "$PYTHON" -m lrfused demo "$@"
fi
export LRFUSED_REQUIRE_KERNELS=1
exec "$PYTHON" -m pytest "$@"
