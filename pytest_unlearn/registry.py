"""Name -> object registries (metrics, attacks, methods).

A collision raises; an unknown name raises :class:`UnknownNameError` that
suggests the nearest registered names.

A registry may name an entry-point group (``pytest_unlearn.metrics``,
``pytest_unlearn.attacks``): the entry points of every installed distribution in
that group are loaded once, on the first lookup (never at import, so the pytest
plugin stays light).  An entry point names either an item the registry adopts (a
``Metric``, an ``Attack`` subclass) or a function of no arguments that registers
its items itself (with ``register_metric`` / ``register_attack``).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import RegistrationError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, *, entry_point_group: str | None = None,
                 adopt: Callable[[Any], "tuple[str, T] | None"] | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._adopt = adopt
        self._entry_points_loaded = entry_point_group is None
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T, *, replace: bool = False) -> T:
        key = name.lower()
        if key in self._items and not replace:
            raise RegistrationError(f"{self.kind} {name!r} is already registered")
        self._items[key] = item
        return item

    def registered(self, name: str) -> bool:
        """Whether ``name`` is registered now, without loading entry points."""
        return isinstance(name, str) and name.lower() in self._items

    def load_entry_points(self) -> None:
        """Load the entry points of :attr:`entry_point_group` (once); a failing entry point or a
        name registered twice raises :class:`RegistrationError` naming the distribution."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True  # before loading: an entry point may look names up
        from importlib import metadata

        for ep in metadata.entry_points(group=self.entry_point_group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed distribution"
            where = f"entry point {ep.name!r} ({ep.value}) of {dist} in group {self.entry_point_group!r}"
            try:
                obj = ep.load()
                adopted = self._adopt(obj) if self._adopt is not None else None
                if adopted is not None:
                    self.register(*adopted)
                elif callable(obj):
                    obj()
                else:
                    raise RegistrationError(
                        f"it names a {type(obj).__name__}, neither a {self.kind} nor a function "
                        f"that registers one")
            except Exception as exc:
                raise RegistrationError(f"cannot load the {self.kind} {where}: "
                                        f"{type(exc).__name__}: {exc}") from exc

    def get(self, name: str) -> T:
        self.load_entry_points()
        key = str(name).strip().lower()
        try:
            return self._items[key]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        self.load_entry_points()
        close = difflib.get_close_matches(str(name).lower(), list(self._items), n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        msg += f" (known: {', '.join(sorted(self._items))})"
        return msg

    def __contains__(self, name: object) -> bool:
        self.load_entry_points()
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._items)
