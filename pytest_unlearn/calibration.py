"""Calibration: Unlearning with Control (UWC).

An unlearning method that destroys the model looks "perfectly unlearned" (forget ES 0)
and is useless.  UWC puts every candidate on the same footing: mix the weights,

    theta(alpha) = (1 - alpha) * theta_original + alpha * theta_unlearned,  alpha in [0, 1]

and pick the largest ``alpha`` whose retain score still reaches ``tau`` times the
original's.  Candidates are then compared by the forget score of their calibrated models
(lower forget ES = stronger unlearning at equal retention).  ``alpha = 1`` (the unlearned
model untouched) is always a candidate, so calibration never makes a result worse.

**The bar** is read in the metric's knowledge direction: for a higher-is-more-knowledge
metric (``es``, ``em``, ``prob``, ``rouge_l``) the mixed model must score at least
``tau * original``; for a lower-is-more-knowledge metric (``ppl``, ``mia_loss``,
``truth_ratio``) at most ``original / tau``.  (For a negative original score, as with the
log-probability MIA scores, the two formulas swap so the bar is always on the
less-knowledge side of the original; see :func:`retain_target`.)

**The search.** ``alpha = 1`` is evaluated first and returned when it meets the bar.
Otherwise the bracket ``[lo, hi] = [0, 1]`` (``lo`` meets the bar, ``hi`` does not) is
shrunk until ``hi - lo <= tol`` and ``lo`` is returned, so the answer always meets the bar
and lies within ``tol`` of the crossing.  Probes are chosen by the ITP method (Oliveira &
Takahashi 2020): a regula-falsi estimate on the measured curve, truncated towards the
midpoint and projected into a shrinking window around it.  This keeps the bracket, never
needs more steps than bisection (``ceil(log2(1/tol))``: 7 for ``tol = 0.01``, so at most 8
retain evaluations counting ``alpha = 1``) and needs fewer on smooth curves.

**Monotonicity.** Bisection assumes the retain score falls monotonically with alpha.
Every evaluated point is kept; if, in alpha order, the score ever gains knowledge by more
than ``monotone_slack`` (relative to the original's score), a :class:`CalibrationWarning`
is issued and ``grid`` evenly spaced alphas are scanned as well; the result is then the
largest evaluated alpha whose score meets the bar, never an alpha bisection merely assumed.

**Memory.** One working copy of the weights is made per unlearned model, allocated directly
on its device (:func:`empty_copy`: never a host copy first), and every alpha is mixed into it
in place, one tensor at a time (:func:`mix_into`); the two source models are read where they
are, never duplicated.  The handles of calibrated models share that copy and mix their own
alpha back in when used after another one (so a suite's calibrations at several taus and
metrics hold one copy, not one each).  Peak memory is the two given models, one working copy
and the activations.  Alpha 0 and 1 are scored on the original and unlearned models
themselves, where they live.  To keep the working copy on a GPU while the sources stay in host
memory, load the sources on the CPU and pass ``device="cuda"``: each source tensor is then moved
to the device one at a time.

**Caching.** Mixed models get deterministic fingerprints (a hash of both fingerprints and
alpha), so the :class:`~pytest_unlearn.scoring.Scorer`'s token-statistics cache hits for
them too, and the whole result (alpha, curve) is cached under a key made of both
fingerprints, the data content hashes, metric, tau, tol, prompt format and reduction.
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .cache import ResultCache, cache_key
from .errors import ConfigError, ModelMismatchError
from .metrics import Metric, get_metric
from .models import ModelHandle

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from .data import Dataset

__all__ = ["CalibrationResult", "CalibrationWarning", "calibrate", "check_compatible", "compare",
           "mix_into", "mixable_tensors", "mixed_fingerprint", "plot_curve", "retain_target"]

ALGORITHM = "uwc-itp-v1"          # part of the cache key: bump when the search changes
GRID_POINTS = 21                  # fallback scan on a non-monotone curve
MONOTONE_SLACK = 0.01             # relative to |original score|
ITP_K1, ITP_K2 = 0.2, 1.5         # ITP truncation delta = K1 * width ** K2
STRUCTURAL_KEYS = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")


class CalibrationWarning(UserWarning):
    """The retain curve is not monotone in alpha: bisection was replaced by a grid scan."""


# ---------------------------------------------------------------- mixing weights

def mixable_tensors(model) -> dict[str, "torch.Tensor"]:
    """Parameters and buffers of ``model`` by name (tied weights listed once)."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return tensors


def _model_type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def check_compatible(original, unlearned) -> None:
    """Raise :class:`ModelMismatchError` unless the two models (handles or modules) can be
    mixed: same ``config.model_type``, same tensor names and shapes (the message names the
    first mismatching tensor), same structural config, same tokenizer vocabulary."""
    m_o = getattr(original, "model", original)
    m_u = getattr(unlearned, "model", unlearned)
    tok_o, tok_u = getattr(original, "tokenizer", None), getattr(unlearned, "tokenizer", None)
    if tok_o is not None and tok_u is not None and tok_o is not tok_u:
        if len(tok_o) != len(tok_u) or tok_o.get_vocab() != tok_u.get_vocab():
            raise ModelMismatchError("cannot mix the models: their tokenizers have different vocabularies "
                                     f"({len(tok_o)} vs {len(tok_u)} tokens); mixing needs the model the "
                                     "unlearned one was made from, with the same tokenizer")
    t_o, t_u = _model_type(m_o), _model_type(m_u)
    if t_o != t_u:
        raise ModelMismatchError(f"cannot mix models of different architectures: the original is "
                                 f"model_type {t_o!r}, the unlearned model {t_u!r}")
    a, b = mixable_tensors(m_o), mixable_tensors(m_u)
    for name, tensor in a.items():
        if name not in b:
            raise ModelMismatchError(f"cannot mix the models: tensor '{name}' {tuple(tensor.shape)} of the "
                                     "original has no counterpart in the unlearned model")
        if tensor.shape != b[name].shape:
            raise ModelMismatchError(f"cannot mix the models: tensor '{name}' has shape {tuple(tensor.shape)} "
                                     f"in the original but {tuple(b[name].shape)} in the unlearned model")
    for name, tensor in b.items():
        if name not in a:
            raise ModelMismatchError(f"cannot mix the models: tensor '{name}' {tuple(tensor.shape)} of the "
                                     "unlearned model has no counterpart in the original")
    c_o, c_u = getattr(m_o, "config", None), getattr(m_u, "config", None)
    for key in STRUCTURAL_KEYS:
        v_o, v_u = getattr(c_o, key, None), getattr(c_u, key, None)
        if v_o is not None and v_u is not None and v_o != v_u:
            raise ModelMismatchError(f"cannot mix the models: config {key} is {v_o} in the original "
                                     f"but {v_u} in the unlearned model")


def mix_into(working_model, original_params, unlearned_params, alpha: float) -> None:
    """Set ``working_model``'s weights to ``(1 - alpha) * original + alpha * unlearned`` in place.

    ``original_params`` / ``unlearned_params`` are models or name -> tensor mappings
    (:func:`mixable_tensors`); they are only read.  Float32/64 tensors are mixed with
    ``copy_`` + ``lerp_`` on the working tensor itself (bit-identical to ``torch.lerp``);
    half-precision ones through float32, one tensor at a time.  ``alpha = 0`` and ``1`` copy
    the original / unlearned tensor exactly.  A source tensor on another device (sources in
    host memory, working copy on a GPU) is moved one tensor at a time.  Non-floating buffers
    are copied from the unlearned model.  A PEFT adapter handle arrives already merged into
    full weights (``load_model`` merges it), so mixing the full tensors is correct for it too.
    """
    import torch

    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    orig = original_params if isinstance(original_params, Mapping) else mixable_tensors(original_params)
    unl = unlearned_params if isinstance(unlearned_params, Mapping) else mixable_tensors(unlearned_params)
    with torch.no_grad():
        for name, w in mixable_tensors(working_model).items():
            o, u = orig.get(name), unl.get(name)
            if o is None or u is None:
                raise ModelMismatchError(f"cannot mix: tensor '{name}' of the working model is missing from the "
                                         f"{'original' if o is None else 'unlearned'} model")
            if o.shape != w.shape or u.shape != w.shape:
                raise ModelMismatchError(f"cannot mix: tensor '{name}' has shape {tuple(w.shape)} in the "
                                         f"working model, {tuple(o.shape)} in the original, "
                                         f"{tuple(u.shape)} in the unlearned")
            if w.data_ptr() in (o.data_ptr(), u.data_ptr()) and w.numel():
                raise ValueError(f"mix_into: the working model shares tensor '{name}' with a source model; "
                                 "mix into a separate copy")
            if not w.is_floating_point() or alpha == 1.0:
                w.copy_(u)
            elif alpha == 0.0:
                w.copy_(o)
            elif w.dtype in (torch.float32, torch.float64) and o.dtype == w.dtype == u.dtype:
                w.copy_(o)
                w.lerp_(u.to(w.device, non_blocking=True), alpha)
            else:
                w.copy_(torch.lerp(o.to(w.device, torch.float32), u.to(w.device, torch.float32), alpha))


def mixed_fingerprint(original_fingerprint: str, unlearned_fingerprint: str, alpha: float) -> str:
    """Deterministic fingerprint of theta(alpha); the endpoints keep the sources' fingerprints
    (theta(0) is the original and theta(1) the unlearned model, bit for bit)."""
    alpha = float(alpha)
    if alpha == 1.0:
        return unlearned_fingerprint
    if alpha == 0.0:
        return original_fingerprint
    text = f"pytest-unlearn-uwc-mix-v1\0{original_fingerprint}\0{unlearned_fingerprint}\0{alpha.hex()}"
    return hashlib.sha256(text.encode()).hexdigest()


def empty_copy(model, device=None):
    """A copy of ``model``'s modules whose parameters and buffers are new, *uninitialised*
    tensors on ``device`` (default: where each one is): the weights are never duplicated in
    host memory on the way to a GPU.  Tied weights stay tied.  The caller fills the tensors
    (:func:`mix_into` writes every one of them)."""
    import torch

    memo: dict[int, Any] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for t in store.values():
                if t is None or id(t) in memo:
                    continue
                fresh = torch.empty_like(t, device=device if device is not None else t.device)
                memo[id(t)] = (torch.nn.Parameter(fresh, requires_grad=t.requires_grad)
                               if isinstance(t, torch.nn.Parameter) else fresh)
    return copy.deepcopy(model, memo)


class _Workspace:
    """The one working copy of the weights, created on first use (on ``device``, default the
    unlearned model's) and reused across alphas, taus and metrics (and across candidates in
    :func:`compare`).  Handles it gives out re-mix their alpha into it whenever they are used
    (:class:`_MixedHandle`), so any number of calibrated models share one copy."""

    def __init__(self, device=None):
        self.device = device
        self.model = None
        self.holds: tuple | None = None
        self.copies = 0  # working copies made (1 unless the copy was released and needed again)

    def ensure(self, original: "ModelHandle", unlearned: "ModelHandle", alpha: float):
        """The working copy holding theta(alpha) of these two models."""
        if self.model is None:
            from .models import require_one_device

            for source in (original, unlearned):
                require_one_device(source.model, f"calibration (mixing {source.name} {source.source} into a "
                                                  "working copy of the weights)")
            self.model = empty_copy(unlearned.model, self.device).eval()
            self.holds = None
            self.copies += 1
        state = (id(original.model), id(unlearned.model), original.fingerprint, unlearned.fingerprint, alpha)
        if self.holds != state:
            self.holds = None
            mix_into(self.model, original.model, unlearned.model, alpha)
            self.holds = state
        return self.model

    def handle(self, original: "ModelHandle", unlearned: "ModelHandle", alpha: float,
               name: str) -> "ModelHandle":
        self.ensure(original, unlearned, alpha)
        fingerprint = mixed_fingerprint(original.fingerprint, unlearned.fingerprint, alpha)
        source = f"uwc({original.source} -> {unlearned.source}, alpha={alpha:.6g})"
        return _MixedHandle(self, original, unlearned, alpha, tokenizer=unlearned.tokenizer,
                            fingerprint=fingerprint, name=name, source=source, opt_ins=unlearned.opt_ins)

    def release(self) -> None:
        if self.model is None:
            return
        import gc

        on_cuda = any(p.is_cuda for p in self.model.parameters())
        self.model, self.holds = None, None
        gc.collect()
        if on_cuda:
            import torch
            torch.cuda.empty_cache()


class _MixedHandle(ModelHandle):
    """The mixed model theta(alpha) in a shared working copy (:class:`_Workspace`): reading
    ``model`` mixes its alpha back in when another handle of the same copy changed it."""

    def __init__(self, workspace: _Workspace, original, unlearned, alpha: float, **kwargs):
        self._workspace, self._mix = workspace, (original, unlearned, float(alpha))
        super().__init__(model=None, **kwargs)
        self._released = False

    @property
    def model(self):
        return None if self._released else self._workspace.ensure(*self._mix)

    @model.setter
    def model(self, value) -> None:
        if value is not None:
            raise ValueError("a calibrated model's weights are mixed into its working copy; they cannot be replaced")
        self._released = True  # Suite.close() drops its references this way

    @property
    def alpha(self) -> float:
        return self._mix[2]

    @property
    def device(self):
        from .forward import input_device

        held = self._workspace.model  # where the copy lives does not depend on alpha: no mixing
        return input_device(held if held is not None else self.model)

    @property
    def dtype(self):
        held = self._workspace.model
        model = held if held is not None else self.model
        return next(p.dtype for p in model.parameters() if p.is_floating_point())

    def release(self) -> None:
        """Free the shared working copy (the next use of any handle of it makes it again)."""
        self._released = True
        self._workspace.release()


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


# ---------------------------------------------------------------- the result

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


# ---------------------------------------------------------------- calibrate

def calibrate(original: "ModelHandle", unlearned: "ModelHandle", retain: "Dataset", tau: float = 0.9,
              metric: str | Metric = "es", *, forget: "Dataset | None" = None, scorer=None,
              tol: float = 0.01, reduce: str = "mean", cache: ResultCache | None = None,
              progress: bool = False, device=None, monotone_slack: float = MONOTONE_SLACK,
              grid: int = GRID_POINTS, _workspace: _Workspace | None = None) -> CalibrationResult:
    """Find the largest alpha in [0, 1] whose mixed model keeps ``tau`` of the original's
    retain score (see the module docstring for the bar, the search and its guarantees).

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
    from .multiple_choice import scorable
    forget = forget if forget is None or scorable(m, forget) else None  # QA forget set, MMLU-style retain set
    if scorer is None:
        from .scoring import Scorer
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
        from .scoring import Scorer
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
