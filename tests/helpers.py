"""What the test files share: the error measure, twin params for lrfused and torch, parameter
comparisons, and one bucket's call of the step op."""

from __future__ import annotations

import torch

from lrfused import _step_plan


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| over max |e|: the error relative to the tensor's scale (complex: over both parts)."""
    if actual.is_complex():
        actual, expected = torch.view_as_real(actual.detach()), torch.view_as_real(expected.detach())
    scale = expected.detach().double().abs().max().clamp_min(1e-30)
    return ((actual.detach().double() - expected.detach().double()).abs().max() / scale).item()


def twin_leaves(shapes, dtype=torch.float32, device="cpu", seed=0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two identical lists of leaf params (ours, torch's) from ``seed``."""
    torch.manual_seed(seed)
    base = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    return [b.clone().requires_grad_() for b in base], [b.clone().requires_grad_() for b in base]


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


def adam_step_one_bucket(op, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, program, *, beta1=0.9,
                         beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
                         maximize=False, grad_scale=None, found_inf=None, invalid_steps=None, handle=None) -> None:
    """One bucket's step through ``op`` (``torch.ops.lrfused.adam_step_`` or the reference's):
    every tensor at the lr ``program`` gives at ``step``, as a ``schedule=`` optimizer's bucket is
    stepped, with no deferred scheduler step."""
    flags = ((_step_plan.FLAG_AMSGRAD if amsgrad else 0) | (_step_plan.FLAG_DECOUPLED if decoupled_weight_decay else 0)
             | (_step_plan.FLAG_MAXIMIZE if maximize else 0))
    row = [0.0] * _step_plan.BUCKET_WORDS
    row[_step_plan.TENSOR_END] = len(params)
    row[_step_plan.GROUP] = -1
    row[_step_plan.BETA1], row[_step_plan.BETA2] = beta1, beta2
    row[_step_plan.EPS], row[_step_plan.WEIGHT_DECAY], row[_step_plan.FLAGS] = eps, weight_decay, flags
    buckets = torch.tensor([row], dtype=torch.float64)
    applied = torch.zeros((), dtype=torch.int64, device=program.device)
    pending = torch.zeros(1 + _step_plan.MAX_DEFERRED_STEPS, dtype=torch.int64)
    op(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, [step], buckets, program, [], [], applied, pending,
       grad_scale=grad_scale, found_inf=found_inf, invalid_steps=invalid_steps, handle=handle)
