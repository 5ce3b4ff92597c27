"""``assert_forget_quality``: check, measure (:func:`~pytest_unlearn.tofu.tofu_forget_quality`:
TOFU's KS p-value of truth ratios against the reference model), decide
(:func:`.verdict.forget_quality_passes`), record, message."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, UnlearningAssertionError
from ..formatting import number as fmt
from . import verdict
from .checks import number
from .record import base_record, data_info, model_info, run_recorded

if TYPE_CHECKING:
    from ..suite import Suite
    from ..tofu import ForgetQualityResult

__tracebackhide__ = True

__all__ = ["assert_forget_quality"]


def assert_forget_quality(min_p: float = 0.05, *, model=None, data=None,
                          suite: "Suite | None" = None) -> "ForgetQualityResult":
    """Fail unless TOFU's forget quality (the KS p-value of truth ratios, unlearned vs the
    session's reference model, on the forget set) is at least ``min_p``."""
    __tracebackhide__ = True
    record = base_record("forget_quality", "forget_quality", threshold=min_p, reduce="mean",
                         higher_is_more_knowledge=False,
                         direction="higher = closer to the reference model (forgotten)")
    result = run_recorded(record, lambda: _forget_quality_check(record, min_p, model, data, suite))
    if not result.passed:
        raise UnlearningAssertionError(result.message, result)
    return result


def _forget_quality_check(record: dict, min_p, model, data, suite) -> "ForgetQualityResult":
    from ..suite import current_suite
    from ..tofu import tofu_forget_quality

    min_p = number("min_p", min_p)
    if not 0.0 <= min_p <= 1.0:
        raise ConfigError(f"min_p is a p-value threshold in [0, 1], got {min_p:g}")
    suite = current_suite(suite)
    result = tofu_forget_quality(model, data, suite=suite)
    dataset = suite.data(data, default="forget")
    handle = suite.model(model)
    result.min_p = min_p
    result.passed = verdict.forget_quality_passes(result.p_value, min_p)
    result.record = record
    record.update(verdict=result.verdict, score=result.p_value, statistic=result.statistic, threshold=min_p,
                  log10_p=result.log10, data=data_info(dataset), model=model_info(handle),
                  reference=model_info(suite.reference), notes=result.notes,
                  attacks=[{"attack": "none", "kind": None, "score": result.p_value, "original": None,
                            "reference": None, "verdict": "ok" if result.passed else "leak"}],
                  samples={sid: {"scores": {"none": float(row.model)}, "reference": {"none": float(row.reference)}}
                           for sid, row in result.scores.iterrows()})
    if not result.passed:
        med = result.scores.median()
        result.message = "\n".join([
            f"forget quality (TOFU: KS two-sample p-value of the truth ratios P(perturbed)/P(paraphrased), "
            f"{handle.name} model vs the reference model, on {dataset.name}: {len(dataset)} samples, "
            f"{dataset.source})",
            f"p = {result.p_value:.4g} (log10 {result.log10:.2f}) is below min_p {fmt(min_p)}: the {handle.name} "
            f"model's truth ratios are distinguishable from a model that never saw the forget set "
            f"(KS statistic {fmt(result.statistic)}; median truth ratio {fmt(float(med['model']))} vs the "
            f"reference's {fmt(float(med['reference']))})",
            *result.notes,
            "next: unlearn further (more steps, a stronger forget loss) or, if the truth ratios are now "
            "*below* the reference's, less: over-unlearning is as distinguishable as remembering"])
        record["message"] = result.message
    return result
