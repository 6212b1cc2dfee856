"""CPU benchmark: one optimizer+scheduler step of lrfused against torch.optim.Adam (fused and
foreach), each with a CosineAnnealingLR, in float32 and float64, plus in-place streaming ops as
the machine's ceiling; SGD (momentum), RMSprop (momentum) and Adagrad against torch's fastest
implementation of each (fused SGD and Adagrad, foreach RMSprop) at the same sizes; the host cost
per tensor (many small tensors against one tensor of the same size); and the lrfused ops one
optimizer step and scheduler step make.

    python benchmarks/bench_cpu.py [--repeats 30] [--out benchmarks/results]

Every figure comes from this one run on this machine; ratios are against torch fused Adam with
torch's scheduler measured in the same run. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
import torch.utils._python_dispatch
from report_file import machine_name, write_report

import lrfused
from lrfused import lr_scheduler as fused_schedulers

ADAM_ARRAYS_MOVED = 7  # p, g, m, v read; p, m, v written


def bytes_per_param(dtype: torch.dtype) -> int:
    return ADAM_ARRAYS_MOVED * torch.empty((), dtype=dtype).element_size()


def median_seconds(function, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def make_params(shapes, dtype=torch.float32):
    torch.manual_seed(0)
    params = [torch.randn(shape, dtype=dtype, requires_grad=True) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def contenders():
    """name -> (optimizer factory, scheduler factory)."""
    cosine = dict(T_max=10_000, eta_min=1e-5)
    return {
        "lrfused FusedScheduledAdam + lrfused CosineAnnealingLR": (
            lambda ps: lrfused.FusedScheduledAdam(ps, lr=1e-3),
            lambda opt: fused_schedulers.CosineAnnealingLR(opt, **cosine),
        ),
        "torch Adam(fused=True) + CosineAnnealingLR": (
            lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
            lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, **cosine),
        ),
        "torch Adam(foreach=True) + CosineAnnealingLR": (
            lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
            lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, **cosine),
        ),
    }


def stepper(make_optimizer, make_scheduler, shapes, dtype=torch.float32):
    """One optimizer step and scheduler step on fresh params of ``shapes``, as a function."""
    params = make_params(shapes, dtype)
    optimizer = make_optimizer(params)
    scheduler = make_scheduler(optimizer)

    def step():
        optimizer.step()
        scheduler.step()

    return step


def step_seconds(make_optimizer, make_scheduler, shapes, repeats: int, dtype=torch.float32) -> float:
    """Median seconds of one optimizer step and scheduler step on fresh params of ``shapes``."""
    return median_seconds(stepper(make_optimizer, make_scheduler, shapes, dtype), repeats)


def bench_case(label: str, shapes, repeats: int, dtype=torch.float32) -> dict:
    numel = sum(torch.Size(s).numel() for s in shapes)
    rows = {}
    for name, (make_optimizer, make_scheduler) in contenders().items():
        seconds = step_seconds(make_optimizer, make_scheduler, shapes, repeats, dtype)
        rows[name] = {"ms_per_step": seconds * 1e3, "GB_per_s": bytes_per_param(dtype) * numel / seconds / 1e9}
    baseline = rows["torch Adam(fused=True) + CosineAnnealingLR"]["ms_per_step"]
    for row in rows.values():
        row["ratio_vs_torch_fused"] = row["ms_per_step"] / baseline
    return {
        "case": label,
        "dtype": str(dtype).removeprefix("torch."),
        "bytes_per_param": bytes_per_param(dtype),
        "tensors": len(shapes),
        "params": numel,
        "results": rows,
    }


# The other rules: (lrfused's factory, torch's fastest factory and its name, arrays moved per param
# and step: read p, g and the states, write p and the states).
OTHER_RULES = {
    "SGD(momentum=0.9)": (
        lambda ps: lrfused.FusedScheduledSGD(ps, lr=1e-3, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
        "fused=True",
        5,
    ),
    "RMSprop(momentum=0.9)": (
        lambda ps: lrfused.FusedScheduledRMSprop(ps, lr=1e-3, momentum=0.9),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9, foreach=True),
        "foreach=True",
        7,
    ),
    "Adagrad": (
        lambda ps: lrfused.FusedScheduledAdagrad(ps, lr=1e-3),
        lambda ps: torch.optim.Adagrad(ps, lr=1e-3, fused=True),
        "fused=True",
        5,
    ),
}


def interleaved_medians(first, second, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of two steps timed alternately (each goes first in half the rounds), so that
    the machine's drift over the run falls on both alike."""
    for _ in range(warmup):
        first()
        second()
    samples: tuple[list[float], list[float]] = ([], [])
    for round_ in range(repeats):
        order = ((0, first), (1, second)) if round_ % 2 == 0 else ((1, second), (0, first))
        for index, function in order:
            start = time.perf_counter()
            function()
            samples[index].append(time.perf_counter() - start)
    return statistics.median(samples[0]), statistics.median(samples[1])


def bench_other_rules(cases, repeats: int) -> list[dict]:
    """Each other rule with a CosineAnnealingLR against torch's fastest of the same name, on the
    same shapes as Adam's fp32 cases, the two timed alternately."""
    cosine = dict(T_max=10_000, eta_min=1e-5)
    out = []
    for rule, (ours, theirs, how, arrays) in OTHER_RULES.items():
        for label, shapes in cases:
            numel = sum(torch.Size(s).numel() for s in shapes)
            ours_s, theirs_s = interleaved_medians(
                stepper(ours, lambda o: fused_schedulers.CosineAnnealingLR(o, **cosine), shapes),
                stepper(theirs, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, **cosine), shapes),
                repeats,
            )
            out.append(
                {
                    "rule": rule,
                    "case": label,
                    "params": numel,
                    "torch": how,
                    "bytes_per_param": 4 * arrays,
                    "lrfused_ms": ours_s * 1e3,
                    "torch_ms": theirs_s * 1e3,
                    "lrfused_GB_per_s": 4 * arrays * numel / ours_s / 1e9,
                    "ratio_vs_torch": ours_s / theirs_s,
                }
            )
    return out


def bench_host_overhead(repeats: int, small: bool) -> list[dict]:
    """A step of many tensors against a step of one tensor with as many elements, each contender
    with its scheduler: the ratio is the host's cost per tensor (1.0: none)."""
    cases = [(20, 1), (100, 1), (20, 4096)] if small else [(2000, 1), (10000, 1), (2000, 4096)]
    rows = []
    for count, size in cases:
        row = {"case": f"{count} x {size}", "tensors": count, "elements": count * size}
        for name in (
            "lrfused FusedScheduledAdam + lrfused CosineAnnealingLR",
            "torch Adam(fused=True) + CosineAnnealingLR",
        ):
            make_optimizer, make_scheduler = contenders()[name]
            samples = repeats if size > 1 else 5 * repeats
            seconds = {
                layout: step_seconds(make_optimizer, make_scheduler, shapes, samples)
                for layout, shapes in (("many", [(size,)] * count), ("one", [(count * size,)]))
            }
            row[name] = {
                "us_many": seconds["many"] * 1e6,
                "us_one": seconds["one"] * 1e6,
                "many_over_one": seconds["many"] / seconds["one"],
            }
        rows.append(row)
    return rows


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "lrfused":
            self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def ops_per_step() -> list[dict]:
    """The lrfused ops of one optimizer step and scheduler step (after the first, which plans)."""
    rows = []
    for groups, dtypes in ((1, (torch.float32,)), (2, (torch.float32,)), (2, (torch.float32, torch.bfloat16))):
        torch.manual_seed(0)
        params = [[torch.randn(64, dtype=dtype, requires_grad=True) for dtype in dtypes] for _ in range(groups)]
        optimizer = lrfused.FusedScheduledAdam([{"params": ps} for ps in params], lr=1e-3)
        scheduler = fused_schedulers.CosineAnnealingLR(optimizer, T_max=100)
        for step in range(3):
            for p in (p for ps in params for p in ps):
                p.grad = torch.randn_like(p)
            with _CountOps() as counter:
                optimizer.step()
                scheduler.step()
        rows.append({"groups": groups, "dtypes": [str(d).replace("torch.", "") for d in dtypes], "ops": counter.names})
    return rows


def bench_streaming(numel: int, repeats: int) -> dict:
    torch.manual_seed(0)
    a, b, c = torch.randn(numel), torch.randn(numel), torch.randn(numel)
    add = median_seconds(lambda: a.add_(b, alpha=1e-9), repeats)
    addcmul = median_seconds(lambda: a.addcmul_(b, c, value=1e-9), repeats)
    return {
        "add_": {"ms": add * 1e3, "GB_per_s": 12 * numel / add / 1e9},  # a, b read; a written
        "addcmul_": {"ms": addcmul * 1e3, "GB_per_s": 16 * numel / addcmul / 1e9},  # a, b, c read; a written
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--small", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()

    big = 1 << 14 if args.small else 1 << 24
    many = (20, 4096) if args.small else (2000, 4096)
    report = {
        "machine": machine_name(),
        "torch": torch.__version__,
        "lrfused": lrfused.__version__,
        "compiled_kernels": lrfused.has_kernels(),
        "date": datetime.date.today().isoformat(),
        "repeats": args.repeats,
        "streaming": bench_streaming(big, args.repeats),
        "cases": [
            bench_case(f"(a) one tensor of {big} fp32", [(big,)], args.repeats),
            bench_case(f"(b) {many[0]} tensors of {many[1]} fp32", [(many[1],)] * many[0], args.repeats),
            bench_case(f"(c) one tensor of {big} fp64", [(big,)], args.repeats, torch.float64),
            bench_case(f"(d) {many[0]} tensors of {many[1]} fp64", [(many[1],)] * many[0], args.repeats, torch.float64),
        ],
        "other_rules": bench_other_rules(
            [
                (f"(a) one tensor of {big} fp32", [(big,)]),
                (f"(b) {many[0]} tensors of {many[1]} fp32", [(many[1],)] * many[0]),
            ],
            args.repeats,
        ),
        "host_overhead": bench_host_overhead(args.repeats, args.small),
        "ops_per_step": ops_per_step(),
    }
    best_stream = max(v["GB_per_s"] for v in report["streaming"].values())
    report["best_streaming_GB_per_s"] = best_stream

    print(f"machine: {report['machine']}; torch {report['torch']}; median of {args.repeats}")
    for name, row in report["streaming"].items():
        print(f"  streaming {name:<9} {row['ms']:9.3f} ms  {row['GB_per_s']:7.2f} GB/s")
    for case in report["cases"]:
        print(f"\n{case['case']}  ({case['params']} params, {case['bytes_per_param']} B/param)")
        print(f"  {'contender':<58} {'ms/step':>9} {'GB/s':>7} {'vs torch fused':>15} {'% of streaming':>15}")
        for name, row in case["results"].items():
            row["fraction_of_best_streaming"] = row["GB_per_s"] / best_stream
            print(
                f"  {name:<58} {row['ms_per_step']:9.3f} {row['GB_per_s']:7.2f} "
                f"{row['ratio_vs_torch_fused']:14.2f}x {100 * row['fraction_of_best_streaming']:14.0f}%"
            )

    print("\nthe other rules + CosineAnnealingLR: lrfused against torch's fastest of the same name")
    print(f"  {'rule':<22} {'case':<34} {'torch':<13} {'lrfused ms':>10} {'torch ms':>9} {'GB/s':>7} {'ratio':>7}")
    for row in report["other_rules"]:
        print(
            f"  {row['rule']:<22} {row['case']:<34} {row['torch']:<13} {row['lrfused_ms']:10.3f} "
            f"{row['torch_ms']:9.3f} {row['lrfused_GB_per_s']:7.2f} {row['ratio_vs_torch']:6.2f}x"
        )

    print("\nhost cost per tensor: a step of N tensors over a step of one tensor of the same size")
    print(f"  {'case':<12} {'contender':<58} {'us (N)':>10} {'us (one)':>10} {'N / one':>8}")
    for row in report["host_overhead"]:
        for name, values in row.items():
            if isinstance(values, dict):
                print(
                    f"  {row['case']:<12} {name:<58} {values['us_many']:10.1f} {values['us_one']:10.1f} "
                    f"{values['many_over_one']:7.2f}x"
                )
    print("\nlrfused ops per optimizer step + scheduler step")
    for row in report["ops_per_step"]:
        print(f"  {row['groups']} group(s) x {'+'.join(row['dtypes']):<18} {len(row['ops'])} op(s): {row['ops']}")

    where = platform.node() or "host"
    path = write_report(report, args.out, "cpu", where, report["date"], "-small" if args.small else "")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
