"""Every place that scores or trains from settings takes every prompt setting: the prompt format,
the system prompt and the chat template's arguments (Scorer.from_settings / PROMPT_SETTINGS)."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import Suite, methods  # noqa: E402
from pytest_unlearn.config import Settings  # noqa: E402
from pytest_unlearn.data import dataset_from_records  # noqa: E402
from pytest_unlearn.errors import UnlearnError  # noqa: E402
from pytest_unlearn.models import handle_from_objects  # noqa: E402
from pytest_unlearn.prompts import parse_prompt_format  # noqa: E402
from pytest_unlearn.scoring import PROMPT_SETTINGS, Scorer  # noqa: E402
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYSTEM = "You answer in one word."
ARGS = '{"date_string": "01 Jan 2025", "enable_thinking": false}'
CANONICAL_ARGS = json.dumps(json.loads(ARGS), sort_keys=True, separators=(",", ":"))
RECORDS = [{"id": "a", "question": "Where was Ada born?", "answer": "In Vellmar."},
           {"id": "b", "question": "Who is Bo Tarn?", "answer": "A perfumer."}]


@pytest.fixture(scope="module")
def handle():
    tok = tiny_tokenizer([r["question"] + " " + r["answer"] for r in RECORDS] * 5 + [SYSTEM], vocab_size=300)
    return handle_from_objects(tiny_llama(tok, max_positions=128), tok, name="tiny")


def _expected_spec(handle) -> str:
    return parse_prompt_format(None, handle.tokenizer, system=SYSTEM, template_args=ARGS).spec


def test_from_settings_takes_every_prompt_setting(handle):
    settings = Settings(system_prompt=SYSTEM, chat_template_args=ARGS, batch_size=3)
    scorer = Scorer.from_settings(settings)
    assert {n: getattr(scorer, n) for n in PROMPT_SETTINGS} == {n: getattr(settings, n) for n in PROMPT_SETTINGS}
    assert scorer.batch_size == 3
    fmt = scorer.prompt_format(handle)
    assert fmt.system == SYSTEM and fmt.template_args == CANONICAL_ARGS
    assert Scorer.from_settings(settings, batch_size=5).batch_size == 5
    # every Scorer keyword that is also a setting is taken from the settings (a new one must be)
    keywords = set(inspect.signature(Scorer.__init__).parameters) - {"self"}
    shared = keywords & {f.name for f in fields(Settings)}
    assert shared - {"batch_size", "progress"} == set(PROMPT_SETTINGS)


def test_the_suite_scorer_takes_every_prompt_setting(handle):
    suite = Suite(Settings(system_prompt=SYSTEM, chat_template_args=ARGS), cache_dir=None)
    assert suite.scorer.prompt_format(handle).spec == _expected_spec(handle)


def test_leak_search_scores_with_the_suites_system_prompt_and_template_args(handle):
    from pytest_unlearn.leak_search import find_leak

    suite = Suite(Settings(system_prompt=SYSTEM, chat_template_args=ARGS), cache_dir=None)
    result = find_leak("es", 0.99, suite=suite, model=handle, data=RECORDS, max_examples=1, retain=False,
                       database=None, samples=1)
    assert result.env.fmt.spec == _expected_spec(handle)


def _stop_at_unlearning(monkeypatch) -> list:
    """Replace methods.unlearn by one that records its keywords and fails the run (cheaply)."""
    calls = []

    def fake(method, model, forget, retain=None, **kwargs):
        calls.append(kwargs)
        raise UnlearnError("stopped here")
    monkeypatch.setattr(methods, "unlearn", fake)
    return calls


def test_compare_methods_unlearns_with_the_scorers_prompt_settings(handle, monkeypatch):
    from pytest_unlearn import compare_methods

    calls = _stop_at_unlearning(monkeypatch)
    data = dataset_from_records(RECORDS, name="forget")
    scorer = Scorer(system_prompt=SYSTEM, chat_template_args=ARGS)
    result = compare_methods(handle, {"ga": {"lr": [1e-3], "steps": [1]}}, data, data, scorer=scorer)
    assert result.runs[0]["status"] == "error" and len(calls) == 1
    # the model is trained on the very prompts it is scored on
    assert parse_prompt_format(calls[0]["prompt"], handle.tokenizer).spec == _expected_spec(handle)
    assert result.runs[0]["prompt"] == _expected_spec(handle)


def test_cli_flags_for_the_system_prompt_and_template_args(handle, monkeypatch, tmp_path, capsys):
    from pytest_unlearn.cli import main

    calls = _stop_at_unlearning(monkeypatch)
    handle.save(tmp_path / "model")
    data = tmp_path / "forget.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    common = ["compare", "--original", str(tmp_path / "model"), "--forget", str(data), "--retain", str(data),
              "--grid", '{"ga": {"lr": [1e-3], "steps": [1]}}', "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(common + ["--system-prompt", SYSTEM, "--chat-template-args", ARGS]) == 0
    assert len(calls) == 1
    loaded = parse_prompt_format(calls[0]["prompt"], handle.tokenizer)
    assert loaded.system == SYSTEM and loaded.template_args == CANONICAL_ARGS
    capsys.readouterr()
    assert main(common + ["--chat-template-args", "[1, 2]"]) == 2
    assert "--chat-template-args must be a JSON object" in capsys.readouterr().err
