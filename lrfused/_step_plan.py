"""How an optimizer step becomes one op per device: the bucket rows the op reads (mirroring
``csrc/common/step_plan.h``, note [One op per step]) and the per-device assembly of the buckets
that the optimizer's plan made for each param group."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# The words of one bucket row, the bucket flags and the deferred-step limit: the numbers of
# csrc/common/step_plan.h, which the compiled library reports by name (``lrfused::step_encoding``)
# and tests/test_encoding.py compares with ENCODING.
TENSOR_BEGIN, TENSOR_END, MAX_BEGIN, PROGRAM, GROUP, BETA1, BETA2, EPS, WEIGHT_DECAY, FLAGS = range(10)
BUCKET_WORDS = 10
FLAG_AMSGRAD, FLAG_DECOUPLED, FLAG_MAXIMIZE = 1, 2, 4
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
    "bucket.max_begin": MAX_BEGIN,
    "bucket.program": PROGRAM,
    "bucket.group": GROUP,
    "bucket.beta1": BETA1,
    "bucket.beta2": BETA2,
    "bucket.eps": EPS,
    "bucket.weight_decay": WEIGHT_DECAY,
    "bucket.flags": FLAGS,
    "bucket.words": BUCKET_WORDS,
    "flag.amsgrad": FLAG_AMSGRAD,
    "flag.decoupled": FLAG_DECOUPLED,
    "flag.maximize": FLAG_MAXIMIZE,
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
    # The state tensors of every param, made with zeros_like at its first step, in the op's order.
    states: tuple[str, ...]
    # (state, group key): a state made only for a group whose key is true (Adam's AMSGrad max).
    optional_states: tuple[tuple[str, str], ...]
    # The group keys checked before a step when they change, and read into the bucket rows.
    hyperparameters: tuple[str, ...]
    # The per-group values of a bucket row after its program: (group, op's beta1, flags) -> words.
    row_values: Callable[[dict, Any, int], tuple]
    # The objects a group's check and rows are made from, whose identity tells a steady step (note
    # [The steady optimizer step] in _planner.py): (group, whether a device schedule drives its
    # beta1) -> a tuple, or None when they cannot be told by identity.
    watched: Callable[[dict, bool], tuple | None]

    @property
    def all_states(self) -> tuple[str, ...]:
        return self.states + tuple(name for name, _ in self.optional_states)

    def states_for(self, group: dict) -> tuple[str, ...]:
        """The states a param of ``group`` has."""
        return self.states + tuple(name for name, key in self.optional_states if group[key])


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
    ("exp_avg", "exp_avg_sq"),
    (("max_exp_avg_sq", "amsgrad"),),
    ("betas", "eps", "weight_decay"),
    _adam_row_values,
    _adam_watched,
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
    call: DeviceStep, hyperparameters: list[tuple[float, float, float, float, int]], programs: list[tuple[int, int]]
) -> Tensor:
    """The rows of ``call``: ``hyperparameters[g]`` is group g's (beta1, beta2, eps, weight_decay,
    flags) and ``programs[g]`` its program's offset in the words and its HELD group (or -1)."""
    rows, begin, max_begin = [], 0, 0
    for group, bucket in zip(call.groups, call.buckets):
        beta1, beta2, eps, weight_decay, flags = hyperparameters[group]
        offset, held_group = programs[group]
        end = begin + len(bucket.params)
        rows.append([begin, end, max_begin, offset, held_group, beta1, beta2, eps, weight_decay, flags])
        # The optional state (AMSGrad's max) lies in its own list, where only its buckets have one.
        optional = list(bucket.states.values())[-1]
        max_begin += len(optional) if flags & FLAG_AMSGRAD else 0
        begin = end
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), BUCKET_WORDS)


def flags_of(group: dict) -> int:
    return (
        (FLAG_AMSGRAD if group["amsgrad"] else 0)
        | (FLAG_DECOUPLED if group["decoupled_weight_decay"] else 0)
        | (FLAG_MAXIMIZE if group["maximize"] else 0)
    )
