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

The pieces: :mod:`.search` (:func:`calibrate`, :func:`compare`, the bar), :mod:`.mixing` (mixing
two models' weights, the working copy), :mod:`.workspace` (the one working copy shared by the
calibrated models) and :mod:`.result` (:class:`CalibrationResult`, :func:`plot_curve`).  Every
name is importable from here, as before (``from pytest_unlearn.calibration import calibrate``).
"""

from __future__ import annotations

from .mixing import STRUCTURAL_KEYS, check_compatible, empty_copy, mix_into, mixable_tensors, mixed_fingerprint
from .result import CalibrationResult, plot_curve
from .search import (ALGORITHM, GRID_POINTS, ITP_K1, ITP_K2, MONOTONE_SLACK, CalibrationWarning, calibrate, compare,
                     retain_target)
from .workspace import _Workspace

__all__ = ["CalibrationResult", "CalibrationWarning", "calibrate", "check_compatible", "compare",
           "mix_into", "mixable_tensors", "mixed_fingerprint", "plot_curve", "retain_target"]
