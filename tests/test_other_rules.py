"""FusedScheduledSGD, FusedScheduledRMSprop and FusedScheduledAdagrad against torch's own
optimizers and schedulers, on fresh random inputs: the update (every option, every dtype), the
cycling schedulers driving the momentum, checkpoints both ways, schedule=, AMP skips, bad input."""

from __future__ import annotations

import io

import pytest
import torch

import lrfused
from helpers import RecordEveryOp
from lrfused import lr_scheduler as fused_sched
from lrfused import schedules

# (lrfused class, torch class, option sets) with every option torch has.
CASES = [
    (
        lrfused.FusedScheduledSGD,
        torch.optim.SGD,
        [
            dict(lr=0.1),
            dict(lr=0.05, momentum=0.9),
            dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
            dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1, maximize=True),
        ],
    ),
    (
        lrfused.FusedScheduledRMSprop,
        torch.optim.RMSprop,
        [
            dict(lr=0.01),
            dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01),
            dict(lr=0.01, momentum=0.9, centered=True),
            dict(lr=0.005, momentum=0.5, maximize=True, weight_decay=0.1),
            dict(lr=0.01, centered=True),
        ],
    ),
    (
        lrfused.FusedScheduledAdagrad,
        torch.optim.Adagrad,
        [
            dict(lr=0.1),
            dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
            dict(lr=0.05, eps=1e-6, maximize=True),
        ],
    ),
]
ALL = [(ours, theirs, options) for ours, theirs, option_sets in CASES for options in option_sets]
IDS = [f"{ours.__name__}-{i}" for i, (ours, _, _) in enumerate(ALL)]


def make_params(dtype, seed):
    torch.manual_seed(seed)
    shapes = [(7,), (5, 3), (130,), (2, 2, 17)]
    return [torch.randn(s, dtype=dtype) for s in shapes]


def run_pair(ours_cls, theirs_cls, options, dtype, steps=8, seed=0, scheduler=None, reference_dtype=None):
    """The same training on both; torch's runs in `reference_dtype` (its for-loop rounds every op to
    the param's dtype, the kernels keep float32 opmath: for 16-bit params torch runs on float32
    copies, which is what the kernels compute, then both are compared in the param dtype)."""
    base = make_params(dtype, seed)
    ours_params = [p.clone().requires_grad_() for p in base]
    theirs_params = [p.clone().to(reference_dtype or dtype).requires_grad_() for p in base]

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": options.get("lr", 0.01) * 0.5}]

    ours = ours_cls(groups(ours_params), **options)
    theirs = theirs_cls(groups(theirs_params), foreach=False, **options)
    scheds = scheduler(ours, theirs) if scheduler else None
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        for p, q in zip(ours_params, theirs_params):
            g = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.grad = g.to(dtype)
            q.grad = g.to(dtype).to(q.dtype)
        ours.step()
        theirs.step()
        if scheds:
            scheds[0].step()
            scheds[1].step()
            assert scheds[0].get_last_lr() == pytest.approx(scheds[1].get_last_lr(), rel=1e-12)
    return ours, theirs, ours_params, theirs_params


TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-13),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


@pytest.mark.parametrize("ours_cls,theirs_cls,options", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_update_is_torchs(ours_cls, theirs_cls, options, dtype):
    ours, theirs, a, b = run_pair(ours_cls, theirs_cls, options, dtype)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, **TOLERANCE[dtype])
    ours_saved, theirs_saved = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert set(ours_saved) == set(theirs_saved)
    for index in theirs_saved:
        assert set(ours_saved[index]) == set(theirs_saved[index])
    for p, q in zip(a, b):
        for key, value in theirs.state.get(q, {}).items():
            if key == "step":
                assert int(ours.state[p]["step"]) == int(value)
            elif value is not None:
                torch.testing.assert_close(ours.state[p][key], value, **TOLERANCE[dtype])


@pytest.mark.parametrize("ours_cls,theirs_cls,options", ALL[::2], ids=IDS[::2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_params_step_in_float32(ours_cls, theirs_cls, options, dtype):
    _, _, a, b = run_pair(ours_cls, theirs_cls, options, dtype, steps=4, reference_dtype=torch.float32)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q.to(dtype), **TOLERANCE[dtype])


def _cyclic(cls_ours, cls_theirs, **kwargs):
    return lambda ours, theirs: (cls_ours(ours, **kwargs), cls_theirs(theirs, **kwargs))


@pytest.mark.parametrize(
    "ours_cls,theirs_cls,options",
    [
        (lrfused.FusedScheduledSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
        (lrfused.FusedScheduledSGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
        (lrfused.FusedScheduledRMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.9, centered=True)),
    ],
)
@pytest.mark.parametrize(
    "make",
    [
        _cyclic(fused_sched.OneCycleLR, torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=12),
        _cyclic(fused_sched.CyclicLR, torch.optim.lr_scheduler.CyclicLR, base_lr=0.01, max_lr=0.1, step_size_up=3),
    ],
    ids=["OneCycleLR", "CyclicLR"],
)
def test_cycling_schedulers_drive_the_momentum_in_the_kernel(ours_cls, theirs_cls, options, make):
    ours, theirs, a, b = run_pair(ours_cls, theirs_cls, options, torch.float64, steps=10, scheduler=make)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
    for g, h in zip(ours.param_groups, theirs.param_groups):
        assert g["momentum"] == pytest.approx(h["momentum"], rel=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda o, t: (fused_sched.StepLR(o, 3, 0.5), torch.optim.lr_scheduler.StepLR(t, 3, 0.5)),
        lambda o, t: (
            fused_sched.SequentialLR(
                o, [fused_sched.LinearLR(o, 0.1, total_iters=3), fused_sched.CosineAnnealingLR(o, 6)], [3]
            ),
            torch.optim.lr_scheduler.SequentialLR(
                t,
                [
                    torch.optim.lr_scheduler.LinearLR(t, 0.1, total_iters=3),
                    torch.optim.lr_scheduler.CosineAnnealingLR(t, 6),
                ],
                [3],
            ),
        ),
    ],
    ids=["StepLR", "SequentialLR"],
)
@pytest.mark.parametrize("ours_cls,theirs_cls,options", [ALL[2], ALL[6], ALL[10]], ids=["SGD", "RMSprop", "Adagrad"])
def test_schedulers_step_the_lr_as_torchs(ours_cls, theirs_cls, options, make):
    _, _, a, b = run_pair(ours_cls, theirs_cls, options, torch.float64, steps=9, scheduler=make)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


def test_cycle_momentum_on_adagrad_raises_as_torchs():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError) as theirs:
        torch.optim.lr_scheduler.OneCycleLR(torch.optim.Adagrad([p]), max_lr=0.1, total_steps=5)
    with pytest.raises(ValueError) as ours:
        fused_sched.OneCycleLR(lrfused.FusedScheduledAdagrad([p]), max_lr=0.1, total_steps=5)
    assert str(ours.value) == str(theirs.value)


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("ours_cls,theirs_cls,options", ALL, ids=IDS)
def test_checkpoints_move_both_ways(ours_cls, theirs_cls, options):
    # Train 4 steps on one side, load into the other, train 4 more: the same as 8 steps on torch.
    _, _, _, expected = run_pair(ours_cls, theirs_cls, options, torch.float64, steps=8)
    for first, second in ((theirs_cls, ours_cls), (ours_cls, theirs_cls)):
        base = make_params(torch.float64, 0)
        params = [p.clone().requires_grad_() for p in base]

        def groups():
            return [{"params": params[:2]}, {"params": params[2:], "lr": options.get("lr", 0.01) * 0.5}]

        extra = {"foreach": False}
        opt = first(groups(), **options, **extra)
        generator = torch.Generator().manual_seed(1)
        for step in range(8):
            if step == 4:
                saved = _roundtrip(opt.state_dict())
                opt = second(groups(), **options, **extra)
                opt.load_state_dict(saved)
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            opt.step()
        for p, q in zip(params, expected):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


# The tests of the compiled ops themselves (the rest also runs on the reference, LRFUSED_USE_REFERENCE=1).
needs_kernels = pytest.mark.skipif(not lrfused.has_kernels(), reason="the compiled library is not loaded")

OTHER_CLASSES = [lrfused.FusedScheduledSGD, lrfused.FusedScheduledRMSprop, lrfused.FusedScheduledAdagrad]


@pytest.mark.parametrize("cls", OTHER_CLASSES)
def test_schedule_multiplies_the_lr_at_the_step_count(cls):
    torch.manual_seed(3)
    p, q = torch.randn(9, requires_grad=True), None
    q = p.detach().clone().requires_grad_()
    schedule = schedules.cosine_decay(10)
    ours = cls([p], lr=0.05, schedule=schedule)
    theirs = getattr(torch.optim, cls.__name__.removeprefix("FusedScheduled"))([q], lr=0.05, foreach=False)
    for t in range(6):
        g = torch.randn(9, dtype=torch.float32)
        p.grad, q.grad = g.clone(), g.clone()
        theirs.param_groups[0]["lr"] = 0.05 * schedule(t)
        ours.step()
        theirs.step()
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ours_cls,theirs_cls,options", [ALL[1], ALL[7], ALL[9]], ids=["SGD", "RMSprop", "Adagrad"])
def test_check_finite_skips_a_step_with_a_non_finite_grad(ours_cls, theirs_cls, options):
    p = torch.randn(6, requires_grad=True)
    opt = ours_cls([p], check_finite=True, **options)
    p.grad = torch.randn(6)
    opt.step()
    before = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.full((6,), float("nan"))
    opt.step()
    assert torch.equal(p, before[0])
    for key, value in opt.state[p].items():
        assert torch.equal(value, before[1][key]), key
    assert int(opt.skipped_steps) == 1


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (torch.optim.SGD, dict(lr=-1.0)),
        (torch.optim.SGD, dict(momentum=-0.5)),
        (torch.optim.SGD, dict(weight_decay=-1.0)),
        (torch.optim.SGD, dict(nesterov=True)),
        (torch.optim.SGD, dict(momentum=0.9, dampening=0.1, nesterov=True)),
        (torch.optim.RMSprop, dict(lr=-1.0)),
        (torch.optim.RMSprop, dict(eps=-1.0)),
        (torch.optim.RMSprop, dict(momentum=-1.0)),
        (torch.optim.RMSprop, dict(weight_decay=-1.0)),
        (torch.optim.RMSprop, dict(alpha=-1.0)),
        (torch.optim.Adagrad, dict(lr=-1.0)),
        (torch.optim.Adagrad, dict(lr_decay=-1.0)),
        (torch.optim.Adagrad, dict(weight_decay=-1.0)),
        (torch.optim.Adagrad, dict(initial_accumulator_value=-1.0)),
        (torch.optim.Adagrad, dict(eps=-1.0)),
    ],
)
def test_bad_arguments_raise_torchs_errors(cls, kwargs):
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError) as theirs:
        cls([p], **kwargs)
    ours_cls = getattr(lrfused, f"FusedScheduled{cls.__name__}")
    with pytest.raises(ValueError) as ours:
        ours_cls([p], **kwargs)
    assert str(ours.value) == str(theirs.value)


@needs_kernels
@pytest.mark.parametrize("ours_cls,theirs_cls,options", ALL, ids=IDS)
def test_the_kernels_match_the_reference(ours_cls, theirs_cls, options, monkeypatch):
    # The same training through the compiled op and through lrfused._reference's op.
    from lrfused import _ops

    results = []
    for use_reference in (False, True):
        if use_reference:
            monkeypatch.setattr(_ops, "_LOAD_ERROR", "the test asks for the reference")
        base = make_params(torch.float32, 5)
        params = [p.clone().requires_grad_() for p in base]
        opt = ours_cls(params, **options)
        generator = torch.Generator().manual_seed(2)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            opt.step()
        results.append(params)
    for p, q in zip(*results):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@needs_kernels
def test_one_op_per_step_for_every_group_and_dtype():
    params = [torch.randn(4, requires_grad=True), torch.randn(3, dtype=torch.float64, requires_grad=True)]
    for cls, options in zip(OTHER_CLASSES, (dict(momentum=0.9), {}, {})):
        opt = cls([{"params": params[:1]}, {"params": params[1:], "lr": 0.001}], **options)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()  # the first step plans and makes the states
        with RecordEveryOp() as ops:
            opt.step()
        assert [n for n in ops.names if "lrfused" in n] == ["lrfused.table_step_.default"], ops.names


@pytest.mark.parametrize("ours_cls,theirs_cls,options", [ALL[2], ALL[7], ALL[9]], ids=["SGD", "RMSprop", "Adagrad"])
def test_grad_scaler_unscales_and_skips_in_the_kernel(ours_cls, theirs_cls, options):
    # GradScaler hands grad_scale and found_inf to the kernel (_step_supports_amp_scaling), which
    # unscales the grads and skips an overflowed step; torch's for-loop optimizer is unscaled by the scaler.
    base = make_params(torch.float32, 11)
    ours_params = [p.clone().requires_grad_() for p in base]
    theirs_params = [p.clone().requires_grad_() for p in base]
    ours, theirs = ours_cls(ours_params, **options), theirs_cls(theirs_params, foreach=False, **options)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10), torch.amp.GradScaler("cpu", init_scale=2.0**10)]
    for step in range(12):
        for params, opt, scaler in ((ours_params, ours, scalers[0]), (theirs_params, theirs, scalers[1])):
            torch.manual_seed(step)
            loss = sum((p * torch.randn_like(p)).sum() for p in params)
            if step == 4:
                loss = loss * float("inf")  # one overflow: skipped by both
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    for p, q in zip(ours_params, theirs_params):
        torch.testing.assert_close(p, q, **TOLERANCE[torch.float32])
    assert scalers[0].get_scale() == scalers[1].get_scale()


@pytest.mark.parametrize("cls", OTHER_CLASSES)
def test_the_lr_finder_ramps_and_leaves_training_as_it_was(cls):
    # The range test then training: the same as training alone (the finder restores the model, the
    # optimizer's state and its lrs), and its history is the loss at each lr of the ramp.
    def train_step(model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    torch.manual_seed(0)
    data = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(40)]
    trained = []
    for use_finder in (True, False):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 1)
        opt = cls(model.parameters(), lr=1e-2)
        if use_finder:
            finder = lrfused.LRFinder(model, opt)
            finder.range_test(data, start_lr=1e-4, end_lr=1.0, num_iter=30, check_every=10, train_step=train_step)
            lrs = finder.history["lr"]
            assert lrs[0] == pytest.approx(1e-4) and lrs == sorted(lrs) and len(lrs) > 10
        for batch in data[:10]:
            opt.zero_grad()
            train_step(model, batch).backward()
            opt.step()
        trained.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*trained):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "cls,key,value",
    [
        (lrfused.FusedScheduledSGD, "weight_decay", -1.0),
        (lrfused.FusedScheduledSGD, "momentum", float("nan")),
        (lrfused.FusedScheduledRMSprop, "eps", -1.0),
        (lrfused.FusedScheduledRMSprop, "alpha", float("inf")),
        (lrfused.FusedScheduledAdagrad, "lr_decay", -0.5),
        (lrfused.FusedScheduledAdagrad, "eps", float("nan")),
    ],
)
def test_a_bad_value_written_into_a_group_raises_before_anything_changes(cls, key, value):
    params = [torch.randn(5, requires_grad=True), torch.randn(3, requires_grad=True)]
    opt = cls([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in params], [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    opt.param_groups[1][key] = value
    with pytest.raises(ValueError, match="param_groups\\[1\\]"):
        opt.step()
    for p, saved, state in zip(params, *before):
        assert torch.equal(p, saved)
        for name, tensor in state.items():
            assert torch.equal(opt.state[p][name], tensor), name


@pytest.mark.parametrize("cls", OTHER_CLASSES)
def test_non_finite_or_non_numeric_arguments_are_refused_naming_them(cls):
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="Invalid learning rate: nan"):
        cls([p], lr=float("nan"))
    with pytest.raises(TypeError, match="learning rate must be a number"):
        cls([p], lr="0.1")
    with pytest.raises(ValueError, match="differentiable=True is not supported"):
        cls([p], differentiable=True)


# --- the ops: schemas (opcheck), refusals the same in the kernels and the reference ----------------------

RULE_OPS = {  # op name -> (rule kind, state list count, flags with every state)
    "sgd_step_": (1, 1, 8 | 16),
    "rmsprop_step_": (2, 3, 8 | 32),
    "adagrad_step_": (3, 1, 0),
}


def _rule_op_args(op, flags=None, decay=0.1, momentum=0.9):
    from lrfused import _step_plan as P

    kind, lists, all_flags = RULE_OPS[op]
    flags = all_flags if flags is None else flags
    torch.manual_seed(0)
    params = [torch.randn(3), torch.randn(2, 2)]
    row = [0.0] * P.BUCKET_WORDS
    row[P.TENSOR_END], row[P.GROUP], row[P.RULE] = 2, -1, kind
    row[P.MOMENTUM], row[P.DECAY], row[P.EPS], row[P.WEIGHT_DECAY], row[P.FLAGS] = momentum, decay, 1e-8, 0.01, flags
    states = [[torch.rand_like(p) for p in params] for _ in range(lists)]
    return [
        params,
        [torch.randn_like(p) for p in params],
        *states,
        [torch.tensor(2)],
        torch.tensor([row], dtype=torch.float64),
        torch.tensor(schedules.constant(1e-2).encode(), dtype=torch.float64),
        [],
        [],
        torch.zeros((), dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
    ]


@needs_kernels
@pytest.mark.parametrize("op", list(RULE_OPS))
def test_opcheck_of_the_other_rules_ops(op):
    torch.library.opcheck(getattr(torch.ops.lrfused, op).default, _rule_op_args(op))


@needs_kernels
@pytest.mark.parametrize("op", list(RULE_OPS))
def test_the_other_rules_ops_match_their_reference(op):
    from lrfused import _reference

    ours, theirs = _rule_op_args(op), _rule_op_args(op)
    getattr(torch.ops.lrfused, op)(*ours)
    getattr(_reference, op)(*theirs)

    def written(args):  # the params, then every state
        return args[0] + [t for states in args[2:-7] for t in states]

    for a, b in zip(written(ours), written(theirs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert int(ours[-7][0]) == int(theirs[-7][0]) == 3


def _bad_rule_calls(op):
    from lrfused import _step_plan as P

    kind = RULE_OPS[op][0]

    def row_word(word, value):
        def change(args):
            args[-6][0, word] = value

        return change

    cases = {
        "another rule's row": row_word(P.RULE, 0),
        "a flag of another rule": row_word(P.FLAGS, 1),
        "momentum nan": row_word(P.MOMENTUM, float("nan")),
        "eps -1": row_word(P.EPS, -1.0),
        "weight_decay inf": row_word(P.WEIGHT_DECAY, float("inf")),
        "grads short": lambda args: args[1].pop(),
        "a state of another shape": lambda args: args[2].__setitem__(1, torch.zeros(5)),
        "a state list short": lambda args: args[2].pop(),
    }
    if kind != 1:  # SGD's dampening may be any finite number, as torch leaves it unchecked
        cases["decay -1"] = row_word(P.DECAY, -1.0)
    return cases


@needs_kernels
@pytest.mark.parametrize("op,case", [(op, case) for op in RULE_OPS for case in _bad_rule_calls(op)])
def test_the_kernels_and_the_reference_refuse_the_other_rules_calls_alike(op, case):
    from lrfused import _reference

    messages = []
    for call in (getattr(torch.ops.lrfused, op), getattr(_reference, op)):
        args = _rule_op_args(op)
        _bad_rule_calls(op)[case](args)
        before = [t.clone() for t in args[0]]
        with pytest.raises(RuntimeError) as error:
            call(*args)
        assert all(torch.equal(a, b) for a, b in zip(args[0], before))
        messages.append(str(error.value).split("\n")[0])
    assert messages[0].startswith(f"{op}: ")
    # The same message, but for how each side spells a dtype (torch's "Float", Python's "torch.float32").
    assert messages[0].split(" is ")[0] == messages[1].split(" is ")[0]
