"""Reading data files into ``(where, record)`` pairs: JSON Lines, JSON, CSV and Parquet files, a
folder written by ``datasets``' ``save_to_disk`` and a ``datasets.Dataset`` object.  Only the
file's own syntax is checked here; the records are validated by :mod:`.loading` and :mod:`.rows`."""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DataError
from .dataset import DataWarning
from .rows import KNOWN_FIELDS, _fail, _json_type

SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: files ``datasets``' ``save_to_disk`` writes into a folder (one split, or a DatasetDict)
DATASETS_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")
DATASETS_EXTRA = "pip install 'pytest-unlearn[datasets]'"


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
