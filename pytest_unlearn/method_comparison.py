"""Calibrated comparison of unlearning methods and their hyper-parameters (the paper's UWC table).

Comparing unlearning methods by their raw forget scores rewards whichever method broke
the model the most.  The paper's answer (Wang et al., ICLR 2025, section 4) is to
calibrate first: mix each unlearned model back toward the original until its retain
score reaches ``tau`` times the original's (:func:`~pytest_unlearn.calibration.calibrate`),
then compare forget scores at that equal retention.

:func:`compare_methods` runs a grid::

    compare_methods(original, {"ga": {"lr": [1e-5, 3e-5], "steps": [20]},
                               "npo": {"lr": [1e-5], "steps": [20], "beta": [0.1, 0.5]}},
                    forget, retain, tau=0.9, metric="es", out_dir="runs/")

For every method and every combination of its hyper-parameter lists it unlearns
(:func:`pytest_unlearn.methods.unlearn`, seeded), calibrates to ``tau`` and records
one row: method, hyper-parameters, alpha, retain score, calibrated forget score, the
uncalibrated forget score (alpha = 1) and the original's scores.  ``best`` keeps, per
method, the setting with the least knowledge left in the calibrated forget score (for
ES: the lowest).

**Resumable.**  With ``out_dir`` every finished run is appended to ``runs.jsonl`` as one
JSON line, keyed by a hash of the original's fingerprint, both data sets' content
hashes, the method, its parameters, seed, tau, metric (and the prompt format, the
calibration tolerance and the library version).  A rerun reads the file and skips every
key it finds, so an interrupted grid continues where it stopped and a finished one
costs nothing.  A run that fails (for example a learning rate that makes the loss
diverge) is stored with ``status = "error"`` and not retried unless ``retry_errors``.
``save_checkpoints`` also writes each unlearned model (alpha = 1, safetensors) to
``out_dir/checkpoints/<method>-<key>``, ready for :func:`pytest_unlearn.audit.audit_metrics`.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import methods
from .errors import ConfigError, UnlearnError
from .formatting import from_jsonable

if TYPE_CHECKING:
    import pandas as pd

    from .data import Dataset
    from .scoring import Scorer

__all__ = ["ComparisonResult", "compare_methods", "expand_grid", "run_key"]

RUNS_FILE = "runs.jsonl"
ALGORITHM = "method-comparison-v1"
TABLE_COLUMNS = ["method", "params", "alpha", "retain_score", "forget_score", "forget_score_uncalibrated",
                 "original_retain_score", "original_forget_score", "evaluations", "seconds", "status",
                 "cached", "checkpoint", "key"]


# ---------------------------------------------------------------- the grid

def expand_grid(grid: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """``{"ga": {"lr": [1e-5, 3e-5], "steps": [20]}}`` -> ``[("ga", {"lr": 1e-5, "steps": 20}), ...]``.

    A method maps to a dict of parameter -> list of values (a scalar is one value; the
    product is taken in sorted parameter order), or to a list of such dicts (each
    expanded on its own), or to ``None`` / ``{}`` (the method's defaults).  Method names
    are checked against the registry (unknown names suggest the nearest one).
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError("the grid must be a non-empty mapping of method name -> {parameter: [values]}")
    out: list[tuple[str, dict]] = []
    for method, spec in grid.items():
        name = str(method).strip().lower()
        methods.METHODS.get(name)  # UnknownNameError with a suggestion
        specs = spec if isinstance(spec, (list, tuple)) else [spec]
        for one in specs:
            if one is None:
                one = {}
            if not isinstance(one, Mapping):
                raise ConfigError(f"grid[{method!r}] must map parameter names to lists of values, got "
                                  f"{type(one).__name__}")
            keys = sorted(str(k) for k in one)
            values = []
            for k in keys:
                v = one[k]
                v = list(v) if isinstance(v, (list, tuple)) else [v]
                if not v:
                    raise ConfigError(f"grid[{method!r}][{k!r}] is an empty list")
                values.append(v)
            _check_params(name, keys)
            for combo in itertools.product(*values):
                params = dict(zip(keys, combo))
                if (name, params) not in out:
                    out.append((name, params))
    return out


RESERVED = ("seed", "prompt", "progress", "out_dir")


def _check_params(method: str, keys: Sequence[str]) -> None:
    """Fail fast on a parameter the method does not take (a typo must not become a stored error)."""
    import inspect

    fn = methods.METHODS.get(method)
    sig = inspect.signature(fn)
    accepted = [p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for k in keys:
        if k in RESERVED:
            raise ConfigError(f"grid[{method!r}]: {k!r} is set by compare_methods (seed=..., the scorer's prompt "
                              "format, progress=..., save_checkpoints=...), not by the grid")
        if k not in accepted and not takes_any:
            import difflib
            near = difflib.get_close_matches(k, accepted, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"grid[{method!r}]: {method} takes no parameter {k!r}{hint}; it accepts "
                              f"{', '.join(a for a in accepted if a not in RESERVED)}")


def _fingerprint_of(original) -> str:
    return getattr(original, "fingerprint", str(original))


def run_key(original, forget: "Dataset", retain: "Dataset", method: str, params: Mapping[str, Any], seed: int,
            tau: float, metric: str, *, prompt: str | None = None, tol: float = 0.01, reduce: str = "mean") -> str:
    """The resume key of one run (see the module docstring)."""
    from .cache import cache_key

    return cache_key(ALGORITHM, _fingerprint_of(original), forget.content_hash, retain.content_hash,
                     str(method), json.dumps(_plain(dict(params)), sort_keys=True), int(seed), float(tau),
                     str(metric), prompt, float(tol), reduce)


# ---------------------------------------------------------------- the result

@dataclass
class ComparisonResult:
    """``table``: one row per run (:data:`TABLE_COLUMNS`; ``params`` as a dict), sorted by
    method then calibrated forget score.  ``best``: per method, the run with the least
    knowledge in the calibrated forget score (ties: more retain knowledge).  ``runs``:
    the stored records."""

    table: "pd.DataFrame"
    best: "pd.DataFrame"
    runs: list[dict]
    metric: str
    tau: float
    seed: int
    out_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def checkpoints(self) -> dict[str, str]:
        """Run label -> saved checkpoint folder (runs saved with ``save_checkpoints``)."""
        out = {}
        for r in self.runs:
            if r.get("checkpoint") and Path(r["checkpoint"]).is_dir():
                out[run_label(r["method"], r["params"])] = r["checkpoint"]
        return out

    def to_markdown(self) -> str:
        from .formatting import markdown_table, number as _f

        lines = [f"# Calibrated method comparison ({self.metric}, tau = {self.tau:g}, seed {self.seed})", "",
                 f"Every unlearned model is mixed back toward the original (UWC) until its retain {self.metric} "
                 f"reaches {self.tau:g} x the original's; forget scores are then compared at equal retention.", "",
                 "## Best setting per method", ""]
        lines += markdown_table(["method", "hyper-parameters", "alpha", "retain", "forget (calibrated)",
                                 "forget (uncalibrated)"],
                                [[r.method, _params_text(r.params), _f(r.alpha), _f(r.retain_score),
                                  _f(r.forget_score), _f(r.forget_score_uncalibrated)]
                                 for r in self.best.itertuples()])
        lines += ["", "## All runs", ""]
        lines += markdown_table(["method", "hyper-parameters", "alpha", "retain", "forget (calibrated)",
                                 "forget (uncalibrated)", "status"],
                                [[r.method, _params_text(r.params), _f(r.alpha), _f(r.retain_score),
                                  _f(r.forget_score), _f(r.forget_score_uncalibrated), r.status]
                                 for r in self.table.itertuples()])
        ok = self.table[self.table["status"] == "ok"]
        if len(ok):
            r = ok.iloc[0]
            lines += ["", f"Original model: retain {self.metric} {_f(r['original_retain_score'])}, "
                          f"forget {self.metric} {_f(r['original_forget_score'])}."]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def save(self, out_dir) -> dict[str, Path]:
        """Write ``comparison.csv``, ``best.csv`` and ``comparison.md`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"table": out / "comparison.csv", "best": out / "best.csv", "markdown": out / "comparison.md"}
        for key, frame in (("table", self.table), ("best", self.best)):
            shown = frame.copy()
            shown["params"] = [json.dumps(p, sort_keys=True) for p in shown["params"]]
            shown.to_csv(paths[key], index=False)
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        return paths

    def __repr__(self) -> str:
        return f"ComparisonResult({len(self.table)} runs, {self.metric}, tau={self.tau:g})"


def run_label(method: str, params: Mapping[str, Any]) -> str:
    return f"{method}({_params_text(params)})"


def _params_text(params: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sorted(dict(params).items()))


# ---------------------------------------------------------------- the store

def read_runs(path) -> dict[str, dict]:
    """Records of ``runs.jsonl`` by key (later lines win; a torn or foreign line is skipped)."""
    out: dict[str, dict] = {}
    path = Path(path)
    if not path.is_file():
        return out
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                record = from_jsonable(json.loads(line))
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str) and record.get("algorithm") == ALGORITHM:
                out[record["key"]] = record
    return out


def append_run(path, record: dict) -> None:
    """Append one JSON line (a single ``write`` on an ``O_APPEND`` file, then fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_plain(record), sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(obj):
    """JSON-safe (:func:`~pytest_unlearn.formatting.jsonable`: numpy unboxed, NaN/inf as "nan"/"inf")."""
    from .formatting import jsonable

    return jsonable(obj)


# ---------------------------------------------------------------- the comparison

def compare_methods(original, grid: Mapping[str, Any], forget, retain, *, tau: float = 0.9, metric: str = "es",
                    seed: int = 0, out_dir=None, save_checkpoints: bool = False, scorer: "Scorer | None" = None,
                    tol: float = 0.01, progress: bool = False, retry_errors: bool = False,
                    device: str = "auto", dtype: str = "auto") -> ComparisonResult:
    """Unlearn with every method and setting of ``grid``, calibrate each to ``tau`` and tabulate.

    ``original``: a ModelHandle or a model path.  ``forget`` / ``retain``: Datasets or data
    file paths.  ``out_dir``: where ``runs.jsonl`` (the resume store), the checkpoints
    (``save_checkpoints``) and ``comparison.csv`` / ``best.csv`` / ``comparison.md`` go;
    without it nothing is stored and every run is done.  ``scorer``: its prompt format (with
    its system prompt and chat-template arguments) is used for unlearning and scoring alike, its
    batch size for scoring.  See the module docstring.
    """
    import pandas as pd

    from .audit import _as_dataset
    from .calibration import _Workspace
    from .metrics import get_metric

    m = get_metric(metric)
    if not 0.0 < float(tau) <= 1.0:
        raise ConfigError(f"tau must be in (0, 1], got {tau!r}")
    if save_checkpoints and out_dir is None:
        raise ConfigError("save_checkpoints=True needs an out_dir to save them in")
    if isinstance(original, (str, os.PathLike)):
        from .models import load_model
        original = load_model(original, device=device, dtype=dtype, name="original")
    forget, retain = _as_dataset(forget, "forget"), _as_dataset(retain, "retain")
    runs_grid = expand_grid(grid)
    if scorer is None:
        from .scoring import Scorer
        scorer = Scorer()
    fmt = scorer.prompt_format(original)  # every prompt setting of the scorer, for unlearning too
    prompt = fmt.spec
    store = Path(out_dir) / RUNS_FILE if out_dir is not None else None
    done = read_runs(store) if store is not None else {}
    records, notes = [], []
    workspace = _Workspace()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(runs_grid), desc="methods", unit="run")
    try:
        for method, params in runs_grid:
            key = run_key(original, forget, retain, method, params, seed, tau, m.name, prompt=prompt, tol=tol)
            previous = done.get(key)
            if previous is not None and (previous.get("status") == "ok" or not retry_errors):
                records.append({**previous, "cached": True})
                if bar is not None:
                    bar.update(1)
                continue
            if bar is not None:
                bar.set_postfix_str(run_label(method, params)[:60])
            record = _one_run(original, forget, retain, method, params, key, seed=seed, tau=float(tau), metric=m,
                              tol=tol, scorer=scorer, prompt=fmt, progress=progress, workspace=workspace,
                              checkpoint_dir=(Path(out_dir) / "checkpoints" / f"{method}-{key[:16]}"
                                              if save_checkpoints else None))
            record.update(original_fingerprint=original.fingerprint, forget_hash=forget.content_hash,
                          retain_hash=retain.content_hash, prompt=prompt)
            if store is not None:
                append_run(store, record)
            records.append({**record, "cached": False})
            if bar is not None:
                bar.update(1)
    finally:
        workspace.model = None
        if bar is not None:
            bar.close()
    for r in records:
        if r.get("status") != "ok":
            notes.append(f"{run_label(r['method'], r['params'])} failed: {r.get('error')}")
    table = _table(records, m)
    best = _best(table, m)
    result = ComparisonResult(table, best, records, m.name, float(tau), int(seed),
                              Path(out_dir) if out_dir is not None else None, notes)
    if out_dir is not None:
        result.save(out_dir)
    return result


def _one_run(original, forget, retain, method, params, key, *, seed, tau, metric, tol, scorer, prompt, progress,
             workspace, checkpoint_dir) -> dict:
    from .calibration import calibrate

    record: dict[str, Any] = {"algorithm": ALGORITHM, "key": key, "method": method, "params": dict(params),
                              "seed": int(seed), "tau": tau, "metric": metric.name, "tol": tol,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    started = time.perf_counter()
    unlearned = None
    try:
        unlearned = methods.unlearn(method, original, forget, retain, seed=int(seed), prompt=prompt,
                                    progress=progress, out_dir=checkpoint_dir, **params)
        res = calibrate(original, unlearned, retain, tau, metric, forget=forget, scorer=scorer, tol=tol,
                        progress=progress, _workspace=workspace)
        curve = res.curve.set_index("alpha")
        record.update(status="ok", alpha=res.alpha, retain_score=res.retain_score, forget_score=res.forget_score,
                      forget_score_uncalibrated=res.forget_score_uncalibrated,
                      original_retain_score=res.original_retain_score,
                      original_forget_score=float(curve.loc[0.0, "forget_score"]) if 0.0 in curve.index else None,
                      evaluations=res.evaluations, monotone=res.monotone, calibration_notes=list(res.notes),
                      unlearned_fingerprint=unlearned.fingerprint,
                      checkpoint=str(checkpoint_dir) if checkpoint_dir is not None else None)
    except ConfigError:
        raise
    except UnlearnError as exc:  # e.g. a learning rate that makes the loss diverge
        record.update(status="error", error=f"{type(exc).__name__}: {exc}", checkpoint=None)
    finally:
        if unlearned is not None:
            unlearned.release()
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _table(records: Sequence[dict], m) -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    rows = []
    for r in records:
        rows.append({c: r.get(c) for c in TABLE_COLUMNS})
        rows[-1]["params"] = dict(r.get("params") or {})
        rows[-1]["cached"] = bool(r.get("cached", False))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for c in ("alpha", "retain_score", "forget_score", "forget_score_uncalibrated", "original_retain_score",
              "original_forget_score", "seconds"):
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(np.float64)
    if len(table):
        sign = 1.0 if m.higher_is_more_knowledge else -1.0
        keys = pd.DataFrame({"method": table["method"].astype(str),
                             "forget": (sign * table["forget_score"]).fillna(np.inf),
                             "retain": (-sign * table["retain_score"]).fillna(np.inf)})
        order = keys.sort_values(["method", "forget", "retain"], kind="mergesort").index
        table = table.loc[order].reset_index(drop=True)
    return table


def _best(table, m) -> "pd.DataFrame":
    """Per method, the first ok row of the (already sorted) table."""
    ok = table[(table["status"] == "ok") & table["forget_score"].notna()]
    return ok.groupby("method", sort=True, as_index=False).head(1).reset_index(drop=True)
