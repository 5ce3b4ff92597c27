"""``assert_forgotten`` / ``assert_retained``: verdicts, directions, reductions, confidence,
attacks and their controls, and what a failure message shows.

The toy world's ``reference`` model never saw the forget set (it should pass), its
``original`` knows everything (as the "unlearned" model it must fail).  Most tests call
the assertions directly on a :class:`Suite`; one runs them through pytest.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pytest_unlearn import (AttackError, ConfigError, Suite, UnknownNameError, UnlearningAssertionError,
                            UnlearnWarning, assert_forgotten, assert_retained)
from pytest_unlearn import reporting
from pytest_unlearn.data import load_dataset


@pytest.fixture(autouse=True)
def recorder():
    """A private recorder: the records of these direct calls stay out of this session's summary."""
    with reporting.recording() as rec:
        yield rec


@pytest.fixture(scope="module")
def good(toy_world):
    """Unlearned = the reference model (never saw the forget set)."""
    suite = Suite.from_paths(original=toy_world["original"], model=toy_world["reference"],
                             forget=toy_world["forget"], retain=toy_world["retain"], cache_dir=None)
    yield suite
    suite.close()


@pytest.fixture(scope="module")
def bad(toy_world):
    """Unlearned = the original itself (forgot nothing); with the reference as a control."""
    suite = Suite.from_paths(original=toy_world["original"], model=toy_world["original"],
                             reference=toy_world["reference"], forget=toy_world["forget"],
                             retain=toy_world["retain"], cache_dir=None)
    yield suite
    suite.close()


def attacks_available(*specs):
    try:
        from pytest_unlearn.attacks import parse_attack

        for spec in specs:
            parse_attack(spec)
    except Exception as exc:  # the attacks package is written in parallel
        pytest.skip(f"attacks not available yet: {exc}")


# ---------------------------------------------------------------- verdicts

def test_a_model_that_never_saw_the_forget_set_passes(good, recorder):
    result = assert_forgotten("es", threshold=0.3, suite=good)
    assert result.verdict == "pass" and result.passed
    assert result.score == pytest.approx(result.scores["none"].mean()) and result.score < 0.3
    assert list(result.scores.columns) == ["none", "original:none", "worst", "worst_attack"]
    assert list(result.scores.index) == good.forget.ids
    assert result.scores["original:none"].mean() > 0.9
    assert result.reduced == {"none": result.score}
    retained = assert_retained("es", min_ratio=0.9, suite=good)
    assert retained.verdict == "pass" and retained.ratio > 0.9
    assert list(retained.scores.columns) == ["model", "original"]
    assert [(r["kind"], r["verdict"]) for r in recorder.assertions] == [("forgotten", "pass"), ("retained", "pass")]
    assert recorder.assertions[0] == json.loads(json.dumps(recorder.assertions[0]))  # plain JSON


def test_a_model_that_forgot_nothing_fails_with_an_explanation(bad, toy_world):
    with pytest.raises(UnlearningAssertionError) as info:
        assert_forgotten("es", threshold=0.3, suite=bad)
    message = str(info.value)
    assert "es (extraction strength" in message and "higher = more knowledge" in message
    assert "must be at most 0.3000" in message and "reduce=mean" in message
    # the table: the model, the original and the reference, with a verdict
    assert "attack   model  original  reference  verdict" in message
    assert "none    1.0000    1.0000     0.1629  leak" in message
    # the worst samples: prompt, reference answer and what the model generated
    first = json.loads(toy_world["forget"].read_text().splitlines()[0])
    assert "worst leaking samples (5 shown; 8 of 8 beyond 0.3000)" in message
    assert first["question"] in message and first["answer"] in message
    assert message.count("generated:") == 5 and message.count("prompt:") == 5
    result = info.value.result
    assert result.verdict == "fail" and result.record["worst_samples"][0]["generated"]
    assert isinstance(info.value, AssertionError)


def test_the_threshold_is_read_in_the_metric_s_direction(good, bad):
    """Perplexity: lower means more knowledge, so "forgotten" means at least the threshold."""
    assert assert_forgotten("ppl", 20.0, suite=good).score > 20
    with pytest.raises(UnlearningAssertionError, match=r"(?s)lower = more knowledge.*must be at least 20\.0000"):
        assert_forgotten("ppl", 20.0, suite=bad)


def test_reduce_max_and_quantiles(good):
    per_sample = assert_forgotten("es", 1.0, suite=good).scores["none"]
    assert assert_forgotten("es", 1.0, reduce="max", suite=good).score == pytest.approx(per_sample.max())
    assert assert_forgotten("es", 1.0, reduce="q90", suite=good).score == pytest.approx(per_sample.quantile(0.9))
    between = (per_sample.mean() + per_sample.max()) / 2
    assert_forgotten("es", between, suite=good)
    with pytest.raises(UnlearningAssertionError, match="reduce=max"):
        assert_forgotten("es", between, reduce="max", suite=good)


def test_confidence_requires_the_bootstrap_bound_under_the_threshold(good):
    mean = assert_forgotten("es", 1.0, suite=good).score
    loose = assert_forgotten("es", 0.9, confidence=0.95, suite=good)
    assert mean < loose.bound < 0.9  # the upper bound (ES: higher = more knowledge)
    assert assert_forgotten("es", 0.9, confidence=0.95, suite=good).bound == loose.bound  # seeded
    with pytest.raises(UnlearningAssertionError, match=r"95% bootstrap bound \(1000 resamples, seed 0\)"):
        assert_forgotten("es", mean + 1e-6, confidence=0.95, suite=good)
    ppl = assert_forgotten("ppl", 1.0, confidence=0.9, suite=good)
    assert ppl.bound < ppl.score  # lower = more knowledge: the bound is the lower one


# ---------------------------------------------------------------- arguments and errors

@pytest.mark.parametrize("kwargs, match", [
    (dict(metric="es", threshold=1.5), r"threshold 1\.5 is outside the range of es \[0, 1\]"),
    (dict(metric="ppl", threshold=0.5), r"outside the range of ppl \[1, inf\]"),
    (dict(metric="es", threshold=0.1, reduce="p90"), r"reduce='p90'"),
    (dict(metric="es", threshold=0.1, confidence=95), r"confidence must be in \(0, 1\)"),
    (dict(metric="es", threshold="low"), r"threshold must be a number"),
])
def test_invalid_arguments_are_config_errors(good, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        assert_forgotten(suite=good, **kwargs)


def test_an_unknown_metric_suggests_the_nearest(good):
    with pytest.raises(UnknownNameError, match=r"unknown metric 'ess'; did you mean 'es'"):
        assert_forgotten("ess", 0.1, suite=good)


def test_without_an_active_suite_the_error_says_how_to_get_one(good):
    from pytest_unlearn import session

    with session.isolated():
        with pytest.raises(ConfigError, match=r"no active pytest-unlearn suite.*Suite\.from_paths"):
            assert_forgotten("es", 0.3)
        good.activate()
        try:
            assert assert_forgotten("es", 0.3).passed
        finally:
            good.deactivate()


def test_model_and_data_from_paths_and_records(bad, toy_world):
    records = load_dataset(toy_world["forget"]).records()[:3]
    result = assert_forgotten("es", 0.3, model=str(toy_world["reference"]), data=records, suite=bad)
    assert len(result.scores) == 3
    assert result.record["model"]["source"] == str(toy_world["reference"])


def test_assert_retained_fails_when_knowledge_is_lost(good):
    with pytest.raises(UnlearningAssertionError) as info:
        assert_retained("es", data=good.forget, suite=good)  # the reference never knew the forget set
    message = str(info.value)
    assert "below min_ratio 0.9000" in message and "samples that lost the most" in message
    assert "generated:" in message and "(original 1.0000)" in message
    with pytest.raises(ConfigError, match="non-negative"):
        assert_retained("mia_min_k", suite=good)


# ---------------------------------------------------------------- attacks and controls

def _custom_attack(name, kind, values_fn):
    from pytest_unlearn.attacks.base import Attack, AttackOutcome

    class Custom(Attack):
        def _run(self, metric, model, data, ctx):
            return AttackOutcome(values=values_fn(model, data), cost={}, details=None, prompts=None)

    Custom.name, Custom.kind = name, kind
    return Custom()


def test_an_attack_that_wipes_the_original_is_marked_uninformative(good, bad):
    attacks_available()
    wipe = _custom_attack("wipe", "weight", lambda model, data: np.zeros(len(data)))
    with pytest.warns(UnlearnWarning, match=r"wipe is uninformative \(the attack also destroys"):
        result = assert_forgotten("es", 0.3, under_attack=[wipe], suite=good)
    assert result.passed and result.uninformative == ["wipe"]
    assert [row["verdict"] for row in result.record["attacks"]] == ["ok", "uninformative"]
    with pytest.warns(UnlearnWarning), pytest.raises(UnlearningAssertionError) as info:
        assert_forgotten("es", 0.3, under_attack=[wipe], suite=bad)
    assert "uninformative (the attack also destroys the original's knowledge)" in str(info.value)


def test_an_attack_that_cannot_run_errors_instead_of_passing(good):
    attacks_available()
    broken = _custom_attack("broken", "prompt", lambda model, data: 1 / 0)
    with pytest.raises(AttackError, match=r"attack 'broken' failed on the unlearned model: ZeroDivisionError"):
        assert_forgotten("es", 0.3, under_attack=[broken], suite=good)
    holes = _custom_attack("holes", "prompt", lambda model, data: np.full(len(data), np.nan))
    with pytest.raises(AttackError, match=r"left 8 of 8 samples .* unscored"):
        assert_forgotten("es", 0.3, under_attack=[holes], suite=good)


def test_under_attack_takes_the_worst_case_per_sample(good, bad):
    attacks_available("paraphrase", "quantize:8")
    result = assert_forgotten("es", 0.3, under_attack=["paraphrase", "quantize:8"], suite=good)
    specs = result.record["under_attack"]
    assert specs == ["paraphrase", "quantize:8"]  # as written; the canonical specs are kept too
    assert result.record["attack_specs"][1].startswith("quantize:bits=8")
    frame = result.scores
    assert frame["worst"].tolist() == frame[["none", *specs]].max(axis=1).tolist()
    assert {f"original:{s}" for s in ["none", *specs]} <= set(frame.columns)
    direct = good.score("es", attack="paraphrase")  # the suite scores under an attack too
    assert direct.attack == "paraphrase:source=auto" and list(direct.values.index) == good.forget.ids
    assert direct.values.tolist() == frame["paraphrase"].tolist()
    with pytest.raises(UnlearningAssertionError) as info:
        assert_forgotten("es", 0.3, under_attack=["paraphrase", "quantize:8"], suite=bad)
    message = str(info.value)
    assert "paraphrase" in message and specs[1] in message and "worst case" in message


def test_calibrate_scores_the_calibrated_model(good):
    pytest.importorskip("pytest_unlearn.calibration")
    result = assert_forgotten("es", 0.3, calibrate=0.9, suite=good)
    calibration = good.calibrate(0.9)
    assert result.record["calibrate"]["alpha"] == pytest.approx(calibration.alpha)
    assert result.record["model"]["fingerprint"] == calibration.model.fingerprint


# ---------------------------------------------------------------- the reference rule

@pytest.fixture(scope="module")
def reference_gate(toy_world):
    """The unlearned model is the reference itself: the gold standard of forgetting."""
    suite = Suite.from_paths(original=toy_world["original"], model=toy_world["reference"],
                             reference=toy_world["reference"], forget=toy_world["forget"],
                             retain=toy_world["retain"], cache_dir=None)
    yield suite
    suite.close()


@pytest.fixture(scope="module")
def twin(toy_world, tmp_path_factory):
    """A model that scores like the reference with no attack but is another model (weights
    nudged by 1e-6), with the reference as the control."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("twin") / "twin"
    shutil.copytree(toy_world["reference"], folder)
    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] * (1 + 1e-6)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    suite = Suite.from_paths(original=toy_world["original"], model=folder, reference=toy_world["reference"],
                             forget=toy_world["forget"], retain=toy_world["retain"], cache_dir=None)
    yield suite
    suite.close()


def test_the_reference_passes_its_own_gate_under_relearning_on_the_forget_set(reference_gate, bad):
    """docs/attacks.md: a leak is recovery above what the attack gives the never-knew reference.
    Relearning on forget folds lifts even the reference beyond 0.17 (the answers' shape is
    learnable); that is no leak.  The original, under the same gate, still fails."""
    attacks_available("relearn")
    spec = "relearn:on=forget"
    result = assert_forgotten("es", 0.17, under_attack=[spec], suite=reference_gate)
    row = result.record["attacks"][1]
    assert row["score"] > 0.17  # what the attack gave, counted only beyond the reference
    assert row["explained_by_reference"] == len(reference_gate.forget) and row["verdict"] == "ok"
    assert result.score == pytest.approx(result.scores["none"].mean())
    with pytest.raises(UnlearningAssertionError, match=r"leak"):
        assert_forgotten("es", 0.17, under_attack=[spec], suite=bad)


def _by_model(values_for):
    """A custom weight attack whose per-sample score depends on the model it attacks."""
    def values(model, data):
        role = "twin" if "twin" in str(model.source) else "reference" if "reference" in str(model.source) \
            else "original"
        return np.asarray(values_for[role](len(data)), dtype=np.float64)
    return values


def test_under_a_reference_only_recovery_beyond_it_counts_per_sample(twin):
    attacks_available()
    as_much = _custom_attack("lift", "weight", _by_model({
        "twin": lambda n: np.full(n, 0.6), "reference": lambda n: np.full(n, 0.6),
        "original": lambda n: np.ones(n)}))
    result = assert_forgotten("es", 0.25, under_attack=[as_much], suite=twin)
    assert result.record["attacks"][1]["explained_by_reference"] == len(twin.forget)
    assert "no more knowledge under it than the reference" in " ".join(result.notes)
    # one sample recovers beyond the reference: it counts in full, and that tips the mean
    one_more = _custom_attack("lift", "weight", _by_model({
        "twin": lambda n: np.r_[0.95, np.full(n - 1, 0.6)], "reference": lambda n: np.full(n, 0.6),
        "original": lambda n: np.ones(n)}))
    clean = result.scores["none"].to_numpy()
    expected = np.r_[0.95, clean[1:]].mean()
    assert expected > 0.25
    with pytest.raises(UnlearningAssertionError) as info:
        assert_forgotten("es", 0.25, under_attack=[one_more], suite=twin)
    assert info.value.result.score == pytest.approx(expected)
    assert info.value.result.scores["worst_attack"].tolist()[0] == "lift"
    # without a reference the rule does not apply: today's worst case over every attack
    plain = Suite.from_paths(original=twin.settings.original, model=twin.settings.model,
                             forget=twin.settings.forget, retain=twin.settings.retain, cache_dir=None)
    try:
        with pytest.raises(UnlearningAssertionError):
            assert_forgotten("es", 0.25, under_attack=[as_much], suite=plain)
    finally:
        plain.close()


# ---------------------------------------------------------------- what the attacked model produced

def _prompt_attack_asking(other):
    """A prompt attack that asks, for forget sample k, retain question k (the answer scored is
    unchanged): the reference answers it, so its generation under the attack is a retain fact."""
    from pytest_unlearn.attacks.base import Attack, AttackOutcome
    from pytest_unlearn.prompts import dataset_parts

    class AskOther(Attack):
        name, kind = "ask_other", "prompt"

        def _run(self, metric, model, data, ctx):
            parts = [p.with_(question=other.prompts[k]) for k, p in enumerate(dataset_parts(data))]
            return AttackOutcome(np.ones(len(data)), {}, None, [p.question for p in parts], parts=parts)

    return AskOther()


def test_the_message_shows_what_the_model_generated_under_the_attack(good):
    attacks_available()
    with pytest.raises(UnlearningAssertionError) as info:
        assert_forgotten("es", 0.3, under_attack=[_prompt_attack_asking(good.retain)], suite=good)
    message = str(info.value)
    shown = info.value.result.record["worst_samples"]
    assert [s["generated_under"] for s in shown] == ["ask_other"] * len(shown)
    assert message.count("generated under ask_other:") == len(shown) and "(no attack)" not in message
    for s in shown:  # the retain fact asked under the attack, not the forget question's answer
        k = good.forget.ids.index(s["id"])
        person = " ".join(good.retain.answers[k].split()[:2])
        assert person in s["generated"] and s["prompt"] == good.retain.prompts[k]
    assert message.splitlines()[-1].startswith("next: the knowledge is suppressed, not removed: ask_other")


def test_weight_attacks_generate_on_the_attacked_weights_and_others_say_they_cannot(good, bad):
    attacks_available()
    from pytest_unlearn.attacks.base import Attack, AttackOutcome

    class Boost(Attack):
        name, kind = "boost", "weight"

        def _run(self, metric, model, data, ctx):
            return AttackOutcome(np.ones(len(data)), {}, None, None)

        def generate(self, model, data, rows, ctx, outcome=None):
            return [f"attacked answer {data.ids[i]}" for i in rows]

    with pytest.raises(UnlearningAssertionError) as info:
        assert_forgotten("es", 0.3, under_attack=[Boost()], suite=good)
    first = info.value.result.record["worst_samples"][0]
    assert f"generated under boost: attacked answer {first['id']}" in str(info.value)
    blind = _custom_attack("blind", "representation", lambda model, data: np.ones(len(data)))
    with pytest.raises(UnlearningAssertionError) as info:
        assert_forgotten("es", 0.3, under_attack=[blind], suite=good)
    assert "generated (no attack; blind cannot generate):" in str(info.value)
    # a leak with no attack says so, and what to do
    with pytest.raises(UnlearningAssertionError) as info:
        assert_forgotten("es", 0.3, suite=bad)
    assert str(info.value).splitlines()[-1].startswith("next: the model still states these facts with no attack")


def test_quantize_generates_on_the_quantized_weights_and_restores(good):
    """Greedy decoding reproduces the whole answer exactly where ES is 1 (its definition), so
    the generations under quantize:4 must agree with the ES under quantize:4, sample by sample;
    on the toy original 4-bit rounding changes what follows the answers."""
    attacks_available("quantize:4")
    import torch

    from pytest_unlearn.attacks import parse_attack
    from pytest_unlearn.metrics import get_metric
    from pytest_unlearn.prompts import dataset_parts

    attack, model, data = parse_attack("quantize:4"), good.original, good.forget
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    es = good.run_attack(attack, get_metric("es"), model, data).values
    texts = attack.generate(model, data, range(len(data)), good.attack_context())
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    assert [t.startswith(a) for t, a in zip(texts, data.answers)] == [bool(e == 1.0) for e in es]
    assert texts != good.scorer.generate(model, dataset_parts(data))


def test_the_summary_shows_the_score_that_counted_under_the_reference_rule():
    """An attack row whose raw score is above the threshold but whose samples the reference
    explains reads 'ok': the summary shows the counted score beside the raw one."""
    from pytest_unlearn.reporting import summary_lines

    record = {"test": "t.py::test_gate", "kind": "forgotten", "metric": "es", "verdict": "pass",
              "score": 0.16, "threshold": 0.17, "direction": "higher", "model": {"name": "unlearned"},
              "attacks": [{"attack": "none", "score": 0.16, "counted": 0.16, "verdict": "ok"},
                          {"attack": "relearn:on=forget", "score": 0.41, "counted": 0.16,
                           "explained_by_reference": 8, "verdict": "ok"},
                          {"attack": "paraphrase", "score": 0.12, "counted": 0.12,
                           "explained_by_reference": 0, "verdict": "ok"}]}
    text = "\n".join(summary_lines([record], []))
    assert "0.4100 (0.1600 counted)" in text
    assert "0.1200 (" not in text  # nothing set aside: the score alone
