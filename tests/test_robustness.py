"""Nothing silently wrong: non-finite gradients, odd layouts, long runs, a missing library."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lrfused
from lrfused import _reference, schedules
from lrfused.lr_scheduler._device import device_side
from lrfused.optim import binding_of
from helpers import adam_step_one_bucket, max_relative_error


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


def layouts():
    """(param, grad) pairs of odd sizes and layouts: empty, one element, transposed, offset views."""
    sizes = st.integers(0, 70)
    return st.tuples(sizes, sizes, st.sampled_from(["contiguous", "transposed", "offset", "grad_transposed"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(layouts(), min_size=1, max_size=4), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       st.booleans(), st.integers(0, 2 ** 40))
def test_compiled_op_equals_reference_on_any_layout(shapes, dtype, amsgrad, clock):
    # `clock`: the step count the bucket's schedule and bias corrections are read at.
    torch.manual_seed(0)

    def build():
        params, grads = [], []
        for rows, cols, layout in shapes:
            torch.manual_seed(rows * 100 + cols)
            if layout == "transposed":
                p = torch.randn(cols, rows).to(dtype).t()
            elif layout == "offset":
                p = torch.randn(rows * cols + 1).to(dtype)[1:].view(rows, cols)
            else:
                p = torch.randn(rows, cols).to(dtype)
            g = torch.randn(rows, cols).to(dtype)
            if layout == "grad_transposed":
                g = torch.randn(cols, rows).to(dtype).t()
            params.append(p)
            grads.append(g)
        states = [[torch.zeros_like(p) for p in params] for _ in range(3)]
        return params, grads, states

    program = torch.tensor(schedules.warmup_cosine(10, 10 ** 6, peak_value=1e-2).encode(), dtype=torch.float64)
    results = []
    for op in (torch.ops.lrfused.adam_step_, _reference.adam_step_):
        params, grads, (m, v, x) = build()
        step = torch.tensor(clock)
        adam_step_one_bucket(op, params, grads, m, v, x if amsgrad else [], step, program, beta1=0.9, beta2=0.99,
                             eps=1e-8, weight_decay=0.01, decoupled_weight_decay=True, amsgrad=amsgrad)
        results.append(params + m + v + [step])
    ours, reference = results
    # In float32 the two differ only by the order of operations (a few ulps, as before). In bf16 and
    # fp16 both compute in float32 and round once to the param dtype: at most that rounding apart.
    # One update moves a param by about the lr (5e-3 here), so a looser tolerance would pass a kernel
    # that never writes; the states start at zero and must hold the moments of the grads.
    if dtype == torch.float32:
        tolerance = dict(rtol=1e-6, atol=1e-6)
    else:
        tolerance = dict(rtol=torch.finfo(dtype).eps, atol=0)
    for a, b in zip(ours, reference):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, **tolerance)
        else:
            assert torch.equal(a, b)
    _, grads, _ = build()
    for moment, grad in zip(ours[len(shapes):2 * len(shapes)], grads):
        assert torch.equal(moment != 0, grad != 0), "every exp_avg element with a gradient was written"


def test_counters_do_not_stop_at_two_to_the_24():
    # torch keeps step in float32, where 2**24 + 1 == 2**24; lrfused's counters are int64.
    w = torch.zeros(4, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], lr=1e-3, schedule=schedules.exponential_decay(1 - 1e-7))
    w.grad = torch.ones(4)
    opt.step()
    start = 2 ** 24 + 3
    opt.state[w]["step"].fill_(start)
    for _ in range(3):
        opt.step()
    assert int(opt.state[w]["step"]) == start + 3
    # The schedule is evaluated at the exact clock, in float64.
    program = torch.tensor(schedules.exponential_decay(1 - 1e-7).encode(), dtype=torch.float64)
    for t in (2 ** 24 + 1, 10 ** 6, 2 ** 40 + 7):
        lr, _ = lrfused._ops.evaluate_schedule(program, t)
        assert lr == (1 - 1e-7) ** float(t)


def test_scheduler_clock_past_a_million_steps():
    w = torch.zeros(4, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], lr=1.0)
    sched = lrfused.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1000, T_mult=2)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0), T_0=1000, T_mult=2)
    for scheduler in (sched, reference):
        scheduler.step(10 ** 6 + 17)
        for _ in range(3):
            scheduler.step()
    assert sched.get_last_lr() == reference.get_last_lr()
    # The device words first: reading them applies the scheduler steps deferred to the next
    # optimizer step, which move the clock.
    assert binding_of(opt).lr_words().tolist() == pytest.approx(reference.get_last_lr(), rel=1e-12)
    assert int(device_side(sched).clock) == 10 ** 6 + 20


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


@pytest.mark.parametrize("require", ["0", "1"])
def test_missing_library_falls_back_or_fails_as_asked(require):
    code = (
        "import sys, warnings\n"
        "sys.modules['lrfused._C'] = None  # as if the library were absent or built for another torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import lrfused, torch\n"
        "    import lrfused.optim\n"
        "messages = [str(w.message) for w in caught if 'compiled kernels' in str(w.message)]\n"
        "assert len(messages) == 1 and 'pip install --no-build-isolation -e .' in messages[0], messages\n"
        "assert not lrfused.has_kernels()\n"
        "w = torch.ones(3, requires_grad=True)\n"
        "opt = lrfused.FusedScheduledAdam([w], lr=0.1)\n"
        "w.grad = torch.ones(3)\n"
        "opt.step()\n"
        "assert torch.allclose(w, torch.full((3,), 0.9)), w\n"
        "print('fallback ok')\n"
    )
    env = dict(os.environ, LRFUSED_REQUIRE_KERNELS=require)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if require == "1":
        assert result.returncode != 0 and "compiled kernels could not be loaded" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert "fallback ok" in result.stdout


def _fresh():
    w = torch.zeros(3, requires_grad=True)
    opt = lrfused.FusedScheduledAdam([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    return w, opt


@pytest.mark.parametrize("build,error,fragment", [
    (lambda o: lrfused.lr_scheduler.StepLR(o, step_size=0), ValueError, "Invalid step_size: 0"),
    (lambda o: lrfused.lr_scheduler.StepLR(o, step_size=3, gamma=0.0), ValueError, "Invalid gamma: 0.0"),
    (lambda o: lrfused.lr_scheduler.ExponentialLR(o, gamma=-0.5), ValueError, "Invalid gamma: -0.5"),
    (lambda o: lrfused.lr_scheduler.CosineAnnealingLR(o, T_max=0), ValueError, "Invalid T_max: 0"),
    (lambda o: lrfused.lr_scheduler.MultiStepLR(o, milestones=[2, 3.5]), TypeError, "milestones must be an int"),
    (lambda o: lrfused.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=0), ValueError, "total_steps"),
    (lambda o: lrfused.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError,
     "pct_start"),
    (lambda o: lrfused.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0"),
])
def test_bad_scheduler_arguments_change_nothing(build, error, fragment):
    w, opt = _fresh()
    before_w, before_state = w.detach().clone(), {k: v.clone() for k, v in opt.state[w].items()}
    before_lr = opt.param_groups[0]["lr"]
    with pytest.raises(error, match=fragment):
        build(opt)
    assert torch.equal(w, before_w)
    assert all(torch.equal(v, before_state[k]) for k, v in opt.state[w].items())
    # The optimizer still steps with its own lr: a refused scheduler changed nothing.
    assert opt.param_groups[0]["lr"] == before_lr
    w.grad = torch.ones(3)
    opt.step()
    assert binding_of(opt).lr_words().tolist() == [before_lr]


def test_mixed_dtypes_in_one_op_call_are_refused(op_kwargs):
    # (mixed devices are checked by the same code; a CPU-only machine cannot build that call)
    program = torch.tensor(schedules.constant(1e-2).encode(), dtype=torch.float64)
    params = [torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16)]
    step = torch.tensor(0)
    with pytest.raises(RuntimeError, match=r"params\[1\] has dtype BFloat16 but its bucket's first param has another"):
        adam_step_one_bucket(torch.ops.lrfused.adam_step_, params, [torch.ones(3), torch.ones(3, dtype=torch.bfloat16)],
                             [torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16)],
                             [torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16)], [], step, program, **op_kwargs)
    assert torch.equal(params[0], torch.zeros(3)) and int(step) == 0
