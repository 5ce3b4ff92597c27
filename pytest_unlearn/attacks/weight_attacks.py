"""Weight attacks: change the weights a little and see whether the knowledge comes back.

* ``quantize`` (:mod:`.quantize`): quantize-dequantize every ``Linear`` weight of the decoder
  layers (embeddings and the LM head stay, unless ``include_head``), score, restore.
* ``relearn`` (:mod:`.relearn`): fine-tune on some forget facts and score the *other*,
  held-out ones (k-fold, so every sample is scored exactly once), or fine-tune on the retain
  set / a related data file and score everything.

Both attacks work on the model in place and put every changed tensor back bit for bit
afterwards (:class:`~.snapshot.WeightSnapshot`: a snapshot of the changed parameters in CPU
memory; nothing is reloaded from disk), so the handle passed in is unchanged when ``run``
returns, even on an error.  The attacked weights are scored under a derived handle whose
fingerprint (:func:`~.snapshot.derived_fingerprint`) hashes the model's fingerprint, the
attack spec, the fold, the seed and the training data, so the scorer's cache never mixes
them up with the clean model.  Outcomes are kept in the result cache and, within a session,
in an in-memory :class:`~.session_memo.AttackMemo` that also keeps relearning's trained
weights per fold (:mod:`.session_memo`).

Under ``torchrun`` (sharded evaluation, :mod:`~pytest_unlearn.distributed`) rank 0 alone
quantizes or trains, and every rank receives rank 0's changed tensors (all the quantized
weights; a fold's trained parameters, or only its LoRA adapters) before scoring, so the
gathered scores come from one and the same attacked model.

This module gathers their names, importable from here as before.
"""

from __future__ import annotations

from .quantize import NF4_BLOCK, NF4_CODE, Quantize, nf4_quantize, quantizable_weights, rtn_quantize
from .relearn import DATA_SUFFIXES, LORA_AUTO_PARAMS, Relearn, as_lora, as_relearn_source, forget_folds, train_answers
from .session_memo import (_MEMOS, MEMO_FRACTION, AttackMemo, _cached, _outcome_key,  # noqa: F401  as before
                           _store, memo_for, release_memo)
from .snapshot import WeightSnapshot, derived_fingerprint

__all__ = ["DATA_SUFFIXES", "LORA_AUTO_PARAMS", "MEMO_FRACTION", "NF4_BLOCK", "NF4_CODE", "AttackMemo", "Quantize",
           "Relearn", "WeightSnapshot", "as_lora", "as_relearn_source", "derived_fingerprint", "forget_folds",
           "memo_for", "nf4_quantize", "quantizable_weights", "release_memo", "rtn_quantize", "train_answers"]
