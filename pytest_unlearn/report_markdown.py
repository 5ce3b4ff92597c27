"""A readable Markdown report from the JSON report (``--unlearn-report``).

    python -m pytest_unlearn.report_markdown REPORT.json OUT.md

The Markdown file has a header (seed, library version, models with their fingerprints,
data sets), the verdicts at a glance (one row per model and check), one section per
model scored (each assertion: the score with no attack and under every attack next to
the original's and the reference's, the threshold and the verdict; failure messages in
full), and the calibrations.  When matplotlib is installed, PNG plots are written next
to the ``.md`` file (``<stem>-attacks-<metric>.png``: every model's score under each
attack against the threshold; ``<stem>-calibration.png``: the UWC calibration curves;
drawn by :mod:`~pytest_unlearn.report_plots`) and linked from it.  Reads only the JSON
(layout in ``docs/report-schema.md``): no model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from functools import partial
from pathlib import Path
from typing import Any

from .atomic import write_text_atomically
from .formatting import markdown_cell as _cell, markdown_table, number, parse_number
from .report_plots import WORST, attack_panels  # noqa: F401  importable from here as before
from .report_plots import _attack_plots, _calibration_plot, _pyplot

__all__ = ["render", "write_markdown", "main"]

FINGERPRINT_CHARS = 12
_table = partial(markdown_table, escape=False)  # the cells are Markdown already


# ---------------------------------------------------------------- small helpers

def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a Markdown cell (:func:`~pytest_unlearn.formatting.number`; "–" when missing)."""
    return _cell(number(value, digits, missing="–"))


def _code(value: Any) -> str:
    text = _cell(value).replace("`", "'")
    return f"`{text}`" if text else ""


def _short_fp(fingerprint: Any) -> str:
    return str(fingerprint or "")[:FINGERPRINT_CHARS] or "–"


def _anchor(text: str) -> str:
    """GitHub-style heading anchor."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


_VERDICT_ICONS = {"pass": "PASS", "fail": "**FAIL**", "error": "**ERROR**",
                  "ok": "ok", "leak": "**leak**", "lost": "**lost**", "uninformative": "uninformative"}


def _verdict(value: Any) -> str:
    return _VERDICT_ICONS.get(str(value), _cell(value))


def _threshold_text(rec: dict) -> str:
    higher = rec.get("higher_is_more_knowledge", True)
    t = _fmt(rec.get("threshold"))
    if rec.get("kind") == "robust":  # a PCC: the least required
        return "≥ " + t
    if rec.get("kind") == "retained":
        return ("≥ " if higher else "≤ ") + t
    return ("≤ " if higher else "≥ ") + t


def _model_key(rec: dict) -> tuple[str]:
    model = rec.get("model") or {}
    return (str(model.get("source") or model.get("name") or "?"),)


def _model_label(rec: dict) -> str:
    model = rec.get("model") or {}
    name = str(model.get("name") or "?")
    source = str(model.get("source") or "")
    cal = rec.get("calibrate")
    if isinstance(cal, dict):
        base = os.path.basename(source.rstrip("/\\")) if source and not source.startswith("<") else name
        return f"{base} calibrated (tau={_fmt(cal.get('tau'), 2)})"
    if source and not source.startswith("<") and name in ("model", "unlearned", "original", "reference"):
        base = os.path.basename(source.rstrip("/\\"))
        return f"{base} ({name})" if base and base != name else name
    return name


def _check_text(rec: dict) -> str:
    text = f"{rec.get('kind', '?')} {rec.get('metric', '?')}"
    if rec.get("reduce") not in (None, "mean"):
        text += f" [{rec['reduce']}]"
    cal = rec.get("calibrate")
    if isinstance(cal, dict):
        text += f", calibrated (tau={_fmt(cal.get('tau'), 2)}, alpha={_fmt(cal.get('alpha'))})"
    if rec.get("kind") == "forgotten":
        attacks = [a for a in rec.get("under_attack") or []]
        text += (" under " + ", ".join(attacks)) if attacks else ", no attack"
    return text


def _test_name(rec: dict) -> str:
    test = rec.get("test") or "<no test>"
    return test.split("::", 1)[1] if "::" in test else test


# ---------------------------------------------------------------- sections

def _header(report: dict, source: str) -> list[str]:
    summary = report.get("summary") or {}
    lib = report.get("library") or {}
    lines = ["# Unlearning report", ""]
    lines += [f"- report: `{source}` (schema `{report.get('schema', '?')}`)",
              f"- created: {report.get('created', '?')} by {lib.get('name', 'pytest-unlearn')} "
              f"{lib.get('version', '?')}",
              f"- seed: {report.get('seed')}"]
    settings = report.get("settings") or {}
    shown = [f"{k}={settings[k]}" for k in ("prompt", "device", "dtype", "batch_size") if settings.get(k) is not None]
    if shown:
        lines.append("- settings: " + ", ".join(_code(s) for s in shown))
    if report.get("opt_ins"):
        lines.append("- safety opt-ins in use: " + ", ".join(report["opt_ins"]))
    if report.get("workers"):
        lines.append(f"- pytest-xdist workers: {', '.join(report['workers'])}")
    lines.append(f"- assertions: {summary.get('assertions', 0)} — {summary.get('pass', 0)} passed, "
                 f"{summary.get('fail', 0)} failed, {summary.get('error', 0)} errors")
    cost = report.get("cost") or {}
    if cost:
        lines.append(f"- scoring cost: {_fmt(cost.get('seconds'), 1)} s, "
                     f"{cost.get('forward_batches', 0)} forward batches, "
                     f"{cost.get('generation_batches', 0)} generation batches, "
                     f"{cost.get('cache_hits', 0)} cache hits")
    return lines + [""]


def _models_section(report: dict, assertions: list[dict]) -> list[str]:
    rows: dict[tuple, list[str]] = {}
    for role, info in (report.get("models") or {}).items():
        key = (str(info.get("source")), str(info.get("fingerprint")))
        rows[key] = [_cell(role), _code(info.get("source")), _code(_short_fp(info.get("fingerprint")))]
    for rec in assertions:
        model = rec.get("model") or {}
        key = (str(model.get("source")), str(model.get("fingerprint")))
        if key not in rows and model:
            role = "calibrated" if rec.get("calibrate") else "scored"
            rows[key] = [_cell(f"{role}: {_model_label(rec)}"), _code(model.get("source")),
                         _code(_short_fp(model.get("fingerprint")))]
    lines = ["## Models", ""]
    if not rows:
        return lines + ["No model was loaded.", ""]
    lines += _table(["role", "source", "fingerprint"], rows.values())
    data: dict[str, list[str]] = {}
    for rec in assertions:
        d = rec.get("data") or {}
        if d.get("content_hash") and d["content_hash"] not in data:
            data[d["content_hash"]] = [_cell(d.get("name", "?")), _code(d.get("source")), str(d.get("n", "?")),
                                       _code(_short_fp(d.get("content_hash")))]
    if data:
        lines += ["", "Data:", ""] + _table(["set", "source", "samples", "content hash"], data.values(), "llrl")
    return lines + [""]


def _overview(groups: dict, labels: dict) -> list[str]:
    lines = ["## Verdicts at a glance", ""]
    rows = []
    for key, records in groups.items():
        for rec in records:
            worst = ""
            if rec.get("kind") == "forgotten":
                leaks = [a["attack"] if a["attack"] != "none" else "no attack"
                         for a in rec.get("attacks") or [] if a.get("verdict") == "leak"]
                worst = ", ".join(leaks) if leaks else "–"
            rows.append([f"[{_cell(labels[key])}](#{_anchor('model ' + labels[key])})", _cell(_check_text(rec)),
                         _fmt(rec.get("score")), _threshold_text(rec), worst, _verdict(rec.get("verdict"))])
    if not rows:
        return lines + ["No assertion was recorded.", ""]
    lines += _table(["model", "check", "score", "threshold", "leaks under", "verdict"], rows, "llrlll")
    return lines + [""]


def _record_section(rec: dict) -> list[str]:
    lines = [f"#### {_cell(_check_text(rec))}", "",
             f"test `{_cell(rec.get('test') or '<no test>')}` — verdict {_verdict(rec.get('verdict'))}"
             f", score {_fmt(rec.get('score'))} (threshold {_threshold_text(rec)}"
             + (f", {rec['confidence']:.0%} bound {_fmt(rec.get('bound'))}" if rec.get("bound") is not None else "")
             + ")", ""]
    if rec.get("verdict") == "error":
        return lines + ["```", str(rec.get("message", "")).strip(), "```", ""]
    rows = rec.get("attacks") or []
    if rec.get("kind") == "retained":
        lines.append(f"{rec.get('metric')} on {(rec.get('data') or {}).get('name', 'retain')}: model "
                     f"{_fmt(rec.get('score'))}, original {_fmt(rec.get('original_score'))}, ratio "
                     f"{_fmt(rec.get('ratio'))} (min_ratio {_fmt(rec.get('min_ratio'), 2)})")
        lines.append("")
    elif rows:
        has_ref = any(r.get("reference") is not None for r in rows)
        header = ["condition", "model", "original"] + (["reference"] if has_ref else []) + ["verdict"]
        body = []
        for r in rows:
            body.append([_cell(r.get("attack")), _fmt(r.get("score")), _fmt(r.get("original"))]
                        + ([_fmt(r.get("reference"))] if has_ref else []) + [_verdict(r.get("verdict"))])
        if len(rows) > 1:
            body.append(["**worst case per sample**", f"**{_fmt(rec.get('score'))}**", ""]
                        + ([""] if has_ref else []) + [_verdict(rec.get("verdict"))])
        lines += _table(header, body, "lrr" + ("r" if has_ref else "") + "l") + [""]
    notes = rec.get("notes") or []
    if notes:
        lines += ["Notes:", ""] + [f"- {_cell(n)}" for n in notes] + [""]
    if rec.get("verdict") == "fail" and rec.get("message"):
        lines += ["<details><summary>failure message</summary>", "", "```", str(rec["message"]).rstrip(),
                  "```", "", "</details>", ""]
    return lines


def _calibration_section(calibrations: list[dict], plot: str | None) -> list[str]:
    if not calibrations:
        return []
    lines = ["## Calibration (Unlearning with Control)", "",
             "Each candidate's weights are mixed back toward the original, theta(alpha) = (1 - alpha) * "
             "original + alpha * candidate, and the largest alpha whose retain score reaches tau times "
             "the original's is kept; candidates are then compared by their forget score at equal "
             "retention (lower = stronger unlearning).", ""]
    rows = []
    ordered = sorted(calibrations, key=lambda c: (parse_number(c.get("forget_score")) is None,
                                                  parse_number(c.get("forget_score")) or 0.0))
    for c in ordered:
        model = c.get("model") or {}
        name = model.get("name") or "?"
        source = model.get("source") or ""
        if source and not str(source).startswith("<"):
            name = os.path.basename(str(source).rstrip("/\\")) or name
        rows.append([_cell(name), _fmt(c.get("tau"), 2), _fmt(c.get("alpha")), _fmt(c.get("retain_score")),
                     _fmt(c.get("original_retain_score")), _fmt(c.get("forget_score")),
                     _fmt(c.get("forget_score_uncalibrated")), str(c.get("evaluations", "?"))
                     + ("" if c.get("monotone", True) else " (not monotone)")])
    lines += _table(["candidate", "tau", "alpha", "retain", "original retain", "forget (calibrated)",
                     "forget (alpha = 1)", "evaluations"], rows, "lrrrrrrr")
    notes = [(c, n) for c in calibrations for n in c.get("notes") or []]
    if notes:
        lines += [""] + [f"- {_cell((c.get('model') or {}).get('name', '?'))}: {_cell(n)}" for c, n in notes]
    if plot:
        lines += ["", f"![calibration curves]({plot})"]
    return lines + [""]


# ---------------------------------------------------------------- the document

def render(report: dict, *, source: str = "report.json", out_dir: Path | None = None,
           stem: str = "report", plots: bool = True) -> str:
    """The Markdown text; with ``plots`` and ``out_dir``, PNG plots are written there."""
    assertions = list(report.get("assertions") or [])
    calibrations = list(report.get("calibrations") or [])
    groups: dict[tuple, list[dict]] = {}
    labels: dict[tuple, str] = {}
    for rec in assertions:  # a calibrated check belongs to the candidate it calibrated
        key = _model_key(rec)
        groups.setdefault(key, []).append(rec)
        if not rec.get("calibrate"):
            labels[key] = _model_label(rec)
    for key, records in groups.items():
        labels.setdefault(key, os.path.basename(key[0].rstrip("/\\")) or _model_label(records[0]))
    # disambiguate equal labels
    seen: dict[str, int] = {}
    for key in labels:
        seen[labels[key]] = seen.get(labels[key], 0) + 1
    for key in labels:
        if seen[labels[key]] > 1:
            labels[key] += f" ({key[0]})"

    attack_plots: dict = {}
    cal_plot = None
    plot_note = None
    if plots and out_dir is not None:
        if _pyplot() is None:
            plot_note = "(plots skipped: matplotlib is not installed; pip install matplotlib)"
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            ref_fp = ((report.get("models") or {}).get("reference") or {}).get("fingerprint")
            attack_plots = _attack_plots(groups, labels, out_dir, stem, ref_fp)
            cal_plot = _calibration_plot(calibrations, out_dir, stem)

    lines = _header(report, source)
    lines += _overview(groups, labels)
    if attack_plots:
        lines += ["## Scores under attack", ""]
        lines += ["Each bar is a model's forget-set score under one condition (`none` = no attack); "
                  "hatched bars are the controls (the original, and the reference model that never "
                  "saw the forget set) under the same attack. A gate passes when the worst case per "
                  "sample stays on the right side of the threshold.", ""]
        for (metric, threshold, _), name in attack_plots.items():
            lines += [f"![{metric} per model and attack]({name})", ""]
    if plot_note:
        lines += [plot_note, ""]
    lines += _models_section(report, assertions)
    lines += ["## Per model", ""]
    for key, records in groups.items():
        lines += [f"### Model {_cell(labels[key])}", ""]
        model = records[0].get("model") or {}
        lines += [f"source `{_cell(model.get('source', '?'))}`, fingerprint `{_short_fp(model.get('fingerprint'))}`", ""]
        for rec in records:
            lines += _record_section(rec)
    lines += _calibration_section(calibrations, cal_plot)
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(report_path, out_path, *, plots: bool = True) -> Path:
    """Read the JSON report at ``report_path`` and write the Markdown report (and plots)."""
    report_path, out_path = Path(report_path), Path(out_path)
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SystemExit(f"{report_path}: cannot read the JSON report: {exc}") from None
    except ValueError as exc:
        raise SystemExit(f"{report_path}: not a JSON report: {exc}") from None
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("pytest-unlearn-report/"):
        raise SystemExit(f"{report_path}: not a pytest-unlearn report (no 'schema': 'pytest-unlearn-report/N')")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    text = render(report, source=os.path.relpath(report_path, out_path.parent), out_dir=out_path.parent,
                  stem=out_path.stem, plots=plots)
    write_text_atomically(out_path, text)
    return out_path


DESCRIPTION = "Write a readable Markdown report (with PNG plots) from a pytest-unlearn JSON report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the renderer, shared by ``pytest-unlearn report`` and ``python -m``."""
    parser.add_argument("report", help="the JSON report written by --unlearn-report")
    parser.add_argument("out", help="the Markdown file to write; plots go next to it")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def run(args: argparse.Namespace) -> int:
    path = write_markdown(args.report, args.out, plots=not args.no_plots)
    print(f"markdown report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pytest_unlearn.report_markdown REPORT.json OUT.md`` (= ``pytest-unlearn report``)."""
    parser = argparse.ArgumentParser(prog="python -m pytest_unlearn.report_markdown", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
