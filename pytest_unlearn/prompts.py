"""Prompt building and tokenisation that knows exactly which tokens are the answer.

A sample is turned into :class:`PromptParts` (question, answer and what a prompt
attack may add: in-context shots, a prefilled assistant turn, a system prompt).
:func:`encode` renders the context with the configured :class:`PromptFormat`, joins
context and answer into one text and tokenises that text *once*, as TOFU and
OpenUnlearning do, so the scored tokens are the answer's tokens exactly as the model
reads them in the whole sequence.  Tokenising the answer on its own would differ at
the boundary: a SentencePiece tokenizer with a prepended ``▁`` (Llama-2, Mistral-v0.1
as transformers 4.x loads them) turns ``" Paris"`` into ``▁`` + ``▁Paris``, an extra
token the model never predicts.

**The answer boundary.**  The answer starts at character ``len(context)`` of the joint
text; with a fast tokenizer each token's character span comes from the offset mapping.
The scored tokens are those whose span starts at or after the answer start, plus a token
that starts inside whitespace at the end of the context and reaches into the answer
(SentencePiece and byte-level BPE glue a space onto the following word: ``"A: " + "Paris"``
is read as ``A``, ``:``, ``▁Paris`` and ``▁Paris`` is the answer).  A token that holds
non-space context text and answer text (``"bro" + "wn fox"`` read as ``▁brown``, ``▁fox``)
belongs to the context.  The context ids are everything before the first scored token:
exactly what greedy generation starts from.  Slow (Python) tokenizers have no offsets;
for them the context ids are the longest common prefix of the context's own tokens and
the joint tokens.  Special tokens the tokenizer *appends* (``add_eos_token=True``, a
post-processor adding EOS) are dropped, so EOS never sits between prompt and answer;
special tokens it *prepends* (BOS) are kept.  Nothing the chat template adds after the
answer (end-of-turn, newline) is ever scored.

Formats:

* ``chat``: the tokenizer's chat template (``add_generation_prompt=True``); the
  default when the tokenizer has one.  Extra template arguments and a system prompt
  come from :class:`PromptFormat`; a template that reads the date (``strftime_now``,
  ``date_string``, as Llama-3.x templates do) gets a fixed date
  (:data:`DEFAULT_DATE`, Llama-3.1's own default) so prompts do not change overnight.
* ``plain``: ``"Question: {question}\\nAnswer:"`` (TOFU's plain format).
* any format string containing ``{question}``, e.g. ``"Q: {question}\\nA:"``, used
  exactly as given (a trailing newline or space is kept).

How context and answer are joined:

* text (MUSE-style) rows are never templated and never rewritten: the model reads
  ``prompt + completion`` byte for byte;
* ``plain`` and format strings, and a chat prompt with a prefilled assistant turn: one
  space between the context and the answer when neither supplies whitespace;
* ``chat``: what the template itself puts before the assistant's message (found by
  rendering the conversation with the answer; nothing for ChatML and Llama-3, a space
  for Llama-2's ``[/INST] answer``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

from .errors import ConfigError, MetricError

if TYPE_CHECKING:
    from .data import Dataset

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
DEFAULT_DATE = "2024-07-26"  # Llama-3.1's template default ("26 Jul 2024")
_DATE_HOOKS = ("strftime_now", "date_string")


class TruncationWarning(UserWarning):
    """Prompts were cut from the left to fit the model's context."""


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes the model's input.

    ``template_args`` is the canonical JSON object of extra keyword arguments for the
    chat template (``None``: none); ``date`` (ISO ``YYYY-MM-DD``) is the date a chat
    template that reads the date is rendered with (``None`` when it does not read one).
    All of it is in :attr:`spec`, which reports and cache keys carry.
    """

    kind: str  # "chat" | "plain" | "format"
    template: str | None = None
    system: str | None = None
    template_args: str | None = None
    date: str | None = None

    @property
    def spec(self) -> str:
        out = f"format:{self.template}" if self.kind == "format" else self.kind
        if self.system:
            out += f"|system:{self.system}"
        if self.template_args:
            out += f"|args:{self.template_args}"
        if self.date:
            out += f"|date:{self.date}"
        return out

    def chat_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``apply_chat_template`` besides the messages (the template
        arguments, and ``date_string`` when the date is pinned and the user gave none)."""
        kwargs = json.loads(self.template_args) if self.template_args else {}
        if self.date:
            kwargs.setdefault("date_string", datetime.strptime(self.date, "%Y-%m-%d").strftime("%d %b %Y"))
        return kwargs


# strftime directives a fixed-date ``strftime_now`` answers; "%%" last, as a literal percent
_DIRECTIVES = ("%Y", "%y", "%m", "%d", "%e", "%B", "%b", "%A", "%a", "%j", "%H", "%I", "%M", "%S", "%p",
               "%-d", "%-m", "%%")


@lru_cache(maxsize=64)
def _pinned_template(template: str, date: str) -> str:
    """``template`` with a ``strftime_now`` macro in front that formats ``date`` (noon), so the
    template's own ``strftime_now(...)`` calls (a global reading the clock) see a fixed day.  A
    macro shadows the global; unlike a patched clock it is local to this render and works with
    every transformers version (template arguments cannot carry a function in all of them)."""
    day = datetime.strptime(date, "%Y-%m-%d").replace(hour=12)
    values = {"%-d": str(day.day), "%-m": str(day.month), "%e": f"{day.day:2d}", "%%": "%"}
    chain = "".join(f"|replace({d!r}, {values.get(d) or day.strftime(d)!r})" for d in _DIRECTIVES)
    return "{%- macro strftime_now(format) -%}{{ format" + chain + " }}{%- endmacro -%}" + template


def _apply_template(tokenizer, fmt: PromptFormat, messages: list[dict], *, add_generation_prompt: bool) -> str:
    kwargs = fmt.chat_kwargs()
    if fmt.date:
        template = tokenizer.get_chat_template() if hasattr(tokenizer, "get_chat_template") else \
            tokenizer.chat_template
        if "strftime_now" in template:
            kwargs["chat_template"] = _pinned_template(template, fmt.date)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def parse_template_args(value: str | dict | None, key: str = "unlearn_chat_template_args") -> str | None:
    """The canonical JSON of the chat template's extra arguments (a JSON object), or ``None``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"{key} must be a JSON object such as '{{\"enable_thinking\": false}}'; "
                              f"{value!r} does not parse: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a JSON object such as '{{\"enable_thinking\": false}}', "
                          f"got {type(value).__name__} {value!r}")
    reserved = {"messages", "conversation", "tokenize", "add_generation_prompt"} & set(value)
    if reserved:
        raise ConfigError(f"{key}: {', '.join(sorted(reserved))} is set by pytest-unlearn itself; remove it")
    if not value:
        return None
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must hold JSON values only: {exc}") from None


def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(t) for t in template.values())
    return str(template or "")


def _pinned_date(tokenizer, template_args: str | None) -> str | None:
    """The date a date-reading chat template is rendered with (``date_string`` in the
    template arguments, if given and readable as ``26 Jul 2024`` or ``2024-07-26``)."""
    text = _template_text(tokenizer)
    if not any(hook in text for hook in _DATE_HOOKS):
        return None
    given = json.loads(template_args).get("date_string") if template_args else None
    if isinstance(given, str):
        for fmt in ("%d %b %Y", "%Y-%m-%d", "%d %B %Y"):
            try:
                return datetime.strptime(given.strip(), fmt).strftime("%Y-%m-%d")
            except ValueError:
                continue
    return DEFAULT_DATE


def parse_prompt_format(spec: str | PromptFormat | None, tokenizer=None, *, system: str | None = None,
                        template_args: str | dict | None = None) -> PromptFormat:
    """``None``/``"auto"``: chat when the tokenizer has a chat template, else plain.

    Surrounding whitespace is ignored when recognising ``auto``, ``chat`` and
    ``plain``; a format string is kept exactly (its trailing newline or space is part of
    what the model reads).  ``system`` is a system prompt (a system turn in chat, a
    paragraph before the prompt otherwise); ``template_args`` extra chat-template
    arguments (a dict or a JSON object).
    """
    if isinstance(spec, PromptFormat):
        return spec
    raw = spec if isinstance(spec, str) else ""
    text = raw.strip()
    system = system if system else None
    has_template = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False
    args = parse_template_args(template_args)
    if text == "auto" or not text:
        text = "chat" if has_template else "plain"
    if text == "chat":
        if tokenizer is not None and not has_template:
            raise ConfigError(
                "unlearn_prompt = chat, but the tokenizer has no chat template; "
                "use 'plain' or a format string such as 'Question: {question}\\nAnswer:'"
            )
        date = _pinned_date(tokenizer, args) if tokenizer is not None else None
        return PromptFormat("chat", system=system, template_args=args, date=date)
    if text == "plain":
        return PromptFormat("plain", system=system)
    if "{question}" in raw:
        try:
            raw.format(question="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"unlearn_prompt format string {raw!r} is invalid: {exc}; "
                              "the only field is {question}") from exc
        return PromptFormat("format", template=raw, system=system)
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
    """The text between the rendered context and the answer (see the module docstring)."""
    if not parts.templated:
        return ""
    if fmt.kind == "chat" and not parts.prefill:
        return _chat_join(tokenizer, fmt, parts, context)
    return _join_space(context, parts.answer)
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
        except (NotImplementedError, TypeError, ValueError):
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
    context's trailing whitespace and reaches into the answer (see the module docstring)."""
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
    """Tokenise each sample (context and answer together, see the module docstring); cut
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
