"""Metric robustness audit: which metric can you trust for this model and data?

The paper's criterion (Wang et al., ICLR 2025, section 3): score each candidate metric
on many unlearned models before and after each red-team attack.  A robust metric keeps
a linear, near-identity relation across the models: the Pearson correlation (PCC) of
the after-attack scores with the before-attack scores is near 1, and for surface-level
attacks (prompt attacks here) the least-squares slope of after-vs-before is near 1 too.
A metric whose ranking of the models changes under a harmless rewording or a
quantization cannot tell you which unlearned model really forgot.

:func:`audit_metrics` runs that experiment: every metric x attack x split (forget and
retain), one reduced score per checkpoint (the mean over samples, as in the paper),
then PCC and slope across the checkpoints, a ranking and a recommendation (highest mean
PCC over attacks and splits; ties broken by the mean ``|slope - 1|`` over the
surface-level attacks).  :func:`assert_metric_robust` is the pytest form, on the active
suite's original model and data.

Cost.  One teacher-forced pass per model, split and prompt variant serves every
forward-pass metric at once (``es``, ``em``, ``prob``, ``ppl`` and the MIA scores);
``truth_ratio`` adds passes over the paraphrased and perturbed answers and ``rouge_l``
generates.  A weight attack (quantize, relearn, ablate), a chain (``relearn+logit_lens``)
and ``gcg`` (whose optimisation does not depend on the metric) are run once per model and split, and
all metrics are scored on the attacked weights: the audit runs the attack with one
metric while a capturing scorer records every scoring the attack does, computes the
other metrics from the same passes, and rebuilds each metric's outcome with the
attack's own rule (per sample, the most knowledge over everything the attack scored;
true of every built-in attack, and only they take this path).  The rebuilt outcome of
the metric the attack really ran is checked against the attack's own result; on any
mismatch, and for attacks defined elsewhere, each metric gets its own attack run.

Controls.  The same attacks run on the original model; a row whose attack also wipes
out the original's knowledge (:func:`~pytest_unlearn.attacks.attack_is_uninformative`)
is flagged ``uninformative``: its PCC says little about the metric.

The pieces: :mod:`.runner` (:func:`audit_metrics`), :mod:`.many_metrics` (one pass and one
attack run serving every metric), :mod:`.statistics` (fit, table, ranking) and :mod:`.result`
(:class:`AuditResult`).  Every name is importable from here, as before.

Importing this package is cheap (numpy and pandas load on use).
"""

from __future__ import annotations

from .many_metrics import attack_many, score_many
from .result import AuditResult
from .runner import CANDIDATE_METRICS, DEFAULT_ATTACKS, _as_dataset, audit_metrics, split_attack_list
from .statistics import ALGORITHM, NONE, RANK_DECIMALS, SPLITS, TABLE_COLUMNS, _ranking, fit_line

__all__ = ["AuditResult", "CANDIDATE_METRICS", "DEFAULT_ATTACKS", "assert_metric_robust", "audit_metrics",
           "fit_line", "split_attack_list"]


def __getattr__(name: str):
    """``assert_metric_robust`` lives with the other gates (:mod:`pytest_unlearn.gates.robust`)."""
    if name == "assert_metric_robust":
        from ..gates.robust import assert_metric_robust

        return assert_metric_robust
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
