"""Weight attacks are computed once per session: relearning's training outcome is kept in memory
(keyed without the metric) and shared by every metric, test, control and failure message; every
outcome is kept too, so a repeated assertion neither trains nor scores, also without a result cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_unlearn import load_dataset, load_model
from pytest_unlearn.attacks import AttackContext, parse_attack, run_attack
from pytest_unlearn.attacks import quantize, relearn, session_memo, snapshot
from pytest_unlearn.cache import ResultCache
from pytest_unlearn.scoring import Scorer
from pytest_unlearn.suite import Suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = "relearn:steps=2,lr=1e-2"


@pytest.fixture(scope="module")
def world(toy_world):
    return {"original": load_model(toy_world["original"], name="original"),
            "reference": load_model(toy_world["reference"], name="reference"),
            "forget": load_dataset(toy_world["forget"], name="forget"),
            "retain": load_dataset(toy_world["retain"], name="retain")}


@pytest.fixture
def trainings(monkeypatch):
    """Counts the folds actually trained (calls of the training loop)."""
    calls = []
    real = relearn.train_answers

    def counted(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(relearn, "train_answers", counted)
    return calls


def ctx_for(world, scorer, **kw):
    return AttackContext(scorer, forget=world["forget"], retain=world["retain"], **kw)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("lora", ["false", "true"])
def test_switching_the_metric_reuses_the_trained_folds(world, trainings, lora):
    model, data = world["original"], world["forget"]
    spec = f"{SPEC},lora={lora}"
    scorer = Scorer()  # no result cache: only the session memo can save the training
    es = run_attack(spec, "es", model, data, ctx_for(world, scorer))
    assert len(trainings) == 2 and es.cost["training_steps"] == 4
    before = state(model.model)
    prob = run_attack(spec, "prob", model, data, ctx_for(world, scorer))
    assert len(trainings) == 2, "switching es -> prob retrained"
    assert prob.cost["training_steps"] == 0 and prob.cost["reused_folds"] == 2
    assert all(torch.equal(v, model.model.state_dict()[k]) for k, v in before.items())
    # the kept weights are the trained ones: a fresh session that trains gives the same scores
    fresh = run_attack(spec, "prob", model, data, ctx_for(world, Scorer()))
    assert len(trainings) == 4
    np.testing.assert_array_equal(prob.values, fresh.values)
    assert prob.details == fresh.details


def test_a_repeated_run_neither_trains_nor_scores(world, trainings):
    model, data = world["original"], world["forget"]
    scorer = Scorer()
    first = run_attack(SPEC, "es", model, data, ctx_for(world, scorer))
    passes = scorer.cost.forward_passes
    again = run_attack(SPEC, "es", model, data, ctx_for(world, scorer))
    assert len(trainings) == 2
    assert scorer.cost.forward_passes == passes and again.cost.get("memoised")
    np.testing.assert_array_equal(first.values, again.values)
    again.values[:] = -1  # a caller's edit never reaches the memo
    np.testing.assert_array_equal(run_attack(SPEC, "es", model, data, ctx_for(world, scorer)).values,
                                  first.values)


def test_generation_for_failure_messages_reuses_the_trained_folds(world, trainings):
    model, data = world["original"], world["forget"]
    scorer = Scorer()
    attack = parse_attack(SPEC)
    attack.run("es", model, data, ctx_for(world, scorer))
    assert len(trainings) == 2
    texts = attack.generate(model, data, [0, 5], ctx_for(world, scorer))
    assert len(trainings) == 2 and len(texts) == 2
    # and they are what retraining generates
    assert attack.generate(model, data, [0, 5], ctx_for(world, Scorer())) == texts
    assert len(trainings) > 2  # a new session trains the folds of those rows


def test_no_cache_suite_repeats_an_assertion_without_training(toy_world, trainings):
    from pytest_unlearn import assert_forgotten

    suite = Suite.from_paths(original=toy_world["original"], model=toy_world["reference"],
                             forget=toy_world["forget"], retain=toy_world["retain"], no_cache=True)
    try:
        assert suite.cache_dir is None
        for metric in ("es", "prob", "es"):
            assert_forgotten(metric, 1.0, under_attack=[SPEC], suite=suite)
        # two models (the unlearned one and the original control), two folds each, trained once
        assert len(trainings) == 4
    finally:
        suite.close()
    assert suite._scorer not in session_memo._MEMOS  # closing the suite frees the kept weights


def test_quantize_is_applied_once_per_session(world, monkeypatch):
    calls = []
    real = quantize.Quantize.quantize
    monkeypatch.setattr(quantize.Quantize, "quantize", lambda self, w: calls.append(1) or real(self, w))
    model, data, scorer = world["original"], world["forget"], Scorer()
    first = run_attack("quantize:4", "es", model, data, ctx_for(world, scorer))
    n = len(calls)
    assert n > 0
    again = run_attack("quantize:bits=4", "es", model, data, ctx_for(world, scorer))
    assert len(calls) == n
    np.testing.assert_array_equal(first.values, again.values)


def test_weights_over_the_memo_budget_are_not_kept(world, trainings):
    model, data, scorer = world["original"], world["forget"], Scorer()
    session_memo._MEMOS[scorer] = session_memo.AttackMemo(budget=0)
    out = run_attack(SPEC, "es", model, data, ctx_for(world, scorer))
    assert any("not kept" in n for n in out.notes)
    run_attack(SPEC, "prob", model, data, ctx_for(world, scorer))
    assert len(trainings) == 4  # trained again: nothing was kept
    assert session_memo._MEMOS[scorer].bytes == 0


def test_the_algorithm_version_keys_every_cached_outcome(world, tmp_path, monkeypatch, trainings):
    model, data = world["original"], world["forget"]
    run_attack(SPEC, "es", model, data, ctx_for(world, Scorer(), cache=ResultCache(tmp_path)))
    hit = run_attack(SPEC, "es", model, data, ctx_for(world, Scorer(), cache=ResultCache(tmp_path)))
    assert hit.cost.get("cached") and len(trainings) == 2
    monkeypatch.setattr(relearn.Relearn, "version", "relearn-v-next")
    changed = run_attack(SPEC, "es", model, data, ctx_for(world, Scorer(), cache=ResultCache(tmp_path)))
    assert not changed.cost.get("cached") and len(trainings) == 4
    a = snapshot.derived_fingerprint(model, SPEC, "fold 1/2", 0, version="relearn-v1")
    assert a != snapshot.derived_fingerprint(model, SPEC, "fold 1/2", 0, version="relearn-v2")


def test_a_failure_message_under_relearn_is_not_trained_again_in_the_next_session(toy_world, trainings, tmp_path):
    """The failure message shows what the relearned model generates; a later session with the same
    result cache reads those texts from the cache instead of training the folds again."""
    from pytest_unlearn.gates.measure import generate_under

    def session():
        suite = Suite.from_paths(original=toy_world["original"], model=toy_world["original"],
                                 forget=toy_world["forget"], retain=toy_world["retain"], cache_dir=tmp_path)
        try:
            attack = parse_attack(SPEC)
            return generate_under(suite, attack, suite.unlearned, suite.forget, [0, 3], None)
        finally:
            suite.close()

    first = session()
    assert len(trainings) == 2 and len(first) == 2 and not any(t.startswith("<generation") for t in first)
    second = session()
    assert len(trainings) == 2, "the next session trained the relearn folds again for the failure message"
    assert second == first
