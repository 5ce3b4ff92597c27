"""What one scoring returns (:class:`ScoreResult`: per-sample scores of one metric on one model
and data set, reduced) and what the scorings of a :class:`~pytest_unlearn.scoring.Scorer` cost
(:class:`Cost`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .metrics import Metric

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class ScoreResult:
    """Per-sample scores of one metric on one model and dataset."""

    metric: Metric
    values: "pd.Series"  # indexed by sample id
    reduced: float
    reduce: str = "mean"
    model: str = ""
    data: str = ""
    attack: str | None = None
    cost: dict = field(default_factory=dict)
    truncated: list = field(default_factory=list)  # ids of samples whose prompt was cut to fit the context
    # ids of samples whose new-token budget was cut to fit the context (generation metrics only)
    generation_cut: list = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"ScoreResult({self.metric.name}={self.reduced:.4f} [{self.reduce}] on {self.data} "
                f"by {self.model}{', attack ' + self.attack if self.attack else ''}, n={len(self.values)})")


@dataclass
class Cost:
    seconds: float = 0.0
    forward_passes: int = 0  # batches actually run (cache hits run none)
    generations: int = 0
    cached: int = 0

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "forward_batches": self.forward_passes,
                "generation_batches": self.generations, "cache_hits": self.cached}
