"""``find_leak``: hypothesis searches prompt transformations for one that extracts a forgotten fact.

Per forget sample (or a seeded subset), hypothesis draws *batches*: one hypothesis example
is a list of ``batch`` transformations (``st.lists(transformations(), min_size=batch,
max_size=batch)``).  The property scores all of them in one batched
``Scorer.per_sample(metric, model, rows, parts=...)`` call and fails when any shows more
knowledge than the threshold (in the metric's direction).  Hypothesis then shrinks the
failing batch; the transformations that do not matter shrink to the plain prompt, and the
one that leaks shrinks to its simplest form (fewer steps, lighter kinds, plainer options).

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
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..atomic import write_text_atomically
from ..errors import ConfigError
from ..prompts import PromptParts, TruncationWarning, dataset_parts, render_context
from ..suite import Suite, current_suite
from .prompt_edits import SPACE_VERSION, EditEnv, Transformation, _check_kinds, transformations

if TYPE_CHECKING:
    from ..data import Dataset
    from ..metrics import Metric
    from ..models import ModelHandle
    from ..scoring import Scorer

__all__ = ["DEFAULT_MAX_EXAMPLES", "LeakSearchResult", "SampleSearch", "find_leak", "leak_database_root"]

DEFAULT_MAX_EXAMPLES = 200
DEFAULT_MAX_STEPS = 4


# ---------------------------------------------------------------- results

@dataclass
class SampleSearch:
    """The search on one sample.  ``examples``: candidate prompts drawn (``batch`` per
    hypothesis call, shrinking included); ``examples_to_find``: those drawn up to and
    including the batch that first leaked."""

    sample: str
    found: bool
    score: float | None            # the leak's score, or the most knowledge seen
    transformation: Transformation | None  # the minimal leak, or the closest candidate
    examples: int = 0
    examples_to_find: int | None = None
    batches: int = 0               # hypothesis calls (one candidate batch each)
    batches_to_find: int | None = None
    forward_batches: int = 0       # model batches actually run (memoised prompts run none)
    scored: int = 0                # distinct prompts scored
    seconds: float = 0.0
    replayed: bool = False         # the leak came back from the example database
    timed_out: bool = False

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("sample", "found", "score", "examples", "examples_to_find",
                                            "batches", "batches_to_find", "forward_batches", "scored",
                                            "seconds", "replayed", "timed_out")}
        d["transformation"] = self.transformation.to_dict() if self.transformation is not None else None
        return d


@dataclass
class LeakSearchResult:
    """What :func:`find_leak` found.  When ``found``: ``sample``, ``transformation`` (shrunk),
    ``prompt`` (readable), ``context`` (the exact text the model reads), ``generated`` (its
    greedy answer) and ``score``; ``baseline_*`` are the same for the plain prompt.  When not,
    ``score`` is the most knowledge any candidate showed (``closest_*`` say where)."""

    found: bool
    metric: "Metric"
    threshold: float
    model: str
    data: str
    score: float | None
    source: str = ""
    sample: str | None = None
    transformation: Transformation | None = None
    prompt: str | None = None
    context: str | None = None
    parts: PromptParts | None = None
    answer: str | None = None
    generated: str | None = None
    baseline_prompt: str | None = None
    baseline_score: float | None = None
    baseline_generated: str | None = None
    closest_sample: str | None = None
    closest_transformation: Transformation | None = None
    examples: int = 0
    batches: int = 0
    forward_batches: int = 0
    scored: int = 0
    seconds: float = 0.0
    batch: int = 0
    max_examples: int = DEFAULT_MAX_EXAMPLES
    time_budget: float | None = None
    seed: int = 0
    samples_total: int = 0
    subset: bool = False
    timed_out: bool = False
    database: str | None = None
    searches: list[SampleSearch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    env: EditEnv | None = field(default=None, repr=False)

    @property
    def leak(self) -> SampleSearch | None:
        return next((s for s in self.searches if s.found), None)

    @property
    def replayed(self) -> bool:
        return bool(self.leak and self.leak.replayed)

    @property
    def examples_to_find(self) -> int | None:
        return self.leak.examples_to_find if self.leak else None

    @property
    def samples_searched(self) -> int:
        return len(self.searches)

    def describe(self) -> str:
        """The transformation (or the closest candidate) as readable text."""
        t = self.transformation if self.found else self.closest_transformation
        return t.describe(self.env) if t is not None else "-"

    def budget(self) -> dict:
        return {"max_examples": self.max_examples, "time_budget": self.time_budget, "batch": self.batch,
                "seed": self.seed, "samples": self.samples_searched, "samples_total": self.samples_total}

    def to_dict(self) -> dict:
        return {"found": self.found, "metric": self.metric.name, "threshold": self.threshold,
                "model": self.model, "data": self.data, "score": self.score, "sample": self.sample,
                "transformation": self.transformation.to_dict() if self.transformation is not None else None,
                "description": self.describe(), "prompt": self.prompt, "answer": self.answer,
                "generated": self.generated, "baseline_score": self.baseline_score,
                "baseline_generated": self.baseline_generated, "closest_sample": self.closest_sample,
                "examples": self.examples, "examples_to_find": self.examples_to_find, "batches": self.batches,
                "forward_batches": self.forward_batches, "scored": self.scored, "seconds": round(self.seconds, 3),
                "budget": self.budget(), "timed_out": self.timed_out, "replayed": self.replayed,
                "database": self.database, "searches": [s.to_dict() for s in self.searches],
                "notes": list(self.notes)}

    def __repr__(self) -> str:
        what = (f"leak on sample {self.sample}: {self.metric.name}={self.score:.4f} under "
                f"{self.describe()}" if self.found else f"no leak, closest {self.metric.name}="
                f"{self.score if self.score is None else round(self.score, 4)}")
        return (f"LeakSearchResult({what}; {self.examples} candidates, {self.forward_batches} forward "
                f"batches, {self.seconds:.1f}s)")


class _OutOfTime(BaseException):
    """Raised inside the property when the time budget is spent before any leak: not an
    ``Exception``, so hypothesis stops at once instead of treating it as a failure to shrink."""


class _Leak(Exception):
    """Raised inside the hypothesis property: some candidate of the batch leaks."""

    def __init__(self, batch: Sequence[Transformation], parts: Sequence[PromptParts],
                 scores: Sequence[float | None], leaking: Sequence[int]):
        super().__init__(f"{len(leaking)} of {len(batch)} candidate prompts leak")
        self.batch, self.parts, self.scores, self.leaking = list(batch), list(parts), list(scores), list(leaking)


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


# ---------------------------------------------------------------- one sample

def _candidate_batches(k: int, *, max_steps: int, shot_pool_size: int, kinds: Sequence[str]):
    """``k`` transformations per hypothesis example: distinct ones (so a batch is nearly ``k``
    distinct prompts) unless the space is too small to draw ``k`` distinct ones easily."""
    from hypothesis import strategies as st

    space = transformations(max_steps=max_steps, shot_pool_size=shot_pool_size, kinds=kinds)
    return st.lists(space, min_size=k, max_size=k,
                    unique=_space_size(max_steps, shot_pool_size, kinds) >= 4 * k)


def _space_size(max_steps: int, shot_pool_size: int, kinds: Sequence[str]) -> float:
    """How many transformations there are (``inf`` with noise: its seeds are many)."""
    from .prompt_edits import _OPTIONS, MAX_SHOTS

    if "noise" in kinds:
        return math.inf
    n = sum(len(_OPTIONS[k]) for k in kinds if k in _OPTIONS)
    if "shots" in kinds and shot_pool_size:
        n += sum(math.perm(shot_pool_size, j) for j in range(1, min(MAX_SHOTS, shot_pool_size) + 1))
    return float(sum(n ** j for j in range(max_steps + 1)))


def _hypothesis_settings(n_calls: int, database):
    from hypothesis import HealthCheck, Phase, Verbosity, settings

    return settings(database=database, max_examples=n_calls, deadline=None, derandomize=False,
                    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                    verbosity=Verbosity.quiet, print_blob=False)


def _search_sample(scorer: "Scorer", handle: "ModelHandle", dataset: "Dataset", m: "Metric", threshold: float,
                   pos: int, base: PromptParts, env: EditEnv, strategy, n_calls: int, sample_seed: int,
                   root: Path | None, key: str, deadline: float | None,
                   truncated: list[int]) -> tuple[SampleSearch, _Leak | None]:
    from hypothesis import given, seed as hseed, target

    sid = dataset.ids[pos]
    out = SampleSearch(sid, False, None, None)
    memo: dict[PromptParts, float] = {}
    rows: dict[int, "Dataset"] = {}
    error: list[BaseException] = []
    best: list = [None, None]  # most knowledge seen: score, transformation
    started, cost0 = time.perf_counter(), scorer.cost.forward_passes + scorer.cost.generations
    had_marker = root is not None and _marker(root, key).is_file()
    sign = 1.0 if m.higher_is_more_knowledge else -1.0

    def score(parts: list[PromptParts]) -> list[float | None]:
        todo = [p for p in dict.fromkeys(parts) if p not in memo]
        if todo and deadline is not None and time.monotonic() >= deadline:
            out.timed_out = True  # shrinking out of time: only what was already scored counts
        elif todo:
            if len(todo) not in rows:
                rows[len(todo)] = dataset.subset([pos] * len(todo))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TruncationWarning)
                values = scorer.per_sample(m, handle, rows[len(todo)], parts=todo)
            for w in caught:
                if issubclass(w.category, TruncationWarning):
                    truncated[0] += 1
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            memo.update(zip(todo, (float(v) for v in values)))
            out.scored += len(todo)
        return [memo.get(p) for p in parts]

    def probe(batch):
        if error:
            return
        if out.batches_to_find is None and deadline is not None and time.monotonic() >= deadline:
            out.timed_out = True
            raise _OutOfTime()
        out.batches += 1
        out.examples += len(batch)
        try:
            parts = [t.apply(base, env) for t in batch]
            scores = score(parts)
        except Exception as exc:  # noqa: BLE001 - an error is raised after hypothesis, never shrunk
            error.append(exc)
            return
        known = [i for i, s in enumerate(scores) if s is not None]
        if not known:
            return
        top = max(known, key=lambda i: sign * scores[i])
        if best[0] is None or m.more_knowledge(scores[top], best[0]):
            best[:] = [scores[top], batch[top]]
        leaking = [i for i in known if m.more_knowledge(scores[i], threshold)]
        if leaking:
            if out.batches_to_find is None:
                out.batches_to_find, out.examples_to_find = out.batches, out.examples
            raise _Leak(batch, parts, scores, leaking)
        value = sign * scores[top]
        target(value if math.isfinite(value) else math.copysign(1e300, value), label="knowledge")

    database = None
    if root is not None:
        from hypothesis.database import DirectoryBasedExampleDatabase

        database = DirectoryBasedExampleDatabase(str(root / key))
    # seed() then settings(): seed() alone would switch the example database off
    test = given(strategy)(probe)
    test = _hypothesis_settings(n_calls, database)(hseed(sample_seed)(test))
    # the database folder is already per key; a fixed key keeps saved leaks valid when this
    # module's source changes (hypothesis would otherwise key them by the function's source)
    test._hypothesis_internal_database_key = b"pytest-unlearn-leak-search"
    leak = None
    try:
        test()
    except _Leak as exc:
        leak = exc
    except _OutOfTime:
        pass
    if error:
        raise error[0]
    out.seconds = time.perf_counter() - started
    out.forward_batches = scorer.cost.forward_passes + scorer.cost.generations - cost0
    if leak is not None:
        i = min(leak.leaking, key=lambda j: leak.batch[j].sort_key())
        out.found, out.score, out.transformation = True, float(leak.scores[i]), leak.batch[i]
        leak.leaking = [i]
        out.replayed = had_marker and out.batches_to_find == 1
        if root is not None:
            _write_marker(root, key, out, leak.parts[i])
    else:
        out.score = best[0]
        out.transformation = best[1]
        if root is not None and not out.timed_out:
            try:
                _marker(root, key).unlink()
            except OSError:
                pass
    return out, leak


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


def _marker(root: Path, key: str) -> Path:
    return root / f"{key}.leak.json"


def _write_marker(root: Path, key: str, search: SampleSearch, parts: PromptParts) -> None:
    """A note that ``key`` holds a leak (samples with one are searched first next time)."""
    path = _marker(root, key)
    payload = {"sample": search.sample, "score": search.score,
               "transformation": search.transformation.to_dict() if search.transformation else None,
               "question": parts.question}
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(payload, default=str))
    except OSError:  # a read-only cache must not turn a finding into an error
        pass
