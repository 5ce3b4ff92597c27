"""Fine-tuning building blocks shared by the unlearning methods and the relearning attack.

Samples are encoded exactly as for scoring (:func:`~pytest_unlearn.prompts.encode`), so
a model is trained on the very tokens it is later scored on; the loss covers the
answer tokens only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from .errors import UnlearnError
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    import torch

    from .prompts import Encoded


@dataclass
class TrainBatch:
    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    position_ids: "torch.Tensor"
    labels: "torch.Tensor"  # -100 outside the answer


def collate(encoded: Sequence["Encoded"], idx: Sequence[int], pad_id: int, device) -> TrainBatch:
    """A left-padded batch whose labels are the answer tokens only."""
    import torch

    from .forward import left_padded

    ids, mask, pos = left_padded(encoded, idx, pad_id, device)
    labels = torch.full_like(ids, -100)
    width = ids.shape[1]
    for r, i in enumerate(idx):
        n = encoded[i].n_answer
        labels[r, width - n:] = ids[r, width - n:]
    return TrainBatch(ids, mask, pos, labels)


def answer_window(model, batch: TrainBatch) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(logits, labels) of the positions that predict answer tokens, and a few before them:
    the LM head is applied to the last ``longest answer + 1`` positions only
    (``logits_to_keep``; batches are left-padded, so every answer ends at the last position),
    never to the whole prompt.  ``logits[:, j]`` predicts ``labels[:, j]`` (-100: not scored)."""
    from .forward import _accepts

    keep = int((batch.labels != -100).sum(-1).max()) + 1 if batch.labels.numel() else 1
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids, "use_cache": False}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:, :]
    return logits[:, :-1, :], batch.labels[:, -keep:][:, 1:]


def sequence_nll(model, batch: TrainBatch) -> "torch.Tensor":
    """Mean NLL of each sequence's answer tokens, shape (batch,), differentiable."""
    import torch

    logits, labels = answer_window(model, batch)
    logits = logits.float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    n = (labels != -100).sum(-1).clamp(min=1)
    return nll.sum(-1) / n


def seeded_batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` index batches drawn epoch by epoch from a seeded permutation."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, n):
            order += torch.randperm(n, generator=gen).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        yield batch


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


class MasterAdamW:
    """AdamW with gradient clipping where half-precision parameters get float32 master
    copies (and float32 optimizer state): updates of size ``lr`` are mostly below the
    resolution of bfloat16/float16 weights and would round away.  For float32 parameters
    it is plain AdamW on the parameters themselves, with the gradients clipped to
    ``max_grad_norm``."""

    def __init__(self, params: list, lr: float, *, weight_decay: float, max_grad_norm: float):
        import torch

        self.params = params
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self.master = [p.detach().float().clone() if p.dtype != torch.float32 else p for p in params]
        self.opt = torch.optim.AdamW(self.master, lr=lr, weight_decay=weight_decay)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, lr: float | None = None) -> None:
        import torch

        for p, m in zip(self.params, self.master):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
        torch.nn.utils.clip_grad_norm_(self.master, self.max_grad_norm)
        for group in self.opt.param_groups:
            group["lr"] = self.lr if lr is None else lr
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.master):
                if m is not p:
                    p.copy_(m)
                    m.grad = None


# ---------------------------------------------------------------- memory

#: Bytes per trained parameter beyond the weights: its gradient (in the weight's dtype),
#: AdamW's two float32 moments (8), and for half-precision weights a float32 master copy (4)
#: and the float32 copy of its gradient (4).  With the 2-byte bf16 weight itself, full
#: fine-tuning in bf16 takes about 20 bytes per parameter; in float32, 16.
def training_bytes(params, activation_bytes: int = 0) -> int:
    """Device memory that training ``params`` needs on top of the loaded weights."""
    total = 0
    for p in params:
        half = p.element_size() < 4
        total += p.numel() * (p.element_size() + 8 + (8 if half else 0))
    return total + int(activation_bytes)


def activation_bytes(model, batch_size: int, tokens: int, checkpointing: bool) -> int:
    """A rough bound on the activations kept for the backward pass: with gradient checkpointing
    one hidden state per layer, else about 16 per layer (attention, MLP and norms' inputs)."""
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)
    elem = next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)
    return int(batch_size) * int(tokens) * hidden * layers * elem * (2 if checkpointing else 16)


class TrainingMemoryError(UnlearnError, MemoryError):
    """Training would not fit in the device's free memory (raised before any step)."""


def free_device_bytes(device) -> int | None:
    """Free memory of a CUDA device after returning PyTorch's cached blocks; ``None`` elsewhere."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    torch.cuda.empty_cache()
    return int(torch.cuda.mem_get_info(device)[0])


def check_training_fits(model, params, device, *, what: str, batch_size: int, tokens: int,
                        checkpointing: bool, remedy: str, free: int | None = None) -> int:
    """Refuse, before any step, training that cannot fit: :func:`training_bytes` of ``params``
    plus :func:`activation_bytes` against the device's free memory (:func:`free_device_bytes`;
    ``free`` overrides it).  CUDA only (host memory is not measured).  Returns the estimate."""
    need = training_bytes(params, activation_bytes(model, batch_size, tokens, checkpointing))
    if free is None:
        free = free_device_bytes(device)
    if free is not None and need > free:
        n = sum(p.numel() for p in params)
        raise TrainingMemoryError(
            f"{what}: training {n / 1e9:.2f}B parameters needs about {need / 2**30:.1f} GiB of {device} "
            f"memory beyond the loaded weights (gradients, AdamW state and float32 master copies: about 20 "
            f"bytes per parameter in total for bfloat16 full fine-tuning, plus activations for batches of "
            f"{batch_size}), but only {free / 2**30:.1f} GiB is free; {remedy}")
    return need


@contextmanager
def gradient_checkpointing(model, enabled: bool):
    """Gradient checkpointing on ``model`` (a transformers model) while inside; off again after."""
    on = enabled and getattr(model, "supports_gradient_checkpointing", False)
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield on
    finally:
        if on:
            model.gradient_checkpointing_disable()
