"""The schedule nodes: each kind's value in Python floats and its words in a kernel program.

A :class:`Schedule` is a small object built once from its arguments (nothing in lrfused changes it
afterwards, and a program already encoded keeps the values it was encoded with). Calling it,
``s(t)``, gives its value at the
integer clock ``t``: that is the reference the C++ and CUDA evaluators
(``csrc/common/lr_schedule.h``) are tested against. :meth:`Schedule.encode` turns it into the flat
list of doubles those evaluators read, in the layout ``_layout.LAYOUTS`` gives its kind, and
:func:`decode` turns such a list back into nodes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from . import _layout
from ._checks import finite, non_negative_int, positive, positive_int
from ._layout import LAYOUTS, MAX_DEPTH, NodeLayout, field_name, field_type


class Schedule:
    """Base class: a value (and optionally beta1) at every integer clock ``t >= 0``.

    A node's parameter words are the attributes its kind's :class:`NodeLayout` names, in that
    order, then its variable-length :meth:`_tail`; decoding calls the constructor with the
    same names.
    """

    kind: ClassVar[int]
    children: tuple[Schedule, ...] = ()

    def __call__(self, t: int) -> float:
        return self.value(t)[0]

    def value(self, t: int) -> tuple[float, float | None]:
        """(lr, beta1) at clock t; beta1 is None unless the schedule cycles it."""
        return self.lr(t), None

    def lr(self, t: int) -> float:
        raise NotImplementedError

    @classmethod
    def layout(cls) -> NodeLayout:
        return LAYOUTS[cls.kind]

    def params(self) -> list[float]:
        """The node's parameter words, before its children."""
        fixed = [float(getattr(self, field_name(field))) for field in self.layout().fields]
        return fixed + [float(word) for word in self._tail()]

    def _tail(self) -> Sequence[float]:
        """The variable-length words after the fixed ones (milestones, boundaries)."""
        return ()

    @classmethod
    def from_params(cls, words: Sequence[float], children: Sequence[Schedule]) -> Schedule:
        """The node that :meth:`params` (and its children) encode."""
        fixed = cls.layout().fields
        fields = {field_name(field): field_type(field)(word) for field, word in zip(fixed, words)}
        return cls._from_fields(fields, words[len(fixed) :], children)

    @classmethod
    def _from_fields(cls, fields: dict[str, Any], tail: Sequence[float], children: Sequence[Schedule]) -> Schedule:
        return cls(**fields)

    @property
    def cycles_beta1(self) -> bool:
        return any(child.cycles_beta1 for child in self.children)

    @property
    def depth(self) -> int:
        return 1 + max((child.depth for child in self.children), default=0)

    def encode(self) -> list[float]:
        """The program words of this schedule (note [Schedule encoding])."""
        if self.depth > MAX_DEPTH:
            raise ValueError(f"schedule nests {self.depth} levels deep; the kernels evaluate at most {MAX_DEPTH}")
        body = [float(x) for x in self.params()]
        for child in self.children:
            body += child.encode()
        return [float(self.kind), float(len(body) + 2)] + body

    def param_count(self) -> int:
        """How many words :meth:`params` gives (without evaluating a table)."""
        return len(self.layout().fields) + len(self._tail())

    def encoded_length(self) -> int:
        """``len(self.encode())``, computed without encoding."""
        return 2 + self.param_count() + sum(child.encoded_length() for child in self.children)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Constant(Schedule):
    """``value`` at every step."""

    kind = _layout.KIND_CONSTANT

    def __init__(self, value: float):
        self.value_ = finite("value", value)

    def lr(self, t):
        return self.value_

    @classmethod
    def _from_fields(cls, fields, tail, children):
        return cls(fields["value_"])


class Held(Schedule):
    """A param group's current lr (and beta1, NaN when the optimizer's applies), as words that the
    host and the scheduler ops write in place (note [Scheduler steps on the device])."""

    kind = _layout.KIND_HELD

    def __init__(self, lr: float, beta1: float = math.nan):
        self.lr_, self.beta1_ = float(lr), float(beta1)

    def value(self, t):
        return self.lr_, None if math.isnan(self.beta1_) else self.beta1_

    def lr(self, t):
        return self.lr_

    @classmethod
    def _from_fields(cls, fields, tail, children):
        return cls(fields["lr_"], fields["beta1_"])


class Tabulated(Schedule):
    """Values of a Python function of t over ``[0, horizon)``, tabulated once on the host.

    ``function(t)`` is called for every ``t < horizon`` when the schedule is encoded; the kernels
    then read the table, so a CUDA-graph replay needs no host at all. Asking Python for
    ``t >= horizon`` is an error; a kernel that reaches it reads NaN, which note [Unusable
    schedule values] skips and counts.
    """

    kind = _layout.KIND_TABLE
    first_t = 0  # the layout's words: the first tabulated step, then the count (the horizon)

    def __init__(self, function: Callable[[int], float], *, horizon: int):
        if not callable(function):
            raise TypeError(f"function must be callable, got {function!r}")
        self.function = function
        self.horizon = positive_int("horizon", horizon)

    def lr(self, t):
        if t >= self.horizon:
            raise ValueError(f"the schedule was tabulated up to horizon={self.horizon}, asked for t={t}")
        return float(self.function(t))

    @property
    def count(self) -> int:
        return self.horizon

    def params(self):
        return [float(self.first_t), float(self.horizon)] + [self.lr(t) for t in range(self.horizon)]

    def param_count(self):
        return 2 + self.horizon

    @classmethod
    def _from_fields(cls, fields, tail, children):
        return _DecodedTable(fields["first_t"], tail)


class _DecodedTable(Schedule):
    """A table read back from a program: its values from ``first_t`` on, NaN elsewhere (as in the kernels)."""

    kind = _layout.KIND_TABLE

    def __init__(self, first_t: int, values: Sequence[float]):
        self.first_t, self.values = first_t, list(values)

    def lr(self, t):
        return self.values[t - self.first_t] if 0 <= t - self.first_t < len(self.values) else math.nan

    @property
    def count(self) -> int:
        return len(self.values)

    def params(self):
        return [float(self.first_t), float(len(self.values))] + self.values

    def param_count(self):
        return 2 + len(self.values)


class Step(Schedule):
    """StepLR: ``init * gamma ** floor(t / step_size)``."""

    kind = _layout.KIND_STEP

    def __init__(self, init: float, step_size: int, gamma: float = 0.1):
        self.init = finite("init", init)
        self.step_size = positive_int("step_size", step_size)
        self.gamma = positive("gamma", gamma)

    def lr(self, t):
        return self.init * self.gamma ** math.floor(t / self.step_size)


class MultiStep(Schedule):
    """MultiStepLR: ``init * gamma ** (number of milestones <= t)``; duplicate milestones compound."""

    kind = _layout.KIND_MULTI_STEP

    def __init__(self, init: float, milestones: Sequence[int], gamma: float = 0.1):
        self.init = finite("init", init)
        for m in milestones:
            non_negative_int("milestones", m)
        self.milestones = sorted(milestones)
        self.gamma = positive("gamma", gamma)

    def lr(self, t):
        return self.init * self.gamma ** float(bisect.bisect_right(self.milestones, t))

    @property
    def milestone_count(self) -> int:
        return len(self.milestones)

    def _tail(self):
        return self.milestones

    @classmethod
    def _from_fields(cls, fields, tail, children):
        return cls(fields["init"], [int(m) for m in tail], fields["gamma"])


class ConstantFactor(Schedule):
    """ConstantLR: ``init * factor`` for ``t < total_iters``, then ``init``."""

    kind = _layout.KIND_CONSTANT_FACTOR

    def __init__(self, init: float, factor: float, total_iters: int):
        self.init = finite("init", init)
        self.factor = finite("factor", factor)
        self.total_iters = non_negative_int("total_iters", total_iters)

    def lr(self, t):
        return self.init * (self.factor if t < self.total_iters else 1.0)


class Linear(Schedule):
    """LinearLR: ``init * (start + (end - start) * min(t, T) / T)``."""

    kind = _layout.KIND_LINEAR

    def __init__(self, init: float, start_factor: float, end_factor: float, total_iters: int):
        self.init = finite("init", init)
        self.start_factor = finite("start_factor", start_factor)
        self.end_factor = finite("end_factor", end_factor)
        self.total_iters = positive_int("total_iters", total_iters)

    def lr(self, t):
        done = min(t, self.total_iters)
        factor = self.start_factor + (self.end_factor - self.start_factor) * done / self.total_iters
        # Kept inside [start, end]: torch's formula can round past the end (see lr_schedule.h).
        low, high = sorted((self.start_factor, self.end_factor))
        return self.init * min(max(factor, low), high)


class Exponential(Schedule):
    """ExponentialLR: ``init * gamma ** t`` (float64 pow, exact for long runs)."""

    kind = _layout.KIND_EXPONENTIAL

    def __init__(self, init: float, gamma: float):
        self.init = finite("init", init)
        self.gamma = positive("gamma", gamma)

    def lr(self, t):
        return self.init * self.gamma ** float(t)


class Polynomial(Schedule):
    """PolynomialLR: ``end + (init - end) * (1 - min(t, T) / T) ** power``."""

    kind = _layout.KIND_POLYNOMIAL

    def __init__(self, init: float, total_iters: int, power: float = 1.0, end: float = 0.0):
        self.init = finite("init", init)
        self.total_iters = positive_int("total_iters", total_iters)
        self.power = finite("power", power)
        self.end = finite("end", end)

    def lr(self, t):
        return self.end + (self.init - self.end) * (1.0 - min(t, self.total_iters) / self.total_iters) ** self.power


class Cosine(Schedule):
    """CosineAnnealingLR: ``floor + (init - floor) * (1 + cos(pi * t / period)) / 2``.

    Periodic past ``period`` like torch's closed form, or held at ``floor`` with ``clamp=True``.
    """

    kind = _layout.KIND_COSINE

    def __init__(self, init: float, period: int, floor: float = 0.0, clamp: bool = False):
        self.init = finite("init", init)
        self.period = positive_int("period", period)
        self.floor = finite("floor", floor)
        self.clamp = bool(clamp)

    def lr(self, t):
        if self.clamp and t >= self.period:
            return self.floor
        return self.floor + (self.init - self.floor) * (1.0 + math.cos(math.pi * t / self.period)) / 2.0


class WarmRestarts(Schedule):
    """CosineAnnealingWarmRestarts: the cosine over cycles of length ``T_0 * T_mult ** k``.

    Cycle boundaries are found by integer accumulation, as torch's ``step()`` does. torch's
    ``step(epoch)`` uses a float log that misplaces some exact restarts (T_0=3, T_mult=3, t=363
    lands in the previous cycle); lrfused always restarts exactly at the boundary.
    """

    kind = _layout.KIND_WARM_RESTARTS

    def __init__(self, init: float, T_0: int, T_mult: int = 1, floor: float = 0.0):
        self.init = finite("init", init)
        self.T_0 = positive_int("T_0", T_0)
        self.T_mult = positive_int("T_mult", T_mult)
        self.floor = finite("floor", floor)

    def position(self, t: int) -> tuple[int, int]:
        """(T_cur, T_i): steps into the current cycle, and its length."""
        if self.T_mult == 1:
            return t % self.T_0, self.T_0
        t_cur, t_i = t, self.T_0
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= self.T_mult
        return t_cur, t_i

    def lr(self, t):
        t_cur, t_i = self.position(t)
        return self.floor + (self.init - self.floor) * (1.0 + math.cos(math.pi * t_cur / t_i)) / 2.0


class Cyclic(Schedule):
    """CyclicLR, beta1 included: ``base + (max - base) * f(x) * scale`` with ``f`` the triangle.

    ``scale`` is 1 (triangular), ``1 / 2 ** (cycle - 1)`` (triangular2), ``gamma ** t``
    (exp_range), or a tabulated ``scale_fn`` of the cycle or of t. With ``cycle_momentum`` beta1 is
    ``max_m - (max_m - base_m) * f(x) * scale``.
    """

    kind = _layout.KIND_CYCLIC

    def __init__(
        self,
        base: float,
        peak: float,
        total_size: float,
        step_ratio: float,
        *,
        mode: int = _layout.CYCLIC_TRIANGULAR,
        gamma: float = 1.0,
        cycle_momentum: bool = False,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        scale_table: Tabulated | None = None,
    ):
        self.base = finite("base_lr", base)
        self.peak = finite("max_lr", peak)
        self.total_size = finite("total_size", total_size)
        self.step_ratio = finite("step_ratio", step_ratio)
        if self.total_size <= 0:
            raise ValueError(f"Invalid step_size_up + step_size_down: {total_size} (must be > 0)")
        if not 0 < self.step_ratio <= 1:
            raise ValueError(f"Invalid step_ratio: {step_ratio} (step_size_up must be > 0)")
        if mode not in range(_layout.CYCLIC_TRIANGULAR, _layout.CYCLIC_TABLE_BY_ITERATION + 1):
            raise ValueError(f"Invalid mode: {mode}")
        if (mode >= _layout.CYCLIC_TABLE_BY_CYCLE) != (scale_table is not None):
            raise ValueError("a tabulated CyclicLR mode needs a scale_table, and only it")
        self.mode = mode
        self.gamma = finite("gamma", gamma)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = finite("base_momentum", base_momentum)
        self.max_momentum = finite("max_momentum", max_momentum)
        self.children = () if scale_table is None else (scale_table,)

    @property
    def cycles_beta1(self):
        return self.cycle_momentum

    def value(self, t):
        total, ratio = self.total_size, self.step_ratio
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if self.mode == _layout.CYCLIC_TRIANGULAR:
            scale = 1.0
        elif self.mode == _layout.CYCLIC_TRIANGULAR2:
            scale = 2.0 ** (1 - cycle)  # torch: 1 / 2.0 ** (cycle - 1), which overflows for late cycles
        elif self.mode == _layout.CYCLIC_EXP_RANGE:
            scale = self.gamma ** float(t)
        else:
            scale = self.children[0](cycle if self.mode == _layout.CYCLIC_TABLE_BY_CYCLE else t)
        lr = self.base + (self.peak - self.base) * factor * scale
        beta1 = None
        if self.cycle_momentum:
            beta1 = self.max_momentum - (self.max_momentum - self.base_momentum) * factor * scale
        return lr, beta1

    def lr(self, t):
        return self.value(t)[0]

    @classmethod
    def _from_fields(cls, fields, tail, children):
        return cls(**fields, scale_table=children[0] if children else None)


class OneCycle(Schedule):
    """OneCycleLR in two or three phases, cos or linear annealing, beta1 included.

    torch raises past ``total_steps``; the kernels hold the value reached at ``total_steps``.
    """

    kind = _layout.KIND_ONE_CYCLE

    def __init__(
        self,
        initial: float,
        peak: float,
        minimum: float,
        total_steps: int,
        *,
        pct_start: float = 0.3,
        three_phase: bool = False,
        anneal_cos: bool = True,
        cycle_momentum: bool = False,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ):
        self.initial = finite("initial_lr", initial)
        self.peak = finite("max_lr", peak)
        self.minimum = finite("min_lr", minimum)
        self.total_steps = positive_int("total_steps", total_steps)
        self.pct_start = finite("pct_start", pct_start)
        if not 0 < self.pct_start < 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        self.three_phase = bool(three_phase)
        self.anneal_cos = bool(anneal_cos)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = finite("base_momentum", base_momentum)
        self.max_momentum = finite("max_momentum", max_momentum)
        ends = [phase[0] for phase in self._phases()]
        if any(later == earlier for earlier, later in zip([0.0] + ends, ends)):
            # torch divides by zero (0 / 0) when it reaches a phase that starts where it ends.
            raise ValueError(
                f"OneCycle has an empty phase (phase ends {ends}) for "
                f"pct_start={pct_start}, total_steps={total_steps}, three_phase={three_phase}"
            )

    @property
    def cycles_beta1(self):
        return self.cycle_momentum

    def _phases(self):
        n, pct = float(self.total_steps), self.pct_start
        if self.three_phase:
            return [
                (pct * n - 1, self.initial, self.peak, self.max_momentum, self.base_momentum),
                (2 * pct * n - 2, self.peak, self.initial, self.base_momentum, self.max_momentum),
                (n - 1, self.initial, self.minimum, self.max_momentum, self.max_momentum),
            ]
        return [
            (pct * n - 1, self.initial, self.peak, self.max_momentum, self.base_momentum),
            (n - 1, self.peak, self.minimum, self.base_momentum, self.max_momentum),
        ]

    def _anneal(self, start, end, fraction):
        if self.anneal_cos:
            return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1.0)
        return (end - start) * fraction + start

    def value(self, t):
        t = float(min(t, self.total_steps))
        phases = self._phases()
        start = 0.0
        for i, (end, lr_from, lr_to, m_from, m_to) in enumerate(phases):
            if t <= end or i == len(phases) - 1:
                fraction = (t - start) / (end - start)
                beta1 = self._anneal(m_from, m_to, fraction) if self.cycle_momentum else None
                return self._anneal(lr_from, lr_to, fraction), beta1
            start = end
        raise AssertionError("unreachable")

    def lr(self, t):
        return self.value(t)[0]


class Sequential(Schedule):
    """Child ``i`` for ``boundaries[i-1] <= t < boundaries[i]``, restarted at its own ``t = 0``."""

    kind = _layout.KIND_SEQUENTIAL

    def __init__(self, schedules: Sequence[Schedule], boundaries: Sequence[int]):
        schedules = tuple(schedules)
        if not schedules or not all(isinstance(s, Schedule) for s in schedules):
            raise TypeError(f"schedules must be a non-empty sequence of Schedule, got {schedules!r}")
        boundaries = [non_negative_int("boundaries", b) for b in boundaries]
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"Expected {len(schedules) - 1} boundaries for {len(schedules)} schedules, got {len(boundaries)}"
            )
        if boundaries != sorted(boundaries):
            raise ValueError(f"boundaries must be non-decreasing, got {boundaries}")
        self.children = schedules
        self.boundaries = boundaries

    def _child_at(self, t):
        i = bisect.bisect_right(self.boundaries, t)
        return self.children[i], t - (self.boundaries[i - 1] if i > 0 else 0)

    def value(self, t):
        child, local_t = self._child_at(t)
        return child.value(local_t)

    def lr(self, t):
        return self.value(t)[0]

    @property
    def child_count(self) -> int:
        return len(self.children)

    def _tail(self):
        return self.boundaries

    @classmethod
    def _from_fields(cls, fields, tail, children):
        return cls(children, [int(b) for b in tail])


class Product(Schedule):
    """``init * prod(child(t))``; beta1 from the first child that cycles it."""

    kind = _layout.KIND_PRODUCT

    def __init__(self, schedules: Sequence[Schedule], init: float = 1.0):
        schedules = tuple(schedules)
        if not all(isinstance(s, Schedule) for s in schedules):
            raise TypeError(f"schedules must be Schedule objects, got {schedules!r}")
        self.children = schedules
        self.init = finite("init", init)

    def value(self, t):
        lr, beta1 = self.init, None
        for child in self.children:
            child_lr, child_beta1 = child.value(t)
            lr *= child_lr
            if beta1 is None:
                beta1 = child_beta1
        return lr, beta1

    def lr(self, t):
        return self.value(t)[0]

    @property
    def child_count(self) -> int:
        return len(self.children)

    @classmethod
    def _from_fields(cls, fields, tail, children):
        return cls(children, fields["init"])


class InverseSqrt(Schedule):
    """``init / sqrt((t + shift) / timescale)``."""

    kind = _layout.KIND_INVERSE_SQRT

    def __init__(self, init: float, timescale: float, shift: float = 0.0):
        self.init = finite("init", init)
        self.timescale = finite("timescale", timescale)
        if self.timescale <= 0:
            raise ValueError(f"Invalid timescale: {timescale} (must be > 0)")
        self.shift = finite("shift", shift)
        if self.shift <= 0:
            raise ValueError(f"Invalid shift: {shift} (must be > 0, the value at t=0 is init/sqrt(shift/timescale))")

    def lr(self, t):
        return self.init / math.sqrt((t + self.shift) / self.timescale)


class OneMinusSqrt(Schedule):
    """``end + (init - end) * (1 - sqrt(min(t, T) / T))``: the 1-sqrt cooldown of WSD schedules."""

    kind = _layout.KIND_ONE_MINUS_SQRT

    def __init__(self, init: float, end: float, total_iters: int):
        self.init = finite("init", init)
        self.end = finite("end", end)
        self.total_iters = positive_int("total_iters", total_iters)

    def lr(self, t):
        return self.end + (self.init - self.end) * (1.0 - math.sqrt(min(t, self.total_iters) / self.total_iters))


class ExpRamp(Schedule):
    """LR range test, exponential: ``start * (end / start) ** (t / (num_iter - 1))``, held at
    ``end`` from ``t = num_iter - 1`` on."""

    kind = _layout.KIND_EXP_RAMP

    def __init__(self, start: float, end: float, num_iter: int):
        self.start = finite("start_lr", start)
        self.end = finite("end_lr", end)
        if self.start <= 0 or self.end <= 0:
            raise ValueError(f"an exponential ramp needs start_lr > 0 and end_lr > 0, got {start} and {end}")
        self.num_iter = positive_int("num_iter", num_iter)
        if num_iter < 2:
            raise ValueError(f"Invalid num_iter: {num_iter} (must be >= 2)")

    def lr(self, t):
        return self.start * (self.end / self.start) ** (min(t, self.num_iter - 1) / (self.num_iter - 1))


class LinearRamp(ExpRamp):
    """LR range test, linear: ``start + t / (num_iter - 1) * (end - start)``, held at ``end`` after."""

    kind = _layout.KIND_LINEAR_RAMP

    def __init__(self, start: float, end: float, num_iter: int):
        self.start = finite("start_lr", start)
        self.end = finite("end_lr", end)
        self.num_iter = positive_int("num_iter", num_iter)
        if num_iter < 2:
            raise ValueError(f"Invalid num_iter: {num_iter} (must be >= 2)")

    def lr(self, t):
        return self.start + min(t, self.num_iter - 1) / (self.num_iter - 1) * (self.end - self.start)


def decode(words: Sequence[float]) -> Schedule:
    """The Schedule a program encodes (a table decodes to the values it holds)."""
    words = [float(w) for w in words]

    def node(offset: int) -> tuple[Schedule, int]:
        kind, length = int(words[offset]), int(words[offset + 1])
        if kind not in NODE_CLASSES:
            raise ValueError(f"unknown schedule kind {kind}")
        body = words[offset + 2 : offset + length]
        layout = LAYOUTS[kind]
        params = layout.param_count(body)
        children, cursor = [], offset + 2 + params
        for _ in range(layout.child_count(body)):
            child, size = node(cursor)
            children.append(child)
            cursor += size
        return NODE_CLASSES[kind].from_params(body[:params], children), length

    return node(0)[0]


NODE_CLASSES: dict[int, type[Schedule]] = {
    cls.kind: cls
    for cls in (
        Constant,
        Tabulated,
        Step,
        MultiStep,
        ConstantFactor,
        Linear,
        Exponential,
        Polynomial,
        Cosine,
        WarmRestarts,
        Cyclic,
        OneCycle,
        Sequential,
        Product,
        InverseSqrt,
        OneMinusSqrt,
        ExpRamp,
        LinearRamp,
        Held,
    )
}
assert sorted(NODE_CLASSES) == [layout.kind for layout in LAYOUTS], "a class for every kind in the table"
