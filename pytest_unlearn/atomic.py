"""Atomic file writes: a temporary file in the same folder, flushed, then moved into place.

Readers (other xdist workers, a later run after Ctrl-C or a killed process) see either
the whole old file or the whole new one, never a partial write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomically(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """``mode`` defaults to what ``open()`` would give (0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomically(path: str | os.PathLike, text: str, *, mode: int | None = None) -> None:
    """``text`` as UTF-8."""
    write_bytes_atomically(path, text.encode("utf-8"), mode=mode)
