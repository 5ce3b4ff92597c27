"""``assert_retained``: check, measure the model and the original on the retain set,
decide on the ratio of means (:func:`.verdict.retention`), record, message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ConfigError, UnlearningAssertionError
from ..reporting import Verdict
from . import verdict
from .checks import number
from .record import base_record, data_info, model_info, run_recorded

if TYPE_CHECKING:
    import pandas as pd

    from ..metrics import Metric
    from ..suite import Suite

__tracebackhide__ = True

__all__ = ["assert_retained", "RetentionResult"]


@dataclass
class RetentionResult(Verdict):
    """What ``assert_retained`` measured.  ``scores``: columns ``model`` and ``original``."""

    metric: "Metric"
    min_ratio: float
    score: float
    original_score: float
    ratio: float
    required: float
    scores: "pd.DataFrame"
    passed: bool
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict, repr=False)
    message: str = field(default="", repr=False)


def assert_retained(metric, *, min_ratio: float = 0.9, model=None, data=None,
                    suite: "Suite | None" = None) -> RetentionResult:
    """Fail when ``model``'s mean ``metric`` on ``data`` (default: the retain set) falls below
    ``min_ratio`` times the original model's, read in the knowledge direction."""
    __tracebackhide__ = True
    from ..suite import current_suite

    record = base_record("retained", metric, min_ratio=min_ratio)
    result = run_recorded(record, lambda: _retained(current_suite(suite), record, metric, min_ratio, model, data))
    if not result.passed:
        raise UnlearningAssertionError(result.message, result)
    return result


def _retained(suite: "Suite", record: dict, metric, min_ratio, model, data) -> RetentionResult:
    import numpy as np
    import pandas as pd

    from ..metrics import get_metric, reduce_scores
    from .measure import measure_retained
    from .messages import MIN_SHOWN_SAMPLES, retained_message, retained_samples

    # -- check
    m = get_metric(metric)
    if m.lower_bound < 0:
        raise ConfigError(f"assert_retained compares ratios, so it needs a metric with non-negative scores; "
                          f"{m.name} ranges over [{m.lower_bound:g}, {m.upper_bound:g}]")
    min_ratio = number("min_ratio", min_ratio)
    if min_ratio <= 0:
        raise ConfigError(f"min_ratio must be positive, got {min_ratio:g}")
    dataset = suite.data(data, default="retain")
    handle = suite.model(model)
    record.update(metric=m.name, direction=m.direction, higher_is_more_knowledge=m.higher_is_more_knowledge,
                  data=data_info(dataset), model=model_info(handle), reduce="mean", seed=suite.settings.seed)
    # -- measure
    meas = measure_retained(suite, m, handle, dataset)
    mv, ov = meas.model["none"], meas.controls["original"]["none"]
    # -- decide
    score, orig = reduce_scores(mv, "mean"), reduce_scores(ov, "mean")
    ratio, required, passed = verdict.retention(score, orig, min_ratio, m)
    notes = []
    if orig == 0 and m.higher_is_more_knowledge:
        notes.append(f"the original model scores 0 on {dataset.name}: there is nothing to retain")
    # -- record
    ids = list(dataset.ids)
    frame = pd.DataFrame({"model": mv, "original": ov}, index=pd.Index(ids, name="sample"))
    rows = [{"attack": "none", "kind": None, "score": score, "original": orig, "reference": None,
             "verdict": "ok" if passed else "lost", "uninformative": False, "cost": meas.costs["none"], "notes": []}]
    record.update(verdict="pass" if passed else "fail", score=score, original_score=orig, ratio=ratio,
                  threshold=required, min_ratio=min_ratio, bound=None, attacks=rows, notes=notes,
                  samples={sid: {"scores": {"none": float(mv[i])}, "original": {"none": float(ov[i])}}
                           for i, sid in enumerate(ids)}, worst_samples=[])
    result = RetentionResult(m, min_ratio, score, orig, ratio, required, frame, passed, notes, record)
    # -- message
    if not passed:
        loss = (ov - mv) if m.higher_is_more_knowledge else (mv - ov)
        chosen = [int(i) for i in np.argsort(-loss, kind="stable")[:MIN_SHOWN_SAMPLES]]
        shown = retained_samples(suite, m, handle, dataset, chosen, mv, ov)
        record["worst_samples"] = shown
        result.message = retained_message(m, handle, dataset, score, orig, ratio, min_ratio, required, shown)
        record["message"] = result.message
    return result
