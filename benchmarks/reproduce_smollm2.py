"""Reproduce the paper's evaluation framework on SmolLM2-135M (run by hand; CPU, bounded).

    python benchmarks/reproduce_smollm2.py                 # everything (resumes where it stopped)
    python benchmarks/reproduce_smollm2.py --skip-audit    # only the calibrated comparison
    python benchmarks/reproduce_smollm2.py --quick         # a smoke run: 2 methods, 1 setting, 1 attack

Wang et al. (ICLR 2025) make two claims this script tests on a small model:

1. **Metric robustness.**  Across many unlearned models, a robust metric's scores after an
   attack stay linearly related to its scores before (PCC near 1).  Their winner: ES.
2. **Calibrated comparison.**  After mixing each unlearned model back toward the original
   until the retain ES is 0.9 x the original's (UWC), the GA family (GA, NPO, ...) unlearns
   strongly while PO (refusal tuning, here ``idk``) and RMU leave much of the forget set
   extractable.

The scenario is the SmolLM2 example suite's: SmolLM2-135M-Instruct fine-tuned on invented
facts (``example_suites/smollm2/data``).  The original model is reused from
``example_suites/smollm2/.models/original`` (built by ``example_suites/smollm2/build_models.py``,
which this script runs for ``reference`` and ``original`` when they are missing), never
trained a second time.  Then:

* **comparison** (:func:`pytest_unlearn.compare_methods`): every method x setting of ``GRID``
  is unlearned, calibrated to tau = 0.9 on retain ES and tabulated; the unlearned
  checkpoints are saved;
* **audit** (:func:`pytest_unlearn.audit_metrics`): those checkpoints plus the reference
  model are scored with ES, EM, Prob, PPL, truth ratio and the MIA scores, before and
  after paraphrase, 4-bit quantization and a few relearning steps, on the forget set and
  on ``AUDIT_RETAIN_ROWS`` retain rows (truth ratio on the forget set only, to bound the
  cost; the retain rows' perturbed answers are dropped so the audit skips it there);
  then the same fit without the "broken" checkpoints (retain ES below ``BROKEN_FRACTION``
  of the original's), to see how much each PCC rests on a few extreme models.

Everything is cached under ``--work`` (default ``example_suites/smollm2/.models/reproduction``,
ignored by git): the comparison resumes from ``runs.jsonl``, the audit's cells from the
result cache, so an interrupted run continues where it stopped.  Tables, the scatter plot
and ``summary.json`` / ``summary.md`` go to ``--out`` (default
``example_suites/smollm2/reports/reproduction``).  Wall times are printed and stored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUITE = ROOT / "example_suites" / "smollm2"
DATA = SUITE / "data"
MODELS = SUITE / ".models"

# method -> hyper-parameter lists (3 learning rates each); small batches and few steps bound the CPU cost
GRID = {
    "ga": {"lr": [1e-5, 3e-5, 1e-4], "steps": [8], "batch_size": [4]},
    "npo": {"lr": [1e-5, 3e-5, 1e-4], "steps": [8], "batch_size": [4]},
    "idk": {"lr": [1e-5, 3e-5, 1e-4], "steps": [8], "batch_size": [4]},
    "rmu": {"lr": [5e-5, 2e-4, 1e-3], "steps": [8], "batch_size": [4]},
}
QUICK_GRID = {"ga": {"lr": [3e-5], "steps": [4], "batch_size": [4]},
              "npo": {"lr": [3e-5], "steps": [4], "batch_size": [4]}}
TAU = 0.9
TOL = 0.05
AUDIT_METRICS = ["es", "em", "prob", "ppl", "truth_ratio", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_pp"]
AUDIT_ATTACKS = ["paraphrase", "quantize:4", "relearn:steps=3,batch_size=4"]
QUICK_ATTACKS = ["paraphrase"]
# the paper's strongest attacks, audited with --attacks (not part of the default run)
STRONG_ATTACKS = ["gcg", "relearn:steps=3,batch_size=4+logit_lens"]
AUDIT_RETAIN_ROWS = 20
BROKEN_FRACTION = 0.5  # a checkpoint whose retain ES is below this fraction of the original's is "broken"


def log(message: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", flush=True)


def choose_threads(requested: int | None) -> int:
    """``--threads``; else all cores on an idle machine, one on a busy one (PyTorch threads
    fighting other processes for the same cores run many times slower)."""
    import torch

    if requested:
        return requested
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores - 0.5
    except OSError:
        busy = False
    return 1 if busy else torch.get_num_threads()


def models_ready(*names: str) -> bool:
    return all((MODELS / n / "config.json").is_file() and any((MODELS / n).glob("*.safetensors")) for n in names)


def ensure_original(build: bool) -> None:
    """Reuse ``.models/original`` (and ``reference``); build them with the suite's own builder if missing."""
    if models_ready("original", "reference"):
        log(f"reusing {MODELS / 'original'} and {MODELS / 'reference'} (built by build_models.py)")
        return
    if not build:
        raise SystemExit(f"{MODELS / 'original'} is missing; run example_suites/smollm2/build_models.py "
                         "original reference, or drop --no-build")
    builder = SUITE / "build_models.py"
    if not builder.is_file():
        raise SystemExit(f"{builder} not found: cannot build the original model")
    import importlib.util

    spec = importlib.util.spec_from_file_location("smollm2_build_models", builder)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    log("building reference and original with example_suites/smollm2/build_models.py")
    module.build(only=["reference", "original"])


def _attacks(args) -> list[str]:
    from pytest_unlearn.audit import split_attack_list

    if args.attacks:
        return split_attack_list(args.attacks)
    return QUICK_ATTACKS if args.quick else AUDIT_ATTACKS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(MODELS / "reproduction"), help="checkpoints, caches, runs.jsonl")
    parser.add_argument("--out", default=str(SUITE / "reports" / "reproduction"), help="tables, plot, summary")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: see choose_threads)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 methods x 1 setting, paraphrase only")
    parser.add_argument("--skip-audit", action="store_true")
    parser.add_argument("--skip-compare", action="store_true", help="audit the checkpoints already saved")
    parser.add_argument("--no-build", action="store_true", help="never build the original; fail if missing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", default=None,
                        help="audit these attacks instead of the default three (comma-separated specs, e.g. "
                             f"'{','.join(STRONG_ATTACKS)}'); results under <out>/audit-attacks")
    parser.add_argument("--checkpoints", default=None,
                        help="audit only these checkpoints (comma-separated run labels as in the comparison "
                             "table, e.g. 'ga(batch_size=4,lr=1e-05,steps=8),reference'; the original is always the control)")
    parser.add_argument("--splits", default="forget,retain",
                        help="the audit's splits (comma-separated: forget, retain)")
    args = parser.parse_args(argv)

    import torch

    from pytest_unlearn import audit_metrics, compare_methods
    from pytest_unlearn.cache import ResultCache
    from pytest_unlearn.data import Dataset, load_dataset
    from pytest_unlearn.method_comparison import read_runs, run_label
    from pytest_unlearn.models import load_model
    from pytest_unlearn.scoring import Scorer

    threads = choose_threads(args.threads)
    torch.set_num_threads(threads)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": threads,
                     "torch": torch.__version__, "python": platform.python_version(),
                     "load_average_at_start": list(os.getloadavg()), "quick": args.quick, "seed": args.seed,
                     "grid": QUICK_GRID if args.quick else GRID, "tau": TAU, "tol": TOL,
                     "attacks": _attacks(args), "metrics": AUDIT_METRICS,
                     "audit_retain_rows": AUDIT_RETAIN_ROWS, "timings_s": {}}
    log(f"{threads} torch thread(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    t = time.perf_counter()
    ensure_original(build=not args.no_build)
    summary["timings_s"]["original"] = round(time.perf_counter() - t, 1)
    for name in ("original", "reference"):
        info = MODELS / name / "build-info.json"
        if info.is_file():
            summary[f"{name}_build_info"] = json.loads(info.read_text(encoding="utf-8"))
    original = load_model(MODELS / "original", device="cpu", dtype="float32", name="original")
    forget = load_dataset(DATA / "forget.jsonl", name="forget")
    retain = load_dataset(DATA / "retain.jsonl", name="retain")
    scorer = Scorer(cache=ResultCache(work / "cache"))
    summary["data"] = {"forget": len(forget), "retain": len(retain)}

    # ------------------------------------------------------------ calibrated comparison
    grid = QUICK_GRID if args.quick else GRID
    compare_dir = work / ("compare-quick" if args.quick else "compare")
    if not args.skip_compare:
        t = time.perf_counter()
        log(f"comparison: {sum(1 for _ in _settings(grid))} runs, tau {TAU}, ES; resuming from {compare_dir}")
        comparison = compare_methods(original, grid, forget, retain, tau=TAU, metric="es", seed=args.seed,
                                     out_dir=compare_dir, save_checkpoints=True, scorer=scorer, tol=TOL,
                                     progress=True)
        summary["timings_s"]["comparison"] = round(time.perf_counter() - t, 1)
        comparison.save(out / "comparison")
        summary["comparison"] = _records(comparison.table)
        summary["best"] = _records(comparison.best)
        print(comparison.to_markdown(), flush=True)
        checkpoints = comparison.checkpoints
    else:
        runs = read_runs(compare_dir / "runs.jsonl")
        checkpoints = {run_label(r["method"], r["params"]): r["checkpoint"] for r in runs.values()
                       if r.get("checkpoint") and Path(r["checkpoint"]).is_dir()}
    if models_ready("reference"):
        checkpoints = {**checkpoints, "reference": str(MODELS / "reference")}
    if args.checkpoints:
        import re

        # commas inside a label's parentheses belong to the label
        wanted = [c.strip() for c in re.split(r",(?![^()]*\))", args.checkpoints) if c.strip()]
        unknown = [c for c in wanted if c not in checkpoints]
        if unknown:
            raise SystemExit(f"--checkpoints: no checkpoint named {', '.join(unknown)}; "
                             f"known: {', '.join(checkpoints)}")
        checkpoints = {c: checkpoints[c] for c in wanted}
        summary["audited_checkpoints"] = wanted

    # ------------------------------------------------------------ metric robustness audit
    if not args.skip_audit:
        t = time.perf_counter()
        frame = retain.frame.iloc[:AUDIT_RETAIN_ROWS].drop(columns=["perturbed_answer"], errors="ignore")
        retain_rows = Dataset(frame.reset_index(drop=True), retain.kind, name="retain", source=retain.source)
        attacks = _attacks(args)
        audit_name = "audit-attacks" if args.attacks else "audit"
        splits = [x.strip() for x in args.splits.split(",") if x.strip()]
        summary["splits"] = splits
        rows = {"forget": len(forget), "retain": len(retain_rows)}
        log(f"audit: {len(checkpoints)} checkpoints + the original as control; metrics {', '.join(AUDIT_METRICS)}; "
            f"attacks {', '.join(attacks)}; " + ", ".join(f"{s} {rows.get(s, '?')} rows" for s in splits))
        result = audit_metrics(original, checkpoints, forget, retain_rows, metrics=AUDIT_METRICS, attacks=attacks,
                               scorer=scorer, seed=args.seed, progress=True, device="cpu", dtype="float32",
                               splits=splits)
        summary["timings_s"]["audit"] = round(time.perf_counter() - t, 1)
        result.save(out / audit_name)
        summary["audit"] = {"recommendation": result.recommendation, "ranking": _records(result.ranking),
                            "table": _records(result.table), "notes": result.notes,
                            "checkpoints": [c["name"] for c in result.checkpoints]}
        print(result.to_markdown(), flush=True)
        # sensitivity: the same fit without the checkpoints the unlearning broke (retain ES below half
        # the original's), whose extreme scores can carry a PCC on their own (no model is run again)
        before = result.scores[(result.scores["attack"] == "none") & (result.scores["metric"] == "es")
                               & (result.scores["split"] == "retain")].set_index("checkpoint")["value"]
        if "original" in before.index:
            broken = [c for c in before.index if c != "original" and before[c] < BROKEN_FRACTION * before["original"]]
            if broken:
                refit = result.without(broken)
                refit.save(out / f"{audit_name}-without-broken")
                summary["audit_without_broken"] = {"dropped": broken, "recommendation": refit.recommendation,
                                                   "ranking": _records(refit.ranking), "table": _records(refit.table)}
                log(f"re-fitted without {len(broken)} broken checkpoint(s) {broken}: "
                    f"recommendation {refit.recommendation}")

    summary["timings_s"]["total"] = round(time.perf_counter() - started, 1)
    summary["load_average_at_end"] = list(os.getloadavg())
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    parts = [f"# SmolLM2-135M reproduction ({summary['started']})", "",
             f"threads {threads}, torch {torch.__version__}, load average at start "
             f"{summary['load_average_at_start'][0]:.1f}, timings (s): {summary['timings_s']}", ""]
    for name in ("comparison/comparison.md", "audit/audit.md", "audit-attacks/audit.md"):
        if (out / name).is_file():
            parts.append((out / name).read_text(encoding="utf-8"))
    (out / "summary.md").write_text("\n".join(parts), encoding="utf-8")
    log(f"done in {summary['timings_s']['total']:.0f} s; results in {out}")
    return 0


def _settings(grid):
    from pytest_unlearn.method_comparison import expand_grid

    return expand_grid(grid)


def _records(frame) -> list[dict]:
    import math

    rows = []
    for r in frame.to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    return rows


if __name__ == "__main__":
    sys.exit(main())
