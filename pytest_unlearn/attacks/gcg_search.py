"""The greedy coordinate gradient search (Zou et al. 2023) behind the ``gcg`` attack.

A search optimises ``length`` token ids that are put into a prompt (after the question: a
suffix; before it: a prefix) to lower the mean answer NLL.  Two searches:

* :func:`universal`: one token sequence for a set of training prompts; each step works on
  a seeded mini-batch of ``batch_size`` of them;
* :func:`per_sample`: one token sequence per prompt, optimised on that prompt's own
  answer; ``batch_size`` prompts at a time share the batched passes, each with its own
  seeded draws and its own accept/reject decision.

One step:

1. one forward and backward pass with the tokens as one-hot vectors over the vocabulary
   gives the gradient of the answer NLL with respect to every token at every position;
2. per position the ``topk`` tokens with the most negative gradient are candidates;
   ``candidates`` single-token swaps (position and token drawn with a seeded generator)
   that re-tokenise to themselves are evaluated in batched forward passes of at most
   :data:`MAX_ROWS` sequences;
3. the best swap replaces the tokens if it lowers the loss.

Tokens are limited to printable ASCII, never special tokens.  The weights are frozen
during a search (``requires_grad`` off, then put back).  ``counter`` counts the batched
forward passes (``forward``) and forward-backward passes (``backward``), and the sequences
in each (``forward_rows``, ``backward_rows``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import AttackError

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_ROWS", "allowed_tokens", "per_sample", "universal"]

MAX_ROWS = 64  # sequences per forward pass when evaluating candidates


def allowed_tokens(tokenizer, vocab_rows: int) -> np.ndarray:
    """Boolean mask over the embedding rows: tokens that decode to printable ASCII with
    something besides whitespace, and are not special tokens."""
    n = min(len(tokenizer), vocab_rows)
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    mask = np.zeros(vocab_rows, dtype=bool)
    for i, t in enumerate(texts):
        mask[i] = i not in special and t.isascii() and t.isprintable() and bool(t.strip())
    return mask


def _round_trips(tokenizer, ids: Sequence[int]) -> bool:
    return list(tokenizer(tokenizer.decode(list(ids)), add_special_tokens=False)["input_ids"]) == list(ids)


def _find(seq: Sequence[int], sub: Sequence[int], end: int, first: bool = False) -> int:
    """Start of the last (``first``: the first) occurrence of ``sub`` in ``seq[:end]`` (-1 if none)."""
    n = len(sub)
    starts = range(0, end - n + 1) if first else range(end - n, -1, -1)
    for s in starts:
        if list(seq[s:s + n]) == list(sub):
            return s
    return -1


class _Layout:
    """One training prompt: tokens before the inserted ones, after them (up to the answer), the answer."""

    def __init__(self, pre: list[int], post: list[int], answer: list[int]):
        self.pre, self.post, self.answer = pre, post, answer


def _nll_rows(logits: "torch.Tensor", answers: Sequence[Sequence[int]]) -> "torch.Tensor":
    """Mean answer NLL per row from left-padded logits of the last ``keep`` positions."""
    import torch

    keep = logits.shape[1]
    targets = torch.full((len(answers), keep - 1), -100, dtype=torch.long, device=logits.device)
    for r, ans in enumerate(answers):
        targets[r, keep - 1 - len(ans):] = torch.tensor(list(ans), dtype=torch.long)
    lg = logits[:, :-1, :].float()
    nll = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), targets.reshape(-1),
                                            ignore_index=-100, reduction="none").view(targets.shape)
    return nll.sum(-1) / torch.tensor([len(a) for a in answers], device=logits.device, dtype=nll.dtype)


def _call(model, keep: int, **kwargs):
    from ..forward import _accepts

    if not _accepts(model, "position_ids"):
        kwargs.pop("position_ids", None)
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    return model(**kwargs, use_cache=False).logits[:, -keep:, :]


def initial_tokens(tokenizer, allowed: np.ndarray, length: int, spec: str) -> list[int]:
    """``length`` copies of one token that re-tokenises to itself (' !' first)."""
    tried = []
    for text in (" !", " x", "!", "x"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] < len(allowed) and allowed[ids[0]]:
            tried.append(int(ids[0]))
    tried += [int(i) for i in np.flatnonzero(allowed)[:200]]
    for t in tried:
        if _round_trips(tokenizer, [t] * length):
            return [t] * length
    raise AttackError(f"attack {spec}: found no token that repeats {length} times and re-tokenises "
                      "to itself; try another length")


def layouts(scorer, model, makers: Sequence[Callable], tokens: list[int], first: bool) -> list[_Layout | None]:
    """Each prompt split around ``tokens`` (``None`` where they merge with the prompt's own
    tokens); ``first``: the first occurrence (a prefix), else the last (a suffix)."""
    text = model.tokenizer.decode(tokens)
    encoded = scorer.encode(model, [make(text) for make in makers])
    out = []
    for e in encoded:
        s = _find(e.input_ids, tokens, e.answer_start, first)
        if s < 0:
            out.append(None)
            continue
        ids = list(e.input_ids)
        out.append(_Layout(ids[:s], ids[s + len(tokens):e.answer_start], ids[e.answer_start:]))
    return out


def row_losses(model, rows: Sequence[tuple[_Layout, Sequence[int]]], pad: int, counter: dict) -> "torch.Tensor":
    """Mean answer NLL of each (prompt, tokens) row, float64 on the CPU (batched, no gradient)."""
    import torch

    from ..forward import input_device

    device = input_device(model)
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), MAX_ROWS):
            chunk = rows[start:start + MAX_ROWS]
            seqs = [lay.pre + list(tokens) + lay.post + lay.answer for lay, tokens in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, width - len(s):] = torch.tensor(s)
                mask[r, width - len(s):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(lay.answer) for lay, _ in chunk) + 1
            logits = _call(model, keep, input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device))
            out.append(_nll_rows(logits, [lay.answer for lay, _ in chunk]).double().cpu())
            counter["forward"] += 1
            counter["forward_rows"] += len(chunk)
    return torch.cat(out)


def mean_losses(model, layouts_: Sequence[_Layout], candidates: Sequence[Sequence[int]], pad: int,
                counter: dict) -> np.ndarray:
    """Mean answer NLL over ``layouts_`` of each candidate token sequence."""
    import torch

    values = row_losses(model, [(lay, c) for c in candidates for lay in layouts_], pad, counter)
    out = torch.zeros(len(candidates), dtype=torch.float64)
    for r, v in enumerate(values):
        out[r // len(layouts_)] += v
    return (out / len(layouts_)).numpy()


def gradient(model, layouts_: Sequence[_Layout], tokens: Sequence[Sequence[int]], counter: dict
             ) -> tuple[np.ndarray, "torch.Tensor"]:
    """(losses, gradient w.r.t. the one-hot tokens, shape ``(len(tokens), length, vocab)``).

    One token sequence shared by every row: its loss and gradient are of the mean answer NLL
    over the rows.  One per row: each row's own NLL and the gradient for its own tokens."""
    import torch

    from ..forward import input_device

    shared = len(tokens) == 1
    device = input_device(model)
    module = model.get_input_embeddings()
    emb = module.weight
    scale = getattr(module, "embed_scale", None)  # embeddings that scale their output (Gemma 3)
    length = len(tokens[0])
    onehot = torch.zeros((len(tokens), length, emb.shape[0]), dtype=emb.dtype, device=emb.device)
    for r, ids in enumerate(tokens):
        onehot[r, torch.arange(length), torch.tensor(list(ids))] = 1
    onehot.requires_grad_(True)
    with torch.enable_grad():
        inserted = onehot[0] @ emb if shared else onehot @ emb
        if scale is not None:
            inserted = inserted * scale
        seqs, widths = [], []
        for r, lay in enumerate(layouts_):
            before = module(torch.tensor(lay.pre, dtype=torch.long, device=emb.device))  # empty: a prefix first
            after = module(torch.tensor(lay.post + lay.answer, dtype=torch.long, device=emb.device))
            seqs.append(torch.cat([before, inserted if shared else inserted[r], after]))
            widths.append(seqs[-1].shape[0])
        width = max(widths)
        embeds = torch.zeros((len(seqs), width, emb.shape[1]), dtype=emb.dtype, device=emb.device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        padded = []
        for r, s in enumerate(seqs):
            pad = width - s.shape[0]
            padded.append(torch.cat([embeds[r, :pad], s]) if pad else s)
            mask[r, pad:] = 1
        embeds = torch.stack(padded).to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(lay.answer) for lay in layouts_) + 1
        logits = _call(model, keep, inputs_embeds=embeds, attention_mask=mask.to(device),
                       position_ids=pos.to(device))
        nll = _nll_rows(logits, [lay.answer for lay in layouts_])
        loss = nll.mean() if shared else nll.sum()
        loss.backward()
    counter["forward"] += 1
    counter["backward"] += 1
    counter["backward_rows"] += len(layouts_)
    losses = np.array([float(loss.detach())]) if shared else nll.detach().double().cpu().numpy()
    return losses, onehot.grad.detach().float().cpu()


def _top(grad: "torch.Tensor", allowed: Sequence[np.ndarray], topk: int) -> list[np.ndarray]:
    """Per row of ``grad`` and position the ``topk`` tokens of that row's ``allowed`` mask
    with the most negative gradient."""
    import torch

    out = []
    for g, mask in zip(grad, allowed):
        g[:, torch.tensor(~mask)] = float("inf")
        out.append((-g).topk(min(topk, int(mask.sum())), dim=-1).indices.numpy())
    return out


def answer_tokens(texts: Sequence[str], tokenizer, answer: Sequence[int]) -> np.ndarray:
    """Boolean mask over ``texts`` (the decoded vocabulary): the tokens that would state a
    piece of ``answer`` (token ids): its own tokens, and every token whose text, reduced to
    lower-case letters and digits, has at least 3 characters and occurs in the answer so
    reduced ("onomer" for "astronomer")."""
    from .base import normalise_answer

    target = normalise_answer(tokenizer.decode(list(answer), skip_special_tokens=True))
    mask = np.zeros(len(texts), dtype=bool)
    for i, t in enumerate(texts):
        piece = normalise_answer(t)
        mask[i] = len(piece) >= 3 and piece in target
    mask[[i for i in answer if i < len(texts)]] = True
    return mask


def _propose(tokenizer, tokens: list[int], top: np.ndarray, candidates: int, rng) -> list[list[int]]:
    """Up to ``candidates`` distinct single-token swaps from ``top`` that re-tokenise to themselves."""
    proposals, seen = [], {tuple(tokens)}
    k = top.shape[1]
    for _ in range(4 * candidates if k else 0):
        if len(proposals) == candidates:
            break
        cand = list(tokens)
        position = int(rng.integers(len(tokens)))
        cand[position] = int(top[position, int(rng.integers(k))])
        if tuple(cand) in seen:
            continue
        seen.add(tuple(cand))
        if _round_trips(tokenizer, cand):
            proposals.append(cand)
    return proposals


@contextmanager
def _frozen(lm):
    flags = [(p, p.requires_grad) for p in lm.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        lm.zero_grad(set_to_none=True)


def _start(attack, model, scorer, makers):
    """(allowed-token mask, initial tokens, layouts, pad id) of a search."""
    from ..training import pad_id

    tok = model.tokenizer
    allowed = allowed_tokens(tok, model.model.get_input_embeddings().weight.shape[0])
    tokens = initial_tokens(tok, allowed, attack.length, attack.spec)
    found = layouts(scorer, model, makers, tokens, first=attack.position == "prefix")
    return allowed, tokens, found, pad_id(tok)


def universal(attack, model, makers: Sequence[Callable], scorer, seed: int, counter: dict
              ) -> tuple[list[int], float, float, int]:
    """One token sequence for every prompt of ``makers`` (functions from the inserted text to
    PromptParts): (token ids, mean loss before, after, prompts used)."""
    from ..training import seeded_batches

    allowed, tokens, found, pad = _start(attack, model, scorer, makers)
    found = [lay for lay in found if lay is not None]
    if not found:
        raise AttackError(f"attack {attack.spec}: the {attack.position} merges with the prompt's tokens in every "
                          "training sample, so it cannot be optimised token by token")
    lm = model.model
    with _frozen(lm):
        before = float(mean_losses(lm, found, [tokens], pad, counter)[0])
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 17])
        for batch in seeded_batches(len(found), attack.batch_size, attack.steps, seed):
            chosen = [found[i] for i in batch]
            current, grad = gradient(lm, chosen, [tokens], counter)
            proposals = _propose(model.tokenizer, tokens, _top(grad, [allowed], attack.topk)[0], attack.candidates,
                                 rng)
            if not proposals:
                continue
            losses = mean_losses(lm, chosen, proposals, pad, counter)
            best = int(np.argmin(losses))
            if losses[best] < current[0]:
                tokens = proposals[best]
        after = float(mean_losses(lm, found, [tokens], pad, counter)[0])
    return tokens, before, after, len(found)


def per_sample(attack, model, makers: Sequence[Callable], scorer, seeds: Sequence[int], counter: dict
               ) -> tuple[list[tuple[list[int], float, float] | None], list[int]]:
    """One token sequence per prompt, optimised on that prompt's own answer: (per prompt
    (token ids, its loss before, after), or ``None`` where the inserted tokens merge with
    the prompt's own and cannot be optimised; the initial tokens).  ``seeds``: one per prompt."""
    allowed, initial, found, pad = _start(attack, model, scorer, makers)
    usable = [i for i, lay in enumerate(found) if lay is not None]
    texts = model.tokenizer.batch_decode([[i] for i in range(min(len(model.tokenizer), len(allowed)))])
    texts += [""] * (len(allowed) - len(texts))
    out: list[tuple[list[int], float, float] | None] = [None] * len(makers)
    lm = model.model
    with _frozen(lm):
        for start in range(0, len(usable), attack.batch_size):
            group = usable[start:start + attack.batch_size]
            lays = [found[i] for i in group]
            tokens = [list(initial) for _ in group]
            rngs = [np.random.default_rng([seeds[i] & 0xFFFFFFFF, 17]) for i in group]
            masks = [allowed & ~answer_tokens(texts, model.tokenizer, lay.answer) for lay in lays]
            before = row_losses(lm, list(zip(lays, tokens)), pad, counter).numpy()
            for _ in range(attack.steps):
                current, grad = gradient(lm, lays, tokens, counter)
                top = _top(grad, masks, attack.topk)
                proposals = [_propose(model.tokenizer, tokens[r], top[r], attack.candidates, rngs[r])
                             for r in range(len(group))]
                rows = [(lays[r], p) for r in range(len(group)) for p in proposals[r]]
                if not rows:
                    continue
                losses = row_losses(lm, rows, pad, counter).numpy()
                at = 0
                for r, props in enumerate(proposals):
                    if props:
                        best = int(np.argmin(losses[at:at + len(props)]))
                        if losses[at + best] < current[r]:
                            tokens[r] = props[best]
                    at += len(props)
            after = row_losses(lm, list(zip(lays, tokens)), pad, counter).numpy()
            for r, i in enumerate(group):
                out[i] = (tokens[r], float(before[r]), float(after[r]))
    return out, initial
