"""Every metric's mean on a model and data file, under each prompt format: a table to compare
numbers across versions of the library (or with another framework's).

    python benchmarks/score_table.py                              # the SmolLM2 suite's original model
    python benchmarks/score_table.py --model PATH --data FILE --prompt chat --prompt plain
    python benchmarks/score_table.py --json out.json              # per-sample scores too

Prints one row per (prompt format, metric): mean, min, max over the samples.  Nothing is
cached, so two versions of the library compare what they compute, not what they stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_inputs import DEFAULT_FORGET, DEFAULT_MODEL, check_inputs, machine_line  # noqa: E402

METRICS = ["es", "em", "prob", "ppl", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_pp", "truth_ratio", "rouge_l"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--data", type=Path, default=DEFAULT_FORGET)
    ap.add_argument("--prompt", action="append", help="prompt format(s); default: chat and plain")
    ap.add_argument("--metric", action="append", help=f"metric(s); default: {' '.join(METRICS)}")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write per-sample scores as JSON here")
    args = ap.parse_args(argv)
    check_inputs(args.model, [args.data])

    import torch

    from pytest_unlearn import load_dataset, load_model
    from pytest_unlearn.scoring import Scorer

    print(machine_line(torch))
    handle = load_model(args.model, device="cpu", dtype="float32")
    data = load_dataset(args.data, name="forget")
    metrics = args.metric or METRICS
    if not data.has("perturbed_answer"):
        metrics = [m for m in metrics if m != "truth_ratio"]
    out: dict = {}
    print(f"{'prompt':<8} {'metric':<14} {'mean':>10} {'min':>10} {'max':>10}")
    for prompt in args.prompt or ["chat", "plain"]:
        scorer = Scorer(prompt=prompt, batch_size=args.batch_size)
        for name in metrics:
            t0 = time.perf_counter()
            values = scorer.per_sample(name, handle, data)
            out.setdefault(prompt, {})[name] = [float(v) for v in values]
            print(f"{prompt:<8} {name:<14} {values.mean():>10.4f} {values.min():>10.4f} {values.max():>10.4f}"
                  f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
