"""Every registered metric's per-sample scores are the same at batch sizes 1, 3 and 8.

A sample's score must not depend on the batch it lands in (its neighbours, the batch size, an
out-of-memory back-off that halves the batch).  The model is the trained toy Llama (it knows the
forget and retain facts, so ES, EM and ROUGE-L take values across their range), scored in float32
on its QA rows plus rows made longer in the question, the answer, or both, with one to three
perturbed answers, so that every batch size mixes lengths differently and pads differently.

Tolerance:

* **discrete metrics** (``es``, ``em``: counts of argmax hits; ``rouge_l``, ``rouge_l_f1``: functions of the greedy
  text): exactly equal, and the generated texts themselves identical;
* **float metrics** (probabilities, perplexities, the MIA statistics, truth ratios): equal within
  ``RTOL = 1e-5`` relative (``ATOL = 1e-6`` absolute for values near 0).  Padding changes the shapes,
  and so the summation order, of the float32 matmuls and the attention softmax: the log-probs
  differ in their last bits.  Measured on this data (chat and plain formats): at most 1.4e-6
  relative for values above 0.01, and below 6e-6 absolute everywhere (a mean NLL of 0.002 moves by
  about 1e-8, which is why near-zero values need the absolute bound).  A real dependence on the
  batch (a budget or a mask that changes with the neighbours) moves scores far more than 1e-5.

A registered metric this test does not classify fails it: a new metric is covered when added.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn.data import dataset_from_records, load_dataset  # noqa: E402
from pytest_unlearn.metrics import METRICS  # noqa: E402
from pytest_unlearn.models import load_model  # noqa: E402
from pytest_unlearn.prompts import dataset_parts  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH_SIZES = (1, 3, 8)
DISCRETE = {"es", "em", "rouge_l", "rouge_l_f1"}
FLOAT = {"prob", "ppl", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_pp", "truth_ratio", "truth_ratio_tofu"}
# multiple-choice metrics, scored on the same facts asked as multiple-choice questions
MC_DISCRETE = {"mc_acc", "mc_acc_text"}  # argmax over the choices
MC_FLOAT = {"mc_prob"}
RTOL, ATOL = 1e-5, 1e-6


def _multiple_choice(records: list[dict]) -> list[dict]:
    """The facts as multiple-choice rows: the answer among its perturbed answers, at a varying position."""
    out = []
    for i, r in enumerate(records):
        wrong = list(r["perturbed_answer"])[:3]
        k = i % (len(wrong) + 1)
        out.append({"question": r["question"], "choices": wrong[:k] + [r["answer"]] + wrong[k:], "answer": k})
    return out


def _varied(records: list[dict]) -> list[dict]:
    """The rows as they are, and copies made longer in the question, the answer or both, with one,
    two or three perturbed answers."""
    out = [dict(r) for r in records]
    for i, r in enumerate(records[:9]):
        row = dict(r)
        if i % 3 != 1:
            row["question"] = "Please tell me, as precisely as you can and in one sentence: " + r["question"]
        if i % 3 != 0:
            row["answer"] = r["answer"] + " " + r["paraphrased_answer"]
        row["perturbed_answer"] = list(r["perturbed_answer"])[: i % 3 + 1]
        out.append(row)
    return out


@pytest.fixture(scope="module")
def world(toy_world):
    handle = load_model(toy_world["original"], device="cpu", dtype="float32", name="original")
    rows = [r for n in ("forget", "retain") for r in load_dataset(toy_world[n], name=n).records()]
    return (handle, dataset_from_records(_varied(rows), name="mixed"),
            dataset_from_records(_multiple_choice(_varied(rows)), name="mixed-mc"))


def test_every_metric_is_classified():
    assert set(METRICS.names()) == DISCRETE | FLOAT | MC_DISCRETE | MC_FLOAT, "classify the new metric in this test"


@pytest.mark.parametrize("prompt", [None, "plain"])  # None: the chat template
def test_per_sample_scores_identical_at_batch_sizes_1_3_8(world, prompt):
    handle, data, mc = world
    lengths = {len(e.input_ids) for e in Scorer(prompt=prompt).encode(handle, dataset_parts(data))}
    assert len(lengths) >= 8  # rows of many lengths: every batch size pads differently
    scores: dict[int, dict[str, np.ndarray]] = {}
    texts: dict[int, list[str]] = {}
    for bs in BATCH_SIZES:
        scorer = Scorer(prompt=prompt, batch_size=bs)  # no cache: every batch size computes
        scores[bs] = {name: scorer.per_sample(name, handle, mc if name in MC_DISCRETE | MC_FLOAT else data)
                      for name in METRICS.names()}
        texts[bs] = scorer.generate(handle, dataset_parts(data))
    one = scores[1]
    # the scores are not trivially constant: the equality below says something
    assert 0 < one["es"].mean() < 1 and 0 < one["rouge_l"].mean() < 1 and len(set(one["rouge_l"])) > 2
    for bs in BATCH_SIZES[1:]:
        assert texts[bs] == texts[1], f"generated texts differ at batch size {bs}"
        for name in METRICS.names():
            got, want = scores[bs][name], one[name]
            if name in DISCRETE | MC_DISCRETE:
                assert np.array_equal(got, want), (name, bs, np.flatnonzero(got != want))
            else:
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{name} at batch size {bs}")
