"""The ops of lrfused._C: their schemas, fakes and dispatch (``torch.library.opcheck``), the kernels
against the pure-PyTorch reference (on any layout, with deferred steps, with AMP's scalars), the
arguments both refuse, and the fallback to the reference when the library cannot be loaded."""

import os
import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lrfused
from helpers import (
    FLAGS,
    adam_row,
    adam_step_one_bucket,
    random_grads,
)
from lrfused import _reference, _rules, _schedule_encoding, _step_plan, schedules

# --- opcheck -----------------------------------------------------------------------------------------


pytestmark = pytest.mark.skipif(not lrfused.has_kernels(), reason="the compiled library is not loaded")


def program(device):
    return torch.tensor(schedules.step_decay(2, 0.5, 1e-2).encode(), dtype=torch.float64, device=device)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("extras", ["none", "scaler", "handle"])
def test_adam_step_of_one_bucket_with_its_own_program(device, amsgrad, extras):
    # A `schedule=` optimizer's call: the bucket's program is a schedule read at its step (group -1).
    from lrfused import _step_plan as P

    torch.manual_seed(0)
    params = [torch.randn(5, device=device), torch.randn(3, 2, device=device)]
    flags = P.FLAG_DECOUPLED | (P.FLAG_AMSGRAD if amsgrad else 0)
    rows = torch.tensor([adam_row(0, 2, 0, 0, -1, 0.9, 0.999, 1e-8, 0.01, flags)], dtype=torch.float64)
    args = (
        params,
        [torch.randn_like(p) for p in params],
        [torch.zeros_like(p) for p in params],
        [torch.zeros_like(p) for p in params],
        [torch.zeros_like(p) for p in params] if amsgrad else [],
        [torch.tensor(3, device=device)],
        rows,
        program(device),
        [],
        [],
        torch.zeros((), dtype=torch.int64, device=device),
        torch.zeros(1, dtype=torch.int64),
    )
    kwargs = {}
    if extras == "scaler":
        kwargs.update(
            grad_scale=torch.tensor(8.0, device=device),
            found_inf=torch.tensor(0.0, device=device),
            invalid_steps=torch.zeros((), dtype=torch.int64, device=device),
        )
    elif extras == "handle":
        kwargs.update(handle=torch.ops.lrfused.new_handle())
    torch.library.opcheck(torch.ops.lrfused.adam_step_.default, args, kwargs)


@pytest.mark.parametrize("epoch", [None, 7])
def test_advance_lr_(device, epoch):
    groups = torch.tensor(_rules.held(0.1) + _rules.held(0.01, 0.9), dtype=torch.float64, device=device)
    rules = torch.tensor(
        _rules.chain(schedules.Exponential(1.0, 0.5)) + _rules.set_(schedules.Cosine(0.01, 10)),
        dtype=torch.float64,
        device=device,
    )
    clock = torch.tensor(2, dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.lrfused.advance_lr_.default, (groups, clock, rules, epoch))


# A handle is a fresh identity at every call (the op is tagged nondeterministic_seeded), so the
# AOT test's comparison of an eager and a traced call's outputs cannot hold; tracing it is
# exercised by tests/test_compile.py.
NOT_COMPARABLE = ("test_schema", "test_autograd_registration", "test_faketensor")


def test_new_handle():
    torch.library.opcheck(torch.ops.lrfused.new_handle.default, (), test_utils=NOT_COMPARABLE)
    assert not torch.equal(torch.ops.lrfused.new_handle(), torch.ops.lrfused.new_handle())


def test_evaluate_schedule(device):
    # It returns the program's value as Python floats read on the host: a host utility (the
    # tests' C++ evaluator, the check of a program's structure), which no trace can hold.
    torch.library.opcheck(
        torch.ops.lrfused.evaluate_schedule.default,
        (program(device), 5),
        test_utils=("test_schema", "test_autograd_registration"),
    )
    assert torch.ops.lrfused.evaluate_schedule(program(device), 5)[0] == 1e-2 * 0.5**2


def test_validate_rules(device):
    rules = torch.tensor(_rules.keep() + _rules.chain(schedules.Step(1.0, 3)), dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.lrfused.validate_rules.default, (rules, 2))
    with pytest.raises(RuntimeError):
        torch.ops.lrfused.validate_rules(rules, 3)


def test_schedule_encoding():
    torch.library.opcheck(torch.ops.lrfused.schedule_encoding.default, ())
    rows = torch.ops.lrfused.schedule_encoding()
    # three limits, then one row of six numbers per kind (compared word for word in test_schedules.py)
    assert rows[0] == len(_schedule_encoding.LAYOUTS) and len(rows) == 3 + 6 * rows[0]


def step_arguments(device, deferred: bool):
    """adam_step_'s arguments: two buckets (float32 with AMSGrad, bfloat16), a deferred step."""
    from lrfused import _step_plan as P

    torch.manual_seed(0)
    params = [
        torch.randn(5, device=device),
        torch.randn(3, 2, device=device),
        torch.randn(4, device=device, dtype=torch.bfloat16),
    ]
    words = torch.tensor(_rules.held(0.1) + _rules.held(0.01, 0.9), dtype=torch.float64, device=device)
    rows = torch.tensor(
        [
            adam_row(0, 2, 0, 0, 0, 0.9, 0.999, 1e-8, 0.01, P.FLAG_AMSGRAD | P.FLAG_DECOUPLED),
            adam_row(2, 3, 0, 4, 1, 0.9, 0.999, 1e-8, 0.0, P.FLAG_MAXIMIZE),
        ],
        dtype=torch.float64,
    )
    rules = (
        [
            torch.tensor(
                _rules.indexed(
                    _rules.chain(schedules.Exponential(1.0, 0.5)) + _rules.set_(schedules.Cosine(0.01, 10)), 2
                ),
                dtype=torch.float64,
                device=device,
            )
        ]
        if deferred
        else []
    )
    clocks = [torch.tensor(2, dtype=torch.int64, device=device)] if deferred else []
    return (
        params,
        [torch.randn_like(p) for p in params],
        [torch.zeros_like(p) for p in params],
        [torch.zeros_like(p) for p in params],
        [torch.zeros_like(p) for p in params[:2]],
        [torch.tensor(0, device=device), torch.tensor(4, device=device)],
        rows,
        words,
        clocks,
        rules,
        torch.zeros((), dtype=torch.int64, device=device),
        torch.tensor([0, 0], dtype=torch.int64),
    )


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("extras", ["none", "scaler"])
def test_adam_step_(device, deferred, extras):
    kwargs = {}
    if extras == "scaler":
        kwargs.update(
            grad_scale=torch.tensor(8.0, device=device),
            found_inf=torch.tensor(0.0, device=device),
            invalid_steps=torch.zeros((), dtype=torch.int64, device=device),
        )
    torch.library.opcheck(torch.ops.lrfused.adam_step_.default, step_arguments(device, deferred), kwargs)


# The eager table's ops hold tensors between calls and read the grads of the params they hold:
# they run only in an eager step (a compiled step takes adam_step_), so they have no fake kernel
# and are checked for their schema and autograd registration.
EAGER_ONLY = ("test_schema", "test_autograd_registration")


def test_table_step_(device):
    params, grads, exp_avgs, exp_avg_sqs, maxes, steps, rows, words, clocks, rules, applied, pending = step_arguments(
        device, True
    )
    sources = [p.clone().requires_grad_() for p in params]
    for source, grad in zip(sources, grads):
        source.grad = grad
    table = torch.ops.lrfused.new_handle()
    torch.library.opcheck(
        torch.ops.lrfused.set_step_table.default,
        (table, sources, [s.detach() for s in sources], exp_avgs, exp_avg_sqs, maxes, []),
        test_utils=EAGER_ONLY,
    )
    torch.library.opcheck(
        torch.ops.lrfused.table_step_.default,
        (table, rows, steps, words, clocks, rules, applied, pending),
        test_utils=EAGER_ONLY,
    )
    # opcheck calls the ops on copies: the table is set again from these very sources.
    torch.ops.lrfused.set_step_table(table, sources, [s.detach() for s in sources], exp_avgs, exp_avg_sqs, maxes, [])
    assert torch.ops.lrfused.table_step_(table, rows, steps, words, clocks, rules, applied, pending)
    sources[0].grad = None  # no longer the table's pattern: refused, nothing changed
    before = [int(s) for s in steps]
    assert not torch.ops.lrfused.table_step_(table, rows, steps, words, clocks, rules, applied, pending)
    assert [int(s) for s in steps] == before


# --- the kernels against the reference ---------------------------------------------------------------


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
            adam_step_one_bucket(
                op,
                ps,
                gs,
                ms,
                vs,
                xs if amsgrad else [],
                step,
                program,
                beta1=0.9,
                beta2=0.99,
                eps=1e-8,
                weight_decay=weight_decay,
                decoupled_weight_decay=decoupled,
                amsgrad=amsgrad,
                maximize=maximize,
            )
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
    adam_step_one_bucket(
        op, ps, gs, m, v, [], step, program, grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(1.0), **op_kwargs
    )
    assert torch.equal(ps[0], p) and torch.equal(gs[0], g) and int(step) == 0, "an overflow step changes nothing"
    adam_step_one_bucket(
        op, ps, gs, m, v, [], step, program, grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(0.0), **op_kwargs
    )
    assert int(step) == 1
    torch.testing.assert_close(gs[0], g / 1024, rtol=0, atol=0)  # the unscaled grad is written back
    ps2, m2, v2, step2 = [p.clone()], [torch.zeros(100)], [torch.zeros(100)], torch.tensor(0)
    adam_step_one_bucket(op, ps2, [g / 1024], m2, v2, [], step2, program, **op_kwargs)
    torch.testing.assert_close(ps[0], ps2[0], rtol=0, atol=0)


def test_bad_op_arguments_change_nothing(op_kwargs):
    p = torch.randn(10)
    program = torch.tensor(schedules.constant(1e-2).encode(), dtype=torch.float64)
    params, step = [p.clone(), torch.randn(3)], torch.tensor(0)
    op = torch.ops.lrfused.adam_step_
    with pytest.raises(RuntimeError, match=r"grads\[1\] is Float \[4\] on cpu but params\[1\] is Float \[3\]"):
        adam_step_one_bucket(
            op,
            params,
            [torch.randn(10), torch.randn(4)],
            [torch.zeros(10), torch.zeros(3)],
            [torch.zeros(10), torch.zeros(3)],
            [],
            step,
            program,
            **op_kwargs,
        )
    assert torch.equal(params[0], p) and int(step) == 0
    with pytest.raises(RuntimeError, match="malformed program"):
        adam_step_one_bucket(
            op,
            [params[0]],
            [torch.randn(10)],
            [torch.zeros(10)],
            [torch.zeros(10)],
            [],
            step,
            torch.tensor([99.0, 3.0, 1.0], dtype=torch.float64),
            **op_kwargs,
        )
    assert torch.equal(params[0], p) and int(step) == 0


def layouts():
    """(param, grad) pairs of odd sizes and layouts: empty, one element, transposed, offset views."""
    sizes = st.integers(0, 70)
    return st.tuples(sizes, sizes, st.sampled_from(["contiguous", "transposed", "offset", "grad_transposed"]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(layouts(), min_size=1, max_size=4),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    st.booleans(),
    st.integers(0, 2**40),
)
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

    program = torch.tensor(schedules.warmup_cosine(10, 10**6, peak_value=1e-2).encode(), dtype=torch.float64)
    results = []
    for op in (torch.ops.lrfused.adam_step_, _reference.adam_step_):
        params, grads, (m, v, x) = build()
        step = torch.tensor(clock)
        adam_step_one_bucket(
            op,
            params,
            grads,
            m,
            v,
            x if amsgrad else [],
            step,
            program,
            beta1=0.9,
            beta2=0.99,
            eps=1e-8,
            weight_decay=0.01,
            decoupled_weight_decay=True,
            amsgrad=amsgrad,
        )
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
    for moment, grad in zip(ours[len(shapes) : 2 * len(shapes)], grads):
        assert torch.equal(moment != 0, grad != 0), "every exp_avg element with a gradient was written"


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


def test_mixed_dtypes_in_one_op_call_are_refused(op_kwargs):
    # (mixed devices are checked by the same code; a CPU-only machine cannot build that call)
    program = torch.tensor(schedules.constant(1e-2).encode(), dtype=torch.float64)
    params = [torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16)]
    step = torch.tensor(0)
    with pytest.raises(RuntimeError, match=r"params\[1\] has dtype BFloat16 but its bucket's first param has another"):
        adam_step_one_bucket(
            torch.ops.lrfused.adam_step_,
            params,
            [torch.ones(3), torch.ones(3, dtype=torch.bfloat16)],
            [torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16)],
            [torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16)],
            [],
            step,
            program,
            **op_kwargs,
        )
    assert torch.equal(params[0], torch.zeros(3)) and int(step) == 0


def test_a_replayed_call_applies_its_deferred_steps_once():
    """What a CUDA graph replay does to a captured call: the same arguments again. The deferred
    steps it carries apply the first time only; the optimizer update applies each time."""
    words = torch.tensor(_rules.held(0.1) + _rules.held(0.2), dtype=torch.float64)
    rules = torch.tensor(
        _rules.indexed(
            _rules.chain(schedules.Exponential(0.1, 0.5)) + _rules.chain(schedules.Exponential(0.2, 0.5)), 2
        ),
        dtype=torch.float64,
    )
    clock = torch.zeros((), dtype=torch.int64)
    applied = torch.zeros((), dtype=torch.int64)
    pending = torch.tensor([0, 0], dtype=torch.int64)  # the first step's sequence number, its clock slot
    p, g = torch.ones(3), torch.full((3,), 0.5)
    m, v, step = torch.zeros(3), torch.zeros(3), torch.zeros((), dtype=torch.int64)
    rows = torch.tensor([adam_row(0, 1, 0, 0, 0, 0.9, 0.999, 1e-8, 0.0, 0)], dtype=torch.float64)
    for call in range(3):
        torch.ops.lrfused.adam_step_([p], [g], [m], [v], [], [step], rows, words, [clock], [rules], applied, pending)
        assert words.tolist()[2::4] == pytest.approx([0.05, 0.1], rel=1e-15), call
        assert (int(clock), int(applied), int(step)) == (1, 1, call + 1)


@pytest.mark.parametrize("seed", range(4))
def test_the_op_matches_its_reference_with_deferred_steps(seed):
    rng = random.Random(seed)
    groups = rng.randint(1, 3)
    words = torch.tensor([w for g in range(groups) for w in _rules.held(rng.uniform(0.01, 0.1))], dtype=torch.float64)
    kinds = [
        lambda: schedules.Exponential(1.0, 0.9),
        lambda: schedules.Step(1.0, 2, 0.5),
        lambda: schedules.Cosine(1.0, 10, 0.01),
    ]
    rule_lists = []
    for _ in range(rng.randint(1, 4)):
        nodes = [w for _ in range(groups) for w in rng.choice([_rules.chain, _rules.set_])(rng.choice(kinds)())]
        rule_lists.append(torch.tensor(_rules.indexed(nodes, groups), dtype=torch.float64))
    clock_count = min(2, len(rule_lists))
    slots = [rng.randrange(clock_count) for _ in rule_lists]
    torch.manual_seed(seed)
    shapes = [(rng.randint(1, 50),) for _ in range(groups)]
    params = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    rows = torch.tensor(
        [adam_row(g, g + 1, 0, 4 * g, g, 0.9, 0.999, 1e-8, 0.01, _step_plan.FLAG_DECOUPLED) for g in range(groups)],
        dtype=torch.float64,
    )

    def run(op):
        state = dict(
            p=[x.clone() for x in params],
            m=[torch.zeros(s) for s in shapes],
            v=[torch.zeros(s) for s in shapes],
            steps=[torch.zeros((), dtype=torch.int64) for _ in shapes],
            words=words.clone(),
            clocks=[torch.tensor(3), torch.tensor(5)][:clock_count],
            applied=torch.tensor(2),
        )
        pending = torch.tensor([2] + slots, dtype=torch.int64)
        op(
            state["p"],
            [x.clone() for x in grads],
            state["m"],
            state["v"],
            [],
            state["steps"],
            rows,
            state["words"],
            state["clocks"],
            rule_lists,
            state["applied"],
            pending,
        )
        return state

    ours, reference = run(torch.ops.lrfused.adam_step_), run(lrfused._reference.adam_step_)
    assert torch.allclose(ours["words"], reference["words"], rtol=1e-14, atol=0, equal_nan=True)
    assert [int(c) for c in ours["clocks"]] == [int(c) for c in reference["clocks"]]
    assert int(ours["applied"]) == int(reference["applied"]) == 2 + len(rule_lists)
    # The tolerance of the other op-vs-reference tests: the reference orders a few operations
    # differently, which moves a float32 element by an ulp or so.
    for a, b in zip(ours["p"] + ours["m"] + ours["v"], reference["p"] + reference["m"] + reference["v"]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


# --- what the reference and the kernels refuse -------------------------------------------------------


def _op_args(op_kwargs):
    return dict(
        params=[torch.zeros(3), torch.zeros(2)],
        grads=[torch.ones(3), torch.ones(2)],
        exp_avgs=[torch.zeros(3), torch.zeros(2)],
        exp_avg_sqs=[torch.zeros(3), torch.zeros(2)],
        max_exp_avg_sqs=[],
        step=torch.tensor(0),
        program=torch.tensor(schedules.constant(1e-2).encode(), dtype=torch.float64),
        **op_kwargs,
    )


BAD_OP_ARGS = {
    "beta1 nan": lambda a: a.update(beta1=float("nan")),
    "beta2 -0.1": lambda a: a.update(beta2=-0.1),
    "beta2 1": lambda a: a.update(beta2=1.0),
    "eps nan": lambda a: a.update(eps=float("nan")),
    "weight_decay -1": lambda a: a.update(weight_decay=-1.0),
    "grads short": lambda a: a["grads"].pop(),
    "amsgrad without max": lambda a: a.update(amsgrad=True),
    "grad shape": lambda a: a["grads"].__setitem__(1, torch.ones(3)),
    "state dtype": lambda a: a["exp_avgs"].__setitem__(0, torch.zeros(3, dtype=torch.bfloat16)),
    "param dtype": lambda a: a["params"].__setitem__(1, torch.zeros(2, dtype=torch.float16)),
    "float64 params": lambda a: a.update(params=[p.double() for p in a["params"]]),
    "int params": lambda a: a.update(params=[p.int() for p in a["params"]]),
    "step float": lambda a: a.update(step=torch.tensor(0.0)),
    "step two elements": lambda a: a.update(step=torch.zeros(2, dtype=torch.int64)),
    "program float32": lambda a: a.update(program=a["program"].float()),
    "program malformed": lambda a: a.update(program=torch.tensor([99.0, 3.0, 1.0], dtype=torch.float64)),
    "grad_scale float64": lambda a: a.update(grad_scale=torch.ones(1, dtype=torch.float64)),
    "found_inf two": lambda a: a.update(found_inf=torch.zeros(2)),
    "invalid_steps float": lambda a: a.update(invalid_steps=torch.zeros(())),
}


def _call_one_bucket(op, args):
    positional = [
        args.pop(k) for k in ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "step", "program")
    ]
    adam_step_one_bucket(op, *positional, **args)
    return positional


@pytest.mark.hostile
@pytest.mark.parametrize("case", list(BAD_OP_ARGS))
@pytest.mark.parametrize("op", ["compiled", "reference"])
def test_the_reference_and_the_kernels_refuse_the_same_calls(case, op, op_kwargs):
    if op == "compiled" and not lrfused.has_kernels():
        pytest.skip("the compiled library is not loaded")
    args = _op_args(op_kwargs)
    BAD_OP_ARGS[case](args)
    tensors = list(args["params"]) + list(args["exp_avgs"]) + list(args["exp_avg_sqs"]) + [args["step"]]
    before = [t.clone() for t in tensors]
    call = torch.ops.lrfused.adam_step_ if op == "compiled" else _reference.adam_step_
    with pytest.raises(RuntimeError, match="adam_step_: "):
        _call_one_bucket(call, args)
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))


@pytest.mark.hostile
def test_the_reference_matches_the_kernels_on_a_good_call(op_kwargs):
    if not lrfused.has_kernels():
        pytest.skip("the compiled library is not loaded")
    results = []
    for call in (torch.ops.lrfused.adam_step_, _reference.adam_step_):
        args = _op_args(op_kwargs)
        args["grads"] = random_grads(args["params"], 1)
        results.append(_call_one_bucket(call, args)[0])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert not torch.equal(results[0][0], torch.zeros(3)), "the good call moved the params"


@pytest.mark.hostile
@pytest.mark.parametrize("library, fragment", [(None, "no compiled extension"), (b"not a library", "failed to load: ")])
def test_the_fallback_warning_names_the_cause(tmp_path, library, fragment):
    # A copy of the package without its library (an install that never built it), or with a
    # broken one; Python's own message would say "partially initialized module" for both. (Under
    # another name: an editable install would find the real library for "lrfused._C".)
    import shutil

    source = lrfused.__path__[0]
    copy_dir = tmp_path / "lrfused_copy"
    shutil.copytree(source, copy_dir, ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    if library is not None:
        (copy_dir / "_C.abi3.so").write_bytes(library)
    code = (
        "import sys, warnings\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import lrfused_copy\n"
        "assert not lrfused_copy.has_kernels()\n"
        "print('|'.join(str(w.message) for w in caught))\n"
    )
    env = dict(os.environ, LRFUSED_REQUIRE_KERNELS="0")  # CI's CUDA check sets it to 1
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert fragment in result.stdout and "partially initialized" not in result.stdout, result.stdout
