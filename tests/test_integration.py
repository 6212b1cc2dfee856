"""Where PyTorch users already are: AMP's GradScaler, checkpoints of schedulers moving between
torch and lrfused, and the interfaces that Lightning and Hugging Face's Trainer rely on."""

import io

import pytest
import torch
from torch.optim import lr_scheduler as T

import lrfused
from lrfused import lr_scheduler as L
from lrfused import schedules
from helpers import max_relative_error


def overflow_run(optimizer_factory, scheduler_factory, steps=8, overflow_at=(3,)):
    torch.manual_seed(0)
    w = torch.randn(16, requires_grad=True)
    opt = optimizer_factory([w])
    sched = scheduler_factory(opt) if scheduler_factory else None
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    lrs = []
    for step in range(steps):
        opt.zero_grad()
        loss = (w * torch.randn(16)).sum()
        if step in overflow_at:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if sched is not None:
            sched.step()
            lrs.append(sched.get_last_lr()[0])
    return w, opt, lrs


def test_amp_overflow_pauses_the_optimizer_counter_not_a_scheduler_clock():
    # With a scheduler object, its clock counts scheduler.step() calls, as torch's last_epoch does:
    # an overflow step does not pause it. The optimizer's step counter (bias correction) pauses.
    w, opt, lrs = overflow_run(lambda ps: lrfused.FusedScheduledAdam(ps, lr=0.1),
                               lambda o: L.StepLR(o, step_size=2, gamma=0.5))
    _, torch_opt, torch_lrs = overflow_run(lambda ps: torch.optim.Adam(ps, lr=0.1),
                                           lambda o: T.StepLR(o, step_size=2, gamma=0.5))
    assert lrs == torch_lrs
    assert int(opt.state[w]["step"]) == 7 == int(torch_opt.state[torch_opt.param_groups[0]["params"][0]]["step"])


def test_amp_overflow_pauses_a_schedule_given_to_the_optimizer():
    # With schedule=, the schedule reads the optimizer's own counter: an overflow pauses both.
    schedule = schedules.step_decay(2, 0.5)
    w, opt, _ = overflow_run(lambda ps: lrfused.FusedScheduledAdam(ps, lr=0.1, schedule=schedule), None,
                             steps=6, overflow_at=(1,))
    torch.manual_seed(0)  # the same run in torch, without the skipped step
    reference = torch.randn(16, requires_grad=True)
    reference_opt = torch.optim.Adam([reference], lr=0.1)
    reference_sched = T.LambdaLR(reference_opt, schedule)
    for step in range(6):
        reference_opt.zero_grad()
        g = torch.randn(16)
        if step == 1:
            continue  # the overflow step: skipped, and the schedule does not advance
        (reference * g).sum().backward()
        reference_opt.step()
        reference_sched.step()
    assert int(opt.state[w]["step"]) == 5
    assert max_relative_error(w, reference) < 1e-6


@pytest.mark.parametrize("name,kwargs", [("CosineAnnealingLR", dict(T_max=30, eta_min=1e-4)),
                                         ("OneCycleLR", dict(max_lr=0.05, total_steps=60)),
                                         ("StepLR", dict(step_size=4, gamma=0.5))])
@pytest.mark.parametrize("direction", ["torch_to_lrfused", "lrfused_to_torch"])
def test_scheduler_checkpoints_move_between_torch_and_lrfused(name, kwargs, direction):
    torch.manual_seed(0)
    base = torch.randn(32)
    source_w = base.clone().requires_grad_()
    if direction == "torch_to_lrfused":
        source_opt, source_sched = torch.optim.AdamW([source_w], lr=1e-2), None
        source_sched = getattr(T, name)(source_opt, **kwargs)
    else:
        source_opt = lrfused.FusedScheduledAdamW([source_w], lr=1e-2)
        source_sched = getattr(L, name)(source_opt, **kwargs)
    grads = [torch.randn(32) for _ in range(40)]
    for g in grads[:15]:
        source_w.grad = g.clone()
        source_opt.step()
        source_sched.step()
    buffer = io.BytesIO()
    torch.save({"w": source_w.detach(), "opt": source_opt.state_dict(), "sched": source_sched.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    target_w = checkpoint["w"].clone().requires_grad_()
    if direction == "torch_to_lrfused":
        target_opt = lrfused.FusedScheduledAdamW([target_w], lr=1e-2)
        target_sched = getattr(L, name)(target_opt, **kwargs)
    else:
        target_opt = torch.optim.AdamW([target_w], lr=1e-2)
        target_sched = getattr(T, name)(target_opt, **kwargs)
    target_opt.load_state_dict(checkpoint["opt"])
    target_sched.load_state_dict(checkpoint["sched"])
    for g in grads[15:]:
        source_w.grad, target_w.grad = g.clone(), g.clone()
        source_opt.step()
        target_opt.step()
        source_sched.step()
        target_sched.step()
        assert target_sched.get_last_lr() == pytest.approx(source_sched.get_last_lr(), rel=1e-9)
    assert max_relative_error(target_w, source_w) < 1e-6


def test_framework_interfaces():
    """What Lightning's configure_optimizers and Hugging Face's Trainer(optimizers=(opt, sched)) use,
    exercised by a minimal hand-written loop of the same shape (no framework installed)."""
    model = torch.nn.Linear(4, 1)
    optimizer = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-3)
    scheduler = L.LinearLR(optimizer, start_factor=0.1, total_iters=10)
    # Lightning: configure_optimizers returns this dict; it checks the scheduler's type.
    config = {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LRScheduler)
    assert isinstance(optimizer, torch.optim.Optimizer)
    logged = []
    for step in range(5):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        config["lr_scheduler"]["scheduler"].step()
        # Both frameworks log the lr from here; Trainer also calls get_last_lr().
        logged.append((optimizer.param_groups[0]["lr"], scheduler.get_last_lr()[0]))
    assert all(isinstance(a, float) and a == b for a, b in logged)
    assert logged[-1][0] == pytest.approx(1e-3 * (0.1 + 0.9 * 5 / 10))
    # Checkpointing through the frameworks is state_dict / load_state_dict of both objects.
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    assert all(isinstance(v, (int, float, bool, str, list, dict, tuple, type(None), torch.Tensor))
               for v in state["scheduler"].values())
    # ReduceLROnPlateau is recognised by its torch class, and takes the monitored metric.
    plateau = L.ReduceLROnPlateau(lrfused.FusedScheduledAdam(model.parameters()), patience=0)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    plateau.step(1.0)
