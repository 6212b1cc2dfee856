"""Schedules: the Python reference, the C++ evaluator of csrc/common/lr_schedule.h, and their
encoding agree; factories follow their documented formulas; bad arguments are refused."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrfused import _ops
from lrfused import _schedule_encoding as E
from lrfused import schedules as S
from lrfused._schedule_encoding import encoding_rows

finite = dict(allow_nan=False, allow_infinity=False)
clocks = st.one_of(st.integers(0, 300), st.integers(0, 2**40))


def leaf_schedules():
    pos = st.floats(1e-6, 10.0, **finite)
    fraction = st.floats(0.0, 1.0, **finite)
    return st.one_of(
        st.builds(S.Constant, pos),
        st.builds(S.Step, pos, st.integers(1, 1000), st.floats(0.01, 1.0, **finite)),
        st.builds(S.MultiStep, pos, st.lists(st.integers(0, 500), max_size=6), st.floats(0.01, 1.0, **finite)),
        st.builds(S.ConstantFactor, pos, fraction, st.integers(0, 100)),
        st.builds(S.Linear, pos, fraction, fraction, st.integers(1, 1000)),
        st.builds(S.Exponential, pos, st.floats(0.5, 1.0, **finite)),
        st.builds(S.Polynomial, pos, st.integers(1, 1000), st.floats(0.1, 4.0, **finite), st.floats(0, 1e-3, **finite)),
        st.builds(S.Cosine, pos, st.integers(1, 10**6), st.floats(0, 1e-3, **finite), st.booleans()),
        st.builds(S.WarmRestarts, pos, st.integers(1, 50), st.integers(1, 3), st.floats(0, 1e-3, **finite)),
        st.builds(
            lambda b, m, total, ratio, mode, gamma, cm: S.Cyclic(
                b, b + m, total, ratio, mode=mode, gamma=gamma, cycle_momentum=cm
            ),
            pos,
            pos,
            st.integers(2, 4000).map(float),
            st.floats(0.05, 1.0, **finite),
            st.integers(0, 2),
            st.floats(0.9, 1.0, **finite),
            st.booleans(),
        ),
        st.builds(
            lambda i, n, pct, three, cos, cm: S.OneCycle(
                i / 25, i, i / 25e4, n, pct_start=pct, three_phase=three, anneal_cos=cos, cycle_momentum=cm
            ),
            pos,
            st.integers(100, 10**6),
            st.floats(0.05, 0.45, **finite),
            st.booleans(),
            st.booleans(),
            st.booleans(),
        ),
        st.builds(S.InverseSqrt, pos, st.floats(1.0, 1e4, **finite), st.floats(1.0, 1e4, **finite)),
        st.builds(S.OneMinusSqrt, pos, st.floats(0, 1e-3, **finite), st.integers(1, 10**5)),
        st.builds(S.ExpRamp, st.floats(1e-7, 1e-3, **finite), st.floats(1e-2, 10, **finite), st.integers(2, 1000)),
        st.builds(S.LinearRamp, st.floats(1e-7, 1e-3, **finite), st.floats(1e-2, 10, **finite), st.integers(2, 1000)),
    )


def composite_schedules():
    leaves = leaf_schedules()
    return st.one_of(
        leaves,
        st.builds(lambda a, b, k: S.join([a, b], [k]), leaves, leaves, st.integers(0, 200)),
        st.builds(lambda a, b: S.product(a, b), leaves, leaves),
        st.builds(lambda a, k: S.warmup(a, k), leaves, st.integers(1, 100)),
    )


def cpp_value(schedule, t):
    program = torch.tensor(schedule.encode(), dtype=torch.float64)
    return _ops.evaluate_schedule(program, t)


def contains_one_cycle(schedule):
    return isinstance(schedule, S.OneCycle) or any(contains_one_cycle(c) for c in schedule.children)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300) or (math.isnan(a) and math.isnan(b))


@settings(max_examples=400, deadline=None)
@given(composite_schedules(), clocks)
def test_python_and_cpp_agree(schedule, t):
    lr, beta1 = schedule.value(t)
    cpp_lr, cpp_beta1 = cpp_value(schedule, t)
    assert close(lr, cpp_lr), (schedule, t, lr, cpp_lr)
    assert math.isfinite(cpp_lr)
    if not contains_one_cycle(schedule):
        # OneCycleLR extrapolates one step past its end at t = total_steps, as torch does, which
        # can dip below zero with linear annealing; every other kind stays non-negative.
        assert cpp_lr >= 0
    if beta1 is None:
        assert math.isnan(cpp_beta1)
    else:
        assert close(beta1, cpp_beta1)


@settings(max_examples=200, deadline=None)
@given(composite_schedules(), clocks)
def test_decode_inverts_encode(schedule, t):
    decoded = E.decode(schedule.encode())
    assert decoded.encode() == schedule.encode()
    assert schedule.encoded_length() == len(schedule.encode())
    assert close(decoded(t), schedule(t))


def one_of_each_kind():
    return [
        S.Constant(2.0),
        S.Tabulated(lambda t: 3.0 + t, horizon=6),
        S.Step(1.0, 2),
        S.MultiStep(1.0, [1, 4, 4]),
        S.ConstantFactor(1.0, 0.5, 3),
        S.Linear(1.0, 0.5, 1.0, 4),
        S.Exponential(1.0, 0.9),
        S.Polynomial(1.0, 10),
        S.Cosine(1.0, 10),
        S.WarmRestarts(1.0, 3),
        S.Cyclic(1.0, 2.0, 4.0, 0.5),
        S.OneCycle(0.1, 1.0, 1e-4, 100),
        S.join([S.Constant(1.0), S.Constant(2.0), S.Step(1.0, 2)], [3, 5]),
        S.product(S.Constant(2.0), S.Exponential(1.0, 0.5)),
        S.InverseSqrt(1.0, 10.0, 10.0),
        S.OneMinusSqrt(1.0, 0.0, 10),
        S.ExpRamp(1e-3, 1.0, 10),
        S.LinearRamp(1e-3, 1.0, 10),
        E.Held(0.25, 0.85),
    ]


def test_every_kind_is_evaluated_by_cpp():
    # A kind the C++ evaluator does not know evaluates to NaN.
    examples = one_of_each_kind()
    assert sorted(type(s).kind for s in examples) == sorted(E.NODE_CLASSES)
    for schedule in examples:
        for t in (0, 1, 2, 5):
            assert close(schedule(t), cpp_value(schedule, t)[0]), (schedule, t)


def test_cpp_encoding_matches_the_table():
    # The two tables of node layouts (lrfused/schedules/_layout.py, kNodeLayouts in lr_schedule.h).
    assert _ops.schedule_encoding() == encoding_rows()


@pytest.mark.parametrize(
    "schedule",
    one_of_each_kind()
    + [
        S.Cyclic(0.1, 1.0, 6.0, 0.5, mode=E.CYCLIC_TABLE_BY_CYCLE, scale_table=S.Tabulated(lambda c: 0.5**c, horizon=9))
    ],
    ids=lambda s: type(s).__name__,
)
def test_each_node_is_laid_out_as_the_table_says(schedule):
    layout = E.LAYOUTS[schedule.kind]
    words = schedule.encode()
    params = words[2 : 2 + schedule.param_count()]
    assert layout.param_count(params) == len(params) == len(schedule.params())
    assert layout.child_count(params) == len(schedule.children)
    # each fixed word is the attribute the table names it after
    for field, word in zip(layout.fields, params):
        assert float(getattr(schedule, field.partition(":")[0])) == word, field
    # the C++ validator reads the same layout: a word missing or one too many is refused
    program = torch.tensor(words, dtype=torch.float64)
    _ops.validate_schedule(program)
    for bad in (words[:-1], words + [0.0]):
        bad = [bad[0], float(len(bad))] + bad[2:]
        with pytest.raises(RuntimeError, match="schedule"):
            _ops.validate_schedule(torch.tensor(bad, dtype=torch.float64))


def test_a_table_past_its_horizon_is_nan_in_cpp_and_an_error_in_python():
    table = S.Tabulated(lambda t: 1.0 + t, horizon=4)
    assert cpp_value(table, 3)[0] == 4.0
    assert math.isnan(cpp_value(table, 4)[0])
    with pytest.raises(ValueError, match="horizon=4, asked for t=4"):
        table(4)
    assert E.decode(table.encode())(2) == 3.0 and math.isnan(E.decode(table.encode())(4))


def test_factories_follow_their_formulas():
    cos = S.cosine_decay(100, alpha=0.1, init_value=2.0)
    assert cos(0) == 2.0 and cos(100) == pytest.approx(0.2) and cos(150) == pytest.approx(0.2)
    assert cos(50) == pytest.approx(0.2 + 1.8 * 0.5)
    periodic = S.cosine_decay(100, init_value=1.0, periodic=True)
    assert periodic(150) == pytest.approx(0.5)
    wsd = S.warmup_stable_decay(10, 20, 30, peak_value=1.0, end_value=0.1, decay="1-sqrt")
    assert wsd(0) == 0.0 and wsd(10) == 1.0 and wsd(29) == 1.0
    assert wsd(30 + 15) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)))
    assert wsd(100) == pytest.approx(0.1)
    inv = S.inverse_sqrt(warmup_steps=4)
    assert [inv(t) for t in range(5)] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert inv(16) == pytest.approx(1 / math.sqrt(16 / 4))
    ramp = S.lr_range_exp(1e-6, 1.0, 7)
    assert ramp(0) == pytest.approx(1e-6) and ramp(6) == pytest.approx(1.0) and ramp(3) == pytest.approx(1e-3)
    assert S.lr_range_linear(0.0, 1.0, 11)(5) == pytest.approx(0.5)
    assert S.step_decay(3, 0.5)(7) == 0.25
    assert S.multistep_decay([2, 2, 5])(4) == pytest.approx(0.01)
    assert S.exponential_decay(0.5)(3) == 0.125
    assert S.polynomial_decay(10, power=2.0)(5) == 0.25
    assert S.one_cycle(100, max_value=1.0)(29) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "factory,kwargs,fragment",
    [
        (S.step_decay, dict(step_size=0), "Invalid step_size: 0"),
        (S.cosine_decay, dict(decay_steps=0), "Invalid period: 0"),
        (S.exponential_decay, dict(gamma=float("nan")), "Invalid gamma: nan"),
        (S.one_cycle, dict(total_steps=0), "Invalid total_steps: 0"),
        (S.one_cycle, dict(total_steps=10, pct_start=1.5), "pct_start, but got 1.5"),
        (S.polynomial_decay, dict(total_steps=-3), "Invalid total_iters: -3"),
        (S.lr_range_exp, dict(start_lr=0.0, end_lr=1.0, num_iter=10), "start_lr > 0"),
        (S.cyclic, dict(base_value=0.1, max_value=1.0, mode="sawtooth"), "mode is invalid"),
    ],
)
def test_bad_factory_arguments(factory, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        factory(**kwargs)


def test_milestones_must_be_ints():
    with pytest.raises(TypeError, match="milestones must be an int, got 2.5"):
        S.multistep_decay([1, 2.5])


def test_too_deep_nesting_is_refused():
    s = S.constant(1.0)
    for _ in range(4):
        s = S.product(s)
    with pytest.raises(ValueError, match="nests 5 levels deep"):
        s.encode()


# --- against the libraries that define these schedules -------------------------------------------------


@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("total_steps", [10, 37])
def test_one_cycle_is_torchs_then_holds_its_final_value(anneal_strategy, three_phase, total_steps):
    # torch's OneCycleLR over its cycle; past the cycle's last step, the final value
    # max_value / div_factor / final_div_factor is held, as optax holds it (torch raises there,
    # after extrapolating its last phase one step, negative with linear annealing).
    kw = dict(anneal_strategy=anneal_strategy, div_factor=10.0, final_div_factor=100.0, three_phase=three_phase)
    schedule = S.one_cycle(total_steps, max_value=2.0, **kw)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=total_steps, cycle_momentum=False, **kw)
    for t in range(total_steps):
        assert schedule(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), t
        if t < total_steps - 1:
            opt.step()
            sched.step()
    final = 2.0 / 10.0 / 100.0
    for t in (total_steps - 1, total_steps, total_steps + 1, 10 * total_steps, 2**40):
        assert schedule(t) == pytest.approx(final, rel=1e-12), t
        assert cpp_value(schedule, t)[0] == pytest.approx(final, rel=1e-12), t


@pytest.mark.parametrize("decay,hf_decay", [("linear", "linear"), ("cosine", "cosine"), ("1-sqrt", "1-sqrt")])
@pytest.mark.parametrize("warmup_steps,stable_steps", [(0, 0), (0, 5), (4, 0), (4, 5)])
def test_warmup_stable_decay_is_hugging_faces_including_no_warmup(decay, hf_decay, warmup_steps, stable_steps):
    transformers = pytest.importorskip("transformers")
    decay_steps = 7
    schedule = S.warmup_stable_decay(warmup_steps, stable_steps, decay_steps, decay=decay)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    hf = transformers.get_wsd_schedule(
        opt,
        num_warmup_steps=warmup_steps,
        num_stable_steps=stable_steps,
        num_decay_steps=decay_steps,
        decay_type=hf_decay,
    )
    for t in range(warmup_steps + stable_steps + decay_steps + 4):
        expected = hf.lr_lambdas[0](t)
        assert schedule(t) == pytest.approx(expected, rel=1e-12, abs=1e-15), t
        assert cpp_value(schedule, t)[0] == pytest.approx(expected, rel=1e-12, abs=1e-15), t


@pytest.mark.parametrize("warmup_steps", [0, 3])
def test_warmup_cosine_is_hugging_faces_including_no_warmup(warmup_steps):
    # The Hugging Face Trainer's default warm-up is 0 steps; optax takes 0 too.
    transformers = pytest.importorskip("transformers")
    decay_steps = 12
    schedule = S.warmup_cosine(warmup_steps, decay_steps)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    hf = transformers.get_cosine_schedule_with_warmup(opt, warmup_steps, warmup_steps + decay_steps)
    for t in range(warmup_steps + decay_steps + 1):
        assert schedule(t) == pytest.approx(hf.lr_lambdas[0](t), rel=1e-12, abs=1e-15), t
    assert schedule(warmup_steps + decay_steps + 50) == 0.0
    plateau = S.Constant(3.0)
    assert S.warmup(plateau, 0) is plateau


# --- the differences from optax (the table in lrfused/schedules/__init__.py) --------------------------
# optax's schedules as its documentation writes them, in Python floats.


def optax_linear(init_value, end_value, transition_steps):
    return lambda t: init_value + (end_value - init_value) * min(t, transition_steps) / transition_steps


def optax_cosine_decay(init_value, decay_steps, alpha=0.0):
    def value(t):
        cosine = 0.5 * (1 + math.cos(math.pi * min(t, decay_steps) / decay_steps))
        return init_value * ((1 - alpha) * cosine + alpha)

    return value


def optax_warmup_cosine(init_value, peak_value, warmup_steps, decay_steps, end_value=0.0):
    warm = optax_linear(init_value, peak_value, warmup_steps)
    cosine = optax_cosine_decay(peak_value, decay_steps - warmup_steps, end_value / peak_value)
    return lambda t: warm(t) if t < warmup_steps else cosine(t - warmup_steps)


def optax_exponential(init_value, transition_steps, decay_rate, staircase=False):
    def value(t):
        exponent = t / transition_steps
        return init_value * decay_rate ** (math.floor(exponent) if staircase else exponent)

    return value


def optax_polynomial(init_value, end_value, power, transition_steps):
    return lambda t: (init_value - end_value) * (1 - min(t, transition_steps) / transition_steps) ** power + end_value


def optax_join(schedules, boundaries):
    def value(t):
        index = sum(1 for b in boundaries if t >= b)
        return schedules[index](t - (boundaries[index - 1] if index else 0))

    return value


OPTAX_ROWS = {
    "warmup_cosine": (
        S.warmup_cosine(5, 20, peak_value=2.0, end_value=0.1, start_value=0.3),
        optax_warmup_cosine(0.3, 2.0, 5, 25, 0.1),
    ),
    "exponential_decay": (S.exponential_decay(0.9, init_value=2.0), optax_exponential(2.0, 1, 0.9)),
    "step_decay": (S.step_decay(4, gamma=0.5, init_value=3.0), optax_exponential(3.0, 4, 0.5, staircase=True)),
    "cosine_decay": (S.cosine_decay(12, alpha=0.2, init_value=1.5), optax_cosine_decay(1.5, 12, 0.2)),
    "polynomial_decay": (
        S.polynomial_decay(10, power=2.0, init_value=1.0, end_value=0.1),
        optax_polynomial(1.0, 0.1, 2.0, 10),
    ),
    "linear": (S.linear(0.2, 1.0, 8), optax_linear(0.2, 1.0, 8)),
    "join": (
        S.join([S.linear(0.0, 1.0, 3), S.cosine_decay(6)], [3]),
        optax_join([optax_linear(0.0, 1.0, 3), optax_cosine_decay(1.0, 6)], [3]),
    ),
}


@pytest.mark.parametrize("row", list(OPTAX_ROWS))
def test_each_factory_equals_the_optax_schedule_its_row_names(row):
    ours, theirs = OPTAX_ROWS[row]
    for t in range(60):  # well past every schedule's end
        assert ours(t) == pytest.approx(theirs(t), rel=1e-12, abs=1e-15), (row, t)


def test_one_cycle_peaks_where_torchs_does_not_where_optaxs_does():
    s = S.one_cycle(100, max_value=1.0, pct_start=0.3)
    assert s(29) == 1.0 and s(30) < 1.0
