"""What each ``gcg`` mode and position recovers on the toy world of the tests, and what it costs.

    python benchmarks/bench_gcg_modes.py [--metrics es,prob] [--attacks SPEC;SPEC...] [--threads 1]
                                         [--smollm2-shape]

Builds the toy world (``pytest_unlearn.toy.build_toy_world``: a 2-layer Llama that knows 8
forget and 16 retain facts, and a reference trained on the retain facts only), "unlearns"
the original by 10 steps of gradient ascent on the forget set (the tests' ``unlearned``
fixture: AdamW, lr 1e-3, batches of 4, seed 0), then scores each metric on the forget set
with no attack and under each attack on the unlearned model, the reference (never saw the
facts) and the original.  Default attacks: ``gcg`` universal and per-sample, as suffix and as
prefix, at their default parameters.  Per attack it also prints the sequences the
optimisation ran per sample (forward sequences, a forward-backward sequence counted as
three) and the seconds of the unlearned model's run (uncached).

``--smollm2-shape``: cost only, on a randomly initialised Llama of SmolLM2-135M's shape (30
layers, hidden 576, vocabulary 49152; the toy tokenizer, so candidates come from its 600
tokens while the gradient spans the whole vocabulary) with 20 toy questions, plain prompts:
per attack the wall and CPU seconds, the sequences per sample and the CPU milliseconds per
sequence (a forward-backward sequence counted as three).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_ATTACKS = "gcg;gcg:mode=sample;gcg:position=prefix;gcg:mode=sample,position=prefix"


def unlearned_model(original, forget):
    """The original after 10 steps of gradient ascent on the forget set (as the tests)."""
    from pytest_unlearn.toy import ascent_unlearned

    return ascent_unlearned(original, forget)


def smollm2_shape(attacks, labels) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_unlearn.attacks import AttackContext
    from pytest_unlearn.data import dataset_from_records
    from pytest_unlearn.models import handle_from_objects
    from pytest_unlearn.scoring import Scorer
    from pytest_unlearn.toy import tiny_tokenizer, toy_facts

    facts = toy_facts(20)
    tok = tiny_tokenizer([r["question"] for r in facts] + [r["answer"] for r in facts], vocab_size=600)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    handle = handle_from_objects(model, tok, name="smollm2-shape")
    data = dataset_from_records([{"question": r["question"], "answer": r["answer"]} for r in facts], name="toy20")
    ctx = AttackContext(scorer=Scorer(prompt="plain"), seed=0)
    t = time.perf_counter()
    ctx.scorer.per_sample("es", handle, data)
    print(f"random Llama of SmolLM2-135M's shape ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters), {len(data)} toy questions; plain es pass {time.perf_counter() - t:.2f} s")
    width = max(len(s) for s in labels)
    for attack, label in zip(attacks, labels):
        t, c = time.perf_counter(), time.process_time()
        out = attack.run("es", handle, data, ctx)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        seqs = out.cost.get("gcg_forward_rows", 0) + 3 * out.cost.get("gcg_backward_rows", 0)
        print(f"{label:<{width}}  {wall:7.1f} s  CPU {cpu:7.1f} s  {seqs / len(data):6.1f} sequences per sample "
              f"+ 1 scoring pass  {1000 * cpu / max(seqs + len(data), 1):5.0f} ms CPU per sequence")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", default="es,prob")
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS, help="semicolon-separated attack specs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smollm2-shape", action="store_true",
                        help="cost only, on a random Llama of SmolLM2-135M's shape")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    import torch

    from pytest_unlearn.attacks import AttackContext, parse_attack
    from pytest_unlearn.data import load_dataset
    from pytest_unlearn.models import load_model
    from pytest_unlearn.scoring import Scorer
    from pytest_unlearn.toy import build_toy_world
    from smollm2_inputs import machine_line

    torch.set_num_threads(args.threads)
    attacks = [parse_attack(s) for s in args.attacks.split(";") if s.strip()]
    labels = [s.strip() for s in args.attacks.split(";") if s.strip()]
    print(machine_line(torch))
    if args.smollm2_shape:
        smollm2_shape(attacks, labels)
        return 0
    paths = build_toy_world(tempfile.mkdtemp(prefix="toy-world-"))
    original = load_model(paths["original"], name="original")
    models = {"unlearned": unlearned_model(original, load_dataset(paths["forget"], name="forget")),
              "reference": load_model(paths["reference"], name="reference"), "original": original}
    forget, retain = load_dataset(paths["forget"], name="forget"), load_dataset(paths["retain"], name="retain")
    width = max(len(s) for s in labels + ["(no attack)"])
    cost = {}
    for metric in [m.strip() for m in args.metrics.split(",") if m.strip()]:
        print(f"\nmean {metric} on the {len(forget)} forget samples")
        print(f"{'attack':<{width}}  " + "  ".join(f"{name:>9}" for name in models))
        rows = {"(no attack)": [Scorer().per_sample(metric, h, forget).mean() for h in models.values()]}
        for attack, label in zip(attacks, labels):
            rows[label] = []
            for name, handle in models.items():
                ctx = AttackContext(scorer=Scorer(), forget=forget, retain=retain, seed=0)
                t = time.perf_counter()
                out = attack.run(metric, handle, forget, ctx)
                if name == "unlearned":
                    c = out.cost
                    cost[label] = (time.perf_counter() - t, (c.get("gcg_forward_rows", 0)
                                                             + 3 * c.get("gcg_backward_rows", 0)) / len(forget))
                rows[label].append(float(out.values.mean()))
        for label, values in rows.items():
            print(f"{label:<{width}}  " + "  ".join(f"{v:9.3f}" for v in values))
    print(f"\ncost on the unlearned model ({len(forget)} samples, one thread)")
    for label, (secs, per_sample) in cost.items():
        print(f"{label:<{width}}  {secs:6.2f} s  {per_sample:6.1f} sequences per sample + 1 scoring pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
