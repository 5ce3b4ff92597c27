"""Metrics: pure per-sample functions, and the registry of the names users type.

Every metric declares its direction (``higher_is_more_knowledge``) and its range, so
a threshold is always read in the direction of "more knowledge" and nobody has to
remember which way a number points.

Definitions (``x`` prompt, ``y`` the answer tokens, ``|y|`` their number):

* ``es`` (extraction strength): ``1 - k*/|y|`` with ``k*`` the smallest ``k`` such that
  greedy decoding from ``[x, y_<k]`` reproduces ``y_>=k``; 0 when no suffix is
  reproduced.  Greedy decoding reproduces ``y_>=k`` iff the teacher-forced argmax is
  right at every position from ``k`` on, so ``k*`` is one plus the last wrong position.
* ``em`` (exact memorisation): fraction of positions whose argmax is the answer token.
* ``prob``: ``exp(-mean NLL)``; ``ppl``: ``exp(mean NLL)``.
* ``truth_ratio``: TOFU's ``R = P(perturbed) / P(paraphrased)`` with ``P = exp(-mean NLL)``,
  geometric mean over the perturbed answers.  Small R = the model prefers the true
  answer, so lower means more knowledge.  TOFU's forget-side summary is
  :func:`truth_ratio_forget_summary`.
* ``mia_loss``: mean NLL.  ``mia_zlib``: mean NLL divided by the zlib-compressed length
  (bytes) of the answer.  ``mia_min_k``: mean of the lowest ``k`` (40%) token log-probs.
  ``mia_min_k_pp``: the same over log-probs standardised by the mean and standard
  deviation of ``log p`` under the next-token distribution (Min-K%++).
* ``rouge_l``: ROUGE-L recall of the greedy generation against the answer (TOFU).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .registry import Registry

MIN_K_FRACTION = 0.4


# ---------------------------------------------------------------- pure functions

def extraction_strength(correct: Sequence[bool]) -> float:
    c = np.asarray(correct, dtype=bool)
    n = len(c)
    if n == 0:
        return float("nan")
    wrong = np.flatnonzero(~c)
    k_star = 0 if len(wrong) == 0 else int(wrong[-1]) + 1
    return 1.0 - k_star / n


def exact_memorization(correct: Sequence[bool]) -> float:
    c = np.asarray(correct, dtype=bool)
    return float(c.mean()) if len(c) else float("nan")


def mean_nll(logprob: Sequence[float]) -> float:
    lp = np.asarray(logprob, dtype=np.float64)
    return float(-lp.mean()) if len(lp) else float("nan")


def answer_probability(logprob: Sequence[float]) -> float:
    return math.exp(-mean_nll(logprob))


def perplexity(logprob: Sequence[float]) -> float:
    nll = mean_nll(logprob)
    return math.exp(nll) if nll < 700 else float("inf")


def zlib_ratio(logprob: Sequence[float], text: str) -> float:
    return mean_nll(logprob) / len(zlib.compress(text.encode("utf-8")))


def min_k_mean(values: Sequence[float], k: float = MIN_K_FRACTION) -> float:
    v = np.sort(np.asarray(values, dtype=np.float64))
    if len(v) == 0:
        return float("nan")
    n = max(1, int(math.ceil(k * len(v))))
    return float(v[:n].mean())


def min_k_plus_plus(logprob, mu, sigma, k: float = MIN_K_FRACTION) -> float:
    lp, mu, sigma = (np.asarray(a, dtype=np.float64) for a in (logprob, mu, sigma))
    z = (lp - mu) / np.maximum(sigma, 1e-12)
    return min_k_mean(z, k)


def truth_ratio(paraphrased_logprob: Sequence[float], perturbed_logprobs: Sequence[Sequence[float]]) -> float:
    """``exp(mean_i(mean log p(perturbed_i)) - mean log p(paraphrased))``."""
    pert = np.mean([-mean_nll(lp) for lp in perturbed_logprobs])
    return float(math.exp(pert + mean_nll(paraphrased_logprob)))


def truth_ratio_forget_summary(ratios: Sequence[float]) -> float:
    """TOFU's forget-side truth ratio: ``mean(min(R, 1/R))`` (1 = no preference)."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(r, 1.0 / r)))


def rouge_l_recall(generated: str, reference: str) -> float:
    return _rouge_scorer().score(reference, generated)["rougeL"].recall


_SCORER = None


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer
        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER


# ---------------------------------------------------------------- metric objects

@dataclass(frozen=True)
class Metric:
    """A per-sample metric.

    ``source`` says what it needs: ``"forward"`` (the token statistics of one
    teacher-forced pass; ``fn(stats, answer_text) -> float``), ``"truth_ratio"``
    (extra passes over paraphrased and perturbed answers) or ``"generation"``
    (greedy generations; ``fn(generated, reference) -> float``).
    """

    name: str
    higher_is_more_knowledge: bool
    lower_bound: float
    upper_bound: float
    source: str
    fn: object
    description: str = ""

    @property
    def direction(self) -> str:
        return "higher = more knowledge" if self.higher_is_more_knowledge else "lower = more knowledge"

    def more_knowledge(self, a: float, b: float) -> bool:
        """Is ``a`` strictly more knowledge than ``b``?"""
        return a > b if self.higher_is_more_knowledge else a < b

    def knowledge_max(self, values):
        """Element-wise "most knowledge" of arrays (worst case for forgetting)."""
        return np.fmax.reduce(values) if self.higher_is_more_knowledge else np.fmin.reduce(values)

    def in_range(self, value: float) -> bool:
        return self.lower_bound <= value <= self.upper_bound

    def key(self) -> str:
        return self.name


METRICS: Registry[Metric] = Registry("metric")
INF = float("inf")


def _register(*args, **kwargs) -> Metric:
    m = Metric(*args, **kwargs)
    METRICS.register(m.name, m)
    return m


_register("es", True, 0.0, 1.0, "forward", lambda s, text: extraction_strength(s["correct"]),
          "extraction strength, 1 - k*/|y|")
_register("em", True, 0.0, 1.0, "forward", lambda s, text: exact_memorization(s["correct"]),
          "exact memorisation, share of answer tokens that are the argmax")
_register("prob", True, 0.0, 1.0, "forward", lambda s, text: answer_probability(s["logprob"]),
          "answer probability, exp(-mean NLL)")
_register("ppl", False, 1.0, INF, "forward", lambda s, text: perplexity(s["logprob"]),
          "answer perplexity, exp(mean NLL)")
_register("mia_loss", False, 0.0, INF, "forward", lambda s, text: mean_nll(s["logprob"]),
          "LOSS membership score, mean NLL of the answer")
_register("mia_zlib", False, 0.0, INF, "forward", lambda s, text: zlib_ratio(s["logprob"], text),
          "zlib membership score, mean NLL / zlib length")
_register("mia_min_k", True, -INF, 0.0, "forward", lambda s, text: min_k_mean(s["logprob"]),
          "Min-K% membership score, mean of the lowest 40% token log-probs")
_register("mia_min_k_pp", True, -INF, INF, "forward",
          lambda s, text: min_k_plus_plus(s["logprob"], s["mu"], s["sigma"]),
          "Min-K%++ membership score, standardised log-probs")
_register("truth_ratio", False, 0.0, INF, "truth_ratio", truth_ratio,
          "TOFU truth ratio P(perturbed)/P(paraphrased)")
_register("rouge_l", True, 0.0, 1.0, "generation", rouge_l_recall,
          "ROUGE-L recall of the greedy answer")


def get_metric(metric: str | Metric) -> Metric:
    if isinstance(metric, Metric):
        return metric
    return METRICS.get(metric)


def reduce_scores(values: Sequence[float], how: str = "mean") -> float:
    """``mean``, ``max``, ``min``, ``median`` or a quantile ``qNN`` (e.g. ``q90``)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan")
    how = how.strip().lower()
    if how == "mean":
        return float(v.mean())
    if how == "max":
        return float(v.max())
    if how == "min":
        return float(v.min())
    if how == "median":
        return float(np.median(v))
    if how.startswith("q") and how[1:].replace(".", "", 1).isdigit():
        q = float(how[1:])
        if 0 <= q <= 100:
            return float(np.quantile(v, q / 100.0))
    from .errors import ConfigError
    raise ConfigError(f"reduce={how!r} is not 'mean', 'max', 'min', 'median' or a quantile like 'q90'")


# ---------------------------------------------------------------- membership inference

def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float], metric: str | Metric) -> float:
    """AUC of telling members (forget) from non-members (holdout) with a MIA score.

    Scores are oriented so that "more knowledge" means "member"; ties count half
    (Mann-Whitney U).  0.5 = indistinguishable.
    """
    m = get_metric(metric)
    a = np.asarray(member_scores, dtype=np.float64)
    b = np.asarray(nonmember_scores, dtype=np.float64)
    if not m.higher_is_more_knowledge:
        a, b = -a, -b
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    greater = (a[:, None] > b[None, :]).sum()
    ties = (a[:, None] == b[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(a) * len(b)))


def privleak(auc_unlearned: float, auc_reference: float) -> float:
    """MUSE PrivLeak: ``(AUC_unlearned - AUC_reference) / AUC_reference * 100``."""
    return (auc_unlearned - auc_reference) / auc_reference * 100.0


from . import multiple_choice as _multiple_choice  # noqa: E402,F401  registers mc_acc, mc_prob, mc_acc_text
