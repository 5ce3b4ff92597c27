"""Forward-pass metrics against straightforward, independent reference implementations.

References score one sample at a time, unpadded, with Hugging Face's own loss or a
full-vocabulary log-softmax, and compute each definition with plain loops.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from pytest_unlearn import metrics as M
from pytest_unlearn.forward import teacher_forced_stats
from pytest_unlearn.prompts import PromptParts, encode, parse_prompt_format
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer, toy_facts


@pytest.fixture(scope="module")
def setup():
    facts = toy_facts(12, seed=3)
    tok = tiny_tokenizer([f["question"] + " " + f["answer"] for f in facts], vocab_size=400)
    model = tiny_llama(tok, seed=1)
    fmt = parse_prompt_format(None, tok)
    parts = [PromptParts(f["question"], f["answer"]) for f in facts]
    enc = encode(tok, fmt, parts, max_length=256)
    return tok, model, enc, parts


def _reference_logprobs(model, e):
    """Full-vocabulary log-softmax of one unpadded sample, answer positions only."""
    ids = torch.tensor([e.input_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    rows = []
    for t in range(e.answer_start, len(e.input_ids)):
        rows.append(logp[t - 1])
    return torch.stack(rows), torch.tensor(e.input_ids[e.answer_start:])


def test_token_stats_match_unpadded_reference(setup):
    tok, model, enc, _ = setup
    stats = teacher_forced_stats(model, enc, pad_token_id=tok.pad_token_id, batch_size=5)
    for i, e in enumerate(enc):
        logp, target = _reference_logprobs(model, e)
        lp = logp[torch.arange(len(target)), target].numpy()
        np.testing.assert_allclose(stats.logprob[i], lp, rtol=1e-4, atol=1e-4)
        assert (stats.correct[i] == (logp.argmax(-1) == target).numpy()).all()
        p = logp.exp()
        mu = (p * logp).sum(-1).numpy()
        sigma = torch.sqrt((p * logp ** 2).sum(-1) - (p * logp).sum(-1) ** 2).numpy()
        np.testing.assert_allclose(stats.mu[i], mu, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(stats.sigma[i], sigma, rtol=1e-3, atol=1e-4)


def test_hf_loss_equals_mean_nll(setup):
    """prob / ppl / mia_loss agree with transformers' own label-masked loss."""
    tok, model, enc, _ = setup
    stats = teacher_forced_stats(model, enc, pad_token_id=tok.pad_token_id, batch_size=4)
    for i, e in enumerate(enc):
        ids = torch.tensor([e.input_ids])
        labels = ids.clone()
        labels[0, : e.answer_start] = -100
        with torch.no_grad():
            loss = model(ids, labels=labels).loss.item()
        assert M.mean_nll(stats.logprob[i]) == pytest.approx(loss, rel=1e-4)
        assert M.answer_probability(stats.logprob[i]) == pytest.approx(math.exp(-loss), rel=1e-4)
        assert M.perplexity(stats.logprob[i]) == pytest.approx(math.exp(loss), rel=1e-4)


def test_batch_size_does_not_change_scores(setup):
    tok, model, enc, _ = setup
    a = teacher_forced_stats(model, enc, pad_token_id=tok.pad_token_id, batch_size=1)
    b = teacher_forced_stats(model, enc, pad_token_id=tok.pad_token_id, batch_size=12)
    for x, y in zip(a.logprob, b.logprob):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert all((x == y).all() for x, y in zip(a.correct, b.correct))


def test_end_of_turn_inside_prompt_is_attended(setup):
    """The pad token is the end-of-turn token, which the chat template puts inside
    every prompt; a mask built as ids != pad would hide it. Scores must equal the
    unpadded reference, and the prompt must really contain that token."""
    tok, model, enc, _ = setup
    assert all(tok.pad_token_id in e.input_ids[: e.answer_start] for e in enc)
    stats = teacher_forced_stats(model, enc, pad_token_id=tok.pad_token_id, batch_size=6)
    ref = [_reference_logprobs(model, e) for e in enc]
    for i, (logp, target) in enumerate(ref):
        np.testing.assert_allclose(stats.logprob[i], logp[torch.arange(len(target)), target].numpy(),
                                   rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ pure functions vs loops

def _es_reference(correct):
    n = len(correct)
    for k in range(n + 1):  # smallest k whose suffix is all reproduced
        if all(correct[k:]):
            return 1 - k / n
    raise AssertionError


@pytest.mark.parametrize("correct,expected", [
    ([True, True, True, True], 1.0),
    ([False, True, True, True], 0.75),
    ([True, False, True, True], 0.5),
    ([True, True, True, False], 0.0),
    ([False, False, False, False], 0.0),
])
def test_extraction_strength_cases(correct, expected):
    assert M.extraction_strength(correct) == pytest.approx(expected)
    assert _es_reference(correct) == pytest.approx(expected)


def test_extraction_strength_no_match_is_zero_not_one_over_n():
    assert M.extraction_strength([False] * 7) == 0.0


def test_pure_functions_against_loops():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        correct = rng.random(n) < 0.6
        lp = -rng.exponential(2.0, n)
        mu = -rng.exponential(1.0, n)
        sigma = rng.random(n) + 0.1
        assert M.extraction_strength(correct) == pytest.approx(_es_reference(list(correct)))
        assert M.exact_memorization(correct) == pytest.approx(sum(correct) / n)
        k = max(1, math.ceil(0.4 * n))
        assert M.min_k_mean(lp) == pytest.approx(sum(sorted(lp)[:k]) / k)
        z = [(a - b) / c for a, b, c in zip(lp, mu, sigma)]
        assert M.min_k_plus_plus(lp, mu, sigma) == pytest.approx(sum(sorted(z)[:k]) / k)
        text = "some answer text " * int(rng.integers(1, 5))
        assert M.zlib_ratio(lp, text) == pytest.approx((-sum(lp) / n) / len(zlib.compress(text.encode())))


def test_truth_ratio_definition():
    para = np.log([0.5, 0.5])          # P = 0.5
    pert = [np.log([0.1, 0.1]), np.log([0.4, 0.4])]  # P = 0.1, 0.4
    expected = math.sqrt(0.1 * 0.4) / 0.5  # geometric mean of perturbed / paraphrased
    assert M.truth_ratio(para, pert) == pytest.approx(expected)
    assert M.truth_ratio_forget_summary([0.5, 2.0]) == pytest.approx(0.5)


def _lcs(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


@pytest.mark.parametrize("gen,ref", [
    ("the cat sat on the mat", "the cat sat on a mat"),
    ("completely different", "nothing in common here"),
    ("zorbin quill was born in vellmar", "zorbin quill was born in vellmar"),
])
def test_rouge_l_recall_is_lcs_over_reference_length(gen, ref):
    assert M.rouge_l_recall(gen, ref) == pytest.approx(_lcs(gen.split(), ref.split()) / len(ref.split()))


def test_mia_auc_against_pairwise_definition():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 40), rng.normal(0, 1, 30)
    a[:3] = b[:3]  # ties
    ref = np.mean([1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b])
    assert M.mia_auc(a, b, "mia_min_k") == pytest.approx(ref)      # higher = member
    assert M.mia_auc(-a, -b, "mia_loss") == pytest.approx(ref)     # lower = member
    assert M.privleak(0.75, 0.5) == pytest.approx(50.0)


def test_reduce_and_registry():
    assert M.reduce_scores([1, 2, 3, 4], "mean") == 2.5
    assert M.reduce_scores([1, 2, 3, 4], "max") == 4
    assert M.reduce_scores(list(range(101)), "q90") == pytest.approx(90)
    from pytest_unlearn.errors import ConfigError, UnknownNameError
    with pytest.raises(ConfigError):
        M.reduce_scores([1.0], "average")
    with pytest.raises(UnknownNameError, match="did you mean 'es'"):
        M.get_metric("ess")
    assert M.get_metric("ppl").higher_is_more_knowledge is False
    assert set(M.METRICS.names()) >= {"es", "em", "prob", "ppl", "rouge_l", "truth_ratio", "mia_loss",
                                      "mia_zlib", "mia_min_k", "mia_min_k_pp"}
