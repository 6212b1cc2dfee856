"""The step ops (``lrfused::adam_step_``, ``sgd_step_``, ``rmsprop_step_``, ``adagrad_step_``) and
``lrfused::advance_lr_`` in plain PyTorch: the test oracle,
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


# Per rule (its UpdateRuleKind): its name, its state lists' names in its op, and the names of the
# bucket row's momentum and decay words, as csrc/ops.cpp names them in its messages.
RULE_NAMES = ("Adam", "SGD", "RMSprop", "Adagrad")
STATE_LISTS = (
    ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    ("momentum_buffers", "", ""),
    ("square_avgs", "momentum_buffers", "grad_avgs"),
    ("state_sums", "", ""),
)
MOMENTUM_NAMES = ("beta1", "momentum", "momentum", "momentum word")
DECAY_NAMES = ("beta2", "dampening", "alpha", "lr_decay")
RULE_FLAGS = (1 | 2 | 4, 4 | 8 | 16, 4 | 8 | 32, 4)


def rule_has_state(kind: int, flags: int, k: int) -> bool:
    """csrc/common/update_rules.h's rule_has_state."""
    if kind == 0:
        return k < 2 or (k == 2 and bool(flags & 1))
    if kind == 1:
        return k == 0 and bool(flags & 8)
    if kind == 2:
        return k == 0 or (k == 1 and bool(flags & 8)) or (k == 2 and bool(flags & 32))
    return k == 0


def _valid_decay(kind: int, decay: float) -> bool:
    if not math.isfinite(decay):
        return False
    if kind == 0:
        return 0.0 <= decay < 1.0
    return kind == 1 or decay >= 0.0


# Numbers in the messages are written with ``:g``, as C++'s ostream writes a double (csrc/ops.cpp).
def check_step_args(
    op: str,
    kind: int,
    params,
    grads,
    columns,
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
) -> tuple[list[list[float]], list[list]]:
    """The C++ op's argument checks (``gather_buckets``, ``check_step_tensor``, ``gather_deferred``
    in csrc/ops.cpp, ``attach_states``, ``set_amp`` in csrc/step_ops.cpp), with their messages: the
    reference refuses what the kernels refuse, before it changes anything. Returns the bucket rows
    as floats and each tensor's states (None where it has none)."""
    from . import _step_plan as P

    def fail(message: str) -> None:
        raise RuntimeError(f"{op}: {message}")

    n = len(params)
    if len(grads) != n:
        fail(f"params and grads must have the same length, got {n} and {len(grads)}")
    if not (
        buckets.dtype == torch.float64
        and buckets.dim() == 2
        and buckets.shape[1] == P.BUCKET_WORDS
        and buckets.device.type == "cpu"
    ):
        fail(
            f"buckets must be a contiguous CPU float64 tensor of {P.BUCKET_WORDS} words per bucket, got "
            f"{buckets.dtype} of shape {list(buckets.shape)} on {buckets.device}"
        )
    if not (words.dtype == torch.float64 and words.dim() == 1):
        fail(f"words must be a contiguous 1-d float64 tensor, got {words.dtype} of shape {list(words.shape)}")
    rows = buckets.tolist()
    if len(steps) != len(rows):
        fail(f"{len(rows)} buckets need {len(rows)} step counters, got {len(steps)}")
    bucket_of, begin = [], 0
    states: list[list] = [[None] * P.MAX_STATES for _ in range(n)]
    for b, (row, step) in enumerate(zip(rows, steps)):
        if step.dtype != torch.int64 or step.numel() != 1 or step.device != words.device:
            fail(
                f"steps[{b}] must be a one-element int64 tensor on {words.device}, got {step.dtype} with "
                f"{step.numel()} elements on {step.device}"
            )
        end = row[P.TENSOR_END]
        if row[P.TENSOR_BEGIN] != begin or not (begin <= end <= n and end == int(end)):
            fail(
                f"bucket {b} covers tensors [{row[P.TENSOR_BEGIN]:g}, {end:g}); the buckets must cover the {n} "
                "tensors in order"
            )
        if row[P.RULE] != kind:
            fail(f"bucket {b}: invalid update rule: {row[P.RULE]:g} (this op runs {RULE_NAMES[kind]})")
        if not math.isfinite(row[P.MOMENTUM]):  # any finite momentum: note [Unusable schedule values]
            fail(f"bucket {b}: invalid {MOMENTUM_NAMES[kind]}: {row[P.MOMENTUM]:g}")
        if not _valid_decay(kind, row[P.DECAY]):
            fail(f"bucket {b}: invalid {DECAY_NAMES[kind]}: {row[P.DECAY]:g}")
        for name, word in (("eps", P.EPS), ("weight_decay", P.WEIGHT_DECAY)):
            if not (math.isfinite(row[word]) and row[word] >= 0.0):
                fail(f"bucket {b}: invalid {name}: {row[word]:g}")
        flags = row[P.FLAGS]
        if not (0 <= flags <= 63 and flags == int(flags) and int(flags) & ~RULE_FLAGS[kind] == 0):
            fail(f"bucket {b}: invalid flags for {RULE_NAMES[kind]}: {flags:g}")
        group = row[P.GROUP]
        if not (group == -1 or (0 <= group <= words.numel() // _rules.HELD_WORDS - 1 and group == int(group))):
            fail(f"bucket {b}: invalid group: {group:g}")
        offset = row[P.PROGRAM]
        if not (0 <= offset <= words.numel() - 2 and offset == int(offset)):
            fail(f"bucket {b}: program offset {offset:g} is outside the {words.numel()} words")
        bucket_of += [b] * (int(end) - begin)
        begin = int(end)
    if begin != n:
        fail(f"the buckets cover {begin} of the {n} tensors")
    for b, row in enumerate(rows):
        first_tensor, end = int(row[P.TENSOR_BEGIN]), int(row[P.TENSOR_END])
        for k in range(P.MAX_STATES):
            if not rule_has_state(kind, int(row[P.FLAGS]), k):
                continue
            first, column = row[P.STATE_BEGIN + k], columns[k]
            if not (first >= 0 and first == int(first) and int(first) + end - first_tensor <= len(column)):
                fail(
                    f"bucket {b} needs {STATE_LISTS[kind][k]} [{first:g}, {first + end - first_tensor:g}), but there "
                    f"are {len(column)}"
                )
            for i in range(first_tensor, end):
                states[i][k] = column[int(first) + i - first_tensor]
    for i, p in enumerate(params):
        if p.dtype not in KERNEL_DTYPES:
            fail(f"params must be float32, float16, bfloat16 or float64, got {p.dtype} for params[{i}]")
        if p.is_sparse:
            fail(f"sparse tensors are not supported (params[{i}])")
        if p.device != words.device:
            fail(f"params[{i}] is on {p.device} but the words are on {words.device}")
        others = [("grads", grads[i])] + [
            (STATE_LISTS[kind][k], states[i][k]) for k in range(P.MAX_STATES) if states[i][k] is not None
        ]
        for name, other in others:
            if other.device != p.device or other.dtype != p.dtype or other.shape != p.shape:
                fail(
                    f"{name}[{i}] is {other.dtype} {list(other.shape)} on {other.device} but params[{i}] is "
                    f"{p.dtype} {list(p.shape)} on {p.device}"
                )
            if other.is_sparse:
                fail(f"sparse tensors are not supported ({name}[{i}])")
        first = params[int(rows[bucket_of[i]][P.TENSOR_BEGIN])]
        if p.dtype != first.dtype:
            fail(f"params[{i}] has dtype {p.dtype} but its bucket's first param has another")
    if len(rules) > P.MAX_DEFERRED_STEPS or len(clocks) > len(rules):
        fail(
            f"at most {P.MAX_DEFERRED_STEPS} deferred steps and one clock per step, got {len(rules)} rules and "
            f"{len(clocks)} clocks"
        )
    if applied.dtype != torch.int64 or applied.numel() != 1:
        fail(
            f"applied must be a one-element int64 tensor on {words.device}, got {applied.dtype} with "
            f"{applied.numel()} elements on {applied.device}"
        )
    if pending.dtype != torch.int64 or pending.dim() != 1 or pending.numel() < 1 + len(rules):
        fail(
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
            fail(
                f"{name} must be a one-element {dtype} tensor on {words.device}, got {value.dtype} with "
                f"{value.numel()} elements on {value.device}"
            )
    for row in rows:
        # A malformed program raises, as the CPU op's validation does.
        offset = int(row[P.PROGRAM])
        program = words[offset : offset + int(words[offset + 1])]
        if program.numel() < 2:
            fail(f"the program at word {offset} is beyond the {words.numel()} words")
        try:
            schedule_value(program, 0)
        except (ValueError, IndexError) as error:
            fail(f"malformed program at word {offset}: {error}")
    return rows, states


def _step(
    op: str,
    kind: int,
    params,
    grads,
    columns,
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
) -> None:
    """One step op of any rule (note [One op per step] in csrc/common/step_plan.h): the deferred
    scheduler steps on the host's floats, then each bucket as its rule's function steps it."""
    from . import _step_plan as P

    rows, states = check_step_args(
        op,
        kind,
        params,
        grads,
        columns,
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
    writes = _host_writes(pending, len(rules), words.numel(), op)
    if writes and done <= writes[0]:
        for position, value in writes[1]:
            new_words[position] = value
        done = writes[0] + 1
    skipped = found_inf is not None and found_inf.item() != 0.0
    for row, step in zip(rows, steps):
        begin, end = int(row[P.TENSOR_BEGIN]), int(row[P.TENSOR_END])
        offset, group = int(row[P.PROGRAM]), int(row[P.GROUP])
        source = new_words if group >= 0 else old_words
        program = torch.tensor(source[offset : offset + int(source[offset + 1])], dtype=torch.float64)
        if begin == end or skipped:
            continue
        t = int(step.item())
        lr, scheduled = schedule_value(program, t)
        momentum = row[P.MOMENTUM] if math.isnan(scheduled) else scheduled
        tensors = list(range(begin, end))
        # Each rule's function returns False where note [Unusable schedule values] skips the bucket.
        usable = _RULE_STEPS[kind](
            [params[i] for i in tensors],
            [grads[i] for i in tensors],
            [states[i] for i in tensors],
            t,
            lr,
            momentum,
            row,
            grad_scale,
        )
        if usable:
            step.add_(1)
        elif invalid_steps is not None:
            invalid_steps.add_(1)
    if rules or writes:
        words.copy_(torch.tensor(new_words, dtype=torch.float64))
        for clock, value in zip(clocks, clock_values):
            clock.fill_(value)
        applied.fill_(done)


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
    """``lrfused::adam_step_``: see :func:`_step`."""
    n = len(params)
    if not (len(grads) == n and len(exp_avgs) == n and len(exp_avg_sqs) == n):
        raise RuntimeError(
            f"adam_step_: params, grads, exp_avgs and exp_avg_sqs must have the same length, got {n}, {len(grads)}, "
            f"{len(exp_avgs)} and {len(exp_avg_sqs)}"
        )
    columns = (exp_avgs, exp_avg_sqs, max_exp_avg_sqs)
    shared = (steps, buckets, words, clocks, rules, applied, pending)
    _step("adam_step_", 0, params, grads, columns, *shared, grad_scale, found_inf, invalid_steps)


# The other rules' ops: their state lists by name, then the arguments every step op shares
# (steps, buckets, words, clocks, rules, applied, pending), as their schemas in csrc/ops.cpp name them.


@torch.no_grad()
def sgd_step_(
    params, grads, momentum_buffers, *shared, grad_scale=None, found_inf=None, invalid_steps=None, handle=None
):
    """``lrfused::sgd_step_``: see :func:`_step`."""
    columns = (momentum_buffers, [], [])
    _step("sgd_step_", 1, params, grads, columns, *shared, grad_scale, found_inf, invalid_steps)


@torch.no_grad()
def rmsprop_step_(
    params,
    grads,
    square_avgs,
    momentum_buffers,
    grad_avgs,
    *shared,
    grad_scale=None,
    found_inf=None,
    invalid_steps=None,
    handle=None,
):
    """``lrfused::rmsprop_step_``: see :func:`_step`."""
    columns = (square_avgs, momentum_buffers, grad_avgs)
    _step("rmsprop_step_", 2, params, grads, columns, *shared, grad_scale, found_inf, invalid_steps)


@torch.no_grad()
def adagrad_step_(params, grads, state_sums, *shared, grad_scale=None, found_inf=None, invalid_steps=None, handle=None):
    """``lrfused::adagrad_step_``: see :func:`_step`."""
    columns = (state_sums, [], [])
    _step("adagrad_step_", 3, params, grads, columns, *shared, grad_scale, found_inf, invalid_steps)


def _host_writes(pending, count: int, word_count: int, op: str = "adam_step_"):
    """(sequence number, [(position, value)]) of the host writes ``pending`` carries, or None."""
    from . import _step_plan as P

    def _fail(message: str) -> None:
        raise RuntimeError(f"{op}: {message}")

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


def _scalar(x: float, opmath: torch.dtype) -> torch.Tensor:
    # A Python float rounded to the opmath type, as the kernels receive their scalars.
    return torch.tensor(x, dtype=opmath)


def _unscaled(grad: torch.Tensor, opmath: torch.dtype, grad_scale) -> torch.Tensor:
    g = grad.to(opmath)
    if grad_scale is not None:
        g = g / grad_scale.to(device=g.device, dtype=opmath)
        grad.copy_(g)
    return g


def _coupled_grad(param, grad, flags: int, weight_decay: float, opmath, grad_scale):
    """(p, g) in the opmath type: the grad unscaled (and written back so), negated for maximize,
    with the L2 term of weight decay: the first lines of every rule but AdamW."""
    from . import _step_plan as P

    p, g = param.to(opmath), _unscaled(grad, opmath, grad_scale)
    if flags & P.FLAG_MAXIMIZE:
        g = -g
    if weight_decay != 0:
        g = g + _scalar(weight_decay, opmath) * p
    return p, g


def _adam_bucket(params, grads, states, t, lr, beta1, row, grad_scale) -> bool:
    """Adam's update (note [Order of operations] in csrc/common/adam_math.h)."""
    from . import _step_plan as P

    n = t + 1
    step_size = usable_step_size(lr, beta1, n)
    if step_size is None:
        return False
    flags, beta2, eps, weight_decay = int(row[P.FLAGS]), row[P.DECAY], row[P.EPS], row[P.WEIGHT_DECAY]
    bc2_sqrt = math.sqrt(1.0 - beta2 ** float(n))
    opmath = opmath_dtype(params[0].dtype)
    for param, grad, (exp_avg, exp_avg_sq, max_exp_avg_sq) in zip(params, grads, states):
        p, g = param.to(opmath), _unscaled(grad, opmath, grad_scale)
        if flags & P.FLAG_MAXIMIZE:
            g = -g
        if weight_decay != 0:
            if flags & P.FLAG_DECOUPLED:
                p = p * _scalar(1.0 - lr * weight_decay, opmath)
            else:
                g = g + _scalar(weight_decay, opmath) * p
        m = exp_avg.to(opmath).lerp(g, float(_scalar(1.0 - beta1, opmath)))
        v = exp_avg_sq.to(opmath) * _scalar(beta2, opmath) + _scalar(1.0 - beta2, opmath) * g * g
        second = v
        if flags & P.FLAG_AMSGRAD:
            second = torch.maximum(max_exp_avg_sq.to(opmath), v)
            max_exp_avg_sq.copy_(second)
        denom = second.sqrt() / _scalar(bc2_sqrt, opmath) + _scalar(eps, opmath)
        param.copy_(p + _scalar(-step_size, opmath) * m / denom)
        exp_avg.copy_(m)
        exp_avg_sq.copy_(v)
    return True


def _sgd_bucket(params, grads, states, t, lr, momentum, row, grad_scale) -> bool:
    """SGD's update (note [SGD's order of operations] in csrc/common/sgd_math.h)."""
    from . import _step_plan as P

    if not (math.isfinite(lr) and math.isfinite(momentum)):
        return False
    flags, dampening, weight_decay = int(row[P.FLAGS]), row[P.DECAY], row[P.WEIGHT_DECAY]
    opmath = opmath_dtype(params[0].dtype)
    for param, grad, (buffer, _, _) in zip(params, grads, states):
        p, g = _coupled_grad(param, grad, flags, weight_decay, opmath, grad_scale)
        if flags & P.FLAG_MOMENTUM:
            if t == 0:
                b = g
            else:
                b = buffer.to(opmath) * _scalar(momentum, opmath) + _scalar(1.0 - dampening, opmath) * g
            buffer.copy_(b)
            g = g + _scalar(momentum, opmath) * b if flags & P.FLAG_NESTEROV else b
        param.copy_(p + _scalar(-lr, opmath) * g)
    return True


def _rmsprop_bucket(params, grads, states, t, lr, momentum, row, grad_scale) -> bool:
    """RMSprop's update (note [RMSprop's order of operations] in csrc/common/rmsprop_math.h)."""
    from . import _step_plan as P

    if not (math.isfinite(lr) and math.isfinite(momentum)):
        return False
    flags, alpha, eps, weight_decay = int(row[P.FLAGS]), row[P.DECAY], row[P.EPS], row[P.WEIGHT_DECAY]
    opmath = opmath_dtype(params[0].dtype)
    for param, grad, (square_avg, buffer, grad_avg) in zip(params, grads, states):
        p, g = _coupled_grad(param, grad, flags, weight_decay, opmath, grad_scale)
        v = square_avg.to(opmath) * _scalar(alpha, opmath) + _scalar(1.0 - alpha, opmath) * g * g
        square_avg.copy_(v)
        if flags & P.FLAG_CENTERED:
            m = grad_avg.to(opmath).lerp(g, float(_scalar(1.0 - alpha, opmath)))
            grad_avg.copy_(m)
            avg = (v + _scalar(-1.0, opmath) * m * m).sqrt()
        else:
            avg = v.sqrt()
        avg = avg + _scalar(eps, opmath)
        if flags & P.FLAG_MOMENTUM:
            b = buffer.to(opmath) * _scalar(momentum, opmath) + g / avg
            buffer.copy_(b)
            param.copy_(p + _scalar(-lr, opmath) * b)
        else:
            param.copy_(p + _scalar(-lr, opmath) * g / avg)
    return True


def _adagrad_bucket(params, grads, states, t, lr, momentum, row, grad_scale) -> bool:
    """Adagrad's update (note [Adagrad's order of operations] in csrc/common/adagrad_math.h)."""
    from . import _step_plan as P

    flags, lr_decay, eps, weight_decay = int(row[P.FLAGS]), row[P.DECAY], row[P.EPS], row[P.WEIGHT_DECAY]
    clr = lr / (1.0 + t * lr_decay) if math.isfinite(lr) else math.nan
    if not math.isfinite(clr):
        return False
    opmath = opmath_dtype(params[0].dtype)
    for param, grad, (state_sum, _, _) in zip(params, grads, states):
        p, g = _coupled_grad(param, grad, flags, weight_decay, opmath, grad_scale)
        total = state_sum.to(opmath) + _scalar(1.0, opmath) * g * g
        state_sum.copy_(total)
        param.copy_(p + _scalar(-clr, opmath) * g / (total.sqrt() + _scalar(eps, opmath)))
    return True


_RULE_STEPS = (_adam_bucket, _sgd_bucket, _rmsprop_bucket, _adagrad_bucket)


@torch.no_grad()
def advance_lr_(groups: torch.Tensor, clock: torch.Tensor, rules: torch.Tensor, epoch: int | None = None) -> None:
    """``lrfused::advance_lr_`` (note [Scheduler steps on the device]) on the host's floats."""
    if epoch is not None and epoch < 0:
        raise RuntimeError(f"advance_lr_: epoch must be non-negative, got {epoch}")
    t = int(epoch) if epoch is not None else int(clock.item()) + 1
    words = _rules.apply_rules(rules.tolist(), groups.tolist(), t, epoch is not None)
    groups.copy_(torch.tensor(words, dtype=torch.float64))
    clock.fill_(t)
