"""LRFinder against a straightforward per-iteration reference (pytorch-lr-finder's algorithm with
a host read every iteration), on the same seed."""

import math
import sys

import numpy as np
import pytest
import torch

import lrfused
from lrfused import LRFinder


def make_problem(seed=0, n=512):
    torch.manual_seed(seed)
    x = torch.randn(n, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(n, 1)
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    return model, loader


def reference_range_test(
    model, optimizer, loader, start_lr, end_lr, num_iter, smooth_f, diverge_th, accumulation_steps=1
):
    """pytorch-lr-finder's loop, reading the loss on the host every iteration."""
    history = {"lr": [], "loss": []}
    best = None
    batches = iter(loader)

    def next_batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    for iteration in range(num_iter):
        lr = start_lr * (end_lr / start_lr) ** (iteration / (num_iter - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        total = 0.0
        for _ in range(accumulation_steps):
            x, y = next_batch()
            loss = torch.nn.functional.mse_loss(model(x), y) / accumulation_steps
            loss.backward()
            total += loss.item()
        optimizer.step()
        loss = total
        history["lr"].append(lr)
        if iteration == 0:
            best = loss
        else:
            loss = smooth_f * loss + (1 - smooth_f) * history["loss"][-1]
            best = min(best, loss)
        history["loss"].append(loss)
        if loss > diverge_th * best:
            break
    return history


class ReadCounter:
    """Counts every way Python code can read a tensor's value on the host, except the reads that
    torch's DataLoader makes of its own CPU seed when it starts an epoch (any loop makes those)."""

    NAMES = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(self_, *args, _original=original, **kwargs):
                caller = sys._getframe(1).f_globals.get("__name__", "")
                if not caller.startswith("torch.utils.data"):
                    self.count += 1
                return _original(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("check_every", [1, 7, 100])
@pytest.mark.parametrize("end_lr", [10.0, 0.05])  # diverges, and does not
def test_matches_per_iteration_reference(check_every, end_lr, monkeypatch):
    num_iter = 60
    model, loader = make_problem()
    reference_model, _ = make_problem()
    reference_model.load_state_dict(model.state_dict())
    optimizer = lrfused.FusedScheduledAdam(model.parameters(), lr=1e-4)
    reference_optimizer = lrfused.FusedScheduledAdam(reference_model.parameters(), lr=1e-4)

    expected = reference_range_test(reference_model, reference_optimizer, loader, 1e-4, end_lr, num_iter, 0.05, 5)
    finder = LRFinder(model, optimizer, torch.nn.functional.mse_loss)
    counter = ReadCounter(monkeypatch)
    finder.range_test(loader, start_lr=1e-4, end_lr=end_lr, num_iter=num_iter, check_every=check_every, progress=False)
    monkeypatch.undo()

    assert counter.count <= math.ceil(num_iter / check_every) + 1
    assert finder.reads <= math.ceil(num_iter / check_every) + 1
    assert len(finder.history["loss"]) == len(expected["loss"]), "same stop point"
    assert finder.history["lr"] == pytest.approx(expected["lr"], rel=1e-12)
    assert finder.history["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    if len(expected["loss"]) > 20:
        for method in ("steep", "valley", "minimum"):
            assert finder.suggestion(method) == pytest.approx(_suggest(expected, method), rel=1e-12)


def _suggest(history, method, skip_start=10, skip_end=5):
    lrs = history["lr"][skip_start : len(history["lr"]) - skip_end]
    losses = history["loss"][skip_start : len(history["loss"]) - skip_end]
    if method == "steep":
        return lrs[int(np.gradient(np.array(losses)).argmin())]
    if method == "minimum":
        return lrs[int(np.argmin(losses))] / 10
    return lrs[lrfused.finder._valley_index(losses)]


def test_model_and_optimizer_restored_bit_identical():
    model, loader = make_problem()
    optimizer = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-3)
    scheduler = lrfused.lr_scheduler.StepLR(optimizer, step_size=5)
    for x, y in list(loader)[:3]:  # some optimizer state to restore
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = {(i, k): v.clone() for i, p in enumerate(model.parameters()) for k, v in optimizer.state[p].items()}
    LRFinder(model, optimizer, torch.nn.functional.mse_loss, cache="disk").range_test(
        loader, end_lr=1.0, num_iter=30, progress=False
    )
    for p, q in zip(model.parameters(), params_before):
        assert torch.equal(p, q)
    state_after = {(i, k): v for i, p in enumerate(model.parameters()) for k, v in optimizer.state[p].items()}
    assert state_after.keys() == state_before.keys() and len(state_before) == 3 * len(params_before)
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)
    # The scheduler drives the optimizer again, from where it was.
    x, y = next(iter(loader))
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == [optimizer.param_groups[0]["lr"]] == [pytest.approx(1e-3)]


def test_torch_optimizer_and_custom_train_step_with_dict_batches():
    model, loader = make_problem()
    dict_batches = [{"x": x, "y": y} for x, y in loader]

    class WithLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, y):
            return torch.nn.functional.mse_loss(self.inner(x), y)

    wrapped = WithLoss(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=1e-3, momentum=0.9)
    finder = LRFinder(wrapped, optimizer)
    history = finder.range_test(
        dict_batches,
        end_lr=10,
        num_iter=50,
        train_step=lambda m, b: m(b["x"], b["y"]),
        accumulation_steps=2,
        progress=False,
    )
    assert 2 <= len(history["loss"]) <= 50
    assert history["lr"][0] == pytest.approx(1e-3)
    assert optimizer.param_groups[0]["lr"] == 1e-3, "restored"


def test_val_loader_and_amp_bf16():
    model, loader = make_problem()
    val = list(loader)[:2]
    optimizer = lrfused.FusedScheduledAdam(model.parameters(), lr=1e-4)
    finder = LRFinder(model, optimizer, torch.nn.functional.mse_loss)
    history = finder.range_test(loader, val_loader=val, end_lr=1.0, num_iter=20, amp=torch.bfloat16, progress=False)
    assert len(history["loss"]) >= 2 and all(math.isfinite(v) for v in history["loss"])


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model, loader = make_problem()
    finder = LRFinder(model, lrfused.FusedScheduledAdam(model.parameters(), lr=1e-4), torch.nn.functional.mse_loss)
    finder.range_test(loader, end_lr=10, num_iter=60, progress=False)
    path = tmp_path / "finder.png"
    finder.plot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments():
    model, loader = make_problem()
    finder = LRFinder(model, lrfused.FusedScheduledAdam(model.parameters()), torch.nn.functional.mse_loss)
    with pytest.raises(ValueError, match="step_mode must be 'exp' or 'linear', got 'cos'"):
        finder.range_test(loader, step_mode="cos")
    with pytest.raises(ValueError, match="check_every must be a positive int, got 0"):
        finder.range_test(loader, check_every=0)
    with pytest.raises(ValueError, match="too few to suggest"):
        finder.suggestion()


def _train(model, optimizer, scheduler, batches):
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("with_scheduler", [False, True])
@pytest.mark.parametrize("cache", ["memory", "disk"])
@pytest.mark.parametrize("trained_before", [0, 3])
def test_a_range_test_then_training_is_training_alone(amsgrad, with_scheduler, cache, trained_before):
    # The finder restores the optimizer through its own load_state_dict: afterwards every step
    # updates the tensors in optimizer.state (not the range test's), bit for bit as if no range
    # test had run, and the step counters count the training steps only.
    def run(range_test_first):
        model, loader = make_problem(seed=7)
        optimizer = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-3, amsgrad=amsgrad)
        scheduler = lrfused.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8) if with_scheduler else None
        batches = list(loader)
        _train(model, optimizer, scheduler, batches[:trained_before])
        if range_test_first:
            LRFinder(model, optimizer, torch.nn.functional.mse_loss, cache=cache).range_test(
                batches[8:], end_lr=1.0, num_iter=5, progress=False
            )
        _train(model, optimizer, scheduler, batches[trained_before : trained_before + 6])
        return model, optimizer

    model, optimizer = run(range_test_first=True)
    alone_model, alone_optimizer = run(range_test_first=False)
    for p, q in zip(model.parameters(), alone_model.parameters()):
        assert torch.equal(p, q)
        state, alone = optimizer.state[p], alone_optimizer.state[q]
        assert state.keys() == alone.keys()
        assert all(torch.equal(state[key], alone[key]) for key in state), p.shape
        assert int(state["step"]) == trained_before + 6
    saved = optimizer.state_dict()["state"]
    assert all(int(entry["step"]) == trained_before + 6 for entry in saved.values())


# --- hostile input -----------------------------------------------------------------------------------


def _finder_run(bad_at, bad_value, num_iter=40):
    torch.manual_seed(8)
    model = torch.nn.Linear(4, 1)
    opt = lrfused.FusedScheduledAdam(model.parameters(), lr=1e-4)
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]
    calls = []

    def train_step(m, batch):
        calls.append(1)
        loss = torch.nn.functional.mse_loss(m(batch[0]), batch[1])
        return loss * bad_value if len(calls) - 1 >= bad_at else loss

    finder = LRFinder(model, opt)
    history = finder.range_test(
        data, end_lr=1.0, num_iter=num_iter, train_step=train_step, progress=False, check_every=5
    )
    return finder, history, len(calls)


@pytest.mark.hostile
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("bad_at", [0, 1, 13, 39])
def test_a_nan_or_infinite_loss_is_divergence(bad_value, bad_at):
    finder, history, calls = _finder_run(bad_at, bad_value)
    assert len(history["loss"]) == bad_at and all(math.isfinite(x) for x in history["loss"])
    assert calls <= min(40, (bad_at // 5 + 1) * 5)  # stopped at the first check after it
    if bad_at < 3:
        with pytest.raises(ValueError, match="too few"):
            finder.suggestion(skip_start=0, skip_end=0)
    else:
        assert math.isfinite(finder.suggestion(skip_start=0, skip_end=0))


@pytest.mark.hostile
@pytest.mark.parametrize("optimizer", ["lrfused", "torch"])
@pytest.mark.parametrize("lr, start_lr, end_lr", [(2.0, None, 1.0), (1.0, None, 1.0), (1e-3, 0.5, 0.1)])
def test_a_ramp_that_does_not_go_up_is_refused(optimizer, lr, start_lr, end_lr):
    model = torch.nn.Linear(2, 1)
    opt = (lrfused.FusedScheduledAdam if optimizer == "lrfused" else torch.optim.SGD)(model.parameters(), lr=lr)
    finder = LRFinder(model, opt, torch.nn.functional.mse_loss)
    with pytest.raises(ValueError, match="end_lr"):
        finder.range_test(
            [(torch.randn(4, 2), torch.randn(4, 1))], start_lr=start_lr, end_lr=end_lr, num_iter=5, progress=False
        )
    assert opt.param_groups[0]["lr"] == lr
