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

The pieces: :mod:`.loading` (:func:`load_dataset`, :func:`dataset_from_records`,
:func:`parse_columns`: columns, row shape, warnings), :mod:`.files` (reading each file format),
:mod:`.rows` (the QA and text row shapes: validating one record, :func:`split_text`) and
:mod:`.dataset` (:class:`Dataset` and the canonical form of its records).  Every name is
importable from here, as before (``from pytest_unlearn.data import load_dataset``).
"""

from __future__ import annotations

from .dataset import DataWarning, Dataset, _is_null
from .files import DATASETS_EXTRA, DATASETS_MARKERS, SUFFIXES
from .loading import PUBLISHED_ALIASES, dataset_from_records, load_dataset, parse_columns
from .rows import (KNOWN_FIELDS, MAPPABLE_FIELDS, MAX_NESTING, MAX_PROMPT_WORDS, QA_FIELDS, QA_OPTIONAL, TEXT_FIELDS,
                   Where, _fail, _optional_str, _present, _required_str, _show, split_text)

__all__ = ["DataWarning", "Dataset", "dataset_from_records", "load_dataset", "parse_columns", "split_text"]
