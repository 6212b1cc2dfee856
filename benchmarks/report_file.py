"""What the CPU benchmarks share about their results: the machine named in words, and a JSON file
that never overwrites an earlier result of the same day."""

from __future__ import annotations

import json
import os
import platform

import torch


def machine_name() -> str:
    """The CPU model, its cores and the torch threads in use."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


def write_report(report: dict, out_dir: str, kind: str, where: str, date: str, suffix: str = "") -> str:
    """Writes ``report`` as ``<kind>-<where>-<date><letter><suffix>.json`` in ``out_dir``, the first
    letter (none, then b, c, ...) whose file does not exist yet; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{kind}-{where}-{date.replace('-', '')}")
    path = f"{stem}{suffix}.json"
    for letter in "bcdefghijklmnopqrstuvwxyz":
        if not os.path.exists(path):
            break
        path = f"{stem}{letter}{suffix}.json"
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
    return path
