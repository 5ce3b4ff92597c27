"""Measuring: the only layer of a gate that touches models.  It scores the model under
test and its controls (the original, the reference) under no attack and every attack
and returns plain arrays (:class:`Measurement`); the verdict is decided elsewhere
(:mod:`.verdict`) from those arrays alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .record import cost_delta

if TYPE_CHECKING:
    import numpy as np

    from ..data import Dataset
    from ..metrics import Metric
    from ..models import ModelHandle
    from ..suite import Suite

__all__ = ["Measurement", "controls_of", "measure_forgetting", "measure_retained", "generate", "generate_under",
           "picks"]


@dataclass
class Measurement:
    """Per-sample scores of one metric on one data set.  ``model`` and every entry of
    ``controls`` (role -> scores) map a condition (``"none"`` first, then the attack labels)
    to an array of per-sample scores; ``outcomes`` and ``costs`` are per condition."""

    metric: "Metric"
    dataset: "Dataset"
    handle: "ModelHandle"
    attacks: dict[str, Any]  # label -> Attack
    model: dict[str, "np.ndarray"]
    controls: dict[str, dict[str, "np.ndarray"]] = field(default_factory=dict)
    outcomes: dict[str, Any] = field(default_factory=dict)
    costs: dict[str, dict] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)  # samples whose prompt was cut to fit the context

    @property
    def conditions(self) -> list[str]:
        return list(self.model)


def controls_of(suite: "Suite", handle) -> dict[str, "ModelHandle"]:
    """The control models configured (``original``, ``reference``), checked to share the
    tokenizer of ``handle`` (per-token scores compare only under one tokenizer)."""
    from ..models import check_same_tokenizer

    controls = {}
    if suite.has("original"):
        controls["original"] = suite.original
    if suite.reference is not None:
        controls["reference"] = suite.reference
    for control in controls.values():
        check_same_tokenizer(handle, control, "their per-token scores cannot be compared")
    return controls


def measure_forgetting(suite: "Suite", m: "Metric", attacks: dict[str, Any], handle, dataset) -> Measurement:
    """Scores of ``handle`` and of every control under no attack and each attack (memoised by
    model fingerprint, so a model in two roles runs once)."""
    import numpy as np

    controls = controls_of(suite, handle)
    memo: dict[tuple, tuple] = {}
    truncated: set[str] = set()

    def run(h, attack):
        key = (h.fingerprint, attack.spec if attack is not None else "none")
        if key not in memo:
            if attack is None:
                before = suite.scorer.cost.as_dict()
                values = suite.scorer.per_sample(m, h, dataset)
                if h is handle:
                    truncated.update(getattr(suite.scorer, "truncated", None) or [])
                memo[key] = (np.asarray(values, dtype=np.float64), None,
                             cost_delta(before, suite.scorer.cost.as_dict()))
            else:
                outcome = suite.run_attack(attack, m, h, dataset)
                memo[key] = (outcome.values, outcome, dict(outcome.cost or {}))
        return memo[key]

    conditions = ["none"] + list(attacks)
    out = Measurement(m, dataset, handle, dict(attacks), {})
    for c in conditions:
        out.model[c], out.outcomes[c], out.costs[c] = run(handle, attacks.get(c))
    for role, h in controls.items():
        out.controls[role] = {c: run(h, attacks.get(c))[0] for c in conditions}
    out.truncated = sorted(truncated)
    return out


def measure_retained(suite: "Suite", m: "Metric", handle, dataset) -> Measurement:
    """Scores of ``handle`` and of the original model (one pass when they are one model)."""
    import numpy as np

    from ..models import check_same_tokenizer

    original = suite.original
    check_same_tokenizer(handle, original, "their retain scores cannot be compared")
    before = suite.scorer.cost.as_dict()
    mv = np.asarray(suite.scorer.per_sample(m, handle, dataset), dtype=np.float64)
    ov = mv if original.fingerprint == handle.fingerprint else \
        np.asarray(suite.scorer.per_sample(m, original, dataset), dtype=np.float64)
    return Measurement(m, dataset, handle, {}, {"none": mv}, {"original": {"none": ov}}, {"none": None},
                       {"none": cost_delta(before, suite.scorer.cost.as_dict())})


def generate(suite: "Suite", handle, dataset, positions: list[int]) -> list[str]:
    """Greedy answers for a few samples; a failure is shown, never raised over the verdict."""
    if not positions:
        return []
    from ..prompts import dataset_parts

    try:
        parts = dataset_parts(dataset)
        names = [f"{dataset.source} sample {dataset.ids[i]}" for i in positions]
        return list(suite.scorer.generate(handle, [parts[i] for i in positions], names))
    except Exception as exc:  # noqa: BLE001 - the message must still come out
        return [f"<generation failed: {type(exc).__name__}: {exc}>"] * len(positions)


def generate_under(suite: "Suite", attack, handle, dataset, positions: list[int], outcome,
                   *, picks_of: "Metric | None" = None) -> list | str | None:
    """Greedy answers under an attack (``Attack.generate``), or with ``picks_of`` (a
    multiple-choice metric) the choice each sample is counted as picking, read from the metric's
    own pass on the attacked prompts or weights.  ``None`` where the attack cannot be re-run
    (``logit_lens``); a failure is shown, never raised over the verdict."""
    ctx = suite.attack_context()
    # a weight attack re-runs on its attacked weights (relearn would train its folds again in a
    # new session): the result is cached by everything that made it; prompt attacks run through
    # the scorer, which caches them already
    key = _attacked_generation_key(attack, handle, dataset, positions, ctx) if attack.kind != "prompt" else None
    if key is not None and picks_of is not None:
        key = f"attack-picks:{picks_of.name}:{key}"
    hit = ctx.cache.get(key) if key is not None and ctx.cache is not None else None
    if hit is not None:
        return None if not bool(hit["generated"][0]) else _as_found(hit["text"], picks_of)
    try:
        if picks_of is None:
            found = attack.generate(handle, dataset, positions, ctx, outcome)
        else:
            found = attack.generate(handle, dataset, positions, ctx, outcome,
                                    read=_picks_reader(ctx.scorer, picks_of))
    except Exception as exc:  # noqa: BLE001 - the message must still come out
        if picks_of is not None:
            return f"<reading the picked choice under {attack.spec} failed: {type(exc).__name__}: {exc}>"
        return [f"<generation under {attack.spec} failed: {type(exc).__name__}: {exc}>"] * len(positions)
    if key is not None and ctx.cache is not None:
        import numpy as np

        ctx.cache.put(key, {"generated": np.array([found is not None]),
                            "text": np.array([str(t) for t in found or []], dtype=str)})
    return None if found is None else _as_found(found, picks_of)


def _as_found(values, picks_of) -> list:
    return [int(v) for v in values] if picks_of is not None else [str(v) for v in values]


def _picks_reader(scorer, m: "Metric"):
    """``Attack.generate``'s ``read``: the choices ``m`` counts as picked by an attacked model."""
    from ..multiple_choice import picked_choices

    def read(handle, rows_data, parts, names) -> list[int]:
        return picked_choices(scorer, m, handle, rows_data, parts, names)

    return read


def picks(suite: "Suite", m: "Metric", handle, dataset, positions: list[int]) -> list[int] | str:
    """For a multiple-choice metric: the choice each of a few samples is counted as picking, with no
    attack (the cached pass the metric scored from); a failure is returned as its text."""
    from ..multiple_choice import picked_choices
    from ..prompts import dataset_parts

    if not positions:
        return []
    try:
        parts = dataset_parts(dataset)
        return picked_choices(suite.scorer, m, handle, dataset.subset(positions), [parts[i] for i in positions],
                              [f"{dataset.source} sample {dataset.ids[i]}" for i in positions])
    except Exception as exc:  # noqa: BLE001 - the message must still come out
        return f"<reading the picked choice failed: {type(exc).__name__}: {exc}>"


def _attacked_generation_key(attack, handle, dataset, positions: list[int], ctx) -> str:
    """Everything that decides what a weight attack's model generates for ``positions``."""
    from ..cache import cache_key
    from ..generation import GENERATION_POLICY

    return cache_key("attack-generate", attack.spec, getattr(attack, "version", ""), int(ctx.seed),
                     handle.fingerprint, dataset.content_hash, [int(i) for i in positions],
                     ctx.forget.content_hash if ctx.forget is not None else None,
                     ctx.retain.content_hash if ctx.retain is not None else None,
                     ctx.scorer.prompt_format(handle).spec, sorted(GENERATION_POLICY.items()),
                     str(handle.device.type), str(handle.dtype))
