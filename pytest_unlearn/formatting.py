"""One way to write numbers and tables: the terminal summary, failure messages, the
Markdown report, the audit and the command line all use these.

* :func:`number`: ``0.0500`` (four decimals; ``1234`` and above in four significant
  digits), ``-`` for a missing value, ``nan`` / ``inf`` / ``-inf`` for non-finite ones.
* :func:`text_table`: an aligned plain-text table; :func:`markdown_table`: a
  GitHub-flavoured one with ``|`` escaped and per-column alignment.
* :func:`jsonable`: plain JSON values with one NaN policy: non-finite floats become the
  strings ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no such numbers; a string keeps
  the value, where ``null`` would read as "missing").  :func:`parse_number` reads them back.

Pure Python: no numpy, pandas or torch (the plugin imports this in every run).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["number", "parse_number", "from_jsonable", "text_table", "markdown_table", "markdown_cell", "jsonable",
           "MISSING"]

MISSING = "-"
NON_FINITE = ("nan", "inf", "-inf")


def parse_number(value: Any) -> float | None:
    """A float from a number or a report's ``"nan"``/``"inf"``/``"-inf"`` string, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in NON_FINITE:
        return float(value)
    if hasattr(value, "__float__") and not isinstance(value, str):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return None


def number(value: Any, digits: int = 4, missing: str = MISSING) -> str:
    """``value`` for a person to read (see the module docstring); text is passed through."""
    if value is None:
        return missing
    x = parse_number(value)
    if x is None:
        return str(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def text_table(rows: list[list[Any]], header: list[str], right: Iterable[int] = ()) -> list[str]:
    """An aligned plain-text table; columns in ``right`` are right-aligned."""
    right = set(right)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    return [line(header)] + [line(r) for r in rows]


def markdown_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell (whitespace collapsed, ``\\`` and ``|`` escaped)."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(header: list, rows: Iterable[list], align: str | None = None, *, escape: bool = True) -> list[str]:
    """A GitHub-flavoured Markdown table; ``align``: one of ``l``/``r``/``c`` per column.
    ``escape=False`` for cells that are already Markdown (links, bold verdicts)."""
    cell = markdown_cell if escape else str
    align = align or "l" * len(header)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return out


def jsonable(value: Any) -> Any:
    """Plain JSON values; non-finite floats become the strings "nan", "inf", "-inf"; numpy
    scalars become Python numbers, other objects their ``str``."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):  # an array (of other than one element)
            pass
    if hasattr(value, "tolist"):  # numpy arrays
        return jsonable(value.tolist())
    return str(value)


def from_jsonable(value: Any) -> Any:
    """The inverse of :func:`jsonable` for numbers: the strings "nan", "inf", "-inf" become floats."""
    if isinstance(value, str) and value in NON_FINITE:
        return float(value)
    if isinstance(value, dict):
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value
