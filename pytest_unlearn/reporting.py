"""Records of assertions and calibrations, the terminal summary and the JSON report.

Every ``assert_forgotten`` / ``assert_retained`` builds a *record*: a plain,
JSON-able dict (see ``docs/report-schema.md``).  The active :class:`Recorder` (the
plugin pushes one per pytest session) collects them; the plugin puts each record's
figures on the test's ``user_properties`` (so they reach JUnit XML), sends the records
of an xdist worker to the controller through ``workeroutput``, and the controller
alone prints the summary and writes the JSON report.

Pure Python: no torch, numpy or pandas here (the plugin imports this module in every run).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from . import session
from .atomic import write_text_atomically
from .errors import ConfigError, write_failure
from .formatting import jsonable, number as fmt, text_table as table

__all__ = ["Recorder", "active_recorder", "recording", "record_assertion", "calibration_record",
           "sort_records",
           "user_properties", "summary_lines", "build_report", "write_json", "write_report",
           "report_destination", "REPORT_NAME", "SCHEMA"]

SCHEMA = "pytest-unlearn-report/1"

class Verdict:
    """Mixin of the assertion results: ``verdict`` is ``"pass"`` or ``"fail"`` from ``passed``."""

    passed: bool

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"


class Recorder:
    """Collects the records of one session (or one xdist worker)."""

    def __init__(self) -> None:
        self.assertions: list[dict] = []
        self.calibrations: list[dict] = []
        self.models: dict[str, dict] = {}
        self.cost: dict[str, float] = {}
        self.current_test: str | None = None
        self._pending: list[dict] = []
        self._counts: dict[str | None, int] = {}

    def __bool__(self) -> bool:
        return True

    @property
    def empty(self) -> bool:
        return not self.assertions and not self.calibrations

    def add_assertion(self, record: dict) -> None:
        record["test"] = self.current_test
        record["index"] = self._counts.get(self.current_test, 0)
        self._counts[self.current_test] = record["index"] + 1
        self.assertions.append(record)
        self._pending.append(record)

    def take_pending(self) -> list[dict]:
        """Records made since the last call (the plugin moves them onto the running test)."""
        out, self._pending = self._pending, []
        return out

    def add_calibration(self, record: dict) -> None:
        key = _calibration_key(record)
        if all(_calibration_key(c) != key for c in self.calibrations):
            self.calibrations.append(record)

    def add_models(self, models: dict[str, dict]) -> None:
        self.models.update(models)

    def add_cost(self, cost: dict) -> None:
        for k, v in (cost or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.cost[k] = self.cost.get(k, 0) + v

    # xdist: worker -> controller
    def to_workeroutput(self) -> dict:
        return {"assertions": self.assertions, "calibrations": self.calibrations,
                "models": self.models, "cost": self.cost}

    def merge(self, data: dict | None) -> None:
        if not data:
            return
        self.assertions.extend(data.get("assertions", []))
        for c in data.get("calibrations", []):
            self.add_calibration(c)
        self.add_models(data.get("models", {}))
        self.add_cost(data.get("cost", {}))


def _calibration_key(record: dict) -> tuple:
    return (record.get("tau"), record.get("metric"), (record.get("model") or {}).get("fingerprint"))


def push_recorder(recorder: Recorder) -> None:
    session.enter(recorder=recorder)


def pop_recorder(recorder: Recorder) -> None:
    session.leave_part("recorder", recorder)


def active_recorder() -> Recorder | None:
    return session.current("recorder")


@contextmanager
def recording(recorder: Recorder | None = None) -> Iterator[Recorder]:
    """``with recording() as rec:`` assertions inside record into ``rec`` (a new Recorder
    unless one is given), not into the session's report."""
    rec = recorder if recorder is not None else Recorder()
    with session.activate(recorder=rec):
        yield rec


def record_assertion(record: dict) -> None:
    rec = active_recorder()
    if rec is not None:
        rec.add_assertion(record)


def calibration_record(result, handle) -> dict:
    """A JSON-able record of a CalibrationResult (``to_dict()`` plus the model it calibrated)."""
    data = dict(result.to_dict()) if hasattr(result, "to_dict") else {}
    for key in ("tau", "metric", "alpha", "retain_score", "forget_score", "original_retain_score",
                "target", "evaluations", "monotone", "notes"):
        if key not in data:
            data[key] = getattr(result, key, None)
    curve = data.get("curve", getattr(result, "curve", None))
    if hasattr(curve, "to_dict"):  # a DataFrame
        curve = curve.to_dict("records")
    data["curve"] = curve
    calibrated = getattr(result, "model", None)
    data["model"] = {"name": handle.name, "source": handle.source, "fingerprint": handle.fingerprint}
    data["calibrated_fingerprint"] = getattr(calibrated, "fingerprint", None)
    return jsonable(data)


# ---------------------------------------------------------------- ordering and JSON values

def sort_records(records: Iterable[dict]) -> list[dict]:
    """Deterministic order (test, kind, metric, data, index in the test), the same serial or under xdist."""
    return sorted(records, key=lambda r: (str(r.get("test") or ""), int(r.get("index") or 0),
                                          str(r.get("kind")), str(r.get("metric"))))


# ---------------------------------------------------------------- formatting

def bound_text(record: dict) -> str:
    """``<= 0.0500`` (the most knowledge allowed) or ``>= 0.9000`` (the least required)."""
    higher = record.get("higher_is_more_knowledge", True)
    threshold = record.get("threshold")
    if record.get("kind") == "robust":  # a PCC: the least required, whichever way the metric points
        return ">= " + fmt(threshold)
    if record.get("kind") == "retained":
        return (">= " if higher else "<= ") + fmt(threshold)
    return ("<= " if higher else ">= ") + fmt(threshold)


def user_properties(record: dict, taken: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(name, value)`` pairs for ``item.user_properties`` (JUnit XML ``<property>``).

    ``taken`` are the names the test already has: a second assertion of the same kind and
    metric in one test is ``unlearn.<kind>.<metric>#2.*`` (then ``#3``...), so no name
    carries two assertions' values."""
    stem = f"unlearn.{record['kind']}.{record['metric']}"
    taken, base, n = set(taken), stem, 1
    while f"{base}.verdict" in taken:
        n += 1
        base = f"{stem}#{n}"
    props = [(f"{base}.verdict", str(record["verdict"])),
             (f"{base}.model", model_label(record.get("model"))),
             (f"{base}.threshold", fmt(record.get("threshold"))),
             (f"{base}.score", fmt(record.get("score")))]
    if record.get("bound") is not None:
        props.append((f"{base}.bound", fmt(record["bound"])))
    for row in record.get("attacks", []):
        figures = {k: row.get(k) for k in ("score", "original", "reference", "verdict") if row.get(k) is not None}
        props.append((f"{base}.attack.{row['attack']}", json.dumps(jsonable(figures), sort_keys=True)))
    return props


def model_label(model: dict | None, names: dict[str, set] | None = None) -> str:
    """A model's name, with the start of its fingerprint when ``names`` (name -> fingerprints
    seen in this run) shows another model under the same name."""
    model = model or {}
    name = str(model.get("name") or "?")
    fingerprint = str(model.get("fingerprint") or "")
    if names is not None and len(names.get(name, ())) > 1 and fingerprint:
        return f"{name}@{fingerprint[:8]}"
    return name


def _names(records: Iterable[dict]) -> dict[str, set]:
    names: dict[str, set] = {}
    for rec in records:
        model = rec.get("model") or {}
        names.setdefault(str(model.get("name") or "?"), set()).add(model.get("fingerprint"))
    return names


def summary_lines(assertions: list[dict], calibrations: list[dict]) -> list[str]:
    """The terminal summary: one row per assertion and attack (with the model it scored),
    then calibration lines (naming the model calibrated)."""
    rows: list[list[str]] = []
    names = _names(list(assertions) + list(calibrations))
    for rec in sort_records(assertions):
        test = rec.get("test") or "<no test>"
        model = model_label(rec.get("model"), names)
        reduce = rec.get("reduce", "mean")
        check = f"{rec['kind']} {rec['metric']}" + (f" [{reduce}]" if reduce != "mean" else "")
        verdict, bound = rec["verdict"].upper(), rec.get("bound")
        attack_rows = rec.get("attacks") or [{"attack": "-"}]
        extra = []  # rows that carry the verdict when one attack row cannot
        if len(attack_rows) > 1:
            extra.append(["worst case", fmt(rec.get("score")), "", bound_text(rec),
                          "" if bound is not None else verdict])
        if bound is not None:
            extra.append([f"{rec['confidence']:.0%} bound", fmt(bound), "", bound_text(rec), verdict])
        for i, row in enumerate(attack_rows):
            shown = row.get("verdict", "") if extra else verdict
            first = i == 0
            rows.append([test if first else "", check if first else "", model if first else "", row["attack"],
                         _score_text(row), fmt(row.get("original")), bound_text(rec), shown])
        rows += [["", "", ""] + r for r in extra]
    lines = table(rows, ["test", "check", "model", "attack", "score", "original", "threshold", "verdict"],
                  right=(4, 5)) if rows else []
    seeds = sorted({str(r["seed"]) for r in assertions if r.get("seed") is not None})
    if seeds:  # the one number that reproduces every attack and bootstrap of this run
        lines.insert(0, f"seed {', '.join(seeds)} (unlearn_seed / --unlearn-seed): attacks and bootstrap "
                        "bounds are reproducible with it")
    for cal in calibrations:
        lines.append(
            f"calibration of {model_label(cal.get('model'), names)} ({cal.get('metric')}, tau={fmt(cal.get('tau'))}): "
            f"alpha={fmt(cal.get('alpha'))}, "
            f"retain {fmt(cal.get('retain_score'))} (original {fmt(cal.get('original_retain_score'))}, "
            f"target {fmt(cal.get('target'))}), forget {fmt(cal.get('forget_score'))}, "
            f"{cal.get('evaluations', '?')} evaluation{'' if cal.get('evaluations') == 1 else 's'}")
    return lines + warning_lines(assertions)


def _score_text(row: dict) -> str:
    """An attack row's score; where the reference rule set samples aside, also the score that counted
    toward the verdict (``0.4100 (0.1600 counted)``), so an "ok" above the threshold reads right."""
    score, counted = row.get("score"), row.get("counted")
    if row.get("explained_by_reference") and counted is not None and counted != score:
        return f"{fmt(score)} ({fmt(counted)} counted)"
    return fmt(score)


def warning_lines(assertions: list[dict]) -> list[str]:
    """The summary's notes section: every assertion warning (a vacuous pass, an uninformative
    attack), so that a PASS that shows little is visible in the terminal, not only in the report."""
    lines = []
    for rec in sort_records(assertions):
        for text in rec.get("warnings") or []:
            lines.append(f"  {rec.get('test') or '<no test>'}: {text}")
    return ["notes (a pass here shows little):"] + lines if lines else []


# ---------------------------------------------------------------- the JSON report

def build_report(recorder: Recorder, settings: dict, *, version: str, workers: list[str] | None = None) -> dict:
    from .generation import GENERATION_POLICY

    assertions = sort_records(recorder.assertions)
    counts = {v: sum(1 for r in assertions if r.get("verdict") == v) for v in ("pass", "fail", "error")}
    opt_ins = sorted({o for m in recorder.models.values() for o in m.get("opt_ins", [])}
                     | {n for n in ("allow_pickle", "trust_remote_code") if settings.get(n)})
    report = {
        "schema": SCHEMA,
        "library": {"name": "pytest-unlearn", "version": version},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": settings.get("seed"),
        "settings": settings,
        "generation": GENERATION_POLICY,
        "opt_ins": opt_ins,
        "models": dict(sorted(recorder.models.items())),
        "workers": workers,
        "cost": recorder.cost,
        "summary": {"assertions": len(assertions), **counts},
        "assertions": assertions,
        "calibrations": sorted(recorder.calibrations, key=lambda c: json.dumps(_calibration_key(c), default=str)),
    }
    return jsonable(report)


REPORT_NAME = "unlearn-report.json"  # the file written into a folder given as --unlearn-report DIR/


def report_destination(path: str | os.PathLike) -> str:
    """Where ``--unlearn-report PATH`` goes: ``PATH/unlearn-report.json`` when PATH ends with a
    slash (the folder is created), else PATH itself.  An existing folder named without the
    slash is an error (:class:`ConfigError`): a report never replaces or hides in a folder by guess."""
    text = os.fspath(path)
    if text.endswith(("/", os.sep)):
        return os.path.join(text, REPORT_NAME)
    if os.path.isdir(text):
        raise ConfigError(f"cannot write the unlearning report: {text} is a folder; end it with '/' "
                          f"(--unlearn-report {text}/) to write {REPORT_NAME} inside it, or name a file")
    return text


def write_report(path: str | os.PathLike, data: Any) -> str:
    """Write the JSON report to :func:`report_destination` of ``path`` and return that file;
    any failure is a one-line :class:`ConfigError` naming the path and the reason."""
    target = report_destination(path)
    try:
        write_json(target, data)
    except OSError as exc:
        raise ConfigError(f"cannot write the unlearning report to {target}: "
                          f"{write_failure(exc, os.path.dirname(target) or '.')}; "
                          "fix unlearn_report / --unlearn-report") from None
    return target


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON atomically (a temporary file moved into place)."""
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
