"""FusedScheduledAdam and FusedScheduledAdamW: torch.optim optimizers whose learning-rate schedule
runs inside the update kernel."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _ops, _step_plan, _torch_compat
from ._reference import KERNEL_DTYPES
from ._binding import Binding
from ._step_plan import Bucket, DeviceStep, GroupPlan
from .schedules import Schedule

__all__ = ["FusedScheduledAdam", "FusedScheduledAdamW"]


def _check_number(name: str, value: Any, tensor_name: str | None = None) -> float:
    """A finite real number; ``tensor_name`` is what torch calls it when it is a tensor."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {tensor_name or name} must be 1-element, got {value.numel()} elements")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"Tensor {name} must hold a real number, got dtype {value.dtype}")
        # Read once, where torch reads it (construction, add_param_group, load_state_dict): a sync
        # for a GPU tensor, never made by a step. A value written into it later is read on the device.
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value}")
    return float(value)


def validate_hyperparameters(lr, betas, eps, weight_decay) -> None:
    """torch.optim.Adam's checks, plus NaN and inf; the message names the argument and value."""
    lr_value = _check_number("learning rate", lr, "lr")
    if lr_value < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair of floats)")
    for index, beta in enumerate(betas):
        value = _check_number(f"beta parameter at index {index}", beta, f"betas[{index}]")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if _check_number("epsilon value", eps) < 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if _check_number("weight_decay value", weight_decay) < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


class FusedScheduledAdam(Optimizer):
    r"""Adam and AdamW whose learning-rate schedule is evaluated inside the update kernel.

    The update is torch.optim.Adam's (``decoupled_weight_decay=True`` gives AdamW):

    .. math::
        \begin{aligned}
        &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \;(\times -1 \text{ if maximize})\\
        &\text{Adam: } g_t \leftarrow g_t + \lambda\theta_{t-1} \qquad
         \text{AdamW: } \theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma_t\lambda)\\
        &m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
         v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \qquad
         (\text{AMSGrad: } \hat v_t \leftarrow \max(\hat v_{t-1}, v_t))\\
        &\theta_t \leftarrow \theta_{t-1} - \frac{\gamma_t}{1-\beta_1^t}\,
         \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}
        \end{aligned}

    where the learning rate :math:`\gamma_t` (and :math:`\beta_1` for cycling schedules) comes
    from the schedule, evaluated in float64 in the kernel from a clock on the device:

    * no schedule: :math:`\gamma_t` is ``group["lr"]`` (a float, or a 1-element tensor, read on
      the device); changing it between steps works as in torch;
    * ``schedule=s`` (see :mod:`lrfused.schedules`): :math:`\gamma_t = \text{lr} \cdot s(t)`
      with :math:`t` the optimizer's own step count before this step. No scheduler object and no
      per-step Python work; an AMP-skipped step pauses the schedule too;
    * a scheduler of :mod:`lrfused.lr_scheduler` (same classes and arguments as
      ``torch.optim.lr_scheduler``): its ``step()`` advances a device clock.

    Args:
        params: parameters or param groups, as for any torch optimizer. Float32, float16,
            bfloat16, float64 or complex (viewed as real, as torch does) dense tensors; the math is
            torch's opmath: float64 for float64 (and complex128) params, float32 for the others.
        lr: learning rate (default: 1e-3).
        betas: coefficients of the running averages of the gradient and its square (floats, or
            1-element tensors, read once at construction).
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty (Adam) or decoupled decay (AdamW).
        amsgrad: use the maximum of past squared-gradient averages (torch's 6th positional argument).
        foreach, fused, capturable: torch's implementation switches, accepted and kept in the param
            groups so that checkpoints move to and from torch unchanged. lrfused has one
            implementation: always fused (one kernel per device and dtype) and always capturable
            (step counters, lr and schedule on the device, no host sync).
        differentiable: ``True`` is refused (the update is an in-place kernel autograd does not
            trace through).
        maximize: maximize the objective instead of minimizing it.
        decoupled_weight_decay: AdamW's decay.
        schedule: a :class:`lrfused.schedules.Schedule` multiplying each group's lr at the
            optimizer's own step count. ``group["lr"]`` is then the base lr that the schedule
            multiplies (a write to it changes that base), and the lr the kernel applies at step
            ``t`` is ``group["lr"] * schedule(t)`` (:meth:`scheduled_lr`). A torch-compatible
            lrfused scheduler cannot be attached as well (it raises).
        check_finite: skip, on the device and without a sync, every step in which a gradient
            holds a NaN or an infinity (nothing changes, step counters included), and count the
            skipped steps in the device tensor ``skipped_steps``. Off by default: like
            torch.optim.Adam, lrfused then applies non-finite gradients as they are (and a
            GradScaler, when used, already skips them).

    The state keeps torch's keys (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``);
    ``step`` is an int64 tensor on the param's device that the kernel advances (float32 counters
    stop at 2**24). Checkpoints load with ``torch.load(weights_only=True)`` and move both ways
    between lrfused and ``torch.optim.Adam/AdamW``.
    """

    # GradScaler hands over grad_scale / found_inf and lets the kernel unscale and skip.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        schedule: Schedule | None = None,
        check_finite: bool = False,
    ):
        validate_hyperparameters(lr, betas, eps, weight_decay)
        _check_implementation_flags(foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused)
        betas = _float_betas(betas)
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be an lrfused.schedules.Schedule, got {type(schedule).__name__}")
        if schedule is not None and _has_open_table(schedule):
            raise ValueError(
                "schedule= with a tabulated function needs horizon= (the optimizer's clock pauses on AMP "
                "overflow without the host knowing, so it cannot upload blocks ahead of it); got "
                f"{schedule!r}")
        if schedule is not None:
            # Checked once, here: the CUDA op trusts the structure of its program.
            _ops.validate_schedule(torch.tensor(schedule.encode(), dtype=torch.float64))
        # The implementation flags are kept as given, in torch's keys, so that a checkpoint moves
        # between lrfused and torch.optim.Adam/AdamW unchanged; lrfused's kernel is always the same.
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        fused=fused, decoupled_weight_decay=decoupled_weight_decay)
        self._schedule = schedule
        self._check_finite = bool(check_finite)
        # Steps skipped by check_finite, counted on the device (reading it is a sync).
        self.skipped_steps: Tensor | None = None
        # Updates skipped because the schedule gave an unusable value, per device (invalid_steps).
        self._invalid_steps: dict[torch.device, Tensor] = {}
        self._binding: Binding | None = None
        self._plans: dict[int, GroupPlan] = {}
        # The op calls of a step, assembled from the plans (None: assembled at the next step), and
        # the per-group values their bucket rows were made from.
        self._calls: list[DeviceStep] | None = None
        self._rows_made_from: list[tuple] | None = None
        # Per group, the (betas, eps, weight_decay) last checked by a step.
        self._checked_hyperparameters: dict[int, tuple] = {}
        super().__init__(params, defaults)
        # Made now, outside any compiled region, so that torch.compile traces a step that only reads it.
        self._binding_now()

    # --- param groups and state --------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        # Made a list first, as torch does: a generator (``model.layer.parameters()``) is read once.
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering "
                            "of tensors in sets will change between runs. Please use a list instead.")
        else:
            param_group["params"] = list(params)
        if any(key in param_group for key in ("lr", "betas", "eps", "weight_decay")):
            validate_hyperparameters(
                param_group.get("lr", self.defaults["lr"]), param_group.get("betas", self.defaults["betas"]),
                param_group.get("eps", self.defaults["eps"]),
                param_group.get("weight_decay", self.defaults["weight_decay"]))
        for index, p in enumerate(param_group["params"]):
            if isinstance(p, Tensor):
                _check_param(p, f"param_groups[{len(self.param_groups)}]['params'][{index}]")
        super().add_param_group(param_group)
        self._invalidate()

    # Kept through deepcopy and pickle (torch.optim.Optimizer keeps only defaults, state and groups).
    _PICKLED = ("_schedule", "_check_finite", "skipped_steps", "_invalid_steps", "_binding")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in self._PICKLED:
            if key in self.__dict__:
                state[key] = self.__dict__[key]
        return state

    # The param-group keys torch added over the years, with torch.optim.Adam's defaults: a checkpoint
    # (or a pickled optimizer) made before a key existed loads with it, as torch's __setstate__ does.
    _GROUP_DEFAULTS = (("amsgrad", False), ("maximize", False), ("foreach", None), ("capturable", False),
                       ("differentiable", False), ("decoupled_weight_decay", False), ("fused", None))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in self._GROUP_DEFAULTS:
                group.setdefault(key, default)
        for key, default in (("_schedule", None), ("_check_finite", False), ("skipped_steps", None),
                             ("_invalid_steps", {}), ("_binding", None)):
            self.__dict__.setdefault(key, default)
        # Plans hold views of the tensors they were made from: rebuilt at the next step.
        self._plans = {}
        self._calls = None
        self._rows_made_from = None
        self._checked_hyperparameters = {}
        if self._binding is not None:
            self._binding.views = {}

    def _invalidate(self) -> None:
        # The binding stays: its next absorb follows whatever the groups now hold.
        self._plans = {}
        self._calls = None
        self._rows_made_from = None
        self._checked_hyperparameters = {}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # One step tensor per param, on the CPU, as torch.optim.Adam keeps it (int64, not its
        # float32, so that counts past 2**24 survive): torch's optimizers increment each param's
        # step in place, so the counters that params share here must not stay shared there.
        # An entry that is not a param's dict of tensors (a framework or a hook writing
        # ``optimizer.state["key"] = 1``) is returned as it is, as torch returns it.
        state["state"] = {
            index: {key: value.detach().to("cpu", copy=True) if key == "step" and isinstance(value, Tensor) else value
                    for key, value in param_state.items()} if isinstance(param_state, dict) else param_state
            for index, param_state in state["state"].items()
        }
        if self._schedule is not None:
            state["lrfused"] = {"schedule": self._schedule.encode()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("lrfused", {}).get("schedule")
        if saved is not None and self._schedule is not None and int(saved[0]) != self._schedule.kind:
            raise ValueError(
                f"load_state_dict: the checkpoint's schedule is a {_kind_name(int(saved[0]))}"
                f" but this optimizer's is {type(self._schedule).__name__}")
        for group in state_dict["param_groups"]:
            validate_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        # Saved ids map to params in order, as torch.optim.Optimizer maps them (ids may be ints or,
        # through torch.distributed.checkpoint, parameter names).
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        id_map = dict(zip(saved_ids, params))
        for key, param_state in state_dict["state"].items():
            expected = id_map.get(key)
            if expected is None:
                continue
            _check_loaded_step(key, param_state)
            for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                value = param_state.get(name)
                if name != "max_exp_avg_sq" and value is None:
                    raise ValueError(f"load_state_dict: state[{key!r}] has no {name!r} (keys: {sorted(param_state)})")
                if isinstance(value, Tensor) and value.shape != expected.shape:
                    raise ValueError(
                        f"load_state_dict: state[{key!r}]['{name}'] has shape {tuple(value.shape)} but its param "
                        f"has shape {tuple(expected.shape)}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "lrfused"})
        self._share_loaded_steps()
        self._invalidate()

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

    def _init_state(self, p: Tensor, step: Tensor, amsgrad: bool) -> None:
        state = self.state[p]
        state["step"] = step
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _check_group(self, index: int, group: dict[str, Any], grads: list[Tensor | None]) -> None:
        """What a new plan needs, checked for every group before any state is made or any param
        written: a step that raises changes nothing."""
        for i, (p, g) in enumerate(zip(group["params"], grads)):
            if g is None:
                continue
            where = f"param_groups[{index}]['params'][{i}]"
            _check_param(p, where)
            if g.is_sparse:
                raise RuntimeError(f"FusedScheduledAdam does not support sparse gradients ({where})")
            state = self.state.get(p)
            if state and "step" in state:
                for name in ("exp_avg", "exp_avg_sq"):
                    if name not in state:
                        raise KeyError(f"the optimizer state of {where} has a 'step' but no {name!r}")

    def _make_plan(self, group: dict[str, Any], grads: list[Tensor | None]) -> GroupPlan:
        params = group["params"]
        amsgrad = group["amsgrad"]
        stepping = [i for i, g in enumerate(grads) if g is not None]
        occurrences: dict[int, int] = {}
        for i in stepping:
            occurrences[id(params[i])] = occurrences.get(id(params[i]), 0) + 1
        fresh_steps: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        for i in stepping:
            p = params[i]
            state = self.state[p]
            if "step" not in state:
                key = (p.device, p.dtype)
                if key not in fresh_steps:
                    fresh_steps[key] = torch.zeros((), dtype=torch.int64, device=p.device)
                self._init_state(p, fresh_steps[key], amsgrad)
            elif amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            _match_param_layout(p, state)
        # note [One increment per op call]
        # The op advances its step counter once per call, so a counter may be shared only by the
        # params of one call. Params of one device and dtype that stepped together share one; a
        # counter that is also held by params without a grad (torch skips those, step included),
        # by params of another dtype, or by a param listed twice is split. A param listed k times
        # gets a counter of its own and k successive calls, one per listing: the update and the
        # step count of torch's for-loop Adam, which steps each listing in turn.
        unique = list({id(params[i]): params[i] for i in stepping}.values())
        holders: dict[int, int] = {}
        for p in {id(p): p for p in params}.values():
            state = self.state.get(p)
            if state and "step" in state:
                holders[id(state["step"])] = holders.get(id(state["step"]), 0) + 1
        sharing: dict[tuple, list[Tensor]] = {}
        for p in unique:
            state = self.state[p]
            key = ("alone", id(p)) if occurrences[id(p)] > 1 else (p.device, p.dtype, id(state["step"]))
            sharing.setdefault(key, []).append(p)
        for members in sharing.values():
            counter = self.state[members[0]]["step"]
            if holders.get(id(counter), 0) != len(members):
                own = counter.clone()
                holders[id(own)] = len(members)
                holders[id(counter)] -= len(members)
                for p in members:
                    self.state[p]["step"] = own
        plan = GroupPlan(tuple(g is not None for g in grads))
        local = _local_tensor
        by_key: dict[tuple, _Bucket] = {}
        seen: dict[int, int] = {}
        for i in stepping:
            p = params[i]
            listing = seen.get(id(p), 0)
            seen[id(p)] = listing + 1
            state = self.state[p]
            real = (lambda x: torch.view_as_real(local(x))) if p.is_complex() else local
            key = (listing, p.device, p.dtype, id(state["step"]))
            if key not in by_key:
                by_key[key] = Bucket([], [], [], [], [], state["step"], [], listing)
            bucket = by_key[key]
            bucket.indices.append(i)
            bucket.params.append(real(p))
            bucket.exp_avgs.append(real(state["exp_avg"]))
            bucket.exp_avg_sqs.append(real(state["exp_avg_sq"]))
            if amsgrad:
                bucket.max_exp_avg_sqs.append(real(state["max_exp_avg_sq"]))
            bucket.complex_.append(p.is_complex())
        plan.buckets = list(by_key.values())
        return plan

    # --- the binding (note [The binding] in _binding.py) ----------------------------------------

    def _binding_now(self) -> Binding:
        """The words the kernel reads for each group's lr, made at the first use and grown with
        ``add_param_group``."""
        binding = self._binding
        if binding is None:
            binding = self._binding = Binding(self.param_groups, self._schedule, self._first_device())
        elif binding.group_count != len(self.param_groups):
            binding.grow(self.param_groups)
        return binding

    def _scheduler_binding(self, scheduler_name: str) -> Binding:
        """The binding a torch-compatible scheduler steps (refused with ``schedule=``)."""
        if self._schedule is not None:
            raise ValueError(
                f"{scheduler_name}: this optimizer was built with schedule={self._schedule!r}, which already "
                "sets the lr the kernel applies at every step; use either schedule= or a scheduler, not both")
        return self._binding_now()

    def _first_device(self) -> torch.device:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")

    # --- the step ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step: one op (one kernel launch) per device for every group and
        dtype, which also applies the scheduler steps deferred to it (note [One op per step])."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        binding = self._binding_now()
        compiling = torch.compiler.is_compiling()
        if not (binding.driven and compiling):
            # Host writes of group["lr"] (last writer wins). Under torch.compile with a scheduler
            # driving the words, the comparison would make each lr a guard and each step a
            # recompilation: the scheduler's own step absorbs them instead. Without one, a compiled
            # step writes each float lr as it is (nanoGPT's hand write every step compiles once).
            binding.absorb(self.param_groups, compiling=compiling)
            if self._schedule is not None:
                self._warn_if_scheduled_twice()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        # A group whose amsgrad (or another flag the kernels are chosen by) changed needs states
        # and buckets made again, as torch makes max_exp_avg_sq at the first AMSGrad step.
        flags = [_step_plan.flags_of(group) for group in self.param_groups]
        if flags != self.__dict__.get("_planned_flags"):
            self._invalidate()
            self._planned_flags = flags
        # Everything the step checks is checked for every group before the first write. (Not in a
        # compiled step: each value compared would become a guard and each new lr or beta1 a
        # recompilation; the op still checks its own arguments.)
        if not compiling:
            self._check_hyperparameters()
        # The eager step of one device reads its grads through its table, which also notices when
        # they no longer fit the plan; any other step reads them here and checks the plan.
        calls = self._calls
        call = None if compiling else _table_call(calls, binding)
        all_grads = None
        if call is None or self._check_finite:
            all_grads = [[p.grad for p in group["params"]] for group in self.param_groups]
            calls = self._plan_calls(all_grads)
            if len(calls) == 1 and calls[0].table_wanted and not compiling:
                self._set_table(calls[0], calls)
            call = None if compiling else _table_call(calls, binding)
        self._refresh_rows(calls, binding, flags)
        if self._check_finite:
            found_inf = self._non_finite_grads(all_grads, found_inf, grad_scale)
        if call is not None:
            clocks, rules, applied, pending = binding.deferred()
            if _ops.table_step_(call.table, call.rows, call.steps, binding.buffers[call.device], clocks, rules, applied,
                                pending, grad_scale=_on(grad_scale, call.device), found_inf=_on(found_inf, call.device),
                                invalid_steps=self._invalid_counter(call.device)):
                binding.deferred_done()
                return loss
            # The grads no longer match the table (note [Step tables]): a new plan, checked, and the
            # list path, whose checks raise for a grad that does not fit its param.
            all_grads = [[p.grad for p in group["params"]] for group in self.param_groups]
            calls = self._plan_calls(all_grads)
            self._refresh_rows(calls, binding, flags)
        if all_grads is None:
            all_grads = [[p.grad for p in group["params"]] for group in self.param_groups]
        self._list_steps(calls, all_grads, binding, grad_scale, found_inf)
        return loss

    def _list_steps(self, calls: list[DeviceStep], all_grads, binding: Binding, grad_scale, found_inf) -> None:
        """The calls of a step with the grads listed here: a compiled step, several devices, DTensor
        params, a param listed twice, a step just planned again."""
        if len(calls) != 1 or calls[0].device != binding.primary:
            # No call, several devices or listings: the deferred steps are applied first and the
            # words copied to every device, then one call each.
            binding.flush()
            devices = {call.device for call in calls}
            if devices - {binding.primary}:
                binding.mirror_to(devices)
        for call in calls:
            device = call.device
            if device == binding.primary:
                clocks, rules, applied, pending = binding.deferred()
            else:
                clocks, rules, (applied, pending) = [], [], self._no_deferred(device)
            self._list_step(call, all_grads, binding.buffers[device], clocks, rules, applied, pending,
                            _on(grad_scale, device), _on(found_inf, device))
            if device == binding.primary:
                binding.deferred_done()

    def _list_step(self, call: DeviceStep, all_grads, words, clocks, rules, applied, pending, grad_scale, found_inf):
        grads = [torch.view_as_real(_local_tensor(all_grads[g][i])) if c else _local_tensor(all_grads[g][i])
                 for (g, i), c in zip(call.grad_of, call.complex_)]
        _ops.adam_step_(call.params, grads, call.exp_avgs, call.exp_avg_sqs, call.max_exp_avg_sqs, call.steps,
                        call.rows, words, clocks, rules, applied, pending, grad_scale=grad_scale,
                        found_inf=found_inf, invalid_steps=self._invalid_counter(call.device), handle=call.handle)

    def _no_deferred(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The `applied` and `pending` arguments of a call that carries no deferred step."""
        spare = self.__dict__.setdefault("_spare_counters", {})
        if device not in spare:
            spare[device] = (torch.zeros((), dtype=torch.int64, device=device), torch.zeros(1, dtype=torch.int64))
        return spare[device]

    def _plan_calls(self, all_grads) -> list[DeviceStep]:
        """The op calls for the grads of this step: each group's plan is made again when its params
        with a grad changed, and the calls are assembled again when any plan changed."""
        stale = []
        for index, (group, grads) in enumerate(zip(self.param_groups, all_grads)):
            plan = self._plans.get(index)
            if plan is None or plan.has_grad != tuple(g is not None for g in grads):
                self._check_group(index, group, grads)
                stale.append(index)
        if not stale and self._calls is not None:
            return self._calls
        for index in stale:
            self._plans[index] = self._make_plan(self.param_groups[index], all_grads[index])
        plans = [self._plans[index] for index in range(len(self.param_groups))]
        calls = _step_plan.assemble(plans, _ops.new_handle)
        self._calls = calls
        self._rows_made_from = None
        return calls

    def _set_table(self, call: DeviceStep, calls: list[DeviceStep]) -> None:
        """Gives the call a table (note [Step tables]) when every grad can be read in C++: not for
        a DTensor's (its local shard is read in Python), a param listed twice in a group, or a step
        of several calls. Made in an eager step (a compiled step takes the list path)."""
        call.table_wanted = False
        if not _ops.has_kernels() or len(calls) != 1:
            return
        plans = [self._plans[index] for index in range(len(self.param_groups))]
        sources = []
        for g, i in call.grad_of:
            p = self.param_groups[g]["params"][i]
            if _local_tensor(p) is not p:
                return
            sources.append(p)
        if any(bucket.listing for bucket in call.buckets):
            return
        watched = [p for group, plan in zip(self.param_groups, plans)
                   for p, has in zip(group["params"], plan.has_grad) if not has and p.device == call.device]
        call.table = _ops.new_handle()
        _ops.set_step_table(call.table, sources, call.params, call.exp_avgs, call.exp_avg_sqs, call.max_exp_avg_sqs,
                            watched)

    def _refresh_rows(self, calls: list[DeviceStep], binding: Binding, flags: list[int]) -> None:
        """The bucket rows, made again when a group's hyperparameters or program changed."""
        values = []
        for index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            # A tensor beta written after construction (a stock scheduler's tensor momentum) is
            # read here: a sync for a GPU tensor, as torch's own step makes.
            beta1 = binding.beta1_for(index, beta1)
            beta1 = float(beta1) if isinstance(beta1, Tensor) else float(beta1)
            beta2 = float(beta2) if isinstance(beta2, Tensor) else float(beta2)
            values.append((beta1, beta2, float(group["eps"]), float(group["weight_decay"]), flags[index]))
        if values == self._rows_made_from and all(call.rows is not None for call in calls):
            return
        programs = [(binding.offsets[i], i if binding.held else -1) for i in range(len(self.param_groups))]
        for call in calls:
            call.rows = _step_plan.bucket_rows(call, values, programs)
        self._rows_made_from = values

    def _check_hyperparameters(self) -> None:
        """The hyperparameters of every group, checked before any op call when they changed (the
        op checks them too, but a bad value in group 2 must not raise after group 1 stepped)."""
        checked = self._checked_hyperparameters
        for index, group in enumerate(self.param_groups):
            current = (group["betas"], group["eps"], group["weight_decay"])
            if index in checked and _same(checked[index], current):
                continue
            betas, eps, weight_decay = current
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise ValueError(f"Invalid betas: {betas!r} in param_groups[{index}] (expected a pair of floats)")
            # torch checks beta1's range only in the constructor: a scheduler may write any momentum
            # (torch's own tests cycle it up to 22) and the step takes torch's arithmetic (note
            # [Unusable schedule values]). It must still be a finite number.
            _check_number("beta parameter at index 0", betas[0])
            validate_hyperparameters(0.0, (0.0, betas[1]), eps, weight_decay)
            checked[index] = current

    def _invalid_counter(self, device: torch.device) -> Tensor:
        counter = self._invalid_steps.get(device)
        if counter is None:
            counter = self._invalid_steps[device] = torch.zeros((), dtype=torch.int64, device=device)
        return counter

    def _warn_if_scheduled_twice(self) -> None:
        # Every torch-style scheduler (a stock torch class, a framework's: Hugging Face Trainer's
        # default linear schedule, Lightning's) marks the groups it drives with "initial_lr".
        # With schedule= the kernel multiplies that scheduler's lr by the schedule: say so, once.
        if getattr(self, "_warned_scheduled_twice", False):
            return
        for index, group in enumerate(self.param_groups):
            if "initial_lr" in group:
                self._warned_scheduled_twice = True
                warnings.warn(
                    f"param_groups[{index}] is driven by an lr scheduler (it has 'initial_lr') while this optimizer "
                    f"was built with schedule={self._schedule!r}: the lr the kernel applies is group['lr'] * "
                    "schedule(t), the product of both. Use one of them (for a framework that always builds a "
                    "scheduler, pick its constant schedule, or drop schedule=).", UserWarning, stacklevel=3)
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


class FusedScheduledAdamW(FusedScheduledAdam):
    """:class:`FusedScheduledAdam` with decoupled weight decay (AdamW), ``weight_decay=1e-2``:
    torch.optim.AdamW's signature."""

    # The signature is written out again, as torch writes AdamW's beside Adam's, so that help(),
    # inspect.signature and IDEs show AdamW's own defaults (weight_decay=1e-2, no
    # decoupled_weight_decay argument).
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        schedule: Schedule | None = None,
        check_finite: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, schedule=schedule, check_finite=check_finite)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # AdamW's decay, whatever a checkpoint says (torch.optim.AdamW does the same).
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


def _check_implementation_flags(*, foreach, capturable, differentiable, fused) -> None:
    """torch's implementation switches: accepted as torch accepts them, with lrfused's meaning."""
    for name, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be None or a bool, got {value!r}")
    for name, value in (("capturable", capturable), ("differentiable", differentiable)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    if differentiable:
        raise ValueError(
            "differentiable=True is not supported by FusedScheduledAdam: its update is an in-place kernel that "
            "autograd does not trace through; use torch.optim.Adam(differentiable=True)")


def _check_param(p: Tensor, where: str) -> None:
    """Refuses, before any state exists, a param the kernels cannot update."""
    if p.is_sparse or p.layout != torch.strided:
        raise ValueError(f"FusedScheduledAdam needs dense parameters, got layout {p.layout} for {where}")
    if p.device.type == "meta":
        # torch.optim.Adam(fused=True) refuses them too; its for-loop Adam "steps" them, shapes only.
        raise RuntimeError(
            f"FusedScheduledAdam cannot update {where}: it is on the meta device, which holds no data. Build the "
            "optimizer after materializing the model (module.to_empty(device=...), then initialize it)")
    if not (p.is_floating_point() or p.is_complex()):
        raise TypeError(f"FusedScheduledAdam needs floating-point parameters, got dtype {p.dtype} for {where}")
    real = p.real.dtype if p.is_complex() else p.dtype
    if real not in KERNEL_DTYPES:
        raise TypeError(
            f"FusedScheduledAdam updates float32, float16, bfloat16 and float64 params (and complex ones of those), "
            f"got dtype {p.dtype} for {where}; use torch.optim.Adam/AdamW for {p.dtype} params")


def _check_loaded_step(key: Any, param_state: dict[str, Any]) -> None:
    """A saved step must be a whole, non-negative count: torch.optim.Adam's float32 step of 3.0
    loads as 3, a 2.5 or a -1 is refused (the bias corrections would be silently wrong)."""
    name = f"load_state_dict: state[{key!r}]['step']"
    if "step" not in param_state:
        raise ValueError(
            f"{name} is missing (keys: {sorted(param_state)}); without it the moments cannot be bias-corrected")
    value = _check_number(name, param_state["step"])
    if not (value >= 0 and value.is_integer()):
        raise ValueError(f"{name} must be a whole number >= 0, got {value}")


def _same(a: tuple, b: tuple) -> bool:
    """Whether two hyperparameter tuples hold the same values (a new tuple of equal floats counts)."""
    return all(x is y or (type(x) is type(y) and x == y) for x, y in zip(a, b))


def _match_param_layout(p: Tensor, state: dict[str, Any]) -> None:
    """States in the param's memory layout: a state loaded from a checkpoint of a model since
    converted (channels_last) is laid out again, as the kernels walk the param's layout."""
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        value = state.get(name)
        if isinstance(value, Tensor) and value.stride() != p.stride():
            laid_out = torch.empty_like(p, dtype=value.dtype)  # p's strides when p is dense
            if laid_out.stride() != value.stride():
                state[name] = laid_out.copy_(value)


def _float_betas(betas) -> tuple[float, float]:
    """Betas as floats: a 1-element tensor beta is read once, here (a sync if it is on a GPU)."""
    return tuple(float(b.item()) if isinstance(b, Tensor) else b for b in betas)


def _table_call(calls: list[DeviceStep] | None, binding: Binding) -> DeviceStep | None:
    """The one call of an eager step that its table serves (note [Step tables]), or None."""
    if calls is None or len(calls) != 1 or calls[0].table is None or calls[0].device != binding.primary:
        return None
    return calls[0]


def _on(tensor: Tensor | None, device: torch.device) -> Tensor | None:
    """An AMP scalar on the device of a call (no sync: a copy queued on the stream)."""
    return None if tensor is None else tensor.to(device, non_blocking=True)


def _local_tensor(tensor: Tensor) -> Tensor:
    """The shard a DTensor (FSDP2) holds on this rank, updated in place; other tensors as they are."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def _has_open_table(schedule: Schedule) -> bool:
    return any(table.horizon is None for _, table in schedule.tables())


def _kind_name(kind: int) -> str:
    from .schedules import NODE_CLASSES

    return NODE_CLASSES[kind].__name__ if kind in NODE_CLASSES else f"kind {kind}"
