"""The planner and the binding (lrfused/_planner.py, lrfused/_binding.py): one op per step for every
group and dtype, scheduler steps deferred into it, the eager table, the flush and its handle."""

import copy
import functools
import random
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as T
from torch.utils._python_dispatch import TorchDispatchMode

import lrfused
from helpers import RecordEveryOp, max_relative_error, twin_leaves
from lrfused import _ops, _step_plan
from lrfused import lr_scheduler as L
from lrfused.optim import binding_of


class CountLrfusedOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "lrfused":
            self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def mixed_groups(device, seed):
    """Two groups, each with a float32 and a bfloat16 param, twins for torch."""
    torch.manual_seed(seed)
    base = [
        (torch.randn(33, 4, device=device), torch.float32),
        (torch.randn(7, device=device), torch.bfloat16),
        (torch.randn(129, device=device), torch.float32),
        (torch.randn(5, 3, device=device), torch.bfloat16),
    ]
    ours = [b.to(dtype).requires_grad_() for b, dtype in base]
    theirs = [b.to(dtype).requires_grad_() for b, dtype in base]

    def groups(params):
        return [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3, "weight_decay": 0.1}]

    return ours, theirs, groups


def set_grads(ours, theirs, seed):
    generator = torch.Generator().manual_seed(seed)
    for a, b in zip(ours, theirs):
        g = torch.randn(a.shape, generator=generator).to(a.device, a.dtype)
        a.grad, b.grad = g.clone(), g.clone()


def test_an_optimizer_and_scheduler_step_is_one_op_for_every_group_and_dtype(device):
    ours, _, groups = mixed_groups(device, 0)
    opt = lrfused.FusedScheduledAdamW(groups(ours), lr=1e-2)
    sched = L.OneCycleLR(opt, max_lr=[1e-2, 3e-3], total_steps=50)
    counts = []
    for k in range(5):
        set_grads(ours, ours, k)
        with CountLrfusedOps() as mode:
            opt.step()
            sched.step()
        counts.append(mode.names)
    # The first step also plans (a table, the scheduler's rules); every step runs one step op.
    steps = [[n for n in names if n in ("lrfused::table_step_", "lrfused::adam_step_")] for names in counts]
    assert all(len(s) == 1 for s in steps), counts
    assert all(len(names) == 1 for names in counts[1:]), counts


def sequential(opt):
    return L.SequentialLR(opt, [L.LinearLR(opt, 0.1, total_iters=2), L.CosineAnnealingLR(opt, T_max=50)], [2])


def hand_write(opt):
    def step():
        for group in opt.param_groups:
            group["lr"] *= 0.99

    return step


STEADY_STEPS = {
    "cosine": lambda opt: L.CosineAnnealingLR(opt, T_max=100).step,
    "one_cycle": lambda opt: L.OneCycleLR(opt, max_lr=1e-2, total_steps=100).step,
    "lambda_horizon": lambda opt: L.LambdaLR(opt, lambda t: 0.9**t, horizon=1000).step,
    "sequential": lambda opt: sequential(opt).step,
    "plateau_number_metric": lambda opt: functools.partial(L.ReduceLROnPlateau(opt, patience=0).step, 1.0),
    # A stock torch scheduler and a hand write: the host's values, written by the next optimizer step.
    "torch_lambda": lambda opt: T.LambdaLR(opt, lambda t: 0.9**t).step,
    "hand_write": hand_write,
}


@pytest.mark.parametrize("how", list(STEADY_STEPS))
def test_a_steady_optimizer_and_scheduler_step_calls_the_dispatcher_once(how):
    """The scheduler's step writes its deferral or its host values without tensor ops, and the
    optimizer's step is its one op: nothing else reaches the dispatcher, not even the profiler's
    label of the step."""
    ours, _, groups = mixed_groups("cpu", 0)
    opt = lrfused.FusedScheduledAdamW(groups(ours), lr=1e-2)
    step_scheduler = STEADY_STEPS[how](opt)
    for k in range(3):
        set_grads(ours, ours, k)
        opt.step()
        step_scheduler()
    set_grads(ours, ours, 3)
    with RecordEveryOp() as optimizer_ops:
        opt.step()  # applies the scheduler step deferred to it, or writes the host's lr
    with RecordEveryOp() as scheduler_ops:
        step_scheduler()  # the first step deferred since: the header and its slot written
    assert scheduler_ops.names == []
    assert optimizer_ops.names == ["lrfused.table_step_.default"]


@pytest.mark.parametrize("seed", range(3))
def test_deferred_scheduler_steps_follow_torchs_last_epoch(device, seed):
    """Optimizer steps, scheduler steps with no optimizer step between them (more than a call can
    carry), steps to an explicit epoch, a skipped optimizer step (check_finite) and a hand write of
    the lr, in a random order: the params and lrs are torch's."""
    rng = random.Random(seed)
    ours, theirs, groups = mixed_groups(device, seed)
    ours, theirs = (
        [p.detach().float().requires_grad_() for p in ours],
        [p.detach().float().requires_grad_() for p in theirs],
    )
    opt_ours = lrfused.FusedScheduledAdam(groups(ours), lr=1e-2, check_finite=True)
    opt_theirs = torch.optim.Adam(groups(theirs), lr=1e-2)
    sched_ours = [L.LinearLR(opt_ours, start_factor=0.5, total_iters=7), L.ExponentialLR(opt_ours, gamma=0.93)]
    sched_theirs = [T.LinearLR(opt_theirs, start_factor=0.5, total_iters=7), T.ExponentialLR(opt_theirs, gamma=0.93)]
    for k in range(40):
        action = rng.choice(["step", "step", "step", "scheduler burst", "nan step", "epoch", "hand write"])
        if action == "step":
            set_grads(ours, theirs, 100 * seed + k)
            opt_ours.step()
            opt_theirs.step()
        elif action == "nan step":
            set_grads(ours, theirs, 100 * seed + k)
            ours[0].grad[0] = float("nan")
            opt_ours.step()  # skipped by check_finite, as torch skips a step it never takes
        elif action == "hand write":
            for a, b in zip(opt_ours.param_groups, opt_theirs.param_groups):
                a["lr"] = b["lr"] = rng.uniform(1e-3, 1e-2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if action == "scheduler burst":
                for _ in range(rng.randint(1, 11)):
                    for a, b in zip(sched_ours, sched_theirs):
                        a.step()
                        b.step()
            elif action == "epoch":
                epoch = sched_theirs[1].last_epoch + rng.randint(0, 3)
                sched_ours[1].step(epoch)
                sched_theirs[1].step(epoch)
            else:
                for a, b in zip(sched_ours, sched_theirs):
                    a.step()
                    b.step()
    for a, b in zip(opt_ours.param_groups, opt_theirs.param_groups):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
    assert binding_of(opt_ours).lr_words().tolist() == pytest.approx(
        [g["lr"] for g in opt_theirs.param_groups], rel=1e-12
    )
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < 1e-5


def test_the_table_follows_params_whose_data_is_replaced():
    """`p.data = x` of another shape: the state no longer fits, and the step raises before it
    changes anything, as adam_step_ does; of the same shape, the table steps the new data."""
    p = torch.randn(6, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([p], lr=1e-2)
    for _ in range(2):
        p.grad = torch.randn(6)
        opt.step()
    assert opt._planner.calls[0].table is not None
    p.data = torch.randn(6)
    twin = p.detach().clone().requires_grad_()
    reference = torch.optim.Adam([twin], lr=1e-2)
    reference.load_state_dict(copy.deepcopy(opt.state_dict()))  # its own state tensors
    p.grad = torch.randn(6)
    twin.grad = p.grad.clone()
    opt.step()
    reference.step()
    assert torch.allclose(p, twin, rtol=1e-6, atol=1e-7)
    p.data = torch.randn(4)
    p.grad = torch.randn(4)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] is Float \[6\]"):
        opt.step()
    assert torch.equal(p.detach(), before)


def test_a_flag_changed_between_steps_is_followed_like_torch():
    """`maximize`, `decoupled_weight_decay` and `amsgrad` written into a group after some steps
    choose another kernel: the step plans again (the eager table included) and follows torch.
    (torch raises a KeyError for an amsgrad turned on after its states were made; lrfused makes
    max_exp_avg_sq then, from zeros, which the torch side is given by hand here.)"""
    torch.manual_seed(3)
    base = [torch.randn(9), torch.randn(4, 2)]
    ours, theirs = [b.clone().requires_grad_() for b in base], [b.clone().requires_grad_() for b in base]
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2, weight_decay=0.1)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, weight_decay=0.1)
    for k in range(6):
        if k == 2:
            opt_ours.param_groups[0]["maximize"] = opt_theirs.param_groups[0]["maximize"] = True
        if k == 4:
            for group in (opt_ours.param_groups[0], opt_theirs.param_groups[0]):
                group["decoupled_weight_decay"] = True
                group["amsgrad"] = True
            for p in theirs:
                opt_theirs.state[p]["max_exp_avg_sq"] = torch.zeros_like(p)
        set_grads(ours, theirs, k)
        opt_ours.step()
        opt_theirs.step()
        for a, b in zip(ours, theirs):
            assert max_relative_error(a, b) < 1e-6, k


def test_a_flush_of_deferred_steps_carries_the_bindings_own_handle(monkeypatch):
    # On CUDA a flush recorded into a graph (a capture opening with deferred steps pending) reads a
    # table that must outlive the capture, which only a handle keeps: every flush passes the same one.
    param = torch.nn.Parameter(torch.randn(4))
    opt = lrfused.FusedScheduledAdam([param], lr=1e-2)
    sched = L.StepLR(opt, step_size=1, gamma=0.5)
    param.grad = torch.randn(4)
    opt.step()
    seen = []
    real = _ops.adam_step_

    def recording(*args, **kwargs):
        seen.append(kwargs.get("handle"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_ops, "adam_step_", recording)
    binding = binding_of(opt)
    for _ in range(2):
        sched.step()
        assert binding.deferred_rules, "the scheduler step was not deferred"
        binding.flush()
        assert not binding.deferred_rules
    assert len(seen) == 2 and seen[0] is not None and seen[0] is seen[1] is binding.flush_handle
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-3)


def test_a_copied_optimizer_flushes_through_a_handle_of_its_own():
    param = torch.nn.Parameter(torch.randn(3))
    opt = lrfused.FusedScheduledAdam([param], lr=1e-2)
    L.StepLR(opt, step_size=1, gamma=0.5)
    param.grad = torch.randn(3)
    opt.step()
    twin = copy.deepcopy(opt)
    assert binding_of(twin).flush_handle is not None
    assert binding_of(twin).flush_handle is not binding_of(opt).flush_handle
    assert not torch.equal(binding_of(twin).flush_handle, binding_of(opt).flush_handle)


@pytest.mark.parametrize("schedule", ["none", "cosine", "one_cycle"])
def test_every_write_between_steady_steps_is_followed_like_torch(schedule):
    """note [The steady optimizer step] and note [The steady step]: after steps with nothing changed,
    a new eps, weight decay, betas (a tuple or a list), lr or flag written into a group, or an
    equal value in a new object, is followed as torch follows it, at the very next step."""
    torch.manual_seed(5)
    base = [torch.randn(6), torch.randn(3, 2), torch.randn(5)]
    ours, theirs = [b.clone().requires_grad_() for b in base], [b.clone().requires_grad_() for b in base]

    def groups(params):
        return [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3, "weight_decay": 0.1}]

    opt_ours = lrfused.FusedScheduledAdamW(groups(ours), lr=1e-2)
    opt_theirs = torch.optim.AdamW(groups(theirs), lr=1e-2)
    schedulers = []
    if schedule == "cosine":
        schedulers = [L.CosineAnnealingLR(opt_ours, T_max=20), T.CosineAnnealingLR(opt_theirs, T_max=20)]
    elif schedule == "one_cycle":
        schedulers = [L.OneCycleLR(opt_ours, max_lr=0.05, total_steps=40), T.OneCycleLR(opt_theirs, 0.05, 40)]
    writes = {
        3: (0, "eps", 1e-6),
        5: (1, "weight_decay", 0.05),
        7: (0, "betas", (0.8, 0.99)),
        9: (1, "betas", [0.85, 0.995]),
        11: (0, "eps", float("1e-6")),  # an equal value, a new object
        13: (0, "lr", 5e-3),
        15: (1, "maximize", True),
        17: (0, "betas", (0.8, 0.99)),
    }
    # Written between the optimizer's step and the scheduler's, which starts from them.
    between = {14: (1, "lr", 2e-3), 16: (0, "betas", (0.7, 0.98))}

    def write(opt, index, key, value):
        opt.param_groups[index][key] = copy.copy(value)

    for k in range(20):
        if k in writes:
            write(opt_ours, *writes[k])
            write(opt_theirs, *writes[k])
        set_grads(ours, theirs, k)
        opt_ours.step()
        opt_theirs.step()
        if k in between:
            write(opt_ours, *between[k])
            write(opt_theirs, *between[k])
        for scheduler in schedulers:
            scheduler.step()
        for a, b in zip(ours, theirs):
            assert max_relative_error(a, b) < 1e-6, (k, schedule)
        for group_ours, group_theirs in zip(opt_ours.param_groups, opt_theirs.param_groups):
            assert group_ours["lr"] == pytest.approx(group_theirs["lr"], rel=1e-12), k


def test_a_host_write_rides_in_the_next_op_and_is_dropped_when_that_step_raises():
    """note [Host writes]: a float lr written by hand lands with the optimizer's op; a step that
    raises before its op leaves nothing queued, and the next step writes the lr again; a scheduler
    step deferred after a write comes after it."""
    ours, theirs = twin_leaves([(5,), (2, 3)])
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2)
    sched_ours, sched_theirs = L.ExponentialLR(opt_ours, 0.5), T.ExponentialLR(opt_theirs, 0.5)
    set_grads(ours, theirs, 0)
    opt_ours.step()
    opt_theirs.step()
    for opt in (opt_ours, opt_theirs):
        opt.param_groups[0]["lr"] = 0.25
    opt_ours.param_groups[0]["eps"] = -1.0
    with pytest.raises(ValueError, match="eps"):
        opt_ours.step()
    assert binding_of(opt_ours)._queued_writes == []
    assert binding_of(opt_ours).lr_words().tolist() == [1e-2]  # the write did not land
    opt_ours.param_groups[0]["eps"] = 1e-8
    sched_ours.step()  # chainable: from the lr the group holds now, 0.25
    sched_theirs.step()
    for k in range(1, 4):
        set_grads(ours, theirs, k)
        opt_ours.step()
        opt_theirs.step()
        assert binding_of(opt_ours).lr_words().tolist() == [opt_theirs.param_groups[0]["lr"]]
        for a, b in zip(ours, theirs):
            assert max_relative_error(a, b) < 1e-6, k


def test_more_groups_written_than_an_op_carries_are_all_followed():
    """More host writes than the header holds: the rest are written at once, all land."""
    count = _step_plan.MAX_HOST_WRITES + 3
    ours, theirs = twin_leaves([(3,)] * count)
    opt_ours = lrfused.FusedScheduledAdam([{"params": [p]} for p in ours], lr=1e-2)
    opt_theirs = torch.optim.Adam([{"params": [p]} for p in theirs], lr=1e-2)
    for k in range(3):
        for index in range(count):
            lr = 1e-3 * (index + 1) * (k + 1)
            opt_ours.param_groups[index]["lr"] = opt_theirs.param_groups[index]["lr"] = lr
        set_grads(ours, theirs, k)
        opt_ours.step()
        opt_theirs.step()
        assert binding_of(opt_ours).lr_words().tolist() == [g["lr"] for g in opt_theirs.param_groups]
        for a, b in zip(ours, theirs):
            assert max_relative_error(a, b) < 1e-6, k
