#!/usr/bin/env bash
# Builds an sdist and a wheel with `python -m build --no-isolation`, installs each into a fresh
# virtual environment (torch from LRFUSED_TORCH, default torch==2.13.0) and runs an import smoke
# test there: the compiled kernels load and one optimizer step runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip install --quiet build
"$PYTHON" -m build --no-isolation --outdir "$work/dist" . > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
ls "$work/dist"
# The sdist carries what its scripts and tests read: the CUDA tests and their emulation headers,
# the frameworks' requirements, the lint and path checks, the C++ notes.
"$PYTHON" - "$work"/dist/*.tar.gz <<'CHECK'
import sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
needed = ["tests/cuda/test_kernel.cu", "tests/cuda/test_step_launch.cu", "tests/cuda/test_tensor_tables.cu",
          "tests/cuda/test_support.h", "tests/cuda/emulation/emulation.h", "tests/requirements-frameworks.txt",
          "tests/helpers.py", "scripts/check_paths.py", "scripts/lint.sh", "csrc/README.md", ".clang-format"]
missing = [name for name in needed if name not in names]
assert not missing, f"the sdist lacks {missing}"
print(f"the sdist carries the {len(needed)} files its scripts and tests read")
CHECK
# The wheel's Python tag and the metadata's Requires-Python must name the same oldest Python.
"$PYTHON" - "$work"/dist/*.whl <<'CHECK'
import re, sys, zipfile
wheel = sys.argv[1]
tag = re.search(r"-cp(\d)(\d+)-abi3-", wheel)
assert tag, f"{wheel} is not an abi3 wheel"
with zipfile.ZipFile(wheel) as archive:
    metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
requires = re.search(r"^Requires-Python: >=(\d+)\.(\d+)$", metadata, re.M)
assert requires and requires.groups() == tag.groups(), (tag.groups(), requires and requires.group(0))
print(f"wheel tag cp{''.join(tag.groups())}-abi3 and Requires-Python >={'.'.join(requires.groups())} agree")
CHECK

smoke='
import lrfused, torch
assert lrfused.has_kernels(), "the compiled kernels did not load"
print("lrfused", lrfused.__version__, "kernels:", lrfused.has_kernels(), "cuda kernels:", lrfused.has_cuda_kernels())
w = torch.ones(3, requires_grad=True)
opt = lrfused.FusedScheduledAdamW([w], lr=0.1)
sched = lrfused.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
w.grad = torch.ones(3)
opt.step(); sched.step()
assert torch.allclose(w, torch.full((3,), 1 - 0.1 * 0.01 - 0.1), atol=1e-6), w
print("smoke test passed")
'
for artifact in "$work"/dist/*.whl "$work"/dist/*.tar.gz; do
  echo "== fresh venv: $(basename "$artifact")"
  rm -rf "$work/venv"
  "$PYTHON" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel ninja
  "$work/venv/bin/python" -m pip install --quiet "${LRFUSED_TORCH:-torch==2.13.0}"
  # --no-build-isolation: the sdist builds against the torch just installed, as it will run.
  "$work/venv/bin/python" -m pip install --quiet --no-build-isolation "$artifact"
  (cd "$work" && LRFUSED_REQUIRE_KERNELS=1 "$work/venv/bin/python" -c "$smoke")
done
echo "packaging check passed"
