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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .gates.regression import RegressionResult
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


def push_store(store: BaselineStore) -> None:
    from . import session

    session.enter(store=store)


def pop_store(store: BaselineStore) -> None:
    from . import session

    session.leave_part("store", store)


def active_store() -> BaselineStore | None:
    from . import session

    return session.current("store")


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


# ---------------------------------------------------------------- the assertion

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
        from .gates.regression import run_regression

        return run_regression(metric, baseline if baseline is not None else self.name, under_attack, tolerance,
                              model, data, reduce, suite, self._store, test=self.nodeid)

    def __repr__(self) -> str:
        return f"BaselineCheck({self.nodeid!r}, default={self.name}.json)"


def __getattr__(name: str):
    """``assert_no_regression`` and ``RegressionResult`` live with the other gates
    (:mod:`pytest_unlearn.gates.regression`); they are re-exported here on first use."""
    if name in ("assert_no_regression", "RegressionResult"):
        from .gates import regression

        return getattr(regression, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
