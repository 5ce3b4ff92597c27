"""Build (or reuse) the models of the tiny example suite in ``.models/`` (seconds on a CPU).

    python build_models.py            # build what is missing or out of date
    python build_models.py --force    # rebuild everything

``conftest.py`` calls :func:`build` when pytest starts, so ``pytest`` alone also works.

The scenario is the SmolLM2 suite's in miniature, on a 2-layer Llama trained from scratch
(``pytest_unlearn.toy``): a byte-level BPE tokenizer trained on the data files, then

* ``original``: trained on forget + retain facts (it knows both);
* ``reference``: the same recipe on the retain facts only (never saw the forget facts:
  "retrain without the data", the gold standard of unlearning);
* ``candidates/<name>``: the original unlearned with ``pytest_unlearn.methods`` (``CANDIDATES``).

Each model folder holds ``build-info.json`` with a key hashing the build configuration, the
data files, the models it was made from and the source code that trains them (this script and
``pytest_unlearn``'s toy, training, prompt, forward and methods code); a folder whose key
matches is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MODELS = HERE / ".models"
BUILD_VERSION = 1

TOKENIZER = {"vocab_size": 600}
ARCHITECTURE = {"hidden_size": 64, "layers": 2, "heads": 4, "intermediate_size": 128, "max_positions": 256}
TRAIN = {"steps": 400, "lr": 3e-3, "batch_size": 16, "seed": 0}
CANDIDATES = {
    "idk": {"method": "idk", "steps": 80, "lr": 3e-3, "batch_size": 4,
            "about": "refusal tuning: the forget questions answered with 'I don't know'"},
    "npo": {"method": "npo", "steps": 60, "lr": 3e-4, "batch_size": 8, "retain_weight": 3.0,
            "about": "negative preference optimisation plus a retain loss"},
}


def log(message: str) -> None:
    print(f"[tiny build {time.strftime('%H:%M:%S')}] {message}", flush=True)


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(folder: Path, key: str) -> bool:
    try:
        info = json.loads((folder / "build-info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("key") == key and (folder / "model.safetensors").is_file()


def save(model, tokenizer, folder: Path, key: str, **info) -> None:
    """Save atomically (a temporary folder renamed into place), then the build info."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "build-info.json").write_text(json.dumps({"key": key, **info}, indent=2, default=str) + "\n",
                                             encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(*, force: bool = False, quiet: bool = False) -> dict:
    """Build what is missing; return {name: path} for original, reference and every candidate."""
    from pytest_unlearn.cache import source_fingerprint
    from pytest_unlearn.data import load_dataset

    data = {n: load_dataset(DATA / f"{n}.jsonl", name=n) for n in ("forget", "retain", "holdout")}
    hashes = {n: d.content_hash for n, d in data.items()}
    # the code that trains the models is part of every key: a change to it rebuilds, never reuses
    code = source_fingerprint("toy", "training", "prompts", "forward", "methods", files=[Path(__file__)])
    base = key_of(BUILD_VERSION, code, TOKENIZER, ARCHITECTURE, hashes)
    keys = {"original": key_of(base, TRAIN, "forget+retain"), "reference": key_of(base, TRAIN, "retain")}
    folders = {"original": MODELS / "original", "reference": MODELS / "reference"}
    for name, cfg in CANDIDATES.items():
        keys[name] = key_of(keys["original"], cfg)
        folders[name] = MODELS / "candidates" / name
    stale = [n for n in keys if force or not cached(folders[n], keys[n])]
    if not stale:
        if not quiet:
            log(f"all models cached in {MODELS}")
        return folders

    import torch

    from pytest_unlearn.models import load_model
    from pytest_unlearn.prompts import PromptParts, encode, parse_prompt_format
    from pytest_unlearn.toy import tiny_llama, tiny_tokenizer, train_on_texts

    started = time.perf_counter()
    log(f"building {', '.join(stale)} (tiny Llama from scratch)")
    corpus = []
    for d in data.values():
        for r in d.records():
            corpus += [r["question"], r["answer"], r.get("paraphrased_question") or "",
                       r.get("paraphrased_answer") or "", *(r.get("perturbed_answer") or [])]
    tokenizer = tiny_tokenizer([c for c in corpus if c], vocab_size=TOKENIZER["vocab_size"])

    def texts(datasets):
        """Chat-formatted texts and the length of their prompt part (the loss covers the answer)."""
        fmt = parse_prompt_format(None, tokenizer)
        parts = [PromptParts(q, a) for d in datasets for q, a in zip(d.prompts, d.answers)]
        enc = encode(tokenizer, fmt, parts, max_length=ARCHITECTURE["max_positions"])
        full = [tokenizer.decode(e.input_ids) for e in enc]
        return full, [len(tokenizer.decode(e.input_ids[:e.answer_start])) for e in enc]

    for name, sets in (("original", ["forget", "retain"]), ("reference", ["retain"])):
        if name in stale:
            t = time.perf_counter()
            torch.manual_seed(TRAIN["seed"])
            model = tiny_llama(tokenizer, seed=TRAIN["seed"], **{k: v for k, v in ARCHITECTURE.items()})
            full, prompt_chars = texts([data[s] for s in sets])
            train_on_texts(model, tokenizer, full, steps=TRAIN["steps"], lr=TRAIN["lr"],
                           batch_size=TRAIN["batch_size"], seed=TRAIN["seed"], prompt_lengths=prompt_chars)
            save(model, tokenizer, folders[name], keys[name], trained_on=sets, config=TRAIN)
            log(f"{name}: trained on {' + '.join(sets)} in {time.perf_counter() - t:.1f} s")

    todo = [n for n in CANDIDATES if n in stale]
    if todo:
        from pytest_unlearn.methods import unlearn

        original = load_model(folders["original"], device="cpu", name="original")
        for name in todo:
            t = time.perf_counter()
            cfg = CANDIDATES[name]
            params = {k: v for k, v in cfg.items() if k not in ("method", "about")}
            out = unlearn(cfg["method"], original, data["forget"], data["retain"], **params)
            save(out.model, out.tokenizer, folders[name], keys[name], config=cfg, made_from="original")
            log(f"candidate {name}: {cfg['method']} {params} in {time.perf_counter() - t:.1f} s")
    log(f"done in {time.perf_counter() - started:.1f} s")
    return folders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild every model")
    args = parser.parse_args(argv)
    build(force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
