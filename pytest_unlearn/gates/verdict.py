"""The verdicts: pure functions over per-sample score arrays.  No Suite, no model, no torch,
no pytest: a verdict is reproducible from the numbers in a report.

Conventions: ``m`` is a :class:`~pytest_unlearn.metrics.Metric` (only its direction,
range and chance level are read); a *condition* is ``"none"`` or an attack label; score
dicts map conditions to per-sample arrays of one length, ``"none"`` first.

Importing this module imports no numpy (the plugin imports the gates in every run); the
functions do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np

    from ..metrics import Metric

__all__ = ["BOOTSTRAP_RESAMPLES", "Figures", "reference_rule", "worst_case", "figures", "bootstrap_bound",
           "uninformative_conditions", "is_vacuous", "forgotten_passes", "retention", "allowed", "regressed",
           "robustness_reasons", "forget_quality_passes"]

BOOTSTRAP_RESAMPLES = 1000


def _reduce(values, how: str, m: "Metric") -> float:
    from ..metrics import reduce_scores

    return reduce_scores(values, how, m)


def reference_rule(model: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None,
                   m: "Metric") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Under an attack, a sample's attacked score counts only where it shows strictly more
    knowledge than the never-knew reference model's under the same attack on the same sample;
    elsewhere the attack recovered nothing there: the sample counts with the lesser knowledge of its
    attacked and its no-attack score (never more than either), so an attack's counted score never
    exceeds its raw one, and the worst case over the conditions, which holds the no-attack score
    anyway, is the same.

    Returns ``(counted, kept, explained)``: the scores that count per condition, the mask of
    attacked scores kept, and per attack the number of samples the reference explains (only
    with a reference)."""
    import numpy as np

    conditions = list(model)
    n = len(model["none"])
    counted = {c: np.asarray(model[c], dtype=np.float64) for c in conditions}
    kept = {c: np.ones(n, dtype=bool) for c in conditions}
    explained: dict[str, int] = {}
    if reference is None:
        return counted, kept, explained
    for c in conditions[1:]:
        ref, mine = np.asarray(reference[c], dtype=np.float64), counted[c]
        beyond = ref < mine if m.higher_is_more_knowledge else ref > mine
        explained[c], kept[c] = int((~beyond).sum()), beyond
        lesser = np.fmin(mine, counted["none"]) if m.higher_is_more_knowledge else np.fmax(mine, counted["none"])
        counted[c] = np.where(beyond, mine, lesser)
    return counted, kept, explained


def worst_case(counted: Mapping[str, np.ndarray], m: "Metric") -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the most knowledge over the conditions and where it was (an index into
    the conditions, the first on ties)."""
    import numpy as np

    stack = np.vstack([np.asarray(v, dtype=np.float64) for v in counted.values()])
    worst = m.knowledge_max(stack)
    at = (np.argmax if m.higher_is_more_knowledge else np.argmin)(stack, axis=0)
    return np.asarray(worst, dtype=np.float64), at


@dataclass
class Figures:
    """The threshold-free figures of a forgetting check: what ``assert_forgotten`` and
    ``assert_no_regression`` decide on."""

    conditions: list[str]
    counted: dict[str, np.ndarray]
    kept: dict[str, np.ndarray]
    explained: dict[str, int]
    worst: np.ndarray
    worst_at: np.ndarray
    score: float  # the reduced worst case
    reduced: dict[str, float]  # condition -> reduced counted scores
    raw: dict[str, float]  # condition -> reduced scores before the reference rule
    uninformative: list[str] = field(default_factory=list)

    def worst_attack(self) -> list[str]:
        return [self.conditions[k] for k in self.worst_at]


def figures(model: Mapping[str, np.ndarray], m: "Metric", reduce: str, *,
            reference: Mapping[str, np.ndarray] | None = None,
            uninformative: Sequence[str] = ()) -> Figures:
    """The reference rule, the per-sample worst case and its reductions."""
    counted, kept, explained = reference_rule(model, reference, m)
    worst, at = worst_case(counted, m)
    conditions = list(model)
    return Figures(conditions, counted, kept, explained, worst, at, _reduce(worst, reduce, m),
                   {c: _reduce(counted[c], reduce, m) for c in conditions},
                   {c: _reduce(model[c], reduce, m) for c in conditions}, list(uninformative))


def bootstrap_bound(values, m: "Metric", reduce: str, confidence: float, seed: int,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> float:
    """One-sided bootstrap bound of the reduced score in the knowledge direction: each
    resample is reduced as the verdict is (``max`` = the most knowledge, ...), and the bound
    is the ``confidence`` quantile of knowledge over resamples (the ``confidence`` quantile
    of the values when higher means more knowledge, else the ``1 - confidence`` quantile)."""
    import numpy as np

    from ..metrics import reduce_rows

    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    stats = reduce_rows(v[rng.integers(0, len(v), size=(resamples, len(v)))], reduce, m)
    q = confidence if m.higher_is_more_knowledge else 1.0 - confidence
    return float(np.quantile(stats, q))


def uninformative_conditions(attacks: Mapping[str, Any], original: Mapping[str, np.ndarray], m: "Metric",
                             reference_none=None) -> list[str]:
    """The attacks that also wipe out the original's knowledge: the one rule of
    :func:`~pytest_unlearn.attacks.attack_is_uninformative` (only attacks judged by the
    control, i.e. not prompt attacks; the same rule as :func:`~pytest_unlearn.audit.audit_metrics`)."""
    from ..attacks.controls import attack_is_uninformative

    return [label for label, a in attacks.items()
            if attack_is_uninformative(original["none"], original[label], m, reference=reference_none, attack=a)]


def is_vacuous(original_none, m: "Metric", reduce: str, threshold: float) -> bool:
    """The original model already scores within the threshold with no attack."""
    return not bool(m.more_knowledge(_reduce(original_none, reduce, m), threshold))


def forgotten_passes(score: float, threshold: float, m: "Metric", bound: float | None = None) -> bool:
    """The reduced worst case, and the bootstrap bound when there is one, within the threshold."""
    return not m.more_knowledge(score, threshold) and (bound is None or not m.more_knowledge(bound, threshold))


def retention(score: float, original: float, min_ratio: float, m: "Metric") -> tuple[float, float, bool]:
    """``(ratio, required, passed)`` of ``assert_retained``, read in the knowledge direction."""
    if m.higher_is_more_knowledge:
        required = min_ratio * original
        ratio = score / original if original > 0 else (float("inf") if score > 0 else 1.0)
        return ratio, required, score >= required
    required = original / min_ratio
    ratio = original / score if score > 0 else float("inf")
    return ratio, required, score <= required


def allowed(before: float, tolerance: float, m: "Metric") -> float:
    """The most knowledge a score may show against a baseline score (``tolerance`` in the
    knowledge direction)."""
    return before + tolerance if m.higher_is_more_knowledge else before - tolerance


def regressed(before: Sequence[float], now: Sequence[float], tolerance: float, m: "Metric") -> list[int]:
    """The samples that show more knowledge than their baseline beyond ``tolerance``."""
    return [i for i, (b, n) in enumerate(zip(before, now))
            if m.more_knowledge(float(n), allowed(float(b), tolerance, m))]


def robustness_reasons(pcc: float, slope: float, surface: bool, min_pcc: float,
                       max_slope_dev: float | None) -> list[str]:
    """Why one attack/split row of ``assert_metric_robust`` misses the bar (empty: it does not).
    NaN never passes."""
    from ..formatting import number as fmt

    reasons = []
    if not (pcc >= min_pcc):
        reasons.append(f"PCC {'is NaN' if math.isnan(pcc) else '< ' + fmt(float(min_pcc))}")
    if max_slope_dev is not None and surface and not (abs(slope - 1.0) <= max_slope_dev):
        reasons.append(f"|slope-1| {'is NaN' if math.isnan(slope) else '> ' + fmt(float(max_slope_dev))}")
    return reasons


def forget_quality_passes(p_value: float, min_p: float) -> bool:
    return bool(p_value >= min_p)
