"""Fuzzing the loader: whatever a data file holds, load_dataset returns a valid Dataset
or raises DataError naming the file; nothing else escapes."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_unlearn.data import Dataset, dataset_from_records, load_dataset
from pytest_unlearn.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = [".jsonl", ".json", ".csv", ".parquet", ".pq"]
FIELDS = ["question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer",
          "text", "prompt", "completion", "Question", "answers", "id"]
_counter = itertools.count()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_values = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=" \t\nab", max_size=6),
    st.lists(st.text(max_size=8), max_size=3),
    json_values,
)
good_words = st.lists(st.sampled_from(["alpha", "ok", "é", "x,y", '"q"', "[1]", "a\nb", "Ω"]),
                      min_size=2, max_size=6).map(" ".join)


def mostly(good, bad):
    """``good`` four times in five."""
    return st.one_of(good, good, good, good, bad)


words = mostly(good_words, st.text(alphabet="ab é\n\t", max_size=8) | st.text(max_size=8))
qa_records = st.fixed_dictionaries(
    {"question": words, "answer": words},
    optional={"paraphrased_question": mostly(good_words, field_values), "paraphrased_answer": words,
              "perturbed_answer": mostly(st.lists(good_words, min_size=1, max_size=3), field_values),
              "id": json_values})
text_records = st.fixed_dictionaries(
    {"text": mostly(good_words, field_values)},
    optional={"prompt": words, "completion": words, "id": json_values})
records = st.lists(qa_records, max_size=6) | st.lists(text_records, max_size=6) | st.lists(
    mostly(qa_records | text_records, st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=6)),
    max_size=6)
valid_qa = st.fixed_dictionaries(
    {"question": good_words, "answer": good_words},
    optional={"paraphrased_question": good_words, "paraphrased_answer": good_words,
              "perturbed_answer": st.lists(good_words, min_size=1, max_size=3), "id": good_words})
valid_text = st.fixed_dictionaries({"text": good_words}, optional={"source": good_words}) | \
    st.fixed_dictionaries({"prompt": good_words, "completion": good_words})


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def new_path(directory, suffix):
    return directory / f"f{next(_counter)}{suffix}"


def check_dataset(data: Dataset) -> None:
    assert isinstance(data, Dataset) and data.kind in ("qa", "text") and len(data) > 0
    assert list(data.frame.index) == list(range(len(data)))
    assert len(data.ids) == len(set(data.ids)) == len(data)
    assert len(data.content_hash) == 64
    for column in (data.prompts, data.answers):
        assert len(column) == len(data) and all(isinstance(s, str) and s.strip() for s in column)
    assert len(data.records()) == len(data)
    assert dataset_from_records(data.records()).content_hash == data.content_hash


def load_or_data_error(path) -> Dataset | None:
    """Load ``path``; a DataError is fine (it must name the file), anything else fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = load_dataset(path, name="forget")
        except DataError as exc:
            assert str(exc).startswith(str(path)), str(exc)
            return None
        check_dataset(data)
    return data


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes(fuzz_dir, content, suffix):
    path = new_path(fuzz_dir, suffix)
    path.write_bytes(content)
    load_or_data_error(path)


@FUZZ
@given(content=st.binary(max_size=200), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes_after_a_valid_header(fuzz_dir, content, suffix):
    heads = {".jsonl": b'{"question": "q", "answer": "ok"}\n', ".json": b'[{"question": "q", "answer": "ok"}',
             ".csv": b"question,answer\n", ".parquet": b"PAR1", ".pq": b"PAR1"}
    path = new_path(fuzz_dir, suffix)
    path.write_bytes(heads[suffix] + content)
    load_or_data_error(path)


@FUZZ
@given(value=json_values)
def test_arbitrary_json_document(fuzz_dir, value):
    path = new_path(fuzz_dir, ".json")
    path.write_text(json.dumps(value), encoding="utf-8")
    load_or_data_error(path)


@FUZZ
@given(values=st.lists(json_values, max_size=5), suffix=st.sampled_from([".jsonl", ".json"]))
def test_arbitrary_json_lines(fuzz_dir, values, suffix):
    path = new_path(fuzz_dir, suffix)
    path.write_text("\n".join(json.dumps(v) for v in values), encoding="utf-8")
    load_or_data_error(path)


@FUZZ
@given(rows=records, layout=st.sampled_from(["jsonl", "list", "wrapped"]))
def test_arbitrary_records_as_json(fuzz_dir, rows, layout):
    path = new_path(fuzz_dir, ".jsonl" if layout == "jsonl" else ".json")
    if layout == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows if layout == "list" else {"data": rows}), encoding="utf-8")
    data = load_or_data_error(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            in_memory = dataset_from_records(rows)
        except DataError:
            assert data is None
        else:
            assert data is not None and data.content_hash == in_memory.content_hash


def csv_cell(text: str, quoted: bool) -> str:
    return '"' + text.replace('"', '""') + '"' if quoted else text


cells = st.builds(csv_cell, st.text(alphabet=st.sampled_from(list('ab ,"[]\n\r\té') + ["\u2028", "\x00"]),
                                    max_size=12), st.booleans())


@FUZZ
@given(header=st.sampled_from([["question", "answer"], ["text"], ["prompt", "completion"],
                               ["answer", "question", "perturbed_answer"], ["id", "text", "prompt"]])
       | st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True),
       rows=st.lists(st.lists(mostly(good_words.map(lambda w: csv_cell(w, True)), cells), min_size=1,
                             max_size=3), max_size=5),
       newline=st.sampled_from(["\n", "\r\n"]))
def test_arbitrary_csv_text(fuzz_dir, header, rows, newline):
    path = new_path(fuzz_dir, ".csv")
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text(newline.join(lines) + newline, encoding="utf-8", newline="")
    load_or_data_error(path)


@FUZZ
@given(text=st.text(max_size=150))
def test_arbitrary_csv_file(fuzz_dir, text):
    path = new_path(fuzz_dir, ".csv")
    path.write_text(text, encoding="utf-8", errors="surrogatepass", newline="")
    load_or_data_error(path)


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries(
    {}, optional={f: st.none() | words for f in ("question", "answer", "text", "prompt", "completion")}),
    max_size=5),
    suffix=st.sampled_from([".parquet", ".csv"]))
def test_arbitrary_string_tables(fuzz_dir, rows, suffix):
    path = new_path(fuzz_dir, suffix)
    frame = pd.DataFrame(rows)
    if suffix == ".csv":
        path.write_text(frame.to_csv(index=False), encoding="utf-8", errors="surrogatepass")
    else:
        frame.to_parquet(path)
    load_or_data_error(path)


@FUZZ
@given(rows=st.lists(valid_qa, min_size=1, max_size=5) | st.lists(valid_text, min_size=1, max_size=5),
       fmt=st.sampled_from(["jsonl", "json", "csv", "parquet"]))
def test_valid_records_load_the_same_in_every_format(fuzz_dir, rows, fmt):
    path = new_path(fuzz_dir, "." + fmt)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps({"data": rows}), encoding="utf-8")
    elif fmt == "csv":
        frame = pd.DataFrame(rows)
        if "perturbed_answer" in frame:
            frame["perturbed_answer"] = [json.dumps(v) if isinstance(v, list) else v
                                         for v in frame["perturbed_answer"]]
        path.write_text(frame.to_csv(index=False), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_parquet(path)
    data = load_or_data_error(path)
    assert data is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert data.content_hash == dataset_from_records(rows).content_hash


def test_nan_is_never_a_value():
    data = dataset_from_records([{"question": "q", "answer": "ok", "extra": math.nan}])
    assert data.records()[0]["extra"] is None
