"""The :class:`Dataset` (a validated, normalised data set) and the canonical form of its
records, from which its content hash and per-record ids are computed."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from dataclasses import field as _field
from functools import cached_property
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd


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


def _is_null(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


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
