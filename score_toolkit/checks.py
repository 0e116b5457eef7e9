"""The argument checks every module shares: each raises ValueError naming the argument, the bad
value and what is allowed, so a wrong call fails before any work starts."""
from __future__ import annotations

from typing import Any, Iterable


def check_one_of(name: str, value: Any, allowed: Iterable) -> Any:
    """`value` if it is in `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """`value` if it is an int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_positive(value: Any, name: str) -> float:
    """`value` as a float if it is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_open_interval(value: Any, name: str, low: float, high: float, what: str = "") -> float:
    """`value` as a float if low < value < high; `what` names the interval (e.g. "(0, T) = (0, 1)")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"{name} must lie in {what or f'({low:g}, {high:g})'}, got {value!r}")
    return float(value)
