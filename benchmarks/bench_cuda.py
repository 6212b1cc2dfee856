"""CUDA benchmark: one optimizer+scheduler step of lrfused against torch's AdamW variants (and
apex's FusedAdam where importable), all measured in this one run on this GPU.

    python benchmarks/bench_cuda.py [--out benchmarks/results] [--repeats 20] [--quick]

For every case it reports ms per step (CUDA events, after warm-up, median of repeats, inputs
rotated so that the L2 cache does not hold them), the effective bandwidth at REFERENCE's bytes per
parameter, that as a percentage of the device-to-device copy bandwidth measured in the same run,
host microseconds per step, and kernel launches per step (torch.profiler). It prints a table and
writes benchmarks/results/<gpu>-<yyyymmdd>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import time

import torch

import lrfused
from lrfused import lr_scheduler as fused_schedulers

GPT2_124M_SHAPES = (
    [(50257, 768), (1024, 768)]
    + [shape for _ in range(12) for shape in [(768,), (768,), (2304, 768), (2304,), (768, 768), (768,), (768,), (768,),
                                              (3072, 768), (3072,), (768, 3072), (768,)]]
    + [(768,), (768,)]
)


def bytes_per_param(dtype: torch.dtype) -> int:
    # p, g, m, v read; p, m, v written: 7 accesses of the param dtype (states keep it).
    return 7 * torch.tensor([], dtype=dtype).element_size()


def copy_bandwidth(repeats: int) -> float:
    """GB/s of a large device-to-device copy (read + write), the ceiling of a streaming kernel."""
    n = 1 << 28
    src = torch.empty(n, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return 2 * n * 4 / statistics.median(samples) / 1e9


def contenders(apex_adam):
    cosine = dict(T_max=100_000, eta_min=1e-5)
    torch_cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, **cosine)  # noqa: E731
    found = {
        "lrfused FusedScheduledAdamW + lrfused CosineAnnealingLR": (
            lambda ps: lrfused.FusedScheduledAdamW(ps, lr=1e-3),
            lambda opt: fused_schedulers.CosineAnnealingLR(opt, **cosine)),
        "torch AdamW(fused=True), float lr + CosineAnnealingLR": (
            lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), torch_cosine),
        "torch AdamW(fused=True), tensor lr + CosineAnnealingLR": (
            lambda ps: torch.optim.AdamW(ps, lr=torch.tensor(1e-3, device="cuda"), fused=True), torch_cosine),
        "torch AdamW(foreach=True, capturable=True) + CosineAnnealingLR": (
            lambda ps: torch.optim.AdamW(ps, lr=torch.tensor(1e-3, device="cuda"), foreach=True, capturable=True),
            torch_cosine),
    }
    if apex_adam is not None:
        found["apex FusedAdam (adam_w_mode) + CosineAnnealingLR"] = (
            lambda ps: apex_adam(ps, lr=1e-3, adam_w_mode=True), torch_cosine)
    return found


def make_copies(shapes, dtype, copies):
    """`copies` independent parameter sets with grads: rotating among them defeats the L2."""
    sets = []
    for _ in range(copies):
        params = [torch.randn(s, device="cuda", dtype=dtype, requires_grad=True) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p)
        sets.append(params)
    return sets


def time_contender(make_optimizer, make_scheduler, shapes, dtype, copies, repeats, steps_per_sample):
    sets = make_copies(shapes, dtype, copies)
    pairs = []
    for params in sets:
        optimizer = make_optimizer(params)
        pairs.append((optimizer, make_scheduler(optimizer)))

    def step(i):
        optimizer, scheduler = pairs[i % len(pairs)]
        optimizer.step()
        scheduler.step()

    for i in range(5 * len(pairs)):
        step(i)
    torch.cuda.synchronize()
    device_ms, host_us = [], []
    for r in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        host_start = time.perf_counter()
        for i in range(steps_per_sample):
            step(r * steps_per_sample + i)
        host_us.append((time.perf_counter() - host_start) / steps_per_sample * 1e6)
        end.record()
        end.synchronize()
        device_ms.append(start.elapsed_time(end) / steps_per_sample)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for i in range(10):
            step(i)
        torch.cuda.synchronize()
    launches = sum(1 for e in profiler.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 10
    del pairs, sets
    torch.cuda.empty_cache()
    return statistics.median(device_ms), statistics.median(host_us), launches


def cases(quick: bool):
    if quick:
        return [("one 2^20 fp32 tensor", [(1 << 20,)], torch.float32), ("100 x 4096 fp32", [(4096,)] * 100,
                                                                         torch.float32)]
    return [
        ("one 2^28 fp32 tensor", [(1 << 28,)], torch.float32),
        ("1000 x 1M fp32", [(1 << 20,)] * 1000, torch.float32),
        ("GPT-2 124M shapes fp32", GPT2_124M_SHAPES, torch.float32),
        ("10000 x 4096 fp32", [(4096,)] * 10000, torch.float32),
        ("GPT-2 124M shapes bf16", GPT2_124M_SHAPES, torch.bfloat16),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small cases, for a smoke test")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs a CUDA GPU")
    try:
        from apex.optimizers import FusedAdam as apex_adam
    except ImportError:
        apex_adam = None

    properties = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(properties, "L2_cache_size", 50 << 20)
    bandwidth = copy_bandwidth(args.repeats)
    report = {
        "gpu": properties.name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lrfused": lrfused.__version__,
        "date": datetime.date.today().isoformat(),
        "copy_bandwidth_GB_per_s": bandwidth,
        "apex": apex_adam is not None,
        "cases": [],
    }
    for label, shapes, dtype in cases(args.quick):
        numel = sum(torch.Size(s).numel() for s in shapes)
        per_param = bytes_per_param(dtype)
        copies = max(1, min(8, -(-4 * l2_bytes // (numel * per_param))))
        rows = {}
        for name, (make_optimizer, make_scheduler) in contenders(apex_adam).items():
            ms, host_us, launches = time_contender(make_optimizer, make_scheduler, shapes, dtype, copies,
                                                   args.repeats, steps_per_sample=10)
            gbps = per_param * numel / (ms / 1e3) / 1e9
            rows[name] = {"ms_per_step": ms, "GB_per_s": gbps, "percent_of_copy": 100 * gbps / bandwidth,
                          "host_us_per_step": host_us, "launches_per_step": launches}
        baseline = rows["torch AdamW(fused=True), float lr + CosineAnnealingLR"]["ms_per_step"]
        for row in rows.values():
            row["ratio_vs_torch_fused_float_lr"] = row["ms_per_step"] / baseline
        report["cases"].append({"case": label, "params": numel, "tensors": len(shapes), "bytes_per_param": per_param,
                                "copies_rotated": copies, "results": rows})

    lines = [f"# lrfused CUDA benchmark: {report['gpu']}, torch {report['torch']}, CUDA {report['cuda']}, "
             f"{report['date']}", "",
             f"Device-to-device copy bandwidth measured in the same run: {bandwidth:.0f} GB/s.", ""]
    for case in report["cases"]:
        lines += [f"## {case['case']} ({case['params']:,} params, {case['bytes_per_param']} B/param)", "",
                  "| contender | ms/step | GB/s | % of copy | vs torch fused | host µs/step | launches/step |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in case["results"].items():
            lines.append(f"| {name} | {r['ms_per_step']:.3f} | {r['GB_per_s']:.0f} | {r['percent_of_copy']:.0f}% | "
                         f"{r['ratio_vs_torch_fused_float_lr']:.2f}x | {r['host_us_per_step']:.0f} | "
                         f"{r['launches_per_step']:.1f} |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    stem = f"{re.sub(r'[^A-Za-z0-9]+', '-', report['gpu']).strip('-')}-{report['date'].replace('-', '')}"
    stem += "-quick" if args.quick else ""
    with open(os.path.join(args.out, stem + ".json"), "w") as handle:
        json.dump(report, handle, indent=2)
    with open(os.path.join(args.out, stem + ".md"), "w") as handle:
        handle.write(table + "\n")
    print(f"wrote {os.path.join(args.out, stem)}.json and .md")


if __name__ == "__main__":
    main()
