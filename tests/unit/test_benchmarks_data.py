"""Benchmark files as published load without conversion: MUSE (verbmem, knowmem + its ICL
file, privleak / raw JSON arrays of strings), TOFU (world_facts / real_authors), RWKU probes;
column mappings; ``datasets`` folders and objects.

The files are written here in the published formats: MUSE's ``load_data.py`` writes
``{"prompt", "gt"}`` (verbmem), ``{"question", "answer"}`` (knowmem ``*_qa`` and ``*_qa_icl``)
and a JSON array of strings (privleak, raw); TOFU's ``world_facts_perturbed`` /
``real_authors_perturbed`` rows carry ``question``, ``option1``..``option4``, ``answer`` and
``perturbed_answer`` (3 strings, no paraphrase); RWKU's probes carry ``query`` and ``answer``.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from pytest_unlearn.data import load_dataset
from pytest_unlearn.errors import ConfigError, DataError


def _write(tmp_path, name, value):
    path = tmp_path / name
    path.write_text(json.dumps(value, indent=4), encoding="utf-8")
    return path


def test_muse_verbmem_prompt_gt_is_prompt_plus_completion(tmp_path):
    rows = [{"prompt": "The committee met on Tuesday and", "gt": " agreed to fund the new bridge."},
            {"prompt": "Harry looked at", "gt": " the letter again"}]
    data = load_dataset(_write(tmp_path, "forget.json", rows), name="forget")
    assert data.kind == "text"
    assert data.prompts == [r["prompt"] for r in rows]
    assert data.answers == [r["gt"] for r in rows]
    assert "gt" not in data.frame.columns


def test_muse_privleak_json_array_of_strings_is_text_rows(tmp_path):
    texts = ["First news article about the council vote on the harbour.",
             "Second article, with\n\nparagraphs and more words in it."]
    data = load_dataset(_write(tmp_path, "holdout.json", texts), name="holdout")
    assert data.kind == "text"
    assert list(data.frame["text"]) == texts
    assert [p + c for p, c in zip(data.prompts, data.answers)] == texts  # byte for byte


def test_muse_knowmem_and_its_icl_file(tmp_path):
    qa = [{"question": "Who chaired the committee?", "answer": "Maria Lopez"}]
    icl = [{"question": "Which city hosted the summit?", "answer": "Geneva"},
           {"question": "When did the vote take place?", "answer": "In March"}]
    data = load_dataset(_write(tmp_path, "forget_qa.json", qa))
    shots = load_dataset(_write(tmp_path, "forget_qa_icl.json", icl))
    assert data.kind == shots.kind == "qa"
    assert shots.prompts == [r["question"] for r in icl] and shots.answers == [r["answer"] for r in icl]


def test_tofu_world_facts_and_real_authors_three_perturbed_no_paraphrase(tmp_path):
    rows = [{"question": "Where would you find the Eiffel Tower?", "option1": "Paris", "option2": "London",
             "option3": "Rome", "option4": "Berlin", "answer": "Paris",
             "perturbed_answer": ["London", "Rome", "Berlin"]}]
    data = load_dataset(_write(tmp_path, "world_facts_perturbed.json", rows))
    assert data.kind == "qa"
    assert list(data.frame["perturbed_answer"][0]) == ["London", "Rome", "Berlin"]
    assert not data.has("paraphrased_answer")
    # JSON Lines, as the Hugging Face export writes it
    path = tmp_path / "real_authors_perturbed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert load_dataset(path).answers == ["Paris"]


def test_rwku_query_answer(tmp_path):
    rows = [{"query": "Stephen King's debut novel is ___.", "answer": "Carrie", "level": "1",
             "type": "cloze", "subject": "Stephen King"}]
    data = load_dataset(_write(tmp_path, "forget_level1.json", rows))
    assert data.kind == "qa"
    assert data.prompts == [rows[0]["query"]] and data.answers == ["Carrie"]
    assert data.frame["subject"][0] == "Stephen King"


def test_column_mapping_argument_and_ini_form(tmp_path):
    rows = [{"instruction": "Name the capital of France.", "output": "Paris is the capital."}]
    path = _write(tmp_path, "custom.json", rows)
    for columns in ({"question": "instruction", "answer": "output"}, "question=instruction, answer=output"):
        data = load_dataset(path, columns=columns)
        assert data.kind == "qa"
        assert data.prompts == [rows[0]["instruction"]] and data.answers == [rows[0]["output"]]


def test_column_mapping_unknown_column_names_file_and_column(tmp_path):
    path = _write(tmp_path, "custom.json", [{"instruction": "q?", "output": "an answer"}])
    with pytest.raises(DataError) as err:
        load_dataset(path, columns={"question": "prompt_text", "answer": "output"})
    assert "prompt_text" in str(err.value) and "custom.json" in str(err.value)
    with pytest.raises(ConfigError, match="nonsense"):
        load_dataset(path, columns="nonsense=output")
    with pytest.raises(ConfigError, match="field=column"):
        load_dataset(path, columns="question")


def test_columns_setting_reaches_the_suite(tmp_path):
    from pytest_unlearn.suite import Suite

    path = _write(tmp_path, "forget.json", [{"instruction": "Name the capital?", "output": "Paris, France"}])
    suite = Suite.from_paths(forget=str(path), columns="question=instruction, answer=output", cache_dir=None)
    assert suite.forget.prompts == ["Name the capital?"]


class _FakeHFDataset:
    """Stands in for ``datasets.Dataset`` (``datasets`` is an optional extra)."""

    column_names = ["query", "answer"]

    def __init__(self, rows):
        self._rows = rows

    def to_list(self):
        return list(self._rows)


def _fake_datasets_module(rows, calls):
    module = types.ModuleType("datasets")
    _FakeHFDataset.__module__ = "datasets.arrow_dataset"

    def load_from_disk(path):
        calls.append(path)
        return _FakeHFDataset(rows)

    module.load_from_disk = load_from_disk
    return module


def test_datasets_save_to_disk_folder_and_object(tmp_path, monkeypatch):
    rows = [{"query": "Who wrote Carrie?", "answer": "Stephen King"}]
    calls: list = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets_module(rows, calls))
    folder = tmp_path / "forget_ds"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    (folder / "dataset_info.json").write_text("{}")
    data = load_dataset(folder, name="forget")
    assert calls == [str(folder)] and data.prompts == ["Who wrote Carrie?"]
    assert load_dataset(_FakeHFDataset(rows)).answers == ["Stephen King"]


def test_datasets_folder_without_datasets_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    folder = tmp_path / "forget_ds"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    with pytest.raises(DataError, match=r"pytest-unlearn\[datasets\]"):
        load_dataset(folder)
