"""Fine-tuning building blocks shared by the unlearning methods and the relearning attack.

Samples are encoded exactly as for scoring (:func:`~pytest_unlearn.prompts.encode`), so
a model is trained on the very tokens it is later scored on; the loss covers the
answer tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def sequence_nll(model, batch: TrainBatch) -> "torch.Tensor":
    """Mean NLL of each sequence's answer tokens, shape (batch,), differentiable."""
    import torch

    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    labels = batch.labels[:, 1:]
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
