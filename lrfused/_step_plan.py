"""How an optimizer step becomes one op per device: the bucket rows the op reads (mirroring
``csrc/common/step_plan.h``, note [One op per step]) and the per-device assembly of the buckets
that the optimizer's plan made for each param group."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# The words of one bucket row, the bucket flags, the update rules and the deferred-step limit: the
# numbers of csrc/common/step_plan.h and update_rules.h, which the compiled library reports by name
# (``lrfused::step_encoding``) and tests/test_encoding.py compares with ENCODING. The four
# hyperparameter words are read by the bucket's rule (MOMENTUM: Adam's beta1, SGD's and RMSprop's
# momentum; DECAY: Adam's beta2, SGD's dampening, RMSprop's alpha, Adagrad's lr_decay).
MAX_STATES = 3
TENSOR_BEGIN, TENSOR_END, STATE_BEGIN = 0, 1, 2  # STATE_BEGIN + k: where state k's list starts
PROGRAM, GROUP, RULE, MOMENTUM, DECAY, EPS, WEIGHT_DECAY, FLAGS = range(5, 13)
BUCKET_WORDS = 13
FLAG_AMSGRAD, FLAG_DECOUPLED, FLAG_MAXIMIZE, FLAG_MOMENTUM, FLAG_NESTEROV, FLAG_CENTERED = 1, 2, 4, 8, 16, 32
KIND_ADAM, KIND_SGD, KIND_RMSPROP, KIND_ADAGRAD = range(4)
MAX_DEFERRED_STEPS = 8
# The `pending` header (note [Host writes] in csrc/common/step_plan.h): the first deferred step's
# sequence number, each deferred step's clock slot, then the host writes the call carries.
MAX_HOST_WRITES = 32
PENDING_WRITE_COUNT = 1 + MAX_DEFERRED_STEPS
PENDING_WRITE_SEQUENCE = 2 + MAX_DEFERRED_STEPS
PENDING_WRITES = 3 + MAX_DEFERRED_STEPS  # then (position, float64 bits of the value) per write
PENDING_WORDS = PENDING_WRITES + 2 * MAX_HOST_WRITES

ENCODING = {
    "bucket.tensor_begin": TENSOR_BEGIN,
    "bucket.tensor_end": TENSOR_END,
    "bucket.state_begin": STATE_BEGIN,
    "bucket.program": PROGRAM,
    "bucket.group": GROUP,
    "bucket.rule": RULE,
    "bucket.momentum": MOMENTUM,
    "bucket.decay": DECAY,
    "bucket.eps": EPS,
    "bucket.weight_decay": WEIGHT_DECAY,
    "bucket.flags": FLAGS,
    "bucket.words": BUCKET_WORDS,
    "max_states": MAX_STATES,
    "flag.amsgrad": FLAG_AMSGRAD,
    "flag.decoupled": FLAG_DECOUPLED,
    "flag.maximize": FLAG_MAXIMIZE,
    "flag.momentum": FLAG_MOMENTUM,
    "flag.nesterov": FLAG_NESTEROV,
    "flag.centered": FLAG_CENTERED,
    "update.adam": KIND_ADAM,
    "update.sgd": KIND_SGD,
    "update.rmsprop": KIND_RMSPROP,
    "update.adagrad": KIND_ADAGRAD,
    "max_deferred_steps": MAX_DEFERRED_STEPS,
    "max_host_writes": MAX_HOST_WRITES,
    "pending.write_count": PENDING_WRITE_COUNT,
    "pending.write_sequence": PENDING_WRITE_SEQUENCE,
    "pending.writes": PENDING_WRITES,
    "pending.words": PENDING_WORDS,
}

# The rows of a call with no tensors (a flush of deferred scheduler steps).
NO_BUCKETS = torch.zeros(0, BUCKET_WORDS, dtype=torch.float64)


@dataclass(frozen=True)
class UpdateRule:
    """What the shared machinery of a scheduled step (plans, buckets, calls, tables, deferred
    scheduler steps, counters) needs to know of one update rule; the rest is the rule's own: its
    per-element math in csrc/common/ and its op (csrc/README.md, "The seam of an update rule")."""

    name: str  # as the optimizer class names it: FusedScheduled<name>
    kind: int  # its UpdateRuleKind (csrc/common/update_rules.h), the bucket row's RULE word
    op: str  # its step op in torch.ops.lrfused
    # Every state the rule keeps per param, in the op's order (its state lists), made at a param's
    # first step (zeros_like, or a group key's value: `fills`).
    all_states: tuple[str, ...]
    # (group) -> the bucket flags (csrc/common/update_rules.h's BucketFlags).
    flags_of: Callable[[dict], int]
    # (flags, k) -> whether a param of a bucket with these flags has state k (rule_has_state).
    has_state: Callable[[int, int], bool]
    # The group keys checked before a step when they change, and read into the bucket rows.
    hyperparameters: tuple[str, ...]
    # The per-group values of a bucket row: (group, the op's momentum, flags) -> (momentum, decay,
    # eps, weight_decay, flags).
    row_values: Callable[[dict, Any, int], tuple]
    # The objects a group's check and rows are made from, whose identity tells a steady step (note
    # [The steady optimizer step] in _planner.py): (group, whether a device schedule drives its
    # momentum) -> a tuple, or None when they cannot be told by identity.
    watched: Callable[[dict, bool], tuple | None]
    # The group key a cycling scheduler writes (torch's CyclicLR/OneCycleLR with cycle_momentum):
    # "betas" (its first entry) or "momentum"; None: the rule has no momentum to cycle.
    momentum_key: str | None
    # (state, group key): a state made full of the group's value instead of zeros (Adagrad's sum).
    fills: tuple[tuple[str, str], ...] = ()
    # Whether the step counter is torch's state key "step" (False: SGD, whose torch state has none;
    # the counter is kept by the optimizer and saved under the checkpoint's "lrfused" key).
    counter_in_state: bool = True

    @functools.cached_property
    def states(self) -> tuple[str, ...]:
        """The states every param has whatever its flags (checked in a loaded state)."""
        return tuple(name for k, name in enumerate(self.all_states) if all(self.has_state(f, k) for f in range(64)))

    def states_for(self, group: dict) -> tuple[str, ...]:
        """The states a param of ``group`` has."""
        flags = self.flags_of(group)
        return tuple(name for k, name in enumerate(self.all_states) if self.has_state(flags, k))

    def momentum_of(self, group: dict) -> Any:
        """The group's momentum as the op takes it (Adam's beta1), or 0.0 for a rule without one."""
        return momentum_of(group, self.momentum_key)


def momentum_of(group: dict, key: str | None) -> Any:
    """What the HELD node's beta1 word mirrors in ``group``: ``betas[0]`` for key "betas",
    ``group[key]`` for "momentum", 0.0 without a key (a rule without a momentum)."""
    if key == "betas":
        return group["betas"][0]
    return group[key] if key is not None else 0.0


def _maximize(group: dict) -> int:
    return FLAG_MAXIMIZE if group["maximize"] else 0


def _adam_flags(group: dict) -> int:
    return (
        (FLAG_AMSGRAD if group["amsgrad"] else 0)
        | (FLAG_DECOUPLED if group["decoupled_weight_decay"] else 0)
        | _maximize(group)
    )


def _adam_has_state(flags: int, k: int) -> bool:
    return k < 2 or (k == 2 and bool(flags & FLAG_AMSGRAD))


def _adam_row_values(group: dict, beta1: Any, flags: int) -> tuple:
    # A tensor beta written after construction (a stock scheduler's tensor momentum) is read here:
    # a sync for a GPU tensor, as torch's own step makes.
    beta2 = group["betas"][1]
    return (float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]), flags)


def _adam_watched(group: dict, beta1_driven: bool) -> tuple | None:
    # A driven beta1 is the device's: its host mirror (a new betas tuple at each OneCycleLR step)
    # is neither checked nor read, so only beta2 is watched then.
    betas = group["betas"]
    if betas.__class__ is not tuple or len(betas) != 2:
        return None
    return (
        betas[1] if beta1_driven else betas,
        group["eps"],
        group["weight_decay"],
        group["amsgrad"],
        group["maximize"],
        group["decoupled_weight_decay"],
    )


ADAM = UpdateRule(
    "Adam",
    KIND_ADAM,
    "adam_step_",
    ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    _adam_flags,
    _adam_has_state,
    ("betas", "eps", "weight_decay"),
    _adam_row_values,
    _adam_watched,
    "betas",
)


def _sgd_flags(group: dict) -> int:
    return (
        _maximize(group)
        | (FLAG_MOMENTUM if group["momentum"] != 0 else 0)
        | (FLAG_NESTEROV if group["nesterov"] else 0)
    )


def _sgd_row_values(group: dict, momentum: Any, flags: int) -> tuple:
    return (float(momentum), float(group["dampening"]), 0.0, float(group["weight_decay"]), flags)


def _sgd_watched(group: dict, momentum_driven: bool) -> tuple | None:
    # A driven momentum is the device's: its host mirror (a new float at each cycling step) is not watched.
    if momentum_driven:
        return (group["dampening"], group["weight_decay"], group["nesterov"], group["maximize"])
    return (group["dampening"], group["weight_decay"], group["nesterov"], group["maximize"], group["momentum"])


SGD = UpdateRule(
    "SGD",
    KIND_SGD,
    "sgd_step_",
    ("momentum_buffer",),
    _sgd_flags,
    lambda flags, k: k == 0 and bool(flags & FLAG_MOMENTUM),
    ("momentum", "dampening", "weight_decay", "nesterov"),
    _sgd_row_values,
    _sgd_watched,
    "momentum",
    counter_in_state=False,
)


def _rmsprop_flags(group: dict) -> int:
    return (
        _maximize(group) | (FLAG_MOMENTUM if group["momentum"] > 0 else 0) | (FLAG_CENTERED if group["centered"] else 0)
    )


def _rmsprop_has_state(flags: int, k: int) -> bool:
    return k == 0 or (k == 1 and bool(flags & FLAG_MOMENTUM)) or (k == 2 and bool(flags & FLAG_CENTERED))


def _rmsprop_row_values(group: dict, momentum: Any, flags: int) -> tuple:
    return (float(momentum), float(group["alpha"]), float(group["eps"]), float(group["weight_decay"]), flags)


def _rmsprop_watched(group: dict, momentum_driven: bool) -> tuple | None:
    alpha, eps, weight_decay, centered, maximize = (
        group["alpha"],
        group["eps"],
        group["weight_decay"],
        group["centered"],
        group["maximize"],
    )
    if momentum_driven:  # as SGD's
        return (alpha, eps, weight_decay, centered, maximize)
    return (alpha, eps, weight_decay, centered, maximize, group["momentum"])


RMSPROP = UpdateRule(
    "RMSprop",
    KIND_RMSPROP,
    "rmsprop_step_",
    ("square_avg", "momentum_buffer", "grad_avg"),
    _rmsprop_flags,
    _rmsprop_has_state,
    ("momentum", "alpha", "eps", "weight_decay", "centered"),
    _rmsprop_row_values,
    _rmsprop_watched,
    "momentum",
)


def _adagrad_row_values(group: dict, momentum: Any, flags: int) -> tuple:
    return (0.0, float(group["lr_decay"]), float(group["eps"]), float(group["weight_decay"]), flags)


def _adagrad_watched(group: dict, momentum_driven: bool) -> tuple | None:
    return (group["lr_decay"], group["eps"], group["weight_decay"], group["maximize"])


ADAGRAD = UpdateRule(
    "Adagrad",
    KIND_ADAGRAD,
    "adagrad_step_",
    ("sum",),
    _maximize,
    lambda flags, k: k == 0,
    ("lr_decay", "eps", "weight_decay"),
    _adagrad_row_values,
    _adagrad_watched,
    None,
    fills=(("sum", "initial_accumulator_value"),),
)


@dataclass
class Bucket:
    """Params of one group that share a device, a dtype and a step counter."""

    indices: list[int]
    params: list[Tensor]  # what the kernel writes: the local shard, viewed as real when complex
    states: dict[str, list[Tensor]]  # per state name of the rule, one tensor per param (or none)
    step: Tensor
    complex_: list[bool]
    listing: int = 0  # 0 for a param's first listing in its group, 1 for its second, ...


@dataclass
class GroupPlan:
    """How a group's step splits into buckets, valid while the same params have grads."""

    has_grad: tuple[bool, ...]
    buckets: list[Bucket] = field(default_factory=list)


@dataclass
class DeviceStep:
    """One op call: the buckets of every group on one device (for one listing of the params)."""

    device: torch.device
    listing: int
    groups: list[int] = field(default_factory=list)  # per bucket, its group
    buckets: list[Bucket] = field(default_factory=list)
    params: list[Tensor] = field(default_factory=list)
    states: dict[str, list[Tensor]] = field(default_factory=dict)  # per state name, in the rule's order
    steps: list[Tensor] = field(default_factory=list)
    # (group, index in the group) of each tensor's param: where the list path reads its grad.
    grad_of: list[tuple[int, int]] = field(default_factory=list)
    complex_: list[bool] = field(default_factory=list)
    rows: Tensor | None = None  # the bucket rows, made again when a hyperparameter changes
    table: Tensor | None = None  # the eager table's handle (note [Step tables]); None: the list path
    table_wanted: bool = True  # no table was tried yet
    handle: Tensor | None = None  # keeps the CUDA tables of the list path

    def state_lists(self) -> tuple[list[Tensor], ...]:
        """The state columns in the op's order."""
        return tuple(self.states.values())


def assemble(plans: list[GroupPlan], new_handle) -> list[DeviceStep]:
    """The op calls of a step: one per device (and per listing of a param listed twice)."""
    steps: dict[tuple[int, torch.device], DeviceStep] = {}
    for group, plan in enumerate(plans):
        for bucket in plan.buckets:
            device = bucket.step.device
            key = (bucket.listing, device)
            call = steps.get(key)
            if call is None:
                call = steps[key] = DeviceStep(device, bucket.listing)
                if device.type == "cuda":
                    call.handle = new_handle()
            call.groups.append(group)
            call.buckets.append(bucket)
            call.params += bucket.params
            for name, tensors in bucket.states.items():
                call.states.setdefault(name, []).extend(tensors)
            call.steps.append(bucket.step)
            call.grad_of += [(group, i) for i in bucket.indices]
            call.complex_ += bucket.complex_
    # Each listing sees the update of the one before (torch's for-loop steps each listing in turn).
    return [steps[key] for key in sorted(steps, key=lambda k: k[0])]


def bucket_rows(
    call: DeviceStep, rule: UpdateRule, hyperparameters: list[tuple], programs: list[tuple[int, int]]
) -> Tensor:
    """The rows of ``call``: ``hyperparameters[g]`` is group g's (momentum, decay, eps,
    weight_decay, flags) and ``programs[g]`` its program's offset in the words and its HELD group (or -1)."""
    rows, begin = [], 0
    state_begin = [0] * MAX_STATES  # each state list holds the tensors of the buckets that have it
    for group, bucket in zip(call.groups, call.buckets):
        momentum, decay, eps, weight_decay, flags = hyperparameters[group]
        offset, held_group = programs[group]
        count = len(bucket.params)
        words = [offset, held_group, rule.kind, momentum, decay, eps, weight_decay, flags]
        rows.append([begin, begin + count, *state_begin, *words])
        for k in range(MAX_STATES):
            if k < len(rule.all_states) and rule.has_state(int(flags), k):
                state_begin[k] += count
        begin += count
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), BUCKET_WORDS)
