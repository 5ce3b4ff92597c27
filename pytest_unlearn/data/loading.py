"""Loading a data set: :func:`load_dataset` (a file, a ``save_to_disk`` folder, a
``datasets.Dataset``) and :func:`dataset_from_records` (in-memory records): read the records
(:mod:`.files`), map the columns (:func:`parse_columns`, the published benchmarks' aliases), tell
the row shape, validate and normalise every record (:mod:`.rows`) and warn about data that loads
but is probably not what was meant (:class:`~pytest_unlearn.data.DataWarning`)."""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .. import multiple_choice
from ..errors import DataError
from .dataset import DataWarning, Dataset
from .files import (DATASETS_MARKERS, SUFFIXES, _check_file, _is_hf_dataset, _read_csv, _read_json, _read_jsonl,
                    _read_parquet, _read_saved_dataset, _read_text, _rows_of_hf)
from .rows import (KNOWN_FIELDS, MAPPABLE_FIELDS, MAX_NESTING, QA_FIELDS, QA_OPTIONAL, TEXT_FIELDS, _fail, _json_type,
                   _label, _nested_deeper_than, _qa_row, _text_row)

#: columns of published benchmark files read as ours when ours is absent: (our field, theirs,
#: the field that must be present beside it).  MUSE verbmem: prompt/gt; RWKU probes: query/answer.
PUBLISHED_ALIASES = (("completion", "gt", "prompt"), ("question", "query", "answer"))


def load_dataset(path, *, name: str | None = None, columns: "Mapping[str, str] | str | None" = None,
                 benchmark: str | None = None) -> Dataset:
    """Read, validate and normalise a data file (see :mod:`pytest_unlearn.data`).

    ``path`` is a data file, a folder written by ``datasets``' ``save_to_disk`` or a
    ``datasets.Dataset`` object.  ``name`` is the set's role ("forget", "retain", ...), used
    in messages.  ``columns`` maps our field names to the file's (``{"question": "query",
    "completion": "gt"}``, or the string ``"question=query, completion=gt"``); a mapped column
    the file does not have is a :class:`DataError` naming the file and the column.
    ``benchmark`` (``tofu`` / ``muse``, see :mod:`~pytest_unlearn.presets`): a column that
    benchmark's files have and this one lacks is a :class:`DataError` naming the column, the
    file and the preset.
    """
    columns = parse_columns(columns)
    if _is_hf_dataset(path):
        shown = "<datasets.Dataset>"
        return _build(_rows_of_hf(path), shown, name, name=name or "data", source=shown, columns=columns,
                      benchmark=benchmark)
    shown = os.fspath(path)
    file = Path(path)
    if file.is_dir() and any((file / m).is_file() for m in DATASETS_MARKERS):
        return _build(_read_saved_dataset(file, shown), shown, name, name=name or "data", source=shown,
                      columns=columns, benchmark=benchmark)
    _check_file(file, shown)
    fmt = SUFFIXES.get(file.suffix.lower())
    if fmt is None:
        raise DataError(f"unsupported file extension {file.suffix or '(none)'!r}; use one of "
                        f"{', '.join(SUFFIXES)} (JSON Lines, JSON, CSV, Parquet)", path=shown)
    if fmt == "parquet":
        rows = _read_parquet(file, shown)
    else:
        text = _read_text(file, shown)
        rows = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}[fmt](text, shown)
    return _build(rows, shown, name, name=name or "data", source=shown, columns=columns,
                      benchmark=benchmark)


def dataset_from_records(records: list[dict] | pd.DataFrame, *, name: str = "data",
                         source: str = "<memory>", columns: "Mapping[str, str] | str | None" = None) -> Dataset:
    """Validate and normalise in-memory records (a list of dicts or a DataFrame);
    errors name ``source`` and the 0-based record.  ``columns`` as in :func:`load_dataset`."""
    if isinstance(records, pd.DataFrame):
        records = records.to_dict("records")
    rows = [(("record", i), rec) for i, rec in enumerate(records)]
    return _build(rows, source, name, name=name, source=source, columns=parse_columns(columns))


def parse_columns(columns: "Mapping[str, str] | str | None") -> dict[str, str]:
    """A column mapping ``{our field: the file's column}`` from a mapping or the ini form
    ``"question=query, completion=gt"`` (commas or newlines between pairs)."""
    from ..errors import ConfigError

    if columns is None:
        return {}
    if isinstance(columns, Mapping):
        pairs = list(columns.items())
    elif isinstance(columns, str):
        pairs = []
        for item in columns.replace("\n", ",").split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise ConfigError(f"unlearn_columns / --unlearn-columns: {item.strip()!r} is not "
                                  "field=column (e.g. 'question=query, completion=gt')")
            ours, theirs = item.split("=", 1)
            pairs.append((ours.strip(), theirs.strip()))
    else:
        raise ConfigError(f"columns= must be a dict such as {{'question': 'query'}} or a string "
                          f"'question=query', got {type(columns).__name__}")
    out: dict[str, str] = {}
    for ours, theirs in pairs:
        if not isinstance(ours, str) or not isinstance(theirs, str) or not ours or not theirs:
            raise ConfigError(f"column mapping {ours!r}={theirs!r}: both sides must be non-empty names")
        if ours not in MAPPABLE_FIELDS:
            raise ConfigError(f"column mapping {ours}={theirs}: {ours!r} is not a field pytest-unlearn reads; "
                              f"map one of {', '.join(MAPPABLE_FIELDS)}")
        out[ours] = theirs
    return out


# -- validation and normalisation -------------------------------------------------------------

def _build(rows: list, path: str, role: str | None, *, name: str, source: str,
           columns: Mapping[str, str] | None = None, benchmark: str | None = None) -> Dataset:
    """Validate ``rows`` ((where, record) pairs), warn about oddities, return the Dataset.
    ``role`` names the set in messages ("the forget set is empty")."""
    if not rows:
        what = f"the {role} set is empty" if role else "the file has no records"
        raise DataError(f"{what}; add at least one record such as "
                        '{"question": "...", "answer": "..."} or {"text": "..."}', path=path)
    records = []
    for where, record in rows:
        if not isinstance(record, Mapping):
            raise _fail(f"expected a record (a JSON object / dict), got {_json_type(record)}", path, where)
        if _nested_deeper_than(record, MAX_NESTING):
            raise _fail(f"a value is nested more than {MAX_NESTING} levels deep; flatten it", path, where)
        records.append({str(k): v for k, v in record.items()})
    records = _map_columns(records, dict(columns or {}), path)
    columns = list(dict.fromkeys(k for record in records for k in record))
    if benchmark:
        from ..presets import check_columns

        check_columns(columns, path, benchmark, role)
    kind = _detect_kind(columns, path)
    make_row = _qa_row if kind == "qa" else _text_row
    if kind == "qa" and multiple_choice.is_multiple_choice_columns(columns):
        make_row = multiple_choice.mc_row  # question, choices, answer as an index (see that module)
    out = [make_row(record, set(columns), path, where) for (where, _), record in zip(rows, records)]
    known = [c for c in (QA_FIELDS if kind == "qa" else TEXT_FIELDS) if c in out[0]]
    kept = list(dict.fromkeys(k for row in out for k in row))  # the rows' fields (a row hook may add some)
    frame = pd.DataFrame(out, columns=known + [c for c in kept if c not in known])
    dataset = Dataset(frame, kind, name=name, source=source, locations=[_label(where) for where, _ in rows])
    for note in _notes(dataset, [where for where, _ in rows], path):
        warnings.warn(note, DataWarning, stacklevel=3)  # at the caller of load_dataset
    return dataset


def _map_columns(records: list[dict], mapping: dict[str, str], path: str) -> list[dict]:
    """Rename the file's columns to ours: ``mapping`` first, then the published aliases
    (:data:`PUBLISHED_ALIASES`) where our field is absent."""
    present = set(k for record in records for k in record)
    for ours, theirs in mapping.items():
        if theirs not in present:
            shown = ", ".join(map(repr, sorted(present)[:20]))
            raise DataError(f"the column mapping {ours}={theirs} names column {theirs!r}, which the file "
                            f"does not have (its columns: {shown}); fix unlearn_columns / columns=", path=path)
        if ours in present and ours != theirs and ours not in mapping.values():
            raise DataError(f"the column mapping {ours}={theirs}: the file has both {ours!r} and {theirs!r}; "
                            f"rename one, or drop the mapping", path=path)
    for ours, theirs, beside in PUBLISHED_ALIASES:
        if ours not in mapping and ours not in present and theirs in present and beside in present \
                and theirs not in mapping.values():
            mapping[ours] = theirs
    if not mapping:
        return records
    sources = set(mapping.values())
    out = []
    for record in records:
        new = {k: v for k, v in record.items() if k not in sources}
        new.update((ours, record[theirs]) for ours, theirs in mapping.items() if theirs in record)
        out.append(new)
    return out


def _detect_kind(columns: list[str], path: str) -> str:
    present = set(columns)
    if {"question", "answer"} <= present:
        return "qa"
    if "text" in present or {"prompt", "completion"} <= present:
        return "text"
    hints = [f"{c!r} -> {m!r}" for c, m in _misspellings(columns)]
    shown = ", ".join(map(repr, columns[:20])) + (", ..." if len(columns) > 20 else "")
    raise DataError(
        f"cannot tell the row shape from the columns found ({shown or 'none'}): a QA file needs "
        f"'question' and 'answer' (optional: {', '.join(QA_OPTIONAL)}); a text file needs 'text', "
        "or 'prompt' and 'completion'"
        + (f". Rename the columns: {', '.join(hints)}" if hints else ""), path=path)


def _misspellings(columns: list[str]) -> list[tuple[str, str]]:
    """(column, known name it resembles) for unknown columns close to a known one."""
    out = []
    for column in columns:
        if column in KNOWN_FIELDS:
            continue
        near = difflib.get_close_matches(column.strip().lower(), KNOWN_FIELDS, n=1, cutoff=0.8)
        if near and near[0] not in columns:
            out.append((column, near[0]))
    return out


def _notes(dataset: Dataset, wheres: list, path: str) -> list[str]:
    """Warnings about data that loads but is probably not what was meant."""
    notes = []
    first: dict[str, Any] = {}
    duplicates = []
    for where, text in zip(wheres, dataset._canonical):
        if text in first:
            duplicates.append((where, first[text]))
        first.setdefault(text, where)
    if duplicates:
        where, original = duplicates[0]
        notes.append(f"{path}: {len(duplicates)} duplicate record(s), the first at {_label(where)} "
                     f"(same as {_label(original)}); each copy gets its own id and counts in every "
                     "metric: remove them if they are not meant")
    short = [] if multiple_choice.is_multiple_choice(dataset) else [  # choices such as "4" are normal
        (where, a) for where, a in zip(wheres, dataset.answers) if len(a.strip()) < 2]
    if short:
        where, answer = short[0]
        notes.append(f"{path}: {len(short)} answer(s) shorter than 2 characters, the first at "
                     f"{_label(where)} ({answer!r}); metrics on such answers are noisy")
    for column, near in _misspellings(list(dataset.frame.columns)):
        notes.append(f"{path}: column {column!r} is not used; did you mean {near!r}?")
    return notes
