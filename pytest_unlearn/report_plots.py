"""The PNG plots of the Markdown report (:mod:`~pytest_unlearn.report_markdown`), drawn with
matplotlib when it is installed: every model's forget-set score under each attack against the
threshold (``<stem>-attacks-<metric>.png``) and the UWC calibration curves
(``<stem>-calibration.png``).  Reads only the JSON report's records."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .formatting import parse_number

WORST = "worst case\nper sample"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def _pyplot():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def attack_panels(groups: dict, labels: dict, reference_fingerprint: str | None = None) -> dict[tuple, dict]:
    """The data of the attack charts: (metric, threshold, higher_is_more_knowledge) ->
    {"models": {label: {condition: score}}, "original": {condition: score},
    "reference": {condition: score}, "conditions": [...]}; a multi-condition assertion
    adds its worst case per sample under ``WORST``."""
    panels: dict[tuple, dict] = {}
    for key, records in groups.items():
        for rec in records:
            if rec.get("kind") != "forgotten" or rec.get("verdict") == "error" or rec.get("calibrate"):
                continue
            panel = panels.setdefault((rec.get("metric"), parse_number(rec.get("threshold")),
                                       rec.get("higher_is_more_knowledge", True)),
                                      {"models": {}, "original": {}, "reference": {}, "conditions": []})
            scores = panel["models"].setdefault(labels[key], {})
            if reference_fingerprint and (rec.get("model") or {}).get("fingerprint") == reference_fingerprint:
                panel["reference_scored"] = True
            rows = rec.get("attacks") or []
            for row in rows:
                cond = row.get("attack")
                if cond not in panel["conditions"]:
                    panel["conditions"].append(cond)
                scores[cond] = parse_number(row.get("score"))
                for role in ("original", "reference"):
                    if parse_number(row.get(role)) is not None:
                        panel[role][cond] = parse_number(row.get(role))
            if len(rows) > 1:
                scores[WORST] = parse_number(rec.get("score"))
    return panels


def _attack_plots(groups: dict, labels: dict, out_dir: Path, stem: str,
                  reference_fingerprint: str | None = None) -> dict[str, str]:
    """One grouped bar chart per (metric, threshold): each model's score under each condition."""
    mpl = _pyplot()
    if mpl is None:
        return {}
    Figure, FigureCanvasAgg = mpl
    panels = attack_panels(groups, labels, reference_fingerprint)
    written = {}
    for (metric, threshold, higher), panel in panels.items():
        conds = panel["conditions"] + ([WORST] if any(WORST in v for v in panel["models"].values()) else [])
        series = [(name, vals) for name, vals in panel["models"].items()]
        for role in ("original", "reference"):
            if panel[role] and not (role == "reference" and panel.get("reference_scored")):
                series.append((f"{role} (control)", panel[role]))
        if not conds or not series:
            continue
        width = 0.8 / len(series)
        fig = Figure(figsize=(max(6.4, 1.2 * len(conds) + 2.5), 4.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for k, (name, vals) in enumerate(series):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(conds))]
            ys = [vals.get(c) for c in conds]
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
            if not pts:
                continue
            control = name.endswith("(control)")
            ax.bar([p[0] for p in pts], [p[1] for p in pts], width=width * 0.95, label=name,
                   hatch="//" if control else None, alpha=0.55 if control else 0.9,
                   edgecolor="black", linewidth=0.4)
        if threshold is not None:
            ax.axhline(threshold, color="red", linestyle="--", linewidth=1.2,
                       label=f"threshold ({'≤' if higher else '≥'} {threshold:g})")
        ax.set_xticks(range(len(conds)))
        ax.set_xticklabels(conds, rotation=15)
        ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} = more knowledge)")
        ax.set_title(f"Forget-set {metric} per model and attack")
        ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        name = f"{stem}-attacks-{_slug(str(metric))}" + ("" if len(panels) == 1 else f"-{_slug(f'{threshold:g}')}")
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        written[(metric, threshold, higher)] = path.name
    return written


def _calibration_plot(calibrations: list[dict], out_dir: Path, stem: str) -> str | None:
    mpl = _pyplot()
    if mpl is None or not calibrations:
        return None
    Figure, FigureCanvasAgg = mpl
    fig = Figure(figsize=(10, 4.0))
    FigureCanvasAgg(fig)
    ax_r, ax_f = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    targets = set()
    for c in calibrations:
        model = c.get("model") or {}
        name = model.get("name") or "?"
        if model.get("source") and not str(model["source"]).startswith("<"):
            name = os.path.basename(str(model["source"]).rstrip("/\\")) or name
        curve = [p for p in c.get("curve") or [] if parse_number(p.get("alpha")) is not None]
        curve.sort(key=lambda p: parse_number(p["alpha"]))
        for ax, field in ((ax_r, "retain_score"), (ax_f, "forget_score")):
            pts = [(parse_number(p["alpha"]), parse_number(p.get(field))) for p in curve]
            pts = [(a, s) for a, s in pts if s is not None and math.isfinite(s)]
            if pts:  # with two points the line is no measurement: draw it faintly
                style = "o-" if len(pts) > 2 else "o:"
                line, = ax.plot([a for a, _ in pts], [s for _, s in pts], style, markersize=4, label=name,
                                linewidth=1.5 if len(pts) > 2 else 0.8)
                alpha = parse_number(c.get("alpha"))
                if alpha is not None:
                    ax.axvline(alpha, color=line.get_color(), linestyle=":", linewidth=1)
        if parse_number(c.get("target")) is not None:
            targets.add((round(parse_number(c["target"]), 6), parse_number(c.get("tau"))))
    for target, tau in sorted(targets):
        ax_r.axhline(target, color="gray", linestyle="--", linewidth=1,
                     label=f"bar (tau = {tau:g})" if tau is not None else "bar")
    metric = calibrations[0].get("metric", "es")
    for ax, what in ((ax_r, "retain"), (ax_f, "forget")):
        ax.set_xlabel("alpha  (0 = original, 1 = candidate)")
        ax.set_ylabel(f"{what} {metric}")
        ax.set_xlim(-0.02, 1.02)
        low, high = ax.get_ylim()
        if low >= 0 and high <= 1.05:  # bounded metrics (es, em, prob): show the whole range
            ax.set_ylim(-0.02, 1.05)
        ax.set_title(f"{what} {metric} along the mix (vertical: chosen alpha)")
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    path = out_dir / f"{stem}-calibration.png"
    fig.savefig(path, dpi=110)
    return path.name
