"""The search on one sample: hypothesis draws batches of transformations and shrinks a leak.

One hypothesis example is a list of ``batch`` transformations (``st.lists(transformations(),
min_size=batch, max_size=batch)``).  The property scores all of them in one batched
``Scorer.per_sample(metric, model, rows, parts=...)`` call and fails when any shows more
knowledge than the threshold (in the metric's direction).  Hypothesis then shrinks the
failing batch; the transformations that do not matter shrink to the plain prompt, and the
one that leaks shrinks to its simplest form (fewer steps, lighter kinds, plainer options).

Every distinct prompt is scored once per search (a memo keyed by the exact
:class:`~pytest_unlearn.prompts.PromptParts`).  A found leak is saved in hypothesis's
``DirectoryBasedExampleDatabase`` under the sample's key, with a marker file beside it
(:func:`_marker`) so that the next run searches that sample first.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..atomic import write_text_atomically
from ..prompts import PromptParts, TruncationWarning
from .prompt_edits import EditEnv, Transformation, transformations
from .result import SampleSearch

if TYPE_CHECKING:
    from ..data import Dataset
    from ..metrics import Metric
    from ..models import ModelHandle
    from ..scoring import Scorer


class _OutOfTime(BaseException):
    """Raised inside the property when the time budget is spent before any leak: not an
    ``Exception``, so hypothesis stops at once instead of treating it as a failure to shrink."""


class _Leak(Exception):
    """Raised inside the hypothesis property: some candidate of the batch leaks."""

    def __init__(self, batch: Sequence[Transformation], parts: Sequence[PromptParts],
                 scores: Sequence[float | None], leaking: Sequence[int]):
        super().__init__(f"{len(leaking)} of {len(batch)} candidate prompts leak")
        self.batch, self.parts, self.scores, self.leaking = list(batch), list(parts), list(scores), list(leaking)


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
