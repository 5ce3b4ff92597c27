"""Controls: whether an attack is informative, judged on the original model.

A weight or representation attack that destroys the *original* model's knowledge says
nothing about the unlearned one; such an attack is reported as uninformative, not as
"still forgotten".  :func:`knowledge_kept` puts every metric on one knowledge scale (0 = the
metric's chance level, or the reference model's score) and measures the share of the
original's knowledge an attack leaves; :func:`attack_is_uninformative` is the rule the
assertions and the metric audit share.
"""

from __future__ import annotations

import math

import numpy as np

from ..metrics import Metric, get_metric

__all__ = ["attack_is_uninformative", "judged_by_control", "knowledge_kept"]


def _as_knowledge(value, m: Metric):
    """A metric value on one scale for every metric: higher = more knowledge, and 0 = the
    metric's chance ("no knowledge") level; ``None`` for metrics without one.

    * ``es``, ``em``, ``prob``, ``rouge_l``: the value itself (0 = none of the answer);
    * ``ppl``: ``1 / ppl`` and ``mia_loss`` (mean NLL): ``exp(-NLL)``, both the geometric
      mean probability of the answer tokens; ``mia_min_k``: ``exp(value)``, the same over
      the least likely 40% of the tokens;
    * ``truth_ratio``: ``1 - R`` (``R = 1``: no preference between true and false answers).

    ``mia_zlib`` and ``mia_min_k_pp`` have no chance level; they are judged only against a
    reference model's score (:func:`knowledge_kept`).
    """
    v = np.asarray(value, dtype=np.float64)
    name = m.name
    if name in ("ppl",):
        return 1.0 / v
    if name in ("mia_loss",):
        return np.exp(-v)
    if name in ("mia_min_k",):
        return np.exp(v)
    if name in ("truth_ratio",):
        return 1.0 - v
    if m.higher_is_more_knowledge and math.isfinite(m.lower_bound) and math.isfinite(m.upper_bound):
        return v - m.lower_bound  # es, em, prob, rouge_l and bounded metrics registered elsewhere
    return None  # no chance level known: compare with a reference, or not at all


def knowledge_kept(clean, attacked, metric: "str | Metric", reference=None) -> float | None:
    """The share of the original's knowledge that survives an attack, on one scale for
    every metric: ``(K(attacked) - K0) / (K(clean) - K0)``.

    ``K`` maps a score onto the knowledge scale of :func:`_as_knowledge` (higher = more,
    0 = chance), so ES 1.0 -> 0.4 keeps 0.4 and perplexity 1.01 -> 1.03 (token probability
    0.990 -> 0.971) keeps 0.98.  ``K0``, the "no knowledge" level, is the chance level, or,
    when ``reference`` (the never-knew reference model's score with no attack) is given, the
    reference's knowledge: then the share is of the original's *distance to the reference*.
    Arrays (per-sample scores) are mapped per sample, then averaged.  ``None`` when there
    is nothing to measure: a metric with no chance level and no reference, a non-finite
    score, or an original that shows no more knowledge than the no-knowledge level.
    """
    m = get_metric(metric)
    scale = (lambda v: _as_knowledge(v, m)) if _as_knowledge(0.5, m) is not None else None
    if scale is None and reference is not None:  # no chance level: the raw score, oriented
        sign = 1.0 if m.higher_is_more_knowledge else -1.0
        scale = lambda v: sign * np.asarray(v, dtype=np.float64)  # noqa: E731
    if scale is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        kc, ka = float(np.mean(scale(clean))), float(np.mean(scale(attacked)))
        k0 = float(np.mean(scale(reference))) if reference is not None else 0.0
    if not all(math.isfinite(x) for x in (kc, ka, k0)) or kc <= k0:
        return None
    return (ka - k0) / (kc - k0)


def judged_by_control(attack) -> bool:
    """Whether an attack can be uninformative: attacks that change what the model computes
    (``weight`` and ``representation`` kinds) can break it; a prompt attack cannot, so
    the original failing under one makes it a weak attack, not a broken model."""
    return getattr(attack, "kind", "") != "prompt"


def attack_is_uninformative(clean_original, attacked_original, metric: "str | Metric",
                            tolerance: float = 0.5, *, reference=None, attack=None) -> bool:
    """True when an attack destroys the *original* model's knowledge: the original keeps
    less than ``tolerance`` of it (:func:`knowledge_kept`, measured from the reference's
    score when one is given, else from the metric's chance level).  With ``attack``, only
    attacks :func:`judged_by_control` can be uninformative.  This one rule serves the
    assertions and the metric audit.  The paper: such a weight attack must be reported as
    uninformative, not as "still forgotten".
    """
    if attack is not None and not judged_by_control(attack):
        return False
    if not 0 < tolerance <= 1:
        return False
    kept = knowledge_kept(clean_original, attacked_original, metric, reference)
    return kept is not None and kept < tolerance
