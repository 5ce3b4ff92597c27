"""TOFU's two headline numbers, as TOFU and OpenUnlearning define them.

* **Forget quality** (:func:`forget_quality`): the p-value of the two-sample
  Kolmogorov-Smirnov test between the per-sample truth ratios of the unlearned model and of
  the reference (retain-only) model on the forget set.  The truth ratio fed to the test is
  the raw ``R = P(perturbed) / P(paraphrased)`` of each sample (``P = exp(-mean NLL)``,
  geometric mean over the perturbed answers): the ``truth_ratio`` metric, not its
  ``min(R, 1/R)`` summary (TOFU ``aggregate_eval_stat.py``; OpenUnlearning ``ks_test`` reads
  the per-index ``truth_ratio`` scores).  High p = the two distributions cannot be told
  apart = the model looks like one that never saw the forget set.  TOFU reports it (often
  as ``log10``) and reads ``p >= 0.05`` as forgotten.
* **Model utility** (:func:`model_utility`): the harmonic mean of, per split the user has,
  the answer probability, ROUGE-L recall of the greedy answer and the "true better" truth
  ratio ``mean(max(0, 1 - R))``.  On ``retain`` the probability is ``exp(-mean NLL)`` of the
  answer and ``R`` uses the paraphrased answer; on ``real_authors`` / ``world_facts``
  (no paraphrase) the probability is normalised over the options,
  ``P(answer) / (P(answer) + sum P(perturbed))``, and ``R`` uses the answer itself.
  Component names follow OpenUnlearning (``retain_Q_A_Prob``, ``ra_Q_A_Prob_normalised``,
  ``wf_Truth_Ratio``, ...).

The KS p-value is computed here exactly (no scipy): for ``m * n <=``
:data:`EXACT_KS_MAX_CELLS`, the probability, over the ``C(m+n, m)`` equally likely orders
of the pooled samples, that the statistic reaches the observed one (the exact null
distribution that ``scipy.stats.ks_2samp(method="exact")`` gives); beyond that the
Kolmogorov limit distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from .reporting import Verdict

if TYPE_CHECKING:
    import pandas as pd

    from .suite import Suite

__all__ = ["ks_2samp", "forget_quality", "harmonic_mean", "model_utility", "truth_ratio_true_better",
           "normalised_probability", "ForgetQualityResult", "ModelUtility", "tofu_forget_quality",
           "assert_forget_quality", "tofu_model_utility"]

EXACT_KS_MAX_CELLS = 4_000_000
#: OpenUnlearning's guard in the truth ratio and the normalised probability
EPS = 1e-10


# ---------------------------------------------------------------- pure functions

def ks_2samp(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """``(D, p)``: the two-sample KS statistic ``max |F_a - F_b|`` and its two-sided p-value."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("the KS test needs at least one value in each sample")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("the KS test got NaN values")
    values = np.unique(np.concatenate([x, y]))
    i = np.searchsorted(np.sort(x), values, side="right").astype(np.int64)
    j = np.searchsorted(np.sort(y), values, side="right").astype(np.int64)
    h = int(np.max(np.abs(i * n - j * m)))  # D * m * n, an integer
    d = h / (m * n)
    if h == 0:
        return 0.0, 1.0
    if m * n <= EXACT_KS_MAX_CELLS:
        return d, _exact_p(m, n, h)
    return d, _kolmogorov_sf(d * math.sqrt(m * n / (m + n)))


def _exact_p(m: int, n: int, h: int) -> float:
    """P(max over the path |i*n - j*m| >= h) for a uniformly random order of m a's and n b's.

    The walk from (0, 0) to (m, n) takes an a with the hypergeometric probability
    ``(m - i) / (m + n - i - j)``; the mass of paths still strictly inside is carried along,
    and the mass that first steps onto a cell with ``|i*n - j*m| >= h`` is summed: that sum
    is the p-value (accurate for tiny p, unlike one minus the mass left inside).
    """
    outside = 0.0
    previous = None  # row ii - 1 (mass of inside paths at each (ii - 1, jj))
    for ii in range(m + 1):
        row = [0.0] * (n + 1)
        for jj in range(n + 1):
            if ii == 0 and jj == 0:
                row[0] = 1.0
                continue
            left = n + m - ii - jj + 1  # items left before the last step
            incoming = 0.0
            if ii > 0:
                incoming += previous[jj] * (m - ii + 1) / left
            if jj > 0:
                incoming += row[jj - 1] * (n - jj + 1) / left
            if abs(ii * n - jj * m) >= h:
                outside += incoming
            else:
                row[jj] = incoming
        previous = row
    return float(min(1.0, max(0.0, outside)))


def _kolmogorov_sf(t: float) -> float:
    """P(K > t) for the Kolmogorov distribution: ``2 sum (-1)^(k-1) exp(-2 k^2 t^2)``."""
    if t <= 0:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * t * t) for k in range(1, 101))
    return float(min(1.0, max(0.0, 2.0 * total)))


def forget_quality(unlearned_truth_ratios: Sequence[float], reference_truth_ratios: Sequence[float]) -> float:
    """TOFU's forget quality: the KS two-sample p-value between the unlearned model's and the
    reference (retain-only) model's raw truth ratios ``P(perturbed)/P(paraphrased)`` on the
    forget set.  1 = indistinguishable from the reference; TOFU reads >= 0.05 as forgotten."""
    return ks_2samp(unlearned_truth_ratios, reference_truth_ratios)[1]


def harmonic_mean(values: Sequence[float]) -> float:
    """``k / sum(1 / v)``; 0 when any value is 0 (as ``scipy.stats.hmean``); values must be >= 0."""
    v = np.asarray(list(values), dtype=np.float64)
    if len(v) == 0:
        raise ValueError("the harmonic mean of no values is undefined")
    if (v < 0).any() or np.isnan(v).any():
        raise ValueError(f"the harmonic mean needs non-negative values, got {v.tolist()}")
    if (v == 0).any():
        return 0.0
    return float(len(v) / np.sum(1.0 / v))


def model_utility(components: Mapping[str, float]) -> float:
    """TOFU's model utility: the harmonic mean of its components (see the module docstring)."""
    return harmonic_mean(components.values())


def truth_ratio_true_better(ratios: Sequence[float]) -> float:
    """TOFU's truth ratio on data the model should still know: ``mean(max(0, 1 - R))``."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def normalised_probability(p_answer: float, p_perturbed: Sequence[float]) -> float:
    """``P(answer) / (P(answer) + sum P(perturbed))`` (TOFU's probability on real_authors and
    world_facts; OpenUnlearning adds 1e-10 to the denominator)."""
    return float(p_answer / (p_answer + float(np.sum(p_perturbed)) + EPS))


# ---------------------------------------------------------------- on models

@dataclass
class ForgetQualityResult(Verdict):
    """``p_value`` (the forget quality), the KS ``statistic`` and the per-sample raw truth ratios."""

    p_value: float
    statistic: float
    min_p: float | None
    scores: "pd.DataFrame"  # columns model, reference (raw truth ratios), indexed by sample id
    passed: bool = True
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict, repr=False)
    message: str = field(default="", repr=False)

    @property
    def log10(self) -> float:
        return math.log10(self.p_value) if self.p_value > 0 else float("-inf")


@dataclass
class ModelUtility:
    """TOFU's model utility (``value``) and the ``components`` it is the harmonic mean of."""

    value: float
    components: dict[str, float]
    splits: list[str]
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in self.components.items())
        return f"ModelUtility({self.value:.4f} = hmean of {shown})"


def _reference_or_error(suite: "Suite"):
    if suite.reference is None:
        from .config import flag, ini_key
        from .errors import ConfigError

        raise ConfigError(
            f"forget quality compares with a reference model that never saw the forget set (TOFU's "
            f"retain-only model, OpenUnlearning's tofu_<model>_retain90 for forget10): set "
            f"`{ini_key('reference')}` in pytest.ini / pyproject.toml or pass {flag('reference')} PATH")
    return suite.reference


def tofu_forget_quality(model=None, data=None, *, suite: "Suite | None" = None) -> ForgetQualityResult:
    """Forget quality of ``model`` (default: the unlearned model) on ``data`` (default: the
    forget set, TOFU's ``forget*_perturbed``) against the session's reference model."""
    import pandas as pd

    from .suite import current_suite

    suite = current_suite(suite)
    reference = _reference_or_error(suite)
    dataset = suite.data(data, default="forget")
    handle = suite.model(model)
    mine = suite.scorer.per_sample("truth_ratio", handle, dataset)
    theirs = suite.scorer.per_sample("truth_ratio", reference, dataset)
    d, p = ks_2samp(mine, theirs)
    notes = []
    if not dataset.has("paraphrased_answer"):
        notes.append(f"{dataset.source} has no 'paraphrased_answer': the truth ratios compare the perturbed "
                     "answers with the answer itself (TOFU's forget split uses the paraphrase)")
    frame = pd.DataFrame({"model": mine, "reference": theirs}, index=pd.Index(dataset.ids, name="sample"))
    return ForgetQualityResult(p, d, None, frame, True, notes)


_SPLITS = (("retain", "retain"), ("real_authors", "ra"), ("world_facts", "wf"))


def tofu_model_utility(model=None, *, retain=None, real_authors=None, world_facts=None,
                       suite: "Suite | None" = None) -> ModelUtility:
    """TOFU's model utility of ``model`` (default: the unlearned model) over the splits given:
    ``retain`` (default: the session's retain set, if configured; TOFU's ``retain_perturbed``),
    ``real_authors`` and ``world_facts`` (paths, Datasets or records; TOFU's ``*_perturbed``)."""
    from .metrics import answer_probability
    from .prompts import dataset_parts
    from .suite import current_suite

    suite = current_suite(suite)
    handle = suite.model(model)
    given = {"retain": retain, "real_authors": real_authors, "world_facts": world_facts}
    if given["retain"] is None and suite.has("retain"):
        given["retain"] = suite.retain
    components: dict[str, float] = {}
    notes: list[str] = []
    used: list[str] = []
    scorer = suite.scorer
    for split, short in _SPLITS:
        if given[split] is None:
            continue
        dataset = suite.data(given[split], default="retain")
        used.append(split)
        has_options = dataset.has("perturbed_answer")
        if split == "retain":
            components[f"{short}_Q_A_Prob"] = float(np.mean(scorer.per_sample("prob", handle, dataset)))
        elif not has_options:
            raise _missing_column(dataset, split, "perturbed_answer")
        else:
            p_answer = scorer.per_sample("prob", handle, dataset)
            parts = dataset_parts(dataset)
            flat = [(i, p.with_(answer=a)) for i, p in enumerate(parts)
                    for a in dataset.frame["perturbed_answer"][i]]
            stats = scorer.token_stats(handle, [p for _, p in flat])
            p_pert: list[list[float]] = [[] for _ in parts]
            for k, (i, _) in enumerate(flat):
                p_pert[i].append(answer_probability(stats.logprob[k]))
            components[f"{short}_Q_A_Prob_normalised"] = float(np.mean(
                [normalised_probability(p_answer[i], p_pert[i]) for i in range(len(parts))]))
        components[f"{short}_Q_A_ROUGE"] = float(np.mean(scorer.per_sample("rouge_l", handle, dataset)))
        if has_options:
            ratios = scorer.per_sample("truth_ratio", handle, dataset)
            components[f"{short}_Truth_Ratio"] = truth_ratio_true_better(ratios)
        else:
            notes.append(f"{split} ({dataset.source}) has no 'perturbed_answer': its truth ratio is left out")
    if not components:
        from .errors import ConfigError

        raise ConfigError("model utility needs at least one split: configure unlearn_retain or pass "
                          "retain=, real_authors= or world_facts=")
    return ModelUtility(model_utility(components), components, used, notes)


def _missing_column(dataset, split: str, column: str):
    from .errors import DataError

    return DataError(f"TOFU's {split} split needs a {column!r} column (TOFU's {split}_perturbed has it); "
                     f"this file has {', '.join(map(repr, dataset.frame.columns))}", path=dataset.source)


def __getattr__(name: str):
    """``assert_forget_quality`` lives with the other gates (:mod:`pytest_unlearn.gates.forget_quality`)."""
    if name == "assert_forget_quality":
        from .gates.forget_quality import assert_forget_quality

        return assert_forget_quality
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
