"""The release gate of ``../test_release_gate.py``, asked as multiple-choice questions.

The same 20 forget and 40 retain facts, each a four-choice question whose choices are the
answer sentence and three wrong ones (``../data/*_mc.jsonl``, MMLU's export shape).  The metric
is ``mc_acc_text`` (lm-eval's ``acc_norm``: the choice whose text is most likely after the
question, per character): SmolLM2-135M answers with a letter at chance whatever it knows, so
``mc_acc`` would show nothing here; the choice texts separate a model that knows the facts from
one that never saw them.  Each ``candidate`` test runs once per candidate (``../conftest.py``):
``retrain``, ``gd`` and ``rmu``, a candidate of this suite only (``../build_models.py``).
"""

from pytest_unlearn import assert_forgotten, assert_retained

METRIC = "mc_acc_text"
# four choices: chance is 0.25; forgotten means "no better than chance + 0.1" (0.35)
THRESHOLD = "chance+0.1"
ATTACKS = ["relearn:steps=5,lr=2e-4"]  # as in the main gate: 2 folds of the forget questions


def test_original_knows_the_forget_set(unlearn):
    """The gate is meaningful: before unlearning, the model picks the true answers."""
    assert unlearn.score(METRIC, model=unlearn.original).reduced >= 0.9


def test_forget_set_not_recognised(candidate):
    """The naive check: the forget questions as they are."""
    assert_forgotten(METRIC, threshold=THRESHOLD, model=candidate.path)


def test_forget_set_not_recognised_under_attack(candidate):
    """The release gate: the worst case per question over no attack and relearning."""
    assert_forgotten(METRIC, threshold=THRESHOLD, model=candidate.path, under_attack=ATTACKS)


def test_retain_set_still_known(candidate):
    """Utility: the retain questions still answered (at least 0.9 x the original's accuracy)."""
    assert_retained(METRIC, data="../data/retain_mc.jsonl", min_ratio=0.9, model=candidate.path)
