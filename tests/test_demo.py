"""The demo and the command line, with tiny settings on the CPU."""

import json
import subprocess
import sys

import pytest

from lrfused.demo import DemoConfig, run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "optimizer,schedule",
    [("adamw", "warmup-cosine"), ("sgd", "onecycle"), ("rmsprop", "onecycle"), ("adagrad", "step")],
)
def test_demo_writes_figures_and_results(tmp_path, optimizer, schedule):
    pytest.importorskip("matplotlib")
    config = DemoConfig(
        optimizer=optimizer,
        schedule=schedule,
        steps=12,
        finder_iters=12,
        out=str(tmp_path),
        corpus_bytes=1 << 16,
        width=32,
        layers=1,
        batch_size=4,
        context=16,
        progress=False,
    )
    results = run(config)
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "final_loss",
        "step_ms",
        "step_time_ratio",
        "finder",
        "relative_loss_difference",
        "max_lr_difference",
        "config",
        "device",
    ):
        assert key in saved
    assert saved["final_loss"] == results["final_loss"]
    assert saved["relative_loss_difference"] < 1e-3, "lrfused's final loss equals torch's to optimizer precision"
    assert saved["max_lr_difference"] < 1e-9
    assert saved["finder"]["device_reads"] <= 12 // 10 + 2
    for name in ("lr_finder.png", "learning_rate.png", "loss.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG, name


def test_command_line_help_documents_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "lrfused", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("demo", "find", "bench"):
        assert command in out
    demo_help = subprocess.run(
        [sys.executable, "-m", "lrfused", "demo", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--steps", "--device", "--out", "--schedule", "--optimizer", "--graph"):
        assert option in demo_help


def test_find_subcommand_writes_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [sys.executable, "-m", "lrfused", "find", "--out", str(tmp_path), "--finder-iters", "30", "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "lr_finder.png").read_bytes()[:8] == PNG
