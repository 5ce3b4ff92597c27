"""``assert_forgotten`` and ``assert_retained``: unlearning guarantees as assertions.

Both use the active :class:`~pytest_unlearn.suite.Suite` (the pytest session's, or
one a notebook activated or passes as ``suite=``).  A guarantee that does not hold
raises :class:`~pytest_unlearn.errors.UnlearningAssertionError` with a message that
explains it; a step that cannot run (an attack error, a NaN score, a sample an attack
left unscored) raises an :class:`~pytest_unlearn.errors.UnlearnError`: an assertion
never passes on what remained.

``assert_forgotten`` semantics:

* the threshold is read in the metric's knowledge direction: "forgotten" means the
  score shows at most ``threshold`` knowledge (ES <= 0.05; perplexity >= 50);
* the verdict takes, per sample, the most knowledge over no attack and every listed
  attack, then reduces over samples, reading every reduction in the knowledge direction:
  ``mean``, ``median``, ``max`` (the sample with the most knowledge: the lowest
  perplexity), ``qNN`` (the NN-th percentile of knowledge: for lower-is-more metrics the
  (100 - NN)-th percentile of the values) or ``min`` (the least knowledge).  ``max`` and
  high quantiles are stricter than the mean; ``min`` and quantiles below ``q50`` are
  lenient and issue an :class:`UnlearnWarning` (and a note);
* ``confidence=0.95`` also requires the one-sided bootstrap bound (1000 resamples,
  seeded by ``unlearn_seed``) of that reduced score, taken in the knowledge direction,
  to be within the threshold;
* controls: every attack also runs on the original model and, when configured, on the
  reference model.  An attack that also wipes out the *original's* knowledge is
  **uninformative** (:func:`~pytest_unlearn.attacks.attack_is_uninformative`, one rule for
  every metric and attack kind): it cannot show that anything was forgotten.  It still counts
  in the worst case (it can only raise it, so it never makes a gate pass), but its row reads
  "uninformative" instead of "ok", the message and report say why, and an
  :class:`UnlearnWarning` is issued.  The gate fails only if a component leaks;
* the reference rule: with a reference model, an attacked score counts for a sample only
  where it shows strictly more knowledge than the reference's under the same attack on the
  same sample; elsewhere the sample keeps its no-attack score (docs/attacks.md, "Controls").
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import reporting
from .errors import ConfigError, UnlearningAssertionError
from .reporting import fmt
from .suite import Suite, current_suite

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .metrics import Metric

__tracebackhide__ = True  # pytest hides every frame of this module in tracebacks

__all__ = ["assert_forgotten", "assert_retained", "ForgettingResult", "RetentionResult", "UnlearnWarning",
           "VacuousCheckError"]

BOOTSTRAP_RESAMPLES = 1000
MAX_SHOWN_SAMPLES = 5
MIN_SHOWN_SAMPLES = 3
UNINFORMATIVE = "uninformative (the attack also destroys the original's knowledge)"
DEFAULT_TAU = 0.9


class UnlearnWarning(UserWarning):
    """Something about an unlearning check the user should know (e.g. an uninformative attack)."""


class VacuousCheckError(ConfigError):
    """``assert_forgotten`` would pass only because the original model already scores within
    the threshold, and ``unlearn_strict_vacuous`` refuses such passes."""


@dataclass
class ForgettingResult:
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

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"


@dataclass
class RetentionResult:
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

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"


# ---------------------------------------------------------------- public API

def assert_forgotten(metric, threshold, *, under_attack=(), model=None, data=None, calibrate=None,
                     reduce: str = "mean", confidence: float | None = None,
                     suite: Suite | None = None) -> ForgettingResult:
    """Fail unless ``model`` (default: the unlearned model) shows at most ``threshold`` of
    ``metric``'s knowledge on ``data`` (default: the forget set), with no attack and under
    every attack in ``under_attack``.  ``reduce`` summarises the per-sample worst cases in the
    knowledge direction (``max`` = the sample with the most knowledge, ``q90`` = its 90th
    percentile, whichever way the metric points).  See the module docstring for the exact
    semantics."""
    __tracebackhide__ = True
    record = _base_record("forgotten", metric, threshold=threshold, reduce=reduce, confidence=confidence,
                          calibrate=calibrate, under_attack=_as_list(under_attack))
    result = _guarded(record, lambda: _forgotten(current_suite(suite), record, metric, threshold,
                                                 _as_list(under_attack), model, data, calibrate, reduce,
                                                 confidence))
    if not result.passed:
        raise UnlearningAssertionError(result.message, result)
    return result


def assert_retained(metric, *, min_ratio: float = 0.9, model=None, data=None,
                    suite: Suite | None = None) -> RetentionResult:
    """Fail when ``model``'s mean ``metric`` on ``data`` (default: the retain set) falls below
    ``min_ratio`` times the original model's, read in the knowledge direction."""
    __tracebackhide__ = True
    record = _base_record("retained", metric, min_ratio=min_ratio)
    result = _guarded(record, lambda: _retained(current_suite(suite), record, metric, min_ratio, model, data))
    if not result.passed:
        raise UnlearningAssertionError(result.message, result)
    return result


# ---------------------------------------------------------------- checks of the arguments

def _as_list(under_attack) -> list:
    if under_attack is None:
        return []
    if isinstance(under_attack, str) or not hasattr(under_attack, "__iter__"):
        return [under_attack]
    return list(under_attack)


def _safe_repr(value) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _number(name: str, value) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ConfigError(f"{name} must be a number, got {_safe_repr(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # an array, a huge int, ...
        raise ConfigError(f"{name} must be a single float-sized number, got {_safe_repr(value)}") from None
    if math.isnan(number):
        raise ConfigError(f"{name} must be a number, got NaN")
    return number


def _check_threshold(m: "Metric", threshold) -> float:
    t = _number("threshold", threshold)
    if not m.in_range(t):
        raise ConfigError(f"threshold {t:g} is outside the range of {m.name} "
                          f"[{m.lower_bound:g}, {m.upper_bound:g}] ({m.direction}); give a threshold in "
                          "that range")
    return t


def _check_reduce(reduce: str) -> str:
    from .metrics import parse_reduce

    return parse_reduce(reduce)  # ConfigError for anything else


def _check_fraction(name: str, value, *, inclusive_one: bool) -> float:
    v = _number(name, value)
    if not (0.0 < v < 1.0 or (inclusive_one and v == 1.0)):
        raise ConfigError(f"{name} must be in (0, 1{']' if inclusive_one else ')'}, got {v:g}")
    return v


# ---------------------------------------------------------------- shared helpers

def _base_record(kind: str, metric, **fields) -> dict:
    name = metric if isinstance(metric, str) else getattr(metric, "name", str(metric))
    return {"kind": kind, "metric": str(name), "verdict": "error", **fields}


def _guarded(record: dict, run):
    """Run a check; on any error record it as an error (the exception propagates)."""
    __tracebackhide__ = True
    started = time.perf_counter()
    try:
        result = run()
    except BaseException as exc:
        record["verdict"] = "error"
        record["message"] = f"{type(exc).__name__}: {exc}"
        record["seconds"] = round(time.perf_counter() - started, 3)
        reporting.record_assertion(reporting.jsonable(record))
        raise
    record["seconds"] = round(time.perf_counter() - started, 3)
    reporting.record_assertion(reporting.jsonable(record))
    return result


def _model_info(handle) -> dict:
    return {"name": handle.name, "source": handle.source, "fingerprint": handle.fingerprint}


def _data_info(dataset) -> dict:
    return {"name": dataset.name, "source": dataset.source, "content_hash": dataset.content_hash, "n": len(dataset)}


def _cost_delta(before: dict, after: dict) -> dict:
    return {k: round(after[k] - before.get(k, 0), 3) for k in after}


def _short(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split()) if text is not None else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reduce_rows(matrix: "np.ndarray", how: str, m: "Metric") -> "np.ndarray":
    """``reduce_scores`` applied to every row of ``matrix``, in ``m``'s knowledge direction."""
    from .metrics import reduce_rows

    return reduce_rows(matrix, how, m)


def bootstrap_bound(values, m: "Metric", reduce: str, confidence: float, seed: int,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> float:
    """One-sided bootstrap bound of the reduced score in the knowledge direction: each
    resample is reduced as the verdict is (``max`` = the most knowledge, ...), and the bound
    is the ``confidence`` quantile of knowledge over resamples (the ``confidence`` quantile
    of the values when higher means more knowledge, else the ``1 - confidence`` quantile)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    stats = _reduce_rows(v[rng.integers(0, len(v), size=(resamples, len(v)))], reduce, m)
    q = confidence if m.higher_is_more_knowledge else 1.0 - confidence
    return float(np.quantile(stats, q))


def _lenient_reduction(m: "Metric", reduce: str) -> str | None:
    """A note (and an :class:`UnlearnWarning`) when ``reduce`` reads less knowledge than the mean."""
    from .metrics import reduction_is_lenient

    if not reduction_is_lenient(reduce):
        return None
    what = "the sample with the least knowledge" if reduce == "min" else \
        f"the {reduce[1:]}th percentile of knowledge, below the median"
    note = (f"reduce={reduce} is lenient: it reads {what} ({m.name}: {m.direction}), less than the mean; "
            f"a forgetting gate normally uses mean, max or a high quantile such as q90")
    warnings.warn(UnlearnWarning(note), stacklevel=4)
    return note


def _uninformative(attack, clean_original, attacked_original, m, reference=None) -> bool:
    """Whether an attack wipes out the original's knowledge (the one rule of
    :func:`~pytest_unlearn.attacks.attack_is_uninformative`, on per-sample scores)."""
    from .attacks import attack_is_uninformative

    return bool(attack_is_uninformative(clean_original, attacked_original, m, reference=reference,
                                        attack=attack))


def _generate(suite: Suite, handle, dataset, positions: list[int]) -> list[str]:
    """Greedy answers for a few samples; a failure is shown, never raised over the verdict."""
    if not positions:
        return []
    from .prompts import dataset_parts

    try:
        parts = dataset_parts(dataset)
        names = [f"{dataset.source} sample {dataset.ids[i]}" for i in positions]
        return list(suite.scorer.generate(handle, [parts[i] for i in positions], names))
    except Exception as exc:  # noqa: BLE001 - the message must still come out
        return [f"<generation failed: {type(exc).__name__}: {exc}>"] * len(positions)


# ---------------------------------------------------------------- assert_forgotten

def _forgotten(suite: Suite, record: dict, metric, threshold, under_attack, model, data, calibrate,
               reduce, confidence, *, judge_vacuous: bool = True) -> ForgettingResult:
    """Score, run the controls and decide; ``judge_vacuous=False`` for callers whose threshold is no
    forgetting gate (the regression check scores with a threshold at the metric's bound)."""
    import numpy as np
    import pandas as pd

    from .metrics import get_metric, reduce_scores
    from .multiple_choice import resolve_threshold

    m = get_metric(metric)
    reduce = _check_reduce(reduce)
    if confidence is not None:
        confidence = _check_fraction("confidence", confidence, inclusive_one=False)
    attacks: dict[str, Any] = {}  # label (the spec as the user wrote it) -> Attack
    if under_attack:
        from .attacks import parse_attack

        seen = set()
        for item in under_attack:
            a = parse_attack(item)
            if a.spec not in seen:  # "quantize:4" and "quantize:bits=4" are one attack
                seen.add(a.spec)
                attacks[item.strip() if isinstance(item, str) else a.spec] = a
    dataset = suite.data(data)
    threshold = _check_threshold(m, resolve_threshold(m, threshold, dataset))  # "chance+0.05" -> a number
    record.update(metric=m.name, direction=m.direction, higher_is_more_knowledge=m.higher_is_more_knowledge,
                  threshold=threshold, reduce=reduce, under_attack=list(attacks),
                  attack_specs=[a.spec for a in attacks.values()], data=_data_info(dataset),
                  seed=suite.settings.seed)
    if calibrate is not None:
        tau = DEFAULT_TAU if calibrate is True else _check_fraction("calibrate (tau)", calibrate, inclusive_one=True)
        cal = suite.calibrate(tau=tau, model=model)
        handle = cal.model
        model_label = f"calibrated (tau={tau:g}, alpha={cal.alpha:.3f})"
        record["calibrate"] = {"tau": tau, "alpha": float(cal.alpha),
                               "metric": getattr(cal.metric, "name", str(cal.metric))}
    else:
        handle = suite.model(model)
        model_label = handle.name
    record["model"] = _model_info(handle)
    controls = {}
    if suite.has("original"):
        controls["original"] = suite.original
    if suite.reference is not None:
        controls["reference"] = suite.reference
    from .models import check_same_tokenizer

    for control in controls.values():  # per-token scores compare only under one tokenizer
        check_same_tokenizer(handle, control, "their per-token scores cannot be compared")

    # -- score everything (memoised by model fingerprint, so a model in two roles runs once)
    memo: dict[tuple, tuple] = {}
    truncated: set[str] = set()  # samples whose prompt was cut to fit the tested model's context

    def run(h, attack):
        key = (h.fingerprint, attack.spec if attack is not None else "none")
        if key not in memo:
            if attack is None:
                before = suite.scorer.cost.as_dict()
                values = suite.scorer.per_sample(m, h, dataset)
                if h is handle:
                    truncated.update(getattr(suite.scorer, "truncated", None) or [])
                memo[key] = (np.asarray(values, dtype=np.float64), None,
                             _cost_delta(before, suite.scorer.cost.as_dict()))
            else:
                outcome = suite.run_attack(attack, m, h, dataset)
                memo[key] = (outcome.values, outcome, dict(outcome.cost or {}))
        return memo[key]

    comps = ["none"] + list(attacks)
    by_spec = attacks
    model_vals, outcomes, costs = {}, {}, {}
    for c in comps:
        model_vals[c], outcomes[c], costs[c] = run(handle, by_spec.get(c))
    control_vals: dict[str, dict[str, np.ndarray]] = {role: {} for role in controls}
    for role, h in controls.items():
        for c in comps:
            control_vals[role][c] = run(h, by_spec.get(c))[0]

    # -- controls: uninformative attacks, injected knowledge, data the original never knew
    notes: list[str] = []
    uninformative: list[str] = []
    vacuous = None  # the note when the original already scores within the threshold
    if "original" in control_vals:
        orig = control_vals["original"]
        ref_none = control_vals["reference"]["none"] if "reference" in control_vals else None
        for label, a in attacks.items():
            if _uninformative(a, orig["none"], orig[label], m, ref_none):
                uninformative.append(label)
                notes.append(f"{label}: {UNINFORMATIVE}: the original model scores "
                             f"{fmt(reduce_scores(orig[label], reduce, m))} under it vs "
                             f"{fmt(reduce_scores(orig['none'], reduce, m))} without; it is no evidence of forgetting")
        if judge_vacuous and not m.more_knowledge(reduce_scores(orig["none"], reduce, m), threshold):
            vacuous = (f"the original model scores {fmt(reduce_scores(orig['none'], reduce, m))} on {dataset.name} "
                       f"with no attack, already within the threshold {fmt(threshold)}: it may never have known "
                       f"this data (or this is not the forget set it was unlearned on), so passing shows little")
            notes.append(vacuous)
    elif attacks:
        notes.append("no original model configured (unlearn_original / --unlearn-original): "
                     "the attacks ran without a control")
    # -- the reference rule: under an attack, a sample counts only with more knowledge than the
    #    never-knew reference model shows under the same attack on the same sample
    counted = dict(model_vals)
    explained: dict[str, int] = {}
    kept = {c: np.ones(len(dataset), dtype=bool) for c in comps}
    if "reference" in control_vals:
        for c in comps[1:]:
            ref_c = control_vals["reference"][c]
            beyond = ref_c < model_vals[c] if m.higher_is_more_knowledge else ref_c > model_vals[c]
            explained[c], kept[c] = int((~beyond).sum()), beyond
            counted[c] = np.where(beyond, model_vals[c], model_vals["none"])
            ref = reduce_scores(ref_c, reduce, m)
            if m.more_knowledge(ref, threshold):
                notes.append(f"{c}: the reference model (never saw the forget set) also scores {fmt(ref)}, "
                             f"beyond the threshold: the attack injects knowledge")
            if explained[c] and m.more_knowledge(reduce_scores(model_vals[c], reduce, m), threshold):
                notes.append(f"{c}: on {explained[c]} of {len(dataset)} samples the model shows no more knowledge "
                             f"under it than the reference model under the same attack; there the attack's score "
                             f"is not counted (the no-attack score is)")
    for c in comps[1:]:
        for note in getattr(outcomes[c], "notes", None) or []:
            notes.append(note if note.startswith(by_spec[c].name) else f"{c}: {note}")
    if truncated:
        notes.append(_truncation_note(sorted(truncated), len(dataset)))
    record["truncated"] = sorted(truncated)
    warned = [f"attack {spec} is {UNINFORMATIVE}; it is not counted as evidence of forgetting"
              for spec in uninformative]
    if vacuous:
        warned.append(f"vacuous check: {vacuous}")
    for text in warned:
        warnings.warn(UnlearnWarning(text), stacklevel=3)

    # -- the verdict: per-sample worst case, reduced, optionally bootstrapped
    stack = np.vstack([counted[c] for c in comps])
    worst = m.knowledge_max(stack)
    worst_at = (np.argmax if m.higher_is_more_knowledge else np.argmin)(stack, axis=0)
    score = reduce_scores(worst, reduce, m)
    lenient = _lenient_reduction(m, reduce)
    if lenient:
        notes.append(lenient)
    passed = not m.more_knowledge(score, threshold)
    bound = None
    if confidence is not None:
        bound = bootstrap_bound(worst, m, reduce, confidence, suite.settings.seed)
        passed = passed and not m.more_knowledge(bound, threshold)
    reduced = {c: reduce_scores(counted[c], reduce, m) for c in comps}

    ids = list(dataset.ids)
    frame = pd.DataFrame({c: model_vals[c] for c in comps}, index=pd.Index(ids, name="sample"))
    for role, vals in control_vals.items():
        for c in comps:
            frame[f"{role}:{c}"] = vals[c]
    frame["worst"] = worst
    frame["worst_attack"] = [comps[k] for k in worst_at]

    rows = []
    for c in comps:
        leak = m.more_knowledge(reduced[c], threshold)
        rows.append({
            "attack": c, "spec": by_spec[c].spec if c in by_spec else None,
            "kind": by_spec[c].kind if c in by_spec else None,
            "score": reduce_scores(model_vals[c], reduce, m), "counted": reduced[c],
            "explained_by_reference": explained.get(c),
            "excluded": getattr(outcomes[c], "excluded", None),
            "original": reduce_scores(control_vals["original"][c], reduce, m) if "original" in control_vals else None,
            "reference": reduce_scores(control_vals["reference"][c], reduce, m) if "reference" in control_vals else None,
            "verdict": "leak" if leak else ("uninformative" if c in uninformative else "ok"),
            "uninformative": c in uninformative, "cost": costs[c],
            "notes": list(getattr(outcomes[c], "notes", None) or []),
        })
    samples = {}
    for i, sid in enumerate(ids):
        entry = {"scores": {c: float(model_vals[c][i]) for c in comps}, "worst": float(worst[i]),
                 "worst_attack": comps[worst_at[i]]}
        for role, vals in control_vals.items():
            entry[role] = {c: float(vals[c][i]) for c in comps}
        if explained:  # a reference and attacks: which attacked scores the reference rule kept
            entry["counted"] = {c: bool(kept[c][i]) for c in comps[1:]}
        samples[sid] = entry
    record.update(verdict="pass" if passed else "fail", score=score, bound=bound, confidence=confidence,
                  attacks=rows, uninformative=uninformative, notes=notes, samples=samples, worst_samples=[],
                  vacuous=vacuous is not None, warnings=warned)
    if passed and vacuous is not None and getattr(suite.settings, "strict_vacuous", False):
        raise VacuousCheckError(f"vacuous pass refused (unlearn_strict_vacuous / --unlearn-strict-vacuous): "
                                f"{vacuous}. Point the gate at the data the original model knew (unlearn_forget "
                                f"/ data=), or check that unlearn_original is the model before unlearning")

    result = ForgettingResult(m, threshold, reduce, score, reduced, frame, passed, bound, confidence,
                              uninformative, notes, record)
    if not passed:
        shown = _worst_samples(suite, handle, dataset, m, threshold, worst, worst_at, comps, outcomes, attacks)
        record["worst_samples"] = shown
        result.message = _forgotten_message(m, threshold, reduce, model_label, dataset, rows, score, bound,
                                             confidence, suite.settings.seed, notes, shown,
                                             sum(m.more_knowledge(w, threshold) for w in worst))
        record["message"] = result.message
    return result


def _worst_samples(suite, handle, dataset, m, threshold, worst, worst_at, comps, outcomes, attacks) -> list[dict]:
    order = sorted(range(len(worst)), key=lambda i: -worst[i] if m.higher_is_more_knowledge else worst[i])
    leaking = [i for i in order if m.more_knowledge(worst[i], threshold)][:MAX_SHOWN_SAMPLES]
    chosen = leaking if len(leaking) >= MIN_SHOWN_SAMPLES else order[:MIN_SHOWN_SAMPLES]
    generated = _generate(suite, handle, dataset, chosen)
    under = ["none"] * len(chosen)
    by_attack: dict[str, list[int]] = {}
    for k, i in enumerate(chosen):
        if comps[worst_at[i]] != "none":
            by_attack.setdefault(comps[worst_at[i]], []).append(k)
    for label, ks in by_attack.items():  # what the attacked model produced, where the attack allows
        texts = _generate_under(suite, attacks[label], handle, dataset, [chosen[k] for k in ks], outcomes.get(label))
        if texts is not None:
            for k, text in zip(ks, texts):
                generated[k], under[k] = text, label
    shown = []
    for i, text, gen_under in zip(chosen, generated, under):
        attack = comps[worst_at[i]]
        outcome = outcomes.get(attack)
        prompt = dataset.prompts[i]
        prompts = getattr(outcome, "prompts", None)
        if prompts is not None and prompts[i] is not None:
            prompt = prompts[i]
        details = getattr(outcome, "details", None)
        detail = details[i] if details is not None else None
        shown.append({"id": dataset.ids[i], "attack": attack, "score": float(worst[i]), "prompt": str(prompt),
                      "answer": str(dataset.answers[i]), "generated": str(text),
                      "generated_under": gen_under, "detail": None if detail is None else str(detail)})
    return shown


def _generate_under(suite: Suite, attack, handle, dataset, positions: list[int], outcome) -> list[str] | None:
    """Greedy answers under an attack (``Attack.generate``); ``None`` where the attack cannot
    generate; a failure is shown, never raised over the verdict."""
    try:
        texts = attack.generate(handle, dataset, positions, suite.attack_context(), outcome)
    except Exception as exc:  # noqa: BLE001 - the message must still come out
        return [f"<generation under {attack.spec} failed: {type(exc).__name__}: {exc}>"] * len(positions)
    return None if texts is None else [str(t) for t in texts]


def _forgotten_message(m, threshold, reduce, label, dataset, rows, score, bound, confidence, seed, notes,
                       shown, n_leaking) -> str:
    word = "at most" if m.higher_is_more_knowledge else "at least"
    lines = [f"{m.name} ({m.description}; {m.direction}) on {dataset.name} "
             f"({len(dataset)} samples, {dataset.source})",
             f"the {label} model scores {fmt(score)} (reduce={reduce}, worst case per sample over "
             f"{len(rows)} condition{'s' if len(rows) > 1 else ''}); it must be {word} {fmt(threshold)} "
             f"to count as forgotten"]
    from .multiple_choice import chance_note

    lines += [chance] if (chance := chance_note(m, dataset)) else []
    if bound is not None:
        lines.append(f"{confidence:.0%} bootstrap bound ({BOOTSTRAP_RESAMPLES} resamples, seed {seed}): {fmt(bound)}")
    has_ref = any(r["reference"] is not None for r in rows)
    header = ["attack", "model", "original"] + (["reference"] if has_ref else []) + ["verdict"]
    body = []
    for r in rows:
        verdict = UNINFORMATIVE if r["verdict"] == "uninformative" else r["verdict"]
        if r.get("explained_by_reference") and r["verdict"] != "leak" and r["counted"] != r["score"]:
            verdict += (f" (on {r['explained_by_reference']} sample(s) no more than the reference: "
                        f"counted {fmt(r['counted'])})")
        body.append([r["attack"], fmt(r["score"]), fmt(r["original"])] + ([fmt(r["reference"])] if has_ref else [])
                    + [verdict])
    pad = [""] + ([""] if has_ref else [])
    if len(rows) > 1:
        body.append(["worst case", fmt(score)] + pad + ["leak" if m.more_knowledge(score, threshold) else "ok"])
    if bound is not None:
        body.append([f"{confidence:.0%} bound", fmt(bound)] + pad
                    + ["leak" if m.more_knowledge(bound, threshold) else "ok"])
    lines.append("")
    lines += ["  " + line for line in reporting.table(body, header, right=range(1, len(header) - 1))]
    if notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in notes]
    if shown:
        title = "worst leaking samples" if n_leaking >= len(shown) else "worst samples"
        lines += ["", f"{title} ({len(shown)} shown; {n_leaking} of {len(dataset)} beyond {fmt(threshold)}):"]
        for k, s in enumerate(shown, 1):
            lines.append(f"  {k}. sample {s['id']}: {m.name} {fmt(s['score'])} under {s['attack']}")
            lines.append(f"     prompt:    {_short(s['prompt'])}")
            lines.append(f"     answer:    {_short(s['answer'])}")
            if s.get("generated_under", "none") != "none":
                under = f" under {s['generated_under']}"
            else:
                under = f" (no attack; {s['attack']} cannot generate)" if s["attack"] != "none" else ""
            lines.append(f"     generated{under}: {_short(s['generated'])}")
            if s.get("detail"):
                lines.append(f"     {s['attack']}: {_short(s['detail'])}")
    lines += ["", "next: " + _next_step(m, threshold, rows, score, bound)]
    return "\n".join(lines)


def _truncation_note(ids: list[str], n: int) -> str:
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return (f"{len(ids)} of {n} prompts were longer than the model's context and were cut from the left "
            f"(samples {shown}); their answers were scored in full, but the model did not see the start "
            "of the prompt")


def _next_step(m, threshold, rows, score, bound) -> str:
    """One actionable line that ends a failure message."""
    clean = rows[0]
    leaking = [r["attack"] for r in rows[1:] if r["verdict"] == "leak"]
    if m.more_knowledge(clean["counted"], threshold):
        return ("the model still states these facts with no attack: unlearn them (again, or with a stronger "
                "method or more steps) and re-run; the samples above are where to look first")
    if leaking or m.more_knowledge(score, threshold):
        which = ", ".join(leaking) if leaking else "the attacks, sample by sample"
        return (f"the knowledge is suppressed, not removed: {which} bring(s) it back; unlearn against that "
                "threat (e.g. a method robust to it, or unlearning under the attack) and re-run; do not drop "
                "the attack to make the gate pass")
    return (f"the score is within the threshold but the {BOOTSTRAP_RESAMPLES}-resample bootstrap bound "
            f"({fmt(bound)}) is not: more forget samples or a more complete unlearning narrow it")


# ---------------------------------------------------------------- assert_retained

def _retained(suite: Suite, record: dict, metric, min_ratio, model, data) -> RetentionResult:
    import numpy as np
    import pandas as pd

    from .metrics import get_metric, reduce_scores

    m = get_metric(metric)
    if m.lower_bound < 0:
        raise ConfigError(f"assert_retained compares ratios, so it needs a metric with non-negative scores; "
                          f"{m.name} ranges over [{m.lower_bound:g}, {m.upper_bound:g}]")
    min_ratio = _number("min_ratio", min_ratio)
    if min_ratio <= 0:
        raise ConfigError(f"min_ratio must be positive, got {min_ratio:g}")
    dataset = suite.data(data, default="retain")
    handle = suite.model(model)
    original = suite.original
    from .models import check_same_tokenizer

    check_same_tokenizer(handle, original, "their retain scores cannot be compared")
    record.update(metric=m.name, direction=m.direction, higher_is_more_knowledge=m.higher_is_more_knowledge,
                  data=_data_info(dataset), model=_model_info(handle), reduce="mean", seed=suite.settings.seed)
    before = suite.scorer.cost.as_dict()
    mv = np.asarray(suite.scorer.per_sample(m, handle, dataset), dtype=np.float64)
    ov = mv if original.fingerprint == handle.fingerprint else \
        np.asarray(suite.scorer.per_sample(m, original, dataset), dtype=np.float64)
    cost = _cost_delta(before, suite.scorer.cost.as_dict())
    score, orig = reduce_scores(mv, "mean"), reduce_scores(ov, "mean")
    notes = []
    if m.higher_is_more_knowledge:
        required = min_ratio * orig
        ratio = score / orig if orig > 0 else (float("inf") if score > 0 else 1.0)
        passed = score >= required
    else:
        required = orig / min_ratio
        ratio = orig / score if score > 0 else float("inf")
        passed = score <= required
    if orig == 0 and m.higher_is_more_knowledge:
        notes.append(f"the original model scores 0 on {dataset.name}: there is nothing to retain")
    ids = list(dataset.ids)
    frame = pd.DataFrame({"model": mv, "original": ov}, index=pd.Index(ids, name="sample"))
    rows = [{"attack": "none", "kind": None, "score": score, "original": orig, "reference": None,
             "verdict": "ok" if passed else "lost", "uninformative": False, "cost": cost, "notes": []}]
    record.update(verdict="pass" if passed else "fail", score=score, original_score=orig, ratio=ratio,
                  threshold=required, min_ratio=min_ratio, bound=None, attacks=rows, notes=notes,
                  samples={sid: {"scores": {"none": float(mv[i])}, "original": {"none": float(ov[i])}}
                           for i, sid in enumerate(ids)}, worst_samples=[])
    result = RetentionResult(m, min_ratio, score, orig, ratio, required, frame, passed, notes, record)
    if not passed:
        loss = (ov - mv) if m.higher_is_more_knowledge else (mv - ov)
        chosen = [int(i) for i in np.argsort(-loss, kind="stable")[:MIN_SHOWN_SAMPLES]]
        generated = _generate(suite, handle, dataset, chosen)
        shown = [{"id": ids[i], "attack": "none", "score": float(mv[i]), "original": float(ov[i]),
                  "prompt": str(dataset.prompts[i]), "answer": str(dataset.answers[i]), "generated": str(g)}
                 for i, g in zip(chosen, generated)]
        record["worst_samples"] = shown
        word = "at least" if m.higher_is_more_knowledge else "at most"
        lines = [f"{m.name} ({m.description}; {m.direction}) on {dataset.name} ({len(dataset)} samples, "
                 f"{dataset.source})",
                 f"the {handle.name} model scores {fmt(score)} vs the original's {fmt(orig)}: a ratio of "
                 f"{fmt(ratio)}, below min_ratio {fmt(min_ratio)} (it must score {word} {fmt(required)})",
                 "", "samples that lost the most:"]
        for k, s in enumerate(shown, 1):
            lines.append(f"  {k}. sample {s['id']}: {m.name} {fmt(s['score'])} (original {fmt(s['original'])})")
            lines.append(f"     prompt:    {_short(s['prompt'])}")
            lines.append(f"     answer:    {_short(s['answer'])}")
            lines.append(f"     generated: {_short(s['generated'])}")
        lines += ["", "next: unlearning took retained knowledge with it: make it gentler (fewer steps, a lower "
                      "learning rate, a larger retain-loss weight) or compare at equal retention "
                      "(assert_forgotten(..., calibrate=0.9)), and re-run"]
        result.message = "\n".join(lines)
        record["message"] = result.message
    return result
