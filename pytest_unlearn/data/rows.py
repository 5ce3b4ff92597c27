"""One record's row shape: the fields of QA and text rows, validating and normalising one record
into a row (:func:`_qa_row`, :func:`_text_row`), the default split of a text row
(:func:`split_text`), and how a record's place (a line, a 0-based record) is named in a
:class:`~pytest_unlearn.errors.DataError`."""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from ..errors import DataError
from .dataset import _is_null

QA_OPTIONAL = ("paraphrased_question", "paraphrased_answer", "perturbed_answer")
QA_FIELDS = ("question", "answer") + QA_OPTIONAL
TEXT_FIELDS = ("text", "prompt", "completion")
KNOWN_FIELDS = QA_FIELDS + TEXT_FIELDS
MAPPABLE_FIELDS = KNOWN_FIELDS + ("choices",)
MAX_PROMPT_WORDS = 32
MAX_NESTING = 100  # containers inside a record

Where = Optional[Tuple[str, int]]  # ("line", 7) or ("record", 3): where a record came from


def _fail(message: str, path: str, where: Where = None) -> DataError:
    if where is None:
        return DataError(message, path=path)
    unit, number = where
    if unit == "line":
        return DataError(message, path=path, line=number)
    error = DataError(f"record {number}: {message}", path=path)
    error.row = number
    return error


def _label(where: Where) -> str:
    return f"{where[0]} {where[1]}"


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def split_text(text: str) -> tuple[str, str]:
    """Split a text row into (prompt, completion), the default for text data.

    The text is split into words on whitespace; with ``n`` words the prompt is the
    first ``k = min(32, max(1, n // 2))`` words.  The cut is made at the character
    where word ``k + 1`` starts, so nothing is rewritten: the prompt is
    ``text[:cut]`` with its trailing whitespace (a space, a paragraph break) and the
    completion is ``text[cut:]`` (it starts with a word); ``prompt + completion == text``.
    ``"a b c d"`` gives ``("a b ", "c d")``.
    Raises ``ValueError`` for a text of fewer than 2 words (nothing to score).
    """
    starts = [i for i, ch in enumerate(text) if not ch.isspace() and (i == 0 or text[i - 1].isspace())]
    if len(starts) < 2:
        raise ValueError(f"the text has {len(starts)} word(s); the default split needs at least 2 "
                         "(a prompt and something to score)")
    cut = starts[min(MAX_PROMPT_WORDS, max(1, len(starts) // 2))]
    return text[:cut], text[cut:]


# -- validating one record ------------------------------------------------------------------

def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (checked without recursion, so
    that hashing, which recurses, cannot overflow the stack)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (Mapping, list, tuple, np.ndarray)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, Mapping) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _present(value: Any) -> bool:
    return not _is_null(value) and not (isinstance(value, str) and not value.strip())


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _required_str(record: dict, field: str, path: str, where: Where) -> str:
    if field not in record:
        raise _fail(f"no {field!r} field; add it to this record", path, where)
    value = record[field]
    if _is_null(value):
        raise _fail(f"{field!r} is missing (null); fill it in or remove the record", path, where)
    if not isinstance(value, str):
        raise _fail(f"{field!r} must be a string, got {_json_type(value)} {_show(value)}", path, where)
    if not value.strip():
        raise _fail(f"{field!r} is empty; fill it in or remove the record", path, where)
    return str(value)


def _optional_str(record: dict, field: str, path: str, where: Where) -> str | None:
    value = record.get(field)
    if not _present(value):
        return None
    if not isinstance(value, str):
        raise _fail(f"{field!r} must be a string, got {_json_type(value)} {_show(value)}", path, where)
    return str(value)


def _string_list(record: dict, field: str, path: str, where: Where) -> list[str] | None:
    value = record.get(field)
    if isinstance(value, (np.ndarray, tuple)):
        value = list(value)
    if not isinstance(value, list) and not _present(value):
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if not (stripped.startswith("[") and stripped.endswith("]")):
            return [value]
        try:
            value = json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            raise _fail(f"{field!r} looks like a JSON list but does not parse ({exc}); write it as "
                        'a JSON list of strings, e.g. ["first", "second"]', path, where) from exc
    if not isinstance(value, list):
        raise _fail(f"{field!r} must be a list of strings, got {_json_type(value)} {_show(value)}",
                    path, where)
    if not value:
        raise _fail(f"{field!r} is an empty list; give at least one string or leave it out", path, where)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _fail(f"{field!r} item {i} must be a non-empty string, got {_show(item)}", path, where)
    return [str(item) for item in value]


def _qa_row(record: dict, columns: set, path: str, where: Where) -> dict:
    row = {"question": _required_str(record, "question", path, where),
           "answer": _required_str(record, "answer", path, where)}
    for field in ("paraphrased_question", "paraphrased_answer"):
        if field in columns:
            row[field] = _optional_str(record, field, path, where)
    if "perturbed_answer" in columns:
        row["perturbed_answer"] = _string_list(record, "perturbed_answer", path, where)
    row.update((k, v) for k, v in record.items() if k not in QA_FIELDS)
    return row


def _text_row(record: dict, columns: set, path: str, where: Where) -> dict:
    text = record.get("text")
    has_prompt, has_completion = _present(record.get("prompt")), _present(record.get("completion"))
    if has_prompt and has_completion:
        prompt = _required_str(record, "prompt", path, where)
        completion = _required_str(record, "completion", path, where)
        if not _is_null(text) and not isinstance(text, str):
            raise _fail(f"'text' must be a string, got {_json_type(text)} {_show(text)}", path, where)
    elif has_prompt or has_completion:
        given, other = ("prompt", "completion") if has_prompt else ("completion", "prompt")
        raise _fail(f"has a {given!r} but no {other!r}; give both, or neither to split 'text' by "
                    "the default rule", path, where)
    else:
        if "text" not in record or _is_null(text):
            raise _fail("no 'text' (and no 'prompt'/'completion' pair); add the text", path, where)
        text = _required_str(record, "text", path, where)
        try:
            prompt, completion = split_text(text)
        except ValueError as exc:
            raise _fail(f"{exc}; give a longer 'text' or an explicit 'prompt'/'completion' pair",
                        path, where) from exc
    row = {"text": text if _present(text) else None} if "text" in columns else {}
    row.update(prompt=prompt, completion=completion)
    row.update((k, v) for k, v in record.items() if k not in TEXT_FIELDS)
    return row
