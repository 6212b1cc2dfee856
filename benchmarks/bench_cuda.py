"""CUDA benchmark: one optimizer + scheduler step of lrfused against what a demanding user would
pick instead, all measured in this one run on this GPU.

    python benchmarks/bench_cuda.py [--quick] [--cases NAME,...] [--repeats 20] [--out benchmarks/results]
    python benchmarks/bench_cuda.py --dry-run     # tiny shapes on the CPU: every code path, no CUDA call

Contenders (each with a cosine schedule whose lr changes every step):

  (i)   torch AdamW(fused=True) + torch's CosineAnnealingLR, eager
  (ii)  torch AdamW(fused=True, capturable=True, lr=<cuda tensor>), the optimizer step captured in a
        CUDA graph, torch's scheduler writing the lr tensor (fill_) on the host before every replay
        (what Megatron-LM, TransformerEngine and microsoft/dion do)
  (iii) torch.compile of the optimizer step with a tensor lr (no recompiles), torch's scheduler outside
  (iv)  lrfused FusedScheduledAdamW + lrfused CosineAnnealingLR, eager
  (v)   the same, optimizer and scheduler step captured in one CUDA graph and replayed

Then SGD (momentum), RMSprop (momentum) and Adagrad, each with the same schedule, on the first two
cases: torch's fastest implementation of each (fused SGD and Adagrad, foreach RMSprop) eager, and
lrfused's eager and captured; ratios against torch's.

For every case and contender: GPU ms per step (CUDA events around 10 steps, median of the
repeats, parameter sets rotated so that the L2 cache never holds the next step's data), host µs
per step (the time the Python thread spends issuing one step, measured separately), effective
bandwidth at the bytes each parameter moves, that as a percentage of the device-to-device copy
bandwidth measured in this run, device launches per step and host synchronisations per step
(torch.profiler). Ratios are against (i). Prints a table and writes <gpu>-<yyyymmdd>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable

import torch

import lrfused
from lrfused import lr_scheduler as fused_schedulers

GPT2_124M_SHAPES = (
    [(50257, 768), (1024, 768)]
    + [
        shape
        for _ in range(12)
        for shape in [
            (768,),
            (768,),
            (2304, 768),
            (2304,),
            (768, 768),
            (768,),
            (768,),
            (768,),
            (3072, 768),
            (3072,),
            (768, 3072),
            (768,),
        ]
    ]
    + [(768,), (768,)]
)
LLAMA2_7B_LAYER_SHAPES = [(4096, 4096)] * 4 + [(11008, 4096), (11008, 4096), (4096, 11008), (4096,), (4096,)]

COSINE = dict(T_max=100_000, eta_min=1e-5)
BASELINE = "(i) torch AdamW fused, eager"
# Runtime calls that make the host wait for the device.
SYNC_CALLS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"}


class Env:
    """Where the benchmark runs: a GPU, or the CPU for --dry-run (same code, no CUDA call)."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")

    def synchronize(self) -> None:
        if not self.dry_run:
            torch.cuda.synchronize()

    def timed(self, function: Callable[[], None]) -> float:
        """Seconds of device time that `function` enqueues (wall time in a dry run)."""
        if self.dry_run:
            start = time.perf_counter()
            function()
            return time.perf_counter() - start
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


class _EagerGraph:
    def __init__(self):
        self.function = None

    def replay(self):
        self.function()


def bytes_per_param(dtype: torch.dtype) -> int:
    # p, g, m, v read; p, m, v written: 7 accesses of the param dtype (the states keep it).
    return 7 * torch.tensor([], dtype=dtype).element_size()


def copy_bandwidth(env: Env, repeats: int) -> float:
    """GB/s of a large device-to-device copy (read + write), the ceiling of a streaming kernel."""
    n = 1 << (10 if env.dry_run else 28)
    src = torch.empty(n, device=env.device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    samples = [env.timed(lambda: dst.copy_(src)) for _ in range(repeats)]
    return 2 * n * 4 / statistics.median(samples) / 1e9


# --- the contenders: each makes a `step()` for one parameter set -----------------------------------


def torch_fused_eager(env, params):
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=not env.dry_run)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **COSINE)

    def step():
        optimizer.step()
        scheduler.step()

    return step


def torch_fused_graph_host_lr(env, params):
    lr = torch.tensor(1e-3, device=env.device)
    optimizer = torch.optim.AdamW(params, lr=lr, fused=not env.dry_run, capturable=not env.dry_run)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **COSINE)
    graph = _captured(env, optimizer.step)

    def step():
        graph.replay()
        scheduler.step()  # fill_s the lr tensor on the host's side of the graph: one copy per replay

    return step


def torch_compiled(env, params):
    lr = torch.tensor(1e-3, device=env.device)
    optimizer = torch.optim.AdamW(params, lr=lr, foreach=not env.dry_run, capturable=not env.dry_run)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **COSINE)
    compiled = torch.compile(optimizer.step, backend="eager" if env.dry_run else "inductor")

    def step():
        compiled()
        scheduler.step()

    return step


def lrfused_eager(env, params):
    optimizer = lrfused.FusedScheduledAdamW(params, lr=1e-3)
    scheduler = fused_schedulers.CosineAnnealingLR(optimizer, **COSINE)

    def step():
        optimizer.step()
        scheduler.step()

    return step


def lrfused_graph(env, params):
    return _captured(env, lrfused_eager(env, params)).replay


def _captured(env, function):
    """`function` warmed up on a side stream, then captured; the graph (an eager stand-in in a dry run)."""
    if env.dry_run:
        for _ in range(3):
            function()
        graph = _EagerGraph()
        graph.function = function
        return graph
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        function()
    return graph


CONTENDERS = {
    BASELINE: torch_fused_eager,
    "(ii) torch AdamW fused, graph, host lr": torch_fused_graph_host_lr,
    "(iii) torch.compile, tensor lr": torch_compiled,
    "(iv) lrfused eager": lrfused_eager,
    "(v) lrfused graph": lrfused_graph,
}


# The other rules: name -> (torch's fastest, lrfused's, arrays moved per param and step).
OTHER_RULES = {
    "SGD(momentum=0.9)": (
        lambda env, ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=not env.dry_run),
        lambda ps: lrfused.FusedScheduledSGD(ps, lr=1e-3, momentum=0.9),
        5,
    ),
    "RMSprop(momentum=0.9)": (
        lambda env, ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9, foreach=True),
        lambda ps: lrfused.FusedScheduledRMSprop(ps, lr=1e-3, momentum=0.9),
        7,
    ),
    "Adagrad": (
        lambda env, ps: torch.optim.Adagrad(ps, lr=1e-3, fused=not env.dry_run),
        lambda ps: lrfused.FusedScheduledAdagrad(ps, lr=1e-3),
        5,
    ),
}


def rule_contenders(rule: str) -> dict[str, Callable]:
    """torch's fastest eager, lrfused's eager and captured, each with the cosine schedule."""
    make_torch, make_ours, _ = OTHER_RULES[rule]

    def torch_eager(env, params):
        optimizer = make_torch(env, params)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **COSINE)

        def step():
            optimizer.step()
            scheduler.step()

        return step

    def ours_eager(env, params):
        optimizer = make_ours(params)
        scheduler = fused_schedulers.CosineAnnealingLR(optimizer, **COSINE)

        def step():
            optimizer.step()
            scheduler.step()

        return step

    return {
        "torch eager": torch_eager,
        "lrfused eager": ours_eager,
        "lrfused graph": lambda env, params: _captured(env, ours_eager(env, params)).replay,
    }


def cases(env: Env, quick: bool) -> dict[str, tuple[list[tuple[int, ...]], torch.dtype]]:
    if env.dry_run:
        return {
            "one tensor fp32": ([(4096,)], torch.float32),
            "GPT-2 shapes / 64 bf16": ([tuple(max(1, d // 64) for d in s) for s in GPT2_124M_SHAPES], torch.bfloat16),
        }
    if quick:
        return {
            "one 2^20 fp32 tensor": ([(1 << 20,)], torch.float32),
            "100 x 4096 fp32": ([(4096,)] * 100, torch.float32),
        }
    # One fp32 tensor as large as fits: 4 arrays of it (p, g, m, v) at most a third of free memory.
    free, _ = torch.cuda.mem_get_info()
    largest = min(1 << 30, int(free / 3 / 16) // 65536 * 65536)
    return {
        f"one {largest:,}-element fp32 tensor": ([(largest,)], torch.float32),
        "one 2^28 bf16 tensor": ([(1 << 28,)], torch.bfloat16),
        "GPT-2 124M shapes fp32": (GPT2_124M_SHAPES, torch.float32),
        "GPT-2 124M shapes bf16": (GPT2_124M_SHAPES, torch.bfloat16),
        "Llama-2-7B layer shapes x 32 bf16": (LLAMA2_7B_LAYER_SHAPES * 32, torch.bfloat16),
        "10000 x 4096 fp32": ([(4096,)] * 10000, torch.float32),
    }


def make_sets(env, shapes, dtype, copies):
    """`copies` independent parameter sets with grads: rotating among them defeats the L2."""
    sets = []
    for _ in range(copies):
        params = [torch.randn(s, device=env.device, dtype=dtype, requires_grad=True) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p)
        sets.append(params)
    return sets


def profile_step(env, steps: list[Callable[[], None]], count: int) -> tuple[float, float]:
    """(device launches, host synchronisations) per step, from torch.profiler."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if not env.dry_run:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for i in range(count):
            steps[i % len(steps)]()
        env.synchronize()
    events = profiler.events()
    launches = sum(
        1
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    )
    # The profiler's own final synchronize is not the step's.
    syncs = sum(1 for e in events if e.name in SYNC_CALLS) - (0 if env.dry_run else 1)
    return launches / count, max(syncs, 0) / count


def time_contender(env, make_step, shapes, dtype, copies, repeats, steps_per_sample=10):
    sets = make_sets(env, shapes, dtype, copies)
    steps = [make_step(env, params) for params in sets]
    for i in range(3 * len(steps)):
        steps[i % len(steps)]()
    env.synchronize()

    def run(first):
        for i in range(steps_per_sample):
            steps[(first + i) % len(steps)]()

    device_s = [env.timed(lambda r=r: run(r * steps_per_sample)) / steps_per_sample for r in range(repeats)]
    # Host time: the thread's time to issue one step, the device idle and the queue empty.
    host_s = []
    for r in range(repeats):
        env.synchronize()
        start = time.perf_counter()
        steps[r % len(steps)]()
        host_s.append(time.perf_counter() - start)
    env.synchronize()
    launches, syncs = profile_step(env, steps, 10)
    steps.clear()  # frees the params and optimizers before the next contender
    sets.clear()
    if not env.dry_run:
        torch.cuda.empty_cache()
    return {
        "ms_per_step": statistics.median(device_s) * 1e3,
        "host_us_per_step": statistics.median(host_s) * 1e6,
        "launches_per_step": launches,
        "syncs_per_step": syncs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="two small cases, for a smoke test")
    parser.add_argument("--cases", default="", help="comma-separated substrings: run only the cases that match")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, no CUDA call")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    env = Env(args.dry_run)
    if not env.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs a CUDA GPU (or --dry-run)")
    repeats = 3 if env.dry_run else args.repeats
    name = "dry run on the CPU" if env.dry_run else torch.cuda.get_device_properties(0).name
    l2_bytes = 1 << 20 if env.dry_run else getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    bandwidth = copy_bandwidth(env, repeats)
    report = {
        "gpu": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lrfused": lrfused.__version__,
        "date": datetime.date.today().isoformat(),
        "copy_bandwidth_GB_per_s": bandwidth,
        "cases": [],
    }
    wanted = [w.strip() for w in args.cases.split(",") if w.strip()]
    for label, (shapes, dtype) in cases(env, args.quick).items():
        if wanted and not any(w in label for w in wanted):
            continue
        numel = sum(math.prod(s) for s in shapes)
        per_param = bytes_per_param(dtype)
        # Enough sets that the L2 holds none of the next one; one when a set is far larger.
        copies = max(1, min(8, -(-4 * l2_bytes // (numel * per_param))))
        rows = {}
        for contender, make_step in CONTENDERS.items():
            row = time_contender(env, make_step, shapes, dtype, copies, repeats)
            row["GB_per_s"] = per_param * numel / (row["ms_per_step"] / 1e3) / 1e9
            row["percent_of_copy"] = 100 * row["GB_per_s"] / bandwidth
            rows[contender] = row
            print(
                f"{label}: {contender}: {row['ms_per_step']:.3f} ms, {row['host_us_per_step']:.0f} µs host", flush=True
            )
        for row in rows.values():
            row["gpu_time_vs_i"] = row["ms_per_step"] / rows[BASELINE]["ms_per_step"]
            row["host_time_vs_i"] = row["host_us_per_step"] / rows[BASELINE]["host_us_per_step"]
        report["cases"].append(
            {
                "case": label,
                "params": numel,
                "tensors": len(shapes),
                "dtype": str(dtype),
                "bytes_per_param": per_param,
                "copies_rotated": copies,
                "results": rows,
            }
        )

    report["other_rules"] = []
    for label, (shapes, dtype) in list(cases(env, args.quick).items())[:2]:
        if wanted and not any(w in label for w in wanted):
            continue
        numel = sum(math.prod(s) for s in shapes)
        size = torch.tensor([], dtype=dtype).element_size()
        for rule, (_, _, arrays) in OTHER_RULES.items():
            copies = max(1, min(8, -(-4 * l2_bytes // (numel * arrays * size))))
            rows = {}
            for contender, make_step in rule_contenders(rule).items():
                row = time_contender(env, make_step, shapes, dtype, copies, repeats)
                row["GB_per_s"] = arrays * size * numel / (row["ms_per_step"] / 1e3) / 1e9
                row["percent_of_copy"] = 100 * row["GB_per_s"] / bandwidth
                rows[contender] = row
                print(f"{label}: {rule}: {contender}: {row['ms_per_step']:.3f} ms", flush=True)
            for row in rows.values():
                row["gpu_time_vs_torch"] = row["ms_per_step"] / rows["torch eager"]["ms_per_step"]
                row["host_time_vs_torch"] = row["host_us_per_step"] / rows["torch eager"]["host_us_per_step"]
            report["other_rules"].append(
                {"case": label, "rule": rule, "params": numel, "bytes_per_param": arrays * size, "results": rows}
            )

    lines = [
        f"# lrfused CUDA benchmark: {report['gpu']}, torch {report['torch']}, CUDA {report['cuda']}, {report['date']}",
        "",
        f"Device-to-device copy bandwidth measured in the same run: {bandwidth:.0f} GB/s. "
        "Ratios are against (i), measured in the same run.",
        "",
    ]
    for case in report["cases"]:
        lines += [
            f"## {case['case']} ({case['params']:,} params in {case['tensors']} tensors, "
            f"{case['bytes_per_param']} B/param)",
            "",
            "| contender | GPU ms/step | vs (i) | % of copy | host µs/step | host vs (i) | launches/step "
            "| syncs/step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for contender, r in case["results"].items():
            lines.append(
                f"| {contender} | {r['ms_per_step']:.3f} | {r['gpu_time_vs_i']:.2f}x | "
                f"{r['percent_of_copy']:.0f}% | {r['host_us_per_step']:.0f} | {r['host_time_vs_i']:.2f}x | "
                f"{r['launches_per_step']:.1f} | {r['syncs_per_step']:.1f} |"
            )
        lines.append("")
    if report["other_rules"]:
        lines += [
            "## SGD, RMSprop and Adagrad against torch's fastest of each",
            "",
            "| case | rule | contender | GPU ms/step | vs torch | % of copy | host µs/step | launches/step "
            "| syncs/step |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for entry in report["other_rules"]:
            for contender, r in entry["results"].items():
                lines.append(
                    f"| {entry['case']} | {entry['rule']} | {contender} | {r['ms_per_step']:.3f} | "
                    f"{r['gpu_time_vs_torch']:.2f}x | {r['percent_of_copy']:.0f}% | {r['host_us_per_step']:.0f} | "
                    f"{r['launches_per_step']:.1f} | {r['syncs_per_step']:.1f} |"
                )
        lines.append("")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    stem = f"{re.sub(r'[^A-Za-z0-9]+', '-', report['gpu']).strip('-')}-{report['date'].replace('-', '')}"
    stem += "-dry-run" if env.dry_run else ("-quick" if args.quick else "")
    if wanted:
        stem += "-" + re.sub(r"[^A-Za-z0-9]+", "-", "-".join(wanted)).strip("-")
    with open(os.path.join(args.out, stem + ".json"), "w") as handle:
        json.dump(report, handle, indent=2)
    with open(os.path.join(args.out, stem + ".md"), "w") as handle:
        handle.write(table + "\n")
    print(f"wrote {os.path.join(args.out, stem)}.json and .md")


if __name__ == "__main__":
    main()
