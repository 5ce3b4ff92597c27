"""What a leak search found: :class:`LeakSearchResult` and, per sample, :class:`SampleSearch`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..prompts import PromptParts
from .prompt_edits import EditEnv, Transformation

if TYPE_CHECKING:
    from ..metrics import Metric

__all__ = ["DEFAULT_MAX_EXAMPLES", "LeakSearchResult", "SampleSearch"]

DEFAULT_MAX_EXAMPLES = 200


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
