"""What the test files share: the error measure, twin params for lrfused and torch, parameter
comparisons, stepping both sides, snapshots that a refusal must leave unchanged, one bucket's
call of the step op, and a recorder of the ops a step dispatches."""

from __future__ import annotations

import copy
import itertools

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lrfused import _step_plan

# (amsgrad, maximize, weight_decay, decoupled) in every combination.
FLAGS = list(itertools.product([False, True], [False, True], [0.0, 0.1], [False, True]))


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| over max |e|: the error relative to the tensor's scale (complex: over both parts)."""
    if actual.is_complex():
        actual, expected = torch.view_as_real(actual.detach()), torch.view_as_real(expected.detach())
    scale = expected.detach().double().abs().max().clamp_min(1e-30)
    return ((actual.detach().double() - expected.detach().double()).abs().max() / scale).item()


def twin_leaves(shapes, dtype=torch.float32, seed=0, device="cpu") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two identical lists of leaf params (ours, torch's) from ``seed``."""
    torch.manual_seed(seed)
    base = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    return [b.clone().requires_grad_() for b in base], [b.clone().requires_grad_() for b in base]


def step_twins(ours, theirs, opt_ours, opt_theirs, grad_fn=torch.randn_like) -> None:
    """One step of both optimizers, each param's grad the same fresh ``grad_fn(param)`` on both sides."""
    for a, b in zip(ours, theirs):
        g = grad_fn(a)
        a.grad, b.grad = g.clone(), g.clone()
    opt_ours.step()
    opt_theirs.step()


def assert_same_params(ours, theirs, tolerance: float = 1e-5) -> None:
    """Params (tensors, or modules compared by their named parameters) equal within ``tolerance``,
    relative to each tensor's scale; a mismatch names the param."""
    if isinstance(ours, torch.nn.Module):
        ours, theirs = dict(ours.named_parameters()), dict(theirs.named_parameters())
        assert list(ours) == list(theirs)
        pairs = [(name, ours[name], theirs[name]) for name in ours]
    else:
        pairs = [(index, a, b) for index, (a, b) in enumerate(zip(ours, theirs, strict=True))]
    for name, a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.numel() == 0:
            continue
        error = max_relative_error(a, b)
        assert error <= tolerance, (name, a.dtype, error)


def adam_step_one_bucket(
    op,
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    step,
    program,
    *,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    decoupled_weight_decay=False,
    amsgrad=False,
    maximize=False,
    grad_scale=None,
    found_inf=None,
    invalid_steps=None,
    handle=None,
) -> None:
    """One bucket's step through ``op`` (``torch.ops.lrfused.adam_step_`` or the reference's):
    every tensor at the lr ``program`` gives at ``step``, as a ``schedule=`` optimizer's bucket is
    stepped, with no deferred scheduler step."""
    flags = (
        (_step_plan.FLAG_AMSGRAD if amsgrad else 0)
        | (_step_plan.FLAG_DECOUPLED if decoupled_weight_decay else 0)
        | (_step_plan.FLAG_MAXIMIZE if maximize else 0)
    )
    row = adam_row(0, len(params), 0, 0, -1, beta1, beta2, eps, weight_decay, flags)
    buckets = torch.tensor([row], dtype=torch.float64)
    applied = torch.zeros((), dtype=torch.int64, device=program.device)
    pending = torch.zeros(1 + _step_plan.MAX_DEFERRED_STEPS, dtype=torch.int64)
    op(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        [step],
        buckets,
        program,
        [],
        [],
        applied,
        pending,
        grad_scale=grad_scale,
        found_inf=found_inf,
        invalid_steps=invalid_steps,
        handle=handle,
    )


def adam_row(begin, end, max_begin, program, group, beta1, beta2, eps, weight_decay, flags) -> list[float]:
    """An Adam bucket row (csrc/common/step_plan.h's BucketWord): tensors [begin, end), its
    exp_avgs and exp_avg_sqs from `begin` in their lists, its max_exp_avg_sqs from `max_begin`."""
    P = _step_plan
    row = [0.0] * P.BUCKET_WORDS
    row[P.TENSOR_BEGIN], row[P.TENSOR_END] = begin, end
    row[P.STATE_BEGIN : P.STATE_BEGIN + 3] = [begin, begin, max_begin]
    row[P.PROGRAM], row[P.GROUP], row[P.RULE] = program, group, P.KIND_ADAM
    row[P.MOMENTUM], row[P.DECAY], row[P.EPS] = beta1, beta2, eps
    row[P.WEIGHT_DECAY], row[P.FLAGS] = weight_decay, flags
    return row


def snapshot(opt):
    """Everything a refusal must leave as it was: groups (lrs, betas, ...), params, states."""
    groups = [
        {
            k: (v.detach().clone() if isinstance(v, torch.Tensor) else copy.copy(v))
            for k, v in g.items()
            if k != "params"
        }
        for g in opt.param_groups
    ]
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    states = [
        {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}
        for g in opt.param_groups
        for p in g["params"]
    ]
    return groups, params, states


def assert_unchanged(opt, before):
    groups, params, states = snapshot(opt)
    old_groups, old_params, old_states = before
    assert len(groups) == len(old_groups)
    for new, old in zip(groups, old_groups):
        assert new.keys() == old.keys()
        for key in new:
            if isinstance(new[key], torch.Tensor):
                assert torch.equal(new[key], old[key]), key
            else:
                assert new[key] is old[key] or new[key] == old[key], key
    for new, old in zip(params, old_params):
        assert torch.equal(new, old)
    for new, old in zip(states, old_states):
        assert new.keys() == old.keys()
        for key in new:
            assert torch.equal(new[key], old[key]) if isinstance(new[key], torch.Tensor) else new[key] == old[key]


def raised(build):
    try:
        build()
    except Exception as error:  # noqa: BLE001 - the type is compared below
        return error
    return None


def same_outcome(ours, theirs):
    """torch refuses => lrfused refuses with the same type (lrfused may refuse more: it says so)."""
    if theirs is not None:
        assert ours is not None, f"torch raised {theirs!r}, lrfused accepted"
        assert isinstance(ours, type(theirs)) or isinstance(theirs, type(ours)), (ours, theirs)


def random_grads(params, seed):
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for p in params:
        real = torch.view_as_real(p.detach()) if p.is_complex() else p.detach()
        g = torch.randn(real.shape, generator=generator).to(real.dtype)
        grads.append(torch.view_as_complex(g) if p.is_complex() else g)
    return grads


def step_both(ours, theirs, opt_ours, opt_theirs, steps, seed=0):
    for k in range(steps):
        for a, b, g in zip(ours, theirs, random_grads(ours, seed + k)):
            if a.requires_grad and (a.grad is None or a.grad is not g):
                a.grad = g.clone()
            if b.requires_grad:
                b.grad = g.clone()
        opt_ours.step()
        opt_theirs.step()


class EachOptimizer:
    """Several torch optimizers stepped as one."""

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def step(self):
        for opt in self.optimizers:
            opt.step()


class RecordEveryOp(TorchDispatchMode):
    """Records the name of every op dispatched inside its ``with`` block (``names``)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))
