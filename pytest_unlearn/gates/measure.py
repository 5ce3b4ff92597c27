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
           "picks", "picks_under"]


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


def generate_under(suite: "Suite", attack, handle, dataset, positions: list[int], outcome) -> list[str] | None:
    """Greedy answers under an attack (``Attack.generate``); ``None`` where the attack cannot
    generate; a failure is shown, never raised over the verdict."""
    ctx = suite.attack_context()
    # a weight attack generates on its attacked weights (relearn would train its folds again in a
    # new session): the texts are cached by everything that made them; prompt attacks generate
    # through the scorer, which caches them already
    key = _attacked_generation_key(attack, handle, dataset, positions, ctx) if attack.kind != "prompt" else None
    hit = ctx.cache.get(key) if key is not None and ctx.cache is not None else None
    if hit is not None:
        return None if not bool(hit["generated"][0]) else [str(t) for t in hit["text"]]
    try:
        texts = attack.generate(handle, dataset, positions, ctx, outcome)
    except Exception as exc:  # noqa: BLE001 - the message must still come out
        return [f"<generation under {attack.spec} failed: {type(exc).__name__}: {exc}>"] * len(positions)
    if key is not None and ctx.cache is not None:
        import numpy as np

        ctx.cache.put(key, {"generated": np.array([texts is not None]),
                            "text": np.array([str(t) for t in texts or []], dtype=str)})
    return None if texts is None else [str(t) for t in texts]


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


def picks_under(suite: "Suite", m: "Metric", attack, handle, dataset, positions: list[int],
                outcome) -> list[int] | str | None:
    """The choices picked *under an attack*: on the prompts a prompt attack recorded, on the weights a
    weight attack hands over (quantize, relearn, ablate and chains of them; a chain that ends in a
    prompt attack asks its recorded prompts on the first steps' weights).  ``None`` where the attack
    neither records prompts nor hands over weights (``logit_lens``); a failure is returned as text."""
    from ..multiple_choice import picked_choices
    from ..prompts import dataset_parts

    parts = outcome.parts if outcome is not None and getattr(outcome, "parts", None) is not None else None
    weights = _weight_steps(attack, prompts_recorded=parts is not None)
    if weights is False or (weights is None and parts is None):
        return None
    ctx = suite.attack_context()
    key = _attacked_generation_key(attack, handle, dataset, positions, ctx) if weights is not None else None
    if key is not None:
        key = f"picks:{m.name}:{key}"
        hit = ctx.cache.get(key) if ctx.cache is not None else None
        if hit is not None:
            return [int(v) for v in hit["picked"]]
    base = parts if parts is not None else dataset_parts(dataset)

    def read(h, rows: list[int]) -> list[int]:
        return picked_choices(ctx.scorer, m, h, dataset.subset(rows), [base[i] for i in rows],
                              [f"{dataset.source} sample {dataset.ids[i]}" for i in rows])

    try:
        if weights is None:
            return read(handle, list(positions))
        out: dict[int, int] = {}
        for _, rows, attacked in weights.attacked(handle, dataset, ctx, set(positions)):
            held = {int(i) for i in rows}
            mine = [i for i in positions if i in held and i not in out]
            if mine:
                out.update(zip(mine, read(attacked, mine)))
        found = [out[i] for i in positions]
    except Exception as exc:  # noqa: BLE001 - the message must still come out
        return f"<reading the picked choice under {attack.spec} failed: {type(exc).__name__}: {exc}>"
    if ctx.cache is not None:
        import numpy as np

        ctx.cache.put(key, {"picked": np.array(found, dtype=np.int64)})
    return found


def _weight_steps(attack, prompts_recorded: bool):
    """The part of ``attack`` that hands over attacked weights (``None``: a prompt attack, no
    weights; ``False``: it cannot be reproduced outside the attack, e.g. ``logit_lens``)."""
    from ..attacks.base import Attack
    from ..attacks.chain import Chain

    if attack.kind == "prompt":
        return None
    steps = list(attack.steps) if isinstance(attack, Chain) else [attack]
    if steps[-1].kind == "prompt" and prompts_recorded and len(steps) > 1:
        steps = steps[:-1]  # the recorded prompts, asked on the weights of the steps before
    if not all(type(s).attacked is not Attack.attacked for s in steps):
        return False
    return steps[0] if len(steps) == 1 else Chain(steps)


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
