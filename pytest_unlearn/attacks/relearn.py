"""The ``relearn`` attack: fine-tune on some facts and see whether the forgotten ones come back.

Fine-tune on some forget facts and score the *other*, held-out ones (k-fold, so every
sample is scored exactly once), or fine-tune on the retain set / a related data file and
score everything.  Full fine-tuning changes the model in place and is put back bit for bit
(:mod:`.snapshot`); LoRA adapters are injected and removed unmerged.  Outcomes, and each
fold's trained weights, are kept in the session memo (:mod:`.session_memo`), so switching
the metric applies the kept weights instead of training again.  Under ``torchrun`` rank 0
alone trains and every rank receives its trained parameters (or only its LoRA adapters).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .. import distributed
from ..cache import cache_key
from ..errors import AttackError
from ..prompts import dataset_parts
from .base import Attack, AttackContext, AttackOutcome, normalise_answer, register_attack
from .params import Param, as_bool, as_float, as_int
from .session_memo import _cached, _outcome_key, _store, memo_for
from .snapshot import WeightSnapshot, derived_fingerprint

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import ModelHandle

LORA_AUTO_PARAMS = 1_000_000_000  # models with fewer parameters get full fine-tuning
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".pq")


def as_relearn_source(value):
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"expected forget, retain or a data file path, got {type(value).__name__}")
    text = os.fspath(value).strip()
    if text.lower() in ("forget", "retain"):
        return text.lower()
    if not text.lower().endswith(DATA_SUFFIXES):
        raise ValueError(f"must be forget, retain or a path to a {'/'.join(DATA_SUFFIXES)} data file, got {text!r}")
    return text


def as_lora(value):
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return as_bool(value)
    except ValueError:
        raise ValueError(f"expected auto, true or false, got {value!r}") from None


def train_answers(model, handle: "ModelHandle", train: "Dataset", ctx: AttackContext, *, steps: int,
                  lr: float, batch_size: int, seed: int, desc: str = "relearn", free: int | None = None) -> None:
    """AdamW on the answer-only NLL of ``train`` (encoded exactly as for scoring), seeded;
    gradients clipped to norm 1; the parameters that require grad are trained (half-precision
    ones through float32 master copies, so that small updates do not round away).

    Memory: the loss applies the LM head to the answer positions only; on CUDA, training that
    cannot fit is refused before the first step (:func:`~pytest_unlearn.training.check_training_fits`,
    ``free`` overrides the measured free memory), gradient checkpointing is on, and a step that
    runs out of memory is run again as gradient-accumulated micro-batches of half the size
    (the same step: the mean loss over the same samples)."""
    import torch

    from ..batching import is_out_of_memory
    from ..training import (MasterAdamW, check_training_fits, collate, gradient_checkpointing, pad_id,
                            seeded_batches, sequence_nll)

    encoded = ctx.scorer.encode(handle, dataset_parts(train))
    device = handle.device
    params = [p for p in model.parameters() if p.requires_grad]
    on_cuda = device.type == "cuda"
    check_training_fits(model, params, device, what=f"attack relearn ({desc})", batch_size=batch_size,
                        tokens=max(len(e.input_ids) for e in encoded), checkpointing=on_cuda, free=free,
                        remedy="relearn with LoRA (relearn:lora=true) or a smaller batch (relearn:batch_size=1)")
    opt = MasterAdamW(params, lr, weight_decay=0.0, max_grad_norm=1.0)
    batches = seeded_batches(len(encoded), batch_size, steps, seed)
    if ctx.progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, total=steps, desc=desc, unit="step", leave=False)
    pad = pad_id(handle.tokenizer)
    pieces = 1  # micro-batches per step (doubled on an out-of-memory error)

    def backward(idx: list[int]) -> None:
        if pieces == 1:
            sequence_nll(model, collate(encoded, idx, pad, device)).mean().backward()
            return
        for part in np.array_split(np.asarray(idx), min(pieces, len(idx))):
            (sequence_nll(model, collate(encoded, part.tolist(), pad, device)).sum() / len(idx)).backward()

    with torch.random.fork_rng(devices=[device] if on_cuda else []), gradient_checkpointing(model, on_cuda):
        torch.manual_seed(seed)
        model.train()
        try:
            for idx in batches:
                while True:
                    opt.zero_grad()
                    try:
                        backward(idx)
                        break
                    except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                        if not is_out_of_memory(exc) or pieces >= len(idx):
                            raise
                        opt.zero_grad()
                        del exc
                        if on_cuda:
                            torch.cuda.empty_cache()
                        pieces *= 2
                opt.step()
        finally:
            model.eval()
            model.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _trainable(model, use_lora: bool, seed: int) -> Iterator:
    """Yield a trainable version of ``model``; afterwards ``model`` is as it was.

    Full fine-tuning trains ``model`` itself, and the caller restores the weights from
    its snapshot; LoRA injects rank-8 adapters (PEFT) and removes them unmerged.
    """
    import torch

    if not use_lora:
        for p in model.parameters():
            p.requires_grad_(p.is_floating_point())
        yield model
        return
    from peft import LoraConfig, get_peft_model

    flags = [(p, p.requires_grad) for p in model.parameters()]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecations inside peft/transformers
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                      target_modules="all-linear", bias="none"))
    try:
        yield peft_model.get_base_model()
    finally:
        peft_model.unload()
        for p, flag in flags:
            p.requires_grad_(flag)


def forget_folds(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint sorted row sets covering ``range(n)``, from a seeded permutation
    (relearn and gcg train on the other folds and score each fold once)."""
    order = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1]).permutation(n)
    return [np.sort(f) for f in np.array_split(order, folds)]


@register_attack
class Relearn(Attack):
    """Fine-tune on forget facts and score held-out ones (k-fold), or on retain / a related file."""

    name = "relearn"
    kind = "weight"
    version = "relearn-v1"  # part of every cache key: bump when training changes
    follows = ("it fine-tunes every weight in full precision from the weights it is given, so the first "
               "attack's change would be trained away and the chain would measure relearn alone; put relearn "
               "first (e.g. relearn+quantize, relearn+logit_lens)")
    cost_hint = "steps x folds optimizer steps plus one scoring pass; a CPU copy of the weights"
    PARAMS = (Param("steps", 20, as_int(1, 1_000_000), "optimizer steps per fold"),
              Param("lr", 1e-4, as_float(0.0, 1.0, lo_open=True), "AdamW learning rate"),
              Param("folds", 2, as_int(2, 1000), "forget-set folds (on=forget)"),
              Param("batch_size", 4, as_int(1, 4096), "samples per step"),
              Param("on", "forget", as_relearn_source, "forget, retain or a path to a related data file"),
              Param("lora", "auto", as_lora, f"auto (LoRA r=8 for models of {LORA_AUTO_PARAMS:.0e}+ "
                                             "parameters, else full fine-tuning), true or false"))

    def _plan(self, data: "Dataset", ctx: AttackContext) -> list[tuple[str, np.ndarray, "Dataset", int]]:
        """(fold name, rows to score, data to train on, training rows left out) per fold.

        A training row whose normalised answer equals the answer of a row it is scored on
        is left out: training on it would teach the scored fact itself (a duplicate under a
        paraphrased question, a retain row repeating a forget fact)."""
        n = len(data)
        if self.on == "forget":
            if n < self.folds:
                raise AttackError(f"attack {self.spec}: {n} sample(s) cannot be split into {self.folds} "
                                  f"folds; use relearn:folds={max(2, n)}" if n >= 2 else
                                  f"attack {self.spec}: relearning on the forget set needs at least 2 samples")
            folds = forget_folds(n, self.folds, ctx.seed)
            plan = [(f"fold {k + 1}/{self.folds}", rows, data, np.sort(np.concatenate(
                [f for j, f in enumerate(folds) if j != k]))) for k, rows in enumerate(folds)]
        elif self.on == "retain":
            if ctx.retain is None:
                raise AttackError(f"attack {self.spec}: no retain set; configure unlearn_retain / "
                                  "--unlearn-retain (or AttackContext(retain=...)), or use relearn:on=forget")
            plan = [("retain", np.arange(n), ctx.retain, np.arange(len(ctx.retain)))]
        else:
            from ..data import load_dataset

            path = Path(self.on).expanduser()
            if not path.is_file():
                raise AttackError(f"attack {self.spec}: relearning data file {str(path)!r} does not exist")
            train = load_dataset(path, name="relearn")
            plan = [(path.name, np.arange(n), train, np.arange(len(train)))]
        answers = [normalise_answer(a) for a in data.answers]
        out = []
        for fold, rows, source, candidates in plan:
            scored = {answers[i] for i in rows} - {""}
            keys = [normalise_answer(a) for a in source.answers]
            keep = [int(j) for j in candidates if keys[j] not in scored]
            if not keep:
                raise AttackError(f"attack {self.spec}: every training row of {fold} states an answer it is "
                                  "scored on; relearning on them would teach the scored facts themselves")
            train = source if len(keep) == len(source) else source.subset(keep)
            out.append((fold, rows, train, len(candidates) - len(keep)))
        return out

    def _use_lora(self, model: "ModelHandle") -> bool:
        n_params = sum(p.numel() for p in model.model.parameters())
        return self.lora if self.lora != "auto" else n_params >= LORA_AUTO_PARAMS

    def _fold_key(self, model: "ModelHandle", ctx: AttackContext, k: int, train: "Dataset", prompt: str,
                  use_lora: bool) -> str:
        """The key of one fold's training outcome: everything that decides the trained weights
        (not the metric, nor the data scored)."""
        return cache_key("relearn-fold", self.version, model.fingerprint, self.spec, int(ctx.seed), k,
                         train.content_hash, prompt, str(model.device.type), str(model.dtype), use_lora)

    def _trained_folds(self, model: "ModelHandle", plan, ctx: AttackContext, only: "set[int] | None" = None,
                       notes: "list[str] | None" = None) -> Iterator[tuple[str, np.ndarray, "ModelHandle"]]:
        """Per fold (only those scoring a row in ``only``, when given): train (or apply the
        weights the session memo kept from an earlier training), yield (fold, rows, the trained
        model's handle), restore.  Seeds depend on the fold's place in the plan, so a fold
        trained again gives the same weights."""
        prompt = ctx.scorer.prompt_format(model).spec
        use_lora = self._use_lora(model)
        memo = memo_for(ctx.scorer)
        snapshot = None if use_lora else WeightSnapshot(list(model.model.parameters()))
        try:
            for k, (fold, rows, train, _) in enumerate(plan):
                if only is not None and not only.intersection(int(i) for i in rows):
                    continue
                seed = (int(ctx.seed) * 1000 + k) & 0x7FFF_FFFF_FFFF
                key = self._fold_key(model, ctx, k, train, prompt, use_lora)
                with _trainable(model.model, use_lora, seed) as trainable:
                    named = [(n, p) for n, p in trainable.named_parameters() if p.requires_grad]
                    kept = memo.trained.get(key)
                    if kept is not None and set(kept) != {n for n, _ in named}:
                        kept = None
                    trained = self._fold_weights(trainable, named, kept, model, train, ctx, seed, fold, key)
                    if trained:
                        memo.trainings += 1
                    else:
                        memo.applied += 1
                    if kept is None and not memo.keep_weights(key, named) and trained and notes is not None:
                        gib = sum(p.numel() * p.element_size() for _, p in named) / 2**30
                        notes.append(f"relearn: the weights trained for {fold} ({gib:.1f} GiB) exceed the "
                                     "session memo's budget and were not kept: another metric under this "
                                     "attack trains them again (use lora=true to keep only adapters)")
                    yield fold, rows, model.derive(trainable, name=f"{model.name} [{self.spec} {fold}]",
                                                   fingerprint=derived_fingerprint(model, self.spec, fold, ctx.seed,
                                                                                   train.content_hash, prompt,
                                                                                   version=self.version))
                if snapshot is not None:
                    snapshot.restore()
        finally:
            if snapshot is not None:
                snapshot.restore()

    def _fold_weights(self, trainable, named, kept, model, train, ctx, seed: int, fold: str, key: str) -> bool:
        """Put one fold's trained weights into ``named`` (the trainable tensors): the ``kept``
        ones from the session memo, else trained now.  Returns whether it trained.

        Under torchrun (:func:`~pytest_unlearn.distributed.active`) rank 0 alone trains (or
        applies what it kept) and every rank receives its weights
        (:func:`~pytest_unlearn.distributed.from_rank0`), so all ranks score one and the same
        relearned model; when every rank kept the fold (rank 0's weights, received earlier),
        each applies its own copy and nothing moves."""
        import torch

        def apply_kept() -> bool:
            with torch.no_grad():
                for n, p in named:
                    p.copy_(kept[n])
            return False

        def obtain() -> bool:
            if kept is not None:
                return apply_kept()
            train_answers(trainable, model, train, ctx, steps=self.steps, lr=self.lr,
                          batch_size=self.batch_size, seed=seed, desc=f"relearn {fold}")
            return True

        everywhere = kept is not None
        if distributed.active():
            everywhere = all(distributed.exchange(f"relearn memo {key[:16]}", everywhere))
        if everywhere:
            return apply_kept()
        return bool(distributed.from_rank0(f"relearn {fold} {key[:16]}", obtain, named))

    def attacked(self, model, data, ctx, only=None):
        """The relearned weights for a chain: per fold (only those scoring a row in ``only``),
        the rows it holds out and the trained model; restored after each fold."""
        from ..models import require_in_memory

        require_in_memory(model.model, f"attack {self.spec}")
        yield from self._trained_folds(model, self._plan(data, ctx), ctx, only)

    def chain_extra(self, data, ctx) -> list:
        """What besides the spec, seed, model and data decides the relearned weights."""
        return [t.content_hash for _, _, t, _ in self._plan(data, ctx)]

    def _run(self, metric, model, data, ctx):
        from ..models import require_in_memory

        require_in_memory(model.model, f"attack {self.spec}")
        plan = self._plan(data, ctx)
        key = _outcome_key(self, metric, model, data, ctx, [t.content_hash for _, _, t, _ in plan])
        hit = _cached(ctx, key)
        if hit is not None:
            return hit
        use_lora = self._use_lora(model)
        values = np.full(len(data), np.nan)
        details = [""] * len(data)
        memo = memo_for(ctx.scorer)
        trainings = memo.trainings
        memo_notes: list[str] = []
        for fold, rows, handle in self._trained_folds(model, plan, ctx, notes=memo_notes):
            subset = data if len(rows) == len(data) else data.subset(rows)
            values[rows] = ctx.scorer.per_sample(metric, handle, subset)
            for i in rows:
                details[i] = fold
        sizes = [len(t) for _, _, t, _ in plan]
        excluded = sum(x for _, _, _, x in plan)
        notes = [f"relearn: {self.steps} AdamW step(s) of {self.batch_size} sample(s) at lr {self.lr:g} per fold, "
                 f"{'LoRA r=8' if use_lora else 'full fine-tuning'}, answer-only loss; "
                 + ("each forget fold scored after training on the other folds" if self.on == "forget"
                    else f"trained on {self.on}, every sample scored")]
        if self.steps * self.batch_size < min(sizes):
            notes.append(f"relearn: less than one epoch ({self.steps * self.batch_size} samples seen of "
                         f"{min(sizes)}); the paper relearns for one full epoch")
        if excluded:
            notes.append(f"relearn: {excluded} training row(s) left out: their answer equals one the fold is "
                         "scored on")
        trained = memo.trainings - trainings
        notes += memo_notes
        # folds whose weights came from the session memo (trained earlier for another metric or test)
        outcome = AttackOutcome(values, {"training_steps": self.steps * trained, "reused_folds": len(plan) - trained},
                                details, None, notes, excluded=excluded)
        _store(ctx, key, outcome)
        return outcome
