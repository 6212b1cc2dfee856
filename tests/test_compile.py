"""torch.compile: a compiled training step with an lrfused scheduler changing the lr every step
does not recompile, and matches eager; stock torch with a float lr recompiles every step."""

import pytest
import torch
import torch._dynamo

import lrfused
from lrfused import lr_scheduler as L
from conftest import max_relative_error

BACKENDS = ["aot_eager", "inductor"]


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def data(steps):
    torch.manual_seed(1)
    return [(torch.randn(32, 8), torch.randn(32, 1)) for _ in range(steps)]


def frames_compiled():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("what", ["train_step", "opt.step"])
def test_no_recompile_while_the_lr_changes(backend, what):
    torch._dynamo.reset()
    batches = data(20)
    model, eager_model = make_model(), make_model()
    opt = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-2)
    sched = L.OneCycleLR(opt, max_lr=1e-2, total_steps=30)  # lr and beta1 change every step
    eager_opt = lrfused.FusedScheduledAdamW(eager_model.parameters(), lr=1e-2)
    eager_sched = L.OneCycleLR(eager_opt, max_lr=1e-2, total_steps=30)

    def train_step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    if what == "train_step":
        compiled = torch.compile(train_step, backend=backend)
    else:
        compiled_step = torch.compile(opt.step, backend=backend)

        def compiled(x, y):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            compiled_step()
            opt.zero_grad()
            return loss

    for i, (x, y) in enumerate(batches):
        if i == 2:  # after the first steps (the optimizer state is created lazily, as in torch)
            before = frames_compiled()
            guard = torch._dynamo.config.patch(error_on_recompile=True)
            guard.__enter__()
        compiled(x, y)
        sched.step()
        eager_loss = torch.nn.functional.mse_loss(eager_model(x), y)
        eager_loss.backward()
        eager_opt.step()
        eager_opt.zero_grad()
        eager_sched.step()
    guard.__exit__(None, None, None)
    assert frames_compiled() == before, "no new graph after the warm-up"
    for a, b in zip(model.parameters(), eager_model.parameters()):
        assert max_relative_error(a, b) < 1e-5


def test_stock_torch_recompiles_with_a_float_lr():
    # The pain lrfused removes (pytorch issues #107076, #120934, #130467).
    torch._dynamo.reset()
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=30)
    compiled_step = torch.compile(opt.step, backend="aot_eager")
    with torch._dynamo.config.patch(recompile_limit=64):
        for x, y in data(8):
            torch.nn.functional.mse_loss(model(x), y).backward()
            compiled_step()
            opt.zero_grad()
            sched.step()
    assert frames_compiled() >= 6, "torch recompiles as the float lr changes"


@pytest.mark.parametrize("schedule", [None, "exponential"])
def test_compiled_step_works_from_its_first_call(schedule):
    # No scheduler, or schedule=: the first compiled call traces the step (nothing it runs needs a
    # value only a real kernel can give), and its updates equal the eager optimizer's.
    make = (lambda: lrfused.schedules.exponential_decay(0.8)) if schedule else (lambda: None)
    torch.manual_seed(0)
    start = torch.randn(16)
    p, q = start.clone().requires_grad_(), start.clone().requires_grad_()
    compiled_opt = lrfused.FusedScheduledAdamW([p], lr=0.1, schedule=make())
    eager_opt = lrfused.FusedScheduledAdamW([q], lr=0.1, schedule=make())
    compiled_step = torch.compile(compiled_opt.step, backend="aot_eager")
    for _ in range(4):
        g = torch.randn(16)
        p.grad, q.grad = g.clone(), g.clone()
        compiled_step()
        eager_opt.step()
        assert torch.equal(p, q)
    if schedule:
        assert compiled_opt.scheduled_lr() == pytest.approx(0.1 * 0.8 ** 4)
