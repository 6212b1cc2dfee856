"""Learning-rate schedules that the kernels evaluate from an on-device clock.

A :class:`Schedule` is a small immutable object. Calling it, ``s(t)``, gives its value at the
integer clock ``t`` in Python floats: that is the reference the C++ and CUDA evaluators
(``csrc/common/lr_schedule.h``) are tested against. :meth:`Schedule.encode` turns it into the flat
list of doubles those evaluators read (see note [Schedule encoding] in that header).

The lower-case factories at the end of this module build schedules the way optax does: each
validates its arguments once and returns a Schedule; composition (:func:`join`, :func:`product`,
:func:`warmup`) replaces flags. With ``FusedScheduledAdam(params, lr=..., schedule=s)`` a
schedule's value multiplies each param group's ``lr``::

    >>> from lrfused import schedules
    >>> s = schedules.warmup_cosine(warmup_steps=2, decay_steps=10)
    >>> [round(s(t), 4) for t in (0, 1, 2, 7, 12, 20)]
    [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

__all__ = [
    "Schedule", "Constant", "Tabulated", "Step", "MultiStep", "ConstantFactor", "Linear", "Exponential",
    "Polynomial", "Cosine", "WarmRestarts", "Cyclic", "OneCycle", "Sequential", "Product", "InverseSqrt",
    "OneMinusSqrt", "ExpRamp", "LinearRamp", "decode",
    "constant", "step_decay", "multistep_decay", "exponential_decay", "polynomial_decay", "linear",
    "cosine_decay", "cosine_warm_restarts", "cyclic", "one_cycle", "join", "product", "warmup",
    "warmup_cosine", "warmup_stable_decay", "inverse_sqrt", "lr_range_exp", "lr_range_linear",
    "lambda_schedule",
]

# The node kinds of csrc/common/lr_schedule.h (enum ScheduleKind); tests check both agree.
KIND_CONSTANT = 0
KIND_TABLE = 1
KIND_STEP = 2
KIND_MULTI_STEP = 3
KIND_CONSTANT_FACTOR = 4
KIND_LINEAR = 5
KIND_EXPONENTIAL = 6
KIND_POLYNOMIAL = 7
KIND_COSINE = 8
KIND_WARM_RESTARTS = 9
KIND_CYCLIC = 10
KIND_ONE_CYCLE = 11
KIND_SEQUENTIAL = 12
KIND_PRODUCT = 13
KIND_INVERSE_SQRT = 14
KIND_ONE_MINUS_SQRT = 15
KIND_EXP_RAMP = 16
KIND_LINEAR_RAMP = 17
KIND_HELD = 18

# CyclicLR modes (enum CyclicMode).
CYCLIC_TRIANGULAR = 0
CYCLIC_TRIANGULAR2 = 1
CYCLIC_EXP_RANGE = 2
CYCLIC_TABLE_BY_CYCLE = 3
CYCLIC_TABLE_BY_ITERATION = 4

MAX_DEPTH = 4  # kMaxScheduleDepth

_KINDS: dict[int, type[Schedule]] = {}


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value}")
    return value


def _positive(name: str, value: float) -> float:
    value = _finite(name, value)
    if value <= 0:
        raise ValueError(f"Invalid {name}: {value} (must be > 0)")
    return value


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"Invalid {name}: {value} (must be a positive int)")
    return value


def _non_negative_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0)")
    return value


class Schedule:
    """Base class: a value (and optionally beta1) at every integer clock ``t >= 0``."""

    kind: ClassVar[int]
    children: tuple[Schedule, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _KINDS[cls.kind] = cls

    def __call__(self, t: int) -> float:
        return self.value(t)[0]

    def value(self, t: int) -> tuple[float, float | None]:
        """(lr, beta1) at clock t; beta1 is None unless the schedule cycles it."""
        return self.lr(t), None

    def lr(self, t: int) -> float:
        raise NotImplementedError

    def params(self) -> list[float]:
        """The node's parameter words, before its children."""
        raise NotImplementedError

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
        return len(self.params())

    def encoded_length(self) -> int:
        """``len(self.encode())``, computed without encoding."""
        return 2 + self.param_count() + sum(child.encoded_length() for child in self.children)

    def tables(self) -> list[tuple[int, Tabulated]]:
        """(word offset, table) of every tabulated node in :meth:`encode`'s output."""
        found: list[tuple[int, Tabulated]] = []
        offset = 2 + self.param_count()
        if isinstance(self, Tabulated):
            found.append((0, self))
        for child in self.children:
            found += [(offset + o, table) for o, table in child.tables()]
            offset += child.encoded_length()
        return found

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Constant(Schedule):
    """``value`` at every step."""

    kind = KIND_CONSTANT

    def __init__(self, value: float):
        self.value_ = _finite("value", value)

    def lr(self, t):
        return self.value_

    def params(self):
        return [self.value_]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0])


class Held(Schedule):
    """A param group's current lr (and beta1, NaN when the optimizer's applies), as words that the
    host and the scheduler ops write in place (note [Scheduler steps on the device])."""

    kind = KIND_HELD

    def __init__(self, lr: float, beta1: float = math.nan):
        self.lr_, self.beta1_ = float(lr), float(beta1)

    def value(self, t):
        return self.lr_, None if math.isnan(self.beta1_) else self.beta1_

    def lr(self, t):
        return self.lr_

    def params(self):
        return [self.lr_, self.beta1_]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1])


class Tabulated(Schedule):
    """Values of a Python function of t, uploaded to the device in blocks ahead of the clock.

    ``function(t)`` is called on the host. ``capacity`` values starting at some ``first_t`` live on
    the device; when the clock leaves that window the owner uploads the next block (a non-blocking
    copy, never a sync). With ``horizon`` the whole range ``[0, horizon)`` is tabulated at once, so
    CUDA-graph replays need no host at all, and asking for ``t >= horizon`` is an error.
    """

    kind = KIND_TABLE

    def __init__(self, function: Callable[[int], float], *, capacity: int = 1024, horizon: int | None = None):
        if not callable(function):
            raise TypeError(f"function must be callable, got {function!r}")
        self.function = function
        self.horizon = None if horizon is None else _positive_int("horizon", horizon)
        self.capacity = self.horizon if self.horizon is not None else _positive_int("capacity", capacity)
        self.first_t = 0

    def lr(self, t):
        if self.horizon is not None and t >= self.horizon:
            raise ValueError(f"the schedule was tabulated up to horizon={self.horizon}, asked for t={t}")
        return float(self.function(t))

    def window(self, first_t: int) -> list[float]:
        """The words [first_t, capacity, values...] for a block starting at first_t."""
        if self.horizon is not None and first_t + self.capacity > self.horizon:
            first_t = max(0, self.horizon - self.capacity)
        return [float(first_t), float(self.capacity)] + [self.lr(t) for t in range(first_t, first_t + self.capacity)]

    def covers(self, t: int) -> bool:
        return self.first_t <= t < self.first_t + self.capacity

    def params(self):
        return self.window(self.first_t)

    def param_count(self):
        return 2 + self.capacity

    @classmethod
    def from_params(cls, p, children):
        return _TableWindow(int(p[0]), p[2:])


class _TableWindow(Tabulated):
    """A decoded table: the values a program holds, NaN outside its window (as in the kernels)."""

    def __init__(self, first_t: int, values: Sequence[float]):
        self.first_t, self.values, self.capacity, self.horizon = first_t, list(values), len(values), None

    def lr(self, t):
        return self.values[t - self.first_t] if self.covers(t) else math.nan

    def window(self, first_t):
        return [float(self.first_t), float(self.capacity)] + self.values


class Step(Schedule):
    """StepLR: ``init * gamma ** floor(t / step_size)``."""

    kind = KIND_STEP

    def __init__(self, init: float, step_size: int, gamma: float = 0.1):
        self.init = _finite("init", init)
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _positive("gamma", gamma)

    def lr(self, t):
        return self.init * self.gamma ** math.floor(t / self.step_size)

    def params(self):
        return [self.init, self.step_size, self.gamma]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], int(p[1]), p[2])


class MultiStep(Schedule):
    """MultiStepLR: ``init * gamma ** (number of milestones <= t)``; duplicate milestones compound."""

    kind = KIND_MULTI_STEP

    def __init__(self, init: float, milestones: Sequence[int], gamma: float = 0.1):
        self.init = _finite("init", init)
        for m in milestones:
            _non_negative_int("milestones", m)
        self.milestones = sorted(milestones)
        self.gamma = _positive("gamma", gamma)

    def lr(self, t):
        return self.init * self.gamma ** float(bisect.bisect_right(self.milestones, t))

    def params(self):
        return [self.init, self.gamma, len(self.milestones), *self.milestones]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], [int(m) for m in p[3:3 + int(p[2])]], p[1])


class ConstantFactor(Schedule):
    """ConstantLR: ``init * factor`` for ``t < total_iters``, then ``init``."""

    kind = KIND_CONSTANT_FACTOR

    def __init__(self, init: float, factor: float, total_iters: int):
        self.init = _finite("init", init)
        self.factor = _finite("factor", factor)
        self.total_iters = _non_negative_int("total_iters", total_iters)

    def lr(self, t):
        return self.init * (self.factor if t < self.total_iters else 1.0)

    def params(self):
        return [self.init, self.factor, self.total_iters]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1], int(p[2]))


class Linear(Schedule):
    """LinearLR: ``init * (start + (end - start) * min(t, T) / T)``."""

    kind = KIND_LINEAR

    def __init__(self, init: float, start_factor: float, end_factor: float, total_iters: int):
        self.init = _finite("init", init)
        self.start_factor = _finite("start_factor", start_factor)
        self.end_factor = _finite("end_factor", end_factor)
        self.total_iters = _positive_int("total_iters", total_iters)

    def lr(self, t):
        done = min(t, self.total_iters)
        factor = self.start_factor + (self.end_factor - self.start_factor) * done / self.total_iters
        # Kept inside [start, end]: torch's formula can round past the end (see lr_schedule.h).
        low, high = sorted((self.start_factor, self.end_factor))
        return self.init * min(max(factor, low), high)

    def params(self):
        return [self.init, self.start_factor, self.end_factor, self.total_iters]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1], p[2], int(p[3]))


class Exponential(Schedule):
    """ExponentialLR: ``init * gamma ** t`` (float64 pow, exact for long runs)."""

    kind = KIND_EXPONENTIAL

    def __init__(self, init: float, gamma: float):
        self.init = _finite("init", init)
        self.gamma = _positive("gamma", gamma)

    def lr(self, t):
        return self.init * self.gamma ** float(t)

    def params(self):
        return [self.init, self.gamma]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1])


class Polynomial(Schedule):
    """PolynomialLR: ``end + (init - end) * (1 - min(t, T) / T) ** power``."""

    kind = KIND_POLYNOMIAL

    def __init__(self, init: float, total_iters: int, power: float = 1.0, end: float = 0.0):
        self.init = _finite("init", init)
        self.total_iters = _positive_int("total_iters", total_iters)
        self.power = _finite("power", power)
        self.end = _finite("end", end)

    def lr(self, t):
        return self.end + (self.init - self.end) * (1.0 - min(t, self.total_iters) / self.total_iters) ** self.power

    def params(self):
        return [self.init, self.end, self.total_iters, self.power]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], int(p[2]), p[3], p[1])


class Cosine(Schedule):
    """CosineAnnealingLR: ``floor + (init - floor) * (1 + cos(pi * t / period)) / 2``.

    Periodic past ``period`` like torch's closed form, or held at ``floor`` with ``clamp=True``.
    """

    kind = KIND_COSINE

    def __init__(self, init: float, period: int, floor: float = 0.0, clamp: bool = False):
        self.init = _finite("init", init)
        self.period = _positive_int("period", period)
        self.floor = _finite("floor", floor)
        self.clamp = bool(clamp)

    def lr(self, t):
        if self.clamp and t >= self.period:
            return self.floor
        return self.floor + (self.init - self.floor) * (1.0 + math.cos(math.pi * t / self.period)) / 2.0

    def params(self):
        return [self.init, self.floor, self.period, float(self.clamp)]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], int(p[2]), p[1], bool(p[3]))


class WarmRestarts(Schedule):
    """CosineAnnealingWarmRestarts: the cosine over cycles of length ``T_0 * T_mult ** k``.

    Cycle boundaries are found by integer accumulation, as torch's ``step()`` does. torch's
    ``step(epoch)`` uses a float log that misplaces some exact restarts (T_0=3, T_mult=3, t=363
    lands in the previous cycle); lrfused always restarts exactly at the boundary.
    """

    kind = KIND_WARM_RESTARTS

    def __init__(self, init: float, T_0: int, T_mult: int = 1, floor: float = 0.0):
        self.init = _finite("init", init)
        self.T_0 = _positive_int("T_0", T_0)
        self.T_mult = _positive_int("T_mult", T_mult)
        self.floor = _finite("floor", floor)

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

    def params(self):
        return [self.init, self.floor, self.T_0, self.T_mult]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], int(p[2]), int(p[3]), p[1])


class Cyclic(Schedule):
    """CyclicLR, beta1 included: ``base + (max - base) * f(x) * scale`` with ``f`` the triangle.

    ``scale`` is 1 (triangular), ``1 / 2 ** (cycle - 1)`` (triangular2), ``gamma ** t``
    (exp_range), or a tabulated ``scale_fn`` of the cycle or of t. With ``cycle_momentum`` beta1 is
    ``max_m - (max_m - base_m) * f(x) * scale``.
    """

    kind = KIND_CYCLIC

    def __init__(self, base: float, peak: float, total_size: float, step_ratio: float, *,
                 mode: int = CYCLIC_TRIANGULAR, gamma: float = 1.0, cycle_momentum: bool = False,
                 base_momentum: float = 0.8, max_momentum: float = 0.9, scale_table: Tabulated | None = None):
        self.base = _finite("base_lr", base)
        self.peak = _finite("max_lr", peak)
        self.total_size = _finite("total_size", total_size)
        self.step_ratio = _finite("step_ratio", step_ratio)
        if self.total_size <= 0:
            raise ValueError(f"Invalid step_size_up + step_size_down: {total_size} (must be > 0)")
        if not 0 < self.step_ratio <= 1:
            raise ValueError(f"Invalid step_ratio: {step_ratio} (step_size_up must be > 0)")
        if mode not in range(CYCLIC_TRIANGULAR, CYCLIC_TABLE_BY_ITERATION + 1):
            raise ValueError(f"Invalid mode: {mode}")
        if (mode >= CYCLIC_TABLE_BY_CYCLE) != (scale_table is not None):
            raise ValueError("a tabulated CyclicLR mode needs a scale_table, and only it")
        self.mode = mode
        self.gamma = _finite("gamma", gamma)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = _finite("base_momentum", base_momentum)
        self.max_momentum = _finite("max_momentum", max_momentum)
        self.children = () if scale_table is None else (scale_table,)

    @property
    def cycles_beta1(self):
        return self.cycle_momentum

    def value(self, t):
        total, ratio = self.total_size, self.step_ratio
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if self.mode == CYCLIC_TRIANGULAR:
            scale = 1.0
        elif self.mode == CYCLIC_TRIANGULAR2:
            scale = 2.0 ** (1 - cycle)  # torch: 1 / 2.0 ** (cycle - 1), which overflows for late cycles
        elif self.mode == CYCLIC_EXP_RANGE:
            scale = self.gamma ** float(t)
        else:
            scale = self.children[0](cycle if self.mode == CYCLIC_TABLE_BY_CYCLE else t)
        lr = self.base + (self.peak - self.base) * factor * scale
        beta1 = None
        if self.cycle_momentum:
            beta1 = self.max_momentum - (self.max_momentum - self.base_momentum) * factor * scale
        return lr, beta1

    def lr(self, t):
        return self.value(t)[0]

    def params(self):
        return [self.base, self.peak, self.total_size, self.step_ratio, self.mode, self.gamma, self.base_momentum,
                self.max_momentum, float(self.cycle_momentum)]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1], p[2], p[3], mode=int(p[4]), gamma=p[5], base_momentum=p[6], max_momentum=p[7],
                   cycle_momentum=bool(p[8]), scale_table=children[0] if children else None)


class OneCycle(Schedule):
    """OneCycleLR in two or three phases, cos or linear annealing, beta1 included.

    torch raises past ``total_steps``; the kernels hold the value reached at ``total_steps``.
    """

    kind = KIND_ONE_CYCLE

    def __init__(self, initial: float, peak: float, minimum: float, total_steps: int, *, pct_start: float = 0.3,
                 three_phase: bool = False, anneal_cos: bool = True, cycle_momentum: bool = False,
                 base_momentum: float = 0.85, max_momentum: float = 0.95):
        self.initial = _finite("initial_lr", initial)
        self.peak = _finite("max_lr", peak)
        self.minimum = _finite("min_lr", minimum)
        self.total_steps = _positive_int("total_steps", total_steps)
        self.pct_start = _finite("pct_start", pct_start)
        if not 0 < self.pct_start < 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        self.three_phase = bool(three_phase)
        self.anneal_cos = bool(anneal_cos)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = _finite("base_momentum", base_momentum)
        self.max_momentum = _finite("max_momentum", max_momentum)
        ends = [phase[0] for phase in self._phases()]
        if any(later == earlier for earlier, later in zip([0.0] + ends, ends)):
            # torch divides by zero (0 / 0) when it reaches a phase that starts where it ends.
            raise ValueError(
                f"OneCycle has an empty phase (phase ends {ends}) for "
                f"pct_start={pct_start}, total_steps={total_steps}, three_phase={three_phase}")

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

    def params(self):
        return [self.initial, self.peak, self.minimum, self.total_steps, self.pct_start, float(self.three_phase),
                float(self.anneal_cos), float(self.cycle_momentum), self.base_momentum, self.max_momentum]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1], p[2], int(p[3]), pct_start=p[4], three_phase=bool(p[5]), anneal_cos=bool(p[6]),
                   cycle_momentum=bool(p[7]), base_momentum=p[8], max_momentum=p[9])


class Sequential(Schedule):
    """Child ``i`` for ``boundaries[i-1] <= t < boundaries[i]``, restarted at its own ``t = 0``."""

    kind = KIND_SEQUENTIAL

    def __init__(self, schedules: Sequence[Schedule], boundaries: Sequence[int]):
        schedules = tuple(schedules)
        if not schedules or not all(isinstance(s, Schedule) for s in schedules):
            raise TypeError(f"schedules must be a non-empty sequence of Schedule, got {schedules!r}")
        boundaries = [_non_negative_int("boundaries", b) for b in boundaries]
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"Expected {len(schedules) - 1} boundaries for {len(schedules)} schedules, got {len(boundaries)}")
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

    def params(self):
        return [len(self.children), *self.boundaries]

    @classmethod
    def from_params(cls, p, children):
        return cls(children, [int(b) for b in p[1:int(p[0])]])


class Product(Schedule):
    """``init * prod(child(t))``; beta1 from the first child that cycles it."""

    kind = KIND_PRODUCT

    def __init__(self, schedules: Sequence[Schedule], init: float = 1.0):
        schedules = tuple(schedules)
        if not all(isinstance(s, Schedule) for s in schedules):
            raise TypeError(f"schedules must be Schedule objects, got {schedules!r}")
        self.children = schedules
        self.init = _finite("init", init)

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

    def params(self):
        return [self.init, len(self.children)]

    @classmethod
    def from_params(cls, p, children):
        return cls(children, p[0])


class InverseSqrt(Schedule):
    """``init / sqrt((t + shift) / timescale)``."""

    kind = KIND_INVERSE_SQRT

    def __init__(self, init: float, timescale: float, shift: float = 0.0):
        self.init = _finite("init", init)
        self.timescale = _finite("timescale", timescale)
        if self.timescale <= 0:
            raise ValueError(f"Invalid timescale: {timescale} (must be > 0)")
        self.shift = _finite("shift", shift)
        if self.shift <= 0:
            raise ValueError(f"Invalid shift: {shift} (must be > 0, the value at t=0 is init/sqrt(shift/timescale))")

    def lr(self, t):
        return self.init / math.sqrt((t + self.shift) / self.timescale)

    def params(self):
        return [self.init, self.timescale, self.shift]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1], p[2])


class OneMinusSqrt(Schedule):
    """``end + (init - end) * (1 - sqrt(min(t, T) / T))``: the 1-sqrt cooldown of WSD schedules."""

    kind = KIND_ONE_MINUS_SQRT

    def __init__(self, init: float, end: float, total_iters: int):
        self.init = _finite("init", init)
        self.end = _finite("end", end)
        self.total_iters = _positive_int("total_iters", total_iters)

    def lr(self, t):
        return self.end + (self.init - self.end) * (1.0 - math.sqrt(min(t, self.total_iters) / self.total_iters))

    def params(self):
        return [self.init, self.end, self.total_iters]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1], int(p[2]))


class ExpRamp(Schedule):
    """LR range test, exponential: ``start * (end / start) ** (t / (num_iter - 1))``, held at
    ``end`` from ``t = num_iter - 1`` on."""

    kind = KIND_EXP_RAMP

    def __init__(self, start: float, end: float, num_iter: int):
        self.start = _finite("start_lr", start)
        self.end = _finite("end_lr", end)
        if self.start <= 0 or self.end <= 0:
            raise ValueError(f"an exponential ramp needs start_lr > 0 and end_lr > 0, got {start} and {end}")
        self.num_iter = _positive_int("num_iter", num_iter)
        if num_iter < 2:
            raise ValueError(f"Invalid num_iter: {num_iter} (must be >= 2)")

    def lr(self, t):
        return self.start * (self.end / self.start) ** (min(t, self.num_iter - 1) / (self.num_iter - 1))

    def params(self):
        return [self.start, self.end, self.num_iter]

    @classmethod
    def from_params(cls, p, children):
        return cls(p[0], p[1], int(p[2]))


class LinearRamp(ExpRamp):
    """LR range test, linear: ``start + t / (num_iter - 1) * (end - start)``, held at ``end`` after."""

    kind = KIND_LINEAR_RAMP

    def __init__(self, start: float, end: float, num_iter: int):
        self.start = _finite("start_lr", start)
        self.end = _finite("end_lr", end)
        self.num_iter = _positive_int("num_iter", num_iter)
        if num_iter < 2:
            raise ValueError(f"Invalid num_iter: {num_iter} (must be >= 2)")

    def lr(self, t):
        return self.start + min(t, self.num_iter - 1) / (self.num_iter - 1) * (self.end - self.start)


def decode(words: Sequence[float]) -> Schedule:
    """The Schedule a program encodes (tables decode to the window they hold)."""
    words = [float(w) for w in words]

    def node(offset: int) -> tuple[Schedule, int]:
        kind, length = int(words[offset]), int(words[offset + 1])
        cls = _KINDS.get(kind)
        if cls is None:
            raise ValueError(f"unknown schedule kind {kind}")
        body = words[offset + 2: offset + length]
        if kind == KIND_SEQUENTIAL:
            n_params, n_children = int(body[0]), int(body[0])
        elif kind == KIND_PRODUCT:
            n_params, n_children = 2, int(body[1])
        elif kind == KIND_CYCLIC:
            n_params, n_children = 9, int(int(body[4]) >= CYCLIC_TABLE_BY_CYCLE)
        else:
            n_params, n_children = len(body), 0
        children, cursor = [], offset + 2 + n_params
        for _ in range(n_children):
            child, size = node(cursor)
            children.append(child)
            cursor += size
        return cls.from_params(body[:n_params], children), length

    return node(0)[0]


# --- factories -------------------------------------------------------------------------------


def constant(value: float = 1.0) -> Schedule:
    """``value`` at every step."""
    return Constant(value)


def step_decay(step_size: int, gamma: float = 0.1, init_value: float = 1.0) -> Schedule:
    """``init_value * gamma ** floor(t / step_size)`` (torch's StepLR)."""
    return Step(init_value, step_size, gamma)


def multistep_decay(milestones: Sequence[int], gamma: float = 0.1, init_value: float = 1.0) -> Schedule:
    """``init_value * gamma ** (milestones passed)``; repeated milestones compound (MultiStepLR)."""
    return MultiStep(init_value, milestones, gamma)


def exponential_decay(gamma: float, init_value: float = 1.0) -> Schedule:
    """``init_value * gamma ** t`` (ExponentialLR)."""
    return Exponential(init_value, gamma)


def polynomial_decay(total_steps: int, power: float = 1.0, init_value: float = 1.0, end_value: float = 0.0) -> Schedule:
    """``end + (init - end) * (1 - min(t, total_steps) / total_steps) ** power``."""
    return Polynomial(init_value, total_steps, power, end_value)


def linear(start_value: float, end_value: float, total_steps: int) -> Schedule:
    """From ``start_value`` to ``end_value`` in ``total_steps``, then held."""
    return Linear(1.0, start_value, end_value, total_steps)


def cosine_decay(decay_steps: int, alpha: float = 0.0, init_value: float = 1.0, periodic: bool = False) -> Schedule:
    """Cosine from ``init_value`` down to the floor ``alpha * init_value`` over ``decay_steps``.

    ``floor + (init - floor) * (1 + cos(pi * t / decay_steps)) / 2``, held at the floor afterwards
    (or periodic like torch's CosineAnnealingLR with ``periodic=True``).
    """
    return Cosine(init_value, decay_steps, alpha * init_value, clamp=not periodic)


def cosine_warm_restarts(T_0: int, T_mult: int = 1, init_value: float = 1.0, floor: float = 0.0) -> Schedule:
    """SGDR: cosine cycles of length ``T_0 * T_mult ** k`` (CosineAnnealingWarmRestarts)."""
    return WarmRestarts(init_value, T_0, T_mult, floor)


def cyclic(base_value: float, max_value: float, step_size_up: int = 2000, step_size_down: int | None = None,
           mode: str = "triangular", gamma: float = 1.0) -> Schedule:
    """CyclicLR's triangle: ``base + (max - base) * f(x) * scale`` (modes as torch's)."""
    modes = {"triangular": CYCLIC_TRIANGULAR, "triangular2": CYCLIC_TRIANGULAR2, "exp_range": CYCLIC_EXP_RANGE}
    if mode not in modes:
        raise ValueError(f"mode is invalid, got {mode!r}; expected one of {sorted(modes)}")
    up = float(step_size_up)
    total = up + (up if step_size_down is None else float(step_size_down))
    return Cyclic(base_value, max_value, total, up / total, mode=modes[mode], gamma=gamma)


def one_cycle(total_steps: int, max_value: float = 1.0, pct_start: float = 0.3, anneal_strategy: str = "cos",
              div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    """OneCycleLR's lr: ``max/div`` up to ``max``, then down to ``max/div/final_div``."""
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}")
    initial = max_value / div_factor
    return OneCycle(initial, max_value, initial / final_div_factor, total_steps, pct_start=pct_start,
                    three_phase=three_phase, anneal_cos=anneal_strategy == "cos")


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Schedule ``i`` from ``boundaries[i-1]`` on, each restarted at its own t=0 (optax's join)."""
    return Sequential(schedules, boundaries)


def product(*schedules: Schedule) -> Schedule:
    """The product of the schedules' values."""
    return Product(schedules)


def warmup(schedule: Schedule, warmup_steps: int, start_value: float = 0.0) -> Schedule:
    """A linear warmup from ``start_value`` to ``schedule(0)`` in ``warmup_steps``, then ``schedule``."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {schedule!r}")
    _positive_int("warmup_steps", warmup_steps)
    return Sequential([Linear(1.0, start_value, schedule(0), warmup_steps), schedule], [warmup_steps])


def warmup_cosine(warmup_steps: int, decay_steps: int, peak_value: float = 1.0, end_value: float = 0.0,
                  start_value: float = 0.0) -> Schedule:
    """Linear warmup to ``peak_value``, then a cosine to ``end_value`` over ``decay_steps``, held after."""
    cosine = Cosine(peak_value, decay_steps, end_value, clamp=True)
    return warmup(cosine, warmup_steps, start_value)


def warmup_stable_decay(warmup_steps: int, stable_steps: int, decay_steps: int, peak_value: float = 1.0,
                        end_value: float = 0.0, decay: str = "linear", start_value: float = 0.0) -> Schedule:
    """Warmup, a constant plateau at ``peak_value``, then a decay (linear, cosine or 1-sqrt)."""
    _non_negative_int("stable_steps", stable_steps)
    _positive_int("decay_steps", decay_steps)
    decays = {
        "linear": lambda: Polynomial(peak_value, decay_steps, 1.0, end_value),
        "cosine": lambda: Cosine(peak_value, decay_steps, end_value, clamp=True),
        "1-sqrt": lambda: OneMinusSqrt(peak_value, end_value, decay_steps),
    }
    if decay not in decays:
        raise ValueError(f"decay must be one of {sorted(decays)}, got {decay!r}")
    ramp = Linear(1.0, start_value, peak_value, _positive_int("warmup_steps", warmup_steps))
    return Sequential([ramp, Constant(peak_value), decays[decay]()], [warmup_steps, warmup_steps + stable_steps])


def inverse_sqrt(warmup_steps: int = 0, timescale: int | None = None, peak_value: float = 1.0) -> Schedule:
    """Linear warmup, then ``peak / sqrt((t + timescale - warmup) / timescale)`` (transformers')."""
    _non_negative_int("warmup_steps", warmup_steps)
    timescale = timescale if timescale is not None else (warmup_steps or 10_000)
    _positive_int("timescale", timescale)
    # The decay child restarts at its own t=0 at the boundary: t_child + warmup + (timescale - warmup).
    decay = InverseSqrt(peak_value, timescale, float(timescale))
    if warmup_steps == 0:
        return decay
    return Sequential([Linear(peak_value, 0.0, 1.0, warmup_steps), decay], [warmup_steps])


def lr_range_exp(start_lr: float, end_lr: float, num_iter: int) -> Schedule:
    """The LR range test's exponential ramp: ``start * (end / start) ** (t / (num_iter - 1))``."""
    return ExpRamp(start_lr, end_lr, num_iter)


def lr_range_linear(start_lr: float, end_lr: float, num_iter: int) -> Schedule:
    """The LR range test's linear ramp: ``start + t / (num_iter - 1) * (end - start)``."""
    return LinearRamp(start_lr, end_lr, num_iter)


def lambda_schedule(function: Callable[[int], float], *, horizon: int | None = None, capacity: int = 1024) -> Schedule:
    """Any Python function of the step, tabulated on the host (see :class:`Tabulated`).

    With ``FusedScheduledAdam(schedule=...)`` the clock is the optimizer's on-device step, which an
    AMP overflow pauses without the host knowing, so a ``horizon`` is required there.
    """
    return Tabulated(function, capacity=capacity, horizon=horizon)
