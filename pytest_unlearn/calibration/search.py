"""The alpha search: :func:`calibrate` (the largest alpha whose mixed model meets the bar, by
ITP bisection with a grid scan on a non-monotone curve; cached) and :func:`compare` (every
candidate calibrated to the same retention, one working copy for all).  See
:mod:`pytest_unlearn.calibration` for the bar, the search and its guarantees."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Mapping

import numpy as np

from ..cache import ResultCache, cache_key
from ..errors import ConfigError, ModelMismatchError
from ..metrics import Metric, get_metric
from .mixing import check_compatible
from .result import CalibrationResult, _curve_frame
from .workspace import _Workspace

if TYPE_CHECKING:
    import pandas as pd

    from ..data import Dataset
    from ..models import ModelHandle

ALGORITHM = "uwc-itp-v1"          # part of the cache key: bump when the search changes
GRID_POINTS = 21                  # fallback scan on a non-monotone curve
MONOTONE_SLACK = 0.01             # relative to |original score|
ITP_K1, ITP_K2 = 0.2, 1.5         # ITP truncation delta = K1 * width ** K2


class CalibrationWarning(UserWarning):
    """The retain curve is not monotone in alpha: bisection was replaced by a grid scan."""


# ---------------------------------------------------------------- the bar and the curve

def retain_target(metric: str | Metric, original_score: float, tau: float) -> float:
    """The retain score a mixed model must reach: ``tau * original`` for higher-is-more-knowledge
    metrics, ``original / tau`` for lower-is-more-knowledge ones (swapped for a negative
    original score, so the bar is always ``tau`` of the way on the less-knowledge side)."""
    m = get_metric(metric)
    shrink = m.higher_is_more_knowledge == (original_score >= 0)
    return original_score * tau if shrink else original_score / tau


def _margin(m: Metric, score: float, target: float) -> float:
    """How far ``score`` is past the bar in the more-knowledge direction (>= 0: meets it)."""
    return score - target if m.higher_is_more_knowledge else target - score


def _is_monotone(points: Mapping[float, float], m: Metric, slack: float) -> bool:
    """Knowledge never rises with alpha by more than ``slack`` between evaluated points."""
    sign = 1.0 if m.higher_is_more_knowledge else -1.0
    lowest = math.inf                   # least knowledge seen at smaller alphas
    for alpha in sorted(points):
        knowledge = sign * points[alpha]
        if knowledge > lowest + slack:
            return False
        lowest = min(lowest, knowledge)
    return True


def _itp_probe(lo: float, g_lo: float, hi: float, g_hi: float, eps: float, steps_left: int) -> float:
    """One ITP step on the bracket (``g_lo >= 0 > g_hi``): the next alpha to evaluate."""
    width, mid = hi - lo, (lo + hi) / 2
    radius = max(eps * 2.0 ** steps_left - width / 2, 0.0)
    delta = ITP_K1 * width ** ITP_K2
    x_f = (lo * g_hi - g_lo * hi) / (g_hi - g_lo)           # regula falsi on the measured curve
    sigma = math.copysign(1.0, mid - x_f) if mid != x_f else 0.0
    x_t = x_f + sigma * delta if delta <= abs(mid - x_f) else mid
    x = x_t if abs(x_t - mid) <= radius else mid - sigma * radius
    rounded = round(x, 6)                                      # readable curves, same bracket
    return rounded if lo < rounded < hi else x


# ---------------------------------------------------------------- calibrate

def calibrate(original: "ModelHandle", unlearned: "ModelHandle", retain: "Dataset", tau: float = 0.9,
              metric: str | Metric = "es", *, forget: "Dataset | None" = None, scorer=None,
              tol: float = 0.01, reduce: str = "mean", cache: ResultCache | None = None,
              progress: bool = False, device=None, monotone_slack: float = MONOTONE_SLACK,
              grid: int = GRID_POINTS, _workspace: _Workspace | None = None) -> CalibrationResult:
    """Find the largest alpha in [0, 1] whose mixed model keeps ``tau`` of the original's
    retain score (see :mod:`pytest_unlearn.calibration` for the bar, the search and its guarantees).

    ``scorer`` defaults to a :class:`~pytest_unlearn.scoring.Scorer` with ``cache``;
    ``cache`` (default: the scorer's) also stores the calibration result itself.
    ``tol`` is the tolerance in alpha: the true crossing lies in ``[alpha, alpha + tol)``
    on a monotone curve.  ``device`` places the working copy (default: the unlearned
    model's device).  With ``forget`` data the forget score is computed at the chosen alpha,
    at alpha = 1 and at alpha = 0.  ``evaluations`` counts retain-set scorings of candidate
    alphas (alpha = 1 included); the original's own retain score, needed for the bar (and by
    the assertions anyway), is not counted.
    """
    if not 0.0 < float(tau) <= 1.0:
        raise ConfigError(f"calibration tau must be in (0, 1], got {tau!r}")
    if not 0.0 < float(tol) < 1.0:
        raise ConfigError(f"calibration tol (tolerance in alpha) must be in (0, 1), got {tol!r}")
    if int(grid) < 3:
        raise ConfigError(f"calibration grid must have at least 3 points, got {grid!r}")
    tau, tol, grid = float(tau), float(tol), int(grid)
    m = get_metric(metric)
    from ..multiple_choice import scorable
    forget = forget if forget is None or scorable(m, forget) else None  # QA forget set, MMLU-style retain set
    if scorer is None:
        from ..scoring import Scorer
        scorer = Scorer(cache=cache, progress=progress)
    if cache is None:
        cache = getattr(scorer, "cache", None) or ResultCache(None)
    try:
        check_compatible(original, unlearned)
    except ModelMismatchError as exc:  # name the two checkpoints: the user may not know which is which
        raise ModelMismatchError(f"calibrating the {getattr(unlearned, 'name', 'unlearned')} model "
                                 f"({getattr(unlearned, 'source', '?')}) by mixing it with the original "
                                 f"({getattr(original, 'source', '?')}): {exc}") from exc
    workspace = _workspace if _workspace is not None else _Workspace(device)
    final_name = f"{unlearned.name}@uwc(tau={tau:g})"

    def handle_at(alpha: float, name: str | None = None) -> "ModelHandle":
        if alpha == 1.0:
            return unlearned if name is None else unlearned.derive(name=name, fingerprint=unlearned.fingerprint)
        if alpha == 0.0:
            return original if name is None else original.derive(name=name, fingerprint=original.fingerprint)
        return workspace.handle(original, unlearned, alpha, name or f"{unlearned.name}@uwc(alpha={alpha:.4g})")

    def score(handle, data) -> float:
        return float(scorer.score(m, handle, data, reduce=reduce).reduced)

    if hasattr(scorer, "prompt_format"):
        prompt = scorer.prompt_format(unlearned).spec
    else:  # a duck-typed scorer
        prompt = repr(getattr(scorer, "prompt", None))
    work_device = str(device) if device is not None else str(unlearned.device)
    key = cache_key("calibrate", ALGORITHM, original.fingerprint, unlearned.fingerprint, retain.content_hash,
                    forget.content_hash if forget is not None else None, m.key(), m.higher_is_more_knowledge,
                    tau, tol, reduce, prompt, getattr(scorer, "batch_size", None), work_device,
                    str(unlearned.dtype), monotone_slack, grid)
    hit = cache.get(key)
    if hit is not None:
        alphas = [float(a) for a in hit["alpha"]]
        retain_pts = {a: float(s) for a, s in zip(alphas, hit["retain"]) if not np.isnan(s)}
        forget_pts = {a: float(s) for a, s in zip(alphas, hit["forget"]) if not np.isnan(s)}
        alpha, s0, target, _, monotone, forget_unc = (float(x) for x in hit["scalars"])
        notes = [str(n) for n in hit["notes"]] + ["served from the result cache: no evaluation run"]
        return CalibrationResult(alpha, handle_at(alpha, final_name), retain_pts[alpha], forget_pts.get(alpha),
                                 s0, target, tau, m, _curve_frame(retain_pts, forget_pts), 0, bool(monotone),
                                 notes, None if np.isnan(forget_unc) else forget_unc, cached=True)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc=f"calibrating {unlearned.name} ({m.name}, tau={tau:g})", unit="eval", leave=False)
    notes: list[str] = []
    retain_pts: dict[float, float] = {}
    evaluations = 0

    def evaluate(alpha: float) -> float:
        nonlocal evaluations
        if alpha not in retain_pts:
            retain_pts[alpha] = score(handle_at(alpha), retain)
            if alpha != 0.0:
                evaluations += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(alpha=f"{alpha:.4f}", retain=f"{retain_pts[alpha]:.4f}")
        return retain_pts[alpha]

    try:
        s0 = evaluate(0.0)
        target = retain_target(m, s0, tau)
        g_lo, g_hi = _margin(m, s0, target), _margin(m, evaluate(1.0), target)
        slack = abs(monotone_slack) * (abs(s0) if math.isfinite(s0) and s0 != 0 else 1.0)
        if g_hi >= 0:
            alpha = 1.0
            notes.append("the unlearned model already meets the bar: alpha = 1 (no mixing)")
            monotone = _is_monotone(retain_pts, m, slack)
            if not monotone:
                notes.append(f"the unlearned model's retain {m.name} is better than the original's")
        else:
            lo, hi = 0.0, 1.0
            eps = tol / 2
            max_steps = max(0, math.ceil(math.log2(1.0 / tol - 1e-12)))
            step = 0
            while hi - lo > tol * (1 + 1e-9) and step < max_steps + 4:
                x = _itp_probe(lo, g_lo, hi, g_hi, eps, max_steps - step)
                g = _margin(m, evaluate(x), target)
                if g >= 0:
                    lo, g_lo = x, g
                else:
                    hi, g_hi = x, g
                step += 1
            alpha = lo
            monotone = _is_monotone(retain_pts, m, slack)
            if not monotone:
                message = (f"calibrating {unlearned.name}: the retain {m.name} is not monotone in alpha "
                           f"(points {', '.join(f'{a:.3g}:{s:.3g}' for a, s in sorted(retain_pts.items()))}); "
                           f"scanning {grid} alphas instead of trusting bisection")
                warnings.warn(CalibrationWarning(message), stacklevel=2)
                for a in np.linspace(0.0, 1.0, grid):
                    evaluate(float(round(a, 12)))
                meeting = [a for a, s in retain_pts.items() if _margin(m, s, target) >= 0]
                alpha = max(meeting)
                notes.append(f"retain curve not monotone: grid scan of {grid} points; alpha = {alpha:.4g} is the "
                             "largest evaluated alpha that meets the bar")
        if s0 == 0 or not math.isfinite(s0):
            notes.append(f"the original's retain {m.name} is {s0}: the bar is trivial")

        forget_pts: dict[float, float] = {}
        forget_unc = None
        if forget is not None:
            forget_pts[0.0] = score(original, forget)
            forget_pts[1.0] = forget_unc = score(unlearned, forget)
            if alpha not in forget_pts:
                forget_pts[alpha] = score(handle_at(alpha), forget)
    finally:
        if bar is not None:
            bar.close()

    result = CalibrationResult(alpha, handle_at(alpha, final_name), retain_pts[alpha], forget_pts.get(alpha),
                               s0, target, tau, m, _curve_frame(retain_pts, forget_pts), evaluations,
                               monotone, notes, forget_unc)
    curve = result.curve
    cache.put(key, {
        "alpha": curve["alpha"].to_numpy(np.float64),
        "retain": curve["retain_score"].to_numpy(np.float64),
        "forget": curve["forget_score"].to_numpy(np.float64),
        "scalars": np.array([alpha, s0, target, evaluations, float(monotone),
                             np.nan if forget_unc is None else forget_unc], dtype=np.float64),
        "notes": np.array(notes, dtype=str),
    })
    return result


# ---------------------------------------------------------------- comparing candidates

def compare(original: "ModelHandle", candidates: Mapping[str, "ModelHandle"], retain: "Dataset",
            forget: "Dataset", tau: float = 0.9, metric: str | Metric = "es", *, scorer=None,
            tol: float = 0.01, reduce: str = "mean", cache: ResultCache | None = None,
            progress: bool = False, device=None, monotone_slack: float = MONOTONE_SLACK,
            grid: int = GRID_POINTS) -> "pd.DataFrame":
    """Calibrate every candidate to the same retention and tabulate (the paper's table).

    Columns: ``candidate``, ``alpha``, ``retain_score``, ``forget_score`` (calibrated),
    ``forget_score_uncalibrated`` (alpha = 1), ``evaluations``.  Rows are sorted by the
    calibrated forget score, least knowledge first (for ES: lowest first = strongest
    unlearning at equal retention).  One working copy of the weights serves all candidates.
    """
    import pandas as pd

    m = get_metric(metric)
    if scorer is None:
        from ..scoring import Scorer
        scorer = Scorer(cache=cache, progress=progress)
    workspace = _Workspace(device)
    rows = []
    try:
        for name, candidate in candidates.items():
            res = calibrate(original, candidate, retain, tau, m, forget=forget, scorer=scorer, tol=tol,
                            reduce=reduce, cache=cache, progress=progress, device=device,
                            monotone_slack=monotone_slack, grid=grid, _workspace=workspace)
            rows.append({"candidate": name, "alpha": res.alpha, "retain_score": res.retain_score,
                         "forget_score": res.forget_score,
                         "forget_score_uncalibrated": res.forget_score_uncalibrated,
                         "evaluations": res.evaluations})
    finally:
        workspace.model = None  # the results' mixed models are not returned: free the copy
    columns = ["candidate", "alpha", "retain_score", "forget_score", "forget_score_uncalibrated", "evaluations"]
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values("forget_score", ascending=m.higher_is_more_knowledge, kind="mergesort",
                              ignore_index=True)
    table.attrs.update({"metric": m.name, "direction": m.direction, "tau": float(tau)})
    return table
