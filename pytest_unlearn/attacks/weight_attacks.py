"""Weight attacks: change the weights a little and see whether the knowledge comes back.

Both attacks work on the model in place and put every changed tensor back bit for bit
afterwards (a snapshot of the changed parameters is kept in CPU memory; nothing is
reloaded from disk), so the handle passed in is unchanged when ``run`` returns, even
on an error.  The attacked weights are scored under a derived handle whose
fingerprint hashes the model's fingerprint, the attack spec, the fold, the seed and
the training data, so the scorer's cache never mixes them up with the clean model.
When ``ctx.cache`` is set the whole outcome is cached under the same ingredients
plus the data, metric and prompt format, and a repeated run trains nothing.

Within a session (one :class:`~pytest_unlearn.scoring.Scorer`, so one suite) an in-memory
:class:`AttackMemo` goes further, with or without the result cache:

* every outcome is kept by the same key as the result cache, so repeating an assertion
  neither trains nor scores again (also under ``--unlearn-no-cache``);
* relearning's *training outcome* is kept per fold, keyed by the model's fingerprint, the
  attack spec and version, the seed, the fold's training data, the prompt format, device and
  dtype, but **not the metric**: switching an assertion from ``es`` to ``prob``, scoring a
  control, or generating for a failure message applies the kept weights instead of training
  again.  What is kept is the trained tensors themselves, on the CPU: for LoRA (the default
  from 1B parameters) only the adapters (about 0.3% of the weights, ~40 MB at 7B per
  fold); for full fine-tuning every floating-point parameter (one model's weights per fold).
  Kept weights are capped at :data:`MEMO_FRACTION` of the host's memory; a fold over the cap is
  not kept (and is trained again when needed), which the outcome's notes say.

Under ``torchrun`` (sharded evaluation, :mod:`~pytest_unlearn.distributed`) rank 0 alone
quantizes or trains, and every rank receives rank 0's changed tensors (all the quantized
weights; a fold's trained parameters, or only its LoRA adapters) before scoring, so the
gathered scores come from one and the same attacked model.

* ``quantize``: quantize-dequantize every ``Linear`` weight of the decoder layers
  (embeddings and the LM head stay, unless ``include_head``), score, restore.
* ``relearn``: fine-tune on some forget facts and score the *other*, held-out ones
  (k-fold, so every sample is scored exactly once), or fine-tune on the retain set /
  a related data file and score everything.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .. import distributed
from ..cache import cache_key
from ..errors import AttackError
from ..prompts import dataset_parts
from .base import Attack, AttackContext, AttackOutcome, _generate_rows, normalise_answer, register_attack
from .params import Param, as_bool, as_choice, as_float, as_int

if TYPE_CHECKING:
    import torch

    from ..data import Dataset
    from ..models import ModelHandle

NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
            0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
NF4_BLOCK = 64
LORA_AUTO_PARAMS = 1_000_000_000  # models with fewer parameters get full fine-tuning
MEMO_FRACTION = 0.25  # share of the host's memory that kept fold weights may take
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".pq")


# ---------------------------------------------------------------- quantizers (pure functions)

def rtn_quantize(weight: "torch.Tensor", bits: int, group_size: int, *, return_scale: bool = False):
    """Symmetric round-to-nearest, one scale per ``group_size`` consecutive inputs of each row.

    ``scale = absmax / (2**(bits-1) - 1)``; the dequantized weight differs from the
    original by at most ``scale / 2`` per element.  Same shape and dtype as ``weight``.
    """
    import torch

    w = weight.detach().float()
    rows = w.reshape(-1, w.shape[-1]) if w.dim() > 1 else w.reshape(1, -1)
    n = rows.shape[1]
    pad = (-n) % group_size
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    groups = rows.reshape(rows.shape[0], -1, group_size)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    deq = torch.clamp(torch.round(groups / safe), -qmax, qmax) * scale
    out = deq.reshape(rows.shape)[:, :n].reshape(weight.shape).to(weight.dtype)
    if return_scale:
        return out, scale.expand_as(groups).reshape(rows.shape)[:, :n].reshape(weight.shape)
    return out


def nf4_quantize(weight: "torch.Tensor", block: int = NF4_BLOCK) -> "torch.Tensor":
    """NormalFloat-4 (QLoRA): blockwise absmax over the flattened tensor, each value
    rounded to the nearest of the 16 NF4 levels."""
    import torch

    flat = weight.detach().float().reshape(-1)
    n = flat.numel()
    pad = (-n) % block
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.reshape(-1, block)
    absmax = blocks.abs().amax(-1, keepdim=True)
    normed = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    code = torch.tensor(NF4_CODE, device=flat.device)
    mids = (code[1:] + code[:-1]) / 2
    deq = code[torch.bucketize(normed, mids)] * absmax
    return deq.reshape(-1)[:n].reshape(weight.shape).to(weight.dtype)


def _bnb_quantize(weight: "torch.Tensor", bits: int, method: str) -> "torch.Tensor":
    import bitsandbytes.functional as bnbf

    if bits == 4:
        q, state = bnbf.quantize_4bit(weight, blocksize=NF4_BLOCK, quant_type="nf4" if method == "nf4" else "fp4")
        return bnbf.dequantize_4bit(q, state).to(weight.dtype)
    q, state = bnbf.quantize_blockwise(weight)
    return bnbf.dequantize_blockwise(q, state).to(weight.dtype)


def quantizable_weights(model, include_head: bool = False) -> list[tuple[str, "torch.nn.Parameter", bool]]:
    """(name, weight, transposed) of every Linear (and GPT-2 style Conv1D) weight, each
    parameter once; the LM head only with ``include_head``."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out, seen = [], set()
    for name, module in model.named_modules():
        is_conv1d = type(module).__name__ == "Conv1D"
        if not (isinstance(module, torch.nn.Linear) or is_conv1d):
            continue
        if module is head and not include_head:
            continue
        w = getattr(module, "weight", None)
        if w is None or not w.is_floating_point() or id(w) in seen:
            continue
        seen.add(id(w))
        out.append((f"{name}.weight", w, is_conv1d))
    return out


# ---------------------------------------------------------------- working copy in place

class WeightSnapshot:
    """A CPU copy of some parameters (and their ``requires_grad``) to put back bit for bit."""

    def __init__(self, params: Sequence["torch.nn.Parameter"]):
        self.params = list(params)
        self.saved = [p.detach().to("cpu", copy=True) for p in self.params]
        self.flags = [p.requires_grad for p in self.params]

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for p, saved, flag in zip(self.params, self.saved, self.flags):
                p.copy_(saved)
                p.requires_grad_(flag)


def derived_fingerprint(model: "ModelHandle", spec: str, fold: int | str, seed: int, *extra,
                        version: str = "") -> str:
    """Fingerprint of an attacked copy: hash(model fingerprint, spec, the attack's algorithm
    version, fold, seed, extra)."""
    return cache_key("attacked-model", model.fingerprint, spec, version, fold, int(seed), *extra)


def _outcome_key(attack: Attack, metric, model, data, ctx, *extra) -> str:
    sc = ctx.scorer
    return cache_key("attack-outcome", attack.spec, getattr(attack, "version", ""), int(ctx.seed),
                     model.fingerprint, data.content_hash, metric.name, sc.prompt_format(model).spec,
                     sc.batch_size, str(model.device.type), str(model.dtype), *extra)


# ---------------------------------------------------------------- the session memo

def _host_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 16 GiB
        return 16 * 2**30


class AttackMemo:
    """Weight-attack results kept in memory for one session (see the module docstring).

    ``outcomes``: attack outcomes by outcome key (metric included); ``trained``: per relearn
    fold, the trained tensors (CPU) by name, keyed without the metric.  ``trainings`` counts
    the folds trained, ``applied`` the folds served from the memo.  ``budget`` caps the
    bytes of kept tensors (default :data:`MEMO_FRACTION` of the host's memory).
    """

    def __init__(self, budget: int | None = None):
        self.budget = int(budget) if budget is not None else int(MEMO_FRACTION * _host_memory_bytes())
        self.outcomes: dict[str, AttackOutcome] = {}
        self.trained: dict[str, dict[str, "torch.Tensor"]] = {}
        self.bytes = 0
        self.trainings = 0
        self.applied = 0
        self.not_kept = 0

    def outcome(self, key: str) -> AttackOutcome | None:
        hit = self.outcomes.get(key)
        if hit is None:
            return None
        return AttackOutcome(np.array(hit.values, dtype=np.float64, copy=True),
                             {"training_steps": 0, "memoised": True}, list(hit.details or []) or None,
                             None, list(hit.notes), excluded=hit.excluded)

    def keep_outcome(self, key: str, outcome: AttackOutcome) -> None:
        self.outcomes[key] = AttackOutcome(np.array(outcome.values, dtype=np.float64, copy=True), {},
                                           list(outcome.details or []) or None, None, list(outcome.notes),
                                           excluded=outcome.excluded)

    def keep_weights(self, key: str, named: Sequence[tuple[str, "torch.Tensor"]]) -> bool:
        """Keep CPU copies of ``named`` tensors under ``key``, unless over the budget."""
        size = sum(t.numel() * t.element_size() for _, t in named)
        if self.bytes + size > self.budget:
            self.not_kept += 1
            return False
        self.trained[key] = {n: t.detach().to("cpu", copy=True) for n, t in named}
        self.bytes += size
        return True

    def clear(self) -> None:
        self.outcomes.clear()
        self.trained.clear()
        self.bytes = 0


_MEMOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def memo_for(scorer) -> AttackMemo:
    """The :class:`AttackMemo` of a session: one per :class:`~pytest_unlearn.scoring.Scorer`
    (a suite has one scorer), created on first use and freed with the scorer."""
    memo = _MEMOS.get(scorer)
    if memo is None:
        memo = _MEMOS[scorer] = AttackMemo()
    return memo


def release_memo(scorer) -> None:
    """Drop the session memo of ``scorer`` (its kept fold weights)."""
    memo = _MEMOS.pop(scorer, None)
    if memo is not None:
        memo.clear()


def _cached(ctx: AttackContext, key: str) -> AttackOutcome | None:
    hit = memo_for(ctx.scorer).outcome(key)
    if hit is not None:
        return hit
    if ctx.cache is None or not ctx.cache.enabled:
        return None
    hit = ctx.cache.get(key)
    if hit is None:
        return None
    excluded = hit.get("excluded")
    return AttackOutcome(np.asarray(hit["values"], dtype=np.float64), {"training_steps": 0, "cached": True},
                         [str(d) for d in hit["details"]], None,
                         [str(n) for n in hit["notes"] if str(n)] + ["result read from the attack cache"],
                         excluded=int(excluded[0]) if excluded is not None and len(excluded) else 0)


def _store(ctx: AttackContext, key: str, outcome: AttackOutcome) -> None:
    memo_for(ctx.scorer).keep_outcome(key, outcome)
    if ctx.cache is not None and ctx.cache.enabled:
        ctx.cache.put(key, {"values": np.asarray(outcome.values, dtype=np.float64),
                            "details": np.array(outcome.details or [""] * len(outcome.values), dtype=str),
                            "notes": np.array(outcome.notes or [""], dtype=str),
                            "excluded": np.array([int(outcome.excluded)], dtype=np.int64)})


# ---------------------------------------------------------------- quantize

@register_attack
class Quantize(Attack):
    """Round the weights to 4 or 8 bits and back (RTN or NF4), score, restore."""

    name = "quantize"
    kind = "weight"
    version = "quantize-v1"  # part of every cache key: bump when the quantizers change
    cost_hint = "one pass over the Linear weights plus one scoring pass; a CPU copy of those weights"
    PARAMS = (Param("bits", 4, as_int(choices=(4, 8)), "4 or 8"),
              Param("method", "rtn", as_choice("rtn", "nf4"),
                    "rtn (group-wise symmetric round-to-nearest) or nf4 (NormalFloat-4, blocks of 64)"),
              Param("group_size", 128, as_int(1, 1 << 20), "rtn group size (inputs per scale)"),
              Param("include_head", False, as_bool, "also quantize the LM head"),
              Param("bitsandbytes", False, as_bool, "use bitsandbytes kernels (CUDA only)"))

    def _check(self):
        if self.method == "nf4" and self.bits != 4:
            raise self.error("method=nf4 is a 4-bit format; use bits=4, or method=rtn for 8 bits")

    def quantize(self, weight: "torch.Tensor") -> "torch.Tensor":
        if self.bitsandbytes:
            return _bnb_quantize(weight, self.bits, self.method)
        if self.method == "nf4":
            return nf4_quantize(weight)
        return rtn_quantize(weight, self.bits, self.group_size)

    def _check_bnb(self, model: "ModelHandle") -> None:
        if not self.bitsandbytes:
            return
        if model.device.type != "cuda":
            raise AttackError(f"attack {self.spec}: bitsandbytes=true needs the model on a CUDA device "
                              f"(it is on {model.device}); use the built-in quantizer (bitsandbytes=false)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise AttackError(f"attack {self.spec}: bitsandbytes=true but bitsandbytes is not installed "
                              "(pip install bitsandbytes); or use bitsandbytes=false") from None

    @contextlib.contextmanager
    def _quantized(self, model: "ModelHandle", ctx: AttackContext):
        """The model with its weights quantized (a derived handle, and the weights changed);
        afterwards every changed tensor is put back bit for bit."""
        import torch

        targets = quantizable_weights(model.model, self.include_head)
        if not targets:
            raise AttackError(f"attack {self.spec}: {type(model.model).__name__} has no Linear weights to quantize")
        fingerprint = derived_fingerprint(model, self.spec, "all", ctx.seed, version=self.version)
        snapshot = WeightSnapshot([w for _, w, _ in targets])

        def quantize_all() -> None:
            with torch.no_grad():
                for _, w, transposed in targets:
                    w.copy_(self.quantize(w.t()).t() if transposed else self.quantize(w))

        try:
            # under torchrun: rank 0 quantizes, every rank gets its weights
            distributed.from_rank0(f"quantize {self.spec} {fingerprint[:16]}", quantize_all,
                                   [(n, w) for n, w, _ in targets])
            yield (model.derive(fingerprint=fingerprint, name=f"{model.name} [{self.spec}]"), targets)
        finally:
            snapshot.restore()

    def attacked(self, model, data, ctx, only=None):
        """The quantized weights for a chain: one variant covering every row; restored after."""
        from ..models import require_in_memory

        self._check_bnb(model)
        require_in_memory(model.model, f"attack {self.spec}")
        with self._quantized(model, ctx) as (handle, _):
            yield f"{self.method} {self.bits}-bit", np.arange(len(data)), handle

    def generate(self, model, data, rows, ctx, outcome=None):
        """Greedy answers of the quantized model, generated before the weights are restored."""
        from ..models import require_in_memory

        self._check_bnb(model)
        require_in_memory(model.model, f"attack {self.spec}")
        with self._quantized(model, ctx) as (handle, _):
            return _generate_rows(ctx, handle, data, rows)

    def _run(self, metric, model, data, ctx):
        from ..models import require_in_memory

        self._check_bnb(model)
        require_in_memory(model.model, f"attack {self.spec}")
        key = _outcome_key(self, metric, model, data, ctx)
        hit = _cached(ctx, key)
        if hit is not None:
            return hit
        with self._quantized(model, ctx) as (handle, targets):
            values = ctx.scorer.per_sample(metric, handle, data)
        n = sum(w.numel() for _, w, _ in targets)
        variant = f"{self.method} {self.bits}-bit" + (" (bitsandbytes)" if self.bitsandbytes else "")
        outcome = AttackOutcome(values, {}, [variant] * len(data), None,
                                [f"quantize: {len(targets)} weight tensors ({n:,} values) rounded to "
                                 f"{self.bits} bits by {'bitsandbytes ' if self.bitsandbytes else ''}"
                                 f"{self.method}{'' if self.method == 'nf4' else f' (group {self.group_size})'}"
                                 f"{', LM head included' if self.include_head else ''}"])
        _store(ctx, key, outcome)
        return outcome


# ---------------------------------------------------------------- relearn

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

    def generate(self, model, data, rows, ctx, outcome=None):
        """Greedy answers of the relearned model: each row's fold weights are applied from the
        session memo (or trained again: same seed, same weights), the row generated, the
        weights restored."""
        from ..models import require_in_memory

        require_in_memory(model.model, f"attack {self.spec}")
        wanted = [int(i) for i in rows]
        out: dict[int, str] = {}
        for _, fold_rows, handle in self._trained_folds(model, self._plan(data, ctx), ctx, set(wanted)):
            mine = [i for i in wanted if i in set(int(r) for r in fold_rows)]
            out.update(zip(mine, _generate_rows(ctx, handle, data, mine)))
        return [out[i] for i in wanted]

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
