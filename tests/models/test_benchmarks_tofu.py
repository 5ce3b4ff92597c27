"""TOFU's forget quality and model utility, and ROUGE-L F1, against independent
reimplementations of the published definitions.

* The KS p-value is checked against a brute-force enumeration of every order of the pooled
  samples (the exact null distribution of the two-sample statistic), and against
  ``scipy.stats.ks_2samp`` when scipy is installed.
* Forget quality feeds the raw truth ratios ``P(perturbed)/P(paraphrased)`` to the test
  (TOFU ``aggregate_eval_stat.py``, OpenUnlearning ``ks_test``).
* Model utility is the harmonic mean of its components, computed by hand here.
* ROUGE-L F1 is checked against an LCS written here and against ``rouge_score``.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from pytest_unlearn import reporting
from pytest_unlearn.data import dataset_from_records, load_dataset
from pytest_unlearn.errors import ConfigError, UnlearningAssertionError
from pytest_unlearn.suite import Suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- KS test, by enumeration

def _ks_statistic(a, b) -> float:
    pooled = sorted(set(a) | set(b))
    return max(abs(sum(x <= v for x in a) / len(a) - sum(y <= v for y in b) / len(b)) for v in pooled)


def _ks_p_by_enumeration(a, b) -> float:
    """P(D >= d_observed) over all C(m+n, m) equally likely orders of m a's and n b's."""
    m, n = len(a), len(b)
    observed = _ks_statistic(a, b)
    hits = total = 0
    for positions in itertools.combinations(range(m + n), m):
        chosen = set(positions)
        i = j = 0
        d = 0.0
        for k in range(m + n):
            if k in chosen:
                i += 1
            else:
                j += 1
            d = max(d, abs(i / m - j / n))
        total += 1
        hits += d >= observed - 1e-12
    return hits / total


SAMPLES = [
    ([0.1, 0.4, 0.35, 0.8, 0.9], [0.2, 0.25, 0.3, 0.5, 0.55, 0.6]),
    ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]),  # fully separated
    ([0.5, 0.5, 0.7, 0.2, 0.9, 0.3], [0.5, 0.4, 0.45, 0.6, 0.7]),  # ties across samples
    ([0.3, 0.6, 0.9], [0.3, 0.6, 0.9]),  # identical
]


@pytest.mark.parametrize("a,b", SAMPLES)
def test_ks_p_value_equals_enumeration(a, b):
    from pytest_unlearn.metrics import forget_quality, ks_2samp

    d, p = ks_2samp(a, b)
    assert d == pytest.approx(_ks_statistic(a, b), abs=1e-12)
    assert p == pytest.approx(_ks_p_by_enumeration(a, b), rel=1e-9, abs=1e-12)
    assert forget_quality(a, b) == p
    try:
        from scipy import stats
    except ImportError:
        return  # the enumeration above is the reference; scipy is a second one when present
    expected = stats.ks_2samp(a, b, method="exact")
    assert (d, p) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-9)


def test_ks_p_value_large_samples_is_stable():
    from pytest_unlearn.metrics import ks_2samp

    rng = np.random.default_rng(0)
    same = ks_2samp(rng.normal(size=400), rng.normal(size=400))[1]
    shifted = ks_2samp(rng.normal(size=400), rng.normal(1.0, size=400))[1]
    assert 0.01 < same <= 1.0 and 0.0 <= shifted < 1e-20
    # the exact distribution is close to the Kolmogorov limit at this size
    d, p = ks_2samp(rng.normal(size=300), rng.normal(0.15, size=300))
    t = d * math.sqrt(300 * 300 / 600)
    limit = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * t * t) for k in range(1, 100))
    assert p == pytest.approx(limit, abs=0.02)


# ---------------------------------------------------------------- harmonic mean, ROUGE-L F1

def test_harmonic_mean_by_hand():
    from pytest_unlearn.metrics import harmonic_mean, model_utility

    values = {"retain_Q_A_Prob": 0.8, "retain_Q_A_ROUGE": 0.5, "retain_Truth_Ratio": 0.25}
    assert model_utility(values) == pytest.approx(3 / (1 / 0.8 + 1 / 0.5 + 1 / 0.25))
    assert harmonic_mean([0.3, 0.0, 0.9]) == 0.0


def _lcs(x, y) -> int:
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _tokens(text: str) -> list[str]:  # rouge-score's default tokenizer, stemmer off (MUSE)
    import re
    return [t for t in re.sub(r"[^a-z0-9]+", " ", text.lower()).split() if t]


@pytest.mark.parametrize("generated,reference", [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("Paris, of course!", "The capital is Paris."),
    ("running dogs", "the dog runs"),  # stemming would change this one
    ("nothing in common", "entirely different words"),
])
def test_rouge_l_f1_equals_lcs_f1_and_rouge_score(generated, reference):
    from rouge_score import rouge_scorer

    from pytest_unlearn.metrics import get_metric, rouge_l_f1

    g, r = _tokens(generated), _tokens(reference)
    lcs = _lcs(g, r)
    expected = 0.0 if lcs == 0 else 2 * lcs / (len(g) + len(r))
    assert rouge_l_f1(generated, reference) == pytest.approx(expected)
    muse = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, generated)["rougeL"].fmeasure
    assert rouge_l_f1(generated, reference) == pytest.approx(muse)
    m = get_metric("rouge_l_f1")
    assert m.source == "generation" and m.higher_is_more_knowledge


# ---------------------------------------------------------------- on the toy world's models

@pytest.fixture(scope="module")
def suites(toy_world):
    made = {
        "same": Suite.from_paths(original=toy_world["original"], model=toy_world["reference"],
                                 reference=toy_world["reference"], forget=toy_world["forget"],
                                 retain=toy_world["retain"], cache_dir=None),
        "bad": Suite.from_paths(original=toy_world["original"], model=toy_world["original"],
                                reference=toy_world["reference"], forget=toy_world["forget"],
                                retain=toy_world["retain"], cache_dir=None),
        "noref": Suite.from_paths(original=toy_world["original"], model=toy_world["original"],
                                  forget=toy_world["forget"], retain=toy_world["retain"], cache_dir=None),
    }
    yield made
    for suite in made.values():
        suite.close()


def _truth_ratios_by_hand(suite, handle, dataset):
    """Raw TOFU truth ratios from per-answer probabilities scored as separate data sets."""
    rows = dataset.records()
    para = [dict(question=r["question"], answer=r["paraphrased_answer"]) for r in rows]
    p_para = suite.scorer.per_sample("prob", handle, dataset_from_records(para))
    out = []
    for i, r in enumerate(rows):
        pert = [dict(question=r["question"], answer=a) for a in r["perturbed_answer"]]
        p_pert = suite.scorer.per_sample("prob", handle, dataset_from_records(pert))
        out.append(math.exp(np.mean(np.log(p_pert))) / p_para[i])  # geometric mean of P(perturbed)
    return np.array(out)


def test_forget_quality_is_ks_of_raw_truth_ratios(suites):
    from pytest_unlearn.tofu import tofu_forget_quality

    suite = suites["bad"]
    result = tofu_forget_quality(suite=suite)
    mine = _truth_ratios_by_hand(suite, suite.unlearned, suite.forget)
    ref = _truth_ratios_by_hand(suite, suite.reference, suite.forget)
    np.testing.assert_allclose(result.scores["model"], mine, rtol=1e-6)
    np.testing.assert_allclose(result.scores["reference"], ref, rtol=1e-6)
    assert result.p_value == pytest.approx(_ks_p_by_enumeration(list(mine), list(ref)), rel=1e-9)


def test_assert_forget_quality_pass_fail_and_record(suites):
    from pytest_unlearn import assert_forget_quality

    rec = reporting.Recorder()
    reporting.push_recorder(rec)
    try:
        ok = assert_forget_quality(suite=suites["same"])  # the reference itself: identical ratios
        assert ok.p_value == 1.0 and ok.passed
        with pytest.raises(UnlearningAssertionError) as err:
            # the original remembers the forget set; on 8 toy samples KS gives p = 0.087
            assert_forget_quality(min_p=0.5, suite=suites["bad"])
    finally:
        reporting.pop_recorder(rec)
    assert "forget quality" in str(err.value) and "below min_p" in str(err.value)
    assert [r["verdict"] for r in rec.assertions] == ["pass", "fail"]
    assert rec.assertions[1]["kind"] == "forget_quality" and rec.assertions[1]["score"] < 0.5


def test_forget_quality_without_reference_names_the_setting(suites):
    from pytest_unlearn import assert_forget_quality

    with pytest.raises(ConfigError, match="unlearn_reference"):
        assert_forget_quality(suite=suites["noref"])


def test_model_utility_components_and_harmonic_mean(suites, toy_world, tmp_path):
    from pytest_unlearn.tofu import tofu_model_utility

    suite = suites["bad"]
    retain = suite.retain
    # a real_authors-style file: question, answer, three perturbed answers, no paraphrase
    ra_rows = [{"question": r["question"], "answer": r["answer"], "perturbed_answer": r["perturbed_answer"]}
               for r in retain.records()[:6]]
    ra_path = tmp_path / "real_authors_perturbed.json"
    ra_path.write_text(json.dumps(ra_rows))
    result = tofu_model_utility(real_authors=str(ra_path), suite=suite)
    handle = suite.unlearned

    retain_tr = _truth_ratios_by_hand(suite, handle, retain)
    ra = load_dataset(ra_path)
    p_answer = suite.scorer.per_sample("prob", handle, ra)
    ra_norm, ra_tr = [], []
    for i, r in enumerate(ra_rows):
        pert = suite.scorer.per_sample("prob", handle, dataset_from_records(
            [dict(question=r["question"], answer=a) for a in r["perturbed_answer"]]))
        ra_norm.append(p_answer[i] / (p_answer[i] + pert.sum()))
        ra_tr.append(math.exp(np.mean(np.log(pert))) / p_answer[i])
    expected = {
        "retain_Q_A_Prob": np.mean(suite.scorer.per_sample("prob", handle, retain)),
        "retain_Q_A_ROUGE": np.mean(suite.scorer.per_sample("rouge_l", handle, retain)),
        "retain_Truth_Ratio": np.mean(np.maximum(0, 1 - retain_tr)),
        "ra_Q_A_Prob_normalised": np.mean(ra_norm),
        "ra_Q_A_ROUGE": np.mean(suite.scorer.per_sample("rouge_l", handle, ra)),
        "ra_Truth_Ratio": np.mean(np.maximum(0, 1 - np.array(ra_tr))),
    }
    assert list(result.components) == list(expected)
    for key, value in expected.items():
        assert result.components[key] == pytest.approx(value, rel=1e-6), key
    values = list(expected.values())
    by_hand = 0.0 if min(values) == 0 else len(values) / sum(1 / v for v in values)  # as scipy's hmean
    assert result.value == pytest.approx(by_hand, rel=1e-6)
    assert result.splits == ["retain", "real_authors"]
