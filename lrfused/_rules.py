"""The rules of a scheduler step on the device: encoding, and the pure-Python mirror of
``csrc/common/lr_step.h`` (note [Scheduler steps on the device]) that the reference op runs.

Each param group's lr lives in a HELD node ``[KIND_HELD, 4, lr, beta1]``; a scheduler's step
applies one rule node per group to those words:

* ``keep()``: the group is left as it is (a group the scheduler does not know);
* ``set_(s)``: ``lr = s(t)`` (and beta1 when ``s`` cycles it): a closed form that ignores the lr;
* ``chain(s)``: torch's chainable step from the current lr (``s`` names the class and its
  arguments; its closed form serves ``step(epoch)``);
* ``sequential(milestones, children)``: SequentialLR's choice of child at each step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from . import _schedule_encoding as E
from . import schedules as S

# The rule kinds and the HELD node's words: the numbers of csrc/common/lr_step.h, which the
# compiled library reports by name (``lrfused::step_encoding``) and tests/test_encoding.py
# compares with ENCODING.
RULE_KEEP = 0
RULE_SET = 1
RULE_CHAIN = 2
RULE_SEQUENTIAL = 3
RULE_COUNT = 4

HELD_WORDS = 4
HELD_LR = 2
HELD_BETA1 = 3

ENCODING = {
    "rule.keep": RULE_KEEP,
    "rule.set": RULE_SET,
    "rule.chain": RULE_CHAIN,
    "rule.sequential": RULE_SEQUENTIAL,
    "rule.count": RULE_COUNT,
    "held.words": HELD_WORDS,
    "held.lr": HELD_LR,
    "held.beta1": HELD_BETA1,
}


def held(lr: float, beta1: float = math.nan) -> list[float]:
    return [float(E.KIND_HELD), float(HELD_WORDS), float(lr), float(beta1)]


def keep() -> list[float]:
    return [float(RULE_KEEP), 2.0]


def set_(schedule: S.Schedule) -> list[float]:
    body = schedule.encode()
    return [float(RULE_SET), float(2 + len(body))] + body


def chain(schedule: S.Schedule) -> list[float]:
    body = schedule.encode()
    return [float(RULE_CHAIN), float(2 + len(body))] + body


def sequential(milestones: Sequence[int], children: Sequence[list[float]]) -> list[float]:
    if len(children) != len(milestones) + 1:
        raise ValueError(f"sequential needs one child more than milestones, got {len(children)} and {len(milestones)}")
    if any(int(child[0]) == RULE_SEQUENTIAL for child in children):
        raise ValueError("sequential rules do not nest")
    body = [float(len(children))] + [float(m) for m in milestones]
    for child in children:
        body += child
    return [float(RULE_SEQUENTIAL), float(2 + len(body))] + body


def indexed(rules: Sequence[float], group_count: int) -> list[float]:
    """Rules prefixed with the offset of each group's node (note [One op per step] in
    csrc/common/step_plan.h): what a deferred step carries, so that the kernel finds any group's
    node without walking the ones before it."""
    offsets, position = [], 0
    for _ in range(group_count):
        offsets.append(float(position))
        position += int(rules[position + 1])
    if position != len(rules):
        raise ValueError(f"rules for {group_count} groups hold {len(rules)} words, their nodes {position}")
    return offsets + [float(w) for w in rules]


# --- the reference (mirrors lr_step.h) --------------------------------------------------------------


def _chain_step(node: list[float], t: int, lr: float) -> float:
    kind, p = int(node[0]), node[2:]
    if kind == E.KIND_STEP:
        return lr if t == 0 or t % int(p[1]) != 0 else lr * p[2]
    if kind == E.KIND_MULTI_STEP:
        hits = sum(1 for m in p[3 : 3 + int(p[2])] if int(m) == t)
        return lr if hits == 0 else lr * p[1] ** float(hits)
    if kind == E.KIND_CONSTANT_FACTOR:
        if t == 0:
            return lr * p[1]
        return lr if float(t) != p[2] else lr * (1.0 / p[1])
    if kind == E.KIND_LINEAR:
        if t == 0:
            return lr * p[1]
        if t > p[3]:
            return lr
        return lr * (1.0 + (p[2] - p[1]) / (p[3] * p[1] + (t - 1.0) * (p[2] - p[1])))
    if kind == E.KIND_EXPONENTIAL:
        return lr if t == 0 else lr * p[1]
    if kind == E.KIND_POLYNOMIAL:
        if t == 0 or t > p[2]:
            return lr
        return lr * ((1.0 - t / p[2]) / (1.0 - (t - 1.0) / p[2])) ** p[3]
    if kind == E.KIND_COSINE:
        period = p[2]
        if t == 0:
            return lr
        if math.fmod(t - 1 - int(period), 2 * int(period)) == 0:
            return lr + (p[0] - p[1]) * (1.0 - math.cos(math.pi / period)) / 2.0
        return (1.0 + math.cos(math.pi * t / period)) / (1.0 + math.cos(math.pi * (t - 1.0) / period)) * (
            lr - p[1]
        ) + p[1]
    if kind == E.KIND_TABLE:
        return lr * E.decode(node).lr(t) if t > 0 else lr
    return E.decode(node).value(t)[0]


def _leaf(rule: list[float], t: int, explicit: bool, lr: float, beta1: float) -> tuple[float, float]:
    kind, node = int(rule[0]), rule[2:]
    if kind == RULE_SET:
        value, scheduled_beta1 = E.decode(node).value(t)
        return value, beta1 if scheduled_beta1 is None else scheduled_beta1
    if kind == RULE_CHAIN:
        if explicit and int(node[0]) != E.KIND_TABLE:
            return E.decode(node).value(t)[0], beta1
        return _chain_step(node, t, lr), beta1
    return lr, beta1


def _apply(rule: list[float], t: int, explicit: bool, lr: float, beta1: float) -> tuple[float, float]:
    if int(rule[0]) != RULE_SEQUENTIAL:
        return _leaf(rule, t, explicit, lr, beta1)
    count = int(rule[2])
    milestones = [int(m) for m in rule[3 : 2 + count]]
    offset, start, index = 2 + count, 0, 0
    while index + 1 < count and milestones[index] <= t:
        start = milestones[index]
        offset += int(rule[offset + 1])
        index += 1
    child = rule[offset : offset + int(rule[offset + 1])]
    return _leaf(child, t - start, explicit or (index > 0 and t == start), lr, beta1)


def apply_group_rule(
    indexed_rules: list[float], group_count: int, group: int, t: int, lr: float, beta1: float
) -> tuple[float, float]:
    """Group ``group``'s (lr, beta1) after one step at clock t, from indexed rules."""
    start = group_count + int(indexed_rules[group])
    rule = indexed_rules[start : start + int(indexed_rules[start + 1])]
    return _apply(rule, t, False, lr, beta1)


def apply_rules(rules: list[float], groups: list[float], t: int, explicit: bool) -> list[float]:
    """The HELD words after one step at clock t (a new list)."""
    out, offset = list(groups), 0
    for g in range(len(groups) // HELD_WORDS):
        rule = rules[offset : offset + int(rules[offset + 1])]
        base = g * HELD_WORDS
        out[base + HELD_LR], out[base + HELD_BETA1] = _apply(
            rule, t, explicit, out[base + HELD_LR], out[base + HELD_BETA1]
        )
        offset += int(rules[offset + 1])
    return out
