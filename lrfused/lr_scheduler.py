"""torch.optim.lr_scheduler's classes, driving FusedScheduledAdam's in-kernel schedule.

Each class here has the name, the constructor arguments and the defaults of torch's class, and
subclasses it (so ``isinstance(s, torch.optim.lr_scheduler.StepLR)`` holds where frameworks check
it). Swap the import and nothing else::

    from lrfused.lr_scheduler import CosineAnnealingLR   # was: from torch.optim.lr_scheduler import ...

What changes is where the schedule runs. ``scheduler.step()`` adds one to a clock that lives on
the optimizer's device (no host sync, no host-to-device copy) and the kernel evaluates the
schedule's closed form from that clock in float64. The host evaluates the same closed form from
``last_epoch`` to keep ``get_last_lr()``, ``param_groups[i]["lr"]`` and, where torch cycles
momentum, ``param_groups[i]["betas"]`` equal to torch's values. ReduceLROnPlateau is evaluated
on the device: its lrs are 0-dim device tensors, and reading one as a float is a sync.

Differences from torch, by design (each is tested):

* closed forms everywhere: torch's recursive ``step()`` agrees to ~1e-14 relative;
* CosineAnnealingWarmRestarts restarts exactly at every cycle boundary, also with ``step(epoch)``;
* ConstantLR(factor=0) gives lr 0 and then the base lr (torch raises ZeroDivisionError);
* a ChainedScheduler whose children are not all multiplicative (a cosine, cyclic, one-cycle or
  warm-restart child) follows torch's recurrence ``lr_t = a(t) * lr_{t-1} + b(t)`` exactly: the
  host evaluates it in blocks ahead of the clock and uploads them like a LambdaLR table;
* after an lrfused scheduler is attached, writing ``param_groups[i]["lr"]`` by hand is an error
  at the next ``optimizer.step()`` (torch would silently mix the two).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler as torch_schedulers

from . import schedules as S
from .optim import FusedScheduledAdam

__all__ = [
    "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
    "PolynomialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR",
    "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau",
]

# Attributes rebuilt from last_epoch and the constructor arguments, never saved.
_TRANSIENT = ("_clock", "_schedules", "_tables", "_beta1_arg", "_published", "_owner_ready")


def _require_fused(optimizer: Any, name: str) -> None:
    if not isinstance(optimizer, FusedScheduledAdam):
        raise TypeError(
            f"lrfused.lr_scheduler.{name} drives a FusedScheduledAdam(W), got {type(optimizer).__name__}; "
            f"for other optimizers use torch.optim.lr_scheduler.{name}")


def _primary_device(optimizer: FusedScheduledAdam) -> torch.device:
    return optimizer._first_device()


class _InKernelSchedule:
    """What every class below shares: a device clock, the host mirror, and ownership checks."""

    # True when the schedule is lr = base * f(t): then a ChainedScheduler multiplies closed forms.
    _multiplicative = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        torch_class = next((b for b in cls.__mro__[1:] if b.__module__ == torch_schedulers.__name__), None)
        if torch_class is not None and "__init__" not in cls.__dict__:
            # Same signature as torch's constructor, for help() and inspect.
            cls.__init__ = _delegating_init(torch_class)
        if cls.__doc__ is None and torch_class is not None:
            cls.__doc__ = torch_class.__doc__

    # -- to implement ---------------------------------------------------------------------------

    def _schedule_for(self, index: int, base: float | None = None) -> S.Schedule:
        """Group ``index``'s schedule, scaled to ``base`` (default: the group's base lr)."""
        raise NotImplementedError

    # -- clock and mirror -------------------------------------------------------------------------

    def _base(self, index: int, base: float | None) -> float:
        return float(self.base_lrs[index]) if base is None else base

    # The names that lrfused.schedules uses, as torch's constructor calls them (for messages).
    _torch_names: dict[str, str] = {}

    def _install(self, clock_value: int) -> None:
        optimizer = self.optimizer
        try:
            self._schedules = [self._schedule_for(i) for i in range(len(optimizer.param_groups))]
        except (TypeError, ValueError) as error:
            message = str(error)
            for ours, theirs in self._torch_names.items():
                message = message.replace(f" {ours}", f" {theirs}")
            raise type(error)(f"{type(self).__name__}: {message}") from None
        device = _primary_device(optimizer)
        clock = getattr(self, "_clock", None)
        if clock is None or clock.device != device:
            self._clock = torch.full((), clock_value, dtype=torch.int64, device=device)
        else:
            self._clock.fill_(clock_value)
        # (group, word offset, table) of every tabulated node, found once: scheduler.step() only
        # checks whether the clock left each table's window.
        self._tables = [(index, offset, table) for index, schedule in enumerate(self._schedules)
                        for offset, table in schedule.tables()]
        for _, _, table in self._tables:
            table.first_t = self._table_index(clock_value)
        # A cycled beta1 comes from the schedule; the op's beta1 argument is then held constant so
        # that a compiled step sees the same constant every step.
        self._beta1_arg = [
            group["betas"][0] for group in optimizer.param_groups
        ]
        optimizer._bind(self._schedules, self._clock, self, [None] * len(self._schedules))
        self._published = [None] * len(self._schedules)

    def _advance(self, epoch: int | None) -> None:
        """last_epoch and the device clock move together: an add (or a fill) on the device."""
        self._refuse_capture_of_open_tables()
        if epoch is None:
            self.last_epoch += 1
            self._clock.add_(1)
        else:
            self.last_epoch = int(epoch)
            self._clock.fill_(self.last_epoch)
        self._upload_tables()

    def _refuse_capture_of_open_tables(self) -> None:
        """A replayed step() advances the clock on the device with no host to upload the next block
        of a table, so a capture needs every table whole on the device (``horizon=``)."""
        if not any(table.horizon is None for _, _, table in getattr(self, "_tables", ())):
            return
        if self._clock.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{type(self).__name__}.step() is being captured in a CUDA graph, but its schedule is a Python "
                "function tabulated on the host a block at a time, and graph replays cannot upload the next block: "
                f"pass horizon=N to {type(self).__name__} (N = the number of steps to tabulate, at least as many as "
                "will be replayed) so that the whole table is on the device before capture")

    def _table_index(self, t: int) -> int:
        """Where the kernel reads this scheduler's tables at clock t (CyclicLR reads by cycle)."""
        return max(t, 0)

    def _upload_tables(self) -> None:
        binding = self.optimizer._binding
        t = self._table_index(self.last_epoch)
        for index, offset, table in self._tables:
            if table.covers(t):
                continue
            if table.horizon is not None and t >= table.horizon:
                raise ValueError(
                    f"{type(self).__name__}: the schedule was tabulated up to horizon={table.horizon}, "
                    f"asked for t={t}")
            table.first_t = t
            words = torch.tensor(table.window(t), dtype=torch.float64)
            buffer = binding.buffers[binding.primary]
            start = binding.offsets[index] + offset + 2
            if buffer.is_cuda:
                words = words.pin_memory()
            buffer.narrow(0, start, words.numel()).copy_(words, non_blocking=True)

    def _publish(self) -> None:
        """Writes the host mirror of lr (and beta1) into the param groups."""
        t = self.last_epoch
        for index, (group, schedule) in enumerate(zip(self.optimizer.param_groups, self._schedules)):
            lr, beta1 = schedule.value(t)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
            self._published[index] = group["lr"]
            if beta1 is not None:
                group["betas"] = (beta1, *group["betas"][1:])
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                         for g in self.optimizer.param_groups]

    def _check_owns(self, optimizer: FusedScheduledAdam) -> None:
        for index, group in enumerate(optimizer.param_groups):
            published = self._published[index]
            if group["lr"] is not published and group["lr"] != published:
                raise RuntimeError(
                    f"param_groups[{index}]['lr'] was set to {group['lr']} by hand, but "
                    f"{type(self).__name__} drives it (its value is {published}); change the schedule "
                    "instead, or detach it by building a new optimizer")

    def _kernel_beta1(self, index: int, beta1: float) -> float:
        return self._beta1_arg[index] if self._schedules[index].cycles_beta1 else beta1

    # -- torch's interface -------------------------------------------------------------------------

    def _update_lr(self, epoch: int | None = None) -> None:
        binding = self.optimizer._binding
        if binding is None or binding.owner is not self:
            if getattr(self, "_owner_ready", False):
                owner = None if binding is None else type(binding.owner).__name__
                raise RuntimeError(
                    f"{type(self).__name__} no longer drives this optimizer ({owner} does): lrfused runs "
                    "one schedule per optimizer; combine schedulers with ChainedScheduler or SequentialLR")
            self._install(self.last_epoch)
        self._advance(epoch)
        self._publish()
        self._owner_ready = True

    def _take_over(self) -> None:
        """Binds this scheduler once its constructor is done (torch's may change base_lrs last)."""
        self._install(self.last_epoch)
        self._upload_tables()
        self._publish()
        self._owner_ready = True

    def get_lr(self) -> list[float]:
        """The closed form at ``last_epoch`` (what the kernel computes), per param group."""
        return [schedule(self.last_epoch) for schedule in self._schedules]

    _get_closed_form_lr = get_lr

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in _TRANSIENT:
            state.pop(key, None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._install(self.last_epoch)
        self._upload_tables()
        self._publish()
        self._owner_ready = True


def _delegating_init(torch_class: type) -> Callable:
    def __init__(self, optimizer, *args, **kwargs):
        _require_fused(optimizer, type(self).__name__)
        torch_class.__init__(self, optimizer, *args, **kwargs)
        self._take_over()

    __init__.__signature__ = inspect.signature(torch_class.__init__)
    __init__.__doc__ = torch_class.__init__.__doc__
    return __init__


# --- the closed-form schedulers ---------------------------------------------------------------------


class LambdaLR(_InKernelSchedule, torch_schedulers.LambdaLR):
    """torch's LambdaLR: ``lr = base_lr * lr_lambda(t)``.

    ``lr_lambda`` runs on the host ahead of the clock, ``capacity`` values at a time, uploaded
    to the device without a sync. With ``horizon=N`` all of ``t < N`` is tabulated at once (no
    host work during CUDA-graph replays) and stepping past it raises ValueError.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1, *, horizon: int | None = None, capacity: int = 1024):
        _require_fused(optimizer, "LambdaLR")
        self._horizon, self._capacity = horizon, capacity
        torch_schedulers.LambdaLR.__init__(self, optimizer, lr_lambda, last_epoch)
        self._take_over()

    def _schedule_for(self, index, base=None):
        base, function = self._base(index, base), self.lr_lambdas[index]
        return S.Tabulated(lambda t: base * function(t), capacity=self._capacity, horizon=self._horizon)


class MultiplicativeLR(_InKernelSchedule, torch_schedulers.MultiplicativeLR):
    """torch's MultiplicativeLR: ``lr_t = lr_{t-1} * lr_lambda(t)``, tabulated like LambdaLR."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1, *, horizon: int | None = None, capacity: int = 1024):
        _require_fused(optimizer, "MultiplicativeLR")
        self._horizon, self._capacity = horizon, capacity
        torch_schedulers.MultiplicativeLR.__init__(self, optimizer, lr_lambda, last_epoch)
        self._take_over()

    def _schedule_for(self, index, base=None):
        products = _Recurrence(self._base(index, base), lambda t, lr: lr * self.lr_lambdas[index](t) if t > 0 else lr)
        return S.Tabulated(products, capacity=self._capacity, horizon=self._horizon)


class StepLR(_InKernelSchedule, torch_schedulers.StepLR):
    """torch's StepLR: ``lr = base_lr * gamma ** floor(t / step_size)``."""

    def _schedule_for(self, index, base=None):
        return S.Step(self._base(index, base), self.step_size, self.gamma)


class MultiStepLR(_InKernelSchedule, torch_schedulers.MultiStepLR):
    """torch's MultiStepLR: ``lr = base_lr * gamma ** (milestones <= t)``, duplicates compounding."""

    def _schedule_for(self, index, base=None):
        milestones = sorted(self.milestones.elements())
        return S.MultiStep(self._base(index, base), milestones, self.gamma)


class ConstantLR(_InKernelSchedule, torch_schedulers.ConstantLR):
    """torch's ConstantLR: ``base_lr * factor`` until ``total_iters``, then ``base_lr``.

    ``factor=0`` is allowed (torch raises ZeroDivisionError when it reaches total_iters).
    """

    def _schedule_for(self, index, base=None):
        return S.ConstantFactor(self._base(index, base), self.factor, self.total_iters)


class LinearLR(_InKernelSchedule, torch_schedulers.LinearLR):
    """torch's LinearLR: ``base_lr * (start + (end - start) * min(t, T) / T)``."""

    _torch_names = {"init": "base lr"}

    def _schedule_for(self, index, base=None):
        return S.Linear(self._base(index, base), self.start_factor, self.end_factor, self.total_iters)


class ExponentialLR(_InKernelSchedule, torch_schedulers.ExponentialLR):
    """torch's ExponentialLR: ``base_lr * gamma ** t`` (float64 pow in the kernel)."""

    def _schedule_for(self, index, base=None):
        return S.Exponential(self._base(index, base), self.gamma)


class PolynomialLR(_InKernelSchedule, torch_schedulers.PolynomialLR):
    """torch's PolynomialLR: ``base_lr * (1 - min(t, T) / T) ** power``."""

    def _schedule_for(self, index, base=None):
        return S.Polynomial(self._base(index, base), self.total_iters, self.power)


class CosineAnnealingLR(_InKernelSchedule, torch_schedulers.CosineAnnealingLR):
    """torch's CosineAnnealingLR: ``eta_min + (base_lr - eta_min) * (1 + cos(pi t / T_max)) / 2``,
    periodic past ``T_max`` as torch's closed form is."""

    _multiplicative = False
    _torch_names = {"period": "T_max", "floor": "eta_min"}

    def _schedule_for(self, index, base=None):
        return S.Cosine(self._base(index, base), self.T_max, self.eta_min)

    def _affine(self, index, t):
        """torch's recursive step as ``lr_t = a * lr_{t-1} + b`` (for ChainedScheduler)."""
        if t == 0:
            return 1.0, 0.0
        if (t - 1 - self.T_max) % (2 * self.T_max) == 0:
            return 1.0, (float(self.base_lrs[index]) - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
        ratio = (1 + math.cos(math.pi * t / self.T_max)) / (1 + math.cos(math.pi * (t - 1) / self.T_max))
        return ratio, self.eta_min - ratio * self.eta_min


class CosineAnnealingWarmRestarts(_InKernelSchedule, torch_schedulers.CosineAnnealingWarmRestarts):
    """torch's CosineAnnealingWarmRestarts, with cycle boundaries found by integer accumulation:
    every restart is exact, also after ``step(epoch)`` (torch's float log misplaces some)."""

    _multiplicative = False
    _torch_names = {"floor": "eta_min"}

    def _schedule_for(self, index, base=None):
        return S.WarmRestarts(self._base(index, base), self.T_0, self.T_mult, self.eta_min)

    def step(self, epoch=None):
        """Advances one step, or jumps to an integer ``epoch`` (the clock counts whole steps)."""
        if epoch is not None and (isinstance(epoch, bool) or int(epoch) != epoch or epoch < 0):
            raise ValueError(
                f"epoch must be a non-negative integer for the in-kernel clock, got {epoch!r}; "
                "step once per iteration and scale T_0 instead of passing fractional epochs")
        self._step_count += 1
        self._update_lr(None if epoch is None else int(epoch))
        self.T_cur, self.T_i = self._schedules[0].position(self.last_epoch)


class CyclicLR(_InKernelSchedule, torch_schedulers.CyclicLR):
    """torch's CyclicLR with beta1 cycling computed in the kernel (``cycle_momentum=True``).

    A custom ``scale_fn`` is tabulated on the host like a LambdaLR (by cycle or by iteration);
    ``horizon=N`` (keyword, lrfused's) tabulates it whole for the first N steps, which a CUDA
    graph that captures ``step()`` needs.
    """

    _multiplicative = False

    def __init__(self, optimizer, *args, horizon: int | None = None, **kwargs):
        _require_fused(optimizer, "CyclicLR")
        self._horizon = None if horizon is None else S._positive_int("horizon", horizon)
        torch_schedulers.CyclicLR.__init__(self, optimizer, *args, **kwargs)
        self._take_over()

    def _schedule_for(self, index, base=None):
        mode = {"triangular": S.CYCLIC_TRIANGULAR, "triangular2": S.CYCLIC_TRIANGULAR2,
                "exp_range": S.CYCLIC_EXP_RANGE}.get(self.mode)
        table = None
        if self._scale_fn_custom is not None:
            mode = S.CYCLIC_TABLE_BY_CYCLE if self.scale_mode == "cycle" else S.CYCLIC_TABLE_BY_ITERATION
            horizon = self._horizon
            if horizon is not None and self.scale_mode == "cycle":
                horizon = self._table_index(horizon - 1) + 1  # the cycles of steps [0, horizon)
            table = S.Tabulated(lambda x: float(self._scale_fn_custom(x)), horizon=horizon)
        cycle_momentum = bool(self.cycle_momentum)
        return S.Cyclic(
            float(self.base_lrs[index]), float(self.max_lrs[index]), self.total_size, self.step_ratio, mode=mode, gamma=self.gamma,
            cycle_momentum=cycle_momentum,
            base_momentum=self.base_momentums[index] if cycle_momentum else 0.0,
            max_momentum=self.max_momentums[index] if cycle_momentum else 0.0, scale_table=table)

    def _table_index(self, t):
        if self._scale_fn_custom is not None and self.scale_mode == "cycle":
            return math.floor(1 + max(t, 0) / self.total_size)  # the scale table is indexed by cycle
        return super()._table_index(t)


class OneCycleLR(_InKernelSchedule, torch_schedulers.OneCycleLR):
    """torch's OneCycleLR (two or three phases, cos or linear) with beta1 cycling in the kernel.

    Stepping past ``total_steps`` raises ValueError as torch does; a kernel that is handed a
    later clock holds the value reached at ``total_steps``.
    """

    _multiplicative = False

    def _schedule_for(self, index, base=None):
        group = self.optimizer.param_groups[index]
        cycle_momentum = bool(self.cycle_momentum)
        return S.OneCycle(
            float(group["initial_lr"]), float(group["max_lr"]), float(group["min_lr"]), self.total_steps,
            pct_start=self._pct_start(), three_phase=len(self._schedule_phases) == 3,
            anneal_cos=self._anneal_func_type == "cos", cycle_momentum=cycle_momentum,
            base_momentum=group["base_momentum"] if cycle_momentum else 0.0,
            max_momentum=group["max_momentum"] if cycle_momentum else 0.0)

    def _pct_start(self) -> float:
        return (self._schedule_phases[0]["end_step"] + 1) / self.total_steps

    def _advance(self, epoch):
        target = self.last_epoch + 1 if epoch is None else int(epoch)
        if target > self.total_steps:
            raise ValueError(
                f"Tried to step {target} times. The specified number of total steps is {self.total_steps}")
        super()._advance(epoch)


# --- composites -----------------------------------------------------------------------------------


def _require_children(schedulers, name: str) -> None:
    for index, child in enumerate(schedulers):
        if not isinstance(child, _InKernelSchedule):
            raise TypeError(
                f"lrfused.lr_scheduler.{name} needs lrfused schedulers, got {type(child).__name__} at index {index}")


class SequentialLR(_InKernelSchedule, torch_schedulers.SequentialLR):
    """torch's SequentialLR: child ``i`` from ``milestones[i-1]`` on, restarted at its own t=0."""

    _multiplicative = False

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        _require_fused(optimizer, "SequentialLR")
        _require_children(schedulers, "SequentialLR")
        for child in schedulers:
            child._owner_ready = False  # torch's constructor steps the first child once more
        torch_schedulers.SequentialLR.__init__(self, optimizer, schedulers, milestones, last_epoch)
        self._take_over()
        for child in schedulers:
            child._owner_ready = True

    def _schedule_for(self, index, base=None):
        return S.Sequential([child._schedule_for(index, base) for child in self._schedulers], list(self._milestones))

    def step(self):
        self._update_lr()


class ChainedScheduler(_InKernelSchedule, torch_schedulers.ChainedScheduler):
    """torch's ChainedScheduler: every child steps each time, each acting on the lr left by the
    previous one.

    Multiplicative children give the product of their closed forms. With a cosine (eta_min != 0
    makes the chain affine, not a product), cyclic, one-cycle or warm-restart child, the exact
    recurrence ``lr_t = a(t) lr_{t-1} + b(t)`` of torch's chain is evaluated on the host ahead of
    the clock and uploaded in blocks (``capacity`` steps at a time), or whole for the first
    ``horizon`` steps (needed when a CUDA graph captures ``step()``).
    """

    _multiplicative = False

    def __init__(self, schedulers, optimizer=None, *, capacity: int = 1024, horizon: int | None = None):
        schedulers = list(schedulers)
        _require_children(schedulers, "ChainedScheduler")
        optimizer = optimizer or (schedulers[0].optimizer if schedulers else None)
        _require_fused(optimizer, "ChainedScheduler")
        horizon = None if horizon is None else S._positive_int("horizon", horizon)
        torch_schedulers.ChainedScheduler.__init__(self, schedulers, optimizer)
        self._capacity, self._horizon = capacity, horizon
        self.last_epoch = max(child.last_epoch for child in schedulers)
        self.base_lrs = list(schedulers[0].base_lrs)
        self._take_over()

    def _schedule_for(self, index, base=None):
        base = self._base(index, base)
        if all(child._multiplicative for child in self._schedulers):
            return S.Product([child._schedule_for(index, 1.0) for child in self._schedulers], init=base)

        def chained(t, lr):
            for child in self._schedulers:
                a, b = _affine(child, index, t)
                lr = a * lr + b
            return lr

        return S.Tabulated(_Recurrence(base, chained), capacity=self._capacity, horizon=self._horizon)

    def step(self):
        self._update_lr()
        for child in self._schedulers:
            child.last_epoch = self.last_epoch
            child._last_lr = self._last_lr


def _affine(child: _InKernelSchedule, index: int, t: int) -> tuple[float, float]:
    """One child's step of a chain, ``lr -> a * lr + b``, as torch's recursive forms do it."""
    if hasattr(child, "_affine"):
        return child._affine(index, t)
    if child._multiplicative:
        factor = child._schedule_for(index, 1.0)
        previous = factor(t - 1) if t > 0 else 1.0
        return (factor(t) / previous if previous != 0 else 0.0), 0.0
    return 0.0, child._schedule_for(index)(t)  # torch's closed form ignores the incoming lr


class _Recurrence:
    """``values[t] = step(t, values[t-1])`` from ``values[-1] = initial``, memoised for the host."""

    def __init__(self, initial: float, step: Callable[[int, float], float]):
        self.initial, self.step, self.values = initial, step, []

    def __call__(self, t: int) -> float:
        while len(self.values) <= t:
            previous = self.values[-1] if self.values else self.initial
            self.values.append(self.step(len(self.values), previous))
        return self.values[t]


# --- ReduceLROnPlateau -----------------------------------------------------------------------------


class ReduceLROnPlateau(_InKernelSchedule, torch_schedulers.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau, evaluated on the device.

    ``step(metric)`` takes a float or a 0-dim tensor on the optimizer's device and updates the
    best value, the bad-epoch and cooldown counters and each group's lr with tensor operations:
    no host sync. ``param_groups[i]["lr"]`` is then a 0-dim float64 device tensor (a view of
    what the kernel reads), and so is each entry of ``get_last_lr()``; turning one into a Python
    float is the one place that syncs. ``best``, ``num_bad_epochs`` and ``cooldown_counter`` are
    device tensors too.
    """

    _multiplicative = False

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        _require_fused(optimizer, "ReduceLROnPlateau")
        torch_schedulers.ReduceLROnPlateau.__init__(self, optimizer, mode, factor, patience, threshold,
                                                    threshold_mode, cooldown, min_lr, eps)
        self._install_plateau([float(group["lr"]) for group in optimizer.param_groups])

    def _install_plateau(self, lrs: list[float]) -> None:
        device = _primary_device(self.optimizer)
        self._schedules = [S.Constant(lr) for lr in lrs]
        self._beta1_arg = [group["betas"][0] for group in self.optimizer.param_groups]
        self.optimizer._bind(self._schedules, None, self, [None] * len(lrs))
        binding = self.optimizer._binding
        buffer = binding.buffers[binding.primary]
        # Every program is one CONSTANT node [kind, 3, lr]: the lrs are a strided view of the buffer.
        self._lrs = buffer.view(len(lrs), 3)[:, 2]
        self._min_lrs = torch.tensor(self.min_lrs, dtype=torch.float64, device=device)
        self.best = torch.full((), float(self.best), dtype=torch.float64, device=device)
        self.num_bad_epochs = torch.full((), int(self.num_bad_epochs), dtype=torch.int64, device=device)
        self.cooldown_counter = torch.full((), int(self.cooldown_counter), dtype=torch.int64, device=device)
        self._published = [self._lrs[i] for i in range(len(lrs))]
        for group, lr in zip(self.optimizer.param_groups, self._published):
            group["lr"] = lr
        self._last_lr = [lr.clone() for lr in self._published]
        self._owner_ready = True

    def _check_owns(self, optimizer):
        for index, group in enumerate(optimizer.param_groups):
            if group["lr"] is not self._published[index]:
                raise RuntimeError(
                    f"param_groups[{index}]['lr'] was replaced by hand, but ReduceLROnPlateau drives it")

    def _kernel_beta1(self, index, beta1):
        return beta1

    def get_lr(self):
        return list(self._last_lr)

    def _is_better_tensor(self, current: torch.Tensor) -> torch.Tensor:
        if self.mode == "min" and self.threshold_mode == "rel":
            return current < self.best * (1.0 - self.threshold)
        if self.mode == "min":
            return current < self.best - self.threshold
        if self.threshold_mode == "rel":
            return current > self.best * (self.threshold + 1.0)
        return current > self.best + self.threshold

    def step(self, metrics, epoch=None):
        if self.optimizer._binding is None or self.optimizer._binding.owner is not self:
            raise RuntimeError("ReduceLROnPlateau no longer drives this optimizer: another scheduler was attached")
        device = self.best.device
        if isinstance(metrics, torch.Tensor):
            if metrics.numel() != 1:
                raise ValueError(f"metrics must be a scalar, got a tensor of shape {tuple(metrics.shape)}")
            current = metrics.detach().reshape(()).to(device=device, dtype=torch.float64, non_blocking=True)
        else:
            current = torch.full((), float(metrics), dtype=torch.float64, device=device)
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        better = self._is_better_tensor(current)
        self.best.copy_(torch.where(better, current, self.best))
        bad = torch.where(better, 0, self.num_bad_epochs + 1)
        in_cooldown = self.cooldown_counter > 0
        counter = torch.where(in_cooldown, self.cooldown_counter - 1, self.cooldown_counter)
        bad = torch.where(in_cooldown, 0, bad)
        reduce = bad > self.patience
        new_lrs = torch.maximum(self._lrs * self.factor, self._min_lrs)
        self._lrs.copy_(torch.where(reduce & (self._lrs - new_lrs > self.eps), new_lrs, self._lrs))
        self.cooldown_counter.copy_(torch.where(reduce, self.cooldown, counter))
        self.num_bad_epochs.copy_(torch.where(reduce, 0, bad))
        self._last_lr = [lr.clone() for lr in self._published]

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_lrs", "_min_lrs") + _TRANSIENT}
        state["_lrs"] = self._lrs.clone()
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        lrs = state.pop("_lrs")
        self.__dict__.update({k: v for k, v in state.items() if k not in ("best", "num_bad_epochs", "cooldown_counter")})
        self._install_plateau([0.0] * len(self.optimizer.param_groups))
        self._lrs.copy_(lrs)
        for key in ("best", "num_bad_epochs", "cooldown_counter"):
            getattr(self, key).copy_(torch.as_tensor(state[key]))
