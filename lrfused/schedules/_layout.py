"""The layout of every schedule node kind: the one table the Python encoder, :func:`decode` and
the C++ evaluator's checks (``csrc/common/lr_schedule.h``) follow.

A node is ``[kind, length, param words..., children...]`` (note [Schedule encoding] in that
header). For each kind the table gives its number, its fixed parameter words by name (the
attribute of the node class each word comes from, ``:int``/``:bool`` where the constructor takes
that type), a variable-length tail whose size one fixed word holds, and how many child nodes
follow. C++ keeps the same numbers in ``kNodeLayouts``; ``tests/test_schedules.py`` asks the
compiled library for its table (``torch.ops.lrfused.schedule_encoding``) and compares.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeLayout:
    """Where a node's words are. ``fields`` are the fixed parameter words; when ``tail_count_word``
    is set, ``words[tail_count_word] + tail_adjust`` more parameter words follow them; children
    follow the parameters: none, ``words[child_word]`` of them, or (``child_if_at_least > 0``) one
    when ``words[child_word] >= child_if_at_least``."""

    kind: int
    fields: tuple[str, ...]
    tail_count_word: int = -1
    tail_adjust: int = 0
    child_word: int = -1
    child_if_at_least: int = 0

    def param_count(self, words) -> int:
        """Parameter words of a node whose parameters begin ``words`` (its fixed words suffice)."""
        tail = 0 if self.tail_count_word < 0 else int(words[self.tail_count_word]) + self.tail_adjust
        return len(self.fields) + tail

    def child_count(self, words) -> int:
        if self.child_word < 0:
            return 0
        if self.child_if_at_least > 0:
            return int(int(words[self.child_word]) >= self.child_if_at_least)
        return int(words[self.child_word])

    def as_row(self) -> list[int]:
        """The row the C++ side reports for this kind (see ``schedule_encoding`` in csrc/ops.cpp)."""
        return [
            self.kind,
            len(self.fields),
            self.tail_count_word,
            self.tail_adjust,
            self.child_word,
            self.child_if_at_least,
        ]


# CyclicLR modes (enum CyclicMode): the two table modes evaluate a child TABLE at the cycle or at t.
CYCLIC_TRIANGULAR = 0
CYCLIC_TRIANGULAR2 = 1
CYCLIC_EXP_RANGE = 2
CYCLIC_TABLE_BY_CYCLE = 3
CYCLIC_TABLE_BY_ITERATION = 4
CYCLIC_MODE_COUNT = 5

# Composites nest at most this deep (kMaxScheduleDepth): the CUDA evaluator is unrolled to it.
MAX_DEPTH = 4

# The node kinds (enum ScheduleKind).
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

LAYOUTS: tuple[NodeLayout, ...] = (
    NodeLayout(KIND_CONSTANT, ("value_",)),
    NodeLayout(KIND_TABLE, ("first_t:int", "count:int"), tail_count_word=1),  # + count values
    NodeLayout(KIND_STEP, ("init", "step_size:int", "gamma")),
    # + the milestones, sorted (duplicates compound)
    NodeLayout(KIND_MULTI_STEP, ("init", "gamma", "milestone_count:int"), tail_count_word=2),
    NodeLayout(KIND_CONSTANT_FACTOR, ("init", "factor", "total_iters:int")),
    NodeLayout(KIND_LINEAR, ("init", "start_factor", "end_factor", "total_iters:int")),
    NodeLayout(KIND_EXPONENTIAL, ("init", "gamma")),
    NodeLayout(KIND_POLYNOMIAL, ("init", "end", "total_iters:int", "power")),
    NodeLayout(KIND_COSINE, ("init", "floor", "period:int", "clamp:bool")),
    NodeLayout(KIND_WARM_RESTARTS, ("init", "floor", "T_0:int", "T_mult:int")),
    # + one TABLE child in the two table modes (word 4 is the mode)
    NodeLayout(
        KIND_CYCLIC,
        (
            "base",
            "peak",
            "total_size",
            "step_ratio",
            "mode:int",
            "gamma",
            "base_momentum",
            "max_momentum",
            "cycle_momentum:bool",
        ),
        child_word=4,
        child_if_at_least=CYCLIC_TABLE_BY_CYCLE,
    ),
    NodeLayout(
        KIND_ONE_CYCLE,
        (
            "initial",
            "peak",
            "minimum",
            "total_steps:int",
            "pct_start",
            "three_phase:bool",
            "anneal_cos:bool",
            "cycle_momentum:bool",
            "base_momentum",
            "max_momentum",
        ),
    ),
    # + child_count - 1 boundaries, then child_count children
    NodeLayout(KIND_SEQUENTIAL, ("child_count:int",), tail_count_word=0, tail_adjust=-1, child_word=0),
    NodeLayout(KIND_PRODUCT, ("init", "child_count:int"), child_word=1),  # + child_count children
    NodeLayout(KIND_INVERSE_SQRT, ("init", "timescale", "shift")),
    NodeLayout(KIND_ONE_MINUS_SQRT, ("init", "end", "total_iters:int")),
    NodeLayout(KIND_EXP_RAMP, ("start", "end", "num_iter:int")),
    NodeLayout(KIND_LINEAR_RAMP, ("start", "end", "num_iter:int")),
    # a param group's lr and beta1 (NaN: the optimizer's), written in place on the device
    NodeLayout(KIND_HELD, ("lr_", "beta1_")),
)

assert [layout.kind for layout in LAYOUTS] == list(range(len(LAYOUTS))), "one row per kind, in order"


def field_name(field: str) -> str:
    """``"step_size:int"`` -> ``"step_size"``."""
    return field.partition(":")[0]


def field_type(field: str) -> type:
    return {"": float, "int": int, "bool": bool}[field.partition(":")[2]]


def encoding_rows() -> list[int]:
    """The Python side of the comparison with ``torch.ops.lrfused.schedule_encoding()``: the kind
    count, the depth limit and the CyclicLR mode count, then one row per kind."""
    rows = [len(LAYOUTS), MAX_DEPTH, CYCLIC_MODE_COUNT]
    for layout in LAYOUTS:
        rows += layout.as_row()
    return rows
