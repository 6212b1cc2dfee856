"""FusedScheduledAdam against torch.optim.Adam / AdamW, and the op against its reference."""

import io
import itertools
import math

import pytest
import torch

from torch.optim import lr_scheduler as T

import lrfused
from lrfused import _reference, schedules
from lrfused import lr_scheduler as L
from helpers import adam_step_one_bucket, max_relative_error

FLAGS = list(itertools.product([False, True], [False, True], [0.0, 0.1], [False, True]))




def run_pair(ours, theirs, opt_ours, opt_theirs, steps, grad_fn=torch.randn_like, sched=()):
    for _ in range(steps):
        for a, b in zip(ours, theirs):
            g = grad_fn(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
        for s in sched:
            s.step()


# float32 opmath for float32 params; float64 opmath for float64 ones (complex128 as pairs of
# float64), as torch computes them.
PARITY = {torch.float32: 1e-6, torch.float64: 1e-12, torch.complex128: 1e-12}


@pytest.mark.parametrize("dtype", list(PARITY), ids=str)
@pytest.mark.parametrize("amsgrad,maximize,weight_decay,decoupled", FLAGS)
def test_matches_torch_adam(device, dtype, amsgrad, maximize, weight_decay, decoupled, twin_params):
    ours, theirs = twin_params(device, dtype=dtype)
    kw = dict(lr=3e-3, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
              decoupled_weight_decay=decoupled)
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
    kw = dict(lr=1e-3, weight_decay=0.05, decoupled_weight_decay=decoupled)
    opt_ours = lrfused.FusedScheduledAdam(ours, **kw)
    opt_theirs = torch.optim.Adam(theirs, fused=True, **kw)
    run_pair(ours, theirs, opt_ours, opt_theirs, 200)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        # A few elements may round the other way each step; the bulk must agree to the dtype's
        # precision relative to the tensor's scale.
        assert max_relative_error(a, b) < tolerance


@pytest.mark.parametrize("amsgrad,maximize,weight_decay,decoupled", FLAGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compiled_op_matches_reference(amsgrad, maximize, weight_decay, decoupled, dtype):
    torch.manual_seed(7)
    shapes = [(1,), (13,), (1024,), (3, 33), (0,)]
    params = [torch.randn(s).to(dtype) for s in shapes]
    grads = [torch.randn(s).to(dtype) for s in shapes]
    states = [[torch.rand(s).to(dtype) * 0.1 for s in shapes] for _ in range(3)]
    program = torch.tensor(schedules.warmup_cosine(3, 10, peak_value=1e-2).encode(), dtype=torch.float64)

    def run(op, clone):
        ps, gs = clone(params), clone(grads)
        ms, vs, xs = clone(states[0]), clone(states[1]), clone(states[2])
        step = torch.tensor(4, dtype=torch.int64)
        for _ in range(3):
            adam_step_one_bucket(op, ps, gs, ms, vs, xs if amsgrad else [], step, program, beta1=0.9, beta2=0.99,
                                 eps=1e-8, weight_decay=weight_decay, decoupled_weight_decay=decoupled,
                                 amsgrad=amsgrad, maximize=maximize)
        return ps + ms + vs + (xs if amsgrad else []) + [step]

    clone = lambda ts: [t.clone() for t in ts]  # noqa: E731
    compiled = run(torch.ops.lrfused.adam_step_, clone)
    reference = run(_reference.adam_step_, clone)
    for a, b in zip(compiled, reference):
        if a.is_floating_point():
            if dtype == torch.float32:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
            else:  # one rounding apart at most: a kernel that wrote nothing would fail, as three steps
                # move every moment by far more
                torch.testing.assert_close(a, b, rtol=torch.finfo(dtype).eps, atol=0)
        else:
            assert torch.equal(a, b)


def test_grad_scale_and_found_inf(op_kwargs):
    torch.manual_seed(3)
    p = torch.randn(100)
    g = torch.randn(100) * 1024
    program = torch.tensor(schedules.constant(1e-2).encode(), dtype=torch.float64)
    ps, gs, m, v, step = [p.clone()], [g.clone()], [torch.zeros(100)], [torch.zeros(100)], torch.tensor(0)
    op = torch.ops.lrfused.adam_step_
    adam_step_one_bucket(op, ps, gs, m, v, [], step, program, grad_scale=torch.tensor(1024.0),
                         found_inf=torch.tensor(1.0), **op_kwargs)
    assert torch.equal(ps[0], p) and torch.equal(gs[0], g) and int(step) == 0, "an overflow step changes nothing"
    adam_step_one_bucket(op, ps, gs, m, v, [], step, program, grad_scale=torch.tensor(1024.0),
                         found_inf=torch.tensor(0.0), **op_kwargs)
    assert int(step) == 1
    torch.testing.assert_close(gs[0], g / 1024, rtol=0, atol=0)  # the unscaled grad is written back
    ps2, m2, v2, step2 = [p.clone()], [torch.zeros(100)], [torch.zeros(100)], torch.tensor(0)
    adam_step_one_bucket(op, ps2, [g / 1024], m2, v2, [], step2, program, **op_kwargs)
    torch.testing.assert_close(ps[0], ps2[0], rtol=0, atol=0)


def test_grad_scaler_with_optimizer(device, twin_params):
    ours, theirs = twin_params(device)
    opt_ours = lrfused.FusedScheduledAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2)
    scalers = [torch.amp.GradScaler(device, init_scale=2.0 ** 10), torch.amp.GradScaler(device, init_scale=2.0 ** 10)]
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
    run_pair(ours, [p.detach().clone().requires_grad_() for p in ours], opt,
             torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0), 5)
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


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(lr=-1.0), "learning rate: -1.0"),
    (dict(lr=float("nan")), "learning rate: nan"),
    (dict(eps=-1e-8), "epsilon value: -1e-08"),
    (dict(betas=(1.0, 0.999)), "index 0: 1.0"),
    (dict(betas=(0.9, float("inf"))), "index 1: inf"),
    (dict(weight_decay=-0.1), "weight_decay value: -0.1"),
])
def test_invalid_hyperparameters_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        lrfused.FusedScheduledAdam([torch.zeros(2, requires_grad=True)], **kwargs)


def test_bad_op_arguments_change_nothing(op_kwargs):
    p = torch.randn(10)
    program = torch.tensor(schedules.constant(1e-2).encode(), dtype=torch.float64)
    params, step = [p.clone(), torch.randn(3)], torch.tensor(0)
    op = torch.ops.lrfused.adam_step_
    with pytest.raises(RuntimeError, match=r"grads\[1\] is Float \[4\] on cpu but params\[1\] is Float \[3\]"):
        adam_step_one_bucket(op, params, [torch.randn(10), torch.randn(4)], [torch.zeros(10), torch.zeros(3)],
                             [torch.zeros(10), torch.zeros(3)], [], step, program, **op_kwargs)
    assert torch.equal(params[0], p) and int(step) == 0
    with pytest.raises(RuntimeError, match="malformed program"):
        adam_step_one_bucket(op, [params[0]], [torch.randn(10)], [torch.zeros(10)], [torch.zeros(10)], [], step,
                             torch.tensor([99.0, 3.0, 1.0], dtype=torch.float64), **op_kwargs)
    assert torch.equal(params[0], p) and int(step) == 0


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
