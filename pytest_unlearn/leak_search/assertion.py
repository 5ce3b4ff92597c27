"""``assert_no_leak_found`` lives with the other gates (:mod:`pytest_unlearn.gates.leak`)."""

from __future__ import annotations

from ..gates.leak import LINE_LIMIT, assert_no_leak_found, leak_message

__all__ = ["assert_no_leak_found", "leak_message", "LINE_LIMIT"]
