"""``assert_forgotten``: check the arguments, measure (:func:`.measure.measure_forgetting`),
decide (:mod:`.verdict`), record (:func:`.record.run_recorded`), write the message
(:mod:`.messages`).  Semantics: see :mod:`pytest_unlearn.assertions`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import UnlearningAssertionError, UnlearnWarning, VacuousCheckError
from ..formatting import number as fmt
from ..reporting import Verdict
from . import verdict
from .checks import as_list, attack_list, check_fraction, check_reduce, check_threshold
from .record import base_record, data_info, model_info, run_recorded

if TYPE_CHECKING:
    import pandas as pd

    from ..metrics import Metric
    from ..suite import Suite
    from .measure import Measurement

__tracebackhide__ = True

__all__ = ["assert_forgotten", "ForgettingResult", "DEFAULT_TAU", "UNINFORMATIVE", "condition_rows",
           "forgetting_notes"]

DEFAULT_TAU = 0.9
UNINFORMATIVE = "uninformative (the attack also destroys the original's knowledge)"


@dataclass
class ForgettingResult(Verdict):
    """What ``assert_forgotten`` measured.  ``scores``: one row per sample, columns ``none``,
    each attack spec, ``original:<attack>``, ``reference:<attack>``, ``worst``, ``worst_attack``."""

    metric: "Metric"
    threshold: float
    reduce: str
    score: float  # the reduced per-sample worst case
    reduced: dict[str, float]  # "none" / attack spec -> reduced score of the model under test
    scores: "pd.DataFrame"
    passed: bool
    bound: float | None = None
    confidence: float | None = None
    uninformative: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict, repr=False)
    message: str = field(default="", repr=False)


def assert_forgotten(metric, threshold, *, under_attack=(), model=None, data=None, calibrate=None,
                     reduce: str = "mean", confidence: float | None = None,
                     suite: "Suite | None" = None) -> ForgettingResult:
    """Fail unless ``model`` (default: the unlearned model) shows at most ``threshold`` of
    ``metric``'s knowledge on ``data`` (default: the forget set), with no attack and under
    every attack in ``under_attack``.  ``reduce`` summarises the per-sample worst cases in the
    knowledge direction (``max`` = the sample with the most knowledge, ``q90`` = its 90th
    percentile, whichever way the metric points).  See :mod:`pytest_unlearn.assertions`."""
    __tracebackhide__ = True
    from ..suite import current_suite

    record = base_record("forgotten", metric, threshold=threshold, reduce=reduce, confidence=confidence,
                         calibrate=calibrate, under_attack=as_list(under_attack))
    result = run_recorded(record, lambda: _forgotten(current_suite(suite), record, metric, threshold,
                                                     as_list(under_attack), model, data, calibrate, reduce,
                                                     confidence))
    if not result.passed:
        raise UnlearningAssertionError(result.message, result)
    return result


def _forgotten(suite: "Suite", record: dict, metric, threshold, under_attack, model, data, calibrate, reduce,
               confidence) -> ForgettingResult:
    from ..metrics import get_metric
    from ..multiple_choice import resolve_threshold
    from .measure import measure_forgetting

    # -- check the arguments
    m = get_metric(metric)
    reduce = check_reduce(reduce)
    if confidence is not None:
        confidence = check_fraction("confidence", confidence, inclusive_one=False)
    attacks = attack_list(under_attack)
    dataset = suite.data(data)
    threshold = check_threshold(m, resolve_threshold(m, threshold, dataset))  # "chance+0.05" -> a number
    record.update(metric=m.name, direction=m.direction, higher_is_more_knowledge=m.higher_is_more_knowledge,
                  threshold=threshold, reduce=reduce, under_attack=list(attacks),
                  attack_specs=[a.spec for a in attacks.values()], data=data_info(dataset),
                  seed=suite.settings.seed)
    if calibrate is not None:
        tau = DEFAULT_TAU if calibrate is True else check_fraction("calibrate (tau)", calibrate, inclusive_one=True)
        cal = suite.calibrate(tau=tau, model=model)
        handle = cal.model
        label = f"calibrated (tau={tau:g}, alpha={cal.alpha:.3f})"
        record["calibrate"] = {"tau": tau, "alpha": float(cal.alpha),
                               "metric": getattr(cal.metric, "name", str(cal.metric))}
    else:
        handle = suite.model(model)
        label = handle.name
    record["model"] = model_info(handle)

    # -- measure
    meas = measure_forgetting(suite, m, attacks, handle, dataset)

    # -- decide
    fig = figures_of(meas, reduce)
    vacuous = None
    if "original" in meas.controls and verdict.is_vacuous(meas.controls["original"]["none"], m, reduce, threshold):
        vacuous = (f"the original model scores {fmt(_reduced(meas, 'original', 'none', reduce))} "
                   f"on {dataset.name} with no attack, already within the threshold {fmt(threshold)}: it may never "
                   f"have known this data (or this is not the forget set it was unlearned on), so passing shows little")
    notes, warned = forgetting_notes(meas, fig, reduce, threshold, vacuous)
    bound = None
    if confidence is not None:
        bound = verdict.bootstrap_bound(fig.worst, m, reduce, confidence, suite.settings.seed)
    passed = verdict.forgotten_passes(fig.score, threshold, m, bound)

    # -- record
    rows = condition_rows(meas, fig, reduce, threshold)
    record.update(truncated=meas.truncated, verdict="pass" if passed else "fail", score=fig.score, bound=bound,
                  confidence=confidence, attacks=rows, uninformative=fig.uninformative, notes=notes,
                  samples=sample_entries(meas, fig), worst_samples=[], vacuous=vacuous is not None, warnings=warned)
    if passed and vacuous is not None and getattr(suite.settings, "strict_vacuous", False):
        raise VacuousCheckError(f"vacuous pass refused (unlearn_strict_vacuous / --unlearn-strict-vacuous): "
                                f"{vacuous}. Point the gate at the data the original model knew (unlearn_forget "
                                f"/ data=), or check that unlearn_original is the model before unlearning")
    result = ForgettingResult(m, threshold, reduce, fig.score, fig.reduced, score_frame(meas, fig), passed, bound,
                              confidence, fig.uninformative, notes, record)

    # -- the message
    if not passed:
        from .messages import forgotten_message, worst_samples

        shown = worst_samples(suite, meas, fig, threshold)
        record["worst_samples"] = shown
        result.message = forgotten_message(m, threshold, reduce, label, dataset, rows, fig.score, bound, confidence,
                                           suite.settings.seed, notes, shown,
                                           sum(m.more_knowledge(w, threshold) for w in fig.worst))
        record["message"] = result.message
    return result


def _reduced(meas: "Measurement", role: str, condition: str, reduce: str) -> float:
    from ..metrics import reduce_scores

    scores = meas.model if role == "model" else meas.controls[role]
    return reduce_scores(scores[condition], reduce, meas.metric)


def figures_of(meas: "Measurement", reduce: str) -> verdict.Figures:
    """The verdict's threshold-free figures of a measurement (reference rule, worst case,
    reductions, uninformative attacks)."""
    original, reference = meas.controls.get("original"), meas.controls.get("reference")
    uninformative = verdict.uninformative_conditions(
        meas.attacks, original, meas.metric, reference["none"] if reference else None) if original else []
    return verdict.figures(meas.model, meas.metric, reduce, reference=reference, uninformative=uninformative)


def forgetting_notes(meas: "Measurement", fig: verdict.Figures, reduce: str, threshold: float | None,
                     vacuous: str | None = None) -> tuple[list[str], list[str]]:
    """The notes of a forgetting check and the warnings it issues (as :class:`UnlearnWarning`)."""
    from ..metrics import reduction_is_lenient

    m, dataset, notes = meas.metric, meas.dataset, []
    if "original" in meas.controls:
        for label in fig.uninformative:
            notes.append(f"{label}: {UNINFORMATIVE}: the original model scores "
                         f"{fmt(_reduced(meas, 'original', label, reduce))} under it vs "
                         f"{fmt(_reduced(meas, 'original', 'none', reduce))} without; it is no evidence of forgetting")
        if vacuous:
            notes.append(vacuous)
    elif meas.attacks:
        notes.append("no original model configured (unlearn_original / --unlearn-original): "
                     "the attacks ran without a control")
    if "reference" in meas.controls:
        for c in fig.conditions[1:]:
            ref = _reduced(meas, "reference", c, reduce)
            if threshold is not None and m.more_knowledge(ref, threshold):
                notes.append(f"{c}: the reference model (never saw the forget set) also scores {fmt(ref)}, "
                             f"beyond the threshold: the attack injects knowledge")
            if fig.explained[c] and threshold is not None and m.more_knowledge(fig.raw[c], threshold):
                notes.append(f"{c}: on {fig.explained[c]} of {len(dataset)} samples the model shows no more knowledge "
                             f"under it than the reference model under the same attack; there the attack's score "
                             f"is not counted as recovery (the sample counts with its no-attack score at most)")
    for c in fig.conditions[1:]:
        for note in getattr(meas.outcomes[c], "notes", None) or []:
            notes.append(note if note.startswith(meas.attacks[c].name) else f"{c}: {note}")
    if meas.truncated:
        ids = meas.truncated
        listed = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        notes.append(f"{len(ids)} of {len(dataset)} prompts were longer than the model's context and were cut from "
                     f"the left (samples {listed}); their answers were scored in full, but the model did not see "
                     "the start of the prompt")
    warned = [f"attack {spec} is {UNINFORMATIVE}; it is not counted as evidence of forgetting"
              for spec in fig.uninformative]
    if vacuous:
        warned.append(f"vacuous check: {vacuous}")
    for text in warned:
        warnings.warn(UnlearnWarning(text), stacklevel=4)
    if reduction_is_lenient(reduce):
        what = "the sample with the least knowledge" if reduce == "min" else \
            f"the {reduce[1:]}th percentile of knowledge, below the median"
        note = (f"reduce={reduce} is lenient: it reads {what} ({m.name}: {m.direction}), less than the mean; "
                f"a forgetting gate normally uses mean, max or a high quantile such as q90")
        warnings.warn(UnlearnWarning(note), stacklevel=4)
        notes.append(note)
    return notes, warned


def condition_rows(meas: "Measurement", fig: verdict.Figures, reduce: str, threshold: float | None) -> list[dict]:
    """One record row per condition (no attack, then each attack); without a threshold no
    row is a leak."""
    rows = []
    for c in fig.conditions:
        a = meas.attacks.get(c)
        leak = threshold is not None and meas.metric.more_knowledge(fig.reduced[c], threshold)
        rows.append({
            "attack": c, "spec": a.spec if a is not None else None, "kind": a.kind if a is not None else None,
            "score": fig.raw[c], "counted": fig.reduced[c], "explained_by_reference": fig.explained.get(c),
            "excluded": getattr(meas.outcomes[c], "excluded", None),
            "original": _reduced(meas, "original", c, reduce) if "original" in meas.controls else None,
            "reference": _reduced(meas, "reference", c, reduce) if "reference" in meas.controls else None,
            "verdict": "leak" if leak else ("uninformative" if c in fig.uninformative else "ok"),
            "uninformative": c in fig.uninformative, "cost": meas.costs[c],
            "notes": list(getattr(meas.outcomes[c], "notes", None) or []),
        })
    return rows


def sample_entries(meas: "Measurement", fig: verdict.Figures) -> dict:
    samples = {}
    for i, sid in enumerate(meas.dataset.ids):
        entry = {"scores": {c: float(meas.model[c][i]) for c in fig.conditions}, "worst": float(fig.worst[i]),
                 "worst_attack": fig.conditions[fig.worst_at[i]]}
        for role, vals in meas.controls.items():
            entry[role] = {c: float(vals[c][i]) for c in fig.conditions}
        if fig.explained:  # a reference and attacks: which attacked scores the reference rule kept
            entry["counted"] = {c: bool(fig.kept[c][i]) for c in fig.conditions[1:]}
        samples[sid] = entry
    return samples


def score_frame(meas: "Measurement", fig: verdict.Figures) -> "pd.DataFrame":
    import pandas as pd

    frame = pd.DataFrame({c: meas.model[c] for c in fig.conditions},
                         index=pd.Index(list(meas.dataset.ids), name="sample"))
    for role, vals in meas.controls.items():
        for c in fig.conditions:
            frame[f"{role}:{c}"] = vals[c]
    frame["worst"] = fig.worst
    frame["worst_attack"] = fig.worst_attack()
    return frame
