"""What every lrfused scheduler shares: torch's own step on the host, the same step on the device.

note [A scheduler step]
Each class subclasses torch's and keeps its code: torch's ``step()`` computes the new lrs on the
host from the current ``group["lr"]`` (so ``get_last_lr()``, ``param_groups[i]["lr"]``, betas,
``T_cur``, warnings and errors are torch's, whatever else writes the groups). Around it:

1. the binding absorbs what the host wrote since the last step (last writer wins);
2. torch's step runs on the host;
3. the same step runs on the device from the scheduler's own int64 clock: deferred to the next
   optimizer step, whose op applies it first (note [One op per step]: no launch of its own, no
   sync), or at once where it cannot wait (``advance_lr_``); or, where the step has no device
   form (a Python ``lr_lambda`` without ``horizon=``, a fractional epoch), the host's values are
   written to the device;
4. the binding notes the host's values as what the device holds.

A step with a device form is what a CUDA graph can capture: its replays advance the clock and
the lr without the host. Capturing a step without one raises, before anything changes.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from .. import _ops, _rules, _torch_compat
from .._binding import is_published
from .._scheduled import FusedScheduledOptimizer, binding_of


class _DeviceSide:
    """What a scheduler keeps for its device step. It lives outside the scheduler's ``__dict__``,
    so that the scheduler's attributes, ``state_dict()``, deep copies and pickles are exactly
    torch's; a copy or a loaded scheduler rebuilds it from ``last_epoch`` at its next step."""

    __slots__ = ("clock", "rules", "rules_key", "cache", "steady")

    def __init__(self) -> None:
        self.clock: Tensor | None = None  # int64 step count on the device
        self.rules: Tensor | None = None  # the encoded rules (lrfused._rules), on the device
        self.rules_key: Any = None  # what the rules were built for (the group count)
        self.cache: Any = None  # a class's own (ReduceLROnPlateau: min_lrs on the device)
        # (optimizer, binding) of the last step when it was deferred after the whole general path
        # (note [The steady step]); None after any other kind of step.
        self.steady: tuple[Any, Any] | None = None


# Each scheduler's side, by id, dropped when the scheduler is freed (before its id can be reused).
# A plain dict: a WeakKeyDictionary look-up makes a weak reference each time, a fifth of a steady
# step's own cost.
_SIDES: dict[int, _DeviceSide] = {}


def device_side(scheduler: Any) -> _DeviceSide:
    side = _SIDES.get(id(scheduler))
    if side is None:
        side = _SIDES[id(scheduler)] = _DeviceSide()
        weakref.finalize(scheduler, _SIDES.pop, id(scheduler), None)
    return side


class _ParentSteps(threading.local):
    """How many SequentialLR steps (or constructions, or loads) this thread is inside. A class
    default, not ``getattr(local, name, 0)``: a read that misses raises inside getattr and costs
    as much as the rest of a steady step's checks."""

    depth = 0


_parents = _ParentSteps()


class children_on_host:
    """While a SequentialLR constructs, steps or loads its children, their steps are torch's
    alone: the parent's own device rule covers them. (A depth per thread, not a flag on each
    child, so that copies and nesting need no bookkeeping; a class, not a generator, as a
    SequentialLR enters it at every step.)"""

    def __enter__(self) -> None:
        _parents.depth += 1

    def __exit__(self, *exc_info: Any) -> None:
        _parents.depth -= 1


def inside_parent_step() -> bool:
    return _parents.depth > 0


def unwrap_optimizer(optimizer: Any, name: str) -> Any:
    """The FusedScheduledAdam inside a framework's wrapper (accelerate's AcceleratedOptimizer,
    Lightning's LightningOptimizer), or ``optimizer`` itself when there is none: the scheduler is
    then torch's class and nothing more (there is no device lr to step)."""
    # Descend first: Lightning's wrapper is an instance of a subclass made on the fly from the
    # optimizer's own class, with a copy of its __dict__, so isinstance alone would stop at it.
    inner = optimizer
    for _ in range(8):
        wrapped = next(
            (
                w
                for w in (getattr(inner, "optimizer", None), getattr(inner, "_optimizer", None))
                if isinstance(w, torch.optim.Optimizer) and w is not inner
            ),
            None,
        )
        if wrapped is None:
            break
        inner = wrapped
    if not isinstance(inner, FusedScheduledOptimizer):
        return optimizer
    binding_of(inner, name)  # refuses schedule= before anything changes
    return inner


@contextlib.contextmanager
def unchanged_if_refused(optimizer: Any) -> Iterator[None]:
    """A scheduler constructor that raises leaves the optimizer as it was. torch's constructors
    write the groups (``initial_lr``, CyclicLR's ``lr``, OneCycleLR's ``betas``) before some of
    their checks, and their first step may raise (a ``lr_lambda`` that fails at 0): all of that,
    and the device words the binding holds, are put back before the error propagates."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        yield
        return
    saved_groups = [dict(group) for group in groups]
    # A tensor lr (or momentum) is updated in place by torch's step: its value is saved too.
    saved_values = [
        {key: value.detach().clone() for key, value in group.items() if isinstance(value, Tensor)} for group in groups
    ]
    binding = binding_of(optimizer) if isinstance(optimizer, FusedScheduledOptimizer) else None
    saved_words = (binding.snapshot(), binding.driven) if binding is not None else None
    try:
        yield
    except BaseException:
        for group, saved, values in zip(groups, saved_groups, saved_values):
            group.clear()
            group.update(saved)
            for key, value in values.items():
                with torch.no_grad():
                    group[key].copy_(value)
        if binding is not None:
            words, driven = saved_words
            binding.restore(words)
            binding.driven = driven
        raise


def drives_device(optimizer: Any) -> bool:
    return isinstance(optimizer, FusedScheduledOptimizer)


def check_finite_arguments(scheduler_name: str, optimizer: Any, **arguments: Any) -> None:
    """Refuses, naming the argument and the group, a learning-rate argument that is not finite,
    where the scheduler drives lrfused's kernel: torch takes it and trains the params into NaNs;
    lrfused refuses any lr that is not finite (a kernel cannot raise without a host sync). A list
    gives one value per param group; a number (or a 1-element tensor) is every group's."""
    if not drives_device(optimizer):
        return
    for name, value in arguments.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for index, item in enumerate(values):
            try:
                number = float(item)
            except (TypeError, ValueError):
                continue  # torch's own checks name what is not a number
            if not math.isfinite(number):
                where = f" (param_groups[{index}])" if isinstance(value, (list, tuple)) else ""
                raise ValueError(
                    f"{scheduler_name}: invalid {name}: {number}{where}; lrfused refuses a learning rate "
                    "that is not finite"
                )


class OnDevice:
    """Mixin placed before a torch scheduler class (note [A scheduler step])."""

    # The rules set beta1 too (CyclicLR, OneCycleLR with cycle_momentum): the binding then holds the
    # op's beta1 argument constant while the device word drives it.
    _cycles_beta1 = False

    # -- per class ---------------------------------------------------------------------------------

    def _leaf_rule(self, index: int) -> list[float] | None:
        """Group ``index``'s rule node (lrfused._rules), or None when the step has no device form."""
        raise NotImplementedError

    def _device_form_at(self, epoch: Any) -> bool:
        """Whether the step about to run (to ``epoch``, None: one step) has a device form. The
        device clock counts from 0: a step after an explicit negative epoch is torch's, on the host."""
        if epoch is None:
            return self.last_epoch >= 0
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

    def _device_rules(self, binding, side: _DeviceSide) -> Tensor | None:
        key = binding.group_count
        if side.rules_key != key:
            words = self._group_rules(key) if binding.held else None
            rules = None
            if words is not None:
                # Checked once, on the host: the CUDA op trusts the structure of its rules.
                _ops.validate_rules(torch.tensor(words, dtype=torch.float64), key)
                rules = torch.tensor(_rules.indexed(words, key), dtype=torch.float64).to(binding.primary)
            # Not kept from the constructor's own step: torch's constructors may set base_lrs after it
            # (CyclicLR does).
            if _torch_compat.in_constructor_step(self):
                return rules
            side.rules, side.rules_key = rules, key
        return side.rules

    def _refuse_capture(self, binding, why: str) -> None:
        if binding.on_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{type(self).__name__}.step() is being captured in a CUDA graph, but {why}, so the host computes "
                "this step and a graph replay cannot: capture only steps that run on the device (see "
                "lrfused.lr_scheduler's documentation)"
            )

    def _run_step(self, host_step: Callable[[], None], epoch: Any) -> None:
        if _parents.depth:
            host_step()  # a SequentialLR's child: the parent's rule covers it
            return
        if epoch is None and self._steady_step(host_step):
            return
        optimizer = self.optimizer
        if not drives_device(optimizer):
            host_step()
            return
        groups = optimizer.param_groups
        binding = binding_of(optimizer, type(self).__name__)
        side = device_side(self)
        side.steady = None
        rules = self._device_rules(binding, side)
        on_device = rules is not None and not _torch_compat.in_constructor_step(self) and self._device_form_at(epoch)
        if not on_device:
            self._refuse_capture(binding, self._why_host(rules, epoch))
        binding.absorb(groups)
        for index, group in enumerate(groups):
            if is_published(group["lr"]):
                # torch updates a tensor lr in place: a logger that kept last step's keeps its value.
                binding.publish(groups, index, group["lr"].clone())
        host_step()
        clock = side.clock
        if on_device and self._device_form_after():
            if clock is None:
                clock = side.clock = torch.full(
                    (), max(self.last_epoch - 1, 0), dtype=torch.int64, device=binding.primary
                )
            beta1_from = [binding.momentum_of(group) if self._cycles_beta1 else None for group in groups]
            deferred = binding.advance(clock, rules, None if epoch is None else int(epoch), beta1_from)
            if deferred and epoch is None:
                side.steady = (optimizer, binding)
        else:
            self._host_computed(binding, side, groups, rules)
        binding.record(groups)

    def _steady_step(self, host_step: Callable[[], None]) -> bool:
        """note [The steady step]
        A step after a step deferred to the device, with nothing changed in between (the same
        optimizer, binding and groups; every lr a float the device words hold; the deferral
        possible), skips the general path's checks and conversions: torch's step on the host, the
        deferral, the host's values noted. Whatever differs takes the general path (False: nothing
        was done), which checks it all and marks the next step steady again."""
        side = _SIDES.get(id(self))
        steady = side.steady if side is not None else None
        if steady is None:
            return False
        optimizer, binding = steady
        if optimizer is not self.optimizer or side.rules_key != binding.group_count or not self._device_form_at(None):
            return False
        groups = optimizer.param_groups
        if not binding.steady_for(groups):
            return False
        host_step()
        if not self._device_form_after():
            side.steady = None
            self._host_computed(binding, side, groups, side.rules)
            binding.record(groups)
        else:
            binding.defer(side.clock, side.rules)
            if self._cycles_beta1 and None in binding.beta1_args:
                binding.hold_beta1([binding.momentum_of(group) for group in groups])
            binding.record(groups)
        return True

    def _host_computed(self, binding, side: _DeviceSide, groups: list[dict[str, Any]], rules) -> None:
        """A step whose values the host computed: they are written to the device words."""
        # A non-finite one is refused here, naming its source (a device step's is skipped and
        # counted by the kernel, note [Unusable schedule values]).
        self._refuse_non_finite(groups)
        binding.write(groups)
        if rules is not None:
            # The next device step starts from here.
            epoch = max(int(math.floor(self.last_epoch)), 0)
            if side.clock is None:
                side.clock = torch.full((), epoch, dtype=torch.int64, device=binding.primary)
            else:
                side.clock.fill_(epoch)

    def _refuse_non_finite(self, groups: list[dict[str, Any]]) -> None:
        """A float lr that torch's step computed on the host and the kernel cannot apply, refused
        naming the scheduler and what it was computed from (``_non_finite_source``)."""
        for index, group in enumerate(groups):
            lr = group["lr"]
            if isinstance(lr, float) and not math.isfinite(lr):
                raise ValueError(
                    f"{type(self).__name__}.step() computed lr={lr} for param_groups[{index}]"
                    f"{self._non_finite_source(index)}; lrfused refuses a learning rate that is not finite"
                )

    def _non_finite_source(self, index: int) -> str:
        """What a class's non-finite lr came from, for its error message (`` (from ...)``)."""
        return ""

    def _why_host(self, rules, epoch) -> str:
        if _torch_compat.in_constructor_step(self):
            return "this is the constructor's step"
        if epoch is not None and not self._device_form_at(epoch):
            return f"the epoch {epoch!r} is not a non-negative integer"
        return "its schedule has no device form (a Python function without horizon=N)"

    # -- torch's interface ---------------------------------------------------------------------------

    def _update_lr(self, epoch=None):
        torch_update = super()._update_lr
        if epoch is None:
            self._run_step(torch_update, None)
        else:
            self._run_step(lambda: torch_update(epoch), epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # A loaded torch state (or lrfused's) moves the clock; the rules are rebuilt at the next step.
        side = device_side(self)
        side.rules_key = None
        if side.clock is not None:
            side.clock.fill_(max(int(math.floor(self.last_epoch)), 0))
