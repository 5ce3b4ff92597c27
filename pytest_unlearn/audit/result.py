"""The audit's result, :class:`AuditResult`: the per-model scores, the table, the ranking and
the recommendation, with the views, refits, Markdown, JSON, CSV and plots built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import ConfigError
from ..formatting import markdown_table, number as fmt
from .statistics import ALGORITHM, NONE, _summarise

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


__tracebackhide__ = True

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
        from ..attacks import parse_attack

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

        from ..metrics import get_metric

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
        from ..formatting import jsonable

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
