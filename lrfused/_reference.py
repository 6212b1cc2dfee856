"""The ops ``lrfused::adam_step_`` and ``lrfused::advance_lr_`` in plain PyTorch: the test oracle,
and the fallback when the compiled library cannot be loaded. It follows note [Order of operations] of
``csrc/common/adam_math.h`` in torch's opmath (float64 for float64 params, float32 for the
others), and evaluates the program with :func:`lrfused._schedule_encoding.decode`, the Python mirror of
``csrc/common/lr_schedule.h``."""

from __future__ import annotations

import math

import torch

from . import _rules
from ._schedule_encoding import decode


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


def _fail(message: str) -> None:
    raise RuntimeError(f"adam_step_: {message}")


def check_adam_step_args(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    steps,
    buckets,
    words,
    clocks,
    rules,
    applied,
    pending,
    grad_scale,
    found_inf,
    invalid_steps,
) -> list[list[float]]:
    """The C++ op's argument checks (``gather_buckets``, ``check_step_tensor``, ``gather_deferred``
    in csrc/ops.cpp, ``set_amp`` in csrc/step_ops.cpp), with their messages: the reference refuses
    what the kernels refuse, before it changes anything. Returns the bucket rows as floats."""
    from . import _step_plan as P

    n = len(params)
    if not (len(grads) == n and len(exp_avgs) == n and len(exp_avg_sqs) == n):
        _fail(
            f"params, grads, exp_avgs and exp_avg_sqs must have the same length, got {n}, {len(grads)}, "
            f"{len(exp_avgs)} and {len(exp_avg_sqs)}"
        )
    if not (
        buckets.dtype == torch.float64
        and buckets.dim() == 2
        and buckets.shape[1] == P.BUCKET_WORDS
        and buckets.device.type == "cpu"
    ):
        _fail(
            f"buckets must be a contiguous CPU float64 tensor of {P.BUCKET_WORDS} words per bucket, got "
            f"{buckets.dtype} of shape {list(buckets.shape)} on {buckets.device}"
        )
    if not (words.dtype == torch.float64 and words.dim() == 1):
        _fail(f"words must be a contiguous 1-d float64 tensor, got {words.dtype} of shape {list(words.shape)}")
    rows = buckets.tolist()
    if len(steps) != len(rows):
        _fail(f"{len(rows)} buckets need {len(rows)} step counters, got {len(steps)}")
    bucket_of, begin = [], 0
    for b, (row, step) in enumerate(zip(rows, steps)):
        if step.dtype != torch.int64 or step.numel() != 1 or step.device != words.device:
            _fail(
                f"steps[{b}] must be a one-element int64 tensor on {words.device}, got {step.dtype} with "
                f"{step.numel()} elements on {step.device}"
            )
        end = row[P.TENSOR_END]
        if row[P.TENSOR_BEGIN] != begin or not (begin <= end <= n and end == int(end)):
            _fail(
                f"bucket {b} covers tensors [{row[P.TENSOR_BEGIN]}, {end}); the buckets must cover the {n} "
                "tensors in order"
            )
        if not math.isfinite(row[P.BETA1]):  # any finite beta1: note [Unusable schedule values]
            _fail(f"bucket {b}: invalid beta1: {row[P.BETA1]}")
        if not 0.0 <= row[P.BETA2] < 1.0:
            _fail(f"bucket {b}: invalid beta2: {row[P.BETA2]}")
        for name, word in (("eps", P.EPS), ("weight_decay", P.WEIGHT_DECAY)):
            if not (math.isfinite(row[word]) and row[word] >= 0.0):
                _fail(f"bucket {b}: invalid {name}: {row[word]}")
        flags = row[P.FLAGS]
        if not (0 <= flags <= P.FLAG_AMSGRAD | P.FLAG_DECOUPLED | P.FLAG_MAXIMIZE and flags == int(flags)):
            _fail(f"bucket {b}: invalid flags: {flags}")
        offset = row[P.PROGRAM]
        if not (0 <= offset <= words.numel() - 2 and offset == int(offset)):
            _fail(f"bucket {b}: program offset {offset} is outside the {words.numel()} words")
        if int(flags) & P.FLAG_AMSGRAD and row[P.MAX_BEGIN] + (end - begin) > len(max_exp_avg_sqs):
            _fail(
                f"bucket {b} (AMSGrad) needs max_exp_avg_sqs [{row[P.MAX_BEGIN]}, "
                f"{row[P.MAX_BEGIN] + (end - begin)}), but there are {len(max_exp_avg_sqs)}"
            )
        bucket_of += [b] * (int(end) - begin)
        begin = int(end)
    if begin != n:
        _fail(f"the buckets cover {begin} of the {n} tensors")
    for i, p in enumerate(params):
        if p.dtype not in KERNEL_DTYPES:
            _fail(f"params must be float32, float16, bfloat16 or float64, got {p.dtype} for params[{i}]")
        if p.device != words.device:
            _fail(f"params[{i}] is on {p.device} but the words are on {words.device}")
        row = rows[bucket_of[i]]
        others = [("grads", grads[i]), ("exp_avgs", exp_avgs[i]), ("exp_avg_sqs", exp_avg_sqs[i])]
        if int(row[P.FLAGS]) & P.FLAG_AMSGRAD:
            others.append(("max_exp_avg_sqs", max_exp_avg_sqs[int(row[P.MAX_BEGIN]) + i - int(row[P.TENSOR_BEGIN])]))
        for name, other in [("params", p)] + others:
            if other.is_sparse:
                _fail(f"sparse tensors are not supported ({name}[{i}])")
            if other.device != p.device or other.dtype != p.dtype or other.shape != p.shape:
                _fail(
                    f"{name}[{i}] is {other.dtype} {list(other.shape)} on {other.device} but params[{i}] is "
                    f"{p.dtype} {list(p.shape)} on {p.device}"
                )
        first = params[int(row[P.TENSOR_BEGIN])]
        if p.dtype != first.dtype:
            _fail(f"params[{i}] has dtype {p.dtype} but its bucket's first param has another")
    if len(rules) > P.MAX_DEFERRED_STEPS or len(clocks) > len(rules):
        _fail(
            f"at most {P.MAX_DEFERRED_STEPS} deferred steps and one clock per step, got {len(rules)} rules and "
            f"{len(clocks)} clocks"
        )
    if applied.dtype != torch.int64 or applied.numel() != 1:
        _fail(
            f"applied must be a one-element int64 tensor on {words.device}, got {applied.dtype} with "
            f"{applied.numel()} elements on {applied.device}"
        )
    if pending.dtype != torch.int64 or pending.dim() != 1 or pending.numel() < 1 + len(rules):
        _fail(
            f"pending must be a contiguous CPU int64 tensor of at least {1 + len(rules)} words (the first "
            f"sequence number, then each step's clock), got {pending.dtype} of shape {list(pending.shape)} on "
            f"{pending.device}"
        )
    for name, value, dtype in (
        ("grad_scale", grad_scale, torch.float32),
        ("found_inf", found_inf, torch.float32),
        ("invalid_steps", invalid_steps, torch.int64),
    ):
        if value is not None and (value.dtype != dtype or value.numel() != 1):
            _fail(
                f"{name} must be a one-element {dtype} tensor on {words.device}, got {value.dtype} with "
                f"{value.numel()} elements on {value.device}"
            )
    for row in rows:
        # A malformed program raises, as the CPU op's validation does.
        offset = int(row[P.PROGRAM])
        program = words[offset : offset + int(words[offset + 1])]
        if program.numel() < 2:
            _fail(f"the program at word {offset} is beyond the {words.numel()} words")
        try:
            schedule_value(program, 0)
        except (ValueError, IndexError) as error:
            _fail(f"malformed program at word {offset}: {error}")
    return rows


@torch.no_grad()
def adam_step_(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    steps,
    buckets,
    words,
    clocks,
    rules,
    applied,
    pending,
    *,
    grad_scale=None,
    found_inf=None,
    invalid_steps=None,
    handle=None,
) -> None:
    """``lrfused::adam_step_`` (note [One op per step] in csrc/common/step_plan.h): the deferred
    scheduler steps on the host's floats, then each bucket as :func:`_bucket_step` steps it."""
    from . import _step_plan as P

    rows = check_adam_step_args(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        buckets,
        words,
        clocks,
        rules,
        applied,
        pending,
        grad_scale,
        found_inf,
        invalid_steps,
    )
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
                indexed,
                group_count,
                g,
                clock_values[slot],
                new_words[base + _rules.HELD_LR],
                new_words[base + _rules.HELD_BETA1],
            )
        done = sequence + 1
    # The host writes (note [Host writes]), after the steps, once.
    writes = _host_writes(pending, len(rules), words.numel())
    if writes and done <= writes[0]:
        for position, value in writes[1]:
            new_words[position] = value
        done = writes[0] + 1
    for row, step in zip(rows, steps):
        begin, end, max_begin = int(row[P.TENSOR_BEGIN]), int(row[P.TENSOR_END]), int(row[P.MAX_BEGIN])
        flags, offset, group = int(row[P.FLAGS]), int(row[P.PROGRAM]), int(row[P.GROUP])
        amsgrad = bool(flags & P.FLAG_AMSGRAD)
        source = new_words if group >= 0 else old_words
        program = torch.tensor(source[offset : offset + int(source[offset + 1])], dtype=torch.float64)
        _bucket_step(
            params[begin:end],
            grads[begin:end],
            exp_avgs[begin:end],
            exp_avg_sqs[begin:end],
            max_exp_avg_sqs[max_begin : max_begin + end - begin] if amsgrad else [],
            step,
            program,
            beta1=row[P.BETA1],
            beta2=row[P.BETA2],
            eps=row[P.EPS],
            weight_decay=row[P.WEIGHT_DECAY],
            decoupled_weight_decay=bool(flags & P.FLAG_DECOUPLED),
            amsgrad=amsgrad,
            maximize=bool(flags & P.FLAG_MAXIMIZE),
            grad_scale=grad_scale,
            found_inf=found_inf,
            invalid_steps=invalid_steps,
        )
    if rules or writes:
        words.copy_(torch.tensor(new_words, dtype=torch.float64))
        for clock, value in zip(clocks, clock_values):
            clock.fill_(value)
        applied.fill_(done)


def _host_writes(pending, count: int, word_count: int):
    """(sequence number, [(position, value)]) of the host writes ``pending`` carries, or None."""
    from . import _step_plan as P

    if pending.numel() < P.PENDING_WRITES:
        return None
    header = pending.tolist()
    writes = header[P.PENDING_WRITE_COUNT]
    if not 0 <= writes <= P.MAX_HOST_WRITES or pending.numel() < P.PENDING_WRITES + 2 * writes:
        _fail(f"pending carries {writes} host writes; at most {P.MAX_HOST_WRITES} fit in its {pending.numel()} words")
    if writes == 0:
        return None
    values = pending[P.PENDING_WRITES : P.PENDING_WRITES + 2 * writes].view(torch.float64).tolist()
    sequence = header[P.PENDING_WRITE_SEQUENCE]
    if count and sequence < header[0] + count:
        _fail(
            f"the host writes' sequence number {sequence} must come after the call's {count} deferred steps "
            f"(from {header[0]})"
        )
    pairs = []
    for w in range(writes):
        position = header[P.PENDING_WRITES + 2 * w]
        if not (0 <= position < word_count and position % _rules.HELD_WORDS in (_rules.HELD_LR, _rules.HELD_BETA1)):
            _fail(
                f"host write {w} is at word {position}, not the lr or beta1 word of one of the "
                f"{word_count // _rules.HELD_WORDS} groups"
            )
        pairs.append((position, values[2 * w + 1]))
    return sequence, pairs


def _bucket_step(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    step,
    schedule,
    *,
    beta1,
    beta2,
    eps,
    weight_decay,
    decoupled_weight_decay,
    amsgrad,
    maximize,
    grad_scale,
    found_inf,
    invalid_steps,
) -> None:
    """One bucket's update at the lr its program gives at its step (arguments already checked)."""
    if len(params) == 0:
        return
    if found_inf is not None and found_inf.item() != 0.0:
        return
    t = int(step.item())
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
