"""Typed attack parameters: what a value in a spec may be, and how it is written back.

Each :class:`Param` has a ``coerce`` function that turns a spec string (or a Python
value) into the canonical value or raises ``ValueError`` with the reason;
:func:`format_value` writes a canonical value so that it parses back to itself.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Param", "as_bool", "as_choice", "as_float", "as_int", "as_int_list", "as_name_list", "as_text",
           "format_value"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Param:
    """One typed attack parameter.

    ``coerce`` turns a spec string or a Python value into the canonical value, raising
    ``ValueError`` with a reason; ``multi`` parameters (lists, free text) swallow the
    comma-separated pieces that follow them in a spec.
    """

    name: str
    default: Any
    coerce: Callable[[Any], Any]
    help: str
    multi: bool = False

    def describe(self) -> str:
        return f"{self.name} ({self.help}; default {format_value(self.default)})"


def as_int(lo: int | None = None, hi: int | None = None, choices: Sequence[int] | None = None):
    def coerce(value):
        if isinstance(value, bool):
            raise ValueError("expected an integer, not a boolean")
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        elif not isinstance(value, (int, np.integer)):
            raise ValueError(f"expected an integer, got {type(value).__name__}")
        value = int(value)
        if choices is not None and value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value}")
        if lo is not None and value < lo:
            raise ValueError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {hi}, got {value}")
        return value
    return coerce


def as_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    def coerce(value):
        if isinstance(value, bool):
            raise ValueError("expected a number, not a boolean")
        if isinstance(value, str):
            text = value.strip()
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"expected a number, got {text!r}") from None
        elif not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {value}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ValueError(f"must be {'greater than' if lo_open else 'at least'} {lo:g}, got {value:g}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {hi:g}, got {value:g}")
        return value
    return coerce


def as_bool(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def as_choice(*options: str):
    def coerce(value):
        text = str(value).strip().lower() if isinstance(value, str) else value
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return text
    return coerce


def as_text(value):
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def as_name_list(known: Sequence[str], *, allow_all: bool = True):
    """``"all"`` or a list of names from ``known`` (kept in ``known``'s order)."""
    def coerce(value):
        items = _split_list(value)
        if not all(isinstance(i, str) for i in items):
            raise ValueError(f"expected names, got {value!r}")
        if allow_all and [i.strip().lower() for i in items] == ["all"]:
            return "all"
        out = []
        for item in items:
            name = str(item).strip().lower()
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ValueError(f"unknown name {item!r}{hint} (known: {', '.join(known)}, or all)")
            out.append(name)
        return tuple(n for n in known if n in out)
    return coerce


def as_int_list(*, allow_all: bool = True):
    """``"all"`` or a list of integers (sorted, duplicates removed; negatives count from the end)."""
    def coerce(value):
        items = _split_list(value)
        if allow_all and len(items) == 1 and isinstance(items[0], str) and items[0].strip().lower() == "all":
            return "all"
        ints = [as_int()(i) for i in items]
        return tuple(sorted(set(ints)))
    return coerce


def _split_list(value) -> list:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items or any(isinstance(i, str) and not i for i in items):
        raise ValueError("expected a non-empty comma-separated list")
    return items


def format_value(value: Any) -> str:
    """The spec form of a canonical value (strings quoted when they would not parse back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    text = str(value)
    if not text or text != text.strip() or any(c in text for c in ',="\\+'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
