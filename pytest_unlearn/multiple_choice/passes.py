"""The forward passes of the multiple-choice metrics: the letters' log-probabilities from one
pass per question (``mc_acc``, ``mc_prob``), and each choice text's summed log-likelihood from one
batched teacher-forced pass over every (question, choice) pair (``mc_acc_text``)."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import MetricError
from ..metrics import METRICS, Metric
from .prompt_text import _scorer_for, _with_fewshot, text_prompt
from .rows import LETTERS, _rows

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import ModelHandle
    from ..prompts import PromptParts
    from ..scoring import Scorer

__all__ = ["letter_token_ids", "letter_scores", "choice_loglikelihoods"]


def letter_token_ids(tokenizer, prefix: str, n: int) -> tuple[list[int], list[int]]:
    """(shared leading ids, one distinguishing id per letter) for the letters ``A``... scored
    after ``prefix`` (``" "`` in plain prompts, ``""`` after a chat template)."""
    toks = [list(tokenizer(prefix + LETTERS[i], add_special_tokens=False)["input_ids"]) for i in range(n)]
    common = 0
    while all(len(t) > common for t in toks) and len({t[common] for t in toks}) == 1:
        common += 1
    if any(len(t) <= common for t in toks) or len({t[common] for t in toks}) != n:
        raise MetricError(f"the tokenizer does not give the letters {LETTERS[0]}-{LETTERS[n - 1]} "
                          f"(after {prefix!r}) distinct tokens: {toks}; letter accuracy cannot be read "
                          "from one next-token distribution. Use mc_acc_text instead")
    return toks[0][:common], [t[common] for t in toks]


def _letter_logprobs(model, contexts: list[list[int]], letter_ids: list[list[int]], *, pad: int,
                     batch_size: int | None, logits_fn: Callable) -> list[np.ndarray]:
    """Log-probabilities (full-vocabulary log-softmax) of each row's letter ids at the last
    position of its context: one batched pass, left-padded and length-sorted as the shared
    teacher-forced pass (:mod:`pytest_unlearn.forward`)."""
    import torch

    from ..batching import run_batches, workload_key
    from ..forward import default_batch_size, input_device, left_padded, length_sorted_batches
    from ..prompts import Encoded

    device = input_device(model)
    encoded = [Encoded(list(c), len(c)) for c in contexts]
    lengths = [len(c) for c in contexts]
    batches = length_sorted_batches(lengths, batch_size or default_batch_size(device))
    out: dict[int, np.ndarray] = {}

    def work(idx: list[int]) -> None:
        ids, mask, pos = left_padded(encoded, idx, pad, device)
        logp = torch.log_softmax(logits_fn(model, ids, mask, pos, 1)[:, -1, :].float(), dim=-1)
        for r, i in enumerate(idx):
            out[i] = logp[r, torch.tensor(letter_ids[i], device=logp.device)].double().cpu().numpy()

    with torch.inference_mode():
        run_batches(batches, work, widths=lengths, device=device,
                    key=workload_key("forward", model, device), what="the multiple-choice letter pass")
    return [out[i] for i in range(len(contexts))]


def _digest(contexts, letter_ids) -> str:
    h = hashlib.sha256()
    for c, l in zip(contexts, letter_ids):
        h.update(np.asarray(c, dtype=np.int64).tobytes())
        h.update(b"|")
        h.update(np.asarray(l, dtype=np.int64).tobytes())
        h.update(b"/")
    return h.hexdigest()


def letter_scores(scorer: "Scorer", handle: "ModelHandle", dataset: "Dataset", parts: Sequence["PromptParts"],
                  names: Sequence[str], *, logits_fn: Callable | None = None, variant: str = "",
                  metric: Metric | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Per row: the letters' log-probabilities (one entry per choice) and the correct index."""
    from ..cache import cache_key
    from ..scoring import _finite_logits, _model_label

    choices, answers, subjects = _rows(dataset, metric or METRICS.get("mc_acc"))
    sub = _scorer_for(scorer, handle)
    chat = sub.prompt.kind == "chat"
    mc_parts = [_with_fewshot(p, p.question, c, s, a, chat) for p, c, s, a in zip(parts, choices, subjects, answers)]
    encoded = sub.encode(handle, mc_parts, names)
    memo: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
    contexts, letter_ids = [], []
    for e, c in zip(encoded, choices):
        prefix = e.answer_text[:len(e.answer_text) - 1]  # the joining space, if any
        key = (prefix, len(c))
        if key not in memo:
            try:
                memo[key] = letter_token_ids(handle.tokenizer, prefix, len(c))
            except MetricError:
                # letters that are no distinct single tokens: each letter's whole continuation
                return _letter_continuations(sub, handle, mc_parts, choices, names, logits_fn, variant), answers
        shared, ids = memo[key]
        contexts.append(list(e.input_ids[:e.answer_start]) + shared)
        letter_ids.append(ids)
    key = cache_key("mc_letters", handle.fingerprint, _digest(contexts, letter_ids), scorer.batch_size,
                    str(handle.device.type), str(handle.dtype), variant)
    hit = scorer.cache.get(key)
    if hit is not None:
        scorer.cost.cached += 1
        bounds = np.cumsum(hit["lengths"])[:-1]
        return list(np.split(np.asarray(hit["logprob"]), bounds)), answers
    t0 = time.perf_counter()
    pad = handle.tokenizer.pad_token_id
    if pad is None:
        pad = handle.tokenizer.eos_token_id or 0
    bad: list = []
    values = _letter_logprobs(handle.model, contexts, letter_ids, pad=pad, batch_size=scorer.batch_size,
                              logits_fn=_finite_logits(logits_fn, bad))
    if bad:
        raise MetricError(f"{_model_label(handle)} produced NaN or inf logits on {len(bad)} multiple-choice "
                          f"prompts of {dataset.source}; no verdict can be given. Check the weights for "
                          "overflow, or load in float32 (--unlearn-dtype float32)")
    from ..forward import default_batch_size

    scorer.cost.forward_passes += -(-len(contexts) // (scorer.batch_size or default_batch_size(handle.device)))
    scorer.cost.seconds += time.perf_counter() - t0
    scorer.cache.put(key, {"logprob": np.concatenate(values),
                           "lengths": np.array([len(v) for v in values], dtype=np.int64)})
    return values, answers


def _letter_continuations(sub: "Scorer", handle: "ModelHandle", mc_parts, choices, names, logits_fn,
                          variant) -> list[np.ndarray]:
    """Per row, the summed log-likelihood of each letter's continuation (``" A"``, ``" B"``...) after
    the letter prompt, as lm-evaluation-harness scores them, from one batched teacher-forced pass over
    every (question, letter) pair: the path for tokenizers whose letters are not distinct single
    tokens (one next-token distribution cannot hold them)."""
    return _summed_loglikelihoods(
        sub, handle, [[(p.with_(answer=LETTERS[j]), f"{names[i]} letter {LETTERS[j]}") for j in range(len(c))]
                      for i, (p, c) in enumerate(zip(mc_parts, choices))], logits_fn, variant)


def _summed_loglikelihoods(sub: "Scorer", handle: "ModelHandle", rows, logits_fn, variant) -> list[np.ndarray]:
    """Per row of ``(parts, name)`` pairs, the summed answer log-likelihood of each pair, from one
    batched teacher-forced pass over every pair of every row."""
    flat = [pair for row in rows for pair in row]
    stats = sub.token_stats(handle, [p for p, _ in flat], names=[n for _, n in flat], logits_fn=logits_fn,
                            variant=variant)
    sums = [float(np.sum(lp)) for lp in stats.logprob]
    bounds = np.cumsum([len(row) for row in rows])[:-1]
    return [np.array(v) for v in np.split(np.array(sums), bounds)] if rows else []


def choice_loglikelihoods(scorer: "Scorer", handle: "ModelHandle", dataset: "Dataset",
                          parts: Sequence["PromptParts"], names: Sequence[str], *,
                          logits_fn: Callable | None = None, variant: str = "",
                          metric: Metric | None = None) -> tuple[list[np.ndarray], list[list[str]], list[int]]:
    """Per row: the summed log-likelihood of each ``" {choice}"`` after lm-eval's continuation
    prompt, from one batched teacher-forced pass over every (question, choice) pair."""
    choices, answers, subjects = _rows(dataset, metric or METRICS.get("mc_acc_text"))
    sub = _scorer_for(scorer, handle)
    rows = [[(p.with_(question=text_prompt(p.question, subj), answer=choice), f"{names[i]} choice {LETTERS[j]}")
             for j, choice in enumerate(c)] for i, (p, c, subj) in enumerate(zip(parts, choices, subjects))]
    return _summed_loglikelihoods(sub, handle, rows, logits_fn, variant), choices, answers
