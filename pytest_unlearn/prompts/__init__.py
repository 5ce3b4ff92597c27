"""Prompt building and tokenisation that knows exactly which tokens are the answer.

A sample is turned into :class:`PromptParts` (question, answer and what a prompt
attack may add: in-context shots, a prefilled assistant turn, a system prompt).
:func:`encode` renders the context with the configured :class:`PromptFormat`, joins
context and answer into one text and tokenises that text *once*, as TOFU and
OpenUnlearning do, so the scored tokens are the answer's tokens exactly as the model
reads them in the whole sequence.  Tokenising the answer on its own would differ at
the boundary: a SentencePiece tokenizer with a prepended ``▁`` (Llama-2, Mistral-v0.1
as transformers 4.x loads them) turns ``" Paris"`` into ``▁`` + ``▁Paris``, an extra
token the model never predicts.

**The answer boundary.**  The answer starts at character ``len(context)`` of the joint
text; with a fast tokenizer each token's character span comes from the offset mapping.
The scored tokens are those whose span starts at or after the answer start, plus a token
that starts inside whitespace at the end of the context and reaches into the answer
(SentencePiece and byte-level BPE glue a space onto the following word: ``"A: " + "Paris"``
is read as ``A``, ``:``, ``▁Paris`` and ``▁Paris`` is the answer).  A token that holds
non-space context text and answer text (``"bro" + "wn fox"`` read as ``▁brown``, ``▁fox``)
belongs to the context.  The context ids are everything before the first scored token:
exactly what greedy generation starts from.  Slow (Python) tokenizers have no offsets;
for them the context ids are the longest common prefix of the context's own tokens and
the joint tokens.  Special tokens the tokenizer *appends* (``add_eos_token=True``, a
post-processor adding EOS) are dropped, so EOS never sits between prompt and answer;
special tokens it *prepends* (BOS) are kept.  Nothing the chat template adds after the
answer (end-of-turn, newline) is ever scored.

Formats:

* ``chat``: the tokenizer's chat template (``add_generation_prompt=True``); the
  default when the tokenizer has one.  Extra template arguments and a system prompt
  come from :class:`PromptFormat`; a template that reads the date (``strftime_now``,
  ``date_string``, as Llama-3.x templates do) gets a fixed date
  (:data:`DEFAULT_DATE`, Llama-3.1's own default) so prompts do not change overnight.
* ``plain``: ``"Question: {question}\\nAnswer:"`` (TOFU's plain format).
* any format string containing ``{question}``, e.g. ``"Q: {question}\\nA:"``, used
  exactly as given (a trailing newline or space is kept).

How context and answer are joined:

* text (MUSE-style) rows are never templated and never rewritten: the model reads
  ``prompt + completion`` byte for byte;
* ``plain`` and format strings, and a chat prompt with a prefilled assistant turn: one
  space between the context and the answer when neither supplies whitespace;
* ``chat``: what the template itself puts before the assistant's message (found by
  rendering the conversation with the answer; nothing for ChatML and Llama-3, a space
  for Llama-2's ``[/INST] answer``).

The pieces: :mod:`.formats` (:class:`PromptFormat`, :func:`parse_prompt_format`, the pinned
date), :mod:`.rendering` (:class:`PromptParts`, :func:`render_context`, :func:`join_text`) and
:mod:`.encoding` (:func:`encode`, :func:`answer_boundary`).  Every name is importable from here,
as before (``from pytest_unlearn.prompts import encode``).  Importing it imports no torch.
"""

from __future__ import annotations

from .encoding import Encoded, TruncationWarning, answer_boundary, encode
from .formats import DEFAULT_DATE, PLAIN_TEMPLATE, PromptFormat, parse_prompt_format, parse_template_args
from .rendering import PromptParts, dataset_parts, join_text, render_context

__all__ = ["DEFAULT_DATE", "PLAIN_TEMPLATE", "Encoded", "PromptFormat", "PromptParts", "TruncationWarning",
           "answer_boundary", "dataset_parts", "encode", "join_text", "parse_prompt_format", "parse_template_args",
           "render_context"]
