"""``assert_forgotten`` and ``assert_retained``: unlearning guarantees as assertions.

Both use the active :class:`~pytest_unlearn.suite.Suite` (the pytest session's, or
one a notebook activated or passes as ``suite=``).  A guarantee that does not hold
raises :class:`~pytest_unlearn.errors.UnlearningAssertionError` with a message that
explains it; a step that cannot run (an attack error, a NaN score, a sample an attack
left unscored) raises an :class:`~pytest_unlearn.errors.UnlearnError`: an assertion
never passes on what remained.

``assert_forgotten`` semantics:

* the threshold is read in the metric's knowledge direction: "forgotten" means the
  score shows at most ``threshold`` knowledge (ES <= 0.05; perplexity >= 50);
* the verdict takes, per sample, the most knowledge over no attack and every listed
  attack, then reduces over samples, reading every reduction in the knowledge direction:
  ``mean``, ``median``, ``max`` (the sample with the most knowledge: the lowest
  perplexity), ``qNN`` (the NN-th percentile of knowledge: for lower-is-more metrics the
  (100 - NN)-th percentile of the values) or ``min`` (the least knowledge).  ``max`` and
  high quantiles are stricter than the mean; ``min`` and quantiles below ``q50`` are
  lenient and issue an :class:`UnlearnWarning` (and a note);
* ``confidence=0.95`` also requires the one-sided bootstrap bound (1000 resamples,
  seeded by ``unlearn_seed``) of that reduced score, taken in the knowledge direction,
  to be within the threshold;
* the same attack listed twice (``quantize:4`` and ``quantize:bits=4``) is a
  :class:`ConfigError`, as in :func:`~pytest_unlearn.audit.audit_metrics`;
* controls: every attack also runs on the original model and, when configured, on the
  reference model.  An attack that also wipes out the *original's* knowledge is
  **uninformative** (:func:`~pytest_unlearn.attacks.attack_is_uninformative`, one rule for
  every metric and attack kind): it cannot show that anything was forgotten.  It still counts
  in the worst case (it can only raise it, so it never makes a gate pass), but its row reads
  "uninformative" instead of "ok", the message and report say why, and an
  :class:`UnlearnWarning` is issued.  The gate fails only if a component leaks;
* the reference rule: with a reference model, an attacked score counts for a sample only
  where it shows strictly more knowledge than the reference's under the same attack on the
  same sample; elsewhere the attack recovered nothing there (docs/attacks.md, "Controls").

This module re-exports the gates (:mod:`pytest_unlearn.gates`), where each assertion is
one pipeline: check the arguments, measure, decide (pure functions over arrays), record,
write the message.
"""

from __future__ import annotations

from .errors import UnlearnWarning, VacuousCheckError
from .gates.forgotten import DEFAULT_TAU, UNINFORMATIVE, ForgettingResult, assert_forgotten
from .gates.messages import MAX_SHOWN_SAMPLES, MIN_SHOWN_SAMPLES
from .gates.retained import RetentionResult, assert_retained
from .gates.verdict import BOOTSTRAP_RESAMPLES, bootstrap_bound

__tracebackhide__ = True  # pytest hides every frame of this module in tracebacks

__all__ = ["assert_forgotten", "assert_retained", "ForgettingResult", "RetentionResult", "UnlearnWarning",
           "VacuousCheckError", "bootstrap_bound", "BOOTSTRAP_RESAMPLES", "UNINFORMATIVE", "DEFAULT_TAU",
           "MAX_SHOWN_SAMPLES", "MIN_SHOWN_SAMPLES"]
