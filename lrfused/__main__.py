"""``python -m lrfused``: the command line of lrfused.

Subcommands:
  demo    the first minute with lrfused (for now: the CPU benchmark, quick settings)
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


def demo(args: argparse.Namespace) -> None:
    print("lrfused demo: FusedScheduledAdam + an in-kernel CosineAnnealingLR against torch.optim.Adam\n")
    _run_script(_benchmark_script("bench_cpu.py"), ["--repeats", "10", "--out", args.out])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrfused", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="run the demo")
    demo_parser.add_argument("--out", default="./lrfused-demo", help="where results are written")
    demo_parser.set_defaults(run=demo)
    bench_parser = commands.add_parser("bench", help="run the benchmarks (CPU, and CUDA where present)")
    bench_parser.add_argument("--repeats", type=int, default=30)
    bench_parser.add_argument("--out", default=None, help="folder for the JSON results (default benchmarks/results)")
    bench_parser.set_defaults(run=bench)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
