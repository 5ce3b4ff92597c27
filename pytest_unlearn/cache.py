"""A content-addressed result cache: atomic, verified, safe across processes.

Entries are ``.npz`` files (numpy arrays only, loaded with ``allow_pickle=False``)
named by the SHA-256 of everything that produced them.  Each entry stores a
checksum of its arrays; a truncated or corrupted entry is detected, deleted and
recomputed, never trusted.  Writes go to a temporary file in the same directory
and are moved into place with ``os.replace``, so readers (other xdist workers, a
later run after Ctrl-C) see either the whole entry or none.  A cache folder that cannot be
written (read-only, full, or blocked by a file) warns once (:class:`~.errors.CacheWarning`)
and the run goes on uncached.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import write_bytes_atomically
from .errors import CacheWarning, write_failure

_CHECK = "__checksum__"


def cache_key(*parts: Any) -> str:
    """SHA-256 over a canonical JSON of ``parts`` plus the library version."""
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def source_fingerprint(*modules: str, files=()) -> str:
    """SHA-256 (16 hex digits) of the source code of ``modules`` (names inside ``pytest_unlearn``,
    e.g. ``"training"``; a package counts with every ``.py`` file under it) and of ``files``.

    A key part for results cached outside :class:`ResultCache` (the example suites' built
    models): it changes whenever the code that produced them does, so a model trained by older
    code is rebuilt, never reused.  A missing module or file is an error."""
    package = Path(__file__).resolve().parent
    paths: list[Path] = []
    for name in modules:
        folder, single = package / name.replace(".", "/"), package / (name.replace(".", "/") + ".py")
        if folder.is_dir():
            paths += sorted(folder.rglob("*.py"))
        elif single.is_file():
            paths.append(single)
        else:
            raise FileNotFoundError(f"source_fingerprint: no module {name!r} in {package}")
    paths += [Path(f) for f in files]
    digest = hashlib.sha256()
    for path in paths:
        inside = path.resolve().is_relative_to(package)
        digest.update(str(path.resolve().relative_to(package) if inside else path.name).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class ResultCache:
    """``get``/``put`` of dicts of numpy arrays under ``root``; disabled when root is None."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        if self.root is None:
            return None
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            stored = str(arrays.pop(_CHECK))
            if stored != _checksum(arrays):
                raise ValueError("checksum mismatch")
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:  # truncated, corrupted or foreign file: recompute
            try:
                path.unlink()
            except OSError:
                pass
            self.misses += 1
            return None
        self.hits += 1
        return arrays

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        if self.root is None:
            return
        path = self._path(key)
        payload = dict(arrays)
        payload[_CHECK] = np.array(_checksum(arrays))
        buf = io.BytesIO()
        np.savez(buf, **payload)
        try:
            write_bytes_atomically(path, buf.getvalue())
        except OSError as exc:
            root, self.root = self.root, None  # once: every later get/put is a no-op
            warnings.warn(CacheWarning(
                f"cannot write the result cache in {root}: {write_failure(exc, path.parent)}; running without the "
                "cache (make the folder writable, or pass --unlearn-no-cache)"), stacklevel=2)
