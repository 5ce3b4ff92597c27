"""The result cache under sharded evaluation (``torchrun``): rank 0 alone reads and writes it,
and what it read reaches every rank (see :mod:`pytest_unlearn.distributed`).  Importing this
module imports neither torch nor numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import distributed

if TYPE_CHECKING:
    import numpy as np

    from .cache import ResultCache


class SharedCache:
    """A :class:`~pytest_unlearn.cache.ResultCache` as every rank sees it under sharding: rank 0
    alone reads and writes the entries; what rank 0 read (an entry or a miss) reaches every
    rank through one collective per lookup, so all ranks take the same branch.  Outside
    sharding it behaves as the wrapped cache; anything else is the wrapped cache's."""

    def __init__(self, inner: "ResultCache"):
        self.inner = inner

    def __getattr__(self, name: str):  # root, hits, misses, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def enabled(self) -> bool:
        return bool(getattr(self.inner, "enabled", True))

    def get(self, key: str) -> "dict[str, np.ndarray] | None":
        if not self.enabled:  # the same on every rank: one cache folder, one setting
            return None
        if not distributed.active():
            return self.inner.get(key)
        mine = self.inner.get(key) if distributed.rank() == 0 else None
        entry = distributed.exchange(f"cache lookup {key[:16]}", mine)[0]
        if distributed.rank() != 0:
            name = "misses" if entry is None else "hits"
            if isinstance(getattr(self.inner, name, None), int):
                setattr(self.inner, name, getattr(self.inner, name) + 1)
        return entry

    def put(self, key: str, arrays: "dict[str, np.ndarray]") -> None:
        if not distributed.active() or distributed.rank() == 0:
            self.inner.put(key, arrays)

    def __repr__(self) -> str:
        return f"SharedCache({self.inner!r})"


def shared_cache(cache: "ResultCache") -> "ResultCache | SharedCache":
    """``cache`` as a :class:`SharedCache` (unchanged when it already is one, or None)."""
    return cache if cache is None or isinstance(cache, SharedCache) else SharedCache(cache)
