"""The three multiple-choice metrics: their per-sample definitions (lm-eval's), the metric
objects registered as ``mc_acc``, ``mc_prob`` and ``mc_acc_text``, and the hook through which
the :class:`~pytest_unlearn.scoring.Scorer` scores them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..metrics import METRICS, Metric
from .passes import choice_loglikelihoods, letter_scores
from .rows import is_multiple_choice

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import ModelHandle
    from ..prompts import PromptParts
    from ..scoring import Scorer

__all__ = ["MCMetric", "letter_accuracy", "letter_probability", "normalised_text_accuracy", "score_multiple_choice",
           "picked_choices", "scorable"]


def letter_accuracy(letter_logprobs: Sequence[float], answer: int) -> float:
    """1.0 when the first argmax of the letters' log-probabilities is ``answer``."""
    return float(int(np.argmax(np.asarray(letter_logprobs, dtype=np.float64))) == int(answer))


def letter_probability(letter_logprobs: Sequence[float], answer: int) -> float:
    """The correct letter's probability renormalised over the letters."""
    lp = np.asarray(letter_logprobs, dtype=np.float64)
    top = lp.max()
    return float(np.exp(lp[answer] - top) / np.exp(lp - top).sum())


def normalised_text_accuracy(loglikelihoods: Sequence[float], choices: Sequence[str], answer: int) -> float:
    """lm-eval's ``acc_norm``: argmax of ``loglikelihood / len(choice)``."""
    ll = np.asarray(loglikelihoods, dtype=np.float64)
    lengths = np.array([float(len(c)) for c in choices])
    return float(int(np.argmax(ll / lengths)) == int(answer))


# ---------------------------------------------------------------- metric objects

@dataclass(frozen=True)
class MCMetric(Metric):
    """A multiple-choice metric (``source == "multiple_choice"``); chance is 1 / choices."""

    chance: str = "1/choices"


def score_multiple_choice(scorer: "Scorer", m: Metric, handle: "ModelHandle", dataset: "Dataset",
                          parts: Sequence["PromptParts"], names: Sequence[str], *,
                          logits_fn: Callable | None = None, variant: str = "") -> np.ndarray:
    """Per-sample values of a multiple-choice metric (the :class:`~pytest_unlearn.scoring.Scorer` hook)."""
    if m.name == "mc_acc_text":
        lls, choices, answers = choice_loglikelihoods(scorer, handle, dataset, parts, names,
                                                      logits_fn=logits_fn, variant=variant, metric=m)
        return np.array([m.fn(ll, c, a) for ll, c, a in zip(lls, choices, answers)])
    lps, answers = letter_scores(scorer, handle, dataset, parts, names, logits_fn=logits_fn,
                                 variant=variant, metric=m)
    return np.array([m.fn(lp, a) for lp, a in zip(lps, answers)])


def picked_choices(scorer: "Scorer", m: Metric, handle: "ModelHandle", dataset: "Dataset",
                   parts: Sequence["PromptParts"], names: Sequence[str], *, logits_fn: Callable | None = None,
                   variant: str = "") -> list[int]:
    """Per row, the index of the choice that ``m`` counts as the model's answer: the most likely
    letter (``mc_acc``, ``mc_prob``) or the choice text most likely per character (``mc_acc_text``),
    read from the same passes (and cache entries) the metric is scored from."""
    if m.name == "mc_acc_text":
        lls, choices, _ = choice_loglikelihoods(scorer, handle, dataset, parts, names, logits_fn=logits_fn,
                                                variant=variant, metric=m)
        return [int(np.argmax(np.asarray(ll, dtype=np.float64) / np.array([float(len(c)) for c in ch])))
                for ll, ch in zip(lls, choices)]
    lps, _ = letter_scores(scorer, handle, dataset, parts, names, logits_fn=logits_fn, variant=variant, metric=m)
    return [int(np.argmax(np.asarray(lp, dtype=np.float64))) for lp in lps]


def _register(name: str, fn, description: str) -> None:
    if not METRICS.registered(name):
        METRICS.register(name, MCMetric(name, True, 0.0, 1.0, "multiple_choice", fn, description))


_register("mc_acc", letter_accuracy,
          "multiple-choice letter accuracy, lm-eval's zero-shot MMLU/WMDP prompt")
_register("mc_prob", letter_probability,
          "probability of the correct letter, renormalised over the letters")
_register("mc_acc_text", normalised_text_accuracy,
          "multiple-choice accuracy by choice-text log-likelihood per character (lm-eval acc_norm)")


def scorable(metric: Metric, dataset: "Dataset") -> bool:
    """Whether ``metric`` can score ``dataset``'s rows: a multiple-choice metric needs
    multiple-choice rows (calibration skips the forget score of a QA forget set when it
    calibrates on a multiple-choice utility set)."""
    return getattr(metric, "source", None) != "multiple_choice" or is_multiple_choice(dataset)
