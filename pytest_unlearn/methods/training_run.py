"""One training run of a reference unlearning method, shared by all of them.

:class:`_Run` holds the trainable deep copy of the model, the frozen original and the prompt
format; it encodes samples exactly as for scoring and runs the optimiser loop.  Common
training set-up: AdamW (weight decay :data:`WEIGHT_DECAY`), constant learning rate after a
linear warm-up over the first :data:`WARMUP_FRACTION` of the steps, gradient clipping at norm
:data:`MAX_GRAD_NORM`, seeded batches (retain batches use ``seed + 1``) and a seeded RNG; a
half-precision model keeps float32 master weights and AdamW state.  Also here: the loss
pieces several methods use (:func:`summed_nll`, the retain term) and the argument checks.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import ConfigError, UnlearnError
from ..prompts import Encoded, dataset_parts, encode, parse_prompt_format
from ..training import (MasterAdamW, TrainBatch, answer_window, check_training_fits, collate, gradient_checkpointing,
                        pad_id, seeded_batches, sequence_nll)

if TYPE_CHECKING:
    import torch

    from ..data import Dataset
    from ..models import ModelHandle

WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
WARMUP_FRACTION = 0.1


class _Run:
    """One training run: the trainable copy, the frozen original and the encodings."""

    def __init__(self, handle: "ModelHandle", prompt, seed: int):
        import torch

        self.original = handle
        self.seed = seed
        self.device = handle.device
        self.dtype = handle.dtype
        self.fmt = parse_prompt_format(prompt, handle.tokenizer)
        self.pad = pad_id(handle.tokenizer)
        from ..models import require_one_device

        require_one_device(handle.model, f"training a copy of {handle.name} ({handle.source})")
        model = copy.deepcopy(handle.model)
        if self.device.type == "cpu" and self.dtype != torch.float32:
            model.float()
        self.flags = [p.requires_grad for p in model.parameters()]
        self.model = model
        self.max_tokens = 0  # the longest encoded sample (for the memory estimate)

    def encode(self, dataset: "Dataset", answers=None, *, eos: bool = False) -> list[Encoded]:
        parts = dataset_parts(dataset, answers=answers)
        names = [f"{dataset.source} sample {sid}" for sid in dataset.ids]
        eos_id = self.original.tokenizer.eos_token_id
        limit = self.original.context_length - (1 if eos else 0)
        encoded = encode(self.original.tokenizer, self.fmt, parts, max_length=limit, sample_names=names)
        if eos and eos_id is not None:
            encoded = [Encoded(e.input_ids + [eos_id], e.answer_start, e.truncated) for e in encoded]
        self.max_tokens = max([self.max_tokens, *(len(e.input_ids) for e in encoded)])
        return encoded

    def batches(self, encoded: list[Encoded], batch_size: int, steps: int,
                offset: int = 0) -> Iterator[TrainBatch]:
        for idx in seeded_batches(len(encoded), batch_size, steps, self.seed + offset):
            yield collate(encoded, idx, self.pad, self.device)

    def reference_nll(self, encoded: list[Encoded], batch_size: int) -> "torch.Tensor":
        """Per-sample *summed* answer NLL under the frozen original, shape (n,)."""
        import torch

        out = torch.empty(len(encoded), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                idx = list(range(start, min(start + batch_size, len(encoded))))
                batch = collate(encoded, idx, self.pad, self.device)
                out[idx] = summed_nll(self.original.model, batch).float()
        return out

    def train(self, loss_fn: Callable[[], tuple["torch.Tensor", dict]], *, steps: int, lr: float,
              params=None, progress: bool = False, desc: str = "unlearning", batch_size: int = 1) -> None:
        """``steps`` optimiser steps on ``loss_fn()`` (returns the loss and parts to show).

        On CUDA: refused before the first step when the estimate of what training needs
        (:func:`~pytest_unlearn.training.check_training_fits`) exceeds the free memory, and run
        with gradient checkpointing."""
        import torch

        model = self.model
        trainable = list(model.parameters()) if params is None else list(params)
        on_cuda = self.device.type == "cuda"
        check_training_fits(model, trainable, self.device, what=desc, batch_size=batch_size,
                            tokens=self.max_tokens, checkpointing=on_cuda,
                            remedy="unlearn a smaller model, train fewer parameters (rmu trains a few layers), "
                                   "or lower batch_size")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        opt = MasterAdamW(trainable, lr, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM)
        warmup = max(1, round(WARMUP_FRACTION * steps))
        iterator = range(steps)
        if progress:
            from tqdm.auto import tqdm
            iterator = tqdm(iterator, desc=desc, unit="step", leave=False)
        devices = [self.device] if self.device.type == "cuda" else []
        model.train()
        try:
            with torch.random.fork_rng(devices=devices), gradient_checkpointing(model, on_cuda):
                torch.manual_seed(self.seed)
                for step in iterator:
                    loss, shown = loss_fn()
                    if not torch.isfinite(loss):
                        raise UnlearnError(f"{desc}: the loss became {loss.item()} at step "
                                                 f"{step}; lower the learning rate")
                    opt.zero_grad()
                    loss.backward()
                    opt.step(lr * min(1.0, (step + 1) / warmup))
                    if progress:
                        iterator.set_postfix(loss=f"{loss.item():.4g}",
                                             **{k: f"{float(v):.4g}" for k, v in shown.items()})
        finally:
            model.eval()
            for p, flag in zip(model.parameters(), self.flags):
                p.requires_grad_(flag)
                p.grad = None

    def finish(self, name: str, out_dir=None) -> "ModelHandle":
        from ..models import weights_fingerprint

        if next(p.dtype for p in self.model.parameters() if p.is_floating_point()) != self.dtype:
            self.model.to(self.dtype)  # trained in float32 on CPU: back to the input's dtype
        handle = self.original.derive(
            self.model, fingerprint=weights_fingerprint(self.model, self.original.tokenizer), name=name,
            source=str(out_dir) if out_dir is not None else f"<{name} of {self.original.source}>")
        if out_dir is not None:
            handle.save(out_dir)
        return handle


def summed_nll(model, batch: TrainBatch) -> "torch.Tensor":
    """Summed NLL of each sequence's answer tokens (= -log p(y|x)), shape (batch,)."""
    n = _predicting(batch).sum(-1)
    return sequence_nll(model, batch) * n


def _predicting(batch: TrainBatch) -> "torch.Tensor":
    """Mask over positions ``0 .. length-2`` of those whose next token is an answer token."""
    return batch.labels[:, 1:] != -100


def _answer_logprobs(model, batch: TrainBatch) -> "torch.Tensor":
    """log-softmax of the next-token distributions that predict answer tokens, (tokens, vocab)."""
    import torch

    logits, labels = answer_window(model, batch)  # the LM head on the answer positions only
    return torch.log_softmax(logits[labels != -100].float(), dim=-1)


def _check(method: str, steps: int, lr: float, batch_size: int, forget: "Dataset") -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{method}: steps must be a positive integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{method}: lr must be a positive number, got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{method}: batch_size must be a positive integer, got {batch_size!r}")
    if len(forget) == 0:
        raise ConfigError(f"{method}: the forget set {forget.source} is empty")


def _need_retain(method: str, retain) -> None:
    if retain is None or len(retain) == 0:
        raise ConfigError(f"{method} needs a retain set (retain=...); use 'ga' to unlearn without one")


def _name(method: str, steps: int, lr: float, **params) -> str:
    shown = "".join(f",{k}={v!r}" for k, v in params.items())
    return f"{method}(steps={steps},lr={lr!r}{shown})"


def _retain_term(run: _Run, retain, weight: float, batch_size: int, steps: int):
    """``weight * NLL(retain)`` per step as a closure, or None when disabled."""
    if retain is None or len(retain) == 0 or weight == 0:
        return None
    batches = run.batches(run.encode(retain), batch_size, steps, offset=1)
    return lambda: weight * sequence_nll(run.model, next(batches)).mean()
