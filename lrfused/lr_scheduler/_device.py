"""What every lrfused scheduler shares: torch's own step on the host, the same step on the device.

note [A scheduler step]
Each class subclasses torch's and keeps its code: torch's ``step()`` computes the new lrs on the
host from the current ``group["lr"]`` (so ``get_last_lr()``, ``param_groups[i]["lr"]``, betas,
``T_cur``, warnings and errors are torch's, whatever else writes the groups). Around it:

1. the binding absorbs what the host wrote since the last step (last writer wins);
2. torch's step runs on the host;
3. the same step runs on the device from the scheduler's own int64 clock (``advance_lr_``, one
   launch, no sync), or, where the step has no device form (a Python ``lr_lambda`` without
   ``horizon=``, a fractional epoch), the host's values are written to the device;
4. the binding notes the host's values as what the device holds.

A step with a device form is what a CUDA graph can capture: its replays advance the clock and
the lr without the host. Capturing a step without one raises, before anything changes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from .. import _ops
from ..optim import FusedScheduledAdam

# Attributes rebuilt from last_epoch and the constructor's arguments, never saved.
TRANSIENT = ("_clock", "_rules", "_rules_key", "_parent")


def unwrap_optimizer(optimizer: Any, name: str) -> FusedScheduledAdam:
    """The FusedScheduledAdam inside a framework's wrapper (accelerate's AcceleratedOptimizer,
    Lightning's LightningOptimizer), or a TypeError naming what was given."""
    inner, seen = optimizer, 0
    while not isinstance(inner, FusedScheduledAdam) and seen < 8:
        wrapped = getattr(inner, "optimizer", None)
        if wrapped is None or wrapped is inner:
            wrapped = getattr(inner, "_optimizer", None)
        if wrapped is None or wrapped is inner:
            break
        inner, seen = wrapped, seen + 1
    if not isinstance(inner, FusedScheduledAdam):
        raise TypeError(
            f"lrfused.lr_scheduler.{name} drives a FusedScheduledAdam(W), got {type(optimizer).__name__}; "
            f"for other optimizers use torch.optim.lr_scheduler.{name}")
    inner._scheduler_binding(name)  # refuses schedule= before anything changes
    return inner


class OnDevice:
    """Mixin placed before a torch scheduler class (note [A scheduler step])."""

    # Set by a SequentialLR that steps this scheduler: its own rules then cover this one's. A flag,
    # not a reference, so that no cycle keeps either alive.
    _parent = False
    # The rules set beta1 too (CyclicLR, OneCycleLR with cycle_momentum): the binding then holds the
    # op's beta1 argument constant while the device word drives it.
    _cycles_beta1 = False

    # -- per class ---------------------------------------------------------------------------------

    def _leaf_rule(self, index: int) -> list[float] | None:
        """Group ``index``'s rule node (lrfused._rules), or None when the step has no device form."""
        raise NotImplementedError

    def _device_form_at(self, epoch: Any) -> bool:
        """Whether the step about to run (to ``epoch``, None: one step) has a device form."""
        if epoch is None:
            return True
        return isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0

    def _device_form_after(self) -> bool:
        """Checked after the host step (CosineAnnealingWarmRestarts compares T_cur)."""
        return True

    # -- shared ------------------------------------------------------------------------------------

    def _base(self, index: int) -> float:
        base = self.base_lrs[index] if index < len(self.base_lrs) else self.optimizer.param_groups[index]["lr"]
        return float(base)

    def _group_rules(self, group_count: int) -> list[float] | None:
        words: list[float] = []
        for index in range(group_count):
            try:
                rule = self._leaf_rule(index)
            except (TypeError, ValueError, OverflowError):
                rule = None  # arguments torch accepts that the encoder cannot hold: the host computes
            if rule is None:
                return None
            words += rule
        return words

    def _device_rules(self, binding) -> Tensor | None:
        key = binding.group_count
        if getattr(self, "_rules_key", None) != key:
            words = self._group_rules(key) if binding.held else None
            rules = None
            if words is not None:
                host = torch.tensor(words, dtype=torch.float64)
                # Checked once, on the host: the CUDA op trusts the structure of its rules.
                _ops.validate_rules(host, key)
                rules = host.to(binding.primary)
            # Not kept from the constructor's own step: torch's constructors may set base_lrs after it
            # (CyclicLR does).
            if getattr(self, "_is_initial", False):
                return rules
            self._rules, self._rules_key = rules, key
        return self._rules

    def _refuse_capture(self, binding, why: str) -> None:
        if binding.primary.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{type(self).__name__}.step() is being captured in a CUDA graph, but {why}, so the host computes "
                "this step and a graph replay cannot: capture only steps that run on the device (see "
                "lrfused.lr_scheduler's documentation)")

    def _run_step(self, host_step: Callable[[], None], epoch: Any) -> None:
        optimizer = self.optimizer
        groups = optimizer.param_groups
        binding = optimizer._scheduler_binding(type(self).__name__)
        rules = self._device_rules(binding)
        on_device = rules is not None and not getattr(self, "_is_initial", False) and self._device_form_at(epoch)
        if not on_device:
            self._refuse_capture(binding, self._why_host(rules, epoch))
        binding.absorb(groups)
        for index, group in enumerate(groups):
            if binding.owns(index, group["lr"]):
                # torch updates a tensor lr in place: a logger that kept last step's keeps its value.
                binding.publish(groups, index, group["lr"].clone())
        host_step()
        clock = getattr(self, "_clock", None)
        if on_device and self._device_form_after():
            if clock is None:
                clock = self._clock = torch.full((), max(self.last_epoch - 1, 0), dtype=torch.int64,
                                                 device=binding.primary)
            beta1_from = [group["betas"][0] if self._cycles_beta1 else None for group in groups]
            binding.advance(clock, rules, None if epoch is None else int(epoch), beta1_from)
        else:
            binding.write(groups)
            if rules is not None:
                # The next device step starts from here.
                if clock is None:
                    self._clock = torch.full((), max(int(math.floor(self.last_epoch)), 0), dtype=torch.int64,
                                             device=binding.primary)
                else:
                    clock.fill_(max(int(math.floor(self.last_epoch)), 0))
        binding.record(groups)

    def _why_host(self, rules, epoch) -> str:
        if getattr(self, "_is_initial", False):
            return "this is the constructor's step"
        if epoch is not None and not self._device_form_at(epoch):
            return f"the epoch {epoch!r} is not a non-negative integer"
        return "its schedule has no device form (a Python function without horizon=N)"

    # -- torch's interface ---------------------------------------------------------------------------

    def _update_lr(self, epoch=None):
        torch_update = super()._update_lr
        if self._parent:
            torch_update(epoch)
            return
        self._run_step(lambda: torch_update(epoch), epoch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in TRANSIENT:
            state.pop(key, None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in TRANSIENT})
        # A loaded torch state (or lrfused's) moves the clock; the rules are rebuilt at the next step.
        self._rules_key = None
        clock = getattr(self, "_clock", None)
        if clock is not None:
            clock.fill_(max(int(math.floor(self.last_epoch)), 0))
