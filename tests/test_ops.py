"""Every op of lrfused._C on every device present, through ``torch.library.opcheck``: the schema
(mutations declared), the fake kernel torch.compile traces, and AOT dispatch."""

import pytest
import torch

import lrfused
from lrfused import _rules, _schedule_encoding, schedules

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
    rows = torch.tensor([[0, 2, 0, 0, -1, 0.9, 0.999, 1e-8, 0.01, flags]], dtype=torch.float64)
    args = (params, [torch.randn_like(p) for p in params], [torch.zeros_like(p) for p in params],
            [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params] if amsgrad else [],
            [torch.tensor(3, device=device)], rows, program(device), [], [],
            torch.zeros((), dtype=torch.int64, device=device), torch.zeros(1, dtype=torch.int64))
    kwargs = {}
    if extras == "scaler":
        kwargs.update(grad_scale=torch.tensor(8.0, device=device), found_inf=torch.tensor(0.0, device=device),
                      invalid_steps=torch.zeros((), dtype=torch.int64, device=device))
    elif extras == "handle":
        kwargs.update(handle=torch.ops.lrfused.new_handle())
    torch.library.opcheck(torch.ops.lrfused.adam_step_.default, args, kwargs)


@pytest.mark.parametrize("epoch", [None, 7])
def test_advance_lr_(device, epoch):
    groups = torch.tensor(_rules.held(0.1) + _rules.held(0.01, 0.9), dtype=torch.float64, device=device)
    rules = torch.tensor(_rules.chain(schedules.Exponential(1.0, 0.5))
                         + _rules.set_(schedules.Cosine(0.01, 10)), dtype=torch.float64, device=device)
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
    torch.library.opcheck(torch.ops.lrfused.evaluate_schedule.default, (program(device), 5),
                          test_utils=("test_schema", "test_autograd_registration"))
    assert torch.ops.lrfused.evaluate_schedule(program(device), 5)[0] == 1e-2 * 0.5 ** 2


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
    params = [torch.randn(5, device=device), torch.randn(3, 2, device=device),
              torch.randn(4, device=device, dtype=torch.bfloat16)]
    words = torch.tensor(_rules.held(0.1) + _rules.held(0.01, 0.9), dtype=torch.float64, device=device)
    rows = torch.tensor([[0, 2, 0, 0, 0, 0.9, 0.999, 1e-8, 0.01, P.FLAG_AMSGRAD | P.FLAG_DECOUPLED],
                         [2, 3, 0, 4, 1, 0.9, 0.999, 1e-8, 0.0, P.FLAG_MAXIMIZE]], dtype=torch.float64)
    rules = [torch.tensor(_rules.indexed(_rules.chain(schedules.Exponential(1.0, 0.5))
                                         + _rules.set_(schedules.Cosine(0.01, 10)), 2), dtype=torch.float64,
                          device=device)] if deferred else []
    clocks = [torch.tensor(2, dtype=torch.int64, device=device)] if deferred else []
    return (params, [torch.randn_like(p) for p in params], [torch.zeros_like(p) for p in params],
            [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params[:2]],
            [torch.tensor(0, device=device), torch.tensor(4, device=device)], rows, words, clocks, rules,
            torch.zeros((), dtype=torch.int64, device=device), torch.tensor([0, 0], dtype=torch.int64))


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("extras", ["none", "scaler"])
def test_adam_step_(device, deferred, extras):
    kwargs = {}
    if extras == "scaler":
        kwargs.update(grad_scale=torch.tensor(8.0, device=device), found_inf=torch.tensor(0.0, device=device),
                      invalid_steps=torch.zeros((), dtype=torch.int64, device=device))
    torch.library.opcheck(torch.ops.lrfused.adam_step_.default, step_arguments(device, deferred), kwargs)


# The eager table's ops hold tensors between calls and read the grads of the params they hold:
# they run only in an eager step (a compiled step takes adam_step_), so they have no fake kernel
# and are checked for their schema and autograd registration.
EAGER_ONLY = ("test_schema", "test_autograd_registration")


def test_table_step_(device):
    params, grads, exp_avgs, exp_avg_sqs, maxes, steps, rows, words, clocks, rules, applied, pending = (
        step_arguments(device, True))
    sources = [p.clone().requires_grad_() for p in params]
    for source, grad in zip(sources, grads):
        source.grad = grad
    table = torch.ops.lrfused.new_handle()
    torch.library.opcheck(torch.ops.lrfused.set_step_table.default,
                          (table, sources, [s.detach() for s in sources], exp_avgs, exp_avg_sqs, maxes, []),
                          test_utils=EAGER_ONLY)
    torch.library.opcheck(torch.ops.lrfused.table_step_.default,
                          (table, rows, steps, words, clocks, rules, applied, pending), test_utils=EAGER_ONLY)
    # opcheck calls the ops on copies: the table is set again from these very sources.
    torch.ops.lrfused.set_step_table(table, sources, [s.detach() for s in sources], exp_avgs, exp_avg_sqs, maxes, [])
    assert torch.ops.lrfused.table_step_(table, rows, steps, words, clocks, rules, applied, pending)
    sources[0].grad = None  # no longer the table's pattern: refused, nothing changed
    before = [int(s) for s in steps]
    assert not torch.ops.lrfused.table_step_(table, rows, steps, words, clocks, rules, applied, pending)
    assert [int(s) for s in steps] == before
