"""``assert_metric_robust``: check, measure (:func:`~pytest_unlearn.audit.audit_metrics` on
the session's original model and checkpoints), decide per attack/split row
(:func:`.verdict.robustness_reasons`), record (kind ``robust``), message."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from ..audit import DEFAULT_ATTACKS, SPLITS
from ..errors import ConfigError, UnlearningAssertionError
from ..formatting import number as fmt, text_table
from . import verdict
from .record import base_record, data_info, model_info, run_recorded

if TYPE_CHECKING:
    from ..audit import AuditResult
    from ..suite import Suite

__tracebackhide__ = True

__all__ = ["assert_metric_robust"]



def assert_metric_robust(metric: str, *, under_attack: Sequence[Any] | str = DEFAULT_ATTACKS,
                         min_pcc: float = 0.8, max_slope_dev: float | None = None, checkpoints,
                         splits: Sequence[str] = SPLITS, suite: "Suite | None" = None) -> "AuditResult":
    """Fail unless ``metric`` is robust on the active suite's original model and data: across
    ``checkpoints`` (handles or paths), the PCC of after- vs before-attack scores reaches
    ``min_pcc`` for every attack and split, and, when ``max_slope_dev`` is given,
    ``|slope - 1| <= max_slope_dev`` for every surface-level (prompt) attack.

    Raises :class:`~pytest_unlearn.errors.UnlearningAssertionError` with the table (and the
    per-checkpoint scores behind every failing row); returns the :class:`AuditResult`.
    The check is recorded (kind ``robust``) in the JSON report, the summary and JUnit.
    """
    __tracebackhide__ = True
    record = base_record("robust", metric, threshold=min_pcc, max_slope_dev=max_slope_dev,
                         under_attack=[under_attack] if isinstance(under_attack, str) else list(under_attack))
    result, message = run_recorded(record, lambda: _robust(record, metric, under_attack, min_pcc, max_slope_dev,
                                                           checkpoints, splits, suite))
    if message:
        raise UnlearningAssertionError(message, result)
    return result


def _robust(record, metric, under_attack, min_pcc, max_slope_dev, checkpoints, splits, suite):
    from ..audit import audit_metrics
    from ..metrics import get_metric
    from ..suite import current_suite

    # -- check
    s = current_suite(suite)
    m = get_metric(metric)
    if isinstance(min_pcc, bool) or not isinstance(min_pcc, (int, float)) or not -1.0 <= min_pcc <= 1.0:
        raise ConfigError(f"min_pcc must be a number in [-1, 1], got {min_pcc!r}")
    if max_slope_dev is not None and (isinstance(max_slope_dev, bool) or not isinstance(max_slope_dev, (int, float))
                                      or max_slope_dev < 0):
        raise ConfigError(f"max_slope_dev must be a non-negative number or None, got {max_slope_dev!r}")
    record.update(metric=m.name, direction=m.direction, higher_is_more_knowledge=m.higher_is_more_knowledge,
                  threshold=float(min_pcc), reduce="mean", seed=s.settings.seed, model=model_info(s.original),
                  data=data_info(s.forget))
    # -- measure
    result = audit_metrics(s.original, checkpoints, s.forget, s.retain, metrics=[m.name], attacks=under_attack,
                           scorer=s.scorer, seed=s.settings.seed, progress=s.settings.progress, splits=splits,
                           loader=s.model)
    # -- decide, row by row
    body, failing, rows = [], [], []
    for r in result.table.itertuples():
        reasons = verdict.robustness_reasons(r.pcc, r.slope, r.surface, min_pcc, max_slope_dev)
        shown = "ok" if not reasons else "fail: " + ", ".join(reasons)
        if r.uninformative:
            shown += " (uninformative attack)"
        body.append([r.attack, r.split, fmt(r.pcc), fmt(r.slope), str(r.n), fmt(r.before_mean), fmt(r.after_mean),
                     shown])
        rows.append({"attack": f"{r.attack}/{r.split}", "spec": r.attack, "split": r.split,
                     "kind": "prompt" if r.surface else None, "score": float(r.pcc), "pcc": float(r.pcc),
                     "slope": float(r.slope), "n": int(r.n), "before": float(r.before_mean),
                     "after": float(r.after_mean), "original": None, "reference": None,
                     "verdict": "fail" if reasons else "ok", "reasons": reasons,
                     "uninformative": bool(r.uninformative)})
        if reasons:
            failing.append(r)
    pccs = [row["pcc"] for row in rows]
    score = math.nan if not pccs or any(math.isnan(p) for p in pccs) else min(pccs)
    # -- record
    record.update(verdict="fail" if failing else "pass", score=score, bound=None, attacks=rows,
                  checkpoints=list(result.checkpoints), notes=list(result.notes), worst_samples=[])
    if not failing:
        return result, ""
    # -- message
    bar = f"PCC >= {fmt(float(min_pcc))}" + (f" and |slope - 1| <= {fmt(float(max_slope_dev))} for prompt attacks"
                                             if max_slope_dev is not None else "")
    lines = [f"{m.name} ({m.description}; {m.direction}) is not robust on {len(result.checkpoints)} checkpoints: "
             f"{len(failing)} of {len(result.table)} attack/split rows miss the bar ({bar})",
             "(PCC and slope of the after-attack vs before-attack mean scores across the checkpoints; "
             "robust = PCC near 1, slope near 1 for surface-level attacks)", ""]
    lines += ["  " + x for x in text_table(body, ["attack", "split", "PCC", "slope", "n", "before", "after",
                                                  "verdict"], right=range(2, 7))]
    lines += ["", "per-checkpoint scores behind the failing rows (before -> after):"]
    for r in failing:
        before, after = result.before(m.name, r.split), result.after(m.name, r.attack, r.split)
        pairs = ", ".join(f"{k} {fmt(float(before[k]))} -> {fmt(float(after.get(k, math.nan)))}" for k in before.index)
        lines.append(f"  {r.attack} / {r.split}: {pairs}")
    if result.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in result.notes]
    message = "\n".join(lines)
    record["message"] = message
    return result, message
