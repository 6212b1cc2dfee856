"""Every file path the project's sources and documents name exists (CI runs it).

A path is a word ending in a source or document extension (``common/step_plan.h``,
``lrfused/_binding.py``, ``adam_update_loop.h``). It exists when it names a tracked file relative
to the repository root, to the naming file's folder or any folder above it, or to ``csrc/`` (the
C++ comments name ``common/...`` and ``cuda/...`` from there); a bare file name exists when some
tracked file has that name. Paths of other projects (torch's, a framework's) are told apart by
their first folder. Prints each path that does not exist, with where it is named, and exits 1.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED = (".py", ".h", ".cpp", ".cu", ".cuh", ".sh", ".md", ".txt", ".toml", ".in", ".cfg")
PATH = re.compile(r"(?<![\w/.\-*$])((?:[\w\-]+/)*[\w\-]+\.(?:py|h|cpp|cu|cuh|sh|md|txt|toml|json|cfg|yaml))(?![\w/])")
# First folders of paths in other projects, named to say where something comes from.
OTHER_PROJECTS = (
    "torch",
    "site-packages",
    "c10",
    "ATen",
    "aten",
    "hip",
    "pytorch_lightning",
    "lightning",
    "transformers",
    "accelerate",
    "optax",
    "apex",
    "third_party",
    "usr",
    "tmp",
    "hip-cpu",
    "test",
    "PATH",
)
# Names that are not files of this project: system headers, torch's scheduler suite (fetched by
# scripts/torch_scheduler_suite.sh) and the copy it runs, the demo's output (results.json).
NOT_FILES = {"math.h", "Python.h", "test_lrscheduler.py", "test_lrscheduler_lrfused.py", "results.json"}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def exists(path: str, naming_file: str, tracked: set[str], names: set[str]) -> bool:
    if "/" not in path:
        return path in names
    folders = pathlib.PurePosixPath(naming_file).parents
    candidates = [str(folder / path) if str(folder) != "." else path for folder in folders] + [f"csrc/{path}"]
    return any(candidate in tracked or any(t.startswith(candidate + "/") for t in tracked) for candidate in candidates)


def main() -> int:
    files = tracked_files()
    tracked = set(files)
    names = {pathlib.PurePosixPath(f).name for f in files}
    missing = []
    for name in files:
        if not name.endswith(SCANNED) or name.startswith("benchmarks/results/"):
            continue
        text = (ROOT / name).read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for match in PATH.finditer(line):
                path = match.group(1)
                if path.split("/")[0] in OTHER_PROJECTS or path in NOT_FILES or path.startswith("benchmarks/results/"):
                    continue
                if not exists(path, name, tracked, names):
                    missing.append(f"{name}:{number}: {path}")
    for entry in missing:
        print(entry)
    print(f"check_paths: {len(missing)} named path(s) that do not exist")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
