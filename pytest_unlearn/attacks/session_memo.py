"""Where weight-attack outcomes are kept: the session memo and the result cache.

When ``ctx.cache`` is set the whole outcome of a weight attack is cached under its
ingredients (:func:`_outcome_key`: the attack spec and version, the seed, the model's
fingerprint, the data, metric and prompt format, batch size, device and dtype), and a
repeated run trains nothing.

Within a session (one :class:`~pytest_unlearn.scoring.Scorer`, so one suite) an in-memory
:class:`AttackMemo` goes further, with or without the result cache:

* every outcome is kept by the same key as the result cache, so repeating an assertion
  neither trains nor scores again (also under ``--unlearn-no-cache``);
* relearning's *training outcome* is kept per fold, keyed by the model's fingerprint, the
  attack spec and version, the seed, the fold's training data, the prompt format, device and
  dtype, but **not the metric**: switching an assertion from ``es`` to ``prob``, scoring a
  control, or generating for a failure message applies the kept weights instead of training
  again.  What is kept is the trained tensors themselves, on the CPU: for LoRA (the default
  from 1B parameters) only the adapters (about 0.3% of the weights, ~40 MB at 7B per
  fold); for full fine-tuning every floating-point parameter (one model's weights per fold).
  Kept weights are capped at :data:`MEMO_FRACTION` of the host's memory; a fold over the cap is
  not kept (and is trained again when needed), which the outcome's notes say.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..cache import cache_key
from .base import Attack, AttackContext, AttackOutcome

if TYPE_CHECKING:
    import torch

MEMO_FRACTION = 0.25  # share of the host's memory that kept fold weights may take


def _outcome_key(attack: Attack, metric, model, data, ctx, *extra) -> str:
    sc = ctx.scorer
    return cache_key("attack-outcome", attack.spec, getattr(attack, "version", ""), int(ctx.seed),
                     model.fingerprint, data.content_hash, metric.name, sc.prompt_format(model).spec,
                     sc.batch_size, str(model.device.type), str(model.dtype), *extra)


def _host_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 16 GiB
        return 16 * 2**30


class AttackMemo:
    """Weight-attack results kept in memory for one session (see the module docstring).

    ``outcomes``: attack outcomes by outcome key (metric included); ``trained``: per relearn
    fold, the trained tensors (CPU) by name, keyed without the metric.  ``trainings`` counts
    the folds trained, ``applied`` the folds served from the memo.  ``budget`` caps the
    bytes of kept tensors (default :data:`MEMO_FRACTION` of the host's memory).
    """

    def __init__(self, budget: int | None = None):
        self.budget = int(budget) if budget is not None else int(MEMO_FRACTION * _host_memory_bytes())
        self.outcomes: dict[str, AttackOutcome] = {}
        self.trained: dict[str, dict[str, "torch.Tensor"]] = {}
        self.bytes = 0
        self.trainings = 0
        self.applied = 0
        self.not_kept = 0

    def outcome(self, key: str) -> AttackOutcome | None:
        hit = self.outcomes.get(key)
        if hit is None:
            return None
        return AttackOutcome(np.array(hit.values, dtype=np.float64, copy=True),
                             {"training_steps": 0, "memoised": True}, list(hit.details or []) or None,
                             None, list(hit.notes), excluded=hit.excluded)

    def keep_outcome(self, key: str, outcome: AttackOutcome) -> None:
        self.outcomes[key] = AttackOutcome(np.array(outcome.values, dtype=np.float64, copy=True), {},
                                           list(outcome.details or []) or None, None, list(outcome.notes),
                                           excluded=outcome.excluded)

    def keep_weights(self, key: str, named: Sequence[tuple[str, "torch.Tensor"]]) -> bool:
        """Keep CPU copies of ``named`` tensors under ``key``, unless over the budget."""
        size = sum(t.numel() * t.element_size() for _, t in named)
        if self.bytes + size > self.budget:
            self.not_kept += 1
            return False
        self.trained[key] = {n: t.detach().to("cpu", copy=True) for n, t in named}
        self.bytes += size
        return True

    def clear(self) -> None:
        self.outcomes.clear()
        self.trained.clear()
        self.bytes = 0


_MEMOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def memo_for(scorer) -> AttackMemo:
    """The :class:`AttackMemo` of a session: one per :class:`~pytest_unlearn.scoring.Scorer`
    (a suite has one scorer), created on first use and freed with the scorer."""
    memo = _MEMOS.get(scorer)
    if memo is None:
        memo = _MEMOS[scorer] = AttackMemo()
    return memo


def release_memo(scorer) -> None:
    """Drop the session memo of ``scorer`` (its kept fold weights)."""
    memo = _MEMOS.pop(scorer, None)
    if memo is not None:
        memo.clear()


def _cached(ctx: AttackContext, key: str) -> AttackOutcome | None:
    hit = memo_for(ctx.scorer).outcome(key)
    if hit is not None:
        return hit
    if ctx.cache is None or not ctx.cache.enabled:
        return None
    hit = ctx.cache.get(key)
    if hit is None:
        return None
    excluded = hit.get("excluded")
    return AttackOutcome(np.asarray(hit["values"], dtype=np.float64), {"training_steps": 0, "cached": True},
                         [str(d) for d in hit["details"]], None,
                         [str(n) for n in hit["notes"] if str(n)] + ["result read from the attack cache"],
                         excluded=int(excluded[0]) if excluded is not None and len(excluded) else 0)


def _store(ctx: AttackContext, key: str, outcome: AttackOutcome) -> None:
    memo_for(ctx.scorer).keep_outcome(key, outcome)
    if ctx.cache is not None and ctx.cache.enabled:
        ctx.cache.put(key, {"values": np.asarray(outcome.values, dtype=np.float64),
                            "details": np.array(outcome.details or [""] * len(outcome.values), dtype=str),
                            "notes": np.array(outcome.notes or [""], dtype=str),
                            "excluded": np.array([int(outcome.excluded)], dtype=np.int64)})
