"""Command-line entry points: the metric robustness audit, the calibrated method comparison and
the Markdown report.

::

    pytest-unlearn-audit --original ORIG --checkpoint CK1 --checkpoint CK2 --checkpoint CK3 \\
        --forget forget.jsonl --retain retain.jsonl --attacks paraphrase,quantize:4 --out audit/
    python -m pytest_unlearn.cli audit ...            (the same)
    python -m pytest_unlearn.cli compare --original ORIG --forget F --retain R \\
        --grid '{"ga": {"lr": [1e-5, 3e-5], "steps": [20]}}' --tau 0.9 --out runs/
    pytest-unlearn report unlearn-report.json report.md [--no-plots]
    python -m pytest_unlearn.report_markdown unlearn-report.json report.md   (the same)

``audit`` writes ``table.csv``, ``ranking.csv``, ``scores.csv``, ``audit.md``, ``audit.json``
and ``scatter.png`` (with matplotlib) into ``--out`` and prints the ranking and the
recommended metric.  ``compare`` stores each finished run in ``--out/runs.jsonl`` (a rerun
skips them), writes ``comparison.csv``, ``best.csv`` and ``comparison.md`` and prints the
table.  ``report`` renders the JSON report of ``--unlearn-report`` as Markdown with PNG plots
next to it.  Exit status: 0 done, 2 bad arguments or inputs (the message says which).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "audit_main", "compare_main"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--original", required=True, help="the model before unlearning (model folder or .gguf)")
    p.add_argument("--forget", required=True, help="forget data file (.jsonl, .json, .csv, .parquet)")
    p.add_argument("--retain", required=True, help="retain data file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prompt", default=None, help="chat (default when the tokenizer has a template), plain, "
                                                  "or a format string such as 'Question: {question}\\nAnswer:'")
    p.add_argument("--system-prompt", default=None,
                   help="a system prompt for every scored prompt (a system turn in chat format, a paragraph "
                        "before the prompt otherwise); as unlearn_system_prompt")
    p.add_argument("--chat-template-args", default=None,
                   help="extra arguments for the chat template, as a JSON object, e.g. "
                        "'{\"enable_thinking\": false}' or '{\"date_string\": \"26 Jul 2024\"}'; "
                        "as unlearn_chat_template_args")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16, float16")
    p.add_argument("--batch-size", type=int, default=None, help="scoring batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of every stochastic step (default 0)")
    p.add_argument("--cache-dir", default=None, help="result cache folder (token statistics, attack outcomes)")
    p.add_argument("--progress", action="store_true", help="show progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-unlearn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("audit", help="metric robustness audit (PCC / slope of before- vs after-attack scores)",
                       description="Score every metric before and after every attack on a set of unlearned "
                                   "checkpoints; report PCC and slope per metric x attack x split and the "
                                   "most robust metric.")
    _common(a)
    a.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="an unlearned checkpoint (repeat; a glob pattern is expanded)")
    a.add_argument("--checkpoints-dir", action="append", default=[], metavar="DIR",
                   help="use every model folder (with config.json or adapter_config.json) directly in DIR")
    a.add_argument("--metrics", default=None,
                   help="comma-separated metrics (default: es, em, prob, ppl, rouge_l, truth_ratio when the "
                        "data has perturbed answers, mia_loss, mia_zlib, mia_min_k, mia_min_k_pp)")
    a.add_argument("--attacks", default=None,
                   help="comma-separated attack specs, e.g. paraphrase,quantize:4,relearn:steps=5,lr=1e-4 "
                        "(default: paraphrase,quantize:4,relearn)")
    a.add_argument("--attack", action="append", default=[], metavar="SPEC",
                   help="one attack spec (repeat; added to --attacks)")
    a.add_argument("--splits", default="forget,retain", help="forget,retain (default) or one of them")
    a.add_argument("--no-controls", action="store_true", help="do not score the original model as a control")
    a.add_argument("--no-plots", action="store_true", help="do not write scatter.png")

    c = sub.add_parser("compare", help="calibrated (UWC) comparison of unlearning methods over a grid",
                       description="Unlearn with every method and hyper-parameter setting of --grid, calibrate "
                                   "each to --tau and tabulate; resumable (runs.jsonl in --out).")
    _common(c)
    c.add_argument("--grid", required=True,
                   help='JSON (or a .json file): {"ga": {"lr": [1e-5, 3e-5], "steps": [20]}, "npo": {...}}')
    c.add_argument("--tau", type=float, default=0.9, help="retain bar as a fraction of the original (0.9)")
    c.add_argument("--metric", default="es", help="calibration and comparison metric (default es)")
    c.add_argument("--tol", type=float, default=0.01, help="calibration tolerance in alpha (default 0.01)")
    c.add_argument("--save-checkpoints", action="store_true",
                   help="save every unlearned model under OUT/checkpoints/ (for a later audit)")
    c.add_argument("--retry-errors", action="store_true", help="rerun runs stored as failed")

    from . import report_markdown

    r = sub.add_parser("report", help="render a JSON report (--unlearn-report) as Markdown with plots",
                       description=report_markdown.DESCRIPTION)
    report_markdown.add_arguments(r)
    return parser


def _run_report(args) -> int:
    from . import report_markdown

    try:
        return report_markdown.run(args)
    except SystemExit as exc:  # the renderer's own "cannot read / not a report" messages
        if isinstance(exc.code, str):
            print(f"pytest-unlearn report: error: {exc.code}", file=sys.stderr)
            return 2
        raise


def _scorer(args):
    from .cache import ResultCache
    from .scoring import Scorer

    from .prompts import parse_template_args

    parse_template_args(args.chat_template_args, "--chat-template-args")  # a bad value fails before loading
    return Scorer.from_settings(args, progress=False,
                                cache=ResultCache(Path(args.cache_dir)) if args.cache_dir else None)


def _checkpoints(args) -> list[str]:
    from .errors import ConfigError

    out: list[str] = []
    for spec in args.checkpoint:
        matches = sorted(glob.glob(os.path.expanduser(spec))) if any(ch in spec for ch in "*?[") else [spec]
        if not matches:
            raise ConfigError(f"--checkpoint {spec!r} matches nothing")
        out += matches
    for folder in args.checkpoints_dir:
        root = Path(os.path.expanduser(folder))
        if not root.is_dir():
            raise ConfigError(f"--checkpoints-dir {folder!r} is not a folder")
        found = sorted(str(p) for p in root.iterdir()
                       if p.is_dir() and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file()))
        if not found:
            raise ConfigError(f"--checkpoints-dir {folder!r} holds no model folder (config.json)")
        out += found
    seen: dict[str, None] = {}
    for path in out:
        seen.setdefault(os.path.abspath(path), None)
    return list(seen)


def _run_audit(args) -> int:
    from .audit import DEFAULT_ATTACKS, audit_metrics, split_attack_list
    from .errors import ConfigError

    checkpoints = _checkpoints(args)
    if len(checkpoints) < 2:
        raise ConfigError(f"give at least 2 checkpoints (3 or more for a meaningful PCC) with --checkpoint or "
                          f"--checkpoints-dir; got {len(checkpoints)}")
    attacks = split_attack_list(args.attacks) if args.attacks else []
    attacks += args.attack
    if not attacks:
        attacks = list(DEFAULT_ATTACKS)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    result = audit_metrics(args.original, checkpoints, args.forget, args.retain, metrics=metrics, attacks=attacks,
                           scorer=_scorer(args), seed=args.seed, progress=args.progress, splits=splits,
                           controls=not args.no_controls, device=args.device, dtype=args.dtype)
    paths = result.save(args.out, plots=not args.no_plots)
    from .formatting import markdown_table, number as _f

    print("\n".join(markdown_table(["rank", "metric", "mean PCC", "min PCC", "mean |slope-1|"],
                                   [[i + 1, r.metric, _f(r.mean_pcc), _f(r.min_pcc), _f(r.mean_abs_slope_dev)]
                                    for i, r in enumerate(result.ranking.itertuples())])))
    print(f"\nrecommended metric: {result.recommendation or '(none)'}")
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def _run_compare(args) -> int:
    from .errors import ConfigError
    from .method_comparison import compare_methods

    text = args.grid.strip()
    if not text.startswith("{") and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    try:
        grid = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--grid is neither JSON nor a JSON file: {exc}") from None
    result = compare_methods(args.original, grid, args.forget, args.retain, tau=args.tau, metric=args.metric,
                             seed=args.seed, out_dir=args.out, save_checkpoints=args.save_checkpoints,
                             scorer=_scorer(args), tol=args.tol, progress=args.progress,
                             retry_errors=args.retry_errors, device=args.device, dtype=args.dtype)
    print(result.to_markdown())
    done = int(result.table["cached"].sum())
    print(f"{len(result.table)} runs ({done} read from {Path(args.out) / 'runs.jsonl'}); "
          f"tables written to {args.out}")
    return 0


_COMMANDS = {"audit": _run_audit, "compare": _run_compare, "report": _run_report}


def main(argv: Sequence[str] | None = None) -> int:
    """``pytest-unlearn {audit,compare,report} ...``; returns the exit status."""
    from .errors import UnlearnError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _COMMANDS[args.command](args)
    except UnlearnError as exc:
        print(f"pytest-unlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2


def audit_main(argv: Sequence[str] | None = None) -> int:
    """``pytest-unlearn-audit ...`` = ``pytest-unlearn audit ...``."""
    return main(["audit", *(sys.argv[1:] if argv is None else argv)])


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``pytest-unlearn-compare ...`` = ``pytest-unlearn compare ...``."""
    return main(["compare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # python -m pytest_unlearn.cli audit ...
    sys.exit(main())
