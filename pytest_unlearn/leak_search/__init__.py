"""Property-based leak search: hypothesis looks for the prompt that still extracts a forgotten fact.

* :mod:`.prompt_edits`: prompt transformations (lists of small edit steps: casing, punctuation,
  surrounding text, paraphrase rules, word noise, prefill, jailbreak templates, role-play
  wrappers, in-context shots) and the hypothesis strategies that build them
  (:func:`transformations`, :func:`edits`).
* :mod:`.search`: :func:`find_leak` runs hypothesis per sample over batches of candidate
  transformations, scores each batch in one forward pass and shrinks a leak to its simplest form
  (the search on one sample: :mod:`.sample_search`; what was found: :mod:`.result`).
* :mod:`.assertion`: :func:`assert_no_leak_found`, the release gate.

Needs ``hypothesis`` (``pip install hypothesis``).  See ``docs/leak-search.md``.
"""

from __future__ import annotations

from .assertion import assert_no_leak_found, leak_message
from .prompt_edits import (EDIT_KINDS, ROLEPLAY_WRAPPERS, Edit, EditEnv, Transformation, edits,
                    transformations)
from .search import LeakSearchResult, SampleSearch, find_leak, leak_database_root

__all__ = ["EDIT_KINDS", "ROLEPLAY_WRAPPERS", "Edit", "EditEnv", "LeakSearchResult", "SampleSearch",
           "Transformation", "assert_no_leak_found", "edits", "find_leak", "leak_database_root",
           "leak_message", "transformations"]
