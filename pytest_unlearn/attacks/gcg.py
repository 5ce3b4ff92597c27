"""Greedy coordinate gradient (GCG, Zou et al. 2023): an optimised adversarial suffix.

A suffix of ``length`` tokens is put in the user turn right after the question (for
text rows: at the end of the context) and optimised to maximise the log-likelihood of
the answer.  It is *universal* over a training fold and scored on held-out data: the
forget set is split into ``folds`` like ``relearn``'s (the same seeded split), the
suffix is optimised on the other folds' samples and each fold is scored with the
suffix found without it, so every sample is scored exactly once and no suffix has seen
the answer it is scored on.

One step, on a seeded mini-batch of ``batch_size`` training samples:

1. one forward and backward pass with the suffix as one-hot vectors over the vocabulary
   gives the gradient of the answer NLL with respect to every token at every suffix
   position;
2. per position the ``topk`` tokens with the most negative gradient are candidates;
   ``candidates`` single-token swaps (position and token drawn with a seeded generator)
   that re-tokenise to themselves are evaluated in ONE batched forward pass
   (``candidates x batch_size`` sequences);
3. the best swap replaces the suffix if it lowers the mini-batch loss.

Tokens are limited to printable ASCII, never special tokens.  Everything is seeded
(``seed``, else the session's ``unlearn_seed``), so a run is deterministic.  Cost per
fold: ``steps x (candidates + 3) x batch_size`` forward sequences (the backward pass
counted as two) plus two passes over the training samples to report the loss, plus one
scoring pass; see docs/attacks.md.  The model must be fully in memory: a model spread
with CPU or disk offload has no gradients to give (an AttackError says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import AttackError
from ..prompts import dataset_parts
from .base import Attack, AttackOutcome, normalise_answer, register_attack
from .params import Param, as_int
from .prompt_attacks import describe

if TYPE_CHECKING:
    import torch

    from ..models import ModelHandle

__all__ = ["GCG", "allowed_tokens"]

MAX_ROWS = 64  # sequences per forward pass when evaluating candidates


def as_seed(value):
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return as_int(0, 2**63 - 1)(value)
    except ValueError:
        raise ValueError(f"expected auto (the session's unlearn_seed) or an integer >= 0, got {value!r}") from None


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


def _find(seq: Sequence[int], sub: Sequence[int], end: int) -> int:
    """Start of the last occurrence of ``sub`` in ``seq[:end]`` (-1 if none)."""
    n = len(sub)
    for s in range(end - n, -1, -1):
        if list(seq[s:s + n]) == list(sub):
            return s
    return -1


class _Layout:
    """One training sample: tokens before the suffix, after it (up to the answer), the answer."""

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


@register_attack
class GCG(Attack):
    """A universal adversarial suffix optimised by greedy coordinate gradient on training folds."""

    name = "gcg"
    kind = "prompt"
    cost_hint = "folds x steps x (candidates + 3) x batch_size forward sequences, plus one scoring pass"
    PARAMS = (Param("length", 10, as_int(1, 256), "suffix length in tokens"),
              Param("steps", 20, as_int(1, 1_000_000), "greedy coordinate steps per fold"),
              Param("candidates", 8, as_int(1, 4096),
                    "single-token swaps evaluated per step, in one batched forward pass"),
              Param("topk", 32, as_int(1, 1_000_000), "tokens per position, ranked by the gradient, to swap in"),
              Param("batch_size", 2, as_int(1, 4096), "training samples per step (a seeded mini-batch)"),
              Param("folds", 2, as_int(2, 1000), "forget-set folds: optimised on the others, scored on each"),
              Param("seed", "auto", as_seed, "auto (the session's unlearn_seed) or an integer"))

    def _seed(self, ctx) -> int:
        return int(ctx.seed) if self.seed == "auto" else int(self.seed)

    # ------------------------------------------------------------ checks and setup
    def _check_model(self, model) -> None:
        names = [n for n, p in model.model.named_parameters() if p.device.type == "meta"]
        if names:
            raise AttackError(f"attack {self.spec}: gcg needs gradients through the whole model, but "
                              f"{len(names)} weight tensor(s) are offloaded by accelerate (e.g. '{names[0]}'; "
                              "device_map with CPU or disk offload), so no gradient can be taken; load the model "
                              "on devices that hold all of it (more GPUs, a smaller unlearn_dtype) or use prompt "
                              "attacks that need no gradient (jailbreak, prefill, paraphrase, icl)")
        if model.model.get_input_embeddings() is None:
            raise AttackError(f"attack {self.spec}: the model has no input embeddings to take a gradient through")

    def _initial(self, tokenizer, allowed: np.ndarray) -> list[int]:
        """A suffix of ``length`` copies of one token that re-tokenises to itself (' !' first)."""
        tried = []
        for text in (" !", " x", "!", "x"):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] < len(allowed) and allowed[ids[0]]:
                tried.append(int(ids[0]))
        tried += [int(i) for i in np.flatnonzero(allowed)[:200]]
        for t in tried:
            if _round_trips(tokenizer, [t] * self.length):
                return [t] * self.length
        raise AttackError(f"attack {self.spec}: found no token that repeats {self.length} times and re-tokenises "
                          "to itself; try another length")

    def _layouts(self, scorer, model, parts, suffix: list[int]) -> list[_Layout | None]:
        text = model.tokenizer.decode(suffix)
        encoded = scorer.encode(model, [make(text) for make in parts])
        out = []
        for e in encoded:
            s = _find(e.input_ids, suffix, e.answer_start)
            if s < 0:
                out.append(None)
                continue
            ids = list(e.input_ids)
            out.append(_Layout(ids[:s], ids[s + len(suffix):e.answer_start], ids[e.answer_start:]))
        return out

    # ------------------------------------------------------------ the optimisation
    def _losses(self, model, layouts: Sequence[_Layout], suffixes: Sequence[Sequence[int]], pad: int,
                counter: dict) -> np.ndarray:
        """Mean answer NLL over ``layouts`` of each suffix (batched, no gradient)."""
        import torch

        from ..forward import input_device

        device = input_device(model)
        rows = [(c, lay) for c in range(len(suffixes)) for lay in layouts]
        out = torch.zeros(len(suffixes), dtype=torch.float64)
        with torch.inference_mode():
            for start in range(0, len(rows), MAX_ROWS):
                chunk = rows[start:start + MAX_ROWS]
                seqs = [lay.pre + list(suffixes[c]) + lay.post + lay.answer for c, lay in chunk]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, width - len(s):] = torch.tensor(s)
                    mask[r, width - len(s):] = 1
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                keep = max(len(lay.answer) for _, lay in chunk) + 1
                logits = _call(model, keep, input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=pos.to(device))
                nll = _nll_rows(logits, [lay.answer for _, lay in chunk]).double().cpu()
                counter["forward"] += 1
                for (c, _), v in zip(chunk, nll):
                    out[c] += v
        return (out / len(layouts)).numpy()

    def _gradient(self, model, layouts: Sequence[_Layout], suffix: list[int], counter: dict):
        """(loss, gradient of the mean answer NLL w.r.t. the one-hot suffix, shape (length, vocab))."""
        import torch

        from ..forward import input_device

        device = input_device(model)
        module = model.get_input_embeddings()
        emb = module.weight
        scale = getattr(module, "embed_scale", None)  # embeddings that scale their output (Gemma 3)
        onehot = torch.zeros((len(suffix), emb.shape[0]), dtype=emb.dtype, device=emb.device)
        onehot[torch.arange(len(suffix)), torch.tensor(suffix)] = 1
        onehot.requires_grad_(True)
        with torch.enable_grad():
            suffix_embeds = onehot @ emb
            if scale is not None:
                suffix_embeds = suffix_embeds * scale
            seqs, widths = [], []
            for lay in layouts:
                before = module(torch.tensor(lay.pre, device=emb.device))
                after = module(torch.tensor(lay.post + lay.answer, device=emb.device))
                seqs.append(torch.cat([before, suffix_embeds, after]))
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
            keep = max(len(lay.answer) for lay in layouts) + 1
            logits = _call(model, keep, inputs_embeds=embeds, attention_mask=mask.to(device),
                           position_ids=pos.to(device))
            loss = _nll_rows(logits, [lay.answer for lay in layouts]).mean()
            loss.backward()
        counter["forward"] += 1
        counter["backward"] += 1
        return float(loss.detach()), onehot.grad.detach().float().cpu()

    def optimise(self, model: "ModelHandle", parts, ctx, seed: int, counter: dict | None = None, *,
                 scorer=None) -> tuple[list[int], float, float, int]:
        """The suffix found for the training ``parts``: (token ids, loss before, loss after,
        samples used).  The loss is the mean answer NLL over every usable training sample.

        ``parts`` are PromptParts (the suffix is appended to the question) or functions from
        the suffix text to the PromptParts to optimise (multiple-choice prompts), encoded
        with ``scorer`` (default: ``ctx.scorer``)."""
        from ..prompts import PromptParts

        parts = [(lambda text, p=p: p.with_(question=p.question + text)) if isinstance(p, PromptParts) else p
                 for p in parts]
        scorer = scorer if scorer is not None else ctx.scorer
        import torch

        from ..training import pad_id, seeded_batches

        counter = counter if counter is not None else {"forward": 0, "backward": 0}
        tok = model.tokenizer
        lm = model.model
        emb = lm.get_input_embeddings().weight
        allowed = allowed_tokens(tok, emb.shape[0])
        suffix = self._initial(tok, allowed)
        layouts = [lay for lay in self._layouts(scorer, model, parts, suffix) if lay is not None]
        if not layouts:
            raise AttackError(f"attack {self.spec}: the suffix merges with the prompt's tokens in every training "
                              "sample, so it cannot be optimised token by token")
        pad = pad_id(tok)
        blocked = torch.tensor(~allowed)
        flags = [(p, p.requires_grad) for p in lm.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            before = float(self._losses(lm, layouts, [suffix], pad, counter)[0])
            rng = np.random.default_rng([seed & 0xFFFFFFFF, 17])
            for batch in seeded_batches(len(layouts), self.batch_size, self.steps, seed):
                chosen = [layouts[i] for i in batch]
                current, grad = self._gradient(lm, chosen, suffix, counter)
                grad[:, blocked] = float("inf")
                k = min(self.topk, int(allowed.sum()))
                top = (-grad).topk(k, dim=1).indices.numpy()
                proposals, seen = [], {tuple(suffix)}
                for _ in range(4 * self.candidates):
                    if len(proposals) == self.candidates:
                        break
                    cand = list(suffix)
                    position = int(rng.integers(len(suffix)))
                    cand[position] = int(top[position, int(rng.integers(k))])
                    if tuple(cand) in seen:
                        continue
                    seen.add(tuple(cand))
                    if _round_trips(tok, cand):
                        proposals.append(cand)
                if not proposals:
                    continue
                losses = self._losses(lm, chosen, proposals, pad, counter)
                best = int(np.argmin(losses))
                if losses[best] < current:
                    suffix = proposals[best]
            after = float(self._losses(lm, layouts, [suffix], pad, counter)[0])
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            lm.zero_grad(set_to_none=True)
        return suffix, before, after, len(layouts)

    # ------------------------------------------------------------ running
    @staticmethod
    def objective(metric, model, data, ctx):
        """(scorer, per row a function from the suffix text to the PromptParts whose answer the
        suffix is optimised for).  QA and text rows: the suffix ends the question and the answer
        is the row's.  Multiple-choice rows under a multiple-choice metric: the metric's own
        prompt (lm-eval's letter prompt with the correct letter as the answer for ``mc_acc`` /
        ``mc_prob``, the continuation prompt with the correct choice's text for
        ``mc_acc_text``), the suffix ending the question inside it."""
        base = dataset_parts(data)
        if metric.source != "multiple_choice":
            return ctx.scorer, [(lambda text, p=p: p.with_(question=p.question + text)) for p in base]
        from ..multiple_choice import LETTERS, _rows, _scorer_for, letter_prompt, text_prompt

        choices, answers, subjects = _rows(data, metric)
        makers = []
        for p, c, a, subject in zip(base, choices, answers, subjects):
            if metric.name == "mc_acc_text":
                makers.append(lambda text, p=p, c=c, a=a, subject=subject: p.with_(
                    question=text_prompt(p.question + text, subject), answer=c[a]))
            else:
                makers.append(lambda text, p=p, c=c, a=a, subject=subject: p.with_(
                    question=letter_prompt(p.question + text, c, subject), answer=LETTERS[a]))
        return _scorer_for(ctx.scorer, model), makers

    def _run(self, metric, model, data, ctx):
        from .weight_attacks import _outcome_key, forget_folds

        self._check_model(model)
        n = len(data)
        if n < self.folds:
            raise AttackError(f"attack {self.spec}: {n} sample(s) cannot be split into {self.folds} folds; "
                              f"use gcg:folds={max(2, n)}" if n >= 2 else
                              f"attack {self.spec}: a universal suffix needs at least 2 samples "
                              "(one to optimise on, one to score)")
        seed = self._seed(ctx)
        key = _outcome_key(self, metric, model, data, ctx, "gcg")
        base = dataset_parts(data)
        hit = _cached(ctx, key, base)
        if hit is not None:
            return hit
        folds = forget_folds(n, self.folds, seed)
        scorer, makers = self.objective(metric, model, data, ctx)
        suffixes = [""] * n
        details = [""] * n
        notes = []
        counter = {"forward": 0, "backward": 0}
        answers = [normalise_answer(a) for a in data.answers]
        excluded = 0
        for k, rows in enumerate(folds):
            train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != k]))
            scored = {answers[i] for i in rows} - {""}
            kept = [int(j) for j in train if answers[j] not in scored]  # relearn's rule: never the scored facts
            excluded += len(train) - len(kept)
            if not kept:
                raise AttackError(f"attack {self.spec}: every training sample of fold {k + 1} states an answer it "
                                  "is scored on; optimising on them would teach the scored facts themselves")
            train = np.array(kept)
            fold_seed = (seed * 1000 + k) & 0x7FFF_FFFF_FFFF
            ids, before, after, used = self.optimise(model, [makers[i] for i in train], ctx, fold_seed, counter,
                                                     scorer=scorer)
            text = model.tokenizer.decode(ids)
            label = f"fold {k + 1}/{self.folds}"
            for i in rows:
                suffixes[i] = text
                details[i] = f"{label}: suffix {text!r}"
            notes.append(f"gcg: {label} suffix {text!r}, optimised on {used} training sample(s): answer NLL "
                         f"{before:.3f} -> {after:.3f}")
        parts = [p.with_(question=p.question + s) for p, s in zip(base, suffixes)]
        values = ctx.scorer.per_sample(metric, model, data, parts=parts)
        notes.insert(0, f"gcg: a universal {self.length}-token suffix per fold ({self.steps} steps, "
                        f"{self.candidates} candidates from the top {self.topk}, {self.batch_size} sample(s) "
                        f"per step, seed {seed}); each fold scored with the suffix optimised on the others")
        if excluded:
            notes.append(f"gcg: {excluded} training sample(s) left out: their answer equals one the fold is scored on")
        outcome = AttackOutcome(values, {"gcg_forward_passes": counter["forward"],
                                         "gcg_backward_passes": counter["backward"]},
                                details, [describe(p) for p in parts], notes, parts=parts, excluded=excluded)
        _store(ctx, key, outcome, suffixes)
        return outcome


def _cached(ctx, key: str, base) -> AttackOutcome | None:
    if ctx.cache is None or not ctx.cache.enabled:
        return None
    hit = ctx.cache.get(key)
    if hit is None:
        return None
    suffixes = [str(s) for s in hit["suffixes"]]
    parts = [p.with_(question=p.question + s) for p, s in zip(base, suffixes)]
    return AttackOutcome(np.asarray(hit["values"], dtype=np.float64), {"cached": True},
                         [str(d) for d in hit["details"]], [describe(p) for p in parts],
                         [str(x) for x in hit["notes"]] + ["result read from the attack cache"], parts=parts,
                         excluded=int(hit["excluded"]))


def _store(ctx, key: str, outcome: AttackOutcome, suffixes: list[str]) -> None:
    if ctx.cache is not None and ctx.cache.enabled:
        ctx.cache.put(key, {"values": np.asarray(outcome.values, dtype=np.float64),
                            "details": np.array(outcome.details, dtype=str),
                            "notes": np.array(outcome.notes, dtype=str),
                            "suffixes": np.array(suffixes, dtype=str),
                            "excluded": np.array(int(outcome.excluded), dtype=np.int64)})
