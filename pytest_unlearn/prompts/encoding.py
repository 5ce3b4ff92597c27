"""Tokenising context and answer together so that the scored tokens are exactly the answer's
(:func:`encode`, :func:`answer_boundary`; see :mod:`pytest_unlearn.prompts` for the boundary),
and cutting prompts from the left to fit the model's context (:class:`TruncationWarning`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import MetricError
from .formats import PromptFormat
from .rendering import PromptParts, join_text, render_context


class TruncationWarning(UserWarning):
    """Prompts were cut from the left to fit the model's context."""


@dataclass
class Encoded:
    """Token ids of context + answer; the answer is ``input_ids[answer_start:]``."""

    input_ids: list[int]
    answer_start: int
    truncated: bool = False
    context_text: str = field(default="", repr=False)
    answer_text: str = field(default="", repr=False)

    @property
    def n_answer(self) -> int:
        return len(self.input_ids) - self.answer_start


def _offsets(tokenizer, texts: list[str]) -> tuple[list[list[int]], list | None]:
    """Token ids without special tokens and, for a fast tokenizer, each token's character span."""
    if getattr(tokenizer, "is_fast", False):
        try:
            enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            return [list(x) for x in enc["input_ids"]], [list(map(tuple, o)) for o in enc["offset_mapping"]]
        except (NotImplementedError, TypeError, ValueError):  # a tokenizer without offset mappings
            pass
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]], None


def _leading_specials(tokenizer, with_special: list[int], body: list[int]) -> list[int]:
    """The special tokens the tokenizer puts *before* ``body`` (BOS); appended ones (EOS) are
    not returned, so they never end up between a prompt and its answer."""
    n = len(body)
    for i in range(len(with_special) - n + 1):
        if with_special[i:i + n] == body:
            return with_special[:i]
    specials = set(getattr(tokenizer, "all_special_ids", ()) or ())
    lead = []
    for t in with_special:  # the body was re-tokenised differently: keep the leading specials
        if t not in specials:
            break
        lead.append(t)
    return lead


def answer_boundary(offsets: Sequence[tuple[int, int]], context: str) -> int:
    """Index of the first answer token in a joint tokenisation of ``context + answer``: the
    first token whose span starts at or after ``len(context)``, or that starts in the
    context's trailing whitespace and reaches into the answer (see :mod:`pytest_unlearn.prompts`)."""
    start = len(context)
    core_end = len(context.rstrip())
    for j, (a, b) in enumerate(offsets):
        if a >= start or (core_end <= a < start < b):
            return j
    return len(offsets)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode(tokenizer, fmt: PromptFormat, parts: Sequence[PromptParts], *, max_length: int,
           sample_names: Sequence[str] | None = None) -> list[Encoded]:
    """Tokenise each sample (context and answer together, see :mod:`pytest_unlearn.prompts`); cut
    prompts from the left (with a warning) to fit ``max_length``.  ``Encoded.truncated``
    says which samples were cut.

    An answer that tokenises to nothing, or that alone does not fit the context,
    raises :class:`MetricError` naming the sample: it cannot be scored, and
    scoring what remains would be a false pass.
    """
    parts = list(parts)
    contexts = [render_context(tokenizer, fmt, p) for p in parts]
    answers = [join_text(tokenizer, fmt, p, c) + p.answer for p, c in zip(parts, contexts)]
    texts = [c + a for c, a in zip(contexts, answers)]
    bodies, offsets = _offsets(tokenizer, texts) if texts else ([], None)
    # chat templates write their own special tokens; other prompts get the tokenizer's BOS
    special = [not (p.templated and fmt.kind == "chat") for p in parts]
    wanted = [t for t, s in zip(texts, special) if s]
    with_special = iter(tokenizer(wanted, add_special_tokens=True)["input_ids"] if wanted else [])
    ctx_only = (tokenizer(contexts, add_special_tokens=False)["input_ids"]
                if offsets is None and contexts else None)
    out: list[Encoded] = []
    n_truncated, first_truncated = 0, ""
    for i, p in enumerate(parts):
        name = sample_names[i] if sample_names is not None else f"sample {i}"
        body = bodies[i]
        lead = _leading_specials(tokenizer, list(next(with_special)), body) if special[i] else []
        if offsets is not None:
            k = answer_boundary(offsets[i], contexts[i])
        else:
            k = _common_prefix(ctx_only[i], body)
        ctx_ids, ans_ids = lead + body[:k], body[k:]
        if not ans_ids:
            absorbed = " (it merges into the prompt's last token)" if p.answer.strip() else ""
            raise MetricError(f"{name}: the answer {p.answer!r} tokenises to nothing{absorbed}; "
                              "it cannot be scored")
        if len(ans_ids) >= max_length:
            raise MetricError(
                f"{name}: the answer is {len(ans_ids)} tokens, longer than the model's context of "
                f"{max_length} tokens; shorten it or split the sample"
            )
        if not ctx_ids:
            raise MetricError(f"{name}: the prompt is empty, so the answer's first token has no context")
        truncated = len(ctx_ids) + len(ans_ids) > max_length
        if truncated:
            ctx_ids = ctx_ids[len(ctx_ids) + len(ans_ids) - max_length:]
            n_truncated += 1
            first_truncated = first_truncated or name
        out.append(Encoded(list(ctx_ids) + list(ans_ids), len(ctx_ids), truncated, contexts[i], answers[i]))
    if n_truncated:
        warnings.warn(TruncationWarning(
            f"{n_truncated} of {len(parts)} prompts were longer than the model's context of "
            f"{max_length} tokens and were cut from the left (first: {first_truncated}); answers are "
            "scored in full, but the model did not see the start of those prompts"
        ), stacklevel=2)
    return out
