"""The op ``lrfused::fused_adam_`` in plain PyTorch: the test oracle, and the fallback when the
compiled library cannot be loaded. It follows note [Order of operations] of
``csrc/common/adam_math.h`` in torch's opmath (float64 for float64 params, float32 for the
others), and evaluates the program with :func:`lrfused.schedules.decode`, the Python mirror of
``csrc/common/lr_schedule.h``."""

from __future__ import annotations

import math

import torch

from . import _rules
from .schedules import decode


def schedule_value(schedule: torch.Tensor, t: int) -> tuple[float, float]:
    """(lr, beta1) of a program at clock t; beta1 is NaN when the schedule does not cycle it."""
    lr, beta1 = decode(schedule.tolist()).value(int(t))
    return lr, math.nan if beta1 is None else beta1


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """torch's opmath: float64 for float64 params, float32 for the others."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# The element types the kernels update (complex params are viewed as pairs of their real type).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def usable_step_size(lr: float, beta1: float, step: int) -> float | None:
    """``lr / (1 - beta1^step)``, or None where note [Unusable schedule values] skips the step:
    where torch's for-loop Adam has no finite answer (it raises ZeroDivisionError or OverflowError)."""
    if not (math.isfinite(lr) and math.isfinite(beta1)):
        return None
    try:
        bias_correction1 = 1.0 - beta1 ** float(step)
        step_size = lr / bias_correction1
    except (ZeroDivisionError, OverflowError):
        return None
    return step_size if math.isfinite(bias_correction1) and math.isfinite(step_size) else None


def check_fused_adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, clock, schedule, *, beta1,
                          beta2, eps, weight_decay, amsgrad, grad_scale, found_inf, invalid_steps) -> None:
    """The C++ op's argument checks (``check_fused_adam_args`` in csrc/ops.cpp), with its messages:
    the reference refuses what the kernels refuse, before it changes anything."""
    n = len(params)
    if not (len(grads) == n and len(exp_avgs) == n and len(exp_avg_sqs) == n):
        raise RuntimeError(f"fused_adam_: params, grads, exp_avgs and exp_avg_sqs must have the same length, got {n}, "
                           f"{len(grads)}, {len(exp_avgs)} and {len(exp_avg_sqs)}")
    if amsgrad and len(max_exp_avg_sqs) != n:
        raise RuntimeError(f"fused_adam_: amsgrad=True needs one max_exp_avg_sq per param, got "
                           f"{len(max_exp_avg_sqs)} for {n} params")
    if not math.isfinite(beta1):  # any finite beta1: note [Unusable schedule values]
        raise RuntimeError(f"fused_adam_: invalid beta1: {beta1}")
    if not 0.0 <= beta2 < 1.0:
        raise RuntimeError(f"fused_adam_: invalid beta2: {beta2}")
    for name, value in (("eps", eps), ("weight_decay", weight_decay)):
        if not (math.isfinite(value) and value >= 0.0):
            raise RuntimeError(f"fused_adam_: invalid {name}: {value}")
    if step.dtype != torch.int64 or step.numel() != 1:
        raise RuntimeError(f"fused_adam_: step must be a one-element int64 tensor, got {step.dtype} with "
                           f"{step.numel()} elements")
    if schedule.dtype != torch.float64 or schedule.dim() != 1 or schedule.numel() < 2:
        raise RuntimeError(f"fused_adam_: schedule must be a contiguous 1-d float64 tensor, got {schedule.dtype} of "
                           f"shape {list(schedule.shape)}")
    for name, value, dtype in (("clock", clock, torch.int64), ("grad_scale", grad_scale, torch.float32),
                               ("found_inf", found_inf, torch.float32), ("invalid_steps", invalid_steps, torch.int64)):
        if value is not None and (value.dtype != dtype or value.numel() != 1):
            raise RuntimeError(f"fused_adam_: {name} must be a one-element {str(dtype)[6:]} tensor, got {value.dtype} "
                               f"with {value.numel()} elements")
    if n == 0:
        return
    first = params[0]
    if first.dtype not in KERNEL_DTYPES:
        raise RuntimeError(f"fused_adam_: params must be float32, float16, bfloat16 or float64, got {first.dtype}")
    for i, p in enumerate(params):
        if p.device != first.device or p.dtype != first.dtype:
            raise RuntimeError(f"fused_adam_: params[{i}] is {p.dtype} on {p.device} but params[0] is {first.dtype} "
                               f"on {first.device}")
        others = [("grads", grads[i]), ("exp_avgs", exp_avgs[i]), ("exp_avg_sqs", exp_avg_sqs[i])]
        if amsgrad:
            others.append(("max_exp_avg_sqs", max_exp_avg_sqs[i]))
        for name, other in others:
            if other.is_sparse or p.is_sparse:
                raise RuntimeError(f"fused_adam_: sparse tensors are not supported (params[{i}])")
            if other.device != p.device or other.dtype != p.dtype or other.shape != p.shape:
                raise RuntimeError(f"fused_adam_: {name}[{i}] is {other.dtype} {list(other.shape)} on {other.device} "
                                   f"but params[{i}] is {p.dtype} {list(p.shape)} on {p.device}")


@torch.no_grad()
def fused_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, clock, schedule, *, beta1, beta2, eps,
                weight_decay, decoupled_weight_decay, amsgrad, maximize, grad_scale=None, found_inf=None, invalid_steps=None,
                handle=None) -> None:
    check_fused_adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, clock, schedule, beta1=beta1,
                          beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, grad_scale=grad_scale,
                          found_inf=found_inf, invalid_steps=invalid_steps)
    schedule_value(schedule, 0)  # a malformed program raises, as the CPU op's validation does
    if len(params) == 0:
        return
    if found_inf is not None and found_inf.item() != 0.0:
        return
    t = int(clock.item()) if clock is not None else int(step.item())
    lr, scheduled_beta1 = schedule_value(schedule, t)
    b1 = beta1 if math.isnan(scheduled_beta1) else scheduled_beta1
    n = int(step.item()) + 1
    step_size = usable_step_size(lr, b1, n)
    if step_size is None:
        # note [Unusable schedule values] (csrc/common/step_scalars.h): skipped and counted.
        if invalid_steps is not None:
            invalid_steps.add_(1)
        return
    bc2_sqrt = math.sqrt(1.0 - beta2 ** float(n))
    opmath = opmath_dtype(params[0].dtype)

    def scalar(x: float) -> torch.Tensor:
        # A Python float rounded to the opmath type, as the kernels receive their scalars.
        return torch.tensor(x, dtype=opmath)

    for i, param in enumerate(params):
        p = param.to(opmath)
        g = grads[i].to(opmath)
        if grad_scale is not None:
            g = g / grad_scale.to(device=g.device, dtype=opmath)
            grads[i].copy_(g)
        if maximize:
            g = -g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * scalar(1.0 - lr * weight_decay)
            else:
                g = g + scalar(weight_decay) * p
        m = exp_avgs[i].to(opmath)
        m = m.lerp(g, float(scalar(1.0 - b1)))
        v = exp_avg_sqs[i].to(opmath) * scalar(beta2) + scalar(1.0 - beta2) * g * g
        second = v
        if amsgrad:
            second = torch.maximum(max_exp_avg_sqs[i].to(opmath), v)
            max_exp_avg_sqs[i].copy_(second)
        denom = second.sqrt() / scalar(bc2_sqrt) + scalar(eps)
        p = p + scalar(-step_size) * m / denom
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


@torch.no_grad()
def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, buckets, words, clocks, rules, applied,
               pending, *, grad_scale=None, found_inf=None, invalid_steps=None, handle=None) -> None:
    """``lrfused::adam_step_`` (note [One op per step] in csrc/common/step_plan.h): the deferred
    scheduler steps on the host's floats, then each bucket as :func:`fused_adam_` steps it."""
    from . import _step_plan as P

    rows = buckets.tolist()
    old_words = words.tolist()
    group_count = len(old_words) // _rules.HELD_WORDS
    header = pending.tolist()
    clock_values = [int(c.item()) for c in clocks]
    done = int(applied.item())
    new_words = list(old_words)
    # The deferred steps, in order; one already applied (a replayed graph's) is skipped.
    for i, rule_tensor in enumerate(rules):
        sequence = int(header[0]) + i
        if done > sequence:
            continue
        slot = int(header[1 + i])
        clock_values[slot] += 1
        indexed = rule_tensor.tolist()
        for g in range(group_count):
            base = g * _rules.HELD_WORDS
            new_words[base + _rules.HELD_LR], new_words[base + _rules.HELD_BETA1] = _rules.apply_group_rule(
                indexed, group_count, g, clock_values[slot], new_words[base + _rules.HELD_LR],
                new_words[base + _rules.HELD_BETA1])
        done = sequence + 1
    for row, step in zip(rows, steps):
        begin, end, max_begin = int(row[P.TENSOR_BEGIN]), int(row[P.TENSOR_END]), int(row[P.MAX_BEGIN])
        flags, offset, group = int(row[P.FLAGS]), int(row[P.PROGRAM]), int(row[P.GROUP])
        amsgrad = bool(flags & P.FLAG_AMSGRAD)
        source = new_words if group >= 0 else old_words
        program = torch.tensor(source[offset:offset + int(source[offset + 1])], dtype=torch.float64)
        fused_adam_(params[begin:end], grads[begin:end], exp_avgs[begin:end], exp_avg_sqs[begin:end],
                    max_exp_avg_sqs[max_begin:max_begin + end - begin] if amsgrad else [], step, None, program,
                    beta1=row[P.BETA1], beta2=row[P.BETA2], eps=row[P.EPS], weight_decay=row[P.WEIGHT_DECAY],
                    decoupled_weight_decay=bool(flags & P.FLAG_DECOUPLED), amsgrad=amsgrad,
                    maximize=bool(flags & P.FLAG_MAXIMIZE), grad_scale=grad_scale, found_inf=found_inf,
                    invalid_steps=invalid_steps)
    if rules:
        words.copy_(torch.tensor(new_words, dtype=torch.float64))
        for clock, value in zip(clocks, clock_values):
            clock.fill_(value)
        applied.fill_(done)
