"""What :func:`~pytest_unlearn.calibration.calibrate` found (:class:`CalibrationResult`, with its
curve of scores against alpha) and its plot (:func:`plot_curve`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..metrics import Metric

if TYPE_CHECKING:
    import pandas as pd

    from ..models import ModelHandle


@dataclass
class CalibrationResult:
    """What :func:`calibrate` found.  ``model`` is the mixed model at ``alpha``."""

    alpha: float
    model: "ModelHandle"
    retain_score: float
    forget_score: float | None
    original_retain_score: float
    target: float
    tau: float
    metric: Metric
    curve: "pd.DataFrame"            # alpha, retain_score, forget_score (NaN where not computed)
    evaluations: int                 # retain evaluations spent by this call (0 on a cache hit)
    monotone: bool
    notes: list[str] = field(default_factory=list)
    forget_score_uncalibrated: float | None = None   # the unlearned model itself (alpha = 1)
    cached: bool = False

    def __repr__(self) -> str:
        forget = "" if self.forget_score is None else f", forget {self.forget_score:.4f}"
        return (f"CalibrationResult(alpha={self.alpha:.4f}, tau={self.tau:g}, {self.metric.name}: retain "
                f"{self.retain_score:.4f} >= target {self.target:.4f}{forget}, evaluations={self.evaluations}"
                f"{', cached' if self.cached else ''}{'' if self.monotone else ', NOT monotone'})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for the report (NaN written as None)."""
        def num(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)

        return {
            "alpha": self.alpha, "tau": self.tau, "metric": self.metric.name,
            "direction": self.metric.direction, "target": num(self.target),
            "retain_score": num(self.retain_score), "forget_score": num(self.forget_score),
            "forget_score_uncalibrated": num(self.forget_score_uncalibrated),
            "original_retain_score": num(self.original_retain_score),
            "evaluations": self.evaluations, "monotone": self.monotone, "cached": self.cached,
            "notes": list(self.notes),
            "model": {"name": self.model.name, "fingerprint": self.model.fingerprint},
            "curve": [{k: num(v) for k, v in row.items()} for row in self.curve.to_dict("records")],
        }


def _curve_frame(retain: Mapping[float, float], forget: Mapping[float, float]) -> "pd.DataFrame":
    import pandas as pd

    alphas = sorted(set(retain) | set(forget))
    return pd.DataFrame({"alpha": np.array(alphas, dtype=np.float64),
                         "retain_score": [retain.get(a, np.nan) for a in alphas],
                         "forget_score": [forget.get(a, np.nan) for a in alphas]})


# ---------------------------------------------------------------- plotting

def plot_curve(result: CalibrationResult, path) -> Path:
    """Save a PNG of retain (and forget) score against alpha, with the bar and the chosen alpha."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_curve needs matplotlib: pip install matplotlib") from exc

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    curve = result.curve
    retain = curve.dropna(subset=["retain_score"])
    ax.plot(retain["alpha"], retain["retain_score"], "o-", label=f"retain {result.metric.name}")
    forget = curve.dropna(subset=["forget_score"])
    if len(forget):
        ax.plot(forget["alpha"], forget["forget_score"], "s--", label=f"forget {result.metric.name}")
    ax.axhline(result.target, color="gray", linestyle=":", label=f"bar (tau = {result.tau:g})")
    ax.axvline(result.alpha, color="red", linestyle="-.", label=f"alpha = {result.alpha:.3f}")
    ax.set_xlabel("alpha   (0 = original, 1 = unlearned)")
    ax.set_ylabel(f"{result.metric.name} ({result.metric.direction})")
    ax.set_title(f"UWC calibration of {result.model.name}")
    ax.set_xlim(-0.02, 1.02)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
