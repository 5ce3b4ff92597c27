"""What one scored sample is made of (:class:`PromptParts`) and the text the model reads: the
rendered context (:func:`render_context`) and what joins it to the answer (:func:`join_text`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from .formats import PLAIN_TEMPLATE, PromptFormat, _apply_template

if TYPE_CHECKING:
    from ..data import Dataset


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


def _chat_messages(fmt: PromptFormat, parts: PromptParts) -> list[dict]:
    messages = []
    system = parts.system if parts.system is not None else fmt.system
    if system:
        messages.append({"role": "system", "content": system})
    for q, a in parts.shots:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": parts.question})
    return messages


def render_context(tokenizer, fmt: PromptFormat, parts: PromptParts) -> str:
    """The text the model reads before the answer."""
    if not parts.templated:
        shots = "".join(f"{q}{a}\n\n" for q, a in parts.shots)
        return shots + parts.question + parts.prefill
    if fmt.kind == "chat":
        text = _apply_template(tokenizer, fmt, _chat_messages(fmt, parts), add_generation_prompt=True)
        return text + parts.prefill
    template = fmt.template if fmt.kind == "format" else PLAIN_TEMPLATE
    blocks = [template.format(question=q) + _join_space(template.format(question=q), a) + a
              for q, a in parts.shots]
    system = parts.system if parts.system is not None else fmt.system
    head = (system + "\n\n") if system else ""
    return head + "".join(b + "\n\n" for b in blocks) + template.format(question=parts.question) + parts.prefill


def _join_space(context: str, answer: str) -> str:
    if not context or not answer or context[-1].isspace() or answer[0].isspace():
        return ""
    return " "


def _chat_join(tokenizer, fmt: PromptFormat, parts: PromptParts, context: str) -> str:
    """What the chat template puts between its generation prompt and the assistant's
    message (whitespace only; ``""`` when it cannot be told)."""
    core = parts.answer.strip()
    if not core or parts.answer[0].isspace():
        return ""
    messages = _chat_messages(fmt, parts) + [{"role": "assistant", "content": parts.answer}]
    try:
        full = _apply_template(tokenizer, fmt, messages, add_generation_prompt=False)
    except Exception:  # a template that refuses a final assistant turn: nothing to learn from
        return ""
    if not isinstance(full, str) or not full.startswith(context):
        return ""
    rest = full[len(context):]
    i = rest.find(core)
    return rest[:i] if i > 0 and rest[:i].isspace() else ""


def join_text(tokenizer, fmt: PromptFormat, parts: PromptParts, context: str) -> str:
    """The text between the rendered context and the answer (see :mod:`pytest_unlearn.prompts`)."""
    if not parts.templated:
        return ""
    if fmt.kind == "chat" and not parts.prefill:
        return _chat_join(tokenizer, fmt, parts, context)
    return _join_space(context, parts.answer)
