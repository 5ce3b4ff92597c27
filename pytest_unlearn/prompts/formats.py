"""Prompt formats: :class:`PromptFormat` (``chat``, ``plain`` or a format string, with a system
prompt and the chat template's extra arguments), :func:`parse_prompt_format`,
:func:`parse_template_args`, and applying a chat template with a pinned date
(:data:`DEFAULT_DATE`) so that prompts do not change overnight."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..errors import ConfigError

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
DEFAULT_DATE = "2024-07-26"  # Llama-3.1's template default ("26 Jul 2024")
_DATE_HOOKS = ("strftime_now", "date_string")


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
