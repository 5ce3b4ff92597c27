"""Prompt building and tokenisation that knows exactly which tokens are the answer.

A sample is turned into :class:`PromptParts` (question, answer and what a prompt
attack may add: in-context shots, a prefilled assistant turn, a system prompt).
:func:`encode` renders the context with the configured :class:`PromptFormat`,
tokenises the context and the answer *separately* and concatenates the ids, so the
scored tokens are exactly the answer's tokens, the context ids are exactly what
greedy generation would start from, and nothing the chat template adds after the
answer (end-of-turn, newline) is ever scored.

Formats:

* ``chat``: the tokenizer's chat template (``add_generation_prompt=True``); the
  default when the tokenizer has one.
* ``plain``: ``"Question: {question}\\nAnswer:"`` (TOFU's plain format).
* any format string containing ``{question}``, e.g. ``"Q: {question}\\nA:"``.

Text (MUSE-style) rows are never templated: the prompt part is the context.
For ``plain`` and format strings a single space is put between the context and the
answer when neither supplies whitespace, and it belongs to the answer's tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

from .errors import ConfigError, MetricError

if TYPE_CHECKING:
    from .data import Dataset

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


class TruncationWarning(UserWarning):
    """Prompts were cut from the left to fit the model's context."""


@dataclass(frozen=True)
class PromptFormat:
    kind: str  # "chat" | "plain" | "format"
    template: str | None = None
    system: str | None = None

    @property
    def spec(self) -> str:
        if self.kind == "format":
            return f"format:{self.template}"
        return self.kind + (f"|system:{self.system}" if self.system else "")


def parse_prompt_format(spec: str | PromptFormat | None, tokenizer=None) -> PromptFormat:
    """``None``/``"auto"``: chat when the tokenizer has a chat template, else plain."""
    if isinstance(spec, PromptFormat):
        return spec
    text = (spec or "auto").strip() if isinstance(spec, str) or spec is None else spec
    has_template = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False
    if text in ("auto", ""):
        return PromptFormat("chat" if has_template else "plain")
    if text == "chat":
        if tokenizer is not None and not has_template:
            raise ConfigError(
                "unlearn_prompt = chat, but the tokenizer has no chat template; "
                "use 'plain' or a format string such as 'Question: {question}\\nAnswer:'"
            )
        return PromptFormat("chat")
    if text == "plain":
        return PromptFormat("plain")
    if "{question}" in text:
        try:
            text.format(question="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"unlearn_prompt format string {text!r} is invalid: {exc}; "
                              "the only field is {question}") from exc
        return PromptFormat("format", template=text)
    raise ConfigError(
        f"unlearn_prompt {text!r} is not 'chat', 'plain' or a format string containing "
        "'{question}' (e.g. 'Question: {question}\\nAnswer:')"
    )


@dataclass(frozen=True)
class PromptParts:
    """What one scored sample is made of; prompt attacks return modified copies."""

    question: str
    answer: str
    shots: tuple[tuple[str, str], ...] = ()
    prefill: str = ""
    system: str | None = None
    templated: bool = True  # False for text (MUSE) rows: the question is raw context

    def with_(self, **changes) -> "PromptParts":
        return replace(self, **changes)


def dataset_parts(dataset: "Dataset", *, answers: Sequence[str] | None = None) -> list[PromptParts]:
    """One :class:`PromptParts` per row (``answers`` overrides the scored answers)."""
    templated = dataset.kind == "qa"
    answers = list(dataset.answers if answers is None else answers)
    return [PromptParts(q, a, templated=templated) for q, a in zip(dataset.prompts, answers)]


def render_context(tokenizer, fmt: PromptFormat, parts: PromptParts) -> str:
    """The text the model reads before the answer."""
    if not parts.templated:
        shots = "".join(f"{q}{a}\n\n" for q, a in parts.shots)
        return shots + parts.question + parts.prefill
    if fmt.kind == "chat":
        messages = []
        system = parts.system if parts.system is not None else fmt.system
        if system:
            messages.append({"role": "system", "content": system})
        for q, a in parts.shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": parts.question})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + parts.prefill
    template = fmt.template if fmt.kind == "format" else PLAIN_TEMPLATE
    blocks = [template.format(question=q) + _join_space(template.format(question=q), a) + a
              for q, a in parts.shots]
    head = (parts.system + "\n\n") if parts.system else ""
    return head + "".join(b + "\n\n" for b in blocks) + template.format(question=parts.question) + parts.prefill


def _join_space(context: str, answer: str) -> str:
    if not context or not answer or context[-1].isspace() or answer[0].isspace():
        return ""
    return " "


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


def encode(tokenizer, fmt: PromptFormat, parts: Sequence[PromptParts], *, max_length: int,
           sample_names: Sequence[str] | None = None) -> list[Encoded]:
    """Tokenise each sample; cut prompts from the left (with a warning) to fit ``max_length``.

    An answer that tokenises to nothing, or that alone does not fit the context,
    raises :class:`MetricError` naming the sample: it cannot be scored, and
    scoring what remains would be a false pass.
    """
    out: list[Encoded] = []
    n_truncated, first_truncated = 0, ""
    for i, p in enumerate(parts):
        name = sample_names[i] if sample_names is not None else f"sample {i}"
        context = render_context(tokenizer, fmt, p)
        chat = p.templated and fmt.kind == "chat"
        answer = p.answer if chat else _join_space(context, p.answer) + p.answer
        ctx_ids = tokenizer(context, add_special_tokens=not chat)["input_ids"]
        ans_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ans_ids:
            raise MetricError(f"{name}: the answer {p.answer!r} tokenises to nothing; it cannot be scored")
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
        out.append(Encoded(list(ctx_ids) + list(ans_ids), len(ctx_ids), truncated, context, answer))
    if n_truncated:
        warnings.warn(TruncationWarning(
            f"{n_truncated} of {len(parts)} prompts were longer than the model's context of "
            f"{max_length} tokens and were cut from the left (first: {first_truncated}); answers are "
            "scored in full, but the model did not see the start of those prompts"
        ), stacklevel=2)
    return out
