"""Reading forget/retain/holdout data files into a :class:`Dataset`.

Formats, chosen by extension: JSON Lines (``.jsonl``), JSON (``.json``: a list of
records, an object wrapping one list such as ``{"data": [...]}``, or JSON Lines
that happen to be named ``.json``), CSV (``.csv``) and Parquet (``.parquet``,
``.pq``).  Two row shapes:

* **QA** (TOFU style): ``question`` and ``answer`` (non-empty strings); optional
  ``paraphrased_question``, ``paraphrased_answer`` (strings) and
  ``perturbed_answer`` (a list of non-empty strings; in CSV a JSON-encoded list,
  and a single string is taken as a one-element list).
* **Text** (MUSE style): ``text``, optionally split by a ``prompt`` and
  ``completion`` pair; without the pair, :func:`split_text` splits ``text``.
  Nothing is rewritten: the model reads ``prompt + completion`` byte for byte (the
  default split keeps the whitespace, so that is the original ``text``; an explicit pair
  is joined exactly as given, no space inserted: ``"bro"`` + ``"wn fox"`` is read as
  ``"brown fox"``).

Published benchmark files load as they are (see ``docs/benchmarks.md``): a JSON array of
strings (MUSE ``privleak`` / ``raw``) is text rows; MUSE ``verbmem`` rows (``prompt``,
``gt``) take ``gt`` as the completion; RWKU probes (``query``, ``answer``) take ``query`` as
the question.  Any other column names map with ``columns={"question": "query", ...}``
(:func:`parse_columns` reads the ``unlearn_columns`` ini form ``question=query, completion=gt``).
A folder written by ``datasets``' ``save_to_disk`` and a ``datasets.Dataset`` object load
too (``pip install 'pytest-unlearn[datasets]'``; ``datasets`` is imported only then).

A file with ``question`` and ``answer`` columns is QA (even if it also has
``text``); one with ``text``, or with ``prompt`` and ``completion``, is text.
Other columns are kept as they are.  Every problem with a file's content raises
:class:`~pytest_unlearn.errors.DataError` naming the file, the line (JSON Lines,
CSV) or the 0-based record (JSON list, Parquet), what is wrong and how to fix it.
Suspicious but usable data (duplicate records, one-character answers, a column
that looks like a misspelt known one) gives a :class:`DataWarning`.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from dataclasses import field as _field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from . import multiple_choice
from .errors import DataError

__all__ = ["DataWarning", "Dataset", "dataset_from_records", "load_dataset", "parse_columns", "split_text"]

QA_OPTIONAL = ("paraphrased_question", "paraphrased_answer", "perturbed_answer")
QA_FIELDS = ("question", "answer") + QA_OPTIONAL
TEXT_FIELDS = ("text", "prompt", "completion")
KNOWN_FIELDS = QA_FIELDS + TEXT_FIELDS
MAPPABLE_FIELDS = KNOWN_FIELDS + ("choices",)
SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_PROMPT_WORDS = 32
#: columns of published benchmark files read as ours when ours is absent: (our field, theirs,
#: the field that must be present beside it).  MUSE verbmem: prompt/gt; RWKU probes: query/answer.
PUBLISHED_ALIASES = (("completion", "gt", "prompt"), ("question", "query", "answer"))
#: files ``datasets``' ``save_to_disk`` writes into a folder (one split, or a DatasetDict)
DATASETS_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")
DATASETS_EXTRA = "pip install 'pytest-unlearn[datasets]'"
MAX_NESTING = 100  # containers inside a record

Where = Optional[Tuple[str, int]]  # ("line", 7) or ("record", 3): where a record came from


class DataWarning(UserWarning):
    """Data that loads but is probably not what was meant (duplicates, tiny answers)."""


@dataclass(eq=False)
class Dataset:
    """A validated, normalised data set.  Treat ``frame`` as read-only: ``ids`` and
    ``content_hash`` are computed once from it."""

    frame: pd.DataFrame  # normalised, index 0..n-1
    kind: str  # "qa" or "text"
    name: str = "data"  # role: "forget", "retain", "holdout", ...
    source: str = "<memory>"
    # where each row came from ("line 7", "record 3"), for messages; None when unknown
    locations: Optional[list] = _field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frame)

    def records(self) -> list[dict]:
        """The rows as plain Python dicts (nulls as ``None``, numpy values unboxed)."""
        return [{str(k): _plain(v) for k, v in row.items()} for row in self.frame.to_dict("records")]

    @cached_property
    def _canonical(self) -> list[str]:
        return [_canonical_json(record) for record in self.records()]

    @cached_property
    def content_hash(self) -> str:
        """sha256 (hex) of the canonical JSON list of the records: sorted keys, ASCII,
        null fields left out.  The same records read from JSON Lines, CSV or Parquet
        hash the same (value by value: CSV cells are strings)."""
        return hashlib.sha256(("[" + ",".join(self._canonical) + "]").encode()).hexdigest()

    @cached_property
    def ids(self) -> list[str]:
        """Per-record ids from content: the first 12 hex digits of the sha256 of the
        record's canonical JSON; the 2nd, 3rd... copy of a record gets "-2", "-3"..."""
        seen: dict[str, int] = {}
        out = []
        for text in self._canonical:
            digest = hashlib.sha256(text.encode()).hexdigest()[:12]
            seen[digest] = seen.get(digest, 0) + 1
            out.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
        return out

    @property
    def prompts(self) -> list[str]:
        """QA: the questions; text: the prompt parts."""
        return list(self.frame["question" if self.kind == "qa" else "prompt"])

    @property
    def answers(self) -> list[str]:
        """QA: the answers; text: the completion parts (what metrics score)."""
        return list(self.frame["answer" if self.kind == "qa" else "completion"])

    def subset(self, positions: Iterable[int]) -> "Dataset":
        """The rows at ``positions`` (in that order), with the same kind, name and source."""
        positions = list(positions)
        frame = self.frame.iloc[positions].reset_index(drop=True)
        locations = None if self.locations is None else [self.locations[i] for i in positions]
        return Dataset(frame, self.kind, name=self.name, source=self.source, locations=locations)

    def has(self, column: str) -> bool:
        """Whether ``column`` is present and non-null in every row."""
        return column in self.frame.columns and bool(self.frame[column].notna().all())


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


def load_dataset(path, *, name: str | None = None, columns: "Mapping[str, str] | str | None" = None,
                 benchmark: str | None = None) -> Dataset:
    """Read, validate and normalise a data file (see the module docstring).

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
    from .errors import ConfigError

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


# -- reading files ----------------------------------------------------------------------------

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


def _check_file(file: Path, shown: str) -> None:
    if file.is_dir():
        raise DataError("is a directory, not a data file; point to a .jsonl, .json, .csv or "
                        ".parquet file inside it", path=shown)
    if not file.exists():
        hint = ""
        if file.parent.is_dir():
            near = difflib.get_close_matches(file.name, [p.name for p in file.parent.iterdir()], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
        raise DataError(f"file not found (relative paths start from {os.getcwd()}){hint}", path=shown)


def _read_bytes(file: Path, shown: str) -> bytes:
    try:
        return file.read_bytes()
    except PermissionError as exc:
        raise DataError("permission denied; make the file readable (chmod +r) by the user "
                        "running pytest", path=shown) from exc
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", path=shown) from exc


def _read_text(file: Path, shown: str) -> str:
    data = _read_bytes(file, shown)
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte-order mark
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        raise DataError(f"not valid UTF-8 at byte offset {offset} (byte 0x{data[offset]:02x}: "
                        f"{exc.reason}); re-encode the file as UTF-8, e.g. "
                        "`iconv -f latin1 -t utf-8 in.csv > out.csv`",
                        path=shown, line=data.count(b"\n", 0, offset) + 1) from exc


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_jsonl(text: str, shown: str) -> list:
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 is not a line end
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = " (the file looks like a JSON array: name it .json)" if line.lstrip().startswith("[") else ""
            raise _fail(f"invalid JSON: {exc.msg} at column {exc.colno}; each line must hold one "
                        f"JSON object{hint}", shown, ("line", number)) from exc
        except (ValueError, RecursionError) as exc:
            raise _fail(f"invalid JSON: {exc}", shown, ("line", number)) from exc
        rows.append((("line", number), value))
    return rows


def _read_json(text: str, shown: str) -> list:
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # more than one document: JSON Lines
            return _read_jsonl(text, shown)
        raise _fail(f"invalid JSON: {exc.msg} at column {exc.colno}", shown, ("line", exc.lineno)) from exc
    except (ValueError, RecursionError) as exc:
        raise _fail(f"invalid JSON: {exc}", shown) from exc
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(value) == 1 and isinstance(next(iter(value.values())), list):
            value = next(iter(value.values()))
        elif len(lists) == 1:
            value = value[lists[0]]
        elif len(lists) > 1:
            raise _fail(f"the JSON object holds several lists of records ({', '.join(map(repr, lists))}); "
                        "keep one, or write a plain JSON array of records", shown)
        else:  # a single record: legal, but more often a set saved the wrong way
            warnings.warn(f"{shown}: the file holds one JSON object, read as a set of one record; write a "
                          "JSON array of records ([{...}, {...}]) or JSON Lines (.jsonl) for more",
                          DataWarning, stacklevel=3)
            value = [value]
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        value = [{"text": x} for x in value]  # MUSE privleak / raw files: one text per string
    if not isinstance(value, list):
        raise _fail(f"expected a JSON array of records (or an object like {{\"data\": [...]}}), "
                    f"got {_json_type(value)}", shown)
    return [(("record", i), record) for i, record in enumerate(value)]


def _csv_lines(text: str) -> list[tuple[int, int]] | None:
    """(first line, number of fields) of each non-blank CSV row, header included;
    None when the stdlib reader cannot follow the file."""
    reader = csv.reader(io.StringIO(text, newline=""))
    out, previous = [], 0
    try:
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if row:
                out.append((start, len(row)))
    except csv.Error:
        return None
    return out


def _read_csv(text: str, shown: str) -> list:
    if not text.strip():
        return []
    lines = _csv_lines(text)
    for line, fields in (lines or [])[1:]:
        if fields > lines[0][1]:
            raise _fail(f"{fields} fields but the header has {lines[0][1]}; quote values that "
                        'contain commas ("like, this")', shown, ("line", line))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        return []
    except Exception as exc:  # pandas raises several types on malformed CSV
        raise _fail(f"cannot parse as CSV: {exc}", shown) from exc
    # an empty cell is a missing value (as a missing key in JSON); known fields check for it
    records = [{k: (None if v == "" and k not in KNOWN_FIELDS else v) for k, v in record.items()}
               for record in frame.to_dict("records")]
    if lines is not None and len(lines) == len(records) + 1:
        wheres = [("line", line) for line, _ in lines[1:]]
    else:  # assume one line per row after the header
        wheres = [("line", i + 2) for i in range(len(records))]
    return list(zip(wheres, records))


def _read_parquet(file: Path, shown: str) -> list:
    data = _read_bytes(file, shown)
    try:
        records = pd.read_parquet(io.BytesIO(data)).to_dict("records")
    except ImportError as exc:
        raise DataError(f"reading Parquet needs pyarrow: pip install pyarrow ({exc})", path=shown) from exc
    except Exception as exc:  # pyarrow raises many types on corrupt files
        raise DataError(f"cannot read as Parquet: {exc}; check that the file is a complete "
                        "Parquet file", path=shown) from exc
    return [(("record", i), record) for i, record in enumerate(records)]


def _is_hf_dataset(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "datasets" and hasattr(value, "column_names")


def _rows_of_hf(dataset: Any) -> list:
    if not hasattr(dataset, "to_list"):  # a DatasetDict or an IterableDataset
        splits = list(getattr(dataset, "keys", lambda: [])())
        raise DataError(f"expected one split (a datasets.Dataset), got a {type(dataset).__name__}"
                        + (f" with splits {', '.join(map(repr, splits))}: pass one, e.g. ds[{splits[0]!r}]"
                           if splits else ""), path="<datasets>")
    return [(("record", i), record) for i, record in enumerate(dataset.to_list())]


def _read_saved_dataset(folder: Path, shown: str) -> list:
    """The records of a folder written by ``datasets``' ``save_to_disk`` (one split)."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError("is a folder written by datasets' save_to_disk; reading it needs the `datasets` "
                        f"package: {DATASETS_EXTRA} (or pip install datasets)", path=shown) from exc
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise DataError(f"is a DatasetDict with splits {', '.join(map(repr, splits))}; point to one split's "
                        f"folder, e.g. {os.path.join(shown, splits[0] if splits else 'train')}", path=shown)
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises several types on a broken folder
        raise DataError(f"cannot read as a datasets save_to_disk folder: {exc}", path=shown) from exc
    return _rows_of_hf(loaded)


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
        from .presets import check_columns

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


def _is_null(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


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


# -- canonical form ---------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-friendly Python value: numpy unboxed, NaN/NA to None, containers recursed."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if _is_null(value) else value


def _canonical_json(record: dict) -> str:
    kept = {k: v for k, v in record.items() if v is not None}
    return json.dumps(kept, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
