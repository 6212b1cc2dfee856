#!/usr/bin/env bash
# The code's format and lint, as CI checks them: ruff (pyproject.toml's [tool.ruff]) on the Python,
# clang-format (.clang-format) on the C++ and CUDA sources, and every file path the sources and
# documents name. The two tools are pinned here and installed when missing or of another version.
#   bash scripts/lint.sh         check (exits non-zero on any finding)
#   bash scripts/lint.sh --fix   rewrite the files in place
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RUFF_VERSION=0.17.6
CLANG_FORMAT_VERSION=23.1.5

if [ "$("$PYTHON" -m ruff --version 2>/dev/null)" != "ruff $RUFF_VERSION" ]; then
  "$PYTHON" -m pip install --quiet "ruff==$RUFF_VERSION"
fi
if ! "$PYTHON" -m pip show clang-format 2>/dev/null | grep -qx "Version: $CLANG_FORMAT_VERSION"; then
  "$PYTHON" -m pip install --quiet "clang-format==$CLANG_FORMAT_VERSION"
fi
clang_format=$("$PYTHON" -c "import clang_format; print(clang_format.get_executable('clang-format'))" \
  2>/dev/null || command -v clang-format)

mapfile -t cxx < <(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh')
if [ "${1:-}" = --fix ]; then
  "$PYTHON" -m ruff check --fix .
  "$PYTHON" -m ruff format .
  "$clang_format" -i "${cxx[@]}"
else
  "$PYTHON" -m ruff check .
  "$PYTHON" -m ruff format --check .
  "$clang_format" --dry-run -Werror "${cxx[@]}"
  echo "clang-format: ${#cxx[@]} files formatted"
fi
"$PYTHON" scripts/check_paths.py
