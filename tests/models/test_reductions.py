"""Reductions over samples are read in the metric's knowledge direction.

``max`` is the sample with the most knowledge, ``qNN`` the NN-th percentile of
knowledge, ``min`` the least; ``mean`` and ``median`` do not depend on the direction.
Every reduction is checked on every registered metric against values computed by hand,
the bootstrap bound against a loop that reduces each resample the same way, and the
reported case runs through pytest: the original model, which knows 8 of 9 samples, must
fail ``assert_forgotten("ppl", 5.0, reduce="max")`` and ``reduce="q90"`` (it passed when
the reductions were literal maxima and quantiles of perplexity).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from pytest_unlearn import metrics as M
from pytest_unlearn.assertions import bootstrap_bound
from pytest_unlearn.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VALUES = [4.0, 10.0, 1.0, 8.0, 2.0]  # unsorted on purpose; sorted: 1, 2, 4, 8, 10
# By hand, linear interpolation at position (n - 1) * q = 4q of the sorted values.
HIGHER = {  # higher = more knowledge: the literal order
    "mean": 5.0, "median": 4.0, "max": 10.0, "min": 1.0,
    "q90": 8.0 + 0.6 * 2.0,   # position 3.6
    "q75": 8.0,               # position 3
    "q25": 2.0,               # position 1
    "q10": 1.0 + 0.4 * 1.0,   # position 0.4
    "q0": 1.0, "q100": 10.0, "q50": 4.0,
}
LOWER = {  # lower = more knowledge: max = the smallest value, qNN = the (100 - NN)-th percentile
    "mean": 5.0, "median": 4.0, "max": 1.0, "min": 10.0,
    "q90": 1.0 + 0.4 * 1.0,   # the 10th percentile of the values
    "q75": 2.0,               # the 25th
    "q25": 8.0,               # the 75th
    "q10": 8.0 + 0.6 * 2.0,   # the 90th
    "q0": 10.0, "q100": 1.0, "q50": 4.0,
}


@pytest.mark.parametrize("metric", M.METRICS.names())
@pytest.mark.parametrize("how", list(HIGHER))
def test_every_reduction_on_every_metric_reads_knowledge(metric, how):
    m = M.get_metric(metric)
    expected = (HIGHER if m.higher_is_more_knowledge else LOWER)[how]
    assert M.reduce_scores(VALUES, how, m) == pytest.approx(expected, abs=1e-12)
    assert M.reduce_scores(VALUES, how.upper(), metric) == pytest.approx(expected, abs=1e-12)
    rows = np.array([VALUES, VALUES[::-1]])
    np.testing.assert_allclose(M.reduce_rows(rows, how, m), [expected, expected], atol=1e-12)
    if how not in ("mean", "median"):  # the reduced value is a value of the metric's own scale
        assert min(VALUES) <= M.reduce_scores(VALUES, how, m) <= max(VALUES)


def test_max_is_never_more_lenient_than_the_mean():
    for name in M.METRICS.names():
        m = M.get_metric(name)
        mean = M.reduce_scores(VALUES, "mean", m)
        for how in ("max", "q90", "q75"):
            assert not m.more_knowledge(mean, M.reduce_scores(VALUES, how, m)), (name, how)
        for how in ("min", "q10", "q25"):
            assert not m.more_knowledge(M.reduce_scores(VALUES, how, m), mean), (name, how)


def test_direction_dependent_reductions_need_the_metric():
    assert M.reduce_scores(VALUES, "mean") == 5.0 and M.reduce_scores(VALUES, "median") == 4.0
    for how in ("max", "min", "q90"):
        with pytest.raises(ValueError, match="direction"):
            M.reduce_scores(VALUES, how)


@pytest.mark.parametrize("bad", ["average", "p90", "q101", "q-1", "q", "q²", "", None, 90])
def test_unknown_reductions_are_config_errors(bad):
    with pytest.raises(ConfigError, match="is not 'mean', 'median', 'max', 'min' or a quantile"):
        M.reduce_scores([1.0], bad, "es")


def test_lenient_reductions():
    assert [h for h in ("mean", "median", "max", "min", "q0", "q10", "q49.5", "q50", "q90", "q100")
            if M.reduction_is_lenient(h)] == ["min", "q0", "q10", "q49.5"]


@pytest.mark.parametrize("metric", ["es", "ppl", "mia_loss", "truth_ratio", "mia_min_k_pp"])
@pytest.mark.parametrize("how", ["mean", "max", "min", "median", "q90", "q10"])
def test_the_bootstrap_reduces_each_resample_like_the_verdict(metric, how):
    """Loop reference: resample with the same generator, reduce each resample with
    ``reduce_scores`` (knowledge direction), take the one-sided quantile of knowledge."""
    m = M.get_metric(metric)
    values = np.array([1.0] * 8 + [100.0, 3.0, 7.0])
    rng = np.random.default_rng(5)
    idx = rng.integers(0, len(values), size=(200, len(values)))
    stats = [M.reduce_scores(values[i], how, m) for i in idx]
    q = 0.9 if m.higher_is_more_knowledge else 0.1
    assert bootstrap_bound(values, m, how, 0.9, seed=5, resamples=200) == pytest.approx(np.quantile(stats, q))


def test_the_bootstrap_bound_of_max_is_the_most_knowledge():
    """Perplexity, 8 samples known (ppl 1) and one not (ppl 100): with ``max`` every resample
    that holds a known sample reads 1, so the 90% bound is 1, not 100."""
    ppl = M.get_metric("ppl")
    values = [1.0] * 8 + [100.0]
    assert bootstrap_bound(values, ppl, "max", 0.9, seed=0) == 1.0
    assert bootstrap_bound(values, ppl, "min", 0.5, seed=0) == 100.0  # the least knowledge, mostly present


# ---------------------------------------------------------------- through the assertions

@pytest.fixture(scope="module")
def nine(toy_world, tmp_path_factory):
    """8 forget rows (the original knows them) and 1 holdout row (it does not)."""
    rows = [json.loads(line) for line in toy_world["forget"].read_text(encoding="utf-8").splitlines()][:8]
    rows += [json.loads(line) for line in toy_world["holdout"].read_text(encoding="utf-8").splitlines()][:1]
    path = tmp_path_factory.mktemp("nine") / "nine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def original_suite(toy_world, nine):
    from pytest_unlearn import Suite

    suite = Suite.from_paths(original=toy_world["original"], model=toy_world["original"], forget=nine,
                             cache_dir=None)
    yield suite
    suite.close()


@pytest.fixture
def recorder():
    from pytest_unlearn import reporting

    with reporting.recording() as rec:
        yield rec


def test_the_score_fixture_reduces_in_the_knowledge_direction(original_suite):
    result = original_suite.score("ppl", reduce="max")
    assert result.reduced == result.values.min() < 1.01
    assert original_suite.score("ppl", reduce="q90").reduced == pytest.approx(result.values.quantile(0.1))


def test_lenient_reductions_warn_in_a_forgetting_gate(original_suite, recorder):
    from pytest_unlearn import UnlearnWarning, UnlearningAssertionError, assert_forgotten

    for how in ("min", "q10"):
        with pytest.warns(UnlearnWarning, match=f"reduce={how} is lenient"):
            result = assert_forgotten("ppl", 5.0, reduce=how, suite=original_suite)
        assert result.passed and any("lenient" in n for n in result.notes)
    for how in ("mean", "median", "max", "q90"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnlearnWarning)
            with pytest.raises(UnlearningAssertionError):
                assert_forgotten("ppl", 5.0, reduce=how, suite=original_suite)


@pytest.fixture
def warm(original_suite):
    """pytester's in-process run drops the modules first imported inside it: import what a
    gate needs out here (scoring, generation for the failure message)."""
    from pytest_unlearn.prompts import dataset_parts

    original_suite.scorer.generate(original_suite.original, dataset_parts(original_suite.forget)[:1])


def test_a_model_that_knows_8_of_9_samples_fails_max_and_q90(pytester, toy_world, nine, warm):
    pytester.makeini("[pytest]\n"
                     f"unlearn_original = {toy_world['original']}\n"
                     f"unlearn_model = {toy_world['original']}\n"
                     f"unlearn_forget = {nine}\n")
    pytester.makepyfile(test_gate="""
        from pytest_unlearn import assert_forgotten

        def test_max():
            assert_forgotten("ppl", 5.0, reduce="max")

        def test_q90():
            assert_forgotten("ppl", 5.0, reduce="q90")

        def test_mean():
            assert_forgotten("ppl", 5.0)

        def test_min():
            assert_forgotten("ppl", 5.0, reduce="min")
        """)
    result = pytester.runpytest("-rA", "--unlearn-no-cache", "-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(failed=3, passed=1)
    out = result.stdout.str()
    for name in ("test_max", "test_q90", "test_mean"):
        assert f"FAILED test_gate.py::{name}" in out
    assert "PASSED test_gate.py::test_min" in out
    result.stdout.fnmatch_lines(["*reduce=max*must be at least 5.0000*", "*reduce=q90*must be at least 5.0000*"])
    result.stdout.fnmatch_lines(["*UnlearnWarning: reduce=min is lenient*"])
