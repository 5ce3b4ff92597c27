"""The one shared batched teacher-forced forward pass behind every forward-pass metric.

For each answer token ``y_t`` (predicted from ``[x, y_<t]``) it records:

* ``logprob``: ``log p(y_t | x, y_<t)``
* ``correct``: whether ``argmax p(. | x, y_<t) == y_t``
* ``mu``, ``sigma``: mean and standard deviation of ``log p(z)`` with ``z`` drawn from
  the next-token distribution (Min-K%++ standardisation)

Batches are left-padded so every answer ends at the last position; the LM head is
then applied only to the last ``max answer length + 1`` positions
(``logits_to_keep``), and the full ``(batch, length, vocab)`` logits are never built.
The attention mask comes from the real sequence lengths (never from
``input_ids != pad_token_id``: the pad token is often the end-of-turn token that also
appears inside prompts), and position ids are counted from each sequence's start.
Samples are batched in order of length for less padding; results come back in input order.
A batch that runs out of device memory is run again in smaller batches
(:func:`~pytest_unlearn.batching.run_batches`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch
    from .prompts import Encoded

STAT_FIELDS = ("logprob", "correct", "mu", "sigma")


@dataclass
class TokenStats:
    """Per-sample arrays over the answer tokens (one entry per scored token)."""

    logprob: list[np.ndarray]
    correct: list[np.ndarray]
    mu: list[np.ndarray]
    sigma: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.logprob)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        return {f: getattr(self, f)[i] for f in STAT_FIELDS}

    def to_flat(self) -> dict[str, np.ndarray]:
        """Concatenated arrays plus offsets (for the cache)."""
        lengths = np.array([len(a) for a in self.logprob], dtype=np.int64)
        flat = {f: np.concatenate(getattr(self, f)) if len(self) else np.zeros(0)
                for f in STAT_FIELDS}
        flat["lengths"] = lengths
        return flat

    @classmethod
    def from_flat(cls, flat: dict[str, np.ndarray]) -> "TokenStats":
        bounds = np.cumsum(flat["lengths"])[:-1]
        return cls(**{f: list(np.split(np.asarray(flat[f]), bounds)) if len(flat["lengths"]) else []
                      for f in STAT_FIELDS})

    @classmethod
    def concat(cls, parts: Sequence["TokenStats"]) -> "TokenStats":
        return cls(**{f: [a for p in parts for a in getattr(p, f)] for f in STAT_FIELDS})


def default_batch_size(device) -> int:
    """The starting batch size when none is given: 32 on CUDA, 8 elsewhere (on an
    out-of-memory error it is halved, see :mod:`pytest_unlearn.batching`)."""
    return 32 if getattr(device, "type", str(device)) == "cuda" else 8


def input_device(model) -> "torch.device":
    """The device the model's inputs go to: that of its input embeddings.

    For a model spread over several devices (``device_map``), this is the execution device
    accelerate gave the embedding layer; its parameters may sit elsewhere (offloaded).
    """
    import torch

    emb = None
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            emb = getter()
        except (NotImplementedError, AttributeError):  # transformers' base class raises for models without one
            emb = None
    if emb is not None:
        hook = getattr(emb, "_hf_hook", None)
        for h in [hook, *getattr(hook, "hooks", ())]:
            device = getattr(h, "execution_device", None)
            if device is not None:
                return torch.device(device)
        weight = getattr(emb, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def left_padded(encoded: Sequence["Encoded"], idx: Sequence[int], pad_id: int, device):
    """input_ids, attention_mask and position_ids for a left-padded batch."""
    import torch

    width = max(len(encoded[i].input_ids) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        seq = encoded[i].input_ids
        ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[r, width - len(seq):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def answer_logits(model, ids, mask, pos, keep: int):
    """Logits of the last ``keep`` positions, shape (batch, keep, vocab)."""
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = pos
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    out = model(**kwargs, use_cache=False)
    return out.logits[:, -keep:, :]


#: Extra memory the per-token statistics may take, as a multiple of the kept logits' bytes
#: (positions are processed in chunks sized to stay within it).
STATS_MEMORY_FACTOR = 1.5
#: Bytes of float32 working memory per answer position and vocabulary entry: the gathered row
#: in the model's dtype and in float32, then the log-probabilities and one product at a time.
_BYTES_PER_ENTRY = 10


def stats_chunk(logits: "torch.Tensor", positions: int) -> int:
    """Answer positions per chunk so that the statistics' temporaries stay within
    :data:`STATS_MEMORY_FACTOR` times the kept logits (at least one position)."""
    vocab = max(1, int(logits.shape[-1]))
    budget = STATS_MEMORY_FACTOR * logits.numel() * logits.element_size()
    return max(1, min(positions, int(budget // (_BYTES_PER_ENTRY * vocab))))


def position_stats(logits: "torch.Tensor", rows, cols, targets, chunk: int | None = None):
    """``(logprob, correct, mu, sigma)`` of the answer positions ``logits[rows[j], cols[j]]``
    predicting ``targets[j]``, as CPU tensors.  Positions are reduced ``chunk`` at a time
    (default :func:`stats_chunk`), each row by the same kernels (``log_softmax``, an exp and
    in-place products), so the result does not depend on the chunking."""
    import torch

    device = logits.device
    n = len(rows)
    chunk = chunk or stats_chunk(logits, n)
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
    cols_t = torch.as_tensor(cols, dtype=torch.long, device=device)
    target_t = torch.as_tensor(targets, dtype=torch.long, device=device)
    parts: list[tuple] = []
    for a in range(0, n, chunk):
        lg = logits[rows_t[a:a + chunk], cols_t[a:a + chunk]].float()
        target = target_t[a:a + chunk, None]
        correct = lg.argmax(-1) == target[:, 0]
        logp = torch.log_softmax(lg, dim=-1)
        del lg
        lp = logp.gather(-1, target)[:, 0]
        plogp = logp.exp().mul_(logp).nan_to_num_()  # p log p; 0 * -inf = 0 for tokens of probability 0
        mu = plogp.sum(-1)
        second = plogp.mul_(logp).nan_to_num_().sum(-1)  # p (log p)^2
        del plogp, logp
        sigma = (second - mu * mu).clamp(min=0).sqrt()
        parts.append((lp.double().cpu(), correct.cpu(), mu.double().cpu(), sigma.double().cpu()))
    if not parts:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, torch.zeros(0, dtype=torch.bool), empty, empty
    return tuple(torch.cat([p[k] for p in parts]) for k in range(4))


def stats_from_logits(logits: "torch.Tensor", encoded: Sequence["Encoded"], idx: Sequence[int],
                      out: dict[int, dict[str, np.ndarray]], chunk: int | None = None) -> None:
    """Fill ``out[i]`` with the token statistics of sample ``i`` from the batch's logits.

    ``logits[:, -keep:]`` with left padding: the prediction of the last answer token
    sits at position ``keep - 2``, that of the first at ``keep - 1 - n_answer``.  The answer
    positions of the batch are reduced in chunks (:func:`position_stats`), so the float32
    temporaries stay within :data:`STATS_MEMORY_FACTOR` times the kept logits.
    """
    keep = logits.shape[1]
    rows, cols, targets, lengths = [], [], [], []
    for r, i in enumerate(idx):
        enc = encoded[i]
        n = enc.n_answer
        rows += [r] * n
        cols += range(keep - 1 - n, keep - 1)
        targets += enc.input_ids[enc.answer_start:]
        lengths.append(n)
    lp, correct, mu, sigma = position_stats(logits, rows, cols, targets, chunk)
    arrays = {"logprob": lp.numpy(), "correct": correct.numpy(), "mu": mu.numpy(), "sigma": sigma.numpy()}
    bounds = np.cumsum(lengths)[:-1]
    split = {k: np.split(v, bounds) for k, v in arrays.items()}
    for r, i in enumerate(idx):
        out[i] = {k: split[k][r] for k in split}


def teacher_forced_stats(model, encoded: Sequence["Encoded"], *, pad_token_id: int,
                         batch_size: int | None = None, progress: bool | str = False,
                         logits_fn: Callable | None = None) -> TokenStats:
    """Token statistics of every sample from one batched teacher-forced pass.

    ``logits_fn(model, ids, mask, pos, keep)`` replaces :func:`answer_logits` (the
    logit-lens attack decodes intermediate layers through it).
    """
    import torch

    from .batching import run_batches, workload_key

    device = input_device(model)
    batch_size = batch_size or default_batch_size(device)
    lengths = [len(e.input_ids) for e in encoded]
    batches = length_sorted_batches(lengths, batch_size)
    results: dict[int, dict[str, np.ndarray]] = {}
    iterator = batches
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(batches, desc=progress if isinstance(progress, str) else "scoring",
                        unit="batch", leave=False)
    fn = logits_fn or answer_logits

    def work(idx: list[int]) -> None:
        ids, mask, pos = left_padded(encoded, idx, pad_token_id, device)
        keep = max(encoded[i].n_answer for i in idx) + 1
        stats_from_logits(fn(model, ids, mask, pos, keep), encoded, idx, results)

    with torch.inference_mode():
        run_batches(iterator, work, widths=lengths, device=device,
                    key=workload_key("forward", model, device), what="the teacher-forced pass")
    return TokenStats(**{f: [results[i][f] for i in range(len(encoded))] for f in STAT_FIELDS})
