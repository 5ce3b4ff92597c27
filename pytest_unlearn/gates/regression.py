"""``assert_no_regression``: check, measure exactly as ``assert_forgotten`` does (no
threshold: the figures of :func:`.verdict.figures`), compare with the baseline file
(:func:`.verdict.regressed`), record, message.  The baseline store and the file format
live in :mod:`pytest_unlearn.baselines`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..baselines import (FORMAT, MAX_LISTED, UPDATE_HINT, BaselineError, BaselineStore, _round, _value,
                         active_store, default_name, read_baseline, render)
from ..errors import ConfigError, UnlearningAssertionError
from ..formatting import number as fmt, text_table
from ..reporting import Verdict
from . import verdict
from .checks import as_list, attack_list, check_reduce, number
from .record import base_record, data_info, model_info, run_recorded, short

if TYPE_CHECKING:
    import pandas as pd

    from ..metrics import Metric
    from ..suite import Suite

__tracebackhide__ = True

__all__ = ["assert_no_regression", "RegressionResult", "run_regression"]


@dataclass
class RegressionResult(Verdict):
    """What ``assert_no_regression`` measured.  ``scores``: one row per sample (columns
    ``baseline``, ``now``, ``change`` (now - baseline), ``worst_attack``, ``regressed``);
    ``forgetting``: the threshold-free figures (:class:`~pytest_unlearn.gates.verdict.Figures`)
    it was computed from, as ``assert_forgotten`` computes them."""

    metric: "Metric"
    baseline: str  # the file, relative to the root
    action: str  # "compared", "created", "updated" or "unchanged"
    score: float  # the reduced per-sample worst case now
    baseline_score: float | None
    tolerance: float
    reduce: str
    regressed: list[str]
    scores: "pd.DataFrame"
    forgetting: "verdict.Figures"
    passed: bool = True
    record: dict = field(default_factory=dict, repr=False)
    message: str = field(default="", repr=False)


def assert_no_regression(metric="es", baseline: str | os.PathLike | None = None, *, under_attack=(),
                         tolerance: float = 0.0, model=None, data=None, reduce: str = "mean",
                         suite: "Suite | None" = None, store: BaselineStore | None = None) -> RegressionResult:
    """Fail when ``model`` (default: the unlearned model) forgets less of ``data`` (default: the
    forget set) than the accepted release recorded in ``baseline`` did: a sample, or the
    reduced score, showing more ``metric`` knowledge than the baseline beyond ``tolerance``.

    ``baseline``: a name (``forget-es`` -> ``unlearn-baselines/forget-es.json``) or a path
    relative to the rootdir; default: the running test's name.  With
    ``--unlearn-update-baselines`` the file is written (or refreshed) instead and the check passes.
    """
    __tracebackhide__ = True
    return run_regression(metric, baseline, under_attack, tolerance, model, data, reduce, suite, store, test=None)


def run_regression(metric, baseline, under_attack, tolerance, model, data, reduce, suite, store,
                   test) -> RegressionResult:
    __tracebackhide__ = True
    from .. import reporting

    current = getattr(reporting.active_recorder(), "current_test", None)
    test = test or current
    store = store or active_store() or BaselineStore()
    if baseline is None:
        if not test:
            raise ConfigError("assert_no_regression outside a pytest test needs baseline='<name or path>'")
        baseline = default_name(test)
    record = base_record("regression", metric, tolerance=tolerance, reduce=reduce,
                         under_attack=as_list(under_attack))
    result = run_recorded(record, lambda: _regression(store, record, test, baseline, metric, as_list(under_attack),
                                                      tolerance, model, data, reduce, suite))
    if not result.passed:
        raise UnlearningAssertionError(result.message, result)
    return result


def _regression(store: BaselineStore, record: dict, test, baseline, metric, under_attack, tolerance, model, data,
                reduce, suite) -> RegressionResult:
    import numpy as np
    import pandas as pd

    from ..metrics import get_metric
    from ..suite import current_suite
    from .forgotten import condition_rows, figures_of, forgetting_notes
    from .measure import measure_forgetting

    # -- check
    path = store.path_for(baseline)
    rel = store.claim(path, test)
    record["baseline"] = rel
    tolerance = number("tolerance", tolerance)
    if tolerance < 0:
        raise ConfigError(f"tolerance must be at least 0 (it is read in the metric's knowledge direction), "
                          f"got {tolerance:g}")
    suite = current_suite(suite)
    m = get_metric(metric)
    if not store.update and not path.is_file():
        how = f"pytest {UPDATE_HINT}" + (f" '{test}'" if test else "")
        raise BaselineError(f"baseline {rel} does not exist: create it from the accepted release with `{how}` "
                            f"(or unlearn_update_baselines = true), review it and commit it (docs/baselines.md)")
    reduce = check_reduce(reduce)
    attacks = attack_list(under_attack)
    dataset, handle = suite.data(data), suite.model(model)

    # -- measure, and the threshold-free figures assert_forgotten decides on
    meas = measure_forgetting(suite, m, attacks, handle, dataset)
    fig = figures_of(meas, reduce)
    notes, _ = forgetting_notes(meas, fig, reduce, None)  # the same notes and warnings as assert_forgotten
    labels = fig.conditions
    spec_of = {"none": "none", **{label: a.spec for label, a in attacks.items()}}
    worst_attack = fig.worst_attack()
    now = [_round(v) for v in fig.worst]
    now_reduced = _round(fig.score)
    header = {
        "metric": m.name, "direction": m.direction, "attacks": sorted(spec_of[c] for c in labels[1:]),
        "prompt": suite.scorer.prompt_format(handle).spec, "reduce": reduce, "seed": suite.settings.seed,
        "data": {"name": dataset.name, "n": len(dataset), "content_hash": dataset.content_hash},
        "models": _models(suite, handle), "library": {"name": "pytest-unlearn", "version": _version()},
    }
    if test:
        header["test"] = test
    reduced = {spec_of[c]: _round(fig.reduced[c]) for c in labels}
    reduced["worst"] = now_reduced
    samples = {sid: {"scores": {spec_of[c]: _round(meas.model[c][i]) for c in labels}, "worst": now[i],
                     "worst_attack": spec_of[worst_attack[i]]}
               for i, sid in enumerate(dataset.ids)}
    doc = {"format": FORMAT, "header": header, "reduced": reduced, "samples": samples}
    record.update(metric=m.name, direction=m.direction, higher_is_more_knowledge=m.higher_is_more_knowledge,
                  reduce=reduce, under_attack=list(attacks), attack_specs=[a.spec for a in attacks.values()],
                  data=data_info(dataset), model=model_info(handle), seed=suite.settings.seed, tolerance=tolerance,
                  score=now_reduced, uninformative=fig.uninformative, notes=notes)
    plain_rows = condition_rows(meas, fig, reduce, None)

    old = None
    if path.is_file():
        old = read_baseline(path, rel)
        differences = _differences(old["header"], header)
        if differences and not store.update:
            how = f"pytest {UPDATE_HINT}" + (f" '{test}'" if test else "")
            raise BaselineError(
                f"baseline {rel} was made under a different configuration, so it is not compared:\n"
                + "\n".join(f"  {d}" for d in differences)
                + f"\nif the new configuration is intended, refresh the baseline with `{how}`, review the diff "
                  f"and commit it")
        if differences:
            old = None  # refreshed below; nothing to compare with
            store.notes[rel] = "new configuration: " + ", ".join(d.split(":")[0] for d in differences)

    def result(action, passed, old_reduced, regressed_ids, table):
        return RegressionResult(m, rel, action, now_reduced, old_reduced, tolerance, reduce,
                                regressed_ids, table, fig, passed, record)

    olds = _baseline_worst(old, dataset, rel) if old is not None else None
    regressed = verdict.regressed(olds, [float(v) for v in now], tolerance, m) if olds is not None else []
    if store.update:
        text = render(doc)
        existing = path.read_text(encoding="utf-8") if path.is_file() else None
        action = "created" if existing is None else ("unchanged" if existing == text else "updated")
        if action != "unchanged":
            from ..atomic import write_text_atomically

            write_text_atomically(path, text)
        store.written[rel] = action
        if regressed:
            store.notes[rel] = f"{len(regressed)} of {len(dataset)} samples forget less than the previous baseline"
        rows = _rows(plain_rows, spec_of, None, m, tolerance)
        record.update(verdict="pass", threshold=None, baseline_action=action, baseline_score=None, attacks=rows,
                      samples={sid: {"now": now[i], "worst_attack": samples[sid]["worst_attack"]}
                               for i, sid in enumerate(dataset.ids)}, regressed=[], worst_samples=[])
        table = pd.DataFrame({"baseline": np.nan, "now": [float(v) for v in now]},
                             index=pd.Index(dataset.ids, name="sample"))
        return result(action, True, None, [], table)

    # -- decide
    old_reduced = _value(old["reduced"].get("worst"))
    allowed = verdict.allowed(old_reduced, tolerance, m)
    reduced_worse = m.more_knowledge(float(now_reduced), allowed)
    passed = not regressed and not reduced_worse
    # -- record
    rows = _rows(plain_rows, spec_of, old, m, tolerance)
    nows = [float(v) for v in now]
    hit = set(regressed)
    table = pd.DataFrame({"baseline": olds, "now": nows, "change": np.subtract(nows, olds),
                          "worst_attack": [samples[s]["worst_attack"] for s in dataset.ids],
                          "regressed": [i in hit for i in range(len(dataset))]},
                         index=pd.Index(dataset.ids, name="sample"))
    record.update(verdict="pass" if passed else "fail", threshold=allowed, baseline_action="compared",
                  baseline_score=old_reduced, attacks=rows, regressed=[dataset.ids[i] for i in regressed],
                  baseline_models=old["header"].get("models"),
                  samples={sid: {"baseline": olds[i], "now": nows[i], "worst_attack": samples[sid]["worst_attack"],
                                 "regressed": i in hit} for i, sid in enumerate(dataset.ids)},
                  worst_samples=[])
    out = result("compared", passed, old_reduced, [dataset.ids[i] for i in regressed], table)
    # -- message
    if not passed:
        from .measure import generate
        from .messages import MAX_SHOWN_SAMPLES

        order = sorted(regressed, key=lambda i: -abs(nows[i] - olds[i]))
        shown_at = order[:MAX_SHOWN_SAMPLES]
        generated = dict(zip(shown_at, generate(suite, handle, dataset, shown_at)))
        shown = [{"id": dataset.ids[i], "baseline": olds[i], "now": nows[i],
                  "attack": samples[dataset.ids[i]]["worst_attack"], "prompt": str(dataset.prompts[i]),
                  "answer": str(dataset.answers[i]), "generated": str(generated.get(i, ""))} for i in order]
        record["worst_samples"] = shown[:MAX_SHOWN_SAMPLES]
        out.message = _message(m, rel, dataset, handle, old["header"], header, rows, old_reduced, now_reduced,
                               allowed, reduced_worse, tolerance, shown, len(shown_at), test)
        record["message"] = out.message
    return out


def _version() -> str:
    from .. import __version__

    return __version__


def _models(suite, handle) -> dict:
    """Fingerprints (no paths: the file must not depend on the machine that wrote it)."""
    models = {"model": {"name": handle.name, "fingerprint": handle.fingerprint}}
    for role, h in suite.loaded_models().items():
        if role in ("original", "reference") and h is not None:
            models[role] = {"fingerprint": h.fingerprint}
    return models


def _differences(old: dict, new: dict) -> list[str]:
    from ..baselines import CONFIG_FIELDS

    out = []
    for key in CONFIG_FIELDS:
        a, b = old.get(key), new.get(key)
        if key == "data":
            a_hash, b_hash = (a or {}).get("content_hash"), (b or {}).get("content_hash")
            if a_hash != b_hash:
                out.append(f"data: baseline {_data_text(a)}, now {_data_text(b)} (the data changed)")
        elif a != b:
            out.append(f"{key}: baseline {a!r}, now {b!r}")
    return out


def _data_text(info) -> str:
    info = info or {}
    digest = str(info.get("content_hash") or "?")
    return f"{info.get('name', '?')} ({info.get('n', '?')} samples, content hash {digest[:12]})"


def _baseline_worst(old: dict, dataset, rel: str) -> list[float]:
    """The baseline's per-sample worst-case scores, in the data set's order."""
    olds = []
    for sid in dataset.ids:
        entry = old["samples"].get(sid)
        if not isinstance(entry, dict) or "worst" not in entry:
            raise BaselineError(f"baseline {rel} has no score for sample {sid} although its data hash matches "
                                f"(edited by hand?); refresh it with {UPDATE_HINT}")
        olds.append(_value(entry["worst"]))
    return olds


def _rows(plain_rows: list[dict], spec_of, old, m, tolerance) -> list[dict]:
    """The per-condition rows of the record (as assert_forgotten's), read against the baseline."""
    rows = []
    for row in plain_rows:
        row = dict(row)
        if old is None:
            row["baseline"] = None
        else:
            before = old["reduced"].get(spec_of.get(row["attack"], row["attack"]))
            row["baseline"] = None if before is None else _value(before)
            if before is None:
                row["verdict"] = "ok"
            else:
                row["verdict"] = ("regressed" if m.more_knowledge(float(_round(row["score"])),
                                                                  verdict.allowed(row["baseline"], tolerance, m))
                                  else "ok")
        rows.append(row)
    return rows


def _message(m, rel, dataset, handle, old_header, header, rows, old_reduced, now_reduced, allowed, reduced_worse,
             tolerance, shown, n_generated, test) -> str:
    old_model = ((old_header.get("models") or {}).get("model") or {}).get("fingerprint") or "?"
    old_version = (old_header.get("library") or {}).get("version", "?")
    lines = [f"{m.name} ({m.description}; {m.direction}) on {dataset.name} ({len(dataset)} samples, "
             f"{dataset.source}) regressed against baseline {rel}",
             f"baseline: model {old_model[:12]} (pytest-unlearn {old_version}); now: the {handle.name} model "
             f"{handle.fingerprint[:12]}",
             f"reduced score ({header['reduce']}, worst case per sample over {len(rows)} "
             f"condition{'s' if len(rows) > 1 else ''}): baseline {fmt(old_reduced)}, now {fmt(float(now_reduced))}"
             f" ({'regressed' if reduced_worse else 'ok'}: it may be "
             f"{'at most' if m.higher_is_more_knowledge else 'at least'} {fmt(allowed)}, tolerance {fmt(tolerance)})"]
    body = [[r["attack"], fmt(r.get("baseline")), fmt(r["score"]), fmt(r.get("original")), r["verdict"]]
            for r in rows]
    lines.append("")
    lines += ["  " + line for line in text_table(body, ["attack", "baseline", "now", "original", "verdict"],
                                                 right=(1, 2, 3))]
    if shown:
        lines += ["", f"{len(shown)} of {len(dataset)} samples regressed (more knowledge than the baseline "
                      f"beyond the tolerance {fmt(tolerance)}), largest change first:"]
        for s in shown[:MAX_LISTED]:
            lines.append(f"  sample {s['id']}: {m.name} {fmt(s['baseline'])} -> {fmt(s['now'])} "
                         f"({s['now'] - s['baseline']:+.4f}) under {s['attack']}")
        if len(shown) > MAX_LISTED:
            lines.append(f"  ... and {len(shown) - MAX_LISTED} more (see the result's .scores or the report)")
        lines += ["", f"what the model now generates (greedy, no attack; {n_generated} shown):"]
        for k, s in enumerate(shown[:n_generated], 1):
            lines.append(f"  {k}. sample {s['id']}: {m.name} {fmt(s['baseline'])} -> {fmt(s['now'])}")
            lines.append(f"     prompt:    {short(s['prompt'])}")
            lines.append(f"     answer:    {short(s['answer'])}")
            lines.append(f"     generated: {short(s['generated'])}")
    how = f"pytest {UPDATE_HINT}" + (f" '{test}'" if test else "")
    lines += ["", f"if this model is an accepted release that may forget less, refresh the baseline with `{how}` "
                  f"and have the diff reviewed"]
    return "\n".join(lines)
