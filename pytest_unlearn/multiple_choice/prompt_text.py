"""The prompt texts of lm-evaluation-harness's multiple-choice tasks: the zero-shot letter
prompt, the few-shot blocks, the continuation prompt of ``mc_acc_text``, and the prompt format
they are rendered in (the chat template, or lm-eval's text verbatim)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Sequence

from .rows import LETTERS

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import ModelHandle
    from ..prompts import PromptParts
    from ..scoring import Scorer

__all__ = ["LETTER_HEAD", "TEXT_HEAD", "letter_prompt", "letter_block", "fewshot_shots", "text_prompt"]

LETTER_HEAD = "The following are multiple choice questions (with answers)"
TEXT_HEAD = "The following are questions (with answers)"


def _head(start: str, subject: Any) -> str:
    if isinstance(subject, str) and subject.strip():
        return f"{start} about {subject.strip().replace('_', ' ')}.\n\n"
    return f"{start}.\n\n"


def letter_prompt(question: str, choices: Sequence[str], subject: str | None = None) -> str:
    """lm-eval's zero-shot MMLU/WMDP prompt, ending in ``Answer:``."""
    lines = [question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)] + ["Answer:"]
    return _head(LETTER_HEAD, subject) + "\n".join(lines)


def letter_block(question: str, choices: Sequence[str]) -> str:
    """One question as lm-eval's MMLU block, ending in ``Answer:`` (no description line)."""
    return "\n".join([question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)] + ["Answer:"])


def fewshot_shots(dataset: "Dataset", rows: Sequence[int]) -> tuple[tuple[str, str], ...]:
    """Solved multiple-choice rows as lm-eval's few-shot examples: (the MMLU block ending in
    ``Answer:``, the correct letter)."""
    frame = dataset.frame
    return tuple((letter_block(frame["question"].iloc[j], list(frame["choices"].iloc[j])),
                  LETTERS[int(frame["answer_index"].iloc[j])]) for j in rows)


def _letter_shots(shots) -> bool:
    return bool(shots) and all(a in LETTERS and len(a) == 1 and q.endswith("\nAnswer:") for q, a in shots)


def _with_fewshot(part: "PromptParts", question: str, choices, subject, answer: int, chat: bool) -> "PromptParts":
    """The letter prompt of ``question`` after the in-context shots of ``part`` in lm-eval's
    few-shot format: the description line once, then each shot's block and ``" B"``, a blank line
    between them, then the question's block (``fewshot_delimiter = "\n\n"``,
    ``target_delimiter = " "``).  Under a chat template the shots stay user/assistant turns
    (lm-eval's ``fewshot_as_multiturn``) and the description opens the first user turn."""
    if not _letter_shots(part.shots):
        return part.with_(question=letter_prompt(question, choices, subject), answer=LETTERS[answer])
    head = _head(LETTER_HEAD, subject)
    block = letter_block(question, choices)
    if chat:
        shots = ((head + part.shots[0][0], part.shots[0][1]),) + tuple(part.shots[1:])
        return part.with_(question=block, answer=LETTERS[answer], shots=shots)
    text = head + "".join(f"{q} {a}\n\n" for q, a in part.shots) + block
    return part.with_(question=text, answer=LETTERS[answer], shots=())


def text_prompt(question: str, subject: str | None = None) -> str:
    """lm-eval's ``mmlu_continuation`` prompt, ending in ``Answer:`` (choices follow after a space)."""
    return _head(TEXT_HEAD, subject) + f"Question: {question.strip()}\nAnswer:"


def _mc_format(fmt):
    """The prompt format for multiple-choice prompts: the chat template as configured; otherwise
    lm-eval's text verbatim (a ``plain`` or custom format string is not wrapped around it)."""
    from ..prompts import PromptFormat

    return fmt if fmt.kind == "chat" else PromptFormat("format", template="{question}", system=fmt.system)


def _scorer_for(scorer: "Scorer", handle: "ModelHandle") -> "Scorer":
    """A copy of ``scorer`` (same cache and cost counters) with the multiple-choice prompt format."""
    sub = copy.copy(scorer)
    sub.prompt = _mc_format(scorer.prompt_format(handle))
    return sub
