"""Prompts cut to fit the model's context are recorded per sample, not only warned about."""

from __future__ import annotations

import json
import warnings

import pytest

from pytest_unlearn.data import dataset_from_records
from pytest_unlearn.models import handle_from_objects
from pytest_unlearn.prompts import TruncationWarning
from pytest_unlearn.scoring import Scorer
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def handle(one_torch_thread):
    tok = tiny_tokenizer(["Where was Ada born? Ada was born in Vellmar. Question Answer"] * 5, vocab_size=300)
    return handle_from_objects(tiny_llama(tok, max_positions=40), tok)


WORDS = ["Ada", "Vellmar", "born", "Question", "Answer"]


def records(long_row: int, n: int = 3, *, long_perturbed: int = -1) -> list[dict]:
    out = []
    for i in range(n):
        question = "Where was Ada born? " * (12 if i == long_row else 1)
        wrong = [f"{WORDS[i]}.", "Born."] + (["Ada was born in Vellmar. " * 5] if i == long_perturbed else [])
        out.append({"question": question.strip(), "answer": f"{WORDS[i]} Vellmar.",
                    "paraphrased_answer": "In Vellmar.", "perturbed_answer": wrong})
    return out


@pytest.mark.parametrize("metric", ["prob", "truth_ratio"])
def test_the_truncated_samples_are_named_in_the_result(handle, metric):
    data = dataset_from_records(records(long_row=1))
    scorer = Scorer(prompt="plain")
    with pytest.warns(TruncationWarning):
        result = scorer.score(metric, handle, data)
    assert result.truncated == [data.ids[1]]
    assert scorer.truncated == [data.ids[1]]
    with warnings.catch_warnings():  # a cached second run still knows
        warnings.simplefilter("ignore")
        assert scorer.score(metric, handle, data).truncated == [data.ids[1]]


def test_a_cut_prompt_for_a_perturbed_answer_counts_for_its_sample(handle):
    data = dataset_from_records(records(long_row=-1, long_perturbed=2))
    with pytest.warns(TruncationWarning):
        assert Scorer(prompt="plain").score("truth_ratio", handle, data).truncated == [data.ids[2]]
        assert Scorer(prompt="plain").score("prob", handle, data).truncated == []


def test_nothing_truncated_is_an_empty_list(handle):
    data = dataset_from_records(records(long_row=-1))
    scorer = Scorer(prompt="plain")
    scorer.truncated = ["stale"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scorer.score("prob", handle, data).truncated == []


def test_a_failure_message_and_report_name_the_truncated_samples(toy_world):
    from pytest_unlearn import Suite, UnlearningAssertionError, assert_forgotten, reporting

    facts = [json.loads(line) for line in toy_world["forget"].read_text().splitlines()[:3]]
    long_q = "Tell me everything, in order: " + " ".join(f["question"] for f in facts) * 12
    records = [{"question": long_q, "answer": facts[0]["answer"]},
               {"question": facts[1]["question"], "answer": facts[1]["answer"]}]
    rec = reporting.Recorder()
    reporting.push_recorder(rec)
    suite = Suite.from_paths(original=toy_world["original"], model=toy_world["original"],
                             forget=toy_world["forget"], cache_dir=None)
    try:
        with pytest.warns(TruncationWarning), pytest.raises(UnlearningAssertionError) as info:
            assert_forgotten("prob", 0.0, data=records, suite=suite)
    finally:
        suite.close()
        reporting.pop_recorder(rec)
    record = info.value.result.record
    assert record["truncated"] == [dataset_from_records(records).ids[0]]
    message = str(info.value)
    assert "1 of 2 prompts were longer than the model's context" in message
    assert record["truncated"][0] in message
