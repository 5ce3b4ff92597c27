"""Name -> object registries (metrics, attacks, methods).

A collision raises; an unknown name raises :class:`UnknownNameError` that
suggests the nearest registered names.
"""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T, *, replace: bool = False) -> T:
        key = name.lower()
        if key in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[key] = item
        return item

    def get(self, name: str) -> T:
        key = str(name).strip().lower()
        try:
            return self._items[key]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name).lower(), list(self._items), n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        msg += f" (known: {', '.join(sorted(self._items))})"
        return msg

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
