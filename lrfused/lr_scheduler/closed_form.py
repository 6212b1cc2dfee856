"""The single schedulers: torch's classes, each step also applied on the device.

Chainable classes (StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR, PolynomialLR,
CosineAnnealingLR, MultiplicativeLR) step from the current lr with torch's formula, so they
compose with every other writer; the others (LambdaLR, CyclicLR, OneCycleLR,
CosineAnnealingWarmRestarts) set a closed form of their own clock, as torch's do.
"""

from __future__ import annotations

import math
import re

from torch.optim import lr_scheduler as torch_schedulers

from .. import _rules, _torch_compat
from .. import _schedule_encoding as E
from .. import schedules as S
from ..schedules._checks import positive_int
from ._device import OnDevice, check_finite_arguments, unchanged_if_refused, unwrap_optimizer
from ._docs import torch_doc_and_note


def _horizon(value) -> int | None:
    return None if value is None else positive_int("horizon", value)


def _whole(value):
    """An integral float (``T_max=100.0``, which torch accepts) as the int the encoder takes."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _check(name: str, build, torch_names: dict[str, str] | None = None) -> None:
    """Refuses, before torch's constructor changes anything, arguments that torch would take and
    then fail on or misuse (a zero step size or period, a negative gamma); the message uses
    torch's argument names."""
    try:
        build()
    except (TypeError, ValueError) as error:
        message = str(error)
        for ours, theirs in (torch_names or {}).items():
            message = re.sub(rf"\b{ours}\b", theirs, message)
        raise type(error)(f"{name}: {message}") from None


class _Tabulated(OnDevice):
    """A Python function tabulated once for the steps before ``horizon`` (when given): those steps
    run on the device, the others are computed on the host."""

    _horizon: int | None = None

    def _device_form_at(self, epoch):
        target = self.last_epoch + 1 if epoch is None else epoch
        return self._horizon is not None and super()._device_form_at(epoch) and target < self._horizon


@torch_doc_and_note
class LambdaLR(_Tabulated, torch_schedulers.LambdaLR):
    """torch's LambdaLR: ``lr = base_lr * lr_lambda(t)``, with ``lr_lambda`` called at each step as
    torch calls it (a list-indexing or stateful lambda works as in torch).

    Each step's value is computed on the host and written to the device. With ``horizon=N``
    (lrfused's keyword) the lambda is also tabulated once for ``t < N`` at construction, and the
    steps before ``N`` run on the device: what a CUDA graph that captures ``step()`` needs. The
    lambda must then be a pure function of ``t``.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1, *, horizon: int | None = None):
        optimizer = unwrap_optimizer(optimizer, "LambdaLR")
        if horizon is not None:  # only then an attribute: without it, the instance is torch's exactly
            self._horizon = _horizon(horizon)
        with unchanged_if_refused(optimizer):
            torch_schedulers.LambdaLR.__init__(self, optimizer, lr_lambda, last_epoch)

    def _leaf_rule(self, index):
        if self._horizon is None or index >= len(self.lr_lambdas):
            return None
        base, function = self._base(index), self.lr_lambdas[index]
        return _rules.set_(S.Tabulated(lambda t: base * function(t), horizon=self._horizon))


@torch_doc_and_note
class MultiplicativeLR(_Tabulated, torch_schedulers.MultiplicativeLR):
    """torch's MultiplicativeLR: ``lr_t = lr_{t-1} * lr_lambda(t)``; ``horizon=`` as LambdaLR's."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1, *, horizon: int | None = None):
        optimizer = unwrap_optimizer(optimizer, "MultiplicativeLR")
        if horizon is not None:  # only then an attribute: without it, the instance is torch's exactly
            self._horizon = _horizon(horizon)
        with unchanged_if_refused(optimizer):
            torch_schedulers.MultiplicativeLR.__init__(self, optimizer, lr_lambda, last_epoch)

    def _leaf_rule(self, index):
        if self._horizon is None or index >= len(self.lr_lambdas):
            return None
        function = self.lr_lambdas[index]
        return _rules.chain(S.Tabulated(lambda t: function(t) if t > 0 else 1.0, horizon=self._horizon))


@torch_doc_and_note
class StepLR(OnDevice, torch_schedulers.StepLR):
    """torch's StepLR: the lr times ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "StepLR")
        # torch takes any step size it can take a remainder by (2.0, 2.5, -3: computed on the host
        # where the device form needs an int) and divides by zero at the first step for 0.
        _check("StepLR", lambda: S.Step(1.0, 1, gamma))
        if isinstance(step_size, (int, float)) and step_size == 0:
            raise ValueError("StepLR: Invalid step_size: 0 (torch divides by it at the first step)")
        with unchanged_if_refused(optimizer):
            torch_schedulers.StepLR.__init__(self, optimizer, step_size, gamma, last_epoch)

    def _leaf_rule(self, index):
        return _rules.chain(S.Step(self._base(index), _whole(self.step_size), self.gamma))


@torch_doc_and_note
class MultiStepLR(OnDevice, torch_schedulers.MultiStepLR):
    """torch's MultiStepLR: the lr times ``gamma`` at each milestone (duplicates compound)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "MultiStepLR")
        milestones = list(milestones)
        _check("MultiStepLR", lambda: S.MultiStep(1.0, sorted(milestones), gamma))
        with unchanged_if_refused(optimizer):
            torch_schedulers.MultiStepLR.__init__(self, optimizer, milestones, gamma, last_epoch)

    def _leaf_rule(self, index):
        return _rules.chain(S.MultiStep(self._base(index), sorted(self.milestones.elements()), self.gamma))


@torch_doc_and_note
class ConstantLR(OnDevice, torch_schedulers.ConstantLR):
    """torch's ConstantLR: the lr times ``factor`` until ``total_iters``."""

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "ConstantLR")
        with unchanged_if_refused(optimizer):
            torch_schedulers.ConstantLR.__init__(self, optimizer, factor, total_iters, last_epoch)

    def _leaf_rule(self, index):
        return _rules.chain(S.ConstantFactor(self._base(index), self.factor, self.total_iters))


@torch_doc_and_note
class LinearLR(OnDevice, torch_schedulers.LinearLR):
    """torch's LinearLR: the lr scaled from ``start_factor`` to ``end_factor`` over ``total_iters``."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "LinearLR")
        with unchanged_if_refused(optimizer):
            torch_schedulers.LinearLR.__init__(self, optimizer, start_factor, end_factor, total_iters, last_epoch)

    def _leaf_rule(self, index):
        return _rules.chain(S.Linear(self._base(index), self.start_factor, self.end_factor, self.total_iters))


@torch_doc_and_note
class ExponentialLR(OnDevice, torch_schedulers.ExponentialLR):
    """torch's ExponentialLR: the lr times ``gamma`` at every step."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "ExponentialLR")
        _check("ExponentialLR", lambda: S.Exponential(1.0, gamma))
        with unchanged_if_refused(optimizer):
            torch_schedulers.ExponentialLR.__init__(self, optimizer, gamma, last_epoch)

    def _leaf_rule(self, index):
        return _rules.chain(S.Exponential(self._base(index), self.gamma))


@torch_doc_and_note
class PolynomialLR(OnDevice, torch_schedulers.PolynomialLR):
    """torch's PolynomialLR: ``base_lr * (1 - min(t, T) / T) ** power``, stepped as torch steps it."""

    def __init__(self, optimizer, total_iters=5, power=1.0, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "PolynomialLR")
        with unchanged_if_refused(optimizer):
            torch_schedulers.PolynomialLR.__init__(self, optimizer, total_iters, power, last_epoch)

    def _leaf_rule(self, index):
        return _rules.chain(S.Polynomial(self._base(index), self.total_iters, self.power))


@torch_doc_and_note
class CosineAnnealingLR(OnDevice, torch_schedulers.CosineAnnealingLR):
    """torch's CosineAnnealingLR, stepped with torch's recursive formula (an affine map of the lr)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "CosineAnnealingLR")
        # torch takes any T_max but 0, which it divides by (7.5 or -4: computed on the host where
        # the device form needs a positive int).
        _check("CosineAnnealingLR", lambda: S.Cosine(1.0, 1, eta_min), {"floor": "eta_min"})
        if isinstance(T_max, (int, float)) and T_max == 0:
            raise ValueError("CosineAnnealingLR: Invalid T_max: 0 (torch divides by it at the first step)")
        with unchanged_if_refused(optimizer):
            torch_schedulers.CosineAnnealingLR.__init__(self, optimizer, T_max, eta_min, last_epoch)

    def _leaf_rule(self, index):
        return _rules.chain(S.Cosine(self._base(index), _whole(self.T_max), self.eta_min))


@torch_doc_and_note
class CosineAnnealingWarmRestarts(OnDevice, torch_schedulers.CosineAnnealingWarmRestarts):
    """torch's CosineAnnealingWarmRestarts. Integer steps run on the device; a fractional epoch
    (``step(epoch + i / iters)``, torch's documented use), a write to ``T_cur``, or an explicit
    epoch where torch's float log places a restart differently are computed by torch's code on
    the host and written to the device."""

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0, last_epoch=-1):
        optimizer = unwrap_optimizer(optimizer, "CosineAnnealingWarmRestarts")
        with unchanged_if_refused(optimizer):
            torch_schedulers.CosineAnnealingWarmRestarts.__init__(self, optimizer, T_0, T_mult, eta_min, last_epoch)

    def _leaf_rule(self, index):
        return _rules.set_(S.WarmRestarts(self._base(index), self.T_0, self.T_mult, self.eta_min))

    def _device_form_at(self, epoch):
        if epoch is None:
            return self.last_epoch >= 0
        return not isinstance(epoch, bool) and float(epoch).is_integer() and epoch >= 0

    def _device_form_after(self):
        # Where the device's integer cycle position agrees with torch's T_cur and T_i.
        t_cur, t_i = _position(self.last_epoch, self.T_0, self.T_mult)
        return self.T_cur == t_cur and self.T_i == t_i

    def step(self, epoch=None):
        torch_step = torch_schedulers.CosineAnnealingWarmRestarts.step
        self._run_step(lambda: torch_step(self, epoch), epoch)


def _position(t: int, t_0: int, t_mult: int) -> tuple[int, int]:
    """(T_cur, T_i) at step t, cycle boundaries found by integer accumulation."""
    t_cur, t_i = max(t, 0), t_0
    while t_cur >= t_i:
        t_cur -= t_i
        t_i *= t_mult
    return t_cur, t_i


@torch_doc_and_note
class CyclicLR(OnDevice, torch_schedulers.CyclicLR):
    """torch's CyclicLR, with beta1 cycling (``cycle_momentum=True``) computed on the device too.

    A custom ``scale_fn`` is called on the host at each step, as torch calls it; ``horizon=N``
    (lrfused's keyword) tabulates it once for the first N steps so that those steps run on the
    device (what a CUDA graph that captures ``step()`` needs).
    """

    _horizon: int | None = None

    def __init__(
        self,
        optimizer,
        base_lr,
        max_lr,
        step_size_up=2000,
        step_size_down=None,
        mode="triangular",
        gamma=1.0,
        scale_fn=None,
        scale_mode="cycle",
        cycle_momentum=True,
        base_momentum=0.8,
        max_momentum=0.9,
        last_epoch=-1,
        *,
        horizon: int | None = None,
    ):
        optimizer = unwrap_optimizer(optimizer, "CyclicLR")
        check_finite_arguments("CyclicLR", optimizer, base_lr=base_lr, max_lr=max_lr)
        if horizon is not None:  # only then an attribute: without it, the instance is torch's exactly
            self._horizon = _horizon(horizon)
        with unchanged_if_refused(optimizer):
            torch_schedulers.CyclicLR.__init__(
                self,
                optimizer,
                base_lr,
                max_lr,
                step_size_up,
                step_size_down,
                mode,
                gamma,
                scale_fn,
                scale_mode,
                cycle_momentum,
                base_momentum,
                max_momentum,
                last_epoch,
            )

    @property
    def _cycles_beta1(self) -> bool:
        return bool(self.cycle_momentum)

    def _non_finite_source(self, index):
        if _torch_compat.cyclic_scale_fn(self) is None:
            return ""
        # torch's get_lr: the scale of cycle c (scale_mode "cycle") or of the step count.
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = cycle if self.scale_mode == "cycle" else self.last_epoch
        return f" (from scale_fn({x}) = {_torch_compat.cyclic_scale_fn(self)(x)!r})"

    def _leaf_rule(self, index):
        if index >= len(self.base_lrs):
            return _rules.keep()
        mode = {
            "triangular": E.CYCLIC_TRIANGULAR,
            "triangular2": E.CYCLIC_TRIANGULAR2,
            "exp_range": E.CYCLIC_EXP_RANGE,
        }.get(self.mode)
        table = None
        if _torch_compat.cyclic_scale_fn(self) is not None:
            if self._horizon is None:
                return None
            by_cycle = self.scale_mode == "cycle"
            mode = E.CYCLIC_TABLE_BY_CYCLE if by_cycle else E.CYCLIC_TABLE_BY_ITERATION
            horizon = math.floor(1 + (self._horizon - 1) / self.total_size) + 1 if by_cycle else self._horizon
            table = S.Tabulated(lambda x: float(_torch_compat.cyclic_scale_fn(self)(x)), horizon=horizon)
        cycle_momentum = bool(self.cycle_momentum)
        return _rules.set_(
            S.Cyclic(
                float(self.base_lrs[index]),
                float(self.max_lrs[index]),
                self.total_size,
                self.step_ratio,
                mode=mode,
                gamma=self.gamma,
                cycle_momentum=cycle_momentum,
                base_momentum=float(self.base_momentums[index]) if cycle_momentum else 0.0,
                max_momentum=float(self.max_momentums[index]) if cycle_momentum else 0.0,
                scale_table=table,
            )
        )

    def _device_form_at(self, epoch):
        if not super()._device_form_at(epoch):
            return False
        target = self.last_epoch + 1 if epoch is None else epoch
        return _torch_compat.cyclic_scale_fn(self) is None or (self._horizon is not None and target < self._horizon)


@torch_doc_and_note
class OneCycleLR(OnDevice, torch_schedulers.OneCycleLR):
    """torch's OneCycleLR (two or three phases, cos or linear) with beta1 cycling on the device."""

    def __init__(
        self,
        optimizer,
        max_lr,
        total_steps=None,
        epochs=None,
        steps_per_epoch=None,
        pct_start=0.3,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=False,
        last_epoch=-1,
    ):
        optimizer = unwrap_optimizer(optimizer, "OneCycleLR")
        check_finite_arguments("OneCycleLR", optimizer, max_lr=max_lr)
        with unchanged_if_refused(optimizer):
            torch_schedulers.OneCycleLR.__init__(
                self,
                optimizer,
                max_lr,
                total_steps,
                epochs,
                steps_per_epoch,
                pct_start,
                anneal_strategy,
                cycle_momentum,
                base_momentum,
                max_momentum,
                div_factor,
                final_div_factor,
                three_phase,
                last_epoch,
            )

    @property
    def _cycles_beta1(self) -> bool:
        return bool(self.cycle_momentum)

    def _leaf_rule(self, index):
        groups = self.optimizer.param_groups
        if index >= len(groups) or "max_lr" not in groups[index]:
            return _rules.keep()
        group = groups[index]
        cycle_momentum = bool(self.cycle_momentum)
        return _rules.set_(
            S.OneCycle(
                float(group["initial_lr"]),
                float(group["max_lr"]),
                float(group["min_lr"]),
                self.total_steps,
                pct_start=(_torch_compat.one_cycle_phases(self)[0]["end_step"] + 1) / self.total_steps,
                three_phase=len(_torch_compat.one_cycle_phases(self)) == 3,
                anneal_cos=_torch_compat.one_cycle_anneal(self) == "cos",
                cycle_momentum=cycle_momentum,
                base_momentum=float(group["base_momentum"]) if cycle_momentum else 0.0,
                max_momentum=float(group["max_momentum"]) if cycle_momentum else 0.0,
            )
        )

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        if "anneal_func" in state and _torch_compat.ONE_CYCLE_ANNEAL_KEY not in state:
            # A state saved by torch < 2.2 names the function instead of its type.
            func = state.pop("anneal_func")
            name = getattr(func, "__name__", str(func))
            state[_torch_compat.ONE_CYCLE_ANNEAL_KEY] = "cos" if "cos" in name else "linear"
        super().load_state_dict(state)
