"""Metric robustness audit: which metric can you trust for this model and data?

The paper's criterion (Wang et al., ICLR 2025, section 3): score each candidate metric
on many unlearned models before and after each red-team attack.  A robust metric keeps
a linear, near-identity relation across the models: the Pearson correlation (PCC) of
the after-attack scores with the before-attack scores is near 1, and for surface-level
attacks (prompt attacks here) the least-squares slope of after-vs-before is near 1 too.
A metric whose ranking of the models changes under a harmless rewording or a
quantization cannot tell you which unlearned model really forgot.

:func:`audit_metrics` runs that experiment: every metric x attack x split (forget and
retain), one reduced score per checkpoint (the mean over samples, as in the paper),
then PCC and slope across the checkpoints, a ranking and a recommendation (highest mean
PCC over attacks and splits; ties broken by the mean ``|slope - 1|`` over the
surface-level attacks).  :func:`assert_metric_robust` is the pytest form, on the active
suite's original model and data.

Cost.  One teacher-forced pass per model, split and prompt variant serves every
forward-pass metric at once (``es``, ``em``, ``prob``, ``ppl`` and the MIA scores);
``truth_ratio`` adds passes over the paraphrased and perturbed answers and ``rouge_l``
generates.  A weight attack (quantize, relearn, ablate), a chain (``relearn+logit_lens``)
and ``gcg`` (whose optimisation does not depend on the metric) are run once per model and split, and
all metrics are scored on the attacked weights: the audit runs the attack with one
metric while a capturing scorer records every scoring the attack does, computes the
other metrics from the same passes, and rebuilds each metric's outcome with the
attack's own rule (per sample, the most knowledge over everything the attack scored;
true of every built-in attack, and only they take this path).  The rebuilt outcome of
the metric the attack really ran is checked against the attack's own result; on any
mismatch, and for attacks defined elsewhere, each metric gets its own attack run.

Controls.  The same attacks run on the original model; a row whose attack also wipes
out the original's knowledge (:func:`~pytest_unlearn.attacks.attack_is_uninformative`)
is flagged ``uninformative``: its PCC says little about the metric.

Importing this module is cheap (numpy and pandas load on use).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .errors import AttackError, ConfigError, MetricError
from .formatting import markdown_table, number as fmt

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .data import Dataset
    from .metrics import Metric
    from .models import ModelHandle
    from .scoring import Scorer
    from .suite import Suite

__all__ = ["AuditResult", "CANDIDATE_METRICS", "DEFAULT_ATTACKS", "assert_metric_robust", "audit_metrics",
           "fit_line", "split_attack_list"]

__tracebackhide__ = True

#: Every candidate the audit scores by default (``truth_ratio`` only on data with perturbed answers).
CANDIDATE_METRICS = ("es", "em", "prob", "ppl", "rouge_l", "truth_ratio",
                     "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_pp")
DEFAULT_ATTACKS = ("paraphrase", "quantize:4", "relearn")
SPLITS = ("forget", "retain")
NONE = "none"
ALGORITHM = "audit-v1"
RANK_DECIMALS = 3  # mean PCCs equal to this many decimals are a tie, broken by |slope - 1|
TABLE_COLUMNS = ["metric", "attack", "split", "pcc", "slope", "intercept", "n", "before_mean", "after_mean",
                 "original_before", "original_after", "uninformative", "surface", "direction"]


# ---------------------------------------------------------------- the statistics

def fit_line(before: Sequence[float], after: Sequence[float]) -> dict[str, float]:
    """Pearson correlation and least-squares line ``after = slope * before + intercept``.

    Pairs where either value is not finite are left out (``n`` counts the rest).  With
    fewer than 2 pairs everything is NaN; with no spread in ``before`` the slope is NaN;
    with no spread in either the PCC is NaN.
    """
    import numpy as np

    x = np.asarray(before, dtype=np.float64)
    y = np.asarray(after, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(len(x))
    out = {"pcc": math.nan, "slope": math.nan, "intercept": math.nan, "n": n}
    if n < 2:
        return out
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    scale_x = max(1.0, float(np.abs(x).max()))
    scale_y = max(1.0, float(np.abs(y).max()))
    spread_x = sxx > (1e-12 * scale_x) ** 2 * n
    spread_y = syy > (1e-12 * scale_y) ** 2 * n
    if spread_x:
        out["slope"] = sxy / sxx
        out["intercept"] = float(y.mean() - out["slope"] * x.mean())
    if spread_x and spread_y:
        out["pcc"] = float(np.clip(sxy / math.sqrt(sxx * syy), -1.0, 1.0))
    return out


# ---------------------------------------------------------------- the result

@dataclass
class AuditResult:
    """What :func:`audit_metrics` measured.

    * ``scores``: one row per model x metric x split x attack (``none`` = no attack):
      ``checkpoint``, ``role`` (``checkpoint`` or ``original``, the control), ``metric``,
      ``split``, ``attack``, ``value`` (mean over samples), ``n_samples``, ``note``.
    * ``table``: one row per metric x attack x split: ``pcc``, ``slope``, ``intercept``,
      ``n`` (checkpoints in the fit), ``before_mean`` / ``after_mean`` (over checkpoints),
      ``original_before`` / ``original_after`` (the control), ``uninformative``,
      ``surface`` (a prompt-level attack: the slope criterion applies), ``direction``.
    * ``ranking``: one row per metric, best first: ``mean_pcc`` (NaN counted as 0),
      ``min_pcc``, ``mean_abs_slope_dev`` (surface attacks, else all), ``rows``, ``nan_rows``,
      over the attack/split rows that every metric has.
    * ``recommendation``: the first metric of the ranking.
    """

    scores: "pd.DataFrame"
    table: "pd.DataFrame"
    ranking: "pd.DataFrame"
    recommendation: str | None
    checkpoints: list[dict]
    metrics: list[str]
    attacks: list[str]
    splits: list[str]
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    # -------------------------------------------------------- access
    def before(self, metric: str, split: str = "forget") -> "pd.Series":
        """Reduced no-attack scores of the checkpoints (index: checkpoint name)."""
        return self._series(metric, NONE, split)

    def after(self, metric: str, attack: str, split: str = "forget") -> "pd.Series":
        """Reduced scores under ``attack`` (a spec as given or canonical)."""
        return self._series(metric, self._attack_spec(attack), split)

    def row(self, metric: str, attack: str, split: str = "forget") -> dict:
        spec = self._attack_spec(attack)
        hit = self.table[(self.table["metric"] == metric) & (self.table["attack"] == spec)
                         & (self.table["split"] == split)]
        if hit.empty:
            raise KeyError(f"no audit row for metric {metric!r}, attack {attack!r}, split {split!r}")
        return hit.iloc[0].to_dict()

    def _attack_spec(self, attack: str) -> str:
        if attack in self.attacks or attack == NONE:
            return attack
        from .attacks import parse_attack

        spec = parse_attack(attack).spec
        for label in self.attacks:
            if parse_attack(label).spec == spec:
                return label
        raise KeyError(f"attack {attack!r} is not part of this audit ({', '.join(self.attacks)})")

    def _series(self, metric: str, attack: str, split: str) -> "pd.Series":
        s = self.scores
        rows = s[(s["role"] == "checkpoint") & (s["metric"] == metric) & (s["attack"] == attack)
                 & (s["split"] == split)]
        return rows.set_index("checkpoint")["value"].rename(f"{metric}:{split}:{attack}")

    def without(self, checkpoints: Sequence[str]) -> "AuditResult":
        """The same audit re-fitted without some checkpoints (no model is run again): to see
        how much a PCC rests on a few extreme models, e.g. ones the unlearning broke."""
        from types import SimpleNamespace

        from .metrics import get_metric

        drop = set(checkpoints)
        unknown = drop - {c["name"] for c in self.checkpoints}
        if unknown:
            raise KeyError(f"not checkpoints of this audit: {', '.join(sorted(unknown))}")
        scores = self.scores[~((self.scores["role"] == "checkpoint") & self.scores["checkpoint"].isin(drop))]
        scores = scores.reset_index(drop=True)
        ms = [get_metric(m) for m in self.metrics]
        surface = self.table.groupby("attack")["surface"].first().to_dict()
        kinds = [(a, SimpleNamespace(kind="prompt" if surface.get(a) else "weight")) for a in self.attacks]
        table, ranking, recommendation, notes = _summarise(scores, ms, kinds, self.splits)
        kept = [c for c in self.checkpoints if c["name"] not in drop]
        notes = [f"re-fitted without {', '.join(sorted(drop))}"] + notes
        return AuditResult(scores, table, ranking, recommendation, kept, list(self.metrics), list(self.attacks),
                           list(self.splits), self.seed, notes, self.seconds)

    # -------------------------------------------------------- output
    def to_markdown(self) -> str:
        """The recommendation, the ranking, the full table and the notes, as Markdown."""
        lines = ["# Metric robustness audit", ""]
        lines.append(f"{len(self.checkpoints)} checkpoints; metrics {', '.join(self.metrics)}; "
                     f"attacks {', '.join(self.attacks)}; splits {', '.join(self.splits)}; seed {self.seed}. "
                     "Scores are means over samples; PCC and slope (least squares, after vs before) are "
                     "taken across the checkpoints.")
        lines.append("")
        if self.recommendation:
            r = self.ranking.iloc[0]
            lines.append(f"**Recommended metric: `{self.recommendation}`** (mean PCC {fmt(r['mean_pcc'])}, "
                         f"mean |slope - 1| {fmt(r['mean_abs_slope_dev'])}).")
        else:
            lines.append("**No recommendation**: no metric could be fitted.")
        lines += ["", "## Ranking", ""]
        lines += markdown_table(["rank", "metric", "mean PCC", "min PCC", "mean |slope-1|", "rows", "NaN rows"],
                                [[i + 1, r.metric, fmt(r.mean_pcc), fmt(r.min_pcc), fmt(r.mean_abs_slope_dev),
                                  r.rows, r.nan_rows] for i, r in enumerate(self.ranking.itertuples())])
        lines += ["", "## Metric x attack x split", ""]
        lines += markdown_table(
            ["metric", "attack", "split", "PCC", "slope", "n", "before", "after", "original before",
             "original after", "flag"],
            [[r.metric, r.attack, r.split, fmt(r.pcc), fmt(r.slope), r.n, fmt(r.before_mean), fmt(r.after_mean),
              fmt(r.original_before), fmt(r.original_after), "uninformative" if r.uninformative else ""]
             for r in self.table.itertuples()])
        lines += ["", "## Checkpoints", ""]
        lines += markdown_table(["checkpoint", "source"], [[c["name"], c["source"]] for c in self.checkpoints])
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """JSON-ready (:func:`~pytest_unlearn.formatting.jsonable`: NaN written as "nan")."""
        from .formatting import jsonable

        return jsonable({
            "algorithm": ALGORITHM, "recommendation": self.recommendation, "seed": self.seed,
            "metrics": self.metrics, "attacks": self.attacks, "splits": self.splits,
            "checkpoints": self.checkpoints, "notes": self.notes, "seconds": self.seconds,
            "ranking": self.ranking.to_dict("records"), "table": self.table.to_dict("records"),
            "scores": self.scores.to_dict("records"),
        })

    def save(self, out_dir, *, plots: bool = True) -> dict[str, Path]:
        """Write ``table.csv``, ``ranking.csv``, ``scores.csv``, ``audit.md``, ``audit.json``
        and (with matplotlib, unless ``plots=False``) ``scatter.png`` into ``out_dir``."""
        import json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"table": out / "table.csv", "ranking": out / "ranking.csv", "scores": out / "scores.csv",
                 "markdown": out / "audit.md", "json": out / "audit.json"}
        self.table.to_csv(paths["table"], index=False)
        self.ranking.to_csv(paths["ranking"], index=False)
        self.scores.to_csv(paths["scores"], index=False)
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False), encoding="utf-8")
        if plots:
            try:
                paths["plot"] = self.plot(out / "scatter.png")
            except ImportError:
                pass
        return paths

    def plot(self, path, metrics: Sequence[str] | None = None, *, dpi: int = 80) -> Path:
        """Scatter plots of after- vs before-attack scores across the checkpoints, one panel
        per metric (rows) x attack and split (columns), with the identity line, the fitted
        line, the original model (star) and PCC / slope in each title.  Needs matplotlib."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("AuditResult.plot needs matplotlib: pip install matplotlib") from exc
        import numpy as np

        metrics = list(metrics or self.metrics)
        columns = [(a, s) for a in self.attacks for s in self.splits]
        if not metrics or not columns:
            raise ConfigError("nothing to plot: the audit has no metric or no attack")
        fig = Figure(figsize=(2.7 * len(columns), 2.5 * len(metrics)))
        FigureCanvasAgg(fig)
        s = self.scores
        for i, metric in enumerate(metrics):
            for j, (attack, split) in enumerate(columns):
                ax = fig.add_subplot(len(metrics), len(columns), i * len(columns) + j + 1)
                x = self._series(metric, NONE, split)
                y = self._series(metric, attack, split).reindex(x.index)
                ax.scatter(x.to_numpy(), y.to_numpy(), s=18, color="tab:blue", label="checkpoints")
                ctrl = s[(s["role"] == "original") & (s["metric"] == metric) & (s["split"] == split)]
                cx = ctrl[ctrl["attack"] == NONE]["value"].to_numpy()
                cy = ctrl[ctrl["attack"] == attack]["value"].to_numpy()
                if len(cx) and len(cy):
                    ax.scatter(cx[:1], cy[:1], marker="*", s=70, color="tab:red", label="original")
                finite = np.concatenate([a[np.isfinite(a)] for a in (x.to_numpy(), y.to_numpy(), cx, cy)])
                hit = self.table[(self.table["metric"] == metric) & (self.table["attack"] == attack)
                                 & (self.table["split"] == split)]
                title = f"{metric} | {attack}\n{split}"
                if len(finite):
                    lo, hi = float(finite.min()), float(finite.max())
                    pad = (hi - lo) * 0.05 or 0.05
                    grid = np.array([lo - pad, hi + pad])
                    ax.plot(grid, grid, ":", color="gray", linewidth=1)
                    if not hit.empty and np.isfinite(hit.iloc[0]["slope"]):
                        r = hit.iloc[0]
                        ax.plot(grid, r["slope"] * grid + r["intercept"], "-", color="tab:orange", linewidth=1)
                if not hit.empty:
                    r = hit.iloc[0]
                    title += f": PCC {fmt(r['pcc'], 2)}, slope {fmt(r['slope'], 2)}"
                    if r["uninformative"]:
                        title += " (uninf.)"
                ax.set_title(title, fontsize=7)
                ax.tick_params(labelsize=6)
                if i == len(metrics) - 1:
                    ax.set_xlabel("before attack", fontsize=7)
                if j == 0:
                    ax.set_ylabel("after attack", fontsize=7)
        fig.suptitle("dots: checkpoints (in the fit); red star: the original model (control, not in the fit); "
                     "dotted: after = before; orange: least-squares fit", fontsize=8)
        width, height = fig.get_size_inches()
        fig.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=0.5 / height,
                            top=1 - 0.75 / height, wspace=0.35, hspace=0.6)  # fixed margins: no tight_layout
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        return path

    def __repr__(self) -> str:
        return (f"AuditResult({len(self.checkpoints)} checkpoints, {len(self.metrics)} metrics, "
                f"{len(self.attacks)} attacks, recommendation={self.recommendation!r})")


# ---------------------------------------------------------------- scoring many metrics at once

def _names(dataset: "Dataset") -> list[str]:
    """Sample names for error messages (the scorer's own format when it has one)."""
    from . import scoring

    named = getattr(scoring, "_sample_names", None)
    if named is not None:
        return named(dataset)
    return [f"{dataset.source} sample {sid}" for sid in dataset.ids]


def score_many(scorer: "Scorer", metrics: Sequence["Metric"], handle: "ModelHandle", dataset: "Dataset", *,
               parts=None, logits_fn: Callable | None = None, variant: str = "") -> dict[str, Any]:
    """Per-sample values of every metric (name -> array, or the exception that stopped it).

    The forward-pass metrics share one teacher-forced pass; a NaN there is left in the
    array (the caller decides); other metrics go through ``scorer.per_sample``.  A
    generation metric under a custom ``logits_fn`` (the logit lens) is not applicable.
    """
    import numpy as np

    from .prompts import dataset_parts

    parts = list(parts) if parts is not None else dataset_parts(dataset)
    out: dict[str, Any] = {}
    forward = [m for m in metrics if m.source == "forward"]
    if forward:
        try:
            stats = scorer.token_stats(handle, parts, names=_names(dataset), logits_fn=logits_fn, variant=variant)
        except (MetricError, AttackError) as exc:
            for m in forward:
                out[m.name] = exc
        else:
            for m in forward:
                out[m.name] = np.array([m.fn(stats.sample(i), parts[i].answer) for i in range(len(parts))],
                                       dtype=np.float64)
    for m in metrics:
        if m.source == "forward":
            continue
        if m.source == "generation" and logits_fn is not None:
            out[m.name] = AttackError(f"{m.name} is generation-based and cannot be scored through "
                                      f"{variant or 'a custom logits function'}")
            continue
        try:
            out[m.name] = np.asarray(scorer.per_sample(m, handle, dataset, parts=parts, logits_fn=logits_fn,
                                                       variant=variant), dtype=np.float64)
        except (MetricError, AttackError) as exc:
            out[m.name] = exc
    return out


class _CaptureScorer:
    """Wraps a Scorer for one attack run: every ``per_sample`` also scores the other
    metrics on the same inputs and keeps (row ids, values) for each call."""

    def __init__(self, scorer: "Scorer", metrics: Sequence["Metric"]):
        self._scorer = scorer
        self._metrics = list(metrics)
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __getattr__(self, name: str):
        return getattr(self._scorer, name)

    def per_sample(self, metric, handle, dataset, *, parts=None, logits_fn=None, variant: str = ""):
        import numpy as np

        from .metrics import get_metric

        m = get_metric(metric)
        wanted = [m] + [x for x in self._metrics if x.name != m.name]
        values = score_many(self._scorer, wanted, handle, dataset, parts=parts, logits_fn=logits_fn,
                            variant=variant)
        self.calls.append((list(dataset.ids), values))
        own = values[m.name]
        if isinstance(own, Exception):
            raise own
        bad = np.flatnonzero(np.isnan(own))
        if len(bad):  # the same rule as Scorer.per_sample
            raise MetricError(f"{m.name} is NaN for {len(bad)} of {len(own)} samples (first: "
                              f"{_names(dataset)[bad[0]]}); the model produced NaN or inf logits")
        return own


def _rebuild(calls, metric: "Metric", ids: list[str]) -> "np.ndarray | None":
    """Per row, the most knowledge over every captured scoring of that row (None if a row
    was never scored or a scoring failed)."""
    import numpy as np

    position = {sid: i for i, sid in enumerate(ids)}
    stacked = []
    for call_ids, values in calls:
        v = values.get(metric.name)
        if v is None or isinstance(v, Exception):
            return None
        full = np.full(len(ids), np.nan)
        for sid, value in zip(call_ids, v):
            if sid not in position:
                return None
            full[position[sid]] = value
        stacked.append(full)
    if not stacked:
        return None
    arr = np.vstack(stacked)
    if not (~np.isnan(arr)).any(axis=0).all():
        return None
    return np.asarray(metric.knowledge_max(arr), dtype=np.float64)


# the metric an attack really runs with when the others are captured: continuous values first,
# so that checking the rebuilt outcome against the attack's own result is a sharp test
_PRIMARY = ("prob", "mia_loss", "mia_min_k", "mia_zlib", "mia_min_k_pp", "ppl", "em", "es")


def _worst_case_attack(attack) -> bool:
    """Attacks known to return, per sample, the most knowledge over everything they score (every
    built-in attack); only these are run once for all metrics.  Others run once per metric."""
    module = type(attack).__module__ or ""
    return module == "pytest_unlearn.attacks" or module.startswith("pytest_unlearn.attacks.")


def _cell_key(attack, metrics, handle, data, ctx) -> str:
    from .cache import cache_key

    sc = ctx.scorer
    return cache_key("audit-attack", ALGORITHM, attack.spec, int(ctx.seed), handle.fingerprint, data.content_hash,
                     sorted(m.name for m in metrics), sc.prompt_format(handle).spec, sc.batch_size,
                     str(handle.device.type), str(handle.dtype),
                     ctx.original.fingerprint if ctx.original is not None else None,
                     ctx.forget.content_hash if ctx.forget is not None else None,
                     ctx.retain.content_hash if ctx.retain is not None else None)


def attack_many(attack, metrics: Sequence["Metric"], handle: "ModelHandle", data: "Dataset",
                ctx) -> dict[str, Any]:
    """Per-sample values of every metric under ``attack`` (name -> array, or the exception).

    The attack runs once with the first forward-pass metric while a capturing scorer
    scores all metrics; see the module docstring.  The whole cell is cached in
    ``ctx.scorer.cache`` when that is enabled.
    """
    import numpy as np

    cache = getattr(ctx.scorer, "cache", None)
    key = _cell_key(attack, metrics, handle, data, ctx) if cache is not None and cache.enabled else None
    if key is not None:
        hit = cache.get(key)
        if hit is not None:
            out: dict[str, Any] = {}
            for m in metrics:
                err = str(hit.get(f"error__{m.name}", np.array(""))) if f"error__{m.name}" in hit else ""
                out[m.name] = AttackError(err) if err else np.asarray(hit[f"values__{m.name}"], dtype=np.float64)
            return out

    out = {}
    forward = [m for m in metrics if m.source == "forward"]
    primary = min(forward, key=lambda m: _PRIMARY.index(m.name) if m.name in _PRIMARY else len(_PRIMARY)) \
        if forward else metrics[0]
    capture = _CaptureScorer(ctx.scorer, metrics)
    ids = list(data.ids)
    duplicates = any("-" in sid for sid in ids)
    if len(metrics) > 1 and not duplicates and _worst_case_attack(attack):
        try:
            outcome = attack.run(primary, handle, data, replace(ctx, scorer=capture, cache=None))
        except (AttackError, MetricError):
            outcome = None
        if outcome is not None:
            rebuilt = _rebuild(capture.calls, primary, ids)
            if rebuilt is not None and np.allclose(rebuilt, outcome.values, rtol=1e-9, atol=1e-12, equal_nan=True):
                out[primary.name] = np.asarray(outcome.values, dtype=np.float64)
                for m in metrics:
                    if m.name != primary.name:
                        values = _rebuild(capture.calls, m, ids)
                        if values is not None:
                            out[m.name] = values
    for m in metrics:  # everything the shared run could not give: one attack run per metric
        if m.name in out:
            continue
        try:
            out[m.name] = np.asarray(attack.run(m, handle, data, ctx).values, dtype=np.float64)
        except (AttackError, MetricError) as exc:
            out[m.name] = exc
    if key is not None:
        arrays = {}
        for name, v in out.items():
            if isinstance(v, Exception):
                arrays[f"error__{name}"] = np.array(f"{type(v).__name__}: {v}")
            else:
                arrays[f"values__{name}"] = v
        cache.put(key, arrays)
    return out


# ---------------------------------------------------------------- inputs

def split_attack_list(text: str | Sequence[str] | None) -> list[str]:
    """Attack specs from a comma-separated string: ``"paraphrase,quantize:4,relearn:steps=5,lr=1e-4"``
    gives ``["paraphrase", "quantize:4", "relearn:steps=5,lr=1e-4"]`` (a piece starts a new
    spec when its name is a registered attack; otherwise it continues the previous one).
    A list is returned as it is (each item already one spec)."""
    if text is None:
        return []
    if not isinstance(text, str):
        return [str(t) for t in text]
    from .attacks import ATTACKS
    from .attacks.base import _split_top

    try:
        pieces = _split_top(text, ",")
    except ValueError as exc:
        raise ConfigError(f"cannot parse the attack list {text!r}: {exc}") from None
    names = set(ATTACKS.names())
    specs: list[str] = []
    for piece in pieces:
        name = piece.split(":", 1)[0].split("+", 1)[0].strip()  # a chain starts with its first step's name
        if not piece.strip():
            continue
        if name in names or not specs:
            specs.append(piece.strip())
        else:
            specs[-1] += "," + piece
    return specs


def _as_dataset(data, role: str) -> "Dataset":
    from .data import Dataset, dataset_from_records, load_dataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(data, name=role)
    if isinstance(data, list) or type(data).__name__ == "DataFrame":
        return dataset_from_records(data, name=role)
    raise ConfigError(f"{role}: expected a Dataset, a data file path or records, got {type(data).__name__}")


def _is_handle(obj) -> bool:
    return hasattr(obj, "model") and hasattr(obj, "tokenizer") and hasattr(obj, "fingerprint")


def _checkpoint_list(checkpoints) -> list[tuple[str | None, Any]]:
    """(name or None, handle or path) pairs from a list or a name -> checkpoint mapping."""
    if isinstance(checkpoints, Mapping):
        return [(str(k), v) for k, v in checkpoints.items()]
    if isinstance(checkpoints, (str, os.PathLike)) or _is_handle(checkpoints):
        return [(None, checkpoints)]
    return [(None, c) for c in checkpoints]


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}#{k}", k + 1
    taken.add(out)
    return out


def _resolve_metrics(metrics, splits: dict[str, "Dataset"], notes: list[str]) -> list["Metric"]:
    from .metrics import get_metric

    explicit = metrics is not None
    names = [metrics] if isinstance(metrics, str) else list(metrics if explicit else CANDIDATE_METRICS)
    out = []
    for name in names:
        m = get_metric(name)
        if m.source == "truth_ratio" and not any(d.has("perturbed_answer") for d in splits.values()):
            if explicit:
                raise ConfigError("truth_ratio needs a 'perturbed_answer' column in the forget or retain data")
            notes.append("truth_ratio left out: neither split has a 'perturbed_answer' column")
            continue
        if all(x.name != m.name for x in out):
            out.append(m)
    if not out:
        raise ConfigError("the audit needs at least one metric")
    return out


# ---------------------------------------------------------------- the audit

def audit_metrics(original, checkpoints, forget, retain, metrics: Sequence[str] | str | None = None,
                  attacks: Sequence[Any] | str = DEFAULT_ATTACKS, scorer: "Scorer | None" = None, seed: int = 0,
                  progress: bool = False, *, splits: Sequence[str] = SPLITS, controls: bool = True,
                  loader: Callable[[Any], "ModelHandle"] | None = None, device: str = "auto",
                  dtype: str = "auto") -> AuditResult:
    """Score every metric on forget and retain data before and after every attack, on every
    checkpoint, and fit after-vs-before across the checkpoints (see the module docstring).

    ``original``: a :class:`~pytest_unlearn.models.ModelHandle` or a model path.
    ``checkpoints``: handles or paths (a list, or a name -> checkpoint mapping); paths are
    loaded one at a time (``loader``, default :func:`~pytest_unlearn.models.load_model`
    on ``device`` / ``dtype``, a PEFT adapter folder applied on the original) and released
    after scoring.  ``forget`` / ``retain``: Datasets or data file paths.  ``metrics``:
    default :data:`CANDIDATE_METRICS` (``truth_ratio`` only where the data has perturbed
    answers).  ``attacks``: specs (a list, or one comma-separated string).  ``controls``
    also scores the original model (the uninformative-attack check).
    """
    import numpy as np
    import pandas as pd

    from .attacks import AttackContext
    from .models import load_model

    started = time.perf_counter()
    notes: list[str] = []
    if isinstance(original, (str, os.PathLike)):
        original = load_model(original, device=device, dtype=dtype, name="original")
    if not _is_handle(original):
        raise ConfigError(f"original must be a ModelHandle or a model path, got {type(original).__name__}")
    data = {"forget": _as_dataset(forget, "forget"), "retain": _as_dataset(retain, "retain")}
    splits = [splits] if isinstance(splits, str) else list(splits)
    for s in splits:
        if s not in data:
            raise ConfigError(f"unknown split {s!r}: use 'forget' and/or 'retain'")
    if not splits:
        raise ConfigError("the audit needs at least one split (forget, retain)")
    used = {s: data[s] for s in splits}
    ms = _resolve_metrics(metrics, used, notes)
    attack_objs = _labelled_attacks(attacks)
    if not attack_objs:
        raise ConfigError("the audit needs at least one attack")
    entries = _checkpoint_list(checkpoints)
    if len(entries) < 2:
        raise ConfigError(f"the audit fits a line across checkpoints and needs at least 2 (3 or more for a "
                          f"meaningful PCC), got {len(entries)}")
    if len(entries) < 3:
        notes.append("only 2 checkpoints: the PCC of two points is always +-1 or NaN")
    if scorer is None:
        from .scoring import Scorer
        scorer = Scorer(progress=False)
    ctx = AttackContext(scorer, original=original, forget=data["forget"], retain=data["retain"], seed=int(seed),
                        progress=progress, cache=getattr(scorer, "cache", None))

    def split_metrics(split: str) -> list:
        return [m for m in ms if m.source != "truth_ratio" or used[split].has("perturbed_answer")]

    for s in splits:
        missing = [m.name for m in ms if m not in split_metrics(s)]
        if missing:
            notes.append(f"{', '.join(missing)} not scored on {s}: no 'perturbed_answer' column")

    def load(spec):
        if loader is not None:
            return loader(spec), False
        path = Path(os.fspath(spec))
        base = original if (path / "adapter_config.json").is_file() else None
        return load_model(path, base=base, device=device if device != "auto" else str(original.device),
                          dtype=dtype, name=path.name or "checkpoint"), True

    models: list[tuple[str, str, Any]] = ([("original", "original", original)] if controls else [])
    taken = {"original"} if controls else set()
    infos = []
    for name, spec in entries:
        if name is None:
            name = spec.name if _is_handle(spec) else (Path(os.fspath(spec)).name or "checkpoint")
        models.append((_unique(str(name), taken), "checkpoint", spec))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(models) * len(splits) * (1 + len(attack_objs)), desc="audit", unit="cell")
    rows = []
    try:
        for name, role, spec in models:
            handle, owned = (spec, False) if _is_handle(spec) else load(spec)
            if role == "checkpoint":
                infos.append({"name": name, "source": str(getattr(handle, "source", spec)),
                              "fingerprint": handle.fingerprint})
            try:
                for split in splits:
                    dataset, split_ms = used[split], split_metrics(split)
                    conditions = [(NONE, None)] + list(attack_objs)
                    for label, attack in conditions:
                        if bar is not None:
                            bar.set_postfix_str(f"{name} {split} {label}"[:60])
                        t0 = time.perf_counter()
                        if attack is None:
                            values = score_many(scorer, split_ms, handle, dataset)
                        else:
                            values = attack_many(attack, split_ms, handle, dataset, ctx)
                        seconds = time.perf_counter() - t0
                        for m in split_ms:
                            v = values[m.name]
                            note = ""
                            if isinstance(v, Exception):
                                value, note = math.nan, f"{type(v).__name__}: {v}"
                            else:
                                value = float(np.mean(v)) if len(v) else math.nan
                                if np.isnan(v).any():
                                    note = f"NaN for {int(np.isnan(v).sum())} of {len(v)} samples"
                            rows.append({"checkpoint": name, "role": role, "metric": m.name, "split": split,
                                         "attack": label, "value": value, "n_samples": len(dataset),
                                         "seconds": round(seconds, 3), "note": note})
                        if bar is not None:
                            bar.update(1)
            finally:
                if owned:
                    handle.release()
    finally:
        if bar is not None:
            bar.close()

    scores = pd.DataFrame(rows, columns=["checkpoint", "role", "metric", "split", "attack", "value", "n_samples",
                                         "seconds", "note"])
    for r in scores[scores["note"] != ""].itertuples():
        notes.append(f"{r.checkpoint}, {r.metric} on {r.split} under {r.attack}: {r.note}")
    table, ranking, recommendation, fit_notes = _summarise(scores, ms, attack_objs, splits)
    return AuditResult(scores, table, ranking, recommendation, infos, [m.name for m in ms],
                       [label for label, _ in attack_objs], splits, int(seed), _dedupe(notes + fit_notes),
                       round(time.perf_counter() - started, 3))


def _summarise(scores, ms, attack_objs, splits):
    """Table, ranking, recommendation and the notes about them, from the per-model scores."""
    import numpy as np

    from .attacks import attack_is_uninformative

    notes: list[str] = []
    table = _table(scores, ms, attack_objs, splits, attack_is_uninformative)
    ranking = _ranking(table, [m.name for m in ms], notes)
    recommendation = None
    if len(ranking) and np.isfinite(ranking.iloc[0]["mean_pcc"]) and ranking.iloc[0]["rows"] > ranking.iloc[0]["nan_rows"]:
        recommendation = str(ranking.iloc[0]["metric"])
    for r in table[table["pcc"].isna()].itertuples():
        if r.n >= 2:
            after = scores[(scores["role"] == "checkpoint") & (scores["metric"] == r.metric)
                           & (scores["split"] == r.split) & (scores["attack"] == r.attack)]["value"]
            side = "after" if after.nunique() <= 1 else "before"
            notes.append(f"{r.metric} under {r.attack} on {r.split}: PCC undefined, every checkpoint scores the same "
                         f"{side} the attack{f' ({fmt(after.iloc[0])})' if side == 'after' and len(after) else ''}; "
                         "counted as PCC 0 in the ranking")
    for r in table[table["uninformative"]].itertuples():
        notes.append(f"{r.attack} is uninformative for {r.metric} on {r.split}: it also wipes out the original's "
                     f"knowledge ({fmt(r.original_before)} -> {fmt(r.original_after)})")
    return table, ranking, recommendation, notes


def _labelled_attacks(attacks) -> list[tuple[str, Any]]:
    """(label, Attack) pairs: the label is the spec as the user wrote it (an Attack object:
    its canonical spec); the same attack twice is an error (the rule of every gate:
    :func:`~pytest_unlearn.gates.checks.attack_list`)."""
    from .gates.checks import attack_list

    items = split_attack_list(attacks) if isinstance(attacks, str) else list(attacks)
    return list(attack_list(items).items())


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _table(scores, ms, attack_objs, splits, uninformative_fn) -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    ck = scores[scores["role"] == "checkpoint"]
    ctrl = scores[scores["role"] == "original"]
    rows = []
    for m in ms:
        for label, a in attack_objs:
            for split in splits:
                sel = ck[(ck["metric"] == m.name) & (ck["split"] == split)]
                if sel.empty:
                    continue
                before = sel[sel["attack"] == NONE].set_index("checkpoint")["value"]
                after = sel[sel["attack"] == label].set_index("checkpoint")["value"].reindex(before.index)
                fit = fit_line(before.to_numpy(), after.to_numpy())
                c = ctrl[(ctrl["metric"] == m.name) & (ctrl["split"] == split)]
                ob = c[c["attack"] == NONE]["value"]
                oa = c[c["attack"] == label]["value"]
                ob = float(ob.iloc[0]) if len(ob) else math.nan
                oa = float(oa.iloc[0]) if len(oa) else math.nan
                uninf = bool(np.isfinite(ob) and np.isfinite(oa)) and bool(uninformative_fn(ob, oa, m, attack=a))
                rows.append({"metric": m.name, "attack": label, "split": split, **fit,
                             "before_mean": float(np.nanmean(before)) if np.isfinite(before).any() else math.nan,
                             "after_mean": float(np.nanmean(after)) if np.isfinite(after).any() else math.nan,
                             "original_before": ob, "original_after": oa, "uninformative": uninf,
                             "surface": a.kind == "prompt", "direction": m.direction})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["n"] = table["n"].astype(int)
    return table


def _ranking(table, metric_names: list[str], notes: list[str] | None = None) -> "pd.DataFrame":
    """One row per metric, best first.  Metrics are compared on the same footing: only the
    attack/split rows that every ranked metric has count (``truth_ratio`` without perturbed
    answers on one split would otherwise be ranked on fewer, perhaps easier, rows)."""
    import numpy as np
    import pandas as pd

    present = [n for n in metric_names if (table["metric"] == n).any()]
    pairs = {n: set(zip(table.loc[table["metric"] == n, "attack"], table.loc[table["metric"] == n, "split"]))
             for n in present}
    common = set.intersection(*pairs.values()) if pairs else set()
    if pairs and not common:
        common = set.union(*pairs.values())
        if notes is not None:
            notes.append("the metrics share no attack/split row: each is ranked on its own rows")
    elif notes is not None and any(p != common for p in pairs.values()):
        notes.append(f"metrics are ranked on the {len(common)} attack/split rows they all have "
                     f"({', '.join(f'{a}/{s}' for a, s in sorted(common))}); rows some metrics lack are in the "
                     "table but not in the ranking")
    rows = []
    for name in present:
        t = table[table["metric"] == name]
        t = t[[(a, s) in common for a, s in zip(t["attack"], t["split"])]]
        if t.empty:
            continue
        pcc = t["pcc"].to_numpy(dtype=np.float64)
        surface = t[t["surface"]]
        dev_src = surface if len(surface) else t
        dev = np.abs(dev_src["slope"].to_numpy(dtype=np.float64) - 1.0)
        rows.append({"metric": name,
                     "mean_pcc": float(np.mean(np.nan_to_num(pcc, nan=0.0))),
                     "min_pcc": float(np.nanmin(pcc)) if np.isfinite(pcc).any() else math.nan,
                     "mean_abs_slope_dev": float(np.nanmean(dev)) if np.isfinite(dev).any() else math.nan,
                     "rows": int(len(t)), "nan_rows": int(np.isnan(pcc).sum())})
    ranking = pd.DataFrame(rows, columns=["metric", "mean_pcc", "min_pcc", "mean_abs_slope_dev", "rows", "nan_rows"])
    if len(ranking):
        key_pcc = -ranking["mean_pcc"].round(RANK_DECIMALS).to_numpy()
        key_dev = ranking["mean_abs_slope_dev"].fillna(np.inf).to_numpy()
        order = np.lexsort((-ranking["mean_pcc"].to_numpy(), key_dev, key_pcc))
        ranking = ranking.iloc[order].reset_index(drop=True)
    return ranking




def __getattr__(name: str):
    """``assert_metric_robust`` lives with the other gates (:mod:`pytest_unlearn.gates.robust`)."""
    if name == "assert_metric_robust":
        from .gates.robust import assert_metric_robust

        return assert_metric_robust
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
