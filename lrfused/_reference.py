"""The op ``lrfused::fused_adam_`` in plain PyTorch: the test oracle, and the fallback when the
compiled library cannot be loaded. It follows note [Order of operations] of
``csrc/common/adam_math.h`` with float32 opmath, and evaluates the program with
:func:`lrfused.schedules.decode`, the Python mirror of ``csrc/common/lr_schedule.h``."""

from __future__ import annotations

import math

import torch

from . import _rules
from .schedules import decode


def schedule_value(schedule: torch.Tensor, t: int) -> tuple[float, float]:
    """(lr, beta1) of a program at clock t; beta1 is NaN when the schedule does not cycle it."""
    lr, beta1 = decode(schedule.tolist()).value(int(t))
    return lr, math.nan if beta1 is None else beta1


def _f32(x: float) -> torch.Tensor:
    """A Python float rounded to float32, as the kernels receive their scalars."""
    return torch.tensor(x, dtype=torch.float32)


@torch.no_grad()
def fused_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, clock, schedule, *, beta1, beta2, eps,
                weight_decay, decoupled_weight_decay, amsgrad, maximize, grad_scale=None, found_inf=None, invalid_steps=None,
                handle=None) -> None:
    if len(params) == 0:
        return
    if found_inf is not None and found_inf.item() != 0.0:
        return
    t = int(clock.item()) if clock is not None else int(step.item())
    lr, scheduled_beta1 = schedule_value(schedule, t)
    b1 = beta1 if math.isnan(scheduled_beta1) else scheduled_beta1
    if not (math.isfinite(lr) and 0.0 <= b1 < 1.0):
        # note [Unusable schedule values] (csrc/common/step_scalars.h): skipped and counted.
        if invalid_steps is not None:
            invalid_steps.add_(1)
        return
    n = int(step.item()) + 1
    step_size = lr / (1.0 - b1 ** float(n))
    bc2_sqrt = math.sqrt(1.0 - beta2 ** float(n))
    for i, param in enumerate(params):
        p = param.float()
        g = grads[i].float()
        if grad_scale is not None:
            g = g / grad_scale.float().to(g.device)
            grads[i].copy_(g)
        if maximize:
            g = -g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * _f32(1.0 - lr * weight_decay)
            else:
                g = g + _f32(weight_decay) * p
        m = exp_avgs[i].float()
        m = m.lerp(g, float(_f32(1.0 - b1)))
        v = exp_avg_sqs[i].float() * _f32(beta2) + _f32(1.0 - beta2) * g * g
        second = v
        if amsgrad:
            second = torch.maximum(max_exp_avg_sqs[i].float(), v)
            max_exp_avg_sqs[i].copy_(second)
        denom = second.sqrt() / _f32(bc2_sqrt) + _f32(eps)
        p = p + _f32(-step_size) * m / denom
        param.copy_(p)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
    step.add_(1)


@torch.no_grad()
def advance_lr_(groups: torch.Tensor, clock: torch.Tensor, rules: torch.Tensor, epoch: int | None = None) -> None:
    """``lrfused::advance_lr_`` (note [Scheduler steps on the device]) on the host's floats."""
    if epoch is not None and epoch < 0:
        raise RuntimeError(f"advance_lr_: epoch must be non-negative, got {epoch}")
    t = int(epoch) if epoch is not None else int(clock.item()) + 1
    words = _rules.apply_rules(rules.tolist(), groups.tolist(), t, epoch is not None)
    groups.copy_(torch.tensor(words, dtype=torch.float64))
    clock.fill_(t)
