"""What torch.compile and the dispatcher see in an optimizer + scheduler step: graphs compiled
over a run of compiled steps (stock torch AdamW and lrfused, each with its own schedulers), and
lrfused ops per step by param groups and dtypes.

    python benchmarks/bench_compile.py [--steps 12] [--out benchmarks/results]

Counts, not timings: the same on any machine for a given torch version. Prints two tables and
writes JSON. The README's statements about recompiles and launches quote this script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform

import torch
import torch._dynamo

import lrfused
from lrfused import lr_scheduler as fused_schedulers

BACKEND = "aot_eager"  # what dynamo traces does not depend on the backend; aot_eager compiles fastest


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def count_graphs(build, steps: int) -> dict:
    """Compiles ``opt.step`` (a bound method, as torch's tutorial does), runs ``steps`` training steps
    with the scheduler stepped eagerly after each, and returns the graphs dynamo compiled."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = make_model()
    opt, scheduler = build(model)
    compiled_step = torch.compile(opt.step, backend=BACKEND)
    torch.manual_seed(1)
    with torch._dynamo.config.patch(recompile_limit=10 * steps):
        for _ in range(steps):
            x, y = torch.randn(32, 8), torch.randn(32, 1)
            torch.nn.functional.mse_loss(model(x), y).backward()
            compiled_step()
            opt.zero_grad()
            scheduler.step()
    return {"graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]), "steps": steps}


def graph_cases():
    def torch_adamw(model, **kwargs):
        return torch.optim.AdamW(model.parameters(), lr=1e-2, **kwargs)

    def fused_adamw(model):
        return lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-2)

    def cosine(schedulers):
        return lambda opt: schedulers.CosineAnnealingLR(opt, T_max=20)

    def one_cycle(schedulers):
        return lambda opt: schedulers.OneCycleLR(opt, max_lr=1e-2, total_steps=40)  # cycles beta1 too

    torch_schedulers = torch.optim.lr_scheduler
    return {
        "torch AdamW (for-loop), lr written by hand": lambda m: _with(torch_adamw(m), HandWrittenCosine),
        "lrfused AdamW, lr written by hand": lambda m: _with(fused_adamw(m), HandWrittenCosine),
        "torch AdamW (for-loop) + CosineAnnealingLR": lambda m: _with(torch_adamw(m), cosine(torch_schedulers)),
        "torch AdamW(foreach=True) + CosineAnnealingLR": lambda m: _with(
            torch_adamw(m, foreach=True), cosine(torch_schedulers)
        ),
        "torch AdamW (for-loop) + OneCycleLR": lambda m: _with(torch_adamw(m), one_cycle(torch_schedulers)),
        "lrfused AdamW + CosineAnnealingLR": lambda m: _with(fused_adamw(m), cosine(fused_schedulers)),
        "lrfused AdamW + OneCycleLR": lambda m: _with(fused_adamw(m), one_cycle(fused_schedulers)),
    }


class HandWrittenCosine:
    """nanoGPT's way, no scheduler object: ``group["lr"] = lr`` for every group after each step."""

    def __init__(self, opt, steps: int = 20):
        self.opt, self.steps, self.t = opt, steps, 0

    def step(self) -> None:
        self.t += 1
        for group in self.opt.param_groups:
            group["lr"] = 1e-2 * 0.5 * (1 + math.cos(math.pi * self.t / self.steps))


def _with(opt, make_scheduler):
    return opt, make_scheduler(opt)


def count_ops(groups: int, dtypes: tuple[torch.dtype, ...]) -> dict:
    """lrfused ops in one steady-state ``optimizer.step()`` + ``scheduler.step()`` on the CPU."""
    params = [[torch.zeros(64, dtype=dtype, requires_grad=True) for dtype in dtypes] for _ in range(groups)]
    opt = lrfused.FusedScheduledAdamW([{"params": group} for group in params], lr=1e-2)
    scheduler = fused_schedulers.CosineAnnealingLR(opt, T_max=100)

    def step():
        for group in params:
            for p in group:
                p.grad = torch.ones_like(p)
        opt.step()
        scheduler.step()

    step()  # the first step builds the plan and the states
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step()
    names = [event.name for event in profiler.events()]
    # The eager step runs table_step_ (or adam_step_), whichever it is, one per device.
    step_ops = sum(names.count(f"lrfused::{op}") for op in ("table_step_", "adam_step_"))
    return {
        "groups": groups,
        "dtypes": [str(d).removeprefix("torch.") for d in dtypes],
        "step_ops": step_ops,
        "advance_lr_": names.count("lrfused::advance_lr_"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    graphs = {name: count_graphs(build, args.steps) for name, build in graph_cases().items()}
    print(
        f"\nGraphs compiled by torch.compile(opt.step) over {args.steps} steps, the scheduler stepped "
        f"after each (torch {torch.__version__}, backend {BACKEND}):"
    )
    print(f"{'optimizer + scheduler':<48} {'graphs':>6}")
    for name, result in graphs.items():
        print(f"{name:<48} {result['graphs']:>6}")

    ops = [
        count_ops(g, d) for g, d in ((1, (torch.float32,)), (2, (torch.float32,)), (2, (torch.float32, torch.bfloat16)))
    ]
    print(
        "\nlrfused ops in one optimizer.step() + scheduler.step() (CosineAnnealingLR, CPU; on CUDA each is a launch):"
    )
    print(f"{'groups':>6} {'dtypes':<20} {'step op':>8} {'advance_lr_':>11} {'total':>6}")
    for row in ops:
        print(
            f"{row['groups']:>6} {'+'.join(row['dtypes']):<20} {row['step_ops']:>8} {row['advance_lr_']:>11} "
            f"{row['step_ops'] + row['advance_lr_']:>6}"
        )

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"compile-counts-{stamp}.json")
    with open(path, "w") as out:
        json.dump(
            {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "backend": BACKEND,
                "steps": args.steps,
                "graphs": graphs,
                "ops_per_step": ops,
            },
            out,
            indent=2,
        )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
