"""Argument checks shared by the schedule nodes and factories: each names the argument and the
value it refuses, before anything is built."""

from __future__ import annotations

import math


def finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value}")
    return value


def positive(name: str, value: float) -> float:
    value = finite(name, value)
    if value <= 0:
        raise ValueError(f"Invalid {name}: {value} (must be > 0)")
    return value


def whole_number(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        bound = "a positive int" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"Invalid {name}: {value} (must be {bound})")
    return value


def positive_int(name: str, value: int) -> int:
    return whole_number(name, value, 1)


def non_negative_int(name: str, value: int) -> int:
    return whole_number(name, value, 0)
