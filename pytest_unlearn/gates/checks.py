"""Checks of an assertion's arguments: one place for each rule (numbers, thresholds,
reductions, fractions, attack lists).  Every failure is a :class:`ConfigError` naming
the argument.  Light: no numpy, torch or pytest at import."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..metrics import Metric

__all__ = ["as_list", "safe_repr", "number", "check_threshold", "check_reduce", "check_fraction",
           "attack_list"]


def as_list(under_attack) -> list:
    """``under_attack`` as a list: ``None`` -> ``[]``, one spec or Attack -> ``[it]``."""
    if under_attack is None:
        return []
    if isinstance(under_attack, str) or not hasattr(under_attack, "__iter__"):
        return [under_attack]
    return list(under_attack)


def safe_repr(value) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def number(name: str, value) -> float:
    """A finite-or-infinite float (never NaN, never a bool, never an array)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ConfigError(f"{name} must be a number, got {safe_repr(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):  # an array, a huge int, ...
        raise ConfigError(f"{name} must be a single float-sized number, got {safe_repr(value)}") from None
    if math.isnan(out):
        raise ConfigError(f"{name} must be a number, got NaN")
    return out


def check_threshold(m: "Metric", threshold) -> float:
    """A number within the metric's range."""
    t = number("threshold", threshold)
    if not m.in_range(t):
        raise ConfigError(f"threshold {t:g} is outside the range of {m.name} "
                          f"[{m.lower_bound:g}, {m.upper_bound:g}] ({m.direction}); give a threshold in "
                          "that range")
    return t


def check_reduce(reduce: str) -> str:
    from ..metrics import parse_reduce

    return parse_reduce(reduce)  # ConfigError for anything else


def check_fraction(name: str, value, *, inclusive_one: bool) -> float:
    v = number(name, value)
    if not (0.0 < v < 1.0 or (inclusive_one and v == 1.0)):
        raise ConfigError(f"{name} must be in (0, 1{']' if inclusive_one else ')'}, got {v:g}")
    return v


def attack_list(items) -> dict[str, Any]:
    """Label (the spec as the user wrote it; an Attack object: its canonical spec) -> Attack.

    The one rule for equal specs, in ``assert_forgotten``, ``assert_no_regression`` and
    ``audit_metrics`` alike: the same attack listed twice (``quantize:4`` and
    ``quantize:bits=4``) is a :class:`ConfigError` naming both, never merged silently."""
    from ..attacks import parse_attack

    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for item in items:
        if isinstance(item, str) and item.strip() == "none":
            raise ConfigError("'none' is not an attack (the no-attack scores are always computed)")
        a = parse_attack(item)
        label = item.strip() if isinstance(item, str) else a.spec
        if a.spec in seen:
            raise ConfigError(f"attack {label!r} is listed twice (same as {seen[a.spec]!r}): list each attack once")
        seen[a.spec] = label
        out[label] = a
    return out
