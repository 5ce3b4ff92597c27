"""The errors pytest-unlearn raises.

Every failure the library can foresee is an :class:`UnlearnError` (or a
subclass) with a message that names the file, row or setting involved and what
to do about it.  The pytest plugin turns these into clean test errors instead of
tracebacks from deep inside torch or pandas.  A failed guarantee is not an error
but an :class:`UnlearningAssertionError`, which is an ``AssertionError``.
"""

from __future__ import annotations

import os
from pathlib import Path


class UnlearnError(Exception):
    """Base class of the errors pytest-unlearn raises on purpose."""


class ConfigError(UnlearnError):
    """A setting is missing or invalid (names the ini key and flag to set)."""


class DataError(UnlearnError):
    """A data file is missing, unreadable or malformed.

    The message starts with ``path:line:`` (or ``path: row N:``) when known.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 row: int | None = None):
        self.path = path
        self.line = line
        self.row = row
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            elif row is not None:
                where += f": row {row}"
            where += ": "
        super().__init__(where + message)


class ModelLoadError(UnlearnError):
    """A model could not be loaded (names the path and the reason)."""


class ModelMismatchError(UnlearnError):
    """Two models that must match (tokenizer, architecture, shapes) do not."""


class MetricError(UnlearnError):
    """A metric cannot be computed on this data, or produced NaN/inf."""


class AttackError(UnlearnError):
    """An attack spec is malformed, or an attack could not run."""


class RegistrationError(UnlearnError, ValueError):
    """A metric or attack cannot be registered: its name is taken, its declaration is
    invalid, or an entry point that provides it fails to load."""


class UnknownNameError(UnlearnError, KeyError):
    """A metric, attack or method name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnlearnWarning(UserWarning):
    """Something about an unlearning check the user should know (e.g. an uninformative attack)."""


class VacuousCheckError(ConfigError):
    """``assert_forgotten`` would pass only because the original model already scores within
    the threshold, and ``unlearn_strict_vacuous`` refuses such passes."""


class CacheWarning(UserWarning):
    """The result cache cannot be used (a read-only or blocked folder): the run goes on uncached."""


class UnlearningAssertionError(AssertionError):
    """An unlearning guarantee does not hold: forgotten knowledge leaks,
    or retained knowledge was lost.  ``result`` holds the figures."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


def write_failure(exc: OSError, folder: str | os.PathLike) -> str:
    """Why writing into ``folder`` failed, in words: a file standing where a folder is needed
    is named as such (mkdir's "File exists" / "Not a directory" say neither which nor why)."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            if not path.is_dir():
                return f"{path} is a file, not a folder"
            break
    reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename else reason
