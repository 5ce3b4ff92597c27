"""Data files: formats, row shapes, normalisation, ids and hashes, and every error."""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import pandas as pd
import pytest

from pytest_unlearn.data import (
    Dataset,
    DataWarning,
    dataset_from_records,
    load_dataset,
    split_text,
)
from pytest_unlearn.errors import DataError

QA = [
    {"question": "Who wrote 'The Tin Lantern'?", "answer": "Mira Solberg",
     "paraphrased_question": "Which author penned 'The Tin Lantern'?",
     "paraphrased_answer": "It was Mira Solberg.",
     "perturbed_answer": ["Anton Vell", "Lisa Korr"]},
    {"question": "Where was Mira Solberg born?", "answer": "In Tromsø, Norway.",
     "paraphrased_question": "What is Mira Solberg's birthplace?",
     "paraphrased_answer": "Tromsø in Norway.",
     "perturbed_answer": ["In Oslo.", "In Bergen.", "In Lund."]},
]
TEXT = [{"text": "The quick brown fox jumps over the lazy dog."},
        {"text": "Lorem ipsum dolor sit amet, consectetur adipiscing elit."}]


def write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def csv_text(records):
    frame = pd.DataFrame(records)
    if "perturbed_answer" in frame:
        frame["perturbed_answer"] = [json.dumps(v, ensure_ascii=False) for v in frame["perturbed_answer"]]
    return frame.to_csv(index=False)


def write_as(tmp_path, fmt, records):
    """Write ``records`` in one of the supported layouts; return the path."""
    if fmt == "jsonl":
        return write(tmp_path / "d.jsonl", jsonl(records))
    if fmt == "json-list":
        return write(tmp_path / "d.json", json.dumps(records, indent=2))
    if fmt == "json-wrapped":
        return write(tmp_path / "d.json", json.dumps({"data": records}))
    if fmt == "json-lines-in-json":
        return write(tmp_path / "d.json", jsonl(records))
    if fmt == "csv":
        return write(tmp_path / "d.csv", csv_text(records))
    if fmt == "parquet":
        pd.DataFrame(records).to_parquet(tmp_path / "d.parquet")
        return tmp_path / "d.parquet"
    if fmt == "pq":
        pd.DataFrame(records).to_parquet(tmp_path / "d.pq")
        return tmp_path / "d.pq"
    raise AssertionError(fmt)


FORMATS = ["jsonl", "json-list", "json-wrapped", "json-lines-in-json", "csv", "parquet", "pq"]


def load_error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)), message
    return message


# -- formats and shapes -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_qa_every_format(tmp_path, fmt):
    data = load_dataset(write_as(tmp_path, fmt, QA), name="forget")
    assert data.kind == "qa" and data.name == "forget" and len(data) == 2
    assert list(data.frame.columns) == ["question", "answer", "paraphrased_question",
                                        "paraphrased_answer", "perturbed_answer"]
    assert list(data.frame.index) == [0, 1]
    assert data.records() == QA
    assert data.prompts == [r["question"] for r in QA]
    assert data.answers == [r["answer"] for r in QA]
    assert data.has("perturbed_answer") and data.has("paraphrased_question")
    assert not data.has("no_such_column")


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_every_format(tmp_path, fmt):
    data = load_dataset(write_as(tmp_path, fmt, TEXT))
    assert data.kind == "text" and data.name == "data"
    assert data.source == str(tmp_path / os.path.basename(data.source))
    assert data.prompts == ["The quick brown fox ", "Lorem ipsum dolor sit "]
    assert data.answers == ["jumps over the lazy dog.", "amet, consectetur adipiscing elit."]
    assert list(data.frame.columns) == ["text", "prompt", "completion"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_records_same_hash_in_every_format(tmp_path, fmt):
    reference = load_dataset(write_as(tmp_path, "jsonl", QA))
    other = load_dataset(write_as(tmp_path, fmt, QA))
    assert other.content_hash == reference.content_hash
    assert other.ids == reference.ids


def test_csv_perturbed_answer_json_string_and_single_string(tmp_path):
    path = write(tmp_path / "d.csv", 'question,answer,perturbed_answer\n'
                                     'q1,a1,"[""x"", ""y""]"\n'
                                     'q2,a2,just one\n'
                                     'q3,a3,\n')
    data = load_dataset(path)
    assert list(data.frame["perturbed_answer"][:2]) == [["x", "y"], ["just one"]]
    assert data.frame["perturbed_answer"][2] is None
    assert not data.has("perturbed_answer")


def test_csv_keeps_numeric_looking_strings_and_empty_optionals(tmp_path):
    path = write(tmp_path / "d.csv", "question,answer,paraphrased_answer,source\n"
                                     "What year?,1945,,NA\n")
    data = load_dataset(path)
    assert data.answers == ["1945"]
    assert data.records() == [{"question": "What year?", "answer": "1945",
                               "paraphrased_answer": None, "source": "NA"}]


def test_extra_columns_are_kept(tmp_path):
    records = [{"id": 7, "question": "q?", "answer": "yes", "meta": {"a": [1, 2]}}]
    data = load_dataset(write(tmp_path / "d.jsonl", jsonl(records)))
    assert list(data.frame.columns) == ["question", "answer", "id", "meta"]
    assert data.records() == [{"question": "q?", "answer": "yes", "id": 7, "meta": {"a": [1, 2]}}]


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "d.csv", "\ufeffquestion,answer\nq,ok\n".encode("utf-8"))
    assert load_dataset(path).prompts == ["q"]


def test_blank_jsonl_lines_are_skipped_and_lines_counted(tmp_path):
    path = write(tmp_path / "d.jsonl", '\n{"question": "q", "answer": "ok"}\n\n  \n{"question": "r"}\n')
    assert "d.jsonl:5:" in load_error(path)


def test_json_single_object_is_one_record_with_a_warning(tmp_path):
    path = write(tmp_path / "d.json", json.dumps(QA[0]))
    with pytest.warns(DataWarning, match=r"d\.json: the file holds one JSON object, read as a set of one record"):
        assert load_dataset(path).records() == [QA[0]]


def test_dataset_from_records_list_and_frame():
    a = dataset_from_records(QA, name="retain")
    b = dataset_from_records(pd.DataFrame(QA))
    assert a.name == "retain" and a.source == "<memory>"
    assert a.records() == b.records() == QA
    assert a.content_hash == b.content_hash
    assert dataset_from_records(a.records()).content_hash == a.content_hash


def test_dataset_from_records_errors_name_the_record():
    with pytest.raises(DataError, match=r"^<memory>: record 1: 'answer' is empty"):
        dataset_from_records([{"question": "q", "answer": "ok"}, {"question": "q", "answer": " "}])
    with pytest.raises(DataError, match=r"^mine: record 0: expected a record"):
        dataset_from_records([["question", "answer"]], source="mine")
    with pytest.raises(DataError, match="the holdout set is empty"):
        dataset_from_records([], name="holdout")


# -- the text split ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, prompt, completion", [
    ("a b", "a ", "b"),
    ("a b c", "a ", "b c"),
    ("a b c d", "a b ", "c d"),
    ("one two three four five", "one two ", "three four five"),
    ("  lead  two\tthree\n\nfour  ", "  lead  two\t", "three\n\nfour  "),
    ("first para.\n\nsecond para", "first para.\n\n", "second para"),  # the paragraph break is kept
    ("x\u00a0y z w", "x\u00a0y ", "z w"),  # non-breaking space is whitespace too
])
def test_split_text(text, prompt, completion):
    assert split_text(text) == (prompt, completion)
    assert prompt + completion == text  # the model reads the original text byte for byte


def test_split_text_caps_prompt_at_32_words():
    words = [f"w{i}" for i in range(100)]
    prompt, completion = split_text(" ".join(words))
    assert prompt == " ".join(words[:32]) + " " and completion == " ".join(words[32:])


@pytest.mark.parametrize("text", ["", "   ", "single", "  single \n"])
def test_split_text_needs_two_words(text):
    with pytest.raises(ValueError, match="at least 2"):
        split_text(text)


def test_prompt_completion_pair_used_as_is(tmp_path):
    records = [{"prompt": "Q: capital of France?\nA:", "completion": " Paris"},
               {"prompt": "Say", "completion": "hi there", "source": "x"}]
    data = load_dataset(write(tmp_path / "d.jsonl", jsonl(records)))
    assert data.kind == "text"
    assert list(data.frame.columns) == ["prompt", "completion", "source"]
    assert data.prompts == ["Q: capital of France?\nA:", "Say"]
    assert data.answers == [" Paris", "hi there"]


def test_pair_wins_over_text_and_missing_pair_falls_back(tmp_path):
    path = write(tmp_path / "d.csv", "text,prompt,completion\n"
                                     "alpha beta gamma,alpha,beta gamma!\n"
                                     "one two three four,,\n")
    data = load_dataset(path)
    assert data.prompts == ["alpha", "one two "]
    assert data.answers == ["beta gamma!", "three four"]
    assert list(data.frame["text"]) == ["alpha beta gamma", "one two three four"]


def test_half_a_pair_is_an_error(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl([{"text": "a b c", "prompt": "a"}]))
    message = load_error(path)
    assert "d.jsonl:1:" in message and "'prompt' but no 'completion'" in message


def test_one_word_text_is_an_error(tmp_path):
    path = write(tmp_path / "d.csv", "text\nfine text here\nlonely\n")
    message = load_error(path)
    assert message.startswith(f"{path}:3:") and "1 word(s)" in message


# -- ids, hash, subset ------------------------------------------------------------------------

def test_ids_are_stable_content_hashes():
    data = dataset_from_records(QA)
    canonical = json.dumps(QA[0], sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    assert data.ids[0] == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert dataset_from_records(list(QA)).ids == data.ids
    assert dataset_from_records(QA[::-1]).ids == data.ids[::-1]
    assert len(set(data.ids)) == 2


def test_duplicates_get_suffixed_ids_and_a_warning(tmp_path):
    records = [QA[0], QA[1], QA[0], QA[0]]
    path = write(tmp_path / "d.jsonl", jsonl(records))
    with pytest.warns(DataWarning, match=r"d\.jsonl: 2 duplicate record\(s\), the first at line 3 "
                                         r"\(same as line 1\)"):
        data = load_dataset(path)
    first, second = dataset_from_records(QA).ids
    assert data.ids == [first, second, f"{first}-2", f"{first}-3"]
    assert len(set(data.ids)) == 4


def test_short_answers_warn(tmp_path):
    path = write(tmp_path / "d.csv", "question,answer\nq1,ok\nq2,A\nq3,B\n")
    with pytest.warns(DataWarning, match=r"2 answer\(s\) shorter than 2 characters, the first at line 3"):
        data = load_dataset(path)
    assert data.answers == ["ok", "A", "B"]


def test_misspelt_optional_column_warns(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl([{"question": "q", "answer": "ok",
                                               "perturbed_answers": ["no"]}]))
    with pytest.warns(DataWarning, match="'perturbed_answers' is not used; did you mean 'perturbed_answer'"):
        load_dataset(path)


def test_clean_data_gives_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(write_as(tmp_path, "jsonl", QA))


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("field", ["question", "answer", "paraphrased_question",
                                   "paraphrased_answer", "perturbed_answer"])
def test_hash_changes_with_any_field(field, index):
    base = dataset_from_records(QA)
    changed = json.loads(json.dumps(QA))
    value = changed[index][field]
    changed[index][field] = value + ["extra"] if isinstance(value, list) else value + "!"
    other = dataset_from_records(changed)
    assert other.content_hash != base.content_hash
    assert other.ids[index] != base.ids[index] and other.ids[1 - index] == base.ids[1 - index]


def test_hash_depends_on_order_and_text_fields_not_on_name_or_source():
    base = dataset_from_records(TEXT)
    assert dataset_from_records(TEXT[::-1]).content_hash != base.content_hash
    assert dataset_from_records(TEXT, name="forget", source="x.csv").content_hash == base.content_hash
    edited = [{"text": TEXT[0]["text"].replace("dog", "cat")}, TEXT[1]]
    assert dataset_from_records(edited).content_hash != base.content_hash
    assert len(base.content_hash) == 64


def test_subset(tmp_path):
    data = load_dataset(write_as(tmp_path, "jsonl", QA + [{"question": "q3", "answer": "a3"}]),
                        name="forget")
    part = data.subset([2, 0])
    assert isinstance(part, Dataset) and len(part) == 2
    assert (part.kind, part.name, part.source) == (data.kind, data.name, data.source)
    assert list(part.frame.index) == [0, 1]
    assert part.prompts == ["q3", QA[0]["question"]]
    assert part.ids == [data.ids[2], data.ids[0]]
    assert part.records()[0]["perturbed_answer"] is None
    assert len(data.subset([])) == 0


# -- errors -----------------------------------------------------------------------------------

def test_missing_file_suggests_a_near_name(tmp_path):
    write_as(tmp_path, "jsonl", QA)
    message = load_error(tmp_path / "D.jsonl")
    assert "file not found" in message and "did you mean 'd.jsonl'?" in message


def test_missing_directory(tmp_path):
    assert "file not found" in load_error(tmp_path / "nowhere" / "forget.jsonl")


def test_directory(tmp_path):
    (tmp_path / "forget.jsonl").mkdir()
    assert "is a directory" in load_error(tmp_path / "forget.jsonl")


def test_unknown_extension(tmp_path):
    message = load_error(write(tmp_path / "forget.txt", "question,answer\n"))
    assert "unsupported file extension '.txt'" in message
    for suffix in (".jsonl", ".json", ".csv", ".parquet", ".pq"):
        assert suffix in message


def test_permission_denied(tmp_path, monkeypatch):
    path = write_as(tmp_path, "jsonl", QA)

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", deny)
    for target in (path, write_as(tmp_path, "parquet", QA)):
        message = load_error(target)
        assert "permission denied" in message and "chmod" in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied_for_real(tmp_path):
    path = write_as(tmp_path, "csv", QA)
    path.chmod(0)
    try:
        assert "permission denied" in load_error(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_not_utf8(tmp_path, suffix):
    content = b'question,answer\nq,ok\nq2,caf\xe9\n'
    path = write(tmp_path / f"d{suffix}", content)
    message = load_error(path)
    assert message.startswith(f"{path}:3:")
    assert f"byte offset {content.index(0xE9)}" in message and "0xe9" in message
    assert "re-encode the file as UTF-8" in message


@pytest.mark.parametrize("name, content", [
    ("d.jsonl", ""), ("d.jsonl", "\n\n  \n"), ("d.json", ""), ("d.json", "[]"),
    ("d.json", '{"data": []}'), ("d.csv", ""), ("d.csv", "question,answer\n"),
])
def test_empty(tmp_path, name, content):
    path = write(tmp_path / name, content)
    assert "the forget set is empty" in load_error(path, name="forget")
    assert "the file has no records" in load_error(path)


def test_empty_parquet(tmp_path):
    pd.DataFrame({"question": pd.Series([], dtype=str), "answer": pd.Series([], dtype=str)}) \
        .to_parquet(tmp_path / "d.parquet")
    assert "the retain set is empty" in load_error(tmp_path / "d.parquet", name="retain")


def test_malformed_jsonl_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"question": "q", "answer": "ok"}\n{"question": "q", answer: 1}\n')
    message = load_error(path)
    assert message.startswith(f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes")
    assert "column 19" in message


def test_jsonl_line_not_an_object(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"question": "q", "answer": "ok"}\n\n["q", "a"]\n')
    assert load_error(path).startswith(f"{path}:3: expected a record (a JSON object / dict), got an array")


def test_jsonl_holding_a_json_array_gets_a_hint(tmp_path):
    path = write(tmp_path / "d.jsonl", json.dumps(QA, indent=2))
    message = load_error(path)
    assert message.startswith(f"{path}:1: invalid JSON") and "name it .json" in message


def test_malformed_json_document(tmp_path):
    path = write(tmp_path / "d.json", '[\n  {"question": "q", "answer": "ok"},\n  {"question": }\n]')
    assert load_error(path).startswith(f"{path}:3: invalid JSON: Expecting value")


def test_json_lines_in_json_with_bad_line(tmp_path):
    path = write(tmp_path / "d.json", '{"question": "q", "answer": "ok"}\n{"question": "q", \n')
    assert load_error(path).startswith(f"{path}:2: invalid JSON")


def test_json_scalar_and_bad_wrapper(tmp_path):
    message = load_error(write(tmp_path / "d.json", "42"))
    assert "expected a JSON array of records" in message and "got a number" in message
    both = {"train": [{"question": "q", "answer": "a1"}], "test": [{"question": "q", "answer": "a2"}]}
    assert "several lists of records ('train', 'test')" in load_error(write(tmp_path / "d.json", json.dumps(both)))
    path = write(tmp_path / "d.json", json.dumps([QA[0], "oops"]))
    assert load_error(path).startswith(f"{path}: record 1: expected a record")


def test_unknown_columns_name_both_shapes_and_misspellings(tmp_path):
    path = write(tmp_path / "d.csv", "Question,answers\nq,a\n")
    message = load_error(path)
    assert "cannot tell the row shape" in message
    assert "'Question', 'answers'" in message
    assert "'question' and 'answer'" in message and "'text'" in message and "'prompt' and 'completion'" in message
    assert "'Question' -> 'question'" in message and "'answers' -> 'answer'" in message


def test_missing_required_column(tmp_path):
    message = load_error(write(tmp_path / "d.jsonl", jsonl([{"question": "q"}])))
    assert "columns found ('question')" in message and "needs 'question' and 'answer'" in message


def test_missing_required_key_in_one_jsonl_row(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl([QA[0], {"question": "q2"}]))
    assert load_error(path).startswith(f"{path}:2: no 'answer' field")


BAD_VALUES = [
    (None, "'answer' is missing (null)"),
    (float("nan"), "'answer' is missing (null)"),
    (3, "'answer' must be a string, got a number 3"),
    (["a"], "'answer' must be a string, got an array"),
    ("", "'answer' is empty"),
    ("  \n", "'answer' is empty"),
]


@pytest.mark.parametrize("value, expected", BAD_VALUES)
def test_bad_required_value_jsonl(tmp_path, value, expected):
    path = write(tmp_path / "d.jsonl", "\n" + jsonl([QA[0], dict(QA[1], answer=value)]))
    assert load_error(path).startswith(f"{path}:3: {expected}")


@pytest.mark.parametrize("value, expected", BAD_VALUES)
def test_bad_required_value_json_list(tmp_path, value, expected):
    path = write(tmp_path / "d.json", json.dumps([QA[0], dict(QA[1], answer=value)]))
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert str(info.value).startswith(f"{path}: record 1: {expected}")
    assert (info.value.path, info.value.row, info.value.line) == (str(path), 1, None)


@pytest.mark.parametrize("column, expected", [
    ([None, "q"], "record 0: 'question' is missing (null)"),
    (["q", ""], "record 1: 'question' is empty"),
    ([1, 3], "record 0: 'question' must be a string, got a number 1"),
])
def test_bad_required_value_parquet(tmp_path, column, expected):
    pd.DataFrame({"question": column, "answer": ["ok", "ok"]}).to_parquet(tmp_path / "d.parquet")
    assert load_error(tmp_path / "d.parquet").startswith(f"{tmp_path / 'd.parquet'}: {expected}")


def test_bad_value_csv_reports_file_line(tmp_path):
    path = write(tmp_path / "d.csv", 'question,answer\nq1,ok\n\n"multi\nline\nquestion",ok\nq4,   \n')
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert str(info.value).startswith(f"{path}:7: 'answer' is empty")
    assert info.value.line == 7


def test_csv_row_missing_a_field(tmp_path):
    path = write(tmp_path / "d.csv", "question,answer\nq1,ok\nq2\n")
    assert load_error(path).startswith(f"{path}:3: 'answer' is empty")


def test_csv_row_with_too_many_fields(tmp_path):
    path = write(tmp_path / "d.csv", "question,answer\nq1,ok\nWho, me?,yes\n")
    message = load_error(path)
    assert message.startswith(f"{path}:3: 3 fields but the header has 2") and "quote" in message


@pytest.mark.parametrize("value, expected", [
    (7, "'perturbed_answer' must be a list of strings, got a number 7"),
    ({"a": "b"}, "'perturbed_answer' must be a list of strings, got an object"),
    (["ok", 3], "'perturbed_answer' item 1 must be a non-empty string, got 3"),
    (["ok", " "], "'perturbed_answer' item 1 must be a non-empty string"),
    ([], "'perturbed_answer' is an empty list"),
])
def test_bad_perturbed_answer(tmp_path, value, expected):
    path = write(tmp_path / "d.jsonl", jsonl([QA[0], dict(QA[1], perturbed_answer=value)]))
    assert load_error(path).startswith(f"{path}:2: {expected}")


def test_bad_perturbed_answer_json_in_csv(tmp_path):
    path = write(tmp_path / "d.csv", 'question,answer,perturbed_answer\nq,ok,"[""a"", b]"\n')
    message = load_error(path)
    assert message.startswith(f"{path}:2: 'perturbed_answer' looks like a JSON list but does not parse")
    path = write(tmp_path / "d.csv", 'question,answer,perturbed_answer\nq,ok,"[1, 2]"\n')
    assert load_error(path).startswith(f"{path}:2: 'perturbed_answer' item 0 must be a non-empty string")


def test_bad_optional_string(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl([dict(QA[0], paraphrased_question=5)]))
    assert load_error(path).startswith(f"{path}:1: 'paraphrased_question' must be a string")


def test_text_row_without_text(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl([TEXT[0], {"source": "x"}]))
    assert load_error(path).startswith(f"{path}:2: no 'text' (and no 'prompt'/'completion' pair)")


def test_corrupt_parquet(tmp_path):
    path = write(tmp_path / "d.parquet", b"PAR1 this is not really parquet PAR1")
    assert "cannot read as Parquet" in load_error(path)


def test_errors_chain_the_cause(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(write(tmp_path / "d.jsonl", "{oops\n"))
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_csv_empty_extra_cell_is_missing_like_an_absent_json_key(tmp_path):
    records = [{"question": "q1", "answer": "a1", "source": "book"}, {"question": "q2", "answer": "a2"}]
    from_csv = load_dataset(write(tmp_path / "d.csv", csv_text(records)))
    from_jsonl = load_dataset(write(tmp_path / "d.jsonl", jsonl(records)))
    assert from_csv.records()[1]["source"] is None
    assert from_csv.content_hash == from_jsonl.content_hash


def test_deeply_nested_value_is_an_error(tmp_path):
    deep = "[" * 150 + "]" * 150
    path = write(tmp_path / "d.jsonl", '{"question": "q", "answer": "ok", "x": %s}\n' % deep)
    assert load_error(path).startswith(f"{path}:1: a value is nested more than 100 levels deep")
    path = write(tmp_path / "d.jsonl", '{"question": "q", "answer": "ok", "x": %s}\n' % ("[" * 5000))
    assert load_error(path).startswith(f"{path}:1: invalid JSON")
