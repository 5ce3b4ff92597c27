"""MUSE's criteria on MUSE's files, as ``swj0419/muse_bench`` computes them.

* **VerbMem** (:func:`muse_verbmem`, on ``verbmem/forget.json``: ``prompt``, ``gt``): the
  prompt is tokenised as given (the tokenizer's special tokens, no template), the model
  continues it greedily for 128 new tokens, and the continuation is scored by ROUGE-L F1
  (``rouge_score``, no stemmer) against ``gt`` cut to its first 128 tokens (``gt``
  tokenised with special tokens, cut, decoded without them).
* **KnowMem** (:func:`muse_knowmem`, on ``knowmem/{forget,retain}_qa.json`` with the fixed
  in-context file ``*_qa_icl.json``): the prompt is the ICL examples as
  ``Question: {q}\\nAnswer: {a}\\n\\n`` followed by ``Question: {q}\\nAnswer: ``; 32 greedy
  new tokens, cut before the first ``\\n\\n``, ``\\nQuestion`` or ``Question:``; ROUGE-L F1
  against the answer.  On the retain QA file this is MUSE's utility criterion (KnowMem on
  retain).
* **PrivLeak** (:func:`muse_privleak`, on ``privleak/{forget,holdout}.json``, JSON arrays of
  texts): Min-40% (``mia_min_k``) of the *whole* text, the AUC of telling forget (members)
  from holdout, and :func:`~pytest_unlearn.metrics.privleak` against the reference
  (retrained) model's AUC: MUSE's sign, about -100 for a model that still knows the forget
  set, 0 for the retrained one.

MUSE reports VerbMem and KnowMem times 100; the ``value`` here is the 0-1 mean.  One
difference: generated text is stripped of surrounding whitespace before KnowMem's cut
(MUSE cuts first), which changes a score only for an answer that starts with a blank line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from .suite import Suite

__all__ = ["MuseResult", "PrivLeakResult", "muse_verbmem", "muse_knowmem", "muse_privleak",
           "knowmem_prompt", "VERBMEM_NEW_TOKENS", "KNOWMEM_NEW_TOKENS", "KNOWMEM_STOPS"]

VERBMEM_NEW_TOKENS = 128
KNOWMEM_NEW_TOKENS = 32
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")


@dataclass
class MuseResult:
    """``value``: the mean ROUGE-L F1 (MUSE shows it times 100); ``scores``: per sample, with
    the prompt, the reference it was scored against and the generated text."""

    criterion: str
    value: float
    scores: "pd.DataFrame"
    notes: list[str] = field(default_factory=list)


@dataclass
class PrivLeakResult:
    """``privleak`` in MUSE's sign (percent), from the unlearned model's and the reference's
    AUCs (:func:`~pytest_unlearn.metrics.mia_auc`'s orientation: 1 = members read as members)."""

    privleak: float
    auc: float
    reference_auc: float
    metric: str
    forget_scores: np.ndarray
    holdout_scores: np.ndarray


def knowmem_prompt(question: str, shots=()) -> str:
    """MUSE's KnowMem prompt: the in-context examples, then the question."""
    head = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    return head + f"Question: {question}\nAnswer: "


def _cut_before(text: str, words=KNOWMEM_STOPS) -> str:
    for word in words:
        text = text.split(word)[0]
    return text


def _generate(suite: "Suite", handle, prompts: list[str], new_tokens: int) -> list[str]:
    from .generation import greedy_generations, warn_cut

    tok = handle.tokenizer
    contexts = [list(tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    gens = greedy_generations(handle.model, tok, contexts, [0] * len(contexts),
                              batch_size=suite.scorer.batch_size, context_length=handle.context_length,
                              new_tokens=new_tokens)
    warn_cut(gens, handle.context_length)
    return gens.texts


def _budget(suite: "Suite", given: int | None, default: int) -> int:
    """An explicit argument, else the ``unlearn_max_new_tokens`` setting, else MUSE's length."""
    if given is not None:
        return int(given)
    configured = getattr(suite.settings, "max_new_tokens", None)
    return int(configured) if configured is not None else default


def _require(dataset, columns: tuple[str, ...], criterion: str) -> None:
    from .errors import DataError

    for column in columns:
        if not dataset.has(column):
            raise DataError(f"MUSE {criterion} needs a {column!r} column in every row (MUSE's files have "
                            f"{', '.join(columns)}); this file has {', '.join(map(repr, dataset.frame.columns))}",
                            path=dataset.source)


def muse_verbmem(model=None, data=None, *, max_new_tokens: int | None = None,
                 suite: "Suite | None" = None) -> MuseResult:
    """MUSE VerbMem of ``model`` (default: the unlearned model) on ``data`` (default: the
    forget set; MUSE's ``verbmem/forget.json`` rows ``prompt``, ``gt``).  ``max_new_tokens``:
    default ``unlearn_max_new_tokens`` if set, else MUSE's 128."""
    import pandas as pd

    from .metrics import rouge_l_f1
    from .suite import current_suite

    suite = current_suite(suite)
    max_new_tokens = _budget(suite, max_new_tokens, VERBMEM_NEW_TOKENS)
    dataset = suite.data(data, default="forget")
    if dataset.kind != "text":
        _require(dataset, ("prompt", "completion"), "verbmem")
    handle = suite.model(model)
    tok = handle.tokenizer
    prompts, gts = list(dataset.prompts), list(dataset.answers)
    generated = _generate(suite, handle, prompts, max_new_tokens)
    short = [tok.decode(list(tok(g, add_special_tokens=True)["input_ids"])[:max_new_tokens],
                        skip_special_tokens=True, clean_up_tokenization_spaces=True) for g in gts]
    scores = [rouge_l_f1(out, ref) for out, ref in zip(generated, short)]
    frame = pd.DataFrame({"rouge_l_f1": scores, "prompt": prompts, "gt": short, "generated": generated},
                         index=pd.Index(dataset.ids, name="sample"))
    return MuseResult("verbmem", float(np.mean(scores)), frame)


def muse_knowmem(model=None, data=None, *, icl=None, max_new_tokens: int | None = None,
                 suite: "Suite | None" = None) -> MuseResult:
    """MUSE KnowMem of ``model`` on ``data`` (default: the forget set; MUSE's
    ``knowmem/forget_qa.json``) with the in-context examples of ``icl`` (MUSE's
    ``forget_qa_icl.json``; a path, Dataset or records; None: no examples).  On the retain QA
    file with ``retain_qa_icl.json`` it is MUSE's utility criterion.  ``max_new_tokens``: default
    ``unlearn_max_new_tokens`` if set, else MUSE's 32."""
    import pandas as pd

    from .metrics import rouge_l_f1
    from .suite import current_suite

    suite = current_suite(suite)
    max_new_tokens = _budget(suite, max_new_tokens, KNOWMEM_NEW_TOKENS)
    dataset = suite.data(data, default="forget")
    if dataset.kind != "qa":
        _require(dataset, ("question", "answer"), "knowmem")
    shots = ()
    if icl is not None:
        shots_data = suite.data(icl)
        if shots_data.kind != "qa":
            _require(shots_data, ("question", "answer"), "knowmem in-context file")
        shots = tuple(zip(shots_data.prompts, shots_data.answers))
    handle = suite.model(model)
    prompts = [knowmem_prompt(q, shots) for q in dataset.prompts]
    generated = [_cut_before(g) for g in _generate(suite, handle, prompts, max_new_tokens)]
    answers = list(dataset.answers)
    scores = [rouge_l_f1(out, ref) for out, ref in zip(generated, answers)]
    frame = pd.DataFrame({"rouge_l_f1": scores, "question": list(dataset.prompts), "answer": answers,
                          "generated": generated}, index=pd.Index(dataset.ids, name="sample"))
    return MuseResult("knowmem", float(np.mean(scores)), frame,
                      [f"{len(shots)} in-context example(s)"])


def _whole_text_parts(dataset, tokenizer):
    """Every token of each text scored, as MUSE does (``tokenizer.encode(text)``, the log-prob
    of each token after the first): with a BOS token the prompt is empty; without one the
    first token is the context (the text is cut at the character where the second starts)."""
    from .prompts import PromptParts

    texts = [p + c for p, c in zip(dataset.prompts, dataset.answers)] if dataset.kind == "text" \
        else [q + " " + a for q, a in zip(dataset.prompts, dataset.answers)]
    out = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=True)
        ids = list(enc["input_ids"])
        if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id:
            out.append(PromptParts("", text, templated=False))
            continue
        cut = None
        if getattr(tokenizer, "is_fast", False) and len(ids) > 1:
            spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            cut = spans[1][0] if len(spans) > 1 else None
        if not cut:
            words = text.split(None, 1)
            cut = len(text) - len(words[1]) if len(words) > 1 else None
        if not cut:
            out.append(PromptParts("", text, templated=False))  # one token: nothing to score
        else:
            out.append(PromptParts(text[:cut], text[cut:], templated=False))
    return out


def muse_privleak(model=None, *, forget=None, holdout=None, reference_auc: float | None = None,
                  metric: str = "mia_min_k", suite: "Suite | None" = None) -> PrivLeakResult:
    """MUSE PrivLeak of ``model`` (default: the unlearned model): ``metric`` (default Min-40%)
    on whole texts of ``forget`` (default: the forget set) and ``holdout`` (default: the
    holdout set), the AUC, and :func:`~pytest_unlearn.metrics.privleak` against the reference
    model's AUC (the session's ``unlearn_reference``, or ``reference_auc`` given in
    :func:`~pytest_unlearn.metrics.mia_auc`'s orientation, i.e. 1 - MUSE's published number)."""
    from .config import flag, ini_key
    from .errors import ConfigError
    from .metrics import mia_auc, privleak
    from .suite import current_suite

    suite = current_suite(suite)
    forget_data = suite.data(forget, default="forget")
    holdout_data = suite.data(holdout, default="holdout")
    handle = suite.model(model)

    def auc_of(h):
        f = suite.scorer.per_sample(metric, h, forget_data, parts=_whole_text_parts(forget_data, h.tokenizer))
        o = suite.scorer.per_sample(metric, h, holdout_data, parts=_whole_text_parts(holdout_data, h.tokenizer))
        return mia_auc(f, o, metric), f, o

    auc, f_scores, h_scores = auc_of(handle)
    if reference_auc is None:
        if suite.reference is None:
            raise ConfigError("PrivLeak compares with a reference (retrained) model's AUC: set "
                              f"`{ini_key('reference')}` / {flag('reference')} PATH, or pass reference_auc=")
        reference_auc = auc_of(suite.reference)[0]
    return PrivLeakResult(privleak(auc, reference_auc), auc, float(reference_auc), metric, f_scores, h_scores)
