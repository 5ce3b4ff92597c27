"""Comparing two runs of the plugin: the JSON report without what may differ between runs,
and the terminal summary's lines."""

from __future__ import annotations

#: report keys that differ between identical runs (timings, costs, workers, its own path)
VOLATILE = {"created", "cost", "workers", "seconds", "cached", "report"}


def normalise(value):
    """The report without the :data:`VOLATILE` keys, at any depth."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def summary(output) -> list[str]:
    """The unlearning summary's lines of a run's output (a pytester result, or text)."""
    lines = output.splitlines() if isinstance(output, str) else output.stdout.lines
    start = next(i for i, line in enumerate(lines) if "unlearning summary" in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("unlearning report:"))
    return lines[start:end]
