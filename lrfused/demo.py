"""The demo: a small character-level transformer language model trained on the Python standard
library's own source code (on every machine, no download), side by side with stock PyTorch.

It runs the LR range test, then trains twice from the same seed and the same batches: once with
``torch.optim.AdamW(fused=True)`` and a torch scheduler, once with ``lrfused.FusedScheduledAdamW``
and the same-named ``lrfused.lr_scheduler`` class, and compares the final losses and the time of
the optimizer+scheduler step. ``--optimizer sgd|rmsprop|adagrad`` runs lrfused's optimizer of that
name against torch's fastest implementation of it (fused, or foreach for RMSprop).
``python -m lrfused demo --help`` lists the options.
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import lrfused
from lrfused import lr_scheduler as fused_schedulers

SCHEDULES = ("warmup-cosine", "onecycle", "step")


# Each optimizer of the demo: lrfused's, and torch's of the same name in its fastest implementation
# (fused where torch has one, else foreach), with the same hyperparameters.
OPTIMIZERS = {
    "adamw": (
        lambda params, lr: lrfused.FusedScheduledAdamW(params, lr=lr, weight_decay=0.1),
        lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.1, fused=True),
        "AdamW(fused)",
    ),
    "sgd": (
        lambda params, lr: lrfused.FusedScheduledSGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4),
        lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4, fused=True),
        "SGD(fused)",
    ),
    "rmsprop": (
        lambda params, lr: lrfused.FusedScheduledRMSprop(params, lr=lr, momentum=0.9),
        lambda params, lr: torch.optim.RMSprop(params, lr=lr, momentum=0.9, foreach=True),
        "RMSprop(foreach)",
    ),
    "adagrad": (
        lambda params, lr: lrfused.FusedScheduledAdagrad(params, lr=lr),
        lambda params, lr: torch.optim.Adagrad(params, lr=lr, fused=True),
        "Adagrad(fused)",
    ),
}


@dataclass
class DemoConfig:
    steps: int = 300
    device: str = "auto"
    out: str = "./lrfused-demo"
    schedule: str = "warmup-cosine"
    optimizer: str = "adamw"
    finder_iters: int = 80
    batch_size: int = 32
    context: int = 64
    width: int = 128
    layers: int = 2
    heads: int = 4
    corpus_bytes: int = 1 << 20
    seed: int = 0
    graph: bool = False
    progress: bool = True


# --- data ------------------------------------------------------------------------------------------


def stdlib_corpus(max_bytes: int) -> torch.Tensor:
    """The bytes of the standard library's .py files, in a fixed order, as a uint8 tensor."""
    root = sysconfig.get_paths()["stdlib"]
    chunks, total = [], 0
    for path in sorted(glob.glob(os.path.join(root, "*.py"))):
        with open(path, "rb") as handle:
            data = handle.read()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    text = b"".join(chunks)[:max_bytes]
    if len(text) < 10_000:
        raise RuntimeError(f"found only {len(text)} bytes of Python source under {root}")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


class Batches:
    """Random windows of the corpus, the same sequence for every run with the same seed."""

    def __init__(self, corpus: torch.Tensor, batch_size: int, context: int, seed: int, device: torch.device):
        self.corpus, self.batch_size, self.context, self.device = corpus, batch_size, context, device
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self):
        starts = torch.randint(0, len(self.corpus) - self.context - 1, (self.batch_size,), generator=self.generator)
        windows = torch.stack([self.corpus[s : s + self.context + 1] for s in starts.tolist()])
        return windows[:, :-1].to(self.device), windows[:, 1:].to(self.device)


# --- model -----------------------------------------------------------------------------------------


class Block(torch.nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class CharTransformer(torch.nn.Module):
    """A byte-level GPT: 256 symbols, learned positions, pre-norm blocks."""

    def __init__(self, context: int, width: int, layers: int, heads: int):
        super().__init__()
        self.embed = torch.nn.Embedding(256, width)
        self.position = torch.nn.Parameter(torch.zeros(context, width))
        self.blocks = torch.nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, 256)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def language_model_loss(model, batch):
    inputs, targets = batch
    return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())


def build_model(config: DemoConfig, device: torch.device) -> CharTransformer:
    torch.manual_seed(config.seed)
    return CharTransformer(config.context, config.width, config.layers, config.heads).to(device)


# --- schedules -------------------------------------------------------------------------------------


def make_scheduler(module, optimizer, config: DemoConfig, peak_lr: float):
    """The same schedule from torch's module or lrfused's: the classes have the same names."""
    steps = config.steps
    warmup = max(1, steps // 10)
    if config.schedule == "warmup-cosine":
        return module.SequentialLR(
            optimizer,
            [
                module.LinearLR(optimizer, start_factor=0.01, total_iters=warmup),
                module.CosineAnnealingLR(optimizer, T_max=steps - warmup, eta_min=peak_lr / 10),
            ],
            milestones=[warmup],
        )
    if config.schedule == "onecycle":
        # The momentum cycles with the lr where the optimizer has one (Adagrad has none).
        cycles = config.optimizer != "adagrad"
        return module.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=steps + 1, cycle_momentum=cycles)
    return module.StepLR(optimizer, step_size=max(1, steps // 3), gamma=0.3)


# --- the runs --------------------------------------------------------------------------------------


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA GPU is available")
    return device


def train(config: DemoConfig, device: torch.device, peak_lr: float, use_lrfused: bool, corpus: torch.Tensor):
    """Trains from the fixed seed; returns the loss and lr per step and the step times."""
    model = build_model(config, device)
    ours, theirs, _ = OPTIMIZERS[config.optimizer]
    if use_lrfused:
        optimizer = ours(model.parameters(), peak_lr)
        scheduler = make_scheduler(fused_schedulers, optimizer, config, peak_lr)
    else:
        optimizer = theirs(model.parameters(), peak_lr)
        scheduler = make_scheduler(torch.optim.lr_scheduler, optimizer, config, peak_lr)
    batches = Batches(corpus, config.batch_size, config.context, config.seed + 1, device)
    losses = torch.zeros(config.steps, device=device)
    lrs, step_seconds = [], []
    bar = _bar(config, "lrfused" if use_lrfused else "torch  ")
    for step in range(config.steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.zero_grad(set_to_none=True)
        loss = language_model_loss(model, next(batches))
        loss.backward()
        losses[step] = loss.detach()
        _sync(device)
        start = time.perf_counter()
        optimizer.step()
        scheduler.step()
        _sync(device)
        step_seconds.append(time.perf_counter() - start)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {
        "loss": losses.tolist(),
        "lr": lrs,
        "step_seconds": step_seconds,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
    }


def graph_step_ms(config: DemoConfig, device: torch.device, peak_lr: float, corpus: torch.Tensor) -> float:
    """ms per optimizer+scheduler step of lrfused replayed from a captured CUDA graph."""
    model = build_model(config, device)
    optimizer = OPTIMIZERS[config.optimizer][0](model.parameters(), peak_lr)
    scheduler = make_scheduler(fused_schedulers, optimizer, config, peak_lr)
    batch = next(Batches(corpus, config.batch_size, config.context, config.seed + 1, device))
    language_model_loss(model, batch).backward()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.step()
            scheduler.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        optimizer.step()
        scheduler.step()
    replays = min(50, config.steps)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def run_finder(config: DemoConfig, device: torch.device, corpus: torch.Tensor):
    model = build_model(config, device)
    optimizer = OPTIMIZERS[config.optimizer][0](model.parameters(), 1e-5)
    finder = lrfused.LRFinder(model, optimizer)
    batches = Batches(corpus, config.batch_size, config.context, config.seed + 2, device)
    finder.range_test(
        batches,
        start_lr=1e-5,
        end_lr=1.0,
        num_iter=config.finder_iters,
        check_every=10,
        train_step=language_model_loss,
        progress=config.progress,
    )
    skip_start, skip_end = min(10, len(finder.history["lr"]) // 4), min(5, len(finder.history["lr"]) // 8)
    try:
        suggested = finder.suggestion("valley", skip_start, skip_end)
    except ValueError:
        suggested = 1e-3  # too short a history to suggest anything (tiny settings)
    return finder, suggested, (skip_start, skip_end)


def run(config: DemoConfig) -> dict:
    if config.schedule not in SCHEDULES:
        raise SystemExit(f"--schedule must be one of {', '.join(SCHEDULES)}, got {config.schedule!r}")
    if config.optimizer not in OPTIMIZERS:
        raise SystemExit(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if config.steps < 3:
        raise SystemExit(f"--steps must be at least 3, got {config.steps}")
    device = pick_device(config.device)
    os.makedirs(config.out, exist_ok=True)
    corpus = stdlib_corpus(config.corpus_bytes)
    print(
        f"lrfused {lrfused.__version__} demo on {device}: a {config.layers}-layer character transformer on "
        f"{len(corpus):,} bytes of the Python standard library's source; {config.steps} steps, "
        f"schedule {config.schedule}, optimizer {config.optimizer}"
    )

    finder, suggested, skips = run_finder(config, device, corpus)
    peak_lr = min(max(suggested, 1e-4), 1e-2)
    print(
        f"LR finder: {len(finder.history['lr'])} iterations, {finder.reads} reads from the device; "
        f"suggested lr (valley) {suggested:.2e}; training with peak lr {peak_lr:.2e}"
    )

    torch_run = train(config, device, peak_lr, use_lrfused=False, corpus=corpus)
    fused_run = train(config, device, peak_lr, use_lrfused=True, corpus=corpus)

    def tail_mean(values):
        tail = values[-max(1, len(values) // 10) :]
        return sum(tail) / len(tail)

    def median_ms(seconds):
        ordered = sorted(seconds[len(seconds) // 10 :] or seconds)  # without the first steps' warm-up
        return 1e3 * ordered[len(ordered) // 2]

    results = {
        "config": asdict(config),
        "device": str(device),
        "torch": torch.__version__,
        "lrfused": lrfused.__version__,
        "finder": {
            "suggested_lr": suggested,
            "peak_lr_used": peak_lr,
            "iterations": len(finder.history["lr"]),
            "device_reads": finder.reads,
        },
        "final_loss": {"torch": torch_run["loss"][-1], "lrfused": fused_run["loss"][-1]},
        "final_loss_mean_last_10pct": {"torch": tail_mean(torch_run["loss"]), "lrfused": tail_mean(fused_run["loss"])},
        "max_lr_difference": max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(fused_run["lr"], torch_run["lr"])),
        "step_ms": {"torch": median_ms(torch_run["step_seconds"]), "lrfused": median_ms(fused_run["step_seconds"])},
    }
    results["relative_loss_difference"] = (
        abs(results["final_loss"]["lrfused"] - results["final_loss"]["torch"]) / results["final_loss"]["torch"]
    )
    results["step_time_ratio"] = results["step_ms"]["lrfused"] / results["step_ms"]["torch"]
    if config.graph and device.type == "cuda":
        results["step_ms"]["lrfused_cuda_graph"] = graph_step_ms(config, device, peak_lr, corpus)

    print()
    torch_label = f"torch {OPTIMIZERS[config.optimizer][2]} + torch"
    print(f"{'':32}{torch_label:>28}{'lrfused + lrfused':>22}")
    print(f"{'final loss':32}{results['final_loss']['torch']:>28.6f}{results['final_loss']['lrfused']:>22.6f}")
    print(
        f"{'mean loss, last 10% of steps':32}{results['final_loss_mean_last_10pct']['torch']:>28.6f}"
        f"{results['final_loss_mean_last_10pct']['lrfused']:>22.6f}"
    )
    print(
        f"{'optimizer+scheduler step (ms)':32}{results['step_ms']['torch']:>28.3f}"
        f"{results['step_ms']['lrfused']:>22.3f}"
    )
    print(
        f"lrfused / torch step time: {results['step_time_ratio']:.2f}x; final losses differ by "
        f"{results['relative_loss_difference']:.2e} (relative); learning rates by at most "
        f"{results['max_lr_difference']:.1e}"
    )
    if "lrfused_cuda_graph" in results["step_ms"]:
        print(f"lrfused step replayed from a CUDA graph: {results['step_ms']['lrfused_cuda_graph']:.3f} ms")

    figures = write_figures(config.out, finder, skips, torch_run, fused_run, config.optimizer)
    results["figures"] = figures
    with open(os.path.join(config.out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\nwrote {', '.join(figures)} and results.json to {config.out}")
    return results


def write_figures(out: str, finder, skips, torch_run, fused_run, optimizer: str = "adamw") -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib)")
        return []
    written = []
    try:
        finder.plot(path=os.path.join(out, "lr_finder.png"), skip_start=skips[0], skip_end=skips[1], method="valley")
        written.append("lr_finder.png")
    except ValueError as error:
        print(f"no LR-finder figure: {error}")
    for name, key, ylabel in (
        ("learning_rate.png", "lr", "learning rate"),
        ("loss.png", "loss", "training loss (nats/byte)"),
    ):
        figure, ax = plt.subplots(figsize=(6, 3.5))
        ours, theirs = type(fused_run["optimizer"]).__name__, OPTIMIZERS[optimizer][2]
        ax.plot(torch_run[key], label=f"torch {theirs} + torch scheduler", linewidth=3, alpha=0.5)
        ax.plot(fused_run[key], label=f"lrfused {ours} + lrfused scheduler", linestyle="--")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend()
        figure.savefig(os.path.join(out, name), dpi=120, bbox_inches="tight")
        plt.close(figure)
        written.append(name)
    return written


def find(config: DemoConfig) -> None:
    """``python -m lrfused find``: the LR range test on the demo model, with its plot."""
    device = pick_device(config.device)
    os.makedirs(config.out, exist_ok=True)
    corpus = stdlib_corpus(config.corpus_bytes)
    finder, suggested, skips = run_finder(config, device, corpus)
    print(
        f"{len(finder.history['lr'])} iterations, {finder.reads} device reads; suggested lr (valley): "
        f"{suggested:.3e}; steep: {finder.suggestion('steep', *skips):.3e}"
    )
    path = os.path.join(config.out, "lr_finder.png")
    try:
        finder.plot(path=path, skip_start=skips[0], skip_end=skips[1], method="valley")
        print(f"wrote {path}")
    except ImportError as error:
        print(error)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bar(config: DemoConfig, label: str):
    if not config.progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=config.steps, desc=f"training with {label}", leave=False)


__all__ = ["DemoConfig", "run", "find", "CharTransformer", "stdlib_corpus"]
