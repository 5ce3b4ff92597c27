"""Benchmark presets: ``unlearn_benchmark = tofu | muse``.

A preset sets what a benchmark's own evaluation code does, so that the plugin's scores read
the same text the benchmark's numbers come from.  Every part is a default only: an explicit
``unlearn_prompt``, ``unlearn_system_prompt``, ``unlearn_chat_template_args`` or
``unlearn_max_new_tokens`` wins over it.

* **tofu** (TOFU as OpenUnlearning evaluates it, ``locuslab/open-unlearning``):
  chat models (a tokenizer with a chat template) read the question as the user turn of the
  chat template with the system prompt ``You are a helpful assistant.`` and, for templates that
  print a date, ``date_string = 10 Apr 2025`` (``configs/model/Llama-3.2-1B-Instruct.yaml`` and
  the other instruct models there; a template that refuses a system turn, as Gemma's, gets
  none, as OpenUnlearning's ``gemma-7b-it.yaml``); base models read
  ``Question: {question}\\nAnswer:`` (``configs/model/Llama-2-7b-hf.yaml``, ``phi-1_5.yaml``:
  ``Question: `` ... ``\\n`` ``Answer: ``).  Greedy answers (ROUGE) get 200 new tokens
  (``configs/generation/default.yaml``: ``max_new_tokens: 200``; TOFU's own
  ``config/eval_everything.yaml`` caps prompt + answer at 200 tokens).  The forget file must
  be TOFU's ``forget*_perturbed`` shape (``paraphrased_answer``, ``perturbed_answer``: forget
  quality and the truth ratio read them).
* **muse** (``swj0419/muse_bench``): no chat template.  Text rows (``verbmem/forget.json``'s
  ``prompt``/``gt``, ``privleak`` / ``raw`` texts) are read as given and continued for 128 new
  tokens (VerbMem); QA rows (``knowmem/*_qa.json``) read ``Question: {question}\\nAnswer:``
  and get 32 new tokens (KnowMem).  MUSE's files: ``prompt`` + ``gt``, ``question`` +
  ``answer``, or texts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from .errors import ConfigError, DataError

__all__ = ["PRESETS", "Preset", "get_preset", "check_columns"]


@dataclass(frozen=True)
class Preset:
    name: str
    #: the prompt format for a tokenizer with / without a chat template
    chat_prompt: str
    base_prompt: str
    #: a system prompt for chat models (None: none)
    system_prompt: str | None
    #: chat-template arguments (a JSON object; the user's keys win)
    template_args: dict
    #: new tokens of a greedy answer for QA rows and for text rows (None: the plugin's own budget)
    qa_new_tokens: int | None
    text_new_tokens: int | None
    source: str


PRESETS = {
    "tofu": Preset("tofu", chat_prompt="chat", base_prompt="Question: {question}\nAnswer:",
                   system_prompt="You are a helpful assistant.", template_args={"date_string": "10 Apr 2025"},
                   qa_new_tokens=200, text_new_tokens=200,
                   source="locuslab/open-unlearning configs/model/*.yaml, configs/generation/default.yaml"),
    "muse": Preset("muse", chat_prompt="plain", base_prompt="plain", system_prompt=None, template_args={},
                   qa_new_tokens=32, text_new_tokens=128,
                   source="swj0419/muse_bench (VerbMem 128 new tokens, KnowMem 32)"),
}


def get_preset(name: str | None) -> Preset | None:
    """The preset called ``name`` (case and surrounding space ignored); None for None / ''."""
    if name is None or not str(name).strip() or str(name).strip().lower() == "none":
        return None
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise ConfigError(f"unlearn_benchmark / --unlearn-benchmark must be one of {', '.join(PRESETS)} "
                          f"(or unset), got {name!r}")
    return PRESETS[key]


def normalise(name: str | None) -> str | None:
    preset = get_preset(name)
    return preset.name if preset else None


def prompt_spec(preset: Preset, has_template: bool) -> str:
    return preset.chat_prompt if has_template else preset.base_prompt


def template_args(preset: Preset, user_args: str | None) -> str | None:
    """The preset's chat-template arguments under the user's (a JSON object string or None)."""
    if not preset.template_args:
        return user_args
    merged = dict(preset.template_args)
    if user_args:
        merged.update(json.loads(user_args))
    return json.dumps(merged, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def accepts_system_turn(tokenizer) -> bool:
    """Whether the chat template renders a system turn (Gemma's raises instead)."""
    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                      tokenize=False, add_generation_prompt=True)
    except Exception:
        return False
    return True


def new_tokens(preset: Preset | None, explicit: int | None, templated: Iterable[bool]) -> list[int] | None:
    """Each sample's fixed new-token budget (``explicit`` wins), or None: the plugin's own."""
    flags = list(templated)
    if explicit is not None:
        return [int(explicit)] * len(flags)
    if preset is None or preset.qa_new_tokens is None:
        return None
    return [preset.qa_new_tokens if t else preset.text_new_tokens for t in flags]


# --------------------------------------------------------------- the files a preset expects

_TOFU_FORGET = ("question", "answer", "paraphrased_answer", "perturbed_answer")
_TOFU_OTHER = ("question", "answer")


def check_columns(columns: Iterable[str], path: str, benchmark: str | None, role: str | None) -> None:
    """A DataError naming the column, the file and the preset when a file lacks a column the
    preset ``benchmark`` expects (``columns``: the file's columns after the column mapping)."""
    preset = get_preset(benchmark)
    if preset is None:
        return
    present = set(columns)
    shown = ", ".join(map(repr, sorted(present)[:20])) or "none"
    tail = f"(unlearn_benchmark = {preset.name}); the file has {shown}"
    if preset.name == "tofu":
        if "choices" in present or {"A", "B"} <= present:
            return  # a multiple-choice utility set beside TOFU
        wanted = _TOFU_FORGET if role == "forget" else _TOFU_OTHER
        missing = [c for c in wanted if c not in present]
        if missing:
            what = ("TOFU's forget*_perturbed split" if role == "forget" else "a TOFU split")
            raise DataError(f"column {missing[0]!r} is missing: {what} has {', '.join(map(repr, wanted))} "
                            f"{tail}", path=path)
        return
    # muse: texts, prompt + gt (VerbMem) or question + answer (KnowMem)
    if "text" in present or {"prompt", "completion"} <= present or {"question", "answer"} <= present:
        return
    pairs = (("prompt", "gt", "completion"), ("question", "answer", "answer"))
    for have, want, ours in pairs:
        if have in present and ours not in present:
            raise DataError(f"column {want!r} is missing: MUSE's rows with {have!r} have {want!r} "
                            f"{tail}", path=path)
    for want, ours in (("prompt", "completion"), ("question", "answer")):
        if ours in present or (want == "prompt" and "gt" in present):
            other = "prompt" if want == "prompt" else "question"
            raise DataError(f"column {other!r} is missing: MUSE's rows have 'prompt' and 'gt', 'question' "
                            f"and 'answer', or are texts {tail}", path=path)
    raise DataError(f"no MUSE row shape: MUSE's files have 'prompt' and 'gt' (verbmem), 'question' and "
                    f"'answer' (knowmem) or are a JSON array of texts (privleak, raw) {tail}", path=path)
