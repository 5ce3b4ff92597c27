"""Metrics: pure per-sample functions, and the registry of the names users type.

Every metric declares its direction (``higher_is_more_knowledge``) and its range, so
a threshold is always read in the direction of "more knowledge" and nobody has to
remember which way a number points.  Reductions over samples (:func:`reduce_scores`)
are read in the same direction: ``max`` is the sample showing the most knowledge.

Definitions (``x`` prompt, ``y`` the answer tokens, ``|y|`` their number); the
convention each follows, its source and the test that checks it against an independent
implementation are listed in ``docs/metrics.md``:

* ``es`` (extraction strength): ``1 - k*/|y|`` with ``k*`` the smallest ``k`` such that
  greedy decoding from ``[x, y_<k]`` reproduces ``y_>=k``; 0 when no suffix is
  reproduced.  Greedy decoding reproduces ``y_>=k`` iff the teacher-forced argmax is
  right at every position from ``k`` on, so ``k*`` is one plus the last wrong position.
* ``em`` (exact memorisation): fraction of positions whose argmax is the answer token.
* ``prob``: ``exp(-mean NLL)``; ``ppl``: ``exp(mean NLL)``.
* ``truth_ratio``: TOFU's ``R = P(perturbed) / P(paraphrased)`` with ``P = exp(-mean NLL)``,
  geometric mean over the perturbed answers.  Small R = the model prefers the true
  answer, so lower means more knowledge.  ``truth_ratio_tofu``: TOFU's forget-side form
  ``min(R, 1/R)`` per sample (bounded in [0, 1], 1 = no preference); its mean is TOFU's
  reported forget truth ratio (:func:`truth_ratio_forget_summary`).
* ``mia_loss``: mean NLL.  ``mia_zlib``: mean NLL divided by the zlib-compressed length
  (bytes) of the answer.  ``mia_min_k``: mean of the lowest ``max(1, int(k * |y|))``
  (k = 40%) token log-probs, as Min-K%++, MUSE and OpenUnlearning count them.
  ``mia_min_k_pp``: the same over log-probs standardised by the mean and standard
  deviation of ``log p`` under the next-token distribution (Min-K%++), with the
  variance floored at ``1e-6`` as OpenUnlearning does.
* ``rouge_l``: ROUGE-L recall of the greedy generation against the answer (TOFU; Porter
  stemmer on, as TOFU and OpenUnlearning score it).
* ``rouge_l_f1``: ROUGE-L F1 of the greedy generation against the answer (MUSE's VerbMem and
  KnowMem; stemmer off, as MUSE's ``RougeEvalLogger`` scores it).

TOFU's forget quality and model utility (:func:`forget_quality`, :func:`model_utility`) live in
:mod:`pytest_unlearn.tofu` and are re-exported here.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .registry import Registry

MIN_K_FRACTION = 0.4
#: Min-K%++ divides by ``sqrt(max(variance, MIN_K_PP_VARIANCE_FLOOR))`` (OpenUnlearning's floor).
MIN_K_PP_VARIANCE_FLOOR = 1e-6


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
    """Mean of the ``max(1, int(len * k))`` lowest values (Min-K%: ``int``, as in the Min-K%++,
    MUSE and OpenUnlearning code; at least one, as OpenUnlearning)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if len(v) == 0:
        return float("nan")
    n = max(1, int(len(v) * k))
    return float(v[:n].mean())


def min_k_plus_plus(logprob, mu, sigma, k: float = MIN_K_FRACTION) -> float:
    """Min-K%++: :func:`min_k_mean` of ``(log p(y_t) - mu_t) / sqrt(var_t)``, with ``mu_t`` and
    ``sigma_t = sqrt(var_t)`` the mean and standard deviation of ``log p`` under the next-token
    distribution; the variance is floored at :data:`MIN_K_PP_VARIANCE_FLOOR` (OpenUnlearning)."""
    lp, mu, sigma = (np.asarray(a, dtype=np.float64) for a in (logprob, mu, sigma))
    z = (lp - mu) / np.sqrt(np.maximum(sigma * sigma, MIN_K_PP_VARIANCE_FLOOR))
    return min_k_mean(z, k)


def truth_ratio(paraphrased_logprob: Sequence[float], perturbed_logprobs: Sequence[Sequence[float]]) -> float:
    """``exp(mean_i(mean log p(perturbed_i)) - mean log p(paraphrased))``."""
    pert = np.mean([-mean_nll(lp) for lp in perturbed_logprobs])
    return float(math.exp(pert + mean_nll(paraphrased_logprob)))


def truth_ratio_symmetric(ratio: float) -> float:
    """TOFU's per-sample forget-side form of a truth ratio: ``min(R, 1/R)`` in [0, 1]
    (1 = no preference between the true and the perturbed answers)."""
    r = float(ratio)
    if r == 0.0:
        return 0.0
    return min(r, 1.0 / r)


def truth_ratio_forget_summary(ratios: Sequence[float]) -> float:
    """TOFU's forget-side truth ratio: ``mean(min(R, 1/R))`` (1 = no preference); the
    mean of the ``truth_ratio_tofu`` metric."""
    return float(np.mean([truth_ratio_symmetric(r) for r in ratios]))


def rouge_l_recall(generated: str, reference: str) -> float:
    return _rouge_scorer().score(reference, generated)["rougeL"].recall


def rouge_l_f1(generated: str, reference: str) -> float:
    """ROUGE-L F1 (``fmeasure``) with MUSE's settings: ``rouge_score``, no stemmer."""
    return _rouge_scorer(stem=False).score(reference, generated)["rougeL"].fmeasure


_SCORERS: dict = {}


def _rouge_scorer(stem: bool = True):
    if stem not in _SCORERS:
        from rouge_score import rouge_scorer
        _SCORERS[stem] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
    return _SCORERS[stem]


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


#: The entry-point group through which another distribution adds metrics (see docs/extending.md).
METRIC_ENTRY_POINTS = "pytest_unlearn.metrics"


def _adopt_metric(obj) -> "tuple[str, Metric] | None":
    return (obj.name, obj) if isinstance(obj, Metric) else None


METRICS: Registry[Metric] = Registry("metric", entry_point_group=METRIC_ENTRY_POINTS, adopt=_adopt_metric)
INF = float("inf")
#: What a metric registered from outside may need (``multiple_choice`` metrics are built in).
METRIC_SOURCES = ("forward", "generation", "truth_ratio")


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
_register("truth_ratio_tofu", False, 0.0, 1.0, "truth_ratio",
          lambda para, pert: truth_ratio_symmetric(truth_ratio(para, pert)),
          "TOFU forget truth ratio min(R, 1/R), 1 = no preference")
_register("rouge_l", True, 0.0, 1.0, "generation", rouge_l_recall,
          "ROUGE-L recall of the greedy answer")
_register("rouge_l_f1", True, 0.0, 1.0, "generation", rouge_l_f1,
          "ROUGE-L F1 of the greedy answer (MUSE)")


def register_metric(*, name: str, fn, higher_is_more_knowledge: bool, range: tuple[float, float],
                    source: str = "forward", description: str = "", replace: bool = False) -> Metric:
    """Register a per-sample metric under ``name``, so that every assertion, the audit and the
    command line accept it by name; returns the :class:`Metric`.

    ``fn`` is called per sample, with what ``source`` says: ``"forward"``
    ``fn(stats, answer_text)`` (``stats["logprob"]``, ``stats["correct"]``, ``stats["mu"]``,
    ``stats["sigma"]``: per answer token, from one teacher-forced pass), ``"generation"``
    ``fn(generated, reference)`` (the greedy answer and the reference answer) or
    ``"truth_ratio"`` ``fn(paraphrased_logprob, perturbed_logprobs)``.  Direction and range
    are data: ``higher_is_more_knowledge`` says which way a threshold is read, ``range``
    ``(lower, upper)`` (``float("inf")`` for unbounded) is where every score must lie.
    A name already registered raises :class:`~pytest_unlearn.errors.RegistrationError`
    unless ``replace=True``.
    """
    from .errors import RegistrationError

    if not isinstance(name, str) or not name.strip() or name != name.strip() or any(c in name for c in ":+,= "):
        raise RegistrationError(f"metric name {name!r} must be a non-empty word (no spaces, ':', '+', ',', '=')")
    if not callable(fn):
        raise RegistrationError(f"metric {name!r}: fn must be callable, got {type(fn).__name__}")
    if not isinstance(higher_is_more_knowledge, bool):
        raise RegistrationError(f"metric {name!r}: higher_is_more_knowledge must be True or False")
    if source not in METRIC_SOURCES:
        raise RegistrationError(f"metric {name!r}: source must be one of {', '.join(METRIC_SOURCES)}, "
                                f"got {source!r}")
    try:
        lower, upper = (float(v) for v in range)
    except (TypeError, ValueError):
        raise RegistrationError(f"metric {name!r}: range must be two numbers (lower, upper), "
                                f"got {range!r}") from None
    if not lower < upper:  # also refuses NaN
        raise RegistrationError(f"metric {name!r}: range ({lower}, {upper}) must have lower < upper")
    m = Metric(name, higher_is_more_knowledge, lower, upper, source, fn, description)
    METRICS.register(name, m, replace=replace)
    return m


def get_metric(metric: str | Metric) -> Metric:
    if isinstance(metric, Metric):
        return metric
    return METRICS.get(metric)


REDUCTIONS = "'mean', 'median', 'max', 'min' or a quantile like 'q90'"


def parse_reduce(how) -> str:
    """The normalised name of a reduction, or :class:`ConfigError`.

    ``mean``, ``median``, ``max``, ``min`` or ``qNN`` (``0 <= NN <= 100``, e.g. ``q90``).
    """
    from .errors import ConfigError

    text = how.strip().lower() if isinstance(how, str) else None
    if text in ("mean", "median", "max", "min"):
        return text
    if text and text[0] == "q" and text[1:].replace(".", "", 1).isdigit() and text[1:].isascii():
        if 0.0 <= float(text[1:]) <= 100.0:
            return text
    try:
        shown = repr(how)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        shown = f"<{type(how).__name__}>"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ConfigError(f"reduce={shown} is not {REDUCTIONS}")


def reduction_is_lenient(how: str) -> bool:
    """Whether a reduction reads less knowledge than the mean would, in general:
    ``min`` (the sample with the least knowledge) and quantiles below the median."""
    how = parse_reduce(how)
    return how == "min" or (how[0] == "q" and float(how[1:]) < 50.0)


def reduce_rows(matrix, how: str, metric: "str | Metric | None" = None) -> np.ndarray:
    """A reduction over the last axis, read in ``metric``'s knowledge direction.

    ``mean`` and ``median`` do not depend on the direction.  ``max`` is the sample that
    shows the *most knowledge* (the largest value when higher means more knowledge, the
    smallest for ``ppl``, ``mia_loss``, ``mia_zlib``, ``truth_ratio``), ``min`` the one
    with the least, and ``qNN`` the NN-th percentile of knowledge (for lower-is-more
    metrics the (100 - NN)-th percentile of the raw values; linear interpolation).  The
    result is in the metric's own units.  ``max``, ``min`` and ``qNN`` need the metric.
    """
    how = parse_reduce(how)
    v = np.asarray(matrix, dtype=np.float64)
    if how == "mean":
        return v.mean(axis=-1)
    if how == "median":
        return np.median(v, axis=-1)
    if metric is None:
        raise ValueError(f"reduce={how!r} depends on the metric's direction: pass the metric")
    sign = 1.0 if get_metric(metric).higher_is_more_knowledge else -1.0
    k = sign * v  # knowledge orientation: larger = more knowledge
    if how == "max":
        out = k.max(axis=-1)
    elif how == "min":
        out = k.min(axis=-1)
    else:
        out = np.quantile(k, float(how[1:]) / 100.0, axis=-1)
    return sign * out


def reduce_scores(values: Sequence[float], how: str = "mean", metric: "str | Metric | None" = None) -> float:
    """One number for per-sample ``values``: :func:`reduce_rows` of a 1-D array
    (``mean``, ``median``, ``max``, ``min``, ``qNN``; read in ``metric``'s knowledge direction)."""
    v = np.asarray(values, dtype=np.float64)
    how = parse_reduce(how)
    if len(v) == 0:
        return float("nan")
    return float(reduce_rows(v, how, metric))


# ---------------------------------------------------------------- membership inference

def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float], metric: str | Metric) -> float:
    """AUC of telling members (forget) from non-members (holdout) with a MIA score.

    Scores are oriented so that "more knowledge" means "member"; ties count half
    (Mann-Whitney U, equal to the area under ``sklearn.metrics.roc_curve``).
    0.5 = indistinguishable; 1 = every member reads as more of a member than every
    non-member (a model that memorised the forget set).  This is the conventional
    orientation (OpenUnlearning's ``mia_*`` AUCs); MUSE reports ``1 -`` this value,
    see :func:`privleak`.
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
    """MUSE's PrivLeak, in percent, from two :func:`mia_auc` values (forget = members,
    holdout = non-members) of the unlearned model and of the reference (retrained) model.

    MUSE computes its AUC with the holdout set as the positive class (``metrics/privleak.py``:
    ``roc_curve`` of ``forget`` = 0 / ``holdout`` = 1 on ``-Min-40%``), which is ``1 -``
    :func:`mia_auc`; PrivLeak is then ``(AUC_unlearned - AUC_retrain) / AUC_retrain * 100`` on
    that scale, as OpenUnlearning's ``privleak`` also computes it.  So a model that still
    knows the forget set (``mia_auc`` near 1) reads close to **-100**, the retrained model
    **0**, and a positive value means the forget set looks *less* familiar than fresh data
    (over-unlearning).  Example: ``privleak(0.99724, 0.448)`` = -99.5.
    """
    muse_unlearned = 1.0 - float(auc_unlearned)
    muse_reference = 1.0 - float(auc_reference)
    if muse_reference == 0.0:
        raise ValueError("privleak is undefined for a reference AUC of 1: the reference model "
                         "separates the forget set from the holdout perfectly")
    return (muse_unlearned - muse_reference) / muse_reference * 100.0


from . import multiple_choice as _multiple_choice  # noqa: E402,F401  registers mc_acc, mc_prob, mc_acc_text
from .tofu import forget_quality, harmonic_mean, ks_2samp, model_utility  # noqa: E402,F401  TOFU's numbers
