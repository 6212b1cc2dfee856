"""FusedScheduledAdam and FusedScheduledAdamW against torch.optim.Adam/AdamW: parity in every dtype
and flag, the lr and schedule=, AMP and check_finite, state dicts and checkpoints both ways, torch's
optimizer contract, and hostile input (param groups in every form, bad values, odd layouts)."""

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as T
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import lrfused
from helpers import (
    FLAGS,
    EachOptimizer,
    assert_same_params,
    assert_unchanged,
    max_relative_error,
    raised,
    random_grads,
    snapshot,
    step_both,
    step_twins,
    twin_leaves,
)
from lrfused import lr_scheduler as L
from lrfused import schedules


def run_pair(ours, theirs, opt_ours, opt_theirs, steps, grad_fn=torch.randn_like, sched=()):
    for _ in range(steps):
        step_twins(ours, theirs, opt_ours, opt_theirs, grad_fn)
        for s in sched:
            s.step()


# float32 opmath for float32 params; float64 opmath for float64 ones (complex128 as pairs of
# float64), as torch computes them.
PARITY = {torch.float32: 1e-6, torch.float64: 1e-12, torch.complex128: 1e-12}


@pytest.mark.parametrize("dtype", list(PARITY), ids=str)
@pytest.mark.parametrize("amsgrad,maximize,weight_decay,decoupled", FLAGS)
def test_matches_torch_adam(device, dtype, amsgrad, maximize, weight_decay, decoupled, twin_params):
    ours, theirs = twin_params(device, dtype=dtype)
    kw = dict(lr=3e-3, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled)
    opt_ours = lrfused.FusedScheduledAdam(ours, **kw)
    opt_theirs = torch.optim.Adam(theirs, **kw)
    run_pair(ours, theirs, opt_ours, opt_theirs, 200)
    tolerance = PARITY[dtype]
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        assert max_relative_error(a, b) < tolerance
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            assert max_relative_error(opt_ours.state[a][key], opt_theirs.state[b][key]) < tolerance, key
    assert int(opt_ours.state[ours[0]]["step"]) == 200


def test_adamw_class_matches_torch_adamw(device, twin_params):
    ours, theirs = twin_params(device)
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2, betas=(0.8, 0.99))
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.8, 0.99))
    assert opt_ours.defaults["weight_decay"] == opt_theirs.defaults["weight_decay"] == 1e-2
    run_pair(ours, theirs, opt_ours, opt_theirs, 200)
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < 1e-6


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("decoupled", [False, True])
def test_reduced_precision_matches_torch_fused(device, dtype, tolerance, decoupled, twin_params):
    # torch's fused kernels also keep fp32 opmath and states in the param dtype: the closest peer.
    ours, theirs = twin_params(device, dtype, shapes=((4099,), (64, 3)))
    start = [p.detach().clone() for p in theirs]
    kw = dict(lr=1e-3, weight_decay=0.05, decoupled_weight_decay=decoupled)
    opt_ours = lrfused.FusedScheduledAdam(ours, **kw)
    opt_theirs = torch.optim.Adam(theirs, fused=True, **kw)
    run_pair(ours, theirs, opt_ours, opt_theirs, 200)
    for a, b, s in zip(ours, theirs, start):
        assert a.dtype == dtype
        # A few elements may round the other way each step; the bulk must agree to the dtype's
        # precision relative to the tensor's scale.
        assert max_relative_error(a, b) < tolerance
        # ... and far more closely than the 200 steps moved them (about 0.04 here): a kernel that
        # wrote nothing would be off by that whole distance, within the tolerance above.
        disagreement = (a.detach().double() - b.detach().double()).abs().max()
        displacement = (b.detach().double() - s.double()).abs().max()
        assert displacement > 0.01 and disagreement <= 0.01 * displacement, (disagreement, displacement)


def test_grad_scaler_with_optimizer(device, twin_params):
    ours, theirs = twin_params(device)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2)
    scalers = [torch.amp.GradScaler(device, init_scale=2.0**10), torch.amp.GradScaler(device, init_scale=2.0**10)]
    for step in range(20):
        for params, opt, scaler in ((ours, opt_ours, scalers[0]), (theirs, opt_theirs, scalers[1])):
            torch.manual_seed(step)
            loss = sum((p * torch.randn_like(p)).sum() for p in params)
            if step == 5:
                loss = loss * float("inf")  # one overflow: skipped by both
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < 1e-6
    assert int(opt_ours.state[ours[0]]["step"]) == 19


def test_schedule_multiplies_group_lr(device, twin_params):
    schedule = schedules.warmup_cosine(warmup_steps=5, decay_steps=50, end_value=0.1)
    ours, theirs = twin_params(device)
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2, schedule=schedule)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_theirs, schedule)
    run_pair(ours, theirs, opt_ours, opt_theirs, 80, sched=[sched])
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < 1e-6


def test_manual_and_tensor_lr_changes_are_followed(device, twin_params):
    ours, theirs = twin_params(device)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=torch.tensor(1e-2))
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2)
    for step in range(30):
        if step == 10:
            opt_ours.param_groups[0]["lr"].fill_(3e-3)  # a tensor lr, read on the device
            opt_theirs.param_groups[0]["lr"] = 3e-3
        run_pair(ours, theirs, opt_ours, opt_theirs, 1)
    opt_ours.param_groups[0]["lr"] = 5e-4  # a float again
    opt_theirs.param_groups[0]["lr"] = 5e-4
    run_pair(ours, theirs, opt_ours, opt_theirs, 10)
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < 1e-6


def test_params_without_grad_keep_their_own_step(device, twin_params):
    ours, theirs = twin_params(device)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2)
    for step in range(40):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            if i == 1 and step % 3 == 0:
                a.grad = b.grad = None  # unused this step: torch skips it, step counter included
                continue
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs):
        assert int(opt_ours.state[a]["step"]) == int(opt_theirs.state[b]["step"])
        assert max_relative_error(a, b) < 1e-6


def test_complex_params_match_torch(device):
    torch.manual_seed(5)
    base = torch.randn(20, dtype=torch.complex64, device=device)
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    opt_ours = lrfused.FusedScheduledAdam([a], lr=1e-2, weight_decay=0.1)
    opt_theirs = torch.optim.Adam([b], lr=1e-2, weight_decay=0.1)
    run_pair([a], [b], opt_ours, opt_theirs, 50)
    assert max_relative_error(torch.view_as_real(a), torch.view_as_real(b)) < 1e-6


def test_closure_and_zero_grad():
    torch.manual_seed(0)
    w = torch.randn(4, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], lr=0.1)
    target = torch.tensor([1.0, -2.0, 3.0, 0.5])

    def closure():
        opt.zero_grad()
        loss = ((w - target) ** 2).sum()
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(200):
        last = opt.step(closure).item()
    assert last < first * 1e-3
    opt.zero_grad()
    assert w.grad is None


def test_state_dict_round_trip_and_weights_only(device, twin_params):
    ours, _ = twin_params(device)
    opt = lrfused.FusedScheduledAdam(ours, lr=1e-2, amsgrad=True, schedule=schedules.exponential_decay(0.9))
    run_pair(
        ours,
        [p.detach().clone().requires_grad_() for p in ours],
        opt,
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0),
        5,
    )
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    clone_params = [p.detach().clone().requires_grad_() for p in ours]
    opt2 = lrfused.FusedScheduledAdam(clone_params, lr=1e-2, amsgrad=True, schedule=schedules.exponential_decay(0.9))
    opt2.load_state_dict(loaded)
    run_pair(ours, clone_params, opt, opt2, 7)
    for a, b in zip(ours, clone_params):
        assert torch.equal(a, b), "resuming gives bit-identical results on the CPU" if device == "cpu" else ""
    assert opt2.state[clone_params[0]]["step"].dtype == torch.int64


@pytest.mark.parametrize("direction", ["torch_to_lrfused", "lrfused_to_torch"])
def test_checkpoints_move_between_torch_and_lrfused(device, direction, twin_params):
    ours, theirs = twin_params(device)
    torch_opt = torch.optim.AdamW(theirs, lr=1e-2)
    fused_opt = lrfused.FusedScheduledAdamW(ours, lr=1e-2)
    run_pair(ours, theirs, fused_opt, torch_opt, 10)
    continued_ours = [p.detach().clone().requires_grad_() for p in ours]
    continued_theirs = [p.detach().clone().requires_grad_() for p in theirs]
    if direction == "torch_to_lrfused":
        source, target = torch_opt, lrfused.FusedScheduledAdamW(continued_theirs, lr=1e-2)
        reference, reference_params, target_params = torch_opt, theirs, continued_theirs
    else:
        source, target = fused_opt, torch.optim.AdamW(continued_ours, lr=1e-2)
        reference, reference_params, target_params = fused_opt, ours, continued_ours
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer, weights_only=True))
    run_pair(reference_params, target_params, reference, target, 20)
    for a, b in zip(target_params, reference_params):
        assert max_relative_error(a, b) < 1e-6


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(lr=-1.0), "learning rate: -1.0"),
        (dict(lr=float("nan")), "learning rate: nan"),
        (dict(eps=-1e-8), "epsilon value: -1e-08"),
        (dict(betas=(1.0, 0.999)), "index 0: 1.0"),
        (dict(betas=(0.9, float("inf"))), "index 1: inf"),
        (dict(weight_decay=-0.1), "weight_decay value: -0.1"),
    ],
)
def test_invalid_hyperparameters_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        lrfused.FusedScheduledAdam([torch.zeros(2, requires_grad=True)], **kwargs)


def test_float64_params_step_with_other_dtypes_in_one_call(device):
    # One group of float64, float32, bfloat16 and complex128 params: each bucket in its own opmath.
    torch.manual_seed(3)
    dtypes = [torch.float64, torch.float32, torch.bfloat16, torch.complex128]
    ours = [torch.randn(257, device=device, dtype=dt, requires_grad=True) for dt in dtypes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2)
    run_pair(ours, theirs, opt_ours, opt_theirs, 20)
    tolerance = {torch.float64: 1e-12, torch.complex128: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2e-2}
    for a, b in zip(ours, theirs):
        assert max_relative_error(a, b) < tolerance[a.dtype], a.dtype


def test_unusable_lr_skips_the_update_and_counts_it(device):
    # note [Unusable schedule values]: the same rule on every backend, since CUDA cannot raise
    # without a sync. A NaN tensor lr is copied in on the device, never read by the host.
    torch.manual_seed(0)
    ours = [torch.randn(5000, device=device, requires_grad=True)]
    theirs = [ours[0].detach().clone().requires_grad_()]
    opt = lrfused.FusedScheduledAdam(ours, lr=torch.tensor(1e-2, device=device))
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2)
    run_pair(ours, theirs, opt, opt_theirs, 3)
    before = ours[0].detach().clone()
    state_before = {k: v.clone() for k, v in opt.state[ours[0]].items()}
    opt.param_groups[0]["lr"].fill_(float("nan"))
    for _ in range(2):
        ours[0].grad = torch.randn_like(ours[0])
        opt.step()
    assert torch.equal(ours[0].detach(), before)
    for key, value in opt.state[ours[0]].items():
        assert torch.equal(value, state_before[key]), key
    assert int(opt.invalid_steps) == 2
    # A usable lr again: the trajectory continues as torch's does from the same state.
    opt.param_groups[0]["lr"].fill_(1e-2)
    run_pair(ours, theirs, opt, opt_theirs, 3)
    assert max_relative_error(ours[0], theirs[0]) < 1e-6
    assert int(opt.state[ours[0]]["step"]) == 6


def test_scheduled_beta1_outside_its_range_takes_torchs_arithmetic(device):
    # torch checks beta1's range only in its constructor, and its CyclicLR writes any momentum:
    # beta1(t) = 0.9 - 1.4 * t / 4 goes below 0 at t = 3, and torch steps with it.
    torch.manual_seed(0)
    ours = [torch.randn(100, device=device, dtype=torch.float64, requires_grad=True)]
    theirs = [ours[0].detach().clone().requires_grad_()]
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2)
    kw = dict(base_lr=1e-3, max_lr=1e-2, step_size_up=4, base_momentum=-0.5, max_momentum=0.9)
    sched = [L.CyclicLR(opt_ours, **kw), T.CyclicLR(opt_theirs, **kw)]
    run_pair(ours, theirs, opt_ours, opt_theirs, 8, sched=sched)
    assert opt_ours.param_groups[0]["betas"] == opt_theirs.param_groups[0]["betas"]
    assert max_relative_error(ours[0], theirs[0]) < 1e-12
    assert int(opt_ours.invalid_steps) == 0 and int(opt_ours.state[ours[0]]["step"]) == 8


@pytest.mark.parametrize("max_momentum,total_steps", [(22.0, 10), (5.0, 40)])
def test_a_momentum_above_one_steps_as_torch_steps(device, max_momentum, total_steps):
    # torch's own scheduler tests cycle momentum between 1 and 5 or 22. Without grads torch's step
    # does nothing; with grads it takes 1 - beta1^t and the lerp weight 1 - beta1 as they are (a
    # base_momentum of 0.5 there: at 1, torch's for-loop Adam raises ZeroDivisionError).
    no_grad = torch.nn.Parameter(torch.zeros(2, device=device))
    opt = lrfused.FusedScheduledAdam([no_grad])
    sched = L.OneCycleLR(opt, max_lr=25, base_momentum=1, max_momentum=max_momentum, total_steps=total_steps)
    for _ in range(3):
        opt.step()
        sched.step()
    assert torch.equal(no_grad.detach(), torch.zeros(2, device=device)) and not opt.state

    torch.manual_seed(1)
    ours = [torch.randn(64, device=device, dtype=torch.float64, requires_grad=True)]
    theirs = [ours[0].detach().clone().requires_grad_()]
    opt_ours = lrfused.FusedScheduledAdam(ours)
    opt_theirs = torch.optim.Adam(theirs)
    kw = dict(max_lr=25, base_momentum=0.5, max_momentum=max_momentum, total_steps=total_steps)
    sched = [L.OneCycleLR(opt_ours, **kw), T.OneCycleLR(opt_theirs, **kw)]
    run_pair(ours, theirs, opt_ours, opt_theirs, 6, sched=sched)
    assert opt_ours.param_groups[0]["betas"] == opt_theirs.param_groups[0]["betas"]
    assert max_relative_error(ours[0], theirs[0]) < 1e-12
    assert int(opt_ours.invalid_steps) == 0


def test_a_beta1_whose_bias_correction_is_zero_skips_the_update(device):
    # beta1 = 1 makes 1 - beta1^t zero: torch's for-loop Adam raises ZeroDivisionError there and its
    # fused kernel writes inf/NaN; the kernels cannot raise without a sync, so the update is skipped
    # and counted (note [Unusable schedule values]).
    w = torch.randn(100, device=device, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], lr=1e-2)
    # beta1(t) = 1 - 0.3 * t / 2: 1 at t = 0 and t = 4.
    sched = L.CyclicLR(opt, base_lr=1e-3, max_lr=1e-2, step_size_up=2, base_momentum=0.7, max_momentum=1.0)
    applied = []
    for t in range(5):
        w.grad = torch.randn_like(w)
        before = w.detach().clone()
        beta1 = opt.param_groups[0]["betas"][0]
        opt.step()
        sched.step()
        applied.append((beta1, not torch.equal(w.detach(), before)))
    assert applied == [(1.0, False), (0.85, True), (0.7, True), (0.85, True), (1.0, False)], applied
    assert int(opt.invalid_steps) == 2 and int(opt.state[w]["step"]) == 3


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_tabulated_function_with_a_horizon_is_a_root_schedule(device, wrapped):
    # schedule=lambda_schedule(f, horizon=N): tabulated once, whole, so the optimizer's own clock can
    # read it; torch's Adam with LambdaLR(f) gives the same trajectory.
    torch.manual_seed(2)

    def factor(t):
        return 1.0 / (1.0 + 0.3 * t)

    table = schedules.lambda_schedule(factor, horizon=12)
    schedule = schedules.product(table, schedules.constant(1.0)) if wrapped else table
    ours = [torch.randn(50, device=device, requires_grad=True)]
    theirs = [ours[0].detach().clone().requires_grad_()]
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2, schedule=schedule)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2)
    sched = T.LambdaLR(opt_theirs, factor)
    run_pair(ours, theirs, opt_ours, opt_theirs, 12, sched=[sched])
    assert max_relative_error(ours[0], theirs[0]) < 1e-6
    assert int(opt_ours.invalid_steps) == 0


def test_a_tabulated_function_needs_a_horizon():
    with pytest.raises(TypeError, match="horizon"):
        schedules.lambda_schedule(lambda t: 1.0)
    with pytest.raises(ValueError, match="horizon"):
        schedules.lambda_schedule(lambda t: 1.0, horizon=0)


# --- torch's optimizer contract ----------------------------------------------------------------------


# Param-group keys torch added after the first Adam checkpoints were written.
NEWER_KEYS = ["maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"]


PAIRS = {
    "Adam": (lrfused.FusedScheduledAdam, torch.optim.Adam),
    "AdamW": (lrfused.FusedScheduledAdamW, torch.optim.AdamW),
}


def _stepped(cls, params, steps=3):
    opt = cls(params, lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("missing", NEWER_KEYS + ["all"])
@pytest.mark.parametrize("source", ["lrfused", "torch"])
def test_a_checkpoint_without_newer_group_keys_loads_with_torchs_defaults(pair, missing, source):
    ours_cls, torch_cls = PAIRS[pair]
    torch.manual_seed(0)
    base = [torch.randn(4, 3), torch.randn(5)]
    writer = _stepped(ours_cls if source == "lrfused" else torch_cls, [p.clone().requires_grad_() for p in base])
    checkpoint = writer.state_dict()
    for group in checkpoint["param_groups"]:
        for key in NEWER_KEYS if missing == "all" else [missing]:
            del group[key]
    ours_params = [p.clone().requires_grad_() for p in base]
    theirs_params = [p.clone().requires_grad_() for p in base]
    ours, theirs = ours_cls(ours_params), torch_cls(theirs_params)
    # Each its own copy: load_state_dict keeps the tensors it is given (torch's does too).
    ours.load_state_dict(copy.deepcopy(checkpoint))
    theirs.load_state_dict(copy.deepcopy(checkpoint))
    for ours_group, theirs_group in zip(ours.param_groups, theirs.param_groups):
        assert {k: v for k, v in ours_group.items() if k != "params"} == {
            k: v for k, v in theirs_group.items() if k != "params"
        }
    for _ in range(3):
        for a, b in zip(ours_params, theirs_params):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    for a, b in zip(ours_params, theirs_params):
        assert max_relative_error(a, b) < 1e-6


def test_an_old_pickled_optimizer_gets_the_newer_keys():
    # An optimizer pickled before a key existed: unpickling runs __setstate__, as torch's does.
    opt = lrfused.FusedScheduledAdamW([torch.zeros(3, requires_grad=True)])
    del opt.param_groups[0]["maximize"], opt.param_groups[0]["decoupled_weight_decay"]
    loaded = pickle.loads(pickle.dumps(opt))
    assert loaded.param_groups[0]["maximize"] is False
    assert loaded.param_groups[0]["decoupled_weight_decay"] is True  # AdamW's, as torch.optim.AdamW says


@pytest.mark.parametrize("value", [1, "a note", [1, 2], None])
def test_an_entry_of_the_state_that_is_not_a_params_is_kept_as_torch_keeps_it(value):
    # A framework or a state-dict hook may write optimizer.state["key"] = value.
    results = []
    for cls in (lrfused.FusedScheduledAdam, torch.optim.Adam):
        torch.manual_seed(0)
        p = torch.randn(3, requires_grad=True)
        opt = _stepped(cls, [p])
        opt.state["key"] = value
        saved = opt.state_dict()
        results.append(saved["state"]["key"])
        fresh = cls([torch.randn(3, requires_grad=True)])
        fresh.load_state_dict(saved)
        assert fresh.state["key"] == value
        fresh.param_groups[0]["params"][0].grad = torch.ones(3)
        fresh.step()
    assert results[0] == results[1] == value


def test_params_on_the_meta_device_are_refused_at_construction_with_a_clear_message():
    # torch.optim.Adam(fused=True) refuses them (at its first step); lrfused, always fused, refuses
    # them at construction, before anything is made, naming the param.
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))
    with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[0\]: it is on the meta device"):
        lrfused.FusedScheduledAdam([meta])
    torch_fused = torch.optim.Adam([meta], fused=True)
    meta.grad = torch.zeros(2, device="meta")
    with pytest.raises(RuntimeError, match="fused=True"):
        torch_fused.step()
    opt = lrfused.FusedScheduledAdam([torch.zeros(2, requires_grad=True)])
    with pytest.raises(RuntimeError, match=r"param_groups\[1\]\['params'\]\[0\]: it is on the meta device"):
        opt.add_param_group({"params": [meta]})
    assert len(opt.param_groups) == 1


# --- AMP, check_finite, long runs, refusals ----------------------------------------------------------


def test_non_finite_grads_without_scaler_follow_torch():
    # Like torch.optim.Adam: no hidden check, a NaN gradient makes NaN parameters where it lands.
    base = torch.randn(10)
    ours, theirs = base.clone().requires_grad_(), base.clone().requires_grad_()
    opt_ours, opt_theirs = lrfused.FusedScheduledAdam([ours]), torch.optim.Adam([theirs])
    g = torch.randn(10)
    g[3] = float("nan")
    ours.grad, theirs.grad = g.clone(), g.clone()
    opt_ours.step()
    opt_theirs.step()
    assert torch.equal(ours.isnan(), theirs.isnan()) and ours.isnan().sum() == 1


def test_check_finite_skips_on_device_and_counts():
    torch.manual_seed(0)
    base = [torch.randn(100), torch.randn(7, 3)]
    ours = [b.clone().requires_grad_() for b in base]
    clean = [b.clone().requires_grad_() for b in base]
    opt = lrfused.FusedScheduledAdam(ours, lr=1e-2, check_finite=True)
    opt_clean = lrfused.FusedScheduledAdam(clean, lr=1e-2)
    for step in range(12):
        grads = [torch.randn_like(b) for b in base]
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        if step in (4, 9):
            ours[1].grad[2, 1] = float("inf") if step == 4 else float("nan")
            states = [opt.state[p][key] for p in ours for key in ("step", "exp_avg", "exp_avg_sq")]
            before = [p.detach().clone() for p in ours] + [t.clone() for t in states]
            skipped = int(opt.skipped_steps)
            opt.step()
            after = [p.detach() for p in ours] + states
            assert all(torch.equal(a, b) for a, b in zip(before, after)), "a skipped step changes nothing"
            assert int(opt.skipped_steps) == skipped + 1, "and is counted"
            continue
        for p, g in zip(clean, grads):
            p.grad = g.clone()
        opt.step()
        opt_clean.step()
    assert int(opt.skipped_steps) == 2
    assert int(opt.state[ours[0]]["step"]) == int(opt_clean.state[clean[0]]["step"]) == 10
    for a, b in zip(ours, clean):
        assert torch.equal(a, b)


def test_counters_do_not_stop_at_two_to_the_24():
    # torch keeps step in float32, where 2**24 + 1 == 2**24; lrfused's counters are int64.
    w = torch.zeros(4, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], lr=1e-3, schedule=schedules.exponential_decay(1 - 1e-7))
    w.grad = torch.ones(4)
    opt.step()
    start = 2**24 + 3
    opt.state[w]["step"].fill_(start)
    for _ in range(3):
        opt.step()
    assert int(opt.state[w]["step"]) == start + 3
    # The schedule is evaluated at the exact clock, in float64.
    program = torch.tensor(schedules.exponential_decay(1 - 1e-7).encode(), dtype=torch.float64)
    for t in (2**24 + 1, 10**6, 2**40 + 7):
        lr, _ = lrfused._ops.evaluate_schedule(program, t)
        assert lr == (1 - 1e-7) ** float(t)


def test_load_state_dict_that_does_not_match_is_refused():
    w = torch.zeros(4, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], schedule=schedules.exponential_decay(0.9))
    w.grad = torch.ones(4)
    opt.step()
    state = opt.state_dict()
    other = torch.zeros(5, requires_grad=True)
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape \(4,\) but its param has shape \(5,\)"):
        lrfused.FusedScheduledAdam([other], schedule=schedules.exponential_decay(0.9)).load_state_dict(state)
    fresh = lrfused.FusedScheduledAdam([torch.zeros(4, requires_grad=True)], schedule=schedules.step_decay(3))
    with pytest.raises(ValueError, match="checkpoint's schedule is a Exponential"):
        fresh.load_state_dict(state)


def test_sparse_gradients_are_refused_before_any_change():
    w = torch.zeros(4, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w])
    w.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(w, torch.zeros(4)) and not opt.state[w]


def overflow_run(optimizer_factory, scheduler_factory, steps=8, overflow_at=(3,)):
    torch.manual_seed(0)
    w = torch.randn(16, requires_grad=True)
    opt = optimizer_factory([w])
    sched = scheduler_factory(opt) if scheduler_factory else None
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
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
    w, opt, lrs = overflow_run(
        lambda ps: lrfused.FusedScheduledAdam(ps, lr=0.1), lambda o: L.StepLR(o, step_size=2, gamma=0.5)
    )
    _, torch_opt, torch_lrs = overflow_run(
        lambda ps: torch.optim.Adam(ps, lr=0.1), lambda o: T.StepLR(o, step_size=2, gamma=0.5)
    )
    assert lrs == torch_lrs
    assert int(opt.state[w]["step"]) == 7 == int(torch_opt.state[torch_opt.param_groups[0]["params"][0]]["step"])


def test_amp_overflow_pauses_a_schedule_given_to_the_optimizer():
    # With schedule=, the schedule reads the optimizer's own counter: an overflow pauses both.
    schedule = schedules.step_decay(2, 0.5)
    w, opt, _ = overflow_run(
        lambda ps: lrfused.FusedScheduledAdam(ps, lr=0.1, schedule=schedule), None, steps=6, overflow_at=(1,)
    )
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


# --- hostile input -----------------------------------------------------------------------------------


def _group_forms():
    def modules():
        torch.manual_seed(3)
        base = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
        return base, copy.deepcopy(base)

    return {
        "generator": lambda m: m.parameters(),
        "list": lambda m: list(m.parameters()),
        "tuple": lambda m: tuple(m.parameters()),
        "group with a generator": lambda m: [{"params": m[0].parameters(), "lr": 1e-2}, {"params": m[2].parameters()}],
        "group with a tuple": lambda m: [{"params": tuple(m[0].parameters())}, {"params": m[2].parameters()}],
        "group with one tensor": lambda m: [
            {"params": m[0].weight},
            {"params": [m[0].bias]},
            {"params": m[2].parameters(), "weight_decay": 0.1},
        ],
        "named generator": lambda m: [p for _, p in m.named_parameters()],
        "map object": lambda m: map(lambda p: p, m.parameters()),
        "filter generator": lambda m: (p for p in m.parameters() if p.dim() == 2),
        "empty group beside others": lambda m: [{"params": []}, {"params": m.parameters()}],
    }, modules


GROUP_FORMS, _modules = _group_forms()


@pytest.mark.hostile
@pytest.mark.parametrize("form", list(GROUP_FORMS))
@pytest.mark.parametrize("adamw", [False, True])
def test_param_groups_in_every_form_train_as_torch(form, adamw):
    ours_model, theirs_model = _modules()
    make = GROUP_FORMS[form]
    opt_ours = (lrfused.FusedScheduledAdamW if adamw else lrfused.FusedScheduledAdam)(make(ours_model), lr=3e-3)
    opt_theirs = (torch.optim.AdamW if adamw else torch.optim.Adam)(make(theirs_model), lr=3e-3, foreach=False)
    assert [len(g["params"]) for g in opt_ours.param_groups] == [len(g["params"]) for g in opt_theirs.param_groups]
    assert sum(len(g["params"]) for g in opt_ours.param_groups) > 0
    x = torch.randn(16, 4)
    for _ in range(4):
        for model, opt in ((ours_model, opt_ours), (theirs_model, opt_theirs)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    before = _modules()[0]
    moved = [not torch.equal(a, b) for a, b in zip(ours_model.parameters(), before.parameters())]
    assert moved == [not torch.equal(a, b) for a, b in zip(theirs_model.parameters(), before.parameters())]
    assert_same_params(list(ours_model.parameters()), list(theirs_model.parameters()))


@pytest.mark.hostile
@pytest.mark.parametrize(
    "bad, error",
    [
        (lambda m: [{"params": set(m.parameters())}], TypeError),
        (lambda m: [], ValueError),
        (lambda m: [{"params": [m[0].weight]}, {"params": [m[0].weight]}], ValueError),
        (lambda m: [m[0].weight * 2], ValueError),  # not a leaf
        (lambda m: [{"lr": 0.1}], KeyError),
        (lambda m: ["a string"], TypeError),
    ],
)
def test_malformed_param_groups_are_refused_as_torch_refuses(bad, error):
    model = _modules()[0]
    theirs = raised(lambda: torch.optim.Adam(bad(model)))
    ours = raised(lambda: lrfused.FusedScheduledAdam(bad(model)))
    assert isinstance(theirs, error) and isinstance(ours, error), (ours, theirs)


@pytest.mark.hostile
def test_add_param_group_refusal_changes_nothing():
    model = _modules()[0]
    opt = lrfused.FusedScheduledAdam([model[0].weight])
    before = snapshot(opt)
    for bad in (
        {"params": [model[0].weight]},
        {"params": {model[2].weight}},
        {"params": [model[2].weight], "lr": -1},
        {"params": [torch.zeros(2, dtype=torch.int64)]},
        {"params": [model[2].weight], "betas": (1.0, 0.9)},
    ):
        with pytest.raises((ValueError, TypeError)):
            opt.add_param_group(bad)
        assert_unchanged(opt, before)


MIXES = {
    "fp32+bf16": [torch.float32, torch.bfloat16],
    "fp32+fp16": [torch.float32, torch.float16],
    "fp32+complex64": [torch.float32, torch.complex64],
    "bf16+fp16+fp32": [torch.bfloat16, torch.float16, torch.float32],
    "complex64+bf16": [torch.complex64, torch.bfloat16],
}


@pytest.mark.hostile
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_group_of_mixed_dtypes_counts_each_step_once(mix, amsgrad):
    torch.manual_seed(1)
    base = [torch.randn(64, dtype=dtype) for dtype in MIXES[mix]]
    ours = [b.clone().requires_grad_() for b in base]
    theirs = [b.clone().requires_grad_() for b in base]
    opt_ours = lrfused.FusedScheduledAdamW(ours, lr=1e-2, amsgrad=amsgrad)
    # torch keeps a step per param, so one torch optimizer per param is the same optimizer: its
    # fused CPU Adam (float32 opmath, as lrfused's kernels) for reduced precision, its for-loop for
    # complex params, which the fused one refuses.
    per_param = [
        torch.optim.AdamW(
            [b], lr=1e-2, amsgrad=amsgrad, fused=not b.is_complex(), foreach=False if b.is_complex() else None
        )
        for b in theirs
    ]
    opt_theirs = EachOptimizer(per_param)
    step_both(ours, theirs, opt_ours, opt_theirs, 5)
    for a, b, start, one in zip(ours, theirs, base, per_param):
        assert int(opt_ours.state[a]["step"]) == int(one.state[b]["step"]) == 5
        moved_ours, moved_theirs = (a.detach() - start), (b.detach() - start)
        assert moved_theirs.abs().max() > 0
        tolerance = 1e-5 if a.dtype in (torch.float32, torch.complex64) else 0.1
        assert max_relative_error(moved_ours, moved_theirs) < tolerance, a.dtype
    saved = opt_ours.state_dict()
    assert [int(s["step"]) for s in saved["state"].values()] == [5] * len(base)


@pytest.mark.hostile
@pytest.mark.parametrize("listing", [(0, 0), (0, 1, 0), (0, 0, 0), (1, 0, 1, 0), (0, 1, 1)])
@pytest.mark.parametrize("decoupled", [False, True])
def test_a_param_listed_twice_steps_as_torch_for_loop(listing, decoupled):
    ours, theirs = twin_leaves([(7,), (3, 4)], seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own "duplicate parameters" warning, raised for both
        opt_ours = lrfused.FusedScheduledAdam(
            [ours[i] for i in listing], lr=1e-2, weight_decay=0.1, decoupled_weight_decay=decoupled
        )
        opt_theirs = torch.optim.Adam(
            [theirs[i] for i in listing], lr=1e-2, weight_decay=0.1, decoupled_weight_decay=decoupled, foreach=False
        )
    step_both(ours, theirs, opt_ours, opt_theirs, 4)
    for i in set(listing):
        assert int(opt_ours.state[ours[i]]["step"]) == int(opt_theirs.state[theirs[i]]["step"]) == 4 * listing.count(i)
    assert_same_params(ours, theirs)


@pytest.mark.hostile
def test_mixed_dtypes_after_a_checkpoint_keep_their_own_counts():
    ours, theirs = twin_leaves([(5,), (5,)])
    ours[1].data = ours[1].data.to(torch.bfloat16)
    theirs[1].data = theirs[1].data.to(torch.bfloat16)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    step_both(ours, theirs, opt_ours, opt_theirs, 2)
    fresh = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    fresh.load_state_dict(opt_theirs.state_dict())
    step_both(ours, theirs, fresh, opt_theirs, 3, seed=10)
    assert [int(fresh.state[p]["step"]) for p in ours] == [5, 5]


BAD_HYPERPARAMETERS = [
    dict(lr=-1.0),
    dict(lr=float("nan")),
    dict(lr=torch.tensor(-1.0)),
    dict(lr=torch.tensor(float("nan"))),
    dict(lr=torch.tensor([1e-3, 1e-3])),
    dict(lr="0.1"),
    dict(lr=None),
    dict(betas=(1.0, 0.999)),
    dict(betas=(-0.1, 0.999)),
    dict(betas=(0.9, 1.0)),
    dict(betas=(0.9, -1e-9)),
    dict(betas=(float("nan"), 0.999)),
    dict(betas=(torch.tensor(1.5), 0.999)),
    dict(betas=(0.9,)),
    dict(eps=-1e-8),
    dict(eps=float("nan")),
    dict(weight_decay=-0.1),
    dict(weight_decay=float("nan")),
]


@pytest.mark.hostile
@pytest.mark.parametrize("kwargs", BAD_HYPERPARAMETERS, ids=repr)
@pytest.mark.parametrize("where", ["constructor", "add_param_group"])
def test_hyperparameters_torch_refuses_are_refused(kwargs, where):
    def build(cls):
        if where == "constructor":
            return cls([torch.zeros(3, requires_grad=True)], **kwargs)
        opt = cls([torch.zeros(3, requires_grad=True)])
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **kwargs})
        return opt

    # torch checks these in its constructor only (its add_param_group takes them and trains with
    # them); lrfused refuses them wherever they come in.
    theirs = raised(lambda: torch.optim.Adam([torch.zeros(3, requires_grad=True)], **kwargs))
    ours = raised(lambda: build(lrfused.FusedScheduledAdam))
    assert theirs is not None
    ((name, value),) = kwargs.items()
    words = {
        "lr": ("learning rate", "Tensor lr"),
        "betas": ("beta",),
        "eps": ("epsilon",),
        "weight_decay": ("weight_decay",),
    }[name]
    assert isinstance(ours, (ValueError, TypeError)) and any(w in str(ours) for w in words), ours
    if "1-element" in str(theirs):
        # torch's own tests match this message ("Tensor lr must be 1-element"): it is kept word for word.
        assert str(ours).startswith(str(theirs)), (ours, theirs)


@pytest.mark.hostile
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=float("inf")),
        dict(eps=float("inf")),
        dict(weight_decay=float("inf")),
        dict(lr=torch.tensor(float("inf"))),
    ],
    ids=repr,
)
def test_non_finite_hyperparameters_torch_takes_are_refused_by_name(kwargs):
    # torch accepts these and trains to infinities or NaNs; lrfused refuses them, naming them.
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match="inf"):
        lrfused.FusedScheduledAdam([torch.zeros(3, requires_grad=True)], **kwargs)


@pytest.mark.hostile
@pytest.mark.parametrize("lr", [torch.tensor(1e-2), torch.tensor(0.0), torch.tensor(3e-3, dtype=torch.float64)])
def test_a_tensor_lr_torch_takes_trains_as_torch(lr):
    ours, theirs = twin_leaves([(10,), (2, 3)])
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=lr.clone())
    opt_theirs = torch.optim.Adam(theirs, lr=lr.clone(), foreach=False)
    step_both(ours, theirs, opt_ours, opt_theirs, 3)
    opt_ours.param_groups[0]["lr"].fill_(5e-3)
    opt_theirs.param_groups[0]["lr"].fill_(5e-3)
    step_both(ours, theirs, opt_ours, opt_theirs, 3, seed=5)
    assert_same_params(ours, theirs)


def _trained(steps=2, shapes=((4,), (2, 3))):
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    opt = lrfused.FusedScheduledAdam(params, lr=1e-2)
    for k in range(steps):
        for p, g in zip(params, random_grads(params, k)):
            p.grad = g
        opt.step()
    return params, opt


def _edit(change):
    def edit(saved):
        change(saved["state"][0])
        return saved

    return edit


BAD_CHECKPOINTS = {
    "no step": _edit(lambda s: s.pop("step")),
    "no exp_avg": _edit(lambda s: s.pop("exp_avg")),
    "no exp_avg_sq": _edit(lambda s: s.pop("exp_avg_sq")),
    "step 2.5": _edit(lambda s: s.update(step=torch.tensor(2.5))),
    "step -1": _edit(lambda s: s.update(step=torch.tensor(-1.0))),
    "step nan": _edit(lambda s: s.update(step=torch.tensor(float("nan")))),
    "step inf": _edit(lambda s: s.update(step=float("inf"))),
    "step of two elements": _edit(lambda s: s.update(step=torch.tensor([1.0, 2.0]))),
    "step a string": _edit(lambda s: s.update(step="2")),
    "exp_avg of another shape": _edit(lambda s: s.update(exp_avg=torch.zeros(5))),
    "lr -1": lambda saved: (saved["param_groups"][0].update(lr=-1.0), saved)[1],
    "betas out of range": lambda saved: (saved["param_groups"][0].update(betas=(0.9, 1.5)), saved)[1],
    "another group count": lambda saved: (saved["param_groups"].append(dict(saved["param_groups"][0])), saved)[1],
    "another param count": lambda saved: (saved["param_groups"][0].update(params=[0]), saved)[1],
}


@pytest.mark.hostile
@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_refused_before_anything_changes(case):
    params, opt = _trained()
    saved = BAD_CHECKPOINTS[case](copy.deepcopy(opt.state_dict()))
    target_params, target = _trained(steps=3)
    before = snapshot(target)
    with pytest.raises((ValueError, TypeError, KeyError)):
        target.load_state_dict(saved)
    assert_unchanged(target, before)
    for p, g in zip(target_params, random_grads(target_params, 9)):
        p.grad = g
    target.step()
    assert all(int(target.state[p]["step"]) == 4 for p in target_params)


@pytest.mark.hostile
@pytest.mark.parametrize(
    "step", [torch.tensor(3.0), torch.tensor(3), 3, 3.0, torch.tensor(3.0, dtype=torch.float64)], ids=repr
)
def test_whole_steps_in_any_form_torch_saves_are_loaded(step):
    ours, theirs = twin_leaves([(6,)])
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    step_both(ours, theirs, opt_ours, opt_theirs, 3)
    saved = copy.deepcopy(opt_theirs.state_dict())  # its tensors are torch's own otherwise
    saved["state"][0]["step"] = step
    opt_ours.load_state_dict(saved)
    step_both(ours, theirs, opt_ours, opt_theirs, 2, seed=20)
    assert int(opt_ours.state[ours[0]]["step"]) == 5
    assert_same_params(ours, theirs)


def _conv_pair():
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(3, 4, 3)
    return conv, copy.deepcopy(conv)


@pytest.mark.hostile
@pytest.mark.parametrize("when", ["before loading", "after loading", "mid-training"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_model_converted_to_channels_last_trains_as_torch(when, amsgrad):
    ours, theirs = _conv_pair()
    opt_ours = lrfused.FusedScheduledAdam(ours.parameters(), lr=1e-2, amsgrad=amsgrad)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, amsgrad=amsgrad, foreach=False)
    x = torch.randn(2, 3, 8, 8)

    def train(steps):
        for _ in range(steps):
            for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
                opt.zero_grad()
                model(x.to(memory_format=torch.channels_last)).square().mean().backward()
                opt.step()

    train(2)
    if when == "mid-training":
        ours.to(memory_format=torch.channels_last)
        theirs.to(memory_format=torch.channels_last)
    else:
        saved = copy.deepcopy(opt_theirs.state_dict())  # its tensors are torch's own otherwise
        if when == "before loading":
            ours.to(memory_format=torch.channels_last)
            theirs.to(memory_format=torch.channels_last)
        opt_ours = lrfused.FusedScheduledAdam(ours.parameters(), lr=1e-2, amsgrad=amsgrad)
        opt_ours.load_state_dict(saved)
        if when == "after loading":
            ours.to(memory_format=torch.channels_last)
            theirs.to(memory_format=torch.channels_last)
    train(3)
    assert ours.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_params(list(ours.parameters()), list(theirs.parameters()))


@pytest.mark.hostile
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(6, 4).t(),  # dense, transposed
        lambda: torch.randn(12)[::2],  # not dense: a strided view
        lambda: torch.randn(4, 6)[:, 1:5],  # not dense: a slice
        lambda: torch.randn(2, 3, 4, 5).permute(0, 2, 3, 1),
        lambda: torch.randn(0, 3),  # empty
        lambda: torch.randn(()),  # zero-dim
    ],
    ids=["transposed", "strided", "sliced", "permuted", "empty", "scalar"],
)
def test_params_of_any_layout_train_as_torch(make):
    torch.manual_seed(5)
    base = make()
    # The param keeps the strides it was made with (clone() of a view that is not dense would not).
    ours = [torch.empty_strided(base.shape, base.stride()).copy_(base).requires_grad_()]
    theirs = [base.detach().clone().requires_grad_()]
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    step_both(ours, theirs, opt_ours, opt_theirs, 3)
    assert ours[0].stride() == base.stride()
    assert_same_params(ours, theirs)


@pytest.mark.hostile
def test_grads_in_another_layout_than_their_param_train_as_torch():
    ours, theirs = twin_leaves([(2, 3, 4, 5)])
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for k in range(3):
        g = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
        ours[0].grad, theirs[0].grad = g.clone(memory_format=torch.preserve_format), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert_same_params(ours, theirs)


@pytest.mark.hostile
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_params_the_kernels_cannot_update_are_refused_at_construction(dtype):
    p = torch.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match=str(dtype)):
        lrfused.FusedScheduledAdam([p])
    opt = lrfused.FusedScheduledAdam([torch.zeros(3, requires_grad=True)])
    before = snapshot(opt)
    with pytest.raises(TypeError, match=str(dtype)):
        opt.add_param_group({"params": [p]})
    assert_unchanged(opt, before)


@pytest.mark.hostile
def test_a_param_made_float64_after_construction_steps_in_float64():
    # model.double() after the optimizer was built: torch steps the params in their new dtype.
    torch.manual_seed(0)
    made = [[torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)] for _ in range(2)]
    made[1] = [p.detach().clone().requires_grad_() for p in made[0]]
    ours, theirs = made
    opt = lrfused.FusedScheduledAdam([{"params": [ours[0]]}, {"params": [ours[1]]}])
    opt_theirs = torch.optim.Adam([{"params": [theirs[0]]}, {"params": [theirs[1]]}])
    for params, optimizer in ((ours, opt), (theirs, opt_theirs)):
        params[1].data = params[1].data.double()
        params[0].grad, params[1].grad = torch.ones(3), torch.ones(3, dtype=torch.float64)
        optimizer.step()
    assert ours[1].dtype == torch.float64 and opt.state[ours[1]]["exp_avg"].dtype == torch.float64
    assert torch.allclose(ours[1], theirs[1], rtol=1e-12, atol=0) and torch.equal(ours[0], theirs[0])


LATE_BAD_VALUES = {
    "betas (0.9, 1.0)": ("betas", (0.9, 1.0)),
    "betas (nan, 0.9)": ("betas", (float("nan"), 0.9)),
    "betas a string": ("betas", "ab"),
    "betas three": ("betas", (0.9, 0.99, 0.999)),
    "eps -1": ("eps", -1.0),
    "eps nan": ("eps", float("nan")),
    "eps None": ("eps", None),
    "weight_decay -1": ("weight_decay", -1.0),
    "weight_decay nan": ("weight_decay", float("nan")),
    "weight_decay a string": ("weight_decay", "0.1"),
}


@pytest.mark.hostile
@pytest.mark.parametrize("case", list(LATE_BAD_VALUES))
@pytest.mark.parametrize("groups, bad_group", [(2, 1), (3, 2), (3, 1)])
def test_a_bad_value_in_a_later_group_changes_no_group(case, groups, bad_group):
    params = [torch.randn(4, requires_grad=True) for _ in range(groups)]
    opt = lrfused.FusedScheduledAdam([{"params": [p]} for p in params], lr=1e-2)
    for p, g in zip(params, random_grads(params, 0)):
        p.grad = g
    opt.step()
    key, value = LATE_BAD_VALUES[case]
    good = opt.param_groups[bad_group][key]
    opt.param_groups[bad_group][key] = value
    before = snapshot(opt)
    with pytest.raises((ValueError, TypeError)) as error:
        opt.step()
    assert (
        f"{bad_group}" in str(error.value)
        or key.split("_")[0] in str(error.value).lower()
        or "beta" in str(error.value)
    )
    assert_unchanged(opt, before)
    opt.param_groups[bad_group][key] = good
    opt.step()  # a retry steps every group once
    assert [int(opt.state[p]["step"]) for p in params] == [2] * groups


@pytest.mark.hostile
@pytest.mark.parametrize("copier", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))], ids=["deepcopy", "pickle"])
@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(schedule=schedules.cosine_decay(20)), dict(check_finite=True), dict(amsgrad=True, weight_decay=0.1)],
    ids=repr,
)
def test_a_copied_optimizer_steps_as_the_original(copier, kwargs):
    params = [torch.randn(5, requires_grad=True), torch.randn(2, 2, requires_grad=True)]
    opt = lrfused.FusedScheduledAdamW(params, lr=1e-2, **kwargs)
    for p, g in zip(params, random_grads(params, 0)):
        p.grad = g
    opt.step()
    clone = copier({"params": params, "opt": opt})
    for k in range(3):
        grads = random_grads(params, 10 + k)
        for p, q, g in zip(params, clone["params"], grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        clone["opt"].step()
    for p, q in zip(params, clone["params"]):
        assert torch.equal(p, q)
    assert clone["opt"]._schedule == opt._schedule or repr(clone["opt"]._schedule) == repr(opt._schedule)
    assert clone["opt"]._check_finite == opt._check_finite


@pytest.mark.hostile
@pytest.mark.parametrize("pattern", [(1, 0, 1), (0, 1, 1), (1, 1, 0), (0, 0, 0)])
def test_params_whose_grads_come_and_go_count_as_torch(pattern):
    ours, theirs = twin_leaves([(3,), (4,), (2,)], seed=9)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for k in range(4):
        for i, (a, b, g) in enumerate(zip(ours, theirs, random_grads(ours, k))):
            has = pattern[i] or k % 2 == 0
            a.grad, b.grad = (g.clone(), g.clone()) if has else (None, None)
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs):
        assert (a in opt_ours.state) == (b in opt_theirs.state)
        if b in opt_theirs.state:
            assert int(opt_ours.state[a]["step"]) == int(opt_theirs.state[b]["step"])
    assert_same_params(ours, theirs)


@pytest.mark.hostile
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.0),
        dict(maximize=True, amsgrad=True),
        dict(betas=(0.0, 0.0)),
        dict(betas=(0.0, 0.5), eps=0.0),
        dict(weight_decay=1.0, amsgrad=True),
        dict(eps=1.0, maximize=True),
    ],
    ids=repr,
)
@pytest.mark.parametrize("adamw", [False, True])
def test_edge_hyperparameters_train_as_torch(kwargs, adamw):
    ours, theirs = twin_leaves([(9,), (3, 3)], seed=10)
    opt_ours = (lrfused.FusedScheduledAdamW if adamw else lrfused.FusedScheduledAdam)(ours, **kwargs)
    opt_theirs = (torch.optim.AdamW if adamw else torch.optim.Adam)(theirs, foreach=False, **kwargs)
    step_both(ours, theirs, opt_ours, opt_theirs, 4)
    assert_same_params(ours, theirs)


@pytest.mark.hostile
@pytest.mark.parametrize(
    "grad",
    [
        lambda s: torch.zeros(s),
        lambda s: torch.full(s, 1e30),
        lambda s: torch.full(s, 1e-30),
        lambda s: torch.full(s, float("nan")),
        lambda s: torch.full(s, float("inf")),
    ],
    ids=["zeros", "huge", "tiny", "nan", "inf"],
)
def test_extreme_gradients_give_torch_results(grad):
    ours, theirs = twin_leaves([(6,)], seed=11)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for _ in range(2):
        g = grad((6,))
        ours[0].grad, theirs[0].grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert torch.allclose(ours[0], theirs[0], rtol=1e-5, atol=0, equal_nan=True)
    assert torch.equal(ours[0].isnan(), theirs[0].isnan())


@pytest.mark.hostile
def test_a_tensor_beta_written_after_construction_is_followed():
    ours, theirs = twin_leaves([(5,)])
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    step_both(ours, theirs, opt_ours, opt_theirs, 1)
    opt_ours.param_groups[0]["betas"] = (torch.tensor(0.8), 0.99)
    opt_theirs.param_groups[0]["betas"] = (torch.tensor(0.8), 0.99)
    step_both(ours, theirs, opt_ours, opt_theirs, 3, seed=4)
    assert_same_params(ours, theirs)


@pytest.mark.hostile
def test_a_float_lr_written_as_nan_is_refused_before_any_change():
    params = [torch.randn(3, requires_grad=True) for _ in range(2)]
    opt = lrfused.FusedScheduledAdam([{"params": [p]} for p in params])
    for p, g in zip(params, random_grads(params, 0)):
        p.grad = g
    opt.param_groups[1]["lr"] = float("nan")
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]"):
        opt.step()
    assert_unchanged(opt, before)


# --- the wrapper around step() --------------------------------------------------------------------


def test_step_hooks_run_as_torch_runs_them():
    """Global and own pre-hooks (a pre-hook may replace the arguments), then the step, then own and
    global post-hooks: the same calls, in the same order, with the same arguments as torch's."""

    def calls_of(make):
        torch.manual_seed(0)
        params = [torch.randn(3, requires_grad=True)]
        params[0].grad = torch.randn(3)
        optimizer = make(params)
        calls = []

        def closure():
            calls.append("closure")
            return torch.tensor(2.0)

        handles = [
            register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", len(a)))),
            optimizer.register_step_pre_hook(lambda o, a, k: ((o,), {"closure": closure})),
            optimizer.register_step_pre_hook(lambda o, a, k: calls.append(("own pre", sorted(k)))),
            optimizer.register_step_post_hook(lambda o, a, k: calls.append(("own post", sorted(k)))),
            register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post")),
        ]
        try:
            loss = optimizer.step()
        finally:
            for handle in handles:
                handle.remove()
        return calls, loss, params[0].detach().clone()

    ours = calls_of(lambda ps: lrfused.FusedScheduledAdamW(ps, lr=0.1))
    theirs = calls_of(lambda ps: torch.optim.AdamW(ps, lr=0.1))
    assert (
        ours[0]
        == theirs[0]
        == [("global pre", 1), ("own pre", ["closure"]), "closure", ("own post", ["closure"]), "global post"]
    )
    assert ours[1] == theirs[1] == 2.0
    torch.testing.assert_close(ours[2], theirs[2])


def test_a_pre_hook_returning_something_else_raises_as_torch_raises():
    for make in (lrfused.FusedScheduledAdamW, torch.optim.AdamW):
        params = [torch.randn(2, requires_grad=True)]
        optimizer = make(params)
        optimizer.register_step_pre_hook(lambda o, a, k: "not a pair")
        with pytest.raises(RuntimeError, match="must return None or a tuple of \\(new_args, new_kwargs\\)"):
            optimizer.step()


def test_the_profiler_sees_the_step_under_torchs_label():
    params = [torch.randn(4, requires_grad=True)]
    params[0].grad = torch.randn(4)
    optimizer = lrfused.FusedScheduledAdamW(params)
    optimizer.step()
    with torch.profiler.profile() as profiler:
        optimizer.step()
    names = [event.name for event in profiler.events()]
    assert "Optimizer.step#FusedScheduledAdamW.step" in names
    assert "lrfused::table_step_" in names or not lrfused.has_kernels()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_step_runs_without_grad_and_leaves_grad_mode_as_it_was(enabled):
    params = [torch.randn(3, requires_grad=True)]
    params[0].grad = torch.randn(3)
    optimizer = lrfused.FusedScheduledAdamW(params)
    seen = []
    optimizer.register_step_post_hook(lambda o, a, k: seen.append(torch.is_grad_enabled()))
    with torch.set_grad_enabled(enabled):
        optimizer.step(closure=lambda: seen.append(torch.is_grad_enabled()))
        assert torch.is_grad_enabled() is enabled
        optimizer.param_groups[0]["eps"] = -1.0  # the step raises: grad mode is still put back
        with pytest.raises(ValueError, match="eps"):
            optimizer.step()
        assert torch.is_grad_enabled() is enabled
    assert seen == [True, enabled]  # the closure with grad, as torch runs it; the hooks outside the step
