"""Regression baselines: a release may not forget less than the one before it.

``assert_no_regression`` scores the model under test exactly as ``assert_forgotten`` does
(per sample, the most knowledge over no attack and every listed attack) and compares the
scores with a *baseline*: a JSON file committed from an accepted release.  It fails with
:class:`~pytest_unlearn.errors.UnlearningAssertionError` when a sample now shows more
knowledge than in the baseline beyond ``tolerance`` (read in the metric's knowledge
direction), or when the reduced score did.  ``--unlearn-update-baselines`` (ini
``unlearn_update_baselines``) writes or refreshes the files instead, like a snapshot tool.

The file (``FORMAT``) is valid JSON, written deterministically for review in a pull request:
keys sorted, a ``header`` block with what made it (model fingerprints, data hash, metric,
canonical attack specs, prompt format, seed, reduce, library version), the ``reduced``
scores, then ``samples``: one line per sample, keyed by the content-derived sample id
(``Dataset.ids``), sorted.  Scores are stored, and compared, rounded to ``DIGITS``
significant digits.  A baseline made under another configuration (metric, attacks,
prompt format, data, reduce) is refused, never compared; a different model fingerprint
is the point and is only shown.  See docs/baselines.md.

A :class:`BaselineStore` knows where baselines live (``unlearn-baselines/`` under the
pytest rootdir), whether to write them, and which ones the run used; the plugin makes
one active per session and reports stale baselines at the end.  Pure Python at import
(no torch, numpy or pandas): the plugin imports this module in every run.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .atomic import write_text_atomically
from .errors import ConfigError, UnlearningAssertionError

if TYPE_CHECKING:
    import pandas as pd

    from .assertions import ForgettingResult
    from .metrics import Metric
    from .suite import Suite

__tracebackhide__ = True  # pytest hides every frame of this module in tracebacks

__all__ = ["assert_no_regression", "RegressionResult", "BaselineError", "BaselineStore", "BaselineCheck",
           "FORMAT", "FOLDER", "render", "read_baseline", "active_store", "push_store", "pop_store"]

FORMAT = "pytest-unlearn-baseline/1"
FOLDER = "unlearn-baselines"
DIGITS = 6  # significant digits stored and compared: cross-hardware noise stays out of diffs
MAX_LISTED = 20  # regressed samples listed in a failure message (the first few with generations)
UPDATE_HINT = "--unlearn-update-baselines"
CONFIG_FIELDS = ("metric", "attacks", "prompt", "data", "reduce")  # a difference refuses the baseline


class BaselineError(ConfigError):
    """A baseline is missing, unreadable, or was made under another configuration."""


# ---------------------------------------------------------------- where baselines live

class BaselineStore:
    """Baselines under ``root / folder``: resolves names, writes files (``update``), and
    remembers which ones this session used (for the stale report; plain data for xdist)."""

    def __init__(self, root: str | os.PathLike | None = None, *, update: bool = False, folder: str = FOLDER):
        self.root = Path(root if root is not None else os.getcwd()).resolve()
        self.folder = folder
        self.update = bool(update)
        self.used: dict[str, str] = {}  # relative path -> the test that used it
        self.written: dict[str, str] = {}  # relative path -> "created" | "updated" | "unchanged"
        self.notes: dict[str, str] = {}  # relative path -> what an update changed
        self.conflicts: list[str] = []
        self.narrowed = False  # the run did not cover the whole suite (set by the plugin)
        self._this_test: set[str] = set()

    @property
    def directory(self) -> Path:
        return self.root / self.folder

    def path_for(self, baseline: str | os.PathLike) -> Path:
        """A bare name (``forget-es``) is ``<folder>/forget-es.json``; a path with a folder part
        is taken relative to the root (so ``unlearn-baselines/x.json`` works too)."""
        text = os.fspath(baseline)
        if not text.strip():
            raise ConfigError("baseline= must be a name or a path, got an empty string")
        path = Path(os.path.expanduser(text))
        if not path.is_absolute() and len(path.parts) == 1:
            path = Path(self.folder) / (path.name if path.suffix == ".json" else path.name + ".json")
        return path if path.is_absolute() else self.root / path

    def relative(self, path: str | os.PathLike) -> str:
        """The path as shown and stored: relative to the root (POSIX), else absolute."""
        p = Path(os.path.abspath(os.fspath(path)))
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return p.as_posix()

    # ---------------------------------------------------------------- use in a run
    def claim(self, path: str | os.PathLike, test: str | None) -> str:
        """Note that ``test`` uses this baseline; one baseline serves one check of one test."""
        rel = self.relative(path)
        other = self.used.get(rel)
        if rel in self._this_test:
            raise BaselineError(f"baseline {rel} is used twice in {test or 'this test'}: one baseline file "
                                f"holds one check; give each check its own file with baseline='<name>'")
        if other is not None and test is not None and other != test:
            raise BaselineError(f"baseline {rel} is already used by {other} in this run: one test, one file; "
                                f"pass baseline='<name>' to give {test} its own")
        self.used.setdefault(rel, test or "")
        if test is not None:
            self._this_test.add(rel)
        return rel

    def mark_used(self, path: str | os.PathLike, test: str | None = None) -> None:
        """Count a baseline as used without checking (a skipped test still owns its baseline)."""
        self.used.setdefault(self.relative(path), test or "")

    def end_test(self) -> None:
        self._this_test.clear()

    def files(self) -> list[str]:
        """Every baseline file under the folder (relative, sorted); temporary files left out."""
        if not self.directory.is_dir():
            return []
        return sorted(self.relative(p) for p in self.directory.rglob("*.json")
                      if p.is_file() and not p.name.startswith("."))

    def stale(self) -> list[str]:
        """Baseline files no test used in this run (meaningful only for a whole-suite run)."""
        return [f for f in self.files() if f not in self.used]

    # ---------------------------------------------------------------- xdist
    def to_workeroutput(self) -> dict:
        return {"used": dict(self.used), "written": dict(self.written), "notes": dict(self.notes),
                "conflicts": list(self.conflicts), "narrowed": self.narrowed}

    def merge(self, data: dict | None) -> None:
        if not data:
            return
        for rel, test in (data.get("used") or {}).items():
            other = self.used.get(rel)
            if other is not None and test and other and other != test:
                self.conflicts.append(f"baseline {rel} is used by both {other} and {test}: one test, one file")
            self.used.setdefault(rel, test)
        self.written.update(data.get("written") or {})
        self.notes.update(data.get("notes") or {})
        self.conflicts.extend(data.get("conflicts") or [])
        self.narrowed = self.narrowed or bool(data.get("narrowed"))

    def summary_lines(self, *, complete: bool) -> list[str]:
        """The end-of-run lines: baselines written, conflicts, and (whole-suite runs) stale files."""
        lines = []
        for action in ("created", "updated"):
            for p in sorted(p for p, a in self.written.items() if a == action):
                note = self.notes.get(p)
                lines.append(f"{action} {p}" + (f" ({note})" if note else ""))
        unchanged = sum(1 for a in self.written.values() if a == "unchanged")
        if unchanged:
            lines.append(f"{unchanged} baseline{'s' if unchanged > 1 else ''} unchanged")
        lines += sorted(set(self.conflicts))
        if complete:
            stale = self.stale()
            if stale:
                n = len(stale)
                lines.append(f"{n} stale baseline{'s' if n > 1 else ''} under {self.folder}/: no test used "
                             f"{'them' if n > 1 else 'it'} in this run (a renamed or removed test?); delete "
                             f"{'them' if n > 1 else 'it'} or point a test at {'them' if n > 1 else 'it'} "
                             f"with baseline=...")
                lines += [f"  {p}" for p in stale]
        return lines


_STACK: list[BaselineStore] = []


def push_store(store: BaselineStore) -> None:
    _STACK.append(store)


def pop_store(store: BaselineStore) -> None:
    for i in range(len(_STACK) - 1, -1, -1):
        if _STACK[i] is store:
            del _STACK[i]
            return


def active_store() -> BaselineStore | None:
    return _STACK[-1] if _STACK else None


def default_name(nodeid: str) -> str:
    """``unlearn-baselines/<test name>.json``: the test's name (with its class, parameters
    made file-name safe), e.g. ``test_forget``, ``TestRelease.test_forget``, ``test_x[es]``."""
    parts = nodeid.split("::")
    name = ".".join(parts[1:]) if len(parts) > 1 else Path(parts[0]).stem
    return re.sub(r"[^A-Za-z0-9._\-\[\]=+,]", "_", name) or "baseline"


# ---------------------------------------------------------------- the file

def _round(value: float) -> Any:
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)  # "inf" / "-inf"; JSON has no such numbers (NaN never gets here)
    return float(f"{value:.{DIGITS}g}")


def _value(stored: Any) -> float:
    return float(stored)  # numbers, or the strings "inf" / "-inf"


def render(doc: dict) -> str:
    """The baseline as text: valid JSON with sorted keys, the header indented, one line per sample."""
    out = ["{"]
    keys = sorted(doc)
    for n, key in enumerate(keys):
        if key == "samples":
            body = [f"    {json.dumps(sid)}: {json.dumps(doc[key][sid], sort_keys=True, allow_nan=False)}"
                    for sid in sorted(doc[key])]
            value = "{\n" + ",\n".join(body) + "\n  }" if body else "{}"
        else:
            value = json.dumps(doc[key], indent=2, sort_keys=True, allow_nan=False).replace("\n", "\n  ")
        out.append(f"  {json.dumps(key)}: {value}{',' if n < len(keys) - 1 else ''}")
    return "\n".join(out) + "\n}\n"


def read_baseline(path: str | os.PathLike, shown: str | None = None) -> dict:
    """Load and check a baseline file (a BaselineError names the file and what is wrong)."""
    shown = shown or os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BaselineError(f"baseline {shown} cannot be read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline {shown}:{exc.lineno}: not valid JSON ({exc.msg}); refresh it with "
                            f"{UPDATE_HINT} (a merge conflict?)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise BaselineError(f"baseline {shown} is not a {FORMAT} file (format: {found!r}); refresh it with "
                            f"{UPDATE_HINT}")
    for key, kind in (("header", dict), ("reduced", dict), ("samples", dict)):
        if not isinstance(doc.get(key), kind):
            raise BaselineError(f"baseline {shown} has no {key!r} object; refresh it with {UPDATE_HINT}")
    return doc


# ---------------------------------------------------------------- the result

@dataclass
class RegressionResult:
    """What ``assert_no_regression`` measured.  ``scores``: one row per sample (columns
    ``baseline``, ``now``, ``change`` (now - baseline), ``worst_attack``, ``regressed``);
    ``forgetting``: the ``assert_forgotten`` figures it was computed from."""

    metric: "Metric"
    baseline: str  # the file, relative to the root
    action: str  # "compared", "created", "updated" or "unchanged"
    score: float  # the reduced per-sample worst case now
    baseline_score: float | None
    tolerance: float
    reduce: str
    regressed: list[str]
    scores: "pd.DataFrame"
    forgetting: "ForgettingResult"
    passed: bool = True
    record: dict = field(default_factory=dict, repr=False)
    message: str = field(default="", repr=False)

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"


# ---------------------------------------------------------------- the assertion

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
    return _run(metric, baseline, under_attack, tolerance, model, data, reduce, suite, store, test=None)


class BaselineCheck:
    """``assert_no_regression`` bound to one test (the ``unlearn_baseline`` fixture): its
    baseline defaults to ``unlearn-baselines/<test name>.json``."""

    def __init__(self, nodeid: str, store: BaselineStore | None = None):
        self.nodeid = nodeid
        self.name = default_name(nodeid)
        self._store = store

    @property
    def store(self) -> BaselineStore:
        return self._store or active_store() or BaselineStore()

    @property
    def path(self) -> Path:
        """The default baseline file of this test."""
        return self.store.path_for(self.name)

    def __call__(self, metric="es", baseline: str | os.PathLike | None = None, *, under_attack=(),
                 tolerance: float = 0.0, model=None, data=None, reduce: str = "mean",
                 suite: "Suite | None" = None) -> RegressionResult:
        __tracebackhide__ = True
        return _run(metric, baseline if baseline is not None else self.name, under_attack, tolerance, model,
                    data, reduce, suite, self._store, test=self.nodeid)

    def __repr__(self) -> str:
        return f"BaselineCheck({self.nodeid!r}, default={self.name}.json)"


def _run(metric, baseline, under_attack, tolerance, model, data, reduce, suite, store, test) -> RegressionResult:
    __tracebackhide__ = True
    from . import reporting
    from .assertions import _as_list, _base_record, _guarded

    current = getattr(reporting.active_recorder(), "current_test", None)
    test = test or current
    store = store or active_store() or BaselineStore()
    if baseline is None:
        if not test:
            raise ConfigError("assert_no_regression outside a pytest test needs baseline='<name or path>'")
        baseline = default_name(test)
    record = _base_record("regression", metric, tolerance=tolerance, reduce=reduce,
                          under_attack=_as_list(under_attack))
    result = _guarded(record, lambda: _regression(store, record, test, baseline, metric, _as_list(under_attack),
                                                  tolerance, model, data, reduce, suite))
    if not result.passed:
        raise UnlearningAssertionError(result.message, result)
    return result


def _regression(store: BaselineStore, record: dict, test, baseline, metric, under_attack, tolerance, model, data,
                reduce, suite) -> RegressionResult:
    import numpy as np
    import pandas as pd

    from .assertions import _forgotten, _number
    from .metrics import get_metric
    from .suite import current_suite

    path = store.path_for(baseline)
    rel = store.claim(path, test)
    record["baseline"] = rel
    tolerance = _number("tolerance", tolerance)
    if tolerance < 0:
        raise ConfigError(f"tolerance must be at least 0 (it is read in the metric's knowledge direction), "
                          f"got {tolerance:g}")
    suite = current_suite(suite)
    m = get_metric(metric)
    if not store.update and not path.is_file():
        how = f"pytest {UPDATE_HINT}" + (f" '{test}'" if test else "")
        raise BaselineError(f"baseline {rel} does not exist: create it from the accepted release with `{how}` "
                            f"(or unlearn_update_baselines = true), review it and commit it (docs/baselines.md)")

    # the scores, exactly as assert_forgotten computes them; a threshold at the far end of the
    # knowledge direction can never fail, so no message and no generation are made there
    limit = m.upper_bound if m.higher_is_more_knowledge else m.lower_bound
    forgetting = _forgotten(suite, {}, m, limit, under_attack, model, data, None, reduce, None,
                            judge_vacuous=False)
    frec = forgetting.record
    dataset, handle = suite.data(data), suite.model(model)
    labels = ["none"] + list(frec["under_attack"])
    spec_of = dict(zip(labels, ["none"] + list(frec["attack_specs"])))
    frame = forgetting.scores
    now = [_round(v) for v in frame["worst"]]
    now_reduced = _round(forgetting.score)
    header = {
        "metric": m.name, "direction": m.direction, "attacks": sorted(frec["attack_specs"]),
        "prompt": suite.scorer.prompt_format(handle).spec, "reduce": frec["reduce"], "seed": suite.settings.seed,
        "data": {"name": dataset.name, "n": len(dataset), "content_hash": dataset.content_hash},
        "models": _models(suite, handle), "library": {"name": "pytest-unlearn", "version": __version__},
    }
    if test:
        header["test"] = test
    reduced = {spec_of[c]: _round(forgetting.reduced[c]) for c in labels}
    reduced["worst"] = now_reduced
    samples = {sid: {"scores": {spec_of[c]: _round(frame[c].iloc[i]) for c in labels}, "worst": now[i],
                     "worst_attack": spec_of[frame["worst_attack"].iloc[i]]}
               for i, sid in enumerate(dataset.ids)}
    doc = {"format": FORMAT, "header": header, "reduced": reduced, "samples": samples}
    record.update(metric=m.name, direction=m.direction, higher_is_more_knowledge=m.higher_is_more_knowledge,
                  reduce=frec["reduce"], under_attack=frec["under_attack"], attack_specs=frec["attack_specs"],
                  data=frec["data"], model=frec["model"], seed=suite.settings.seed, tolerance=tolerance,
                  score=now_reduced, uninformative=forgetting.uninformative)

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
        return RegressionResult(m, rel, action, now_reduced, old_reduced, tolerance, frec["reduce"],
                                regressed_ids, table, forgetting, passed, record)

    comparison = _compare(m, old, doc, dataset, tolerance, rel) if old is not None else None
    if store.update:
        text = render(doc)
        existing = path.read_text(encoding="utf-8") if path.is_file() else None
        action = "created" if existing is None else ("unchanged" if existing == text else "updated")
        if action != "unchanged":
            write_text_atomically(path, text)
        store.written[rel] = action
        if comparison is not None and comparison["regressed"]:
            store.notes[rel] = (f"{len(comparison['regressed'])} of {len(dataset)} samples forget less than "
                                f"the previous baseline")
        rows = _rows(forgetting, labels, spec_of, None, m, tolerance)
        record.update(verdict="pass", threshold=None, baseline_action=action, baseline_score=None, attacks=rows,
                      samples={sid: {"now": now[i], "worst_attack": samples[sid]["worst_attack"]}
                               for i, sid in enumerate(dataset.ids)}, regressed=[], worst_samples=[])
        table = pd.DataFrame({"baseline": np.nan, "now": [float(v) for v in now]},
                             index=pd.Index(dataset.ids, name="sample"))
        return result(action, True, None, [], table)

    old_reduced = _value(old["reduced"].get("worst"))
    allowed = old_reduced + tolerance if m.higher_is_more_knowledge else old_reduced - tolerance
    reduced_worse = m.more_knowledge(float(now_reduced), allowed)
    regressed = comparison["regressed"]
    passed = not regressed and not reduced_worse
    rows = _rows(forgetting, labels, spec_of, old, m, tolerance)
    olds, nows = comparison["old"], [float(v) for v in now]
    table = pd.DataFrame({"baseline": olds, "now": nows, "change": np.subtract(nows, olds),
                          "worst_attack": [samples[s]["worst_attack"] for s in dataset.ids],
                          "regressed": [i in set(regressed) for i in range(len(dataset))]},
                         index=pd.Index(dataset.ids, name="sample"))
    record.update(verdict="pass" if passed else "fail", threshold=allowed, baseline_action="compared",
                  baseline_score=old_reduced, attacks=rows, regressed=[dataset.ids[i] for i in regressed],
                  baseline_models=old["header"].get("models"),
                  samples={sid: {"baseline": olds[i], "now": nows[i], "worst_attack": samples[sid]["worst_attack"],
                                 "regressed": i in set(regressed)} for i, sid in enumerate(dataset.ids)},
                  worst_samples=[])
    out = result("compared", passed, old_reduced, [dataset.ids[i] for i in regressed], table)
    if not passed:
        order = sorted(regressed, key=lambda i: -abs(nows[i] - olds[i]))
        from .assertions import MAX_SHOWN_SAMPLES, _generate

        shown_at = order[:MAX_SHOWN_SAMPLES]
        generated = dict(zip(shown_at, _generate(suite, handle, dataset, shown_at)))
        shown = [{"id": dataset.ids[i], "baseline": olds[i], "now": nows[i],
                  "attack": samples[dataset.ids[i]]["worst_attack"], "prompt": str(dataset.prompts[i]),
                  "answer": str(dataset.answers[i]), "generated": str(generated.get(i, ""))} for i in order]
        record["worst_samples"] = shown[:MAX_SHOWN_SAMPLES]
        out.message = _message(m, rel, dataset, handle, old["header"], header, rows, old_reduced, now_reduced,
                               allowed, reduced_worse, tolerance, shown, len(shown_at), test)
        record["message"] = out.message
    return out


def _models(suite, handle) -> dict:
    """Fingerprints (no paths: the file must not depend on the machine that wrote it)."""
    models = {"model": {"name": handle.name, "fingerprint": handle.fingerprint}}
    for role, h in suite.loaded_models().items():
        if role in ("original", "reference") and h is not None:
            models[role] = {"fingerprint": h.fingerprint}
    return models


def _differences(old: dict, new: dict) -> list[str]:
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


def _compare(m, old: dict, doc: dict, dataset, tolerance: float, rel: str) -> dict:
    """Per-sample comparison of the worst-case scores with the baseline's."""
    olds, regressed = [], []
    for i, sid in enumerate(dataset.ids):
        entry = old["samples"].get(sid)
        if not isinstance(entry, dict) or "worst" not in entry:
            raise BaselineError(f"baseline {rel} has no score for sample {sid} although its data hash matches "
                                f"(edited by hand?); refresh it with {UPDATE_HINT}")
        before, now = _value(entry["worst"]), _value(doc["samples"][sid]["worst"])
        olds.append(before)
        allowed = before + tolerance if m.higher_is_more_knowledge else before - tolerance
        if m.more_knowledge(now, allowed):
            regressed.append(i)
    return {"old": olds, "regressed": regressed}


def _rows(forgetting, labels, spec_of, old, m, tolerance) -> list[dict]:
    """The per-condition rows of the record (as assert_forgotten's), read against the baseline."""
    rows = []
    for row in forgetting.record["attacks"]:
        row = dict(row)
        if old is None:
            row["verdict"] = "uninformative" if row.get("uninformative") else "ok"
            row["baseline"] = None
        else:
            before = old["reduced"].get(spec_of.get(row["attack"], row["attack"]))
            row["baseline"] = None if before is None else _value(before)
            if before is None:
                row["verdict"] = "ok"
            else:
                allowed = row["baseline"] + tolerance if m.higher_is_more_knowledge else row["baseline"] - tolerance
                row["verdict"] = "regressed" if m.more_knowledge(float(_round(row["score"])), allowed) else "ok"
        rows.append(row)
    return rows


def _message(m, rel, dataset, handle, old_header, header, rows, old_reduced, now_reduced, allowed, reduced_worse,
             tolerance, shown, n_generated, test) -> str:
    from .assertions import _short
    from .reporting import fmt, table

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
    lines += ["  " + line for line in table(body, ["attack", "baseline", "now", "original", "verdict"],
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
            lines.append(f"     prompt:    {_short(s['prompt'])}")
            lines.append(f"     answer:    {_short(s['answer'])}")
            lines.append(f"     generated: {_short(s['generated'])}")
    how = f"pytest {UPDATE_HINT}" + (f" '{test}'" if test else "")
    lines += ["", f"if this model is an accepted release that may forget less, refresh the baseline with `{how}` "
                  f"and have the diff reviewed"]
    return "\n".join(lines)
