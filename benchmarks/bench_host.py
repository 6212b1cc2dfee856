"""Host cost of a step: what Python and the dispatcher spend around the kernels, measured on
params of one element each (so the kernel's own work is next to nothing), one torch thread.

For each scheduler class, lrfused's optimizer and scheduler against torch's fused AdamW and
torch's scheduler of the same class: microseconds of ``optimizer.step()`` alone, of
``scheduler.step()`` alone, and of both, at 1, 148 (GPT-2-124M's tensor count) and 2000 params;
and lrfused's ``schedule=`` (no scheduler object). Then the host cost per tensor: a step of N
one-element params against a step of one N-element param.

    python benchmarks/bench_host.py [--rounds 9] [--steps 300] [--quick] [--device cuda] [--out benchmarks/results]

With ``--device cuda`` the params (and ReduceLROnPlateau's metric) are on the GPU: the same host
code, timed as the host spends it (each round ends with a synchronize, outside the timings).

Every figure comes from this one run on this machine; ratios are lrfused over torch, both
measured in the same run. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
from report_file import machine_name, write_report

import lrfused
from lrfused import lr_scheduler as fused
from lrfused import schedules

LR = 1e-3
HORIZON = 100_000  # longer than any run here: every step is a device step
COUNTS = (1, 148, 2000)


def warmup_factor(step: int) -> float:
    return min(1.0, (step + 1) / 1000)


def scheduler_cases():
    """name -> (lrfused scheduler factory, torch scheduler factory); None: the optimizer alone."""

    def sequential(module):
        def make(opt):
            warm = module.LinearLR(opt, start_factor=0.1, total_iters=100)
            cosine = module.CosineAnnealingLR(opt, T_max=HORIZON)
            return module.SequentialLR(opt, [warm, cosine], milestones=[100])

        return make

    def one_cycle(module):
        return lambda opt: module.OneCycleLR(opt, max_lr=1e-2, total_steps=HORIZON, cycle_momentum=True)

    return {
        "none": (None, None),
        "CosineAnnealingLR": (
            lambda opt: fused.CosineAnnealingLR(opt, T_max=HORIZON, eta_min=1e-5),
            lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=HORIZON, eta_min=1e-5),
        ),
        "OneCycleLR (beta1 cycling)": (one_cycle(fused), one_cycle(torch.optim.lr_scheduler)),
        "SequentialLR(LinearLR, Cosine)": (sequential(fused), sequential(torch.optim.lr_scheduler)),
        "LambdaLR(horizon=)": (
            lambda opt: fused.LambdaLR(opt, warmup_factor, horizon=HORIZON),
            lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, warmup_factor),
        ),
        "ReduceLROnPlateau (tensor metric)": (
            lambda opt: fused.ReduceLROnPlateau(opt, patience=5),
            lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=5),
        ),
    }


DEVICE = torch.device("cpu")


def make_params(count: int, size: int = 1) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.randn(size, device=DEVICE, requires_grad=True) for _ in range(count)]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def measure(optimizer, scheduler, rounds: int, steps: int, metric: torch.Tensor | None) -> dict:
    """Median over rounds of the mean µs per step of the optimizer step, the scheduler step and
    both (each timed on its own, back to back, in the same loop)."""
    step_scheduler = None
    if scheduler is not None:
        step_scheduler = (lambda: scheduler.step(metric)) if metric is not None else scheduler.step
    clock = time.perf_counter_ns
    for _ in range(max(steps // 4, 10)):  # warm-up: the first steps plan and allocate
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler()
    optimizer_us, scheduler_us, both_us = [], [], []
    for _ in range(rounds):
        spent_optimizer = spent_scheduler = 0
        for _ in range(steps):
            start = clock()
            optimizer.step()
            middle = clock()
            if step_scheduler is not None:
                step_scheduler()
            end = clock()
            spent_optimizer += middle - start
            spent_scheduler += end - middle
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        optimizer_us.append(spent_optimizer / steps / 1e3)
        scheduler_us.append(spent_scheduler / steps / 1e3)
        both_us.append((spent_optimizer + spent_scheduler) / steps / 1e3)
    return {
        "optimizer_us": statistics.median(optimizer_us),
        "scheduler_us": statistics.median(scheduler_us) if scheduler is not None else None,
        "both_us": statistics.median(both_us),
    }


def bench_scheduler(name: str, count: int, rounds: int, steps: int) -> dict:
    make_fused, make_torch = scheduler_cases()[name]
    metric = torch.tensor(1.0, device=DEVICE) if "Plateau" in name else None
    row = {"scheduler": name, "params": count}
    fused_optimizer = lrfused.FusedScheduledAdamW(make_params(count), lr=LR)
    row["lrfused"] = measure(
        fused_optimizer, make_fused(fused_optimizer) if make_fused else None, rounds, steps, metric
    )
    torch_optimizer = torch.optim.AdamW(make_params(count), lr=LR, fused=True)
    row["torch"] = measure(torch_optimizer, make_torch(torch_optimizer) if make_torch else None, rounds, steps, metric)
    for key in ("optimizer_us", "scheduler_us", "both_us"):
        ours, theirs = row["lrfused"][key], row["torch"][key]
        row[key.replace("_us", "_ratio")] = ours / theirs if ours is not None else None
    return row


def bench_schedule_argument(count: int, rounds: int, steps: int) -> dict:
    """``FusedScheduledAdamW(schedule=cosine)``: no scheduler object, against torch fused AdamW +
    its CosineAnnealingLR (the same lrs)."""
    schedule = schedules.cosine_decay(HORIZON, alpha=0.01)
    ours = measure(lrfused.FusedScheduledAdamW(make_params(count), lr=LR, schedule=schedule), None, rounds, steps, None)
    optimizer = torch.optim.AdamW(make_params(count), lr=LR, fused=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=HORIZON, eta_min=1e-5)
    theirs = measure(optimizer, scheduler, rounds, steps, None)
    return {
        "scheduler": "schedule= (cosine) vs torch CosineAnnealingLR",
        "params": count,
        "lrfused": ours,
        "torch": theirs,
        "both_ratio": ours["both_us"] / theirs["both_us"],
    }


def bench_per_tensor(rounds: int, steps: int, quick: bool) -> list[dict]:
    """A step (optimizer + CosineAnnealingLR) of N params against a step of one param with as many
    elements: the ratio is the host's cost per tensor (1.0: none)."""
    cases = [(2000, 1), (200, 4096)] if quick else [(2000, 1), (10000, 1), (2000, 4096)]
    rows = []
    for count, size in cases:
        row = {"case": f"{count} x {size}", "tensors": count, "elements": count * size}
        many_steps = max(steps // max(size // 64, 1), 5)
        for contender, make in (
            ("lrfused", lambda ps: lrfused.FusedScheduledAdamW(ps, lr=LR)),
            ("torch", lambda ps: torch.optim.AdamW(ps, lr=LR, fused=True)),
        ):
            module = fused if contender == "lrfused" else torch.optim.lr_scheduler
            us = {}
            for layout, params in (("many", make_params(count, size)), ("one", make_params(1, count * size))):
                optimizer = make(params)
                scheduler = module.CosineAnnealingLR(optimizer, T_max=HORIZON)
                us[layout] = measure(optimizer, scheduler, rounds, many_steps, None)["both_us"]
            row[contender] = {"us_many": us["many"], "us_one": us["one"], "many_over_one": us["many"] / us["one"]}
        rows.append(row)
    return rows


def print_report(report: dict) -> None:
    print(f"machine: {report['machine']}; torch {report['torch']}; median of {report['rounds']} rounds")
    print("\nhost µs per step, one-element params; ratio = lrfused / torch fused AdamW (same scheduler class)")
    header = (
        f"  {'scheduler':<34} {'params':>6} | {'opt':>7} {'sched':>7} {'both':>7} | "
        f"{'opt':>7} {'sched':>7} {'both':>7} | {'opt':>6} {'sched':>6} {'both':>6}"
    )
    print(f"  {'':<41} | {'lrfused':^23} | {'torch':^23} | {'ratio':^20}")
    print(header)

    def cell(value, width=7, digits=1):
        return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    for row in report["schedulers"]:
        ours, theirs = row["lrfused"], row["torch"]
        print(
            f"  {row['scheduler']:<34} {row['params']:>6} | {cell(ours['optimizer_us'])} "
            f"{cell(ours['scheduler_us'])} {cell(ours['both_us'])} | {cell(theirs['optimizer_us'])} "
            f"{cell(theirs['scheduler_us'])} {cell(theirs['both_us'])} | {cell(row['optimizer_ratio'], 6, 2)} "
            f"{cell(row['scheduler_ratio'], 6, 2)} {cell(row['both_ratio'], 6, 2)}"
        )
    for row in report["schedule_argument"]:
        print(
            f"  {'schedule= vs torch Cosine':<34} {row['params']:>6} | {'':>7} {'':>7} "
            f"{cell(row['lrfused']['both_us'])} | {'':>7} {'':>7} {cell(row['torch']['both_us'])} | "
            f"{'':>6} {'':>6} {cell(row['both_ratio'], 6, 2)}"
        )
    print("\nhost cost per tensor: optimizer + CosineAnnealingLR step of N params over one param of the same size")
    for row in report["per_tensor"]:
        for contender in ("lrfused", "torch"):
            values = row[contender]
            print(
                f"  {row['case']:<12} {contender:<8} {values['us_many']:10.1f} µs {values['us_one']:10.1f} µs "
                f"{values['many_over_one']:7.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=300, help="steps per round (fewer for 2000 params)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the params are (cpu or cuda)")
    parser.add_argument("--quick", action="store_true", help="few steps and the small cases only: a smoke test")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    rounds, steps = (3, 20) if args.quick else (args.rounds, args.steps)
    counts = (1, 148) if args.quick else COUNTS

    report = {
        "machine": machine_name() if DEVICE.type == "cpu" else f"{machine_name()}; {torch.cuda.get_device_name()}",
        "device": str(DEVICE),
        "torch": torch.__version__,
        "lrfused": lrfused.__version__,
        "compiled_kernels": lrfused.has_kernels(),
        "date": datetime.date.today().isoformat(),
        "rounds": rounds,
        "steps_per_round": steps,
        "schedulers": [
            bench_scheduler(name, count, rounds, steps if count < 1000 else max(steps // 5, 5))
            for name in scheduler_cases()
            for count in counts
        ],
        "schedule_argument": [bench_schedule_argument(count, rounds, steps) for count in counts],
        "per_tensor": bench_per_tensor(rounds, steps, args.quick),
    }
    print_report(report)

    where = platform.node() or "host"
    if DEVICE.type == "cuda":
        where = torch.cuda.get_device_name().replace(" ", "-")
    path = write_report(report, args.out, "host", where, report["date"], "-quick" if args.quick else "")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
