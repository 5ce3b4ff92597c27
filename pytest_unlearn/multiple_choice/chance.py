"""Chance as part of the verdict: the chance level of a multiple-choice metric on a data set,
thresholds written relative to it (``"chance+0.05"``), and the line failure messages show."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .rows import is_multiple_choice

if TYPE_CHECKING:
    from ..data import Dataset
    from ..metrics import Metric

__all__ = ["chance_level", "resolve_threshold", "chance_note"]


def chance_level(metric: "Metric", dataset: "Dataset") -> float | None:
    """Chance for ``metric`` on ``dataset``: the mean of 1 / choices over the rows (``None``
    for a metric without a chance level or data that is not multiple-choice)."""
    if getattr(metric, "chance", None) is None or not is_multiple_choice(dataset):
        return None
    return float(np.mean([1.0 / len(c) for c in dataset.frame["choices"]]))


_RELATIVE = re.compile(r"^\s*chance\s*(?:([+-])\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?))?\s*$")


def resolve_threshold(metric: "Metric", threshold: Any, dataset: "Dataset") -> Any:
    """``threshold`` as a number: ``"chance"``, ``"chance+0.05"`` or ``"chance-0.1"`` is read
    relative to :func:`chance_level`; anything else is returned unchanged (checked elsewhere)."""
    if not isinstance(threshold, str) or not threshold.strip().lower().startswith("chance"):
        return threshold
    match = _RELATIVE.match(threshold.strip().lower())
    if match is None:
        raise ConfigError(f"threshold {threshold!r} is not a number or 'chance', 'chance+0.05', 'chance-0.05'")
    chance = chance_level(metric, dataset)
    if chance is None:
        raise ConfigError(f"threshold {threshold!r} is relative to chance, but {metric.name} on "
                          f"{dataset.source} has no chance level (only the multiple-choice metrics "
                          "mc_acc, mc_prob, mc_acc_text on multiple-choice data have one)")
    sign, amount = match.groups()
    delta = 0.0 if amount is None else float(amount) * (1 if sign == "+" else -1)
    return chance + delta


def chance_note(metric: "Metric", dataset: "Dataset") -> str | None:
    """A line for failure messages: the chance level and what it is, or ``None``."""
    chance = chance_level(metric, dataset)
    if chance is None:
        return None
    counts = sorted({len(c) for c in dataset.frame["choices"]})
    shown = "/".join(map(str, counts))
    return f"chance: {chance:.4g} (1 / {shown} choices); a score near chance shows no knowledge"
