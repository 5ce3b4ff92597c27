"""``find_leak``: hypothesis searches prompt transformations for one that extracts a forgotten fact.

Per forget sample (or a seeded subset), hypothesis draws *batches* of ``batch``
transformations, scores each batch in one forward pass and shrinks a leaking batch to the
simplest transformation that leaks (:mod:`.sample_search`); the samples are searched one
after another until the first leak.  The result is a :class:`~.result.LeakSearchResult`.

Cost: every distinct prompt is scored once per search (a memo keyed by the exact
:class:`~pytest_unlearn.prompts.PromptParts`), so a search of N candidate prompts costs
at most ``ceil(N / batch)`` forward batches, fewer when candidates repeat (the first
hypothesis example is ``batch`` copies of the plain prompt: one forward pass of one row).
Shrinking runs one (mostly memoised) call per shrink step.

Determinism: each sample's search is seeded by ``hypothesis.seed`` from the run's seed and
the sample id.  A found leak is saved in a ``DirectoryBasedExampleDatabase`` keyed by
(model fingerprint, sample id, metric, threshold, prompt format, search space), placed
beside the result cache (``.pytest_cache/d/leak-search`` under pytest,
``$PYTEST_UNLEARN_CACHE_DIR/leak-search`` in a notebook): the next run replays it first,
and searches samples with a saved leak before the others.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError
from ..prompts import PromptParts, dataset_parts, render_context
from ..suite import Suite, current_suite
from .prompt_edits import SPACE_VERSION, EditEnv, Transformation, _check_kinds
from .result import DEFAULT_MAX_EXAMPLES, LeakSearchResult, SampleSearch
from .sample_search import _candidate_batches, _Leak, _marker, _search_sample

if TYPE_CHECKING:
    from ..data import Dataset
    from ..scoring import Scorer

__all__ = ["DEFAULT_MAX_EXAMPLES", "LeakSearchResult", "SampleSearch", "find_leak", "leak_database_root"]

DEFAULT_MAX_STEPS = 4


# ---------------------------------------------------------------- where saved leaks live

def leak_database_root(suite: Suite, database: Any = "auto") -> Path | None:
    """The folder of the example database: ``database`` when a path, none when ``None``/``False``;
    ``"auto"``: ``leak-search`` beside the suite's result cache (``.pytest_cache/d/leak-search``
    under pytest, ``$PYTEST_UNLEARN_CACHE_DIR/leak-search`` in a notebook), none with
    ``--unlearn-no-cache`` or without a cache folder."""
    if database is None or database is False:
        return None
    if isinstance(database, (str, os.PathLike)) and os.fspath(database) != "auto":
        return Path(os.fspath(database))
    if database != "auto":
        raise ConfigError(f"database= must be 'auto', a folder or None, got {database!r}")
    return None if suite.cache_dir is None else Path(suite.cache_dir).parent / "leak-search"


# ---------------------------------------------------------------- the entry point

def find_leak(metric, threshold, *, model=None, data=None, samples: int | Sequence[str] | None = None,
              max_examples: int = DEFAULT_MAX_EXAMPLES, time_budget: float | None = None,
              seed: int | None = None, suite: Suite | None = None, batch: int | None = None,
              max_steps: int = DEFAULT_MAX_STEPS, kinds: Sequence[str] | None = None, retain: Any = None,
              database: Any = "auto") -> LeakSearchResult:
    """Search prompt transformations under which ``model`` (default: the unlearned model) shows
    more than ``threshold`` of ``metric``'s knowledge on a sample of ``data`` (default: the forget
    set), and shrink the first one found to its simplest form.

    * ``samples``: search a seeded subset of this many samples (or these sample ids); default all.
      Samples with a leak saved by an earlier run go first; the search stops at the first leak.
    * ``max_examples``: candidate prompts per sample (hypothesis draws ``ceil(max_examples/batch)``
      batches); ``time_budget``: seconds for the whole search (checked between batches; shrinking
      a found leak only reuses prompts already scored once the time is up).
    * ``seed``: default the suite's ``unlearn_seed``; ``batch``: candidates per hypothesis example,
      default the suite's batch size (8 on CPU, 32 on CUDA) so one example is one forward batch.
    * ``max_steps``: edit steps per transformation; ``kinds``: the edit kinds to use (default all,
      see :data:`~pytest_unlearn.leak_search.prompt_edits.EDIT_KINDS`); ``retain``: the shot pool
      (default the suite's retain set; ``False`` for none).
    * ``database``: ``"auto"`` (see :func:`leak_database_root`), a folder, or ``None``.
    """
    from ..metrics import get_metric

    started = time.perf_counter()
    try:
        import hypothesis  # noqa: F401
    except ImportError as exc:
        raise ConfigError("leak search needs hypothesis: pip install hypothesis") from exc
    suite = _resolve_suite(suite, model, data)
    m = get_metric(metric)
    from ..gates.checks import check_threshold

    threshold = check_threshold(m, threshold)
    max_examples = _positive_int("max_examples", max_examples)
    max_steps = _positive_int("max_steps", max_steps)
    kinds = _check_kinds(kinds)
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and time_budget > 0):
        raise ConfigError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    seed = suite.settings.seed if seed is None else int(seed)
    handle = suite.model(model)
    dataset = suite.data(data)
    if len(dataset) == 0:
        raise ConfigError(f"{dataset.source}: no samples to search")
    pool = _shot_pool(suite, retain)
    k = _positive_int("batch", batch) if batch is not None else _default_batch(suite, handle)

    from ..cache import ResultCache
    from ..scoring import Scorer

    # a private scorer: the suite's prompt settings, one forward batch per hypothesis example,
    # no disk cache (every candidate batch is new; repeats are memoised per search instead)
    scorer = Scorer.from_settings(suite.settings, batch_size=k, cache=ResultCache(None), progress=False)
    fmt = scorer.prompt_format(handle)
    env = EditEnv(handle.tokenizer, fmt, pool)
    positions = _select(dataset, samples, seed)
    root = leak_database_root(suite, database)
    space = {"version": SPACE_VERSION, "max_steps": max_steps, "kinds": list(kinds), "batch": k,
             "shots": _digest([p[:2] for p in pool])}
    base = dataset_parts(dataset)
    paraphrased = (list(dataset.frame["paraphrased_question"]) if "paraphrased_question" in dataset.frame.columns
                   else [None] * len(dataset))
    ids = list(dataset.ids)
    keys = {pos: _db_key(handle.fingerprint, ids[pos], m.name, threshold, fmt.spec, space) for pos in positions}
    if root is not None:  # a leak saved by an earlier run is replayed first
        positions.sort(key=lambda pos: not _marker(root, keys[pos]).is_file())
    strategy = _candidate_batches(k, max_steps=max_steps, shot_pool_size=len(pool), kinds=kinds)
    deadline = None if time_budget is None else time.monotonic() + float(time_budget)
    result = LeakSearchResult(False, m, threshold, handle.name, dataset.name, None, dataset.source, batch=k,
                              max_examples=max_examples, time_budget=time_budget, seed=seed,
                              samples_total=len(dataset), subset=len(positions) < len(dataset),
                              database=str(root) if root is not None else None, env=env)
    closest: tuple[float, str, Transformation] | None = None
    truncated = [0]
    for pos in positions:
        if deadline is not None and time.monotonic() >= deadline:
            result.timed_out = True
            break
        search, leak = _search_sample(scorer, handle, dataset, m, threshold, pos, base[pos],
                                      env.for_sample(base[pos].question, _text_or_none(paraphrased[pos])), strategy,
                                      -(-max_examples // k), _sample_seed(seed, ids[pos]), root, keys[pos],
                                      deadline, truncated)
        result.searches.append(search)
        result.timed_out = result.timed_out or search.timed_out
        if search.score is not None and (closest is None or m.more_knowledge(search.score, closest[0])):
            closest = (search.score, search.sample, search.transformation)
        if leak is not None:
            _fill_leak(result, scorer, handle, dataset, pos, base[pos], env, search, leak)
            break
    if not result.found and closest is not None:
        result.score, result.closest_sample, result.closest_transformation = closest
    for s in result.searches:
        result.examples += s.examples
        result.batches += s.batches
        result.scored += s.scored
    result.forward_batches = scorer.cost.forward_passes + scorer.cost.generations
    if truncated[0]:
        result.notes.append(f"{truncated[0]} candidate prompt(s) were longer than the model's context and "
                            f"were cut from the left")
    if result.timed_out:
        result.notes.append(f"the time budget of {time_budget:g} s ran out after {result.samples_searched} of "
                            f"{len(positions)} sample(s)")
    result.seconds = time.perf_counter() - started
    return result


def _fill_leak(result: LeakSearchResult, scorer: "Scorer", handle, dataset, pos: int, base: PromptParts,
               env: EditEnv, search: SampleSearch, leak: _Leak) -> None:
    from ..attacks.prompt_attacks import describe

    i = leak.leaking[0]
    parts = leak.parts[i]
    result.found = True
    result.sample, result.transformation, result.score = search.sample, search.transformation, search.score
    result.parts, result.answer = parts, dataset.answers[pos]
    result.prompt, result.baseline_prompt = describe(parts), describe(base)
    result.context = render_context(handle.tokenizer, env.fmt, parts)
    names = [f"{dataset.source} sample {search.sample}"] * 2
    try:
        result.generated, result.baseline_generated = scorer.generate(handle, [parts, base], names)
    except Exception as exc:  # noqa: BLE001 - the finding must still come out
        result.generated = result.baseline_generated = f"<generation failed: {type(exc).__name__}: {exc}>"
    plain = [s for t, p, s in zip(leak.batch, leak.parts, leak.scores) if p == base and s is not None]
    if plain:
        result.baseline_score = float(plain[0])
    else:
        rows = dataset.subset([pos])
        result.baseline_score = float(scorer.per_sample(result.metric, handle, rows, parts=[base])[0])


# ---------------------------------------------------------------- helpers

def _resolve_suite(suite: Suite | None, model, data) -> Suite:
    if suite is not None:
        return suite
    try:
        return current_suite()
    except ConfigError:
        if model is not None and data is not None and not isinstance(model, (str, os.PathLike)):
            return Suite()  # a notebook that passes a loaded model and a data set
        raise


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _default_batch(suite: Suite, handle) -> int:
    from ..forward import default_batch_size

    return suite.settings.batch_size or default_batch_size(handle.device)


def _shot_pool(suite: Suite, retain) -> tuple[tuple[str, str, str], ...]:
    if retain is False:
        return ()
    if retain is None:
        if not suite.has("retain"):
            return ()
        pool = suite.retain
    else:
        pool = suite.data(retain, default="retain")
    return tuple(zip(pool.prompts, pool.answers, pool.ids))


def _select(dataset: "Dataset", samples, seed: int) -> list[int]:
    n = len(dataset)
    if samples is None:
        return list(range(n))
    if isinstance(samples, numbers.Integral) and not isinstance(samples, bool):
        samples = int(samples)
        if samples < 1:
            raise ConfigError(f"samples must be a positive number of samples or a list of sample ids, got {samples}")
        if samples >= n:
            return list(range(n))
        import numpy as np

        rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x1EAC])
        return sorted(int(i) for i in rng.choice(n, size=samples, replace=False))
    if isinstance(samples, str):
        samples = [samples]
    where = {sid: i for i, sid in enumerate(dataset.ids)}
    unknown = [s for s in samples if s not in where]
    if unknown:
        raise ConfigError(f"samples: {unknown} are not sample ids of {dataset.source} "
                          f"(ids look like {dataset.ids[0]!r})")
    return [where[s] for s in dict.fromkeys(samples)]


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sample_seed(seed: int, sid: str) -> int:
    return int(hashlib.sha256(f"{int(seed)}|{sid}".encode()).hexdigest()[:16], 16)


def _db_key(fingerprint: str, sid: str, metric: str, threshold: float, fmt: str, space: dict) -> str:
    from ..cache import cache_key

    return cache_key("leak-search", fingerprint, sid, metric, repr(float(threshold)), fmt, space)[:32]
