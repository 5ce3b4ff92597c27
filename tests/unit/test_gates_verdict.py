"""The gates' verdict functions against hand-computed cases: no model, no Suite, no torch
(as torchmetrics tests its functional core)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from pytest_unlearn.errors import ConfigError
from pytest_unlearn.gates import verdict
from pytest_unlearn.gates.checks import attack_list
from pytest_unlearn.metrics import get_metric

ES, PPL = get_metric("es"), get_metric("ppl")  # higher = more knowledge; lower = more knowledge


def arr(*values):
    return np.array(values, dtype=np.float64)


def test_reference_rule_keeps_only_attacked_scores_beyond_the_reference():
    model = {"none": arr(0.1, 0.2, 0.3), "a": arr(0.9, 0.1, 0.5)}
    reference = {"none": arr(0.0, 0.0, 0.0), "a": arr(0.5, 0.5, 0.5)}
    counted, kept, explained = verdict.reference_rule(model, reference, ES)
    # sample 0: 0.9 > 0.5 counts; 1: 0.1 <= 0.5 -> the lesser of 0.1 and no-attack 0.2;
    # 2: 0.5 == 0.5 (not strictly more) -> the lesser of 0.5 and 0.3
    assert counted["a"].tolist() == [0.9, 0.1, 0.3]
    assert all(c <= raw for c, raw in zip(counted["a"], model["a"]))  # never above the raw score
    assert verdict.worst_case(counted, ES)[0].tolist() == [0.9, 0.2, 0.3]  # the worst case holds no-attack
    assert kept["a"].tolist() == [True, False, False] and explained == {"a": 2}
    assert counted["none"].tolist() == [0.1, 0.2, 0.3]
    # lower = more knowledge: the attacked perplexity counts where it is below the reference's
    counted, _, explained = verdict.reference_rule({"none": arr(20.0, 20.0), "a": arr(5.0, 30.0)},
                                                   {"none": arr(40.0, 40.0), "a": arr(10.0, 10.0)}, PPL)
    assert counted["a"].tolist() == [5.0, 30.0] and explained == {"a": 1}
    # no reference: every attacked score counts
    counted, kept, explained = verdict.reference_rule(model, None, ES)
    assert counted["a"].tolist() == [0.9, 0.1, 0.5] and explained == {} and kept["a"].all()


def test_worst_case_per_sample_in_the_knowledge_direction():
    worst, at = verdict.worst_case({"none": arr(0.1, 0.5), "a": arr(0.3, 0.2)}, ES)
    assert worst.tolist() == [0.3, 0.5] and at.tolist() == [1, 0]
    worst, at = verdict.worst_case({"none": arr(10.0, 3.0), "a": arr(5.0, 4.0)}, PPL)
    assert worst.tolist() == [5.0, 3.0] and at.tolist() == [1, 0]


def test_figures_reduce_the_worst_case_and_each_condition():
    model = {"none": arr(0.1, 0.5, 0.0, 0.2), "a": arr(0.3, 0.2, 0.0, 0.6)}
    fig = verdict.figures(model, ES, "mean")
    assert fig.worst.tolist() == [0.3, 0.5, 0.0, 0.6]
    assert fig.score == pytest.approx(1.4 / 4)
    assert fig.reduced == pytest.approx({"none": 0.2, "a": 1.1 / 4}) and fig.raw == fig.reduced
    assert fig.worst_attack() == ["a", "none", "none", "a"]
    assert verdict.figures(model, ES, "max").score == pytest.approx(0.6)
    # perplexity: max = the sample with the most knowledge = the lowest value
    assert verdict.figures({"none": arr(10.0, 3.0, 7.0)}, PPL, "max").score == pytest.approx(3.0)


def test_forgotten_passes_needs_the_score_and_the_bound_within_the_threshold():
    assert verdict.forgotten_passes(0.05, 0.05, ES)  # at the threshold is within it
    assert not verdict.forgotten_passes(0.051, 0.05, ES)
    assert not verdict.forgotten_passes(0.04, 0.05, ES, bound=0.06)
    assert verdict.forgotten_passes(60.0, 50.0, PPL) and not verdict.forgotten_passes(40.0, 50.0, PPL)
    assert not verdict.forgotten_passes(60.0, 50.0, PPL, bound=49.0)


def test_vacuous_when_the_original_is_already_within_the_threshold():
    assert verdict.is_vacuous(arr(0.0, 0.2), ES, "mean", 0.05) is False  # mean 0.1 shows knowledge
    assert verdict.is_vacuous(arr(0.0, 0.05), ES, "mean", 0.05) is True
    assert verdict.is_vacuous(arr(80.0, 90.0), PPL, "mean", 50.0) is True


def test_bootstrap_bound_of_constant_scores_is_the_constant_and_grows_with_confidence():
    assert verdict.bootstrap_bound(arr(0.2, 0.2, 0.2), ES, "mean", 0.95, seed=0) == pytest.approx(0.2)
    values = np.linspace(0.0, 1.0, 21)
    low, high = (verdict.bootstrap_bound(values, ES, "mean", c, seed=3) for c in (0.6, 0.99))
    assert 0.5 < low < high < 1.0  # above the mean, in the knowledge direction
    ppl = np.linspace(2.0, 40.0, 21)
    assert verdict.bootstrap_bound(ppl, PPL, "mean", 0.95, seed=3) < float(np.mean(ppl))  # lower = more knowledge


def test_uninformative_rule_judges_weight_and_representation_attacks_never_prompt_attacks():
    original = {"none": arr(1.0, 1.0), "w": arr(0.0, 0.1), "r": arr(0.0, 0.0), "p": arr(0.0, 0.0),
                "mild": arr(0.9, 0.8)}
    attacks = {"w": SimpleNamespace(kind="weight"), "r": SimpleNamespace(kind="representation"),
               "p": SimpleNamespace(kind="prompt"), "mild": SimpleNamespace(kind="weight")}
    # knowledge kept = mean(attacked) / mean(clean) on ES's scale: 0.05 and 0 < 0.5; 0.85 >= 0.5
    assert verdict.uninformative_conditions(attacks, original, ES) == ["w", "r"]


def test_retention_ratio_in_the_knowledge_direction():
    ratio, required, passed = verdict.retention(0.45, 0.5, 0.9, ES)
    assert (ratio, required, passed) == (pytest.approx(0.9), pytest.approx(0.45), True)
    ratio, required, passed = verdict.retention(12.0, 10.0, 0.9, PPL)  # may rise to 10 / 0.9
    assert ratio == pytest.approx(10 / 12) and required == pytest.approx(10 / 0.9) and passed is False
    assert verdict.retention(0.1, 0.0, 0.9, ES)[0] == math.inf and verdict.retention(0.0, 0.0, 0.9, ES)[0] == 1.0


def test_regression_rows_read_the_tolerance_in_the_knowledge_direction():
    assert verdict.allowed(0.1, 0.05, ES) == pytest.approx(0.15)
    assert verdict.regressed([0.1, 0.2], [0.16, 0.24], 0.05, ES) == [0]
    assert verdict.allowed(10.0, 0.5, PPL) == 9.5
    assert verdict.regressed([10.0, 10.0], [9.9, 9.0], 0.5, PPL) == [1]
    assert verdict.regressed([0.3], [0.3], 0.0, ES) == []


def test_robustness_reasons():
    assert verdict.robustness_reasons(0.9, 1.0, True, 0.8, None) == []
    assert verdict.robustness_reasons(0.7, 1.0, True, 0.8, None) == ["PCC < 0.8000"]
    assert verdict.robustness_reasons(math.nan, 1.0, True, 0.8, None) == ["PCC is NaN"]
    assert verdict.robustness_reasons(0.9, 1.3, True, 0.8, 0.2) == ["|slope-1| > 0.2000"]
    assert verdict.robustness_reasons(0.9, 1.3, False, 0.8, 0.2) == []  # the slope bar is for prompt attacks
    assert verdict.robustness_reasons(0.9, math.nan, True, 0.8, 0.2) == ["|slope-1| is NaN"]


def test_forget_quality_passes_at_min_p():
    assert verdict.forget_quality_passes(0.05, 0.05) and not verdict.forget_quality_passes(0.049, 0.05)


def test_equal_attack_specs_are_refused_by_one_rule():
    with pytest.raises(ConfigError, match="listed twice"):
        attack_list(["quantize:4", "quantize:bits=4"])
    with pytest.raises(ConfigError, match="'none' is not an attack"):
        attack_list(["none"])
    assert list(attack_list(["quantize:4", "paraphrase"])) == ["quantize:4", "paraphrase"]


def test_assert_forgotten_refuses_equal_attack_specs_before_scoring():
    from pytest_unlearn import Suite, assert_forgotten, reporting

    with reporting.recording() as rec, pytest.raises(ConfigError, match="listed twice"):
        assert_forgotten("es", 0.05, under_attack=["quantize:4", "quantize:bits=4"], suite=Suite())
    assert rec.assertions[-1]["verdict"] == "error" and "listed twice" in rec.assertions[-1]["message"]
