"""Running the audit: :func:`audit_metrics` (inputs checked and resolved, every model scored
before and after each attack on both splits, then summarised), and the attack-list parser
:func:`split_attack_list` shared with the command line."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ..errors import ConfigError
from .many_metrics import attack_many, score_many
from .result import AuditResult
from .statistics import NONE, SPLITS, _summarise

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ..data import Dataset
    from ..metrics import Metric
    from ..models import ModelHandle
    from ..scoring import Scorer

__tracebackhide__ = True

#: Every candidate the audit scores by default (``truth_ratio`` only on data with perturbed answers).
CANDIDATE_METRICS = ("es", "em", "prob", "ppl", "rouge_l", "truth_ratio",
                     "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_pp")
DEFAULT_ATTACKS = ("paraphrase", "quantize:4", "relearn")


# ---------------------------------------------------------------- inputs

def split_attack_list(text: str | Sequence[str] | None) -> list[str]:
    """Attack specs from a comma-separated string: ``"paraphrase,quantize:4,relearn:steps=5,lr=1e-4"``
    gives ``["paraphrase", "quantize:4", "relearn:steps=5,lr=1e-4"]`` (a piece starts a new
    spec when its name is a registered attack; otherwise it continues the previous one).
    A list is returned as it is (each item already one spec)."""
    if text is None:
        return []
    if not isinstance(text, str):
        return [str(t) for t in text]
    from ..attacks import ATTACKS
    from ..attacks.spec import _split_top

    try:
        pieces = _split_top(text, ",")
    except ValueError as exc:
        raise ConfigError(f"cannot parse the attack list {text!r}: {exc}") from None
    names = set(ATTACKS.names())
    specs: list[str] = []
    for piece in pieces:
        name = piece.split(":", 1)[0].split("+", 1)[0].strip()  # a chain starts with its first step's name
        if not piece.strip():
            continue
        if name in names or not specs:
            specs.append(piece.strip())
        else:
            specs[-1] += "," + piece
    return specs


def _as_dataset(data, role: str) -> "Dataset":
    from ..data import Dataset, dataset_from_records, load_dataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(data, name=role)
    if isinstance(data, list) or type(data).__name__ == "DataFrame":
        return dataset_from_records(data, name=role)
    raise ConfigError(f"{role}: expected a Dataset, a data file path or records, got {type(data).__name__}")


def _is_handle(obj) -> bool:
    return hasattr(obj, "model") and hasattr(obj, "tokenizer") and hasattr(obj, "fingerprint")


def _checkpoint_list(checkpoints) -> list[tuple[str | None, Any]]:
    """(name or None, handle or path) pairs from a list or a name -> checkpoint mapping."""
    if isinstance(checkpoints, Mapping):
        return [(str(k), v) for k, v in checkpoints.items()]
    if isinstance(checkpoints, (str, os.PathLike)) or _is_handle(checkpoints):
        return [(None, checkpoints)]
    return [(None, c) for c in checkpoints]


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}#{k}", k + 1
    taken.add(out)
    return out


def _resolve_metrics(metrics, splits: dict[str, "Dataset"], notes: list[str]) -> list["Metric"]:
    from ..metrics import get_metric

    explicit = metrics is not None
    names = [metrics] if isinstance(metrics, str) else list(metrics if explicit else CANDIDATE_METRICS)
    out = []
    for name in names:
        m = get_metric(name)
        if m.source == "truth_ratio" and not any(d.has("perturbed_answer") for d in splits.values()):
            if explicit:
                raise ConfigError("truth_ratio needs a 'perturbed_answer' column in the forget or retain data")
            notes.append("truth_ratio left out: neither split has a 'perturbed_answer' column")
            continue
        if all(x.name != m.name for x in out):
            out.append(m)
    if not out:
        raise ConfigError("the audit needs at least one metric")
    return out


# ---------------------------------------------------------------- the audit

def audit_metrics(original, checkpoints, forget, retain, metrics: Sequence[str] | str | None = None,
                  attacks: Sequence[Any] | str = DEFAULT_ATTACKS, scorer: "Scorer | None" = None, seed: int = 0,
                  progress: bool = False, *, splits: Sequence[str] = SPLITS, controls: bool = True,
                  loader: Callable[[Any], "ModelHandle"] | None = None, device: str = "auto",
                  dtype: str = "auto") -> AuditResult:
    """Score every metric on forget and retain data before and after every attack, on every
    checkpoint, and fit after-vs-before across the checkpoints (see the module docstring).

    ``original``: a :class:`~pytest_unlearn.models.ModelHandle` or a model path.
    ``checkpoints``: handles or paths (a list, or a name -> checkpoint mapping); paths are
    loaded one at a time (``loader``, default :func:`~pytest_unlearn.models.load_model`
    on ``device`` / ``dtype``, a PEFT adapter folder applied on the original) and released
    after scoring.  ``forget`` / ``retain``: Datasets or data file paths.  ``metrics``:
    default :data:`CANDIDATE_METRICS` (``truth_ratio`` only where the data has perturbed
    answers).  ``attacks``: specs (a list, or one comma-separated string).  ``controls``
    also scores the original model (the uninformative-attack check).
    """
    import numpy as np
    import pandas as pd

    from ..attacks import AttackContext
    from ..models import load_model

    started = time.perf_counter()
    notes: list[str] = []
    if isinstance(original, (str, os.PathLike)):
        original = load_model(original, device=device, dtype=dtype, name="original")
    if not _is_handle(original):
        raise ConfigError(f"original must be a ModelHandle or a model path, got {type(original).__name__}")
    data = {"forget": _as_dataset(forget, "forget"), "retain": _as_dataset(retain, "retain")}
    splits = [splits] if isinstance(splits, str) else list(splits)
    for s in splits:
        if s not in data:
            raise ConfigError(f"unknown split {s!r}: use 'forget' and/or 'retain'")
    if not splits:
        raise ConfigError("the audit needs at least one split (forget, retain)")
    used = {s: data[s] for s in splits}
    ms = _resolve_metrics(metrics, used, notes)
    attack_objs = _labelled_attacks(attacks)
    if not attack_objs:
        raise ConfigError("the audit needs at least one attack")
    entries = _checkpoint_list(checkpoints)
    if len(entries) < 2:
        raise ConfigError(f"the audit fits a line across checkpoints and needs at least 2 (3 or more for a "
                          f"meaningful PCC), got {len(entries)}")
    if len(entries) < 3:
        notes.append("only 2 checkpoints: the PCC of two points is always +-1 or NaN")
    if scorer is None:
        from ..scoring import Scorer
        scorer = Scorer(progress=False)
    ctx = AttackContext(scorer, original=original, forget=data["forget"], retain=data["retain"], seed=int(seed),
                        progress=progress, cache=getattr(scorer, "cache", None))

    def split_metrics(split: str) -> list:
        return [m for m in ms if m.source != "truth_ratio" or used[split].has("perturbed_answer")]

    for s in splits:
        missing = [m.name for m in ms if m not in split_metrics(s)]
        if missing:
            notes.append(f"{', '.join(missing)} not scored on {s}: no 'perturbed_answer' column")

    def load(spec):
        if loader is not None:
            return loader(spec), False
        path = Path(os.fspath(spec))
        base = original if (path / "adapter_config.json").is_file() else None
        return load_model(path, base=base, device=device if device != "auto" else str(original.device),
                          dtype=dtype, name=path.name or "checkpoint"), True

    models: list[tuple[str, str, Any]] = ([("original", "original", original)] if controls else [])
    taken = {"original"} if controls else set()
    infos = []
    for name, spec in entries:
        if name is None:
            name = spec.name if _is_handle(spec) else (Path(os.fspath(spec)).name or "checkpoint")
        models.append((_unique(str(name), taken), "checkpoint", spec))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(models) * len(splits) * (1 + len(attack_objs)), desc="audit", unit="cell")
    rows = []
    try:
        for name, role, spec in models:
            handle, owned = (spec, False) if _is_handle(spec) else load(spec)
            if role == "checkpoint":
                infos.append({"name": name, "source": str(getattr(handle, "source", spec)),
                              "fingerprint": handle.fingerprint})
            try:
                for split in splits:
                    dataset, split_ms = used[split], split_metrics(split)
                    conditions = [(NONE, None)] + list(attack_objs)
                    for label, attack in conditions:
                        if bar is not None:
                            bar.set_postfix_str(f"{name} {split} {label}"[:60])
                        t0 = time.perf_counter()
                        if attack is None:
                            values = score_many(scorer, split_ms, handle, dataset)
                        else:
                            values = attack_many(attack, split_ms, handle, dataset, ctx)
                        seconds = time.perf_counter() - t0
                        for m in split_ms:
                            v = values[m.name]
                            note = ""
                            if isinstance(v, Exception):
                                value, note = math.nan, f"{type(v).__name__}: {v}"
                            else:
                                value = float(np.mean(v)) if len(v) else math.nan
                                if np.isnan(v).any():
                                    note = f"NaN for {int(np.isnan(v).sum())} of {len(v)} samples"
                            rows.append({"checkpoint": name, "role": role, "metric": m.name, "split": split,
                                         "attack": label, "value": value, "n_samples": len(dataset),
                                         "seconds": round(seconds, 3), "note": note})
                        if bar is not None:
                            bar.update(1)
            finally:
                if owned:
                    handle.release()
    finally:
        if bar is not None:
            bar.close()

    scores = pd.DataFrame(rows, columns=["checkpoint", "role", "metric", "split", "attack", "value", "n_samples",
                                         "seconds", "note"])
    for r in scores[scores["note"] != ""].itertuples():
        notes.append(f"{r.checkpoint}, {r.metric} on {r.split} under {r.attack}: {r.note}")
    table, ranking, recommendation, fit_notes = _summarise(scores, ms, attack_objs, splits)
    return AuditResult(scores, table, ranking, recommendation, infos, [m.name for m in ms],
                       [label for label, _ in attack_objs], splits, int(seed), _dedupe(notes + fit_notes),
                       round(time.perf_counter() - started, 3))


def _labelled_attacks(attacks) -> list[tuple[str, Any]]:
    """(label, Attack) pairs: the label is the spec as the user wrote it (an Attack object:
    its canonical spec); the same attack twice is an error (the rule of every gate:
    :func:`~pytest_unlearn.gates.checks.attack_list`)."""
    from ..gates.checks import attack_list

    items = split_attack_list(attacks) if isinstance(attacks, str) else list(attacks)
    return list(attack_list(items).items())


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
