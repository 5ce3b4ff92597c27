"""The active session: one holder for what the assertions use when not told otherwise,
the suite (or a provider that builds it on first use), the recorder of assertion records,
and the baseline store.

It is a :class:`contextvars.ContextVar` holding a tuple of frames; each frame sets some
of the three parts, and each part is looked up from the newest frame down, so frames may
be entered and left independently (the plugin's session frame outlives a notebook's
``with Suite(...)``).  Scoped use: ``with session.activate(recorder=Recorder()): ...``;
the plugin's configure/unconfigure hooks use :func:`enter` / :func:`leave`.

Light: no numpy, torch or pytest.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

__all__ = ["Frame", "activate", "isolated", "enter", "leave", "leave_part", "current", "frames", "PARTS"]

PARTS = ("suite", "recorder", "store")


class Frame:
    """The parts one activation sets (``None``: not set here, look further down)."""

    __slots__ = PARTS

    def __init__(self, suite: Any = None, recorder: Any = None, store: Any = None):
        self.suite, self.recorder, self.store = suite, recorder, store

    def __repr__(self) -> str:
        return "Frame(" + ", ".join(f"{p}={getattr(self, p)!r}" for p in PARTS if getattr(self, p) is not None) + ")"


_FRAMES: ContextVar[tuple[Frame, ...]] = ContextVar("pytest_unlearn_session", default=())


def current(part: str) -> Any:
    """The newest frame's ``part`` (``"suite"``, ``"recorder"`` or ``"store"``), else None."""
    if part not in PARTS:
        raise KeyError(part)
    for frame in reversed(_FRAMES.get()):
        value = getattr(frame, part)
        if value is not None:
            return value
    return None


def frames() -> tuple[Frame, ...]:
    """The active frames, oldest first (a snapshot)."""
    return _FRAMES.get()


def enter(**parts: Any) -> Frame:
    """Make ``parts`` active until :func:`leave` of the returned frame."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise TypeError(f"unknown session part(s): {', '.join(sorted(unknown))}")
    frame = Frame(**parts)
    _FRAMES.set(_FRAMES.get() + (frame,))
    return frame


def leave(frame: Frame) -> None:
    """Remove ``frame`` (wherever it is; leaving twice is harmless)."""
    frames = _FRAMES.get()
    for i in range(len(frames) - 1, -1, -1):
        if frames[i] is frame:
            _FRAMES.set(frames[:i] + frames[i + 1:])
            return


def leave_part(part: str, value: Any) -> None:
    """Remove the newest frame that set ``part`` to ``value`` (the old ``pop_*`` functions)."""
    frames = _FRAMES.get()
    for i in range(len(frames) - 1, -1, -1):
        if getattr(frames[i], part) is value:
            _FRAMES.set(frames[:i] + frames[i + 1:])
            return


@contextmanager
def activate(**parts: Any) -> Iterator[Frame]:
    """``with activate(suite=..., recorder=..., store=...):`` the parts given are active inside."""
    frame = enter(**parts)
    try:
        yield frame
    finally:
        leave(frame)


@contextmanager
def isolated() -> Iterator[None]:
    """``with isolated():`` nothing is active inside (not even the pytest session's suite)."""
    token = _FRAMES.set(())
    try:
        yield
    finally:
        _FRAMES.reset(token)
