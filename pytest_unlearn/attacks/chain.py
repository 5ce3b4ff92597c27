"""Composed attacks: a weight attack, then another attack on the attacked weights.

``relearn+logit_lens`` (the paper's "relearning + probing") relearns each forget fold and
reads the held-out fold through the logit lens of the *relearned* model;
``quantize:4+paraphrase`` asks the paraphrased questions to the quantized model.

Rules (a spec that breaks one is refused with the reason):

* every step but the last is a weight attack that hands over its attacked weights and
  puts them back bit for bit (``quantize``, ``relearn``, ``ablate``); two weight attacks
  are allowed because both restore: the inner one restores to the outer one's weights,
  the outer one to the original;
* the last step is any attack (prompt, representation or weight);
* ``relearn`` can only be the first step (its ``follows`` says why).

The outer attack's variants (relearn's folds, one for quantize and ablate) each score
the rows they may score with the inner attack, so every sample is scored exactly once
and relearn's held-out rule carries over.  The outcome is cached (when ``ctx.cache`` is
set) under both specs, the seed, the model, the data, the metric, the prompt format and
what decides the outer weights; scores inside are cached by the scorer under the
attacked model's derived fingerprint, which hashes the outer spec.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, replace
from typing import Sequence

import numpy as np

from ..errors import AttackError
from .base import Attack, AttackOutcome

__all__ = ["Chain"]


def _steps_error(given: str, message: str) -> AttackError:
    return AttackError(f"attack chain {given!r}: {message}")


class Chain(Attack):
    """Steps ``a+b[+c...]``: each step runs on the weights the steps before it attacked."""

    kind = "weight"
    cost_hint = "the first step's cost (e.g. relearn's training per fold) plus the next step's per variant"
    PARAMS = ()

    def __init__(self, steps: Sequence[Attack], *, given: str | None = None):
        steps = [s for step in steps for s in (step.steps if isinstance(step, Chain) else (step,))]
        self.steps = tuple(steps)
        self.params = {}
        given = given if given is not None else "+".join(s.spec for s in steps)
        if len(steps) < 2:
            raise _steps_error(given, "a chain needs two steps or more, e.g. relearn+logit_lens")
        for k, step in enumerate(steps[:-1]):
            if step.kind != "weight":
                raise _steps_error(given, f"step {k + 1} ({step.name}) is a {step.kind or 'custom'} attack; "
                                          "every step but the last must be a weight attack (quantize, relearn, "
                                          "ablate) whose attacked weights the next step uses, e.g. "
                                          f"quantize:4+{step.name}")
            if type(step).attacked is Attack.attacked:
                raise _steps_error(given, f"step {k + 1} ({step.name}) does not hand over its attacked weights "
                                          "and restore them, so nothing can run after it")
        for k, step in enumerate(steps[1:], start=2):
            if step.follows:
                raise _steps_error(given, f"{step.name} cannot be step {k}: {step.follows}")
        self.name = "+".join(s.name for s in steps)

    @property
    def spec(self) -> str:
        return "+".join(s.spec for s in self.steps)

    def accepted(self) -> str:  # noqa: D102 - instance form of the class method
        return "; ".join(s.accepted() for s in self.steps)

    @property
    def first(self) -> Attack:
        return self.steps[0]

    @property
    def rest(self) -> Attack:
        return self.steps[1] if len(self.steps) == 2 else Chain(self.steps[1:])

    # -- the chain as a weight attack that can itself start a chain
    def attacked(self, model, data, ctx, only=None):
        """Nested weights (only when the last step is a weight attack too)."""
        for label, rows, handle in self.first.attacked(model, data, ctx, only):
            sub = data if len(rows) == len(data) else data.subset(rows)
            sub_only = None if only is None else {k for k, i in enumerate(rows) if int(i) in only}
            for inner_label, inner_rows, inner in self.rest.attacked(handle, sub, ctx, sub_only):
                yield f"{label}; {inner_label}", np.asarray(rows)[inner_rows], inner

    def chain_extra(self, data, ctx) -> list:
        return [s.chain_extra(data, ctx) for s in self.steps]

    @property
    def version(self) -> str:
        """Every step's algorithm version: part of the chain's cache key, so a changed step never
        serves an old chain outcome."""
        return "+".join(getattr(s, "version", "") or "-" for s in self.steps)

    # -- running
    def _key(self, metric, model, data, ctx) -> str:
        from .session_memo import _outcome_key

        extra = [self.first.chain_extra(data, ctx),
                 ctx.forget.content_hash if ctx.forget is not None else None,
                 ctx.retain.content_hash if ctx.retain is not None else None]
        return _outcome_key(self, metric, model, data, ctx, "chain", extra)

    def _run(self, metric, model, data, ctx):
        n = len(data)
        key = self._key(metric, model, data, ctx)
        hit = _cached(ctx, key, n)
        if hit is not None:
            return hit
        values = np.full(n, np.nan)
        details = [""] * n
        prompts: list | None = [None] * n
        parts: list | None = [None] * n
        notes: list[str] = []
        steps, forwards, variants, excluded = 0, 0, 0, 0
        for label, rows, handle in self.first.attacked(model, data, ctx):
            variants += 1
            sub = data if len(rows) == n else data.subset(rows)
            out = self.rest.run(metric, handle, sub, ctx)
            values[rows] = out.values
            for j, i in enumerate(rows):
                details[i] = f"{label}; {out.details[j]}" if out.details else label
                if prompts is not None:
                    prompts[i] = out.prompts[j] if out.prompts is not None else None
                if parts is not None:
                    parts[i] = out.parts[j] if out.parts is not None else None
            steps += int(out.cost.get("training_steps", 0))
            forwards += int(out.cost.get("forward_batches", 0))
            excluded += int(out.excluded or 0)
            notes += [x for x in out.notes if x not in notes]
        from .relearn import Relearn

        if isinstance(self.first, Relearn):
            steps += self.first.steps * variants
            excluded += sum(x for *_, x in self.first._plan(data, ctx))
        if all(p is None for p in prompts):
            prompts = None
        if all(p is None for p in parts):
            parts = None
        head = (f"{self.name}: {self.first.spec} first ({variants} variant(s) of attacked weights), then "
                f"{self.rest.spec} on the attacked weights; every weight attack in the chain restores its "
                "weights bit for bit")
        outcome = AttackOutcome(values, {"training_steps": steps}, details, prompts, [head] + notes,
                                excluded=excluded, parts=parts)
        _store(ctx, key, outcome)
        return outcome

    def generate(self, model, data, rows, ctx, outcome=None, read=None):
        """Greedy answers under the whole chain: the first step's weights are rebuilt for the
        variants holding ``rows`` (relearn trains those folds again, same seed), the next
        step generates on them, and the weights are put back."""
        wanted = [int(i) for i in rows]
        out: dict[int, str] = {}
        with contextlib.closing(self.first.attacked(model, data, ctx, set(wanted))) as variants:
            for _, fold_rows, handle in variants:
                position = {int(i): k for k, i in enumerate(fold_rows)}
                mine = [i for i in wanted if i in position]
                if not mine:
                    continue
                sub = data if len(fold_rows) == len(data) else data.subset(fold_rows)
                inner = None
                if outcome is not None and outcome.parts is not None:
                    inner = AttackOutcome(np.zeros(len(sub)), {}, None, None,
                                          parts=[outcome.parts[int(i)] for i in fold_rows])
                texts = self.rest.generate(handle, sub, [position[i] for i in mine], ctx, inner, read=read)
                if texts is None:
                    return None
                out.update(zip(mine, texts))
        return [out[i] for i in wanted]


# ---------------------------------------------------------------- the outcome cache

def _parts_json(parts) -> str:
    return json.dumps([None if p is None else asdict(p) for p in parts])


def _parts_from_json(text: str):
    from ..prompts import PromptParts

    out = []
    for d in json.loads(text):
        if d is None:
            out.append(None)
            continue
        d["shots"] = tuple(tuple(s) for s in d.get("shots", ()))
        out.append(PromptParts(**d))
    return out


def _cached(ctx, key: str, n: int) -> AttackOutcome | None:
    from .session_memo import _cached as cached_weights

    hit = cached_weights(ctx, key)
    if hit is None:
        return None
    raw = ctx.cache.get(key)
    if "parts" in raw:
        hit.parts = _parts_from_json(str(raw["parts"]))
        hit.prompts = [str(p) for p in raw["prompts"]]
    return hit


def _store(ctx, key: str, outcome: AttackOutcome) -> None:
    if ctx.cache is None or not ctx.cache.enabled:
        return
    from .session_memo import _store as store_weights

    if outcome.parts is None:
        store_weights(ctx, key, outcome)
        return
    store = replace(ctx, cache=_WithExtra(ctx.cache, {"parts": np.array(_parts_json(outcome.parts)),
                                                      "prompts": np.array(outcome.prompts, dtype=str)}))
    store_weights(store, key, outcome)


class _WithExtra:
    """A cache whose ``put`` adds some arrays (the chain's prompts and their parts)."""

    def __init__(self, cache, extra: dict):
        self._cache, self._extra = cache, extra

    @property
    def enabled(self) -> bool:
        return self._cache.enabled

    def put(self, key, arrays):
        self._cache.put(key, {**arrays, **self._extra})
