"""The cost report counts the batches the scorer really ran: with no batch size set, batches start
at the device's default (32 on CUDA, 8 on the CPU), not at a fixed 8.  A device whose default is
3 is simulated by replacing ``default_batch_size`` where each module looks it up."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import forward, generation, scoring  # noqa: E402
from pytest_unlearn.data import dataset_from_records  # noqa: E402
from pytest_unlearn.models import handle_from_objects  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [{"question": f"What is fact number {i}?", "answer": f"Fact {i} is about item {i * 7}."} for i in range(10)]
MC_ROWS = [{"question": f"Which number is {i}?", "choices": [str(i), str(i + 1), str(i + 2)], "answer": 0}
           for i in range(7)]


@pytest.fixture(scope="module")
def handle():
    tok = tiny_tokenizer([r["question"] + " " + r["answer"] for r in ROWS] * 3, vocab_size=300)
    return handle_from_objects(tiny_llama(tok), tok)


@pytest.fixture
def default_three(monkeypatch):
    three = lambda device: 3  # noqa: E731
    for module in (forward, generation, scoring):
        monkeypatch.setattr(module, "default_batch_size", three)


def counting(model, monkeypatch) -> list:
    calls = []
    real = model.forward

    def forward_(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(None if ids is None else int(ids.shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward_)
    return calls


def test_forward_batches_are_counted_at_the_devices_default_size(handle, default_three, monkeypatch):
    calls = counting(handle.model, monkeypatch)
    scorer = Scorer(prompt="plain")
    scorer.per_sample("es", handle, dataset_from_records(ROWS, name="facts"))
    assert max(calls) == 3 and len(calls) == 4  # 10 samples in batches of 3
    assert scorer.cost.forward_passes == 4


def test_generation_batches_are_counted_at_the_devices_default_size(handle, default_three):
    scorer = Scorer(prompt="plain")
    scorer.per_sample("rouge_l", handle, dataset_from_records(ROWS, name="facts"))
    assert scorer.cost.generations == 4


def test_multiple_choice_batches_are_counted_at_the_devices_default_size(handle, default_three, monkeypatch):
    calls = counting(handle.model, monkeypatch)
    scorer = Scorer(prompt="plain")
    scorer.per_sample("mc_prob", handle, dataset_from_records(MC_ROWS, name="mc"))
    assert max(calls) == 3 and len(calls) == 3  # 7 prompts in batches of 3
    assert scorer.cost.forward_passes == 3
