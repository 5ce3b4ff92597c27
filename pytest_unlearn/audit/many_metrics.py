"""Scoring many metrics at once: one teacher-forced pass per model, split and prompt variant
serves every forward-pass metric (:func:`score_many`), and a weight attack, a chain or ``gcg``
runs once for all metrics, its scorings captured and each metric's outcome rebuilt with the
attack's own rule (:func:`attack_many`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import AttackError, MetricError
from .statistics import ALGORITHM

if TYPE_CHECKING:
    import numpy as np

    from ..data import Dataset
    from ..metrics import Metric
    from ..models import ModelHandle
    from ..scoring import Scorer


__tracebackhide__ = True

# ---------------------------------------------------------------- scoring many metrics at once

def _names(dataset: "Dataset") -> list[str]:
    """Sample names for error messages (the scorer's own format when it has one)."""
    from .. import scoring

    named = getattr(scoring, "_sample_names", None)
    if named is not None:
        return named(dataset)
    return [f"{dataset.source} sample {sid}" for sid in dataset.ids]


def score_many(scorer: "Scorer", metrics: Sequence["Metric"], handle: "ModelHandle", dataset: "Dataset", *,
               parts=None, logits_fn: Callable | None = None, variant: str = "") -> dict[str, Any]:
    """Per-sample values of every metric (name -> array, or the exception that stopped it).

    The forward-pass metrics share one teacher-forced pass; a NaN there is left in the
    array (the caller decides); other metrics go through ``scorer.per_sample``.  A
    generation metric under a custom ``logits_fn`` (the logit lens) is not applicable.
    """
    import numpy as np

    from ..prompts import dataset_parts

    parts = list(parts) if parts is not None else dataset_parts(dataset)
    out: dict[str, Any] = {}
    forward = [m for m in metrics if m.source == "forward"]
    if forward:
        try:
            stats = scorer.token_stats(handle, parts, names=_names(dataset), logits_fn=logits_fn, variant=variant)
        except (MetricError, AttackError) as exc:
            for m in forward:
                out[m.name] = exc
        else:
            for m in forward:
                out[m.name] = np.array([m.fn(stats.sample(i), parts[i].answer) for i in range(len(parts))],
                                       dtype=np.float64)
    for m in metrics:
        if m.source == "forward":
            continue
        if m.source == "generation" and logits_fn is not None:
            out[m.name] = AttackError(f"{m.name} is generation-based and cannot be scored through "
                                      f"{variant or 'a custom logits function'}")
            continue
        try:
            out[m.name] = np.asarray(scorer.per_sample(m, handle, dataset, parts=parts, logits_fn=logits_fn,
                                                       variant=variant), dtype=np.float64)
        except (MetricError, AttackError) as exc:
            out[m.name] = exc
    return out


class _CaptureScorer:
    """Wraps a Scorer for one attack run: every ``per_sample`` also scores the other
    metrics on the same inputs and keeps (row ids, values) for each call."""

    def __init__(self, scorer: "Scorer", metrics: Sequence["Metric"]):
        self._scorer = scorer
        self._metrics = list(metrics)
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __getattr__(self, name: str):
        return getattr(self._scorer, name)

    def per_sample(self, metric, handle, dataset, *, parts=None, logits_fn=None, variant: str = ""):
        import numpy as np

        from ..metrics import get_metric

        m = get_metric(metric)
        wanted = [m] + [x for x in self._metrics if x.name != m.name]
        values = score_many(self._scorer, wanted, handle, dataset, parts=parts, logits_fn=logits_fn,
                            variant=variant)
        self.calls.append((list(dataset.ids), values))
        own = values[m.name]
        if isinstance(own, Exception):
            raise own
        bad = np.flatnonzero(np.isnan(own))
        if len(bad):  # the same rule as Scorer.per_sample
            raise MetricError(f"{m.name} is NaN for {len(bad)} of {len(own)} samples (first: "
                              f"{_names(dataset)[bad[0]]}); the model produced NaN or inf logits")
        return own


def _rebuild(calls, metric: "Metric", ids: list[str]) -> "np.ndarray | None":
    """Per row, the most knowledge over every captured scoring of that row (None if a row
    was never scored or a scoring failed)."""
    import numpy as np

    position = {sid: i for i, sid in enumerate(ids)}
    stacked = []
    for call_ids, values in calls:
        v = values.get(metric.name)
        if v is None or isinstance(v, Exception):
            return None
        full = np.full(len(ids), np.nan)
        for sid, value in zip(call_ids, v):
            if sid not in position:
                return None
            full[position[sid]] = value
        stacked.append(full)
    if not stacked:
        return None
    arr = np.vstack(stacked)
    if not (~np.isnan(arr)).any(axis=0).all():
        return None
    return np.asarray(metric.knowledge_max(arr), dtype=np.float64)


# the metric an attack really runs with when the others are captured: continuous values first,
# so that checking the rebuilt outcome against the attack's own result is a sharp test
_PRIMARY = ("prob", "mia_loss", "mia_min_k", "mia_zlib", "mia_min_k_pp", "ppl", "em", "es")


def _worst_case_attack(attack) -> bool:
    """Attacks known to return, per sample, the most knowledge over everything they score (every
    built-in attack); only these are run once for all metrics.  Others run once per metric."""
    module = type(attack).__module__ or ""
    return module == "pytest_unlearn.attacks" or module.startswith("pytest_unlearn.attacks.")


def _cell_key(attack, metrics, handle, data, ctx) -> str:
    from ..cache import cache_key

    sc = ctx.scorer
    return cache_key("audit-attack", ALGORITHM, attack.spec, int(ctx.seed), handle.fingerprint, data.content_hash,
                     sorted(m.name for m in metrics), sc.prompt_format(handle).spec, sc.batch_size,
                     str(handle.device.type), str(handle.dtype),
                     ctx.original.fingerprint if ctx.original is not None else None,
                     ctx.forget.content_hash if ctx.forget is not None else None,
                     ctx.retain.content_hash if ctx.retain is not None else None)


def attack_many(attack, metrics: Sequence["Metric"], handle: "ModelHandle", data: "Dataset",
                ctx) -> dict[str, Any]:
    """Per-sample values of every metric under ``attack`` (name -> array, or the exception).

    The attack runs once with the first forward-pass metric while a capturing scorer
    scores all metrics; see the module docstring.  The whole cell is cached in
    ``ctx.scorer.cache`` when that is enabled.
    """
    import numpy as np

    cache = getattr(ctx.scorer, "cache", None)
    key = _cell_key(attack, metrics, handle, data, ctx) if cache is not None and cache.enabled else None
    if key is not None:
        hit = cache.get(key)
        if hit is not None:
            out: dict[str, Any] = {}
            for m in metrics:
                err = str(hit.get(f"error__{m.name}", np.array(""))) if f"error__{m.name}" in hit else ""
                out[m.name] = AttackError(err) if err else np.asarray(hit[f"values__{m.name}"], dtype=np.float64)
            return out

    out = {}
    forward = [m for m in metrics if m.source == "forward"]
    primary = min(forward, key=lambda m: _PRIMARY.index(m.name) if m.name in _PRIMARY else len(_PRIMARY)) \
        if forward else metrics[0]
    capture = _CaptureScorer(ctx.scorer, metrics)
    ids = list(data.ids)
    duplicates = any("-" in sid for sid in ids)
    if len(metrics) > 1 and not duplicates and _worst_case_attack(attack):
        try:
            outcome = attack.run(primary, handle, data, replace(ctx, scorer=capture, cache=None))
        except (AttackError, MetricError):
            outcome = None
        if outcome is not None:
            rebuilt = _rebuild(capture.calls, primary, ids)
            if rebuilt is not None and np.allclose(rebuilt, outcome.values, rtol=1e-9, atol=1e-12, equal_nan=True):
                out[primary.name] = np.asarray(outcome.values, dtype=np.float64)
                for m in metrics:
                    if m.name != primary.name:
                        values = _rebuild(capture.calls, m, ids)
                        if values is not None:
                            out[m.name] = values
    for m in metrics:  # everything the shared run could not give: one attack run per metric
        if m.name in out:
            continue
        try:
            out[m.name] = np.asarray(attack.run(m, handle, data, ctx).values, dtype=np.float64)
        except (AttackError, MetricError) as exc:
            out[m.name] = exc
    if key is not None:
        arrays = {}
        for name, v in out.items():
            if isinstance(v, Exception):
                arrays[f"error__{name}"] = np.array(f"{type(v).__name__}: {v}")
            else:
                arrays[f"values__{name}"] = v
        cache.put(key, arrays)
    return out
