"""``python -m lrfused``: the command line of lrfused.

Subcommands:
  demo    trains a character-level transformer on the Python standard library's source with
          torch.optim.AdamW(fused=True) + a torch scheduler and with lrfused, after an LR range
          test; prints a comparison and writes figures and results.json
  find    the LR range test on the demo model, with its plot
  bench   the CPU benchmark, and the CUDA one where a GPU is present
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

import torch


def _benchmark_script(name: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "benchmarks", name)
    if not os.path.exists(path):
        raise SystemExit(f"{name} ships with the source tree, not the wheel; run it from a clone of lrfused ({path})")
    return path


def _run_script(path: str, arguments: list[str]) -> None:
    saved = sys.argv
    sys.argv = [path, *arguments]
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved


def bench(args: argparse.Namespace) -> None:
    extra = ["--repeats", str(args.repeats)] + (["--out", args.out] if args.out else [])
    _run_script(_benchmark_script("bench_cpu.py"), extra)
    if torch.cuda.is_available():
        _run_script(_benchmark_script("bench_cuda.py"), ["--out", args.out] if args.out else [])
    else:
        print("\nno CUDA GPU here: the CUDA benchmark (benchmarks/bench_cuda.py) was not run")


def _demo_config(args: argparse.Namespace):
    from .demo import DemoConfig

    return DemoConfig(
        steps=args.steps,
        device=args.device,
        out=args.out,
        schedule=args.schedule,
        optimizer=args.optimizer,
        finder_iters=args.finder_iters,
        graph=getattr(args, "graph", False),
        progress=not args.no_progress,
    )


def demo(args: argparse.Namespace) -> None:
    from .demo import run

    run(_demo_config(args))


def find(args: argparse.Namespace) -> None:
    from .demo import find as run_find

    run_find(_demo_config(args))


def _demo_options(parser: argparse.ArgumentParser) -> None:
    from .demo import OPTIMIZERS, SCHEDULES, DemoConfig

    defaults = DemoConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps of each run")
    parser.add_argument("--device", default=defaults.device, help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--out", default=defaults.out, help="folder for the figures and results.json")
    parser.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    parser.add_argument(
        "--optimizer",
        default=defaults.optimizer,
        choices=tuple(OPTIMIZERS),
        help="the optimizer of both runs: lrfused's against torch's fastest of the same name",
    )
    parser.add_argument(
        "--finder-iters", type=int, default=defaults.finder_iters, help="iterations of the LR range test"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lrfused", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="train side by side with stock PyTorch (see above)")
    _demo_options(demo_parser)
    demo_parser.add_argument("--graph", action="store_true", help="on CUDA, also time the step from a CUDA graph")
    demo_parser.set_defaults(run=demo)
    find_parser = commands.add_parser("find", help="the LR range test on the demo model")
    _demo_options(find_parser)
    find_parser.set_defaults(run=find)
    bench_parser = commands.add_parser("bench", help="run the benchmarks (CPU, and CUDA where present)")
    bench_parser.add_argument("--repeats", type=int, default=30)
    bench_parser.add_argument("--out", default=None, help="folder for the JSON results (default benchmarks/results)")
    bench_parser.set_defaults(run=bench)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
