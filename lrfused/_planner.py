"""The planner: how an optimizer's param groups become the op calls of a step, and every cache that
makes a steady step cheap, owned in one place with one ``invalidate()``.

What it keeps between steps, each valid until ``invalidate()`` (or until the change named):

* per group, a ``GroupPlan``: its buckets (params sharing a device, a dtype and a step counter,
  with views of their states), made again when the set of params with a grad changes;
* the op calls assembled from the plans (``DeviceStep``), each with its eager table (note [Step
  tables] in csrc/step_table.h) once tried, made again when any plan changes;
* the bucket rows of those calls and the per-group values they were made from, made again when a
  hyperparameter or a program changes;
* the hyperparameters last checked, per group, and the flags the plans were made for;
* per device, the ``applied``/``pending`` pair of a call that carries no deferred step.

The optimizer calls ``invalidate()`` whenever its groups or state change under it
(``add_param_group``, ``load_state_dict``, unpickling); code outside the optimizer calls
``FusedScheduledAdam.invalidate_plans()``. Nothing here holds the optimizer: it is handed the
groups and the state at each call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _ops, _step_plan
from ._binding import Binding
from ._step_plan import ADAM, Bucket, DeviceStep, GroupPlan, UpdateRule
from ._validation import check_param


class StepPlanner:
    """Plans and runs the op calls of an optimizer's steps for one update rule."""

    def __init__(self, rule: UpdateRule = ADAM):
        self.rule = rule
        self._spare_counters: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self.invalidate()

    def invalidate(self) -> None:
        """Drops every plan, call, table and row: the next step makes them again from the groups."""
        self._plans: dict[int, GroupPlan] = {}
        self._calls: list[DeviceStep] | None = None
        self._rows_made_from: list[tuple] | None = None
        self._checked: dict[int, tuple] = {}
        self._planned_flags: list[int] | None = None
        # note [The steady optimizer step]: what the last checks and rows were made from.
        self._steady: tuple | None = None

    @property
    def calls(self) -> list[DeviceStep] | None:
        """The op calls of the last step (None before the first, or after ``invalidate()``)."""
        return self._calls

    # Pickled without its caches (they hold views of the tensors they were made from).
    def __getstate__(self) -> dict[str, Any]:
        return {"rule": self.rule}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["rule"])

    # --- one step ----------------------------------------------------------------------------------

    def run(
        self,
        groups: list[dict[str, Any]],
        state: dict,
        binding: Binding,
        *,
        compiling: bool,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        invalid_counter: Callable[[torch.device], Tensor],
        check_hyperparameters: Callable[[int, dict[str, Any]], None],
        non_finite: Callable[[list[list[Tensor | None]], Tensor | None, Tensor | None], Tensor] | None,
    ) -> None:
        """One step: the op call of each device for every group and dtype (note [One op per step]).

        ``check_hyperparameters(index, group)`` raises for a bad value (called when a group's values
        changed, never in a compiled step); ``non_finite(grads, found_inf, grad_scale)`` is
        check_finite's device check, which returns the found_inf the ops take."""
        # note [The steady optimizer step]
        # An eager step whose groups hold the very objects the last checks and rows were made from
        # (the same floats, the same betas tuple, the same flags, the same beta1 the binding holds)
        # skips comparing their values, checking them and making rows: a handful of identity
        # comparisons per group. Anything else (a new value, a tensor hyperparameter, whose value
        # may change in place, a compiled step) takes the full path below.
        steady = not compiling and self._is_steady(groups, binding)
        flags = None
        if not steady:
            # A group whose amsgrad (or another flag the kernels are chosen by) changed needs states
            # and buckets made again, as torch makes max_exp_avg_sq at the first AMSGrad step.
            flags = [self.rule.flags_of(group) for group in groups]
            if flags != self._planned_flags:
                self.invalidate()
                self._planned_flags = flags
            # Everything the step checks is checked for every group before the first write. (Not in a
            # compiled step: each value compared would become a guard and each new lr or beta1 a
            # recompilation; the op still checks its own arguments.)
            if not compiling:
                self._check_changed_hyperparameters(groups, check_hyperparameters)
        # The eager step of one device reads its grads through its table, which also notices when
        # they no longer fit the plan; any other step reads them here and checks the plan.
        table = None if compiling else self._table_call(binding)
        all_grads = None
        if table is None or non_finite is not None:
            all_grads = _grads_of(groups)
            self._plan_calls(groups, state, all_grads)
            if not compiling:
                table = self._table_call(binding, try_new=True, groups=groups)
        calls = self._calls
        if not steady or self._steady is None:  # (a plan made again drops the steady mark)
            self._refresh_rows(groups, binding, flags, compiling)
        if non_finite is not None:
            found_inf = non_finite(all_grads, found_inf, grad_scale)
        if table is not None:
            clocks, rules, applied, pending = binding.deferred()
            if _ops.table_step_(
                table.table,
                table.rows,
                table.steps,
                binding.buffers[table.device],
                clocks,
                rules,
                applied,
                pending,
                grad_scale=_on(grad_scale, table.device),
                found_inf=_on(found_inf, table.device),
                invalid_steps=invalid_counter(table.device),
            ):
                binding.deferred_done()
                return
            # The grads no longer match the table (note [Step tables]): a new plan, checked, and the
            # list path, whose checks raise for a grad that does not fit its param.
            all_grads = _grads_of(groups)
            calls = self._plan_calls(groups, state, all_grads)
            self._refresh_rows(groups, binding, None, compiling)
        if all_grads is None:
            all_grads = _grads_of(groups)
        self._list_steps(calls, all_grads, binding, grad_scale, found_inf, invalid_counter)

    def _list_steps(
        self, calls: list[DeviceStep], all_grads, binding: Binding, grad_scale, found_inf, invalid_counter
    ) -> None:
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
            grads = [
                torch.view_as_real(local_tensor(all_grads[g][i])) if c else local_tensor(all_grads[g][i])
                for (g, i), c in zip(call.grad_of, call.complex_)
            ]
            _ops.rule_step_(
                self.rule,
                call.params,
                grads,
                call.state_lists(),
                call.steps,
                call.rows,
                binding.buffers[device],
                clocks,
                rules,
                applied,
                pending,
                grad_scale=_on(grad_scale, device),
                found_inf=_on(found_inf, device),
                invalid_steps=invalid_counter(device),
                handle=call.handle,
            )
            if device == binding.primary:
                binding.deferred_done()

    def _no_deferred(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The `applied` and `pending` arguments of a call that carries no deferred step."""
        spare = self._spare_counters.get(device)
        if spare is None:
            spare = self._spare_counters[device] = (
                torch.zeros((), dtype=torch.int64, device=device),
                torch.zeros(1, dtype=torch.int64),
            )
        return spare

    # --- plans and calls -----------------------------------------------------------------------------

    def _plan_calls(self, groups, state, all_grads) -> list[DeviceStep]:
        """The op calls for the grads of this step: each group's plan is made again when its params
        with a grad changed, and the calls are assembled again when any plan changed."""
        stale = []
        for index, (group, grads) in enumerate(zip(groups, all_grads)):
            plan = self._plans.get(index)
            if plan is None or plan.has_grad != tuple(g is not None for g in grads):
                self._check_group(index, group, state, grads)
                stale.append(index)
        if not stale and self._calls is not None:
            return self._calls
        for index in stale:
            self._plans[index] = self._make_plan(groups[index], state, all_grads[index])
        self._calls = _step_plan.assemble([self._plans[index] for index in range(len(groups))], _ops.new_handle)
        self._rows_made_from = None
        self._steady = None
        return self._calls

    def _check_group(self, index: int, group: dict[str, Any], state: dict, grads: list[Tensor | None]) -> None:
        """What a new plan needs, checked for every group before any state is made or any param
        written: a step that raises changes nothing."""
        for i, (p, g) in enumerate(zip(group["params"], grads)):
            if g is None:
                continue
            where = f"param_groups[{index}]['params'][{i}]"
            check_param(p, where, f"FusedScheduled{self.rule.name}")
            if g.is_sparse:
                raise RuntimeError(f"FusedScheduled{self.rule.name} does not support sparse gradients ({where})")
            param_state = state.get(p)
            if param_state and "step" in param_state:
                for name in self.rule.states:
                    if name not in param_state:
                        raise KeyError(f"the optimizer state of {where} has a 'step' but no {name!r}")

    def make_states(self, group: dict[str, Any], state: dict, params: list[Tensor]) -> None:
        """The states ``params`` of ``group`` do not have yet, as the rule makes them at a param's
        first step (zeros, or a group key's value: Adagrad's sum), and a step counter shared by the
        new ones of a device and dtype; states loaded in another layout are laid out as the param."""
        wanted = self.rule.states_for(group)
        fills = dict(self.rule.fills)
        fresh_steps: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        for p in params:
            param_state = state[p]
            if "step" not in param_state:
                key = (p.device, p.dtype)
                if key not in fresh_steps:
                    fresh_steps[key] = torch.zeros((), dtype=torch.int64, device=p.device)
                param_state["step"] = fresh_steps[key]
            for name in wanted:
                if name not in param_state:
                    if name in fills:
                        value = float(group[fills[name]])
                        value = complex(value, value) if p.is_complex() else value  # as torch's Adagrad
                        param_state[name] = torch.full_like(p, value, memory_format=torch.preserve_format)
                    else:
                        param_state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            match_param_layout(p, param_state, wanted)

    def _make_plan(self, group: dict[str, Any], state: dict, grads: list[Tensor | None]) -> GroupPlan:
        params = group["params"]
        stepping = [i for i, g in enumerate(grads) if g is not None]
        wanted = self.rule.states_for(group)
        occurrences: dict[int, int] = {}
        for i in stepping:
            occurrences[id(params[i])] = occurrences.get(id(params[i]), 0) + 1
        self.make_states(group, state, [params[i] for i in stepping])
        _split_shared_counters(params, stepping, occurrences, state)
        plan = GroupPlan(tuple(g is not None for g in grads))
        by_key: dict[tuple, Bucket] = {}
        seen: dict[int, int] = {}
        for i in stepping:
            p = params[i]
            listing = seen.get(id(p), 0)
            seen[id(p)] = listing + 1
            param_state = state[p]
            real = (lambda x: torch.view_as_real(local_tensor(x))) if p.is_complex() else local_tensor
            key = (listing, p.device, p.dtype, id(param_state["step"]))
            bucket = by_key.get(key)
            if bucket is None:
                bucket = by_key[key] = Bucket(
                    [], [], {name: [] for name in self.rule.all_states}, param_state["step"], [], listing
                )
            bucket.indices.append(i)
            bucket.params.append(real(p))
            for name in wanted:
                bucket.states[name].append(real(param_state[name]))
            bucket.complex_.append(p.is_complex())
        plan.buckets = list(by_key.values())
        return plan

    # --- the eager table -------------------------------------------------------------------------------

    def _table_call(self, binding: Binding, try_new: bool = False, groups=None) -> DeviceStep | None:
        """The one call of an eager step that its table serves (note [Step tables]), or None.
        ``try_new``: a call that never tried gets a table now."""
        calls = self._calls
        if calls is None or len(calls) != 1 or calls[0].device != binding.primary:
            return None
        call = calls[0]
        if try_new and call.table_wanted:
            self._set_table(call, groups)
        return call if call.table is not None else None

    def _set_table(self, call: DeviceStep, groups) -> None:
        """Gives the call a table when every grad can be read in C++: not for a DTensor's (its local
        shard is read in Python) or a param listed twice in a group."""
        call.table_wanted = False
        if not _ops.has_kernels():
            return
        sources = []
        for g, i in call.grad_of:
            p = groups[g]["params"][i]
            if local_tensor(p) is not p:
                return
            sources.append(p)
        if any(bucket.listing for bucket in call.buckets):
            return
        plans = [self._plans[index] for index in range(len(groups))]
        watched = [
            p
            for group, plan in zip(groups, plans)
            for p, has in zip(group["params"], plan.has_grad)
            if not has and p.device == call.device
        ]
        call.table = _ops.new_handle()
        columns = list(call.state_lists())
        columns += [[] for _ in range(_step_plan.MAX_STATES - len(columns))]
        _ops.set_step_table(call.table, sources, call.params, *columns, watched)

    # --- rows and hyperparameters ----------------------------------------------------------------------

    def _refresh_rows(self, groups, binding: Binding, flags: list[int] | None, compiling: bool) -> None:
        """The bucket rows, made again when a group's hyperparameters or program changed. A compiled
        step makes them every time, from values its guards already hold: comparing them with the
        cache would add a guard on the cache, which a new value changes after the graph is made."""
        rule = self.rule
        if flags is None:
            flags = [rule.flags_of(group) for group in groups]
        values = [
            rule.row_values(group, binding.beta1_for(index, rule.momentum_of(group)), flags[index])
            for index, group in enumerate(groups)
        ]
        calls = self._calls
        if compiling or values != self._rows_made_from or any(call.rows is None for call in calls):
            programs = [(binding.offsets[i], i if binding.held else -1) for i in range(len(groups))]
            for call in calls:
                call.rows = _step_plan.bucket_rows(call, rule, values, programs)
            self._rows_made_from = values
        self._steady = None if compiling else self._watched(groups, binding)

    def _watched(self, groups, binding: Binding) -> tuple | None:
        """What a steady step compares by identity (note [The steady optimizer step]), or None when
        a value could change without a new object (a tensor, a list)."""
        watched = []
        for index, group in enumerate(groups):
            values = self.rule.watched(group, binding.drives_beta1(index))
            if values is None or not all(_plain(v) for v in values):
                return None
            watched.append(values)
        return (binding, list(binding.beta1_args), watched)

    def _is_steady(self, groups, binding: Binding) -> bool:
        steady = self._steady
        if steady is None:
            return False
        seen_binding, seen_beta1_args, watched = steady
        if binding is not seen_binding or len(groups) != len(watched) or binding.beta1_args != seen_beta1_args:
            return False
        rule_watched, drives_beta1 = self.rule.watched, binding.drives_beta1
        for index, group in enumerate(groups):
            values = rule_watched(group, drives_beta1(index))
            if values is None:
                return False
            for now, seen in zip(values, watched[index]):
                if now is not seen:
                    return False
        return True

    def _check_changed_hyperparameters(self, groups, check: Callable[[int, dict[str, Any]], None]) -> None:
        """The hyperparameters of every group, checked before any op call when they changed (the
        op checks them too, but a bad value in group 2 must not raise after group 1 stepped)."""
        for index, group in enumerate(groups):
            current = tuple(group[key] for key in self.rule.hyperparameters)
            seen = self._checked.get(index)
            if seen is not None and _same(seen, current):
                continue
            check(index, group)
            self._checked[index] = current


# --- what the planner and the optimizer share ----------------------------------------------------------


def match_param_layout(p: Tensor, state: dict[str, Any], names) -> None:
    """States in the param's memory layout: a state loaded from a checkpoint of a model since
    converted (channels_last) is laid out again, as the kernels walk the param's layout."""
    for name in names:
        value = state.get(name)
        if isinstance(value, Tensor) and value.stride() != p.stride():
            laid_out = torch.empty_like(p, dtype=value.dtype)  # p's strides when p is dense
            if laid_out.stride() != value.stride():
                state[name] = laid_out.copy_(value)


def local_tensor(tensor: Tensor) -> Tensor:
    """The shard a DTensor (FSDP2) holds on this rank, updated in place; other tensors as they are."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def _split_shared_counters(params, stepping, occurrences, state) -> None:
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
        param_state = state.get(p)
        if param_state and "step" in param_state:
            holders[id(param_state["step"])] = holders.get(id(param_state["step"]), 0) + 1
    sharing: dict[tuple, list[Tensor]] = {}
    for p in unique:
        key = ("alone", id(p)) if occurrences[id(p)] > 1 else (p.device, p.dtype, id(state[p]["step"]))
        sharing.setdefault(key, []).append(p)
    for members in sharing.values():
        counter = state[members[0]]["step"]
        if holders.get(id(counter), 0) != len(members):
            own = counter.clone()
            holders[id(own)] = len(members)
            holders[id(counter)] -= len(members)
            for p in members:
                state[p]["step"] = own


def _grads_of(groups) -> list[list[Tensor | None]]:
    return [[p.grad for p in group["params"]] for group in groups]


def _plain(value: Any) -> bool:
    """A Python number (or a tuple of them): a new value is a new object."""
    if value.__class__ is tuple:
        return all(item.__class__ in (float, int, bool) for item in value)
    return value.__class__ in (float, int, bool)


def _same(a: tuple, b: tuple) -> bool:
    """Whether two hyperparameter tuples hold the same values (a new tuple of equal floats counts)."""
    return all(x is y or (type(x) is type(y) and x == y) for x, y in zip(a, b))


def _on(tensor: Tensor | None, device: torch.device) -> Tensor | None:
    """An AMP scalar on the device of a call (no sync: a copy queued on the stream)."""
    return None if tensor is None else tensor.to(device, non_blocking=True)
