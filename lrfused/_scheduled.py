"""What every lrfused optimizer shares (FusedScheduledAdam, FusedScheduledAdamW,
FusedScheduledSGD, FusedScheduledRMSprop, FusedScheduledAdagrad): a torch.optim.Optimizer whose
step is one op per device for every group and dtype (note [One op per step]), the binding of its
lrs that the schedulers and the LR finder drive, its state dicts and pickling. A subclass names its
update rule (``_rule``, note [The seam of an update rule] in csrc/README.md), its group keys'
defaults and the checks of its hyperparameters."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _ops, _torch_compat
from ._binding import Binding
from ._planner import StepPlanner
from ._step_plan import UpdateRule
from ._validation import check_implementation_flags, check_loaded_step, check_param
from .schedules import Schedule


class FusedScheduledOptimizer(Optimizer):
    """The base of lrfused's optimizers: see the module's docstring. Not built directly."""

    # The update rule (its states, flags, row values, op).
    _rule: UpdateRule
    # GradScaler hands over grad_scale / found_inf and lets the kernel unscale and skip.
    _step_supports_amp_scaling = True
    # The param-group keys torch added over the years, with torch's defaults: a checkpoint (or a
    # pickled optimizer) made before a key existed loads with it, as torch's __setstate__ does.
    _GROUP_DEFAULTS: tuple[tuple[str, Any], ...] = ()
    # The group keys whose values the constructor's checks read (add_param_group checks them too).
    _CHECKED_KEYS: tuple[str, ...] = ()

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        foreach: bool | None,
        capturable: bool,
        differentiable: bool,
        fused: bool | None,
        schedule: Schedule | None,
        check_finite: bool,
    ):
        check_implementation_flags(
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            owner=type(self).__name__,
        )
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be an lrfused.schedules.Schedule, got {type(schedule).__name__}")
        if schedule is not None:
            # Checked once, here: the CUDA op trusts the structure of its program.
            _ops.validate_schedule(torch.tensor(schedule.encode(), dtype=torch.float64))
        self._schedule = schedule
        self._check_finite = bool(check_finite)
        # Steps skipped by check_finite, counted on the device (reading it is a sync).
        self.skipped_steps: Tensor | None = None
        # Updates skipped because the schedule gave an unusable value, per device (invalid_steps).
        self._invalid_steps: dict[torch.device, Tensor] = {}
        self._binding: Binding | None = None
        # Every cache of the step (plans, calls, tables, rows), with one invalidate().
        self._planner = StepPlanner(self._rule)
        self._warned_scheduled_twice = False
        super().__init__(params, defaults)
        # Made now, outside any compiled region, so that torch.compile traces a step that only reads it.
        self._binding_now()

    # --- what a subclass checks ------------------------------------------------------------------

    def _validate_group_values(self, values: dict[str, Any]) -> None:
        """The constructor's checks of the hyperparameters in ``values`` (every _CHECKED_KEYS key)."""
        raise NotImplementedError

    def _check_step_hyperparameters(self, index: int, group: dict[str, Any]) -> None:
        """A group's hyperparameters as a step checks them, naming the group."""
        raise NotImplementedError

    # --- param groups and state --------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        # Made a list first, as torch does: a generator (``model.layer.parameters()``) is read once.
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the ordering "
                "of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            param_group["params"] = list(params)
        if any(key in param_group for key in self._CHECKED_KEYS):
            self._validate_group_values({key: param_group.get(key, self.defaults[key]) for key in self._CHECKED_KEYS})
        for index, p in enumerate(param_group["params"]):
            if isinstance(p, Tensor):
                check_param(p, f"param_groups[{len(self.param_groups)}]['params'][{index}]", type(self).__name__)
        super().add_param_group(param_group)
        if "_planner" in self.__dict__:  # (torch's constructor adds the first groups before __init__ made it)
            self.invalidate_plans()

    # Kept through deepcopy and pickle (torch.optim.Optimizer keeps only defaults, state and groups).
    _PICKLED = ("_schedule", "_check_finite", "skipped_steps", "_invalid_steps", "_binding", "_warned_scheduled_twice")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in self._PICKLED:
            if key in self.__dict__:
                state[key] = self.__dict__[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in self._GROUP_DEFAULTS:
                group.setdefault(key, default)
        for key, default in (
            ("_schedule", None),
            ("_check_finite", False),
            ("skipped_steps", None),
            ("_invalid_steps", {}),
            ("_binding", None),
            ("_warned_scheduled_twice", False),
        ):
            self.__dict__.setdefault(key, default)
        # Plans hold views of the tensors they were made from: rebuilt at the next step.
        self._planner = StepPlanner(self._rule)

    def invalidate_plans(self) -> None:
        """Drops every plan, op call, table and bucket row made for the groups and state as they
        were: the next step makes them again. The optimizer calls it whenever it changes its groups
        or state (``add_param_group``, ``load_state_dict``); code that replaces a state tensor or a
        param of ``param_groups`` in place of the optimizer calls it too. The binding stays: its
        next absorb follows whatever the groups now hold."""
        self._planner.invalidate()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # One step tensor per param, on the CPU, as torch.optim.Adam keeps it (int64, not its
        # float32, so that counts past 2**24 survive): torch's optimizers increment each param's
        # step in place, so the counters that params share here must not stay shared there.
        # An entry that is not a param's dict of tensors (a framework or a hook writing
        # ``optimizer.state["key"] = 1``) is returned as it is, as torch returns it.
        state["state"] = {
            index: {
                key: value.detach().to("cpu", copy=True) if key == "step" and isinstance(value, Tensor) else value
                for key, value in param_state.items()
            }
            if isinstance(param_state, dict)
            else param_state
            for index, param_state in state["state"].items()
        }
        extra: dict[str, Any] = {}
        if not self._rule.counter_in_state:
            # torch's state for this rule has no "step": the counts move to lrfused's own key, and a
            # param left with no state at all (SGD without momentum) is left out, as torch leaves it.
            extra["steps"] = {}
            kept = {}
            for index, param_state in state["state"].items():
                if isinstance(param_state, dict) and "step" in param_state:
                    param_state = dict(param_state)
                    extra["steps"][index] = int(param_state.pop("step"))
                    if not param_state:
                        continue
                kept[index] = param_state
            state["state"] = kept
        if self._schedule is not None:
            extra["schedule"] = self._schedule.encode()
        if extra:
            state["lrfused"] = extra
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("lrfused", {}).get("schedule")
        if saved is not None and self._schedule is not None and int(saved[0]) != self._schedule.kind:
            raise ValueError(
                f"load_state_dict: the checkpoint's schedule is a {_kind_name(int(saved[0]))}"
                f" but this optimizer's is {type(self._schedule).__name__}"
            )
        for group in state_dict["param_groups"]:
            self._validate_group_values({key: group[key] for key in self._CHECKED_KEYS if key in group})
        # Saved ids map to params in order, as torch.optim.Optimizer maps them (ids may be ints or,
        # through torch.distributed.checkpoint, parameter names).
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        id_map = dict(zip(saved_ids, params))
        for key, param_state in state_dict["state"].items():
            expected = id_map.get(key)
            if expected is None:
                continue
            if not isinstance(param_state, dict):
                continue
            if self._rule.counter_in_state:
                check_loaded_step(key, param_state)
            for name in self._rule.all_states:
                value = param_state.get(name)
                if name in self._rule.states and value is None:
                    raise ValueError(f"load_state_dict: state[{key!r}] has no {name!r} (keys: {sorted(param_state)})")
                if isinstance(value, Tensor) and value.shape != expected.shape:
                    raise ValueError(
                        f"load_state_dict: state[{key!r}]['{name}'] has shape {tuple(value.shape)} but its param "
                        f"has shape {tuple(expected.shape)}"
                    )
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "lrfused"})
        if not self._rule.counter_in_state:
            self._restore_counters(saved_ids, state_dict.get("lrfused", {}).get("steps", {}))
        self._share_loaded_steps()
        self.invalidate_plans()

    def _restore_counters(self, saved_ids: list, steps: dict) -> None:
        # A rule whose torch state has no "step" (SGD): the counts saved under "lrfused", else (a
        # checkpoint of torch's) 1 for a param whose momentum buffer exists, so that its next step
        # continues the buffer instead of starting it from the grad.
        params = [p for group in self.param_groups for p in group["params"]]
        for key, p in zip(saved_ids, params):
            param_state = self.state.get(p)
            count = steps.get(key)
            if count is None and param_state:
                count = 1 if any(name in param_state for name in self._rule.all_states) else None
            if count is not None:
                self.state[p]["step"] = torch.tensor(int(count), dtype=torch.int64, device=p.device)

    def _share_loaded_steps(self) -> None:
        # torch keeps one float32 step per param; here params of a group that stepped together share
        # one int64 counter so that they update in one call. Loading is not a hot path: the values
        # are read on the host to regroup.
        for group in self.param_groups:
            shared: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}
            for p in group["params"]:
                state = self.state.get(p)
                if not state or "step" not in state:
                    continue
                value = int(state["step"].item()) if isinstance(state["step"], Tensor) else int(state["step"])
                key = (p.device, p.dtype, value)
                if key not in shared:
                    shared[key] = torch.tensor(value, dtype=torch.int64, device=p.device)
                state["step"] = shared[key]

    # --- the binding (note [The binding] in _binding.py) ----------------------------------------

    def _binding_now(self) -> Binding:
        """The words the kernel reads for each group's lr, made at the first use and grown with
        ``add_param_group``."""
        binding = self._binding
        if binding is None:
            binding = self._binding = Binding(
                self.param_groups, self._schedule, self._first_device(), self._rule.momentum_key
            )
        elif binding.group_count != len(self.param_groups):
            binding.grow(self.param_groups)
        return binding

    def _first_device(self) -> torch.device:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")

    # --- the step ------------------------------------------------------------------------------

    @staticmethod
    def profile_hook_step(func):
        """The wrapper torch's ``Optimizer.__init__`` puts around ``step()`` (``_patch_step_function``):
        torch's, in the same order (global and own pre-hooks, which may replace the arguments; the
        step; ``_optimizer_step_code`` for the profiler; own and global post-hooks), under the same
        profiler label ``Optimizer.step#<class>.step``. The label is recorded in C++: torch's
        ``record_function`` makes two dispatcher calls and costs ~5 µs of host time a step, as much
        as the rest of a steady step."""

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            optimizer = args[0]
            with _torch_compat.record_function(f"Optimizer.step#{type(optimizer).__name__}.step"):
                for hook in _torch_compat.optimizer_step_pre_hooks(optimizer):
                    result = hook(optimizer, args, kwargs)
                    if result is not None:
                        if isinstance(result, tuple) and len(result) == 2:
                            args, kwargs = result
                        else:
                            raise RuntimeError(
                                f"{func} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                            )
                out = func(*args, **kwargs)
                _torch_compat.optimizer_step_code(optimizer)
                for hook in _torch_compat.optimizer_step_post_hooks(optimizer):
                    hook(optimizer, args, kwargs)
                return out

        return wrapper

    def step(self, closure=None):
        """Performs one optimization step: one op (one kernel launch) per device for every group and
        dtype, which also applies the scheduler steps deferred to it (note [One op per step])."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            with torch.no_grad():
                self._step(compiling=True)
            return loss
        # Grad mode off around the op, as torch.no_grad() would, switched in one C call each way (the
        # context manager costs ~2 µs of host time a step).
        grad_was_enabled = torch.is_grad_enabled()
        _torch_compat.set_grad_enabled(False)
        try:
            self._step(compiling=False)
        except BaseException:
            if self._binding is not None:
                self._binding.drop_queued_writes()  # the op that would have carried them did not run
            raise
        finally:
            _torch_compat.set_grad_enabled(grad_was_enabled)
        return loss

    def _step(self, compiling: bool) -> None:
        binding = self._binding_now()
        if not (binding.driven and compiling):
            # Host writes of group["lr"] (last writer wins). Under torch.compile with a scheduler
            # driving the words, the comparison would make each lr a guard and each step a
            # recompilation: the scheduler's own step absorbs them instead. Without one, a compiled
            # step writes each float lr as it is (nanoGPT's hand write every step compiles once).
            binding.absorb(self.param_groups, compiling=compiling, queue=not compiling)
            if self._schedule is not None:
                self._warn_if_scheduled_twice()
        self._planner.run(
            self.param_groups,
            self.state,
            binding,
            compiling=compiling,
            grad_scale=getattr(self, "grad_scale", None),
            found_inf=getattr(self, "found_inf", None),
            invalid_counter=self._invalid_counter,
            check_hyperparameters=self._check_step_hyperparameters,
            non_finite=self._non_finite_grads if self._check_finite else None,
        )

    def _invalid_counter(self, device: torch.device) -> Tensor:
        counter = self._invalid_steps.get(device)
        if counter is None:
            counter = self._invalid_steps[device] = torch.zeros((), dtype=torch.int64, device=device)
        return counter

    def _warn_if_scheduled_twice(self) -> None:
        # Every torch-style scheduler (a stock torch class, a framework's: Hugging Face Trainer's
        # default linear schedule, Lightning's) marks the groups it drives with "initial_lr".
        # With schedule= the kernel multiplies that scheduler's lr by the schedule: say so, once.
        if self._warned_scheduled_twice:
            return
        for index, group in enumerate(self.param_groups):
            if "initial_lr" in group:
                self._warned_scheduled_twice = True
                warnings.warn(
                    f"param_groups[{index}] is driven by an lr scheduler (it has 'initial_lr') while this optimizer "
                    f"was built with schedule={self._schedule!r}: the lr the kernel applies is group['lr'] * "
                    "schedule(t), the product of both. Use one of them (for a framework that always builds a "
                    "scheduler, pick its constant schedule, or drop schedule=).",
                    UserWarning,
                    stacklevel=3,
                )
                return

    def scheduled_lr(self, index: int = 0) -> float:
        """With ``schedule=``: the lr that the next step of group ``index`` applies,
        ``group["lr"] * schedule(t)`` with ``t`` the group's step count (read from the device: a sync).
        Without ``schedule=``: ``group["lr"]``."""
        group = self.param_groups[index]
        if self._schedule is None:
            return group["lr"]
        steps = [self.state[p]["step"] for p in group["params"] if p in self.state and "step" in self.state[p]]
        t = int(steps[0].item()) if steps else 0
        return float(group["lr"]) * self._schedule(t)

    @property
    def invalid_steps(self) -> Tensor:
        """How many updates were skipped because the schedule gave an lr that is not finite or a
        beta1 whose bias correction ``1 - beta1^t`` has no finite, non-zero value (note [Unusable
        schedule values]): an int64 tensor on the first param's device, counting one per param
        group, device and dtype skipped. The kernels cannot raise there without a host sync, so
        the CPU and CUDA kernels both skip such an update (params, states and step counters stay
        as they were) and count it here; reading it as a number is a sync."""
        device = self._first_device()
        total = torch.zeros((), dtype=torch.int64, device=device)
        for counter in self._invalid_steps.values():
            total += counter.to(device)
        return total

    def _non_finite_grads(self, all_grads, found_inf: Tensor | None, grad_scale: Tensor | None) -> Tensor:
        """found_inf (float32, 1 element) that is non-zero when any grad is NaN or infinite."""
        by_device: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for grads in all_grads:
            for g in grads:
                if g is not None:
                    g = torch.view_as_real(g) if g.is_complex() else g
                    by_device.setdefault((g.device, g.dtype), []).append(g)
        device = self._first_device()
        found = torch.zeros(1, dtype=torch.float32, device=device)
        one = torch.ones(1, dtype=torch.float32, device=device)
        for (grad_device, _), grads in by_device.items():
            local = found if grad_device == device else torch.zeros(1, dtype=torch.float32, device=grad_device)
            # The AMP check, with a scale of one: grads multiplied by 1.0 keep their values.
            _torch_compat.non_finite_check_and_unscale_(grads, local, one.to(grad_device))
            if local is not found:
                found.add_(local.to(device, non_blocking=True))
        if self.skipped_steps is None:
            self.skipped_steps = torch.zeros((), dtype=torch.int64, device=device)
        if found_inf is not None:
            found.add_(found_inf.to(device, non_blocking=True).reshape(1))
        self.skipped_steps.add_((found > 0).reshape(()).to(torch.int64))
        return found


def binding_of(optimizer: FusedScheduledOptimizer, user: str | None = None) -> Binding:
    """The binding of ``optimizer``'s lrs (note [The binding] in _binding.py): the package's one
    way to it (the schedulers, the finder). ``user`` names a scheduler (or the finder) that would
    drive the lrs: refused when the optimizer was built with ``schedule=``."""
    if user is not None and optimizer._schedule is not None:
        raise ValueError(
            f"{user}: this optimizer was built with schedule={optimizer._schedule!r}, which already sets the lr the "
            "kernel applies at every step; use either schedule= or a scheduler, not both"
        )
    return optimizer._binding_now()


def _kind_name(kind: int) -> str:
    from ._schedule_encoding import NODE_CLASSES

    return NODE_CLASSES[kind].__name__ if kind in NODE_CLASSES else f"kind {kind}"
