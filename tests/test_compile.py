"""torch.compile: a compiled training step with an lrfused scheduler changing the lr every step
does not recompile, traces as one graph (``fullgraph=True``), and matches eager. (How often stock
torch recompiles in the same loop is measured by benchmarks/bench_compile.py, not tested here.)"""

import contextlib
import math

import pytest
import torch
import torch._dynamo

import lrfused
from helpers import max_relative_error
from lrfused import lr_scheduler as L

BACKENDS = ["aot_eager", "inductor"]


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def data(steps):
    torch.manual_seed(1)
    return [(torch.randn(32, 8), torch.randn(32, 1)) for _ in range(steps)]


def frames_compiled():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


# Each optimizer with OneCycleLR, which changes the lr and the momentum (Adam's beta1) every step.
OPTIMIZERS = {
    "AdamW": lambda params: lrfused.FusedScheduledAdamW(params, lr=1e-2),
    "SGD": lambda params: lrfused.FusedScheduledSGD(params, lr=1e-2, momentum=0.9, nesterov=True),
    "RMSprop": lambda params: lrfused.FusedScheduledRMSprop(params, lr=1e-2, momentum=0.9, centered=True),
    "Adagrad": lambda params: lrfused.FusedScheduledAdagrad(params, lr=1e-2),
}


# AdamW in every backend and form; the other rules, which take the same compiled path, in one.
RECOMPILE_CASES = [(b, w, "AdamW") for b in BACKENDS for w in ("train_step", "opt.step")] + [
    ("aot_eager", "train_step", name) for name in OPTIMIZERS if name != "AdamW"
]


@pytest.mark.parametrize("backend,what,optimizer", RECOMPILE_CASES)
def test_no_recompile_while_the_lr_changes(backend, what, optimizer):
    torch._dynamo.reset()
    batches = data(20)
    model, eager_model = make_model(), make_model()
    cycles = optimizer != "Adagrad"  # Adagrad has no momentum to cycle (torch raises)
    opt = OPTIMIZERS[optimizer](model.parameters())
    sched = L.OneCycleLR(opt, max_lr=1e-2, total_steps=30, cycle_momentum=cycles)
    eager_opt = OPTIMIZERS[optimizer](eager_model.parameters())
    eager_sched = L.OneCycleLR(eager_opt, max_lr=1e-2, total_steps=30, cycle_momentum=cycles)

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

    with contextlib.ExitStack() as after_warm_up:
        for i, (x, y) in enumerate(batches):
            if i == 2:  # after the first steps (the optimizer state is created lazily, as in torch)
                before = frames_compiled()
                after_warm_up.enter_context(torch._dynamo.config.patch(error_on_recompile=True))
            compiled(x, y)
            sched.step()
            eager_loss = torch.nn.functional.mse_loss(eager_model(x), y)
            eager_loss.backward()
            eager_opt.step()
            eager_opt.zero_grad()
            eager_sched.step()
    assert frames_compiled() == before, "no new graph after the warm-up"
    for a, b in zip(model.parameters(), eager_model.parameters()):
        assert max_relative_error(a, b) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["scheduler", "schedule="])
def test_step_traces_as_one_graph(backend, how):
    # fullgraph=True: no graph break anywhere in the optimizer's step (a break raises), from its
    # first call, whatever the lr and beta1 do. A torch scheduler replaces ``opt.step`` with a
    # counting wrapper that dynamo never traces (torch.optim.lr_scheduler is a skipped file, for
    # torch's own optimizers too), so the step compiled here is the optimizer's own method.
    torch._dynamo.reset()
    model, eager_model = make_model(), make_model()
    if how == "scheduler":
        opt = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-2)
        eager_opt = lrfused.FusedScheduledAdamW(eager_model.parameters(), lr=1e-2)
        schedulers = [L.OneCycleLR(o, max_lr=1e-2, total_steps=30) for o in (opt, eager_opt)]
    else:
        make = lambda m: lrfused.FusedScheduledAdamW(  # noqa: E731
            m.parameters(), lr=1e-2, schedule=lrfused.schedules.warmup_cosine(3, 20)
        )
        opt, eager_opt, schedulers = make(model), make(eager_model), []

    @torch.compile(backend=backend, fullgraph=True)
    def compiled_step():
        lrfused.FusedScheduledAdamW.step(opt)

    for x, y in data(6):
        for m in (model, eager_model):
            torch.nn.functional.mse_loss(m(x), y).backward()
        compiled_step()
        eager_opt.step()
        opt.zero_grad()
        eager_opt.zero_grad()
        for s in schedulers:
            s.step()
    for a, b in zip(model.parameters(), eager_model.parameters()):
        assert max_relative_error(a, b) < 1e-5


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
        assert compiled_opt.scheduled_lr() == pytest.approx(0.1 * 0.8**4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_lr_written_by_hand_every_step_does_not_recompile(backend):
    # nanoGPT's way: `for g in opt.param_groups: g["lr"] = lr` before each compiled opt.step(), no
    # scheduler. torch's default AdamW compiles 2 graphs in 12 steps (the state is made at the first).
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    batches = data(12)
    model, reference = make_model(), make_model()
    opt = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-2)
    torch_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    compiled_step = torch.compile(opt.step, backend=backend)
    with contextlib.ExitStack() as after_warm_up:
        for i, (x, y) in enumerate(batches):
            if i == 2:
                before = frames_compiled()
                after_warm_up.enter_context(torch._dynamo.config.patch(error_on_recompile=True))
            lr = 1e-2 * 0.5 * (1 + math.cos(math.pi * i / len(batches)))
            for module, optimizer, step in ((model, opt, compiled_step), (reference, torch_opt, torch_opt.step)):
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.nn.functional.mse_loss(module(x), y).backward()
                step()
                optimizer.zero_grad()
    assert frames_compiled() == before == 2, "two graphs: before and after the state exists"
    for a, b in zip(model.parameters(), reference.parameters()):
        assert max_relative_error(a, b) < 1e-5
    # The host writes the next eager step makes are still absorbed.
    for group in opt.param_groups:
        group["lr"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.mse_loss(model(batches[0][0]), batches[0][1]).backward()
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
