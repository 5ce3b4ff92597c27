"""Multiple-choice rows: telling the shape apart, validating and normalising each row (the
row hook of :mod:`pytest_unlearn.data`), and reading a data set's choices and answers for the
metrics.  The row shape is described in :mod:`pytest_unlearn.multiple_choice`."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MetricError

if TYPE_CHECKING:
    from ..data import Dataset
    from ..metrics import Metric

__all__ = ["LETTERS", "MC_FIELDS", "is_multiple_choice_columns", "is_multiple_choice", "mc_row"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_FIELDS = ("choices", "answer_index", "subject")


def is_multiple_choice_columns(columns) -> bool:
    """Whether a file's columns (the union over its records) are the multiple-choice shape."""
    present = set(columns)
    return {"question", "answer"} <= present and ("choices" in present or {"A", "B"} <= present)


def is_multiple_choice(dataset: "Dataset") -> bool:
    """Whether ``dataset`` holds multiple-choice rows (see the module docstring)."""
    return dataset.kind == "qa" and "choices" in dataset.frame.columns and "answer_index" in dataset.frame.columns


def _letter_columns(columns) -> list[str]:
    out = []
    for letter in LETTERS:
        if letter not in columns:
            break
        out.append(letter)
    return out


def _choices(record: dict, columns, path: str, where) -> list[str]:
    from ..data import _fail, _is_null, _present, _show

    if "choices" in columns:
        value = record.get("choices")
        if isinstance(value, (np.ndarray, tuple)):
            value = list(value)
        if not isinstance(value, list) and _is_null(value):
            raise _fail("no 'choices' in this record, but other records have them: the file mixes "
                        "multiple-choice rows with other row shapes; give every record 'choices' or "
                        "split the file", path, where)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise _fail(f"'choices' must be a list of strings (in CSV a JSON list such as "
                            f'["Paris", "Rome"]), got {_show(value)}', path, where) from exc
        if not isinstance(value, list):
            raise _fail(f"'choices' must be a list of strings, got {_show(value)}", path, where)
    else:
        letters = _letter_columns(columns)
        value = [record.get(c) for c in letters]
        while value and not _present(value[-1]):  # a 4-choice row in a file that also has 'E'
            value.pop()
        if not value:
            raise _fail(f"no choices in columns {', '.join(letters)}, but other records have them: the "
                        "file mixes multiple-choice rows with other row shapes; split the file", path, where)
        for letter, item in zip(letters, value):
            if not _present(item):
                raise _fail(f"choice column {letter!r} is empty although a later letter has a choice; "
                            "fill it in", path, where)
    if len(value) < 2:
        raise _fail(f"'choices' has {len(value)} item(s); a multiple-choice row needs at least 2", path, where)
    if len(value) > len(LETTERS):
        raise _fail(f"'choices' has {len(value)} items; at most {len(LETTERS)} (A-Z) are supported",
                    path, where)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _fail(f"choice {i} ({LETTERS[i]}) must be a non-empty string, got {_show(item)}", path, where)
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        key = item.strip()
        if key in seen:
            raise _fail(f"choices {seen[key]} ({LETTERS[seen[key]]}) and {i} ({LETTERS[i]}) are the same "
                        f"text {_show(key)}; choices must be distinct", path, where)
        seen[key] = i
    return [str(item) for item in value]


def _answer_index(value: Any, choices: list[str], path: str, where) -> int:
    from ..data import _fail, _is_null, _show

    k = len(choices)
    span = f"0-{k - 1}, a letter A-{LETTERS[k - 1]} or one of the choices' texts"
    if _is_null(value) or (isinstance(value, str) and not value.strip()):
        raise _fail(f"'answer' is missing; give the correct choice as {span}", path, where)
    if isinstance(value, (bool, np.bool_)):
        raise _fail(f"'answer' must be an index, a letter or a choice's text, got {value!r}", path, where)
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float):
        if not value.is_integer():
            raise _fail(f"'answer' {value!r} is not a whole number; give {span}", path, where)
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            value = int(text)
        elif len(text) == 1 and text.upper() in LETTERS:
            index = LETTERS.index(text.upper())
            if index >= k:
                raise _fail(f"'answer' is the letter {text!r}, but the row has only {k} choices "
                            f"(A-{LETTERS[k - 1]})", path, where)
            return index
        else:
            matches = [i for i, c in enumerate(choices) if c.strip() == text]
            if len(matches) == 1:
                return matches[0]
            raise _fail(f"'answer' {_show(value)} is not an index, a letter or one of the choices "
                        f"({', '.join(map(_show, choices))}); give {span}", path, where)
    if not isinstance(value, int):
        raise _fail(f"'answer' must be an index, a letter or a choice's text, got {_show(value)}", path, where)
    if not 0 <= value < k:
        raise _fail(f"'answer' index {value} is out of range for {k} choices (0-based: {span})", path, where)
    return int(value)


def mc_row(record: dict, columns, path: str, where) -> dict:
    """One validated, normalised multiple-choice row (the row hook of :mod:`pytest_unlearn.data`)."""
    from ..data import QA_FIELDS, _optional_str, _required_str

    question = _required_str(record, "question", path, where)
    choices = _choices(record, columns, path, where)
    index = _answer_index(record.get("answer"), choices, path, where)
    row = {"question": question, "answer": choices[index]}
    for field in ("paraphrased_question", "paraphrased_answer"):
        if field in columns:
            row[field] = _optional_str(record, field, path, where)
    row["choices"] = choices
    row["answer_index"] = index
    if "subject" in columns:
        row["subject"] = _optional_str(record, "subject", path, where)
    letters = set() if "choices" in columns else set(_letter_columns(columns))
    skip = set(QA_FIELDS) | set(MC_FIELDS) | letters
    row.update((k, v) for k, v in record.items() if k not in skip)
    return row



def _rows(dataset: "Dataset", metric: "Metric") -> tuple[list[list[str]], list[int], list]:
    if not is_multiple_choice(dataset):
        raise MetricError(f"{dataset.source}: {metric.name} needs multiple-choice rows ('question', "
                          "'choices', 'answer' as an index, a letter or the choice's text); this data "
                          "has none")
    frame = dataset.frame
    subjects = list(frame["subject"]) if "subject" in frame.columns else [None] * len(frame)
    return [list(c) for c in frame["choices"]], [int(a) for a in frame["answer_index"]], subjects


