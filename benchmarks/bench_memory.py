"""Peak memory per phase of a gate, measured on small models, projected to 7B, 8B and 70B.

    python benchmarks/bench_memory.py [--layers 2,10] [--hidden 512] [--vocab 16000] [--samples 16]
                                      [--batch-size 8] [--json FILE]

What is measured (CPU, float32, no result cache; about a minute on a 2-core machine): two
Llama models built from a config with random weights (``--hidden`` wide, ``--vocab`` logits,
``--layers`` deep: two depths, so that a per-parameter slope and a fixed part can be told
apart), saved as safetensors folders and loaded by the library as original, unlearned and
reference.  Synthetic TOFU-like QA rows (question, answer, paraphrased_question); a tokenizer
trained on them uses the first ids of the vocabulary.  A first small run is not recorded
(first-use allocations of torch, transformers and the library).

Memory is the process's **resident set size** (``/proc/self/statm``: anonymous memory and the
pages of the memory-mapped safetensors files the loaded weights live in), sampled every 2 ms
by a thread.  Before each phase Python's garbage is
collected and glibc is asked to return its free memory (``malloc_trim``); a phase's figure is
its peak minus the memory at its start.  Phases: ``load`` (one model), ``score`` (es, forget
set), each attack (``paraphrase``, ``quantize:4``, ``relearn`` with full fine-tuning and
with LoRA, LoRA again with training batches of 8 instead of 4, ``logit_lens``), ``calibration`` (tau 0.9, es) and ``reference control`` (loading
and scoring the reference after calibration), and a ``whole gate``: all of these in one
fresh session, from nothing loaded to the end.

Model: each phase's peak is ``c * weight bytes + t * logit bytes`` where ``c`` (copies of
the weights) is the slope between the two depths, and ``t`` is the rest per byte of one
batch's float32 logits (batch x padded length x vocabulary x 4; activations grow with the
logits' dimensions at these sizes; for relearning, a training batch's logits).  Training
keeps every layer's activations, which grow with depth too: relearning's slope is first
corrected by the activations per layer and training sample, measured as how much more a
batch of 8 takes than one of 4 grows with depth.  A slope below 0 (noise) counts as 0.  Projection to a Hugging Face model in bfloat16 on one
GPU: weight bytes = 2 x parameters, logits of the CUDA default batch (32) at 256 tokens (a
TOFU prompt and answer in a chat template) and the model's vocabulary; relearning's
activations scaled to the model's layers and hidden size at 256 tokens in bf16, without
gradient checkpointing (an upper bound: CUDA uses it).  On the CPU host and
device memory are one, so the CPU-side copies the attacks keep (quantize's and relearn's
restore copy, relearn's memo of trained weights) are counted as if on the GPU: an upper
bound.  Relearning fine-tunes a model of 1e9+ parameters with LoRA by default; its full
fine-tuning in bf16 is projected from the library's estimate (20 bytes per parameter,
``training.training_bytes``) instead of the float32 slope.  A gate holds original,
unlearned, reference and calibration's working copy at the end; its peak is those four
plus the largest phase on top of them (checked on the small models against the measured
whole gate).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30
# (parameters, vocabulary) of the published configs
# (parameters, vocabulary, layers, hidden size) of the published configs
TARGETS = {"Llama-2-7B": (6.74e9, 32000, 32, 4096), "Llama-3-8B": (8.03e9, 128256, 32, 4096),
           "Llama-3-70B": (70.6e9, 128256, 80, 8192)}
GPU_BYTES = 80e9  # one 80 GB GPU (A100/H100 80GB: 80 x 10^9 bytes, about 74.5 GiB usable by tensors)
CUDA_BATCH, TOKENS = 32, 256
PHASES = ("load", "score", "paraphrase", "quantize:4", "relearn (full)", "relearn (lora)", "relearn (lora), batch 8",
          "logit_lens", "calibration", "reference control")
WEIGHT_ATTACKS = {"quantize:4": "quantize:4", "relearn (full)": "relearn:steps=2,lora=false",
                  "relearn (lora)": "relearn:steps=2,lora=true", "paraphrase": "paraphrase",
                  "logit_lens": "logit_lens", "relearn (lora), batch 8": "relearn:steps=2,lora=true,batch_size=8"}
TRAIN_BATCH = 4  # relearn's default batch_size


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class Peak:
    """Peak resident set size above the value at entry, sampled every 2 ms."""

    def __enter__(self):
        trim()
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.extra = self.peak - self.start


def synthetic_rows(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    words = ("river stone lantern copper meadow violet harbor ember glacier falcon orchard cedar "
             "marble thunder willow saffron canyon").split()
    rows = []
    for i in range(n):
        name = f"{rng.choice(words).title()} {rng.choice(words).title()}"
        facts = " ".join(rng.choice(words) for _ in range(24))
        rows.append({"question": f"What is known about the author {name} (record {i})?",
                     "paraphrased_question": f"Tell me what you know about {name}, record {i}.",
                     "answer": f"{name} wrote about {facts}."})
    return rows


def build(root: Path, layers: int, hidden: int, vocab: int, tokenizer) -> dict[str, str]:
    """original / unlearned / reference folders of one random Llama: the unlearned model is the
    original with seeded noise of half each tensor's standard deviation (so that calibration
    mixes), the reference the original with 2% noise."""
    import torch

    from transformers import LlamaConfig, LlamaForCausalLM

    paths = {}
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    for i, role in enumerate(("original", "unlearned", "reference")):
        if i:
            model.load_state_dict(clean)
            gen = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for p in model.parameters():
                    scale = (0.5 if role == "unlearned" else 0.02) * float(p.std() if p.numel() > 1 else 0)
                    p.add_(torch.randn(p.shape, generator=gen) * scale)
        folder = root / f"L{layers}-{role}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        paths[role] = str(folder)
    n_params = sum(p.numel() for p in model.parameters())
    del model, clean
    trim()
    return paths, n_params


def suite_for(paths, data, batch_size):
    from pytest_unlearn.suite import Suite

    return Suite.from_paths(original=paths["original"], model=paths["unlearned"], reference=paths["reference"],
                            forget=data["forget"], retain=data["retain"], cache_dir=None, device="cpu",
                            dtype="float32", batch_size=batch_size, no_cache=True, progress=False)


def measure_phases(paths, data, batch_size) -> dict[str, int]:
    out = {}
    suite = suite_for(paths, data, batch_size)
    with Peak() as p:
        suite.original
    out["load"] = p.extra
    suite.unlearned
    with Peak() as p:
        suite.score("es")
    out["score"] = p.extra
    for phase, spec in WEIGHT_ATTACKS.items():
        with Peak() as p:
            suite.score("es", attack=spec)
        out[phase] = p.extra
    with Peak() as p:
        result = suite.calibrate(0.9, "es")
        # random weights score 0 on both models, so calibration may stop at alpha 1 without a
        # mix: then score one mix (alpha 0.5) in its working copy, as a bisection step does
        if not 0 < result.alpha < 1:
            from pytest_unlearn.metrics import get_metric

            workspace = suite._workspaces[suite.unlearned.fingerprint]
            mixed = workspace.handle(suite.original, suite.unlearned, 0.5, "mixed")
            suite.scorer.score(get_metric("es"), mixed, suite.retain)
    out["calibration"] = p.extra
    with Peak() as p:
        suite.score("es", model=suite.reference)
    out["reference control"] = p.extra
    suite.close()
    trim()
    return out


def measure_gate(paths, data, batch_size) -> int:
    with Peak() as p:
        suite = suite_for(paths, data, batch_size)
        suite.score("es")
        for spec in ("paraphrase", "quantize:4", "relearn:steps=2", "logit_lens"):
            suite.score("es", attack=spec)
        suite.calibrate(0.9, "es")
        suite.score("es", model=suite.reference)
        suite.close()
    trim()
    return p.extra


def logit_bytes(batch: int, tokens: int, vocab: int) -> float:
    return float(batch) * tokens * vocab * 4


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="2,10", help="two depths (comma-separated)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=16000, help="vocabulary of the model (the tokenizer uses "
                    "its first ids; the logits take the whole vocabulary)")
    ap.add_argument("--samples", type=int, default=16, help="forget and retain rows each")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from pytest_unlearn.toy import tiny_tokenizer

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    depths = [int(x) for x in args.layers.split(",")]
    assert len(depths) == 2 and depths[0] < depths[1], "--layers takes two increasing depths"
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        forget, retain = synthetic_rows(args.samples, 0), synthetic_rows(args.samples, 1)
        data = {}
        for name, rows in (("forget", forget), ("retain", retain)):
            data[name] = str(root / f"{name}.json")
            Path(data[name]).write_text(json.dumps(rows))
        tokenizer = tiny_tokenizer([r["question"] + " " + r["answer"] for r in forget + retain], vocab_size=2000)
        vocab = max(args.vocab, len(tokenizer))
        longest = max(len(tokenizer(tokenizer.apply_chat_template(
            [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}],
            tokenize=False))["input_ids"]) for r in forget + retain)
        meas_logits = logit_bytes(min(args.batch_size, args.samples), longest, vocab)
        # a first small run, not recorded: first-use allocations of torch, transformers and the library
        paths, _ = build(root, 1, 64, vocab, tokenizer)
        measure_phases(paths, data, args.batch_size)
        runs = []
        for layers in depths:
            paths, n_params = build(root, layers, args.hidden, vocab, tokenizer)
            phases = measure_phases(paths, data, args.batch_size)
            gate = measure_gate(paths, data, args.batch_size)
            runs.append({"layers": layers, "params": n_params, "weight_bytes": 4 * n_params,
                         "phases": phases, "gate": gate})
    (a, b) = runs
    dw = b["weight_bytes"] - a["weight_bytes"]
    fit = {}
    # training keeps every layer's activations for the backward pass: they grow with depth like the
    # weights, so relearn's slope over depth is corrected by the activations measured per layer and
    # training sample (the difference between batches of 8 and 4 samples, per layer)
    # training sample (how much more a batch of 8 samples takes than one of 4 grows with depth)
    extra = [r["phases"]["relearn (lora), batch 8"] - r["phases"]["relearn (lora)"] for r in runs]
    act = max(extra[1] - extra[0], 0) / ((8 - TRAIN_BATCH) * (b["layers"] - a["layers"]))
    train_logits = logit_bytes(TRAIN_BATCH, longest, vocab)
    for phase in PHASES:
        grow = b["phases"][phase] - a["phases"][phase]
        if phase.startswith("relearn"):
            grow -= act * TRAIN_BATCH * (b["layers"] - a["layers"])
        c = grow / dw
        rest = b["phases"][phase] - c * b["weight_bytes"]
        if phase.startswith("relearn"):
            rest -= act * TRAIN_BATCH * b["layers"]
        fit[phase] = {"copies": c, "per_logit_byte": max(rest, 0.0) / (
            train_logits if phase.startswith("relearn") else meas_logits)}
    act_measured = act / (longest * args.hidden * 4)  # per layer, sample, token and hidden unit (float32)

    def phase_bytes(phase, weights, logits, train_act=0.0, train_logits=0.0):
        """A phase's bytes on top of what is loaded: ``logits`` are a scoring batch's, ``train_logits``
        a training batch's (relearn)."""
        f = fit[phase]
        if phase.startswith("relearn"):
            return max(f["copies"], 0.0) * weights + f["per_logit_byte"] * train_logits + train_act
        return max(f["copies"], 0.0) * weights + f["per_logit_byte"] * logits

    def gate_bytes(weights, logits, train_act, train_logits, full_relearn_bytes=None):
        # at the end four models are held: original, unlearned, reference, the working copy
        resident = 4 * weights
        on_top = {p: phase_bytes(p, weights, logits) for p in PHASES
                  if p not in ("load", "calibration", "reference control") and not p.startswith("relearn")}
        on_top["relearn"] = (phase_bytes("relearn (lora)", weights, logits, train_act, train_logits)
                             if full_relearn_bytes is None
                             else full_relearn_bytes)
        # calibration and the reference's scoring happen before all four are held
        on_top["calibration"] = phase_bytes("calibration", weights, logits) - weights
        on_top["reference control"] = phase_bytes("reference control", weights, logits) - weights
        worst = max(on_top, key=on_top.get)
        return resident + max(on_top[worst], 0.0), worst

    lines = [f"bench_memory: {time.time() - t0:.0f} s; CPU float32, peak RSS above each phase's start "
             f"(sampled every 2 ms); vocabulary {vocab}, hidden {args.hidden}, {args.samples} forget and "
             f"retain rows, batch {args.batch_size}, longest row {longest} tokens "
             f"(one batch's float32 logits: {meas_logits / 2**20:.1f} MiB)", ""]
    head = "| phase | " + " | ".join(f"{r['layers']} layers, {r['params'] / 1e6:.1f}M params ({r['weight_bytes'] / 2**20:.0f} MiB)"
                                    for r in runs) + " | copies of the weights | x one batch's logits |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(f"{r['phases'][phase] / 2**20:.0f} MiB" for r in runs)
                     + f" | {fit[phase]['copies']:.2f} | {fit[phase]['per_logit_byte']:.2f}"
                     + (" (of a training batch's)" if phase.startswith("relearn") else "") + " |")
    lines.append("| whole gate (measured) | " + " | ".join(f"{r['gate'] / 2**20:.0f} MiB" for r in runs) + " | | |")
    # on the small models the gate relearns with full fine-tuning (under 1e9 parameters)
    predicted = []
    for r in runs:
        train_act = act * TRAIN_BATCH * r["layers"]
        total, _ = gate_bytes(r["weight_bytes"], meas_logits, train_act, train_logits,
                              phase_bytes("relearn (full)", r["weight_bytes"], meas_logits, train_act, train_logits))
        predicted.append(total)
    lines.append("| whole gate (model: 4 x weights + largest phase) | "
                 + " | ".join(f"{p / 2**20:.0f} MiB" for p in predicted) + " | | |")
    lines.append(f"\nTraining activations (relearn, no gradient checkpointing): {act / 2**20:.2f} MiB per layer "
                 f"and training sample of {longest} tokens at hidden size {args.hidden}, float32 "
                 f"({act_measured:.1f} bytes per layer, token and hidden unit)")
    lines += ["", f"Projection, bfloat16 weights (2 bytes/parameter), logits of batch {CUDA_BATCH} x {TOKENS} tokens, "
              f"one GPU of {GPU_BYTES / 1e9:.0f} GB:", "",
              "| model | weights | one batch's logits | relearn activations | gate peak (relearn LoRA, the default) | largest phase | "
              "fits 80 GB | gate peak with full-fine-tuning relearn |", "|---|---|---|---|---|---|---|---|"]
    from pytest_unlearn.training import training_bytes

    class _P:  # one bf16 parameter tensor of n elements, for training_bytes
        def __init__(self, n):
            self._n = n

        def numel(self):
            return self._n

        def element_size(self):
            return 2

    projections = {}
    for name, (n_params, v, layers, hidden) in TARGETS.items():
        weights, logits = 2 * n_params, logit_bytes(CUDA_BATCH, TOKENS, v)
        # bf16 activations (half of the measured float32 bytes), no gradient checkpointing: an upper bound
        train_act = act_measured / 2 * layers * TRAIN_BATCH * TOKENS * hidden
        t_logits = logit_bytes(TRAIN_BATCH, TOKENS, v)
        peak, worst = gate_bytes(weights, logits, train_act, t_logits)
        full = (training_bytes([_P(int(n_params))]) + train_act
                + fit["relearn (full)"]["per_logit_byte"] * t_logits)
        peak_full, _ = gate_bytes(weights, logits, train_act, t_logits, full)
        projections[name] = {"weights": weights, "logits": logits, "train_activations": train_act,
                             "gate_peak": peak, "largest_phase": worst,
                             "gate_peak_full_relearn": peak_full}
        lines.append(f"| {name} | {weights / 1e9:.1f} GB | {logits / 1e9:.2f} GB | {train_act / 1e9:.1f} GB | "
                     f"{peak / 1e9:.1f} GB | {worst} | "
                     f"{'yes' if peak <= GPU_BYTES else 'no'} | {peak_full / 1e9:.0f} GB |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "fit": fit, "projections": projections}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
