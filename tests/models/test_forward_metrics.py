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


def _min_k_reference(values, ratio=0.4):
    """Min-K% as the Min-K%++ (``run.py``), MUSE (``metrics/privleak.py``) and OpenUnlearning
    (``mia/min_k.py``) code counts it: the ``int(len * ratio)`` lowest, at least one
    (OpenUnlearning's ``max(1, ...)``; the other two leave an empty mean for short texts)."""
    k_length = max(1, int(len(values) * ratio))
    lowest = sorted(values)[:k_length]
    return sum(lowest) / len(lowest)


def _min_k_pp_reference(logprob, mu, variance, ratio=0.4):
    """Min-K%++: ``(log p - mu) / sqrt(var)`` with the variance clamped at 1e-6 (OpenUnlearning's
    ``mia/min_k_plus_plus.py``; the Min-K%++ code divides by ``sqrt(var)`` unclamped)."""
    z = [(a - b) / math.sqrt(max(v, 1e-6)) for a, b, v in zip(logprob, mu, variance)]
    return _min_k_reference(z, ratio)


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
        assert M.min_k_mean(lp) == pytest.approx(_min_k_reference(list(lp)))
        assert M.min_k_plus_plus(lp, mu, sigma) == pytest.approx(_min_k_pp_reference(lp, mu, sigma ** 2))
        text = "some answer text " * int(rng.integers(1, 5))
        assert M.zlib_ratio(lp, text) == pytest.approx((-sum(lp) / n) / len(zlib.compress(text.encode())))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 7, 8, 9, 11, 13, 14, 17, 19, 23, 29])
def test_min_k_counts_int_k_n_tokens_like_the_reference_code(n):
    """Lengths where ``ceil(0.4 n) != int(0.4 n)``: Min-K% averages the ``int`` count
    (``n = 3``: the single lowest log-prob, not the lowest two)."""
    assert max(1, int(0.4 * n)) != math.ceil(0.4 * n) or n < 3
    lp = list(-np.random.default_rng(n).exponential(2.0, n))
    assert M.min_k_mean(lp) == pytest.approx(_min_k_reference(lp))
    for ratio in (0.05, 0.1, 0.2, 0.6, 1.0):
        assert M.min_k_mean(lp, ratio) == pytest.approx(_min_k_reference(lp, ratio))
    assert M.min_k_mean([-5.0, -1.0, -0.5]) == -5.0  # int(1.2) = 1 token


def test_min_k_plus_plus_floors_the_variance_like_openunlearning():
    """A near-deterministic next-token distribution (variance 1e-10) is standardised by
    ``sqrt(1e-6)``, not by its own tiny deviation (which made z = 10 from a 1e-4 gap)."""
    lp, mu, sigma = [-0.0002], [-0.0001], [1e-5]
    assert M.min_k_plus_plus(lp, mu, sigma) == pytest.approx(-0.1)
    assert M.min_k_plus_plus(lp, mu, sigma) == pytest.approx(_min_k_pp_reference(lp, mu, [1e-10]))
    assert M.min_k_plus_plus([-2.0], [-1.0], [0.0]) == pytest.approx(-1000.0)  # finite, never inf


def test_min_k_metrics_on_a_model_match_the_min_k_plus_plus_recipe(setup):
    """End to end: the registered ``mia_min_k`` / ``mia_min_k_pp`` on the shared pass equal
    the Min-K%++ recipe computed from the full next-token distribution of one unpadded pass."""
    tok, model, enc, parts = setup
    stats = teacher_forced_stats(model, enc, pad_token_id=tok.pad_token_id, batch_size=5)
    for i, e in enumerate(enc):
        logp, target = _reference_logprobs(model, e)
        lp = logp[torch.arange(len(target)), target]
        p = logp.exp()
        mu = (p * logp).sum(-1)
        var = (p * logp ** 2).sum(-1) - mu ** 2
        s = stats.sample(i)
        assert M.get_metric("mia_min_k").fn(s, parts[i].answer) == pytest.approx(
            _min_k_reference(lp.tolist()), rel=1e-4, abs=1e-4)
        assert M.get_metric("mia_min_k_pp").fn(s, parts[i].answer) == pytest.approx(
            _min_k_pp_reference(lp.tolist(), mu.tolist(), var.tolist()), rel=1e-3, abs=1e-3)


def test_truth_ratio_definition():
    para = np.log([0.5, 0.5])          # P = 0.5
    pert = [np.log([0.1, 0.1]), np.log([0.4, 0.4])]  # P = 0.1, 0.4
    expected = math.sqrt(0.1 * 0.4) / 0.5  # geometric mean of perturbed / paraphrased
    assert M.truth_ratio(para, pert) == pytest.approx(expected)
    assert M.truth_ratio_forget_summary([0.5, 2.0]) == pytest.approx(0.5)


def test_truth_ratio_tofu_is_tofu_s_bounded_forget_summary():
    """``truth_ratio_tofu`` is TOFU's per-sample ``min(R, 1/R)``; its mean is TOFU's forget truth
    ratio, which one extreme sample cannot dominate (``[0.1]*9 + [20]``: mean R 2.09)."""
    ratios = [0.1] * 9 + [20.0]
    assert float(np.mean(ratios)) == pytest.approx(2.09)
    tofu = sum(min(r, 1 / r) for r in ratios) / len(ratios)  # TOFU: np.mean(np.minimum(R, 1/R))
    assert tofu == pytest.approx(0.095)
    assert M.truth_ratio_forget_summary(ratios) == pytest.approx(tofu)
    m = M.get_metric("truth_ratio_tofu")
    assert (m.higher_is_more_knowledge, m.lower_bound, m.upper_bound, m.source) == (False, 0.0, 1.0, "truth_ratio")
    para = np.log([0.5, 0.5])
    for pert, r in (([np.log([0.05, 0.05])], 0.1), ([np.log([0.9, 0.9])], 1.8)):
        assert M.get_metric("truth_ratio").fn(para, pert) == pytest.approx(r)
        assert m.fn(para, pert) == pytest.approx(min(r, 1 / r))
    assert M.reduce_scores([min(r, 1 / r) for r in ratios], "mean", m) == pytest.approx(tofu)


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


def _muse_auc(forget_min_k, holdout_min_k):
    """MUSE's AUC (``metrics/privleak.py``): ``roc_curve(y, -ppl)`` with ``forget`` as label 0,
    ``holdout`` as label 1 and ``ppl`` the Min-40% score ``-mean(lowest log-probs)``; the area
    under the ROC curve by the trapezoid rule, built here from the sorted scores."""
    ppl = {"forget": [-s for s in forget_min_k], "holdout": [-s for s in holdout_min_k]}  # Min-40%
    scores = [(-v, 0) for v in ppl["forget"]] + [(-v, 1) for v in ppl["holdout"]]  # roc_curve(y, -ppl)
    pos, neg = len(holdout_min_k), len(forget_min_k)
    points, tp, fp = [(0.0, 0.0)], 0, 0
    for value in sorted({s for s, _ in scores}, reverse=True):  # thresholds, high to low
        tp += sum(1 for s, y in scores if s == value and y == 1)
        fp += sum(1 for s, y in scores if s == value and y == 0)
        points.append((fp / neg, tp / pos))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))


def _muse_privleak(auc_unlearned, auc_retrain):
    """``eval.py``: ``(auc - AUC_RETRAIN) / AUC_RETRAIN * 100`` on MUSE's AUCs."""
    return (auc_unlearned - auc_retrain) / auc_retrain * 100


def test_privleak_follows_muse_sign_and_scale():
    """MUSE's target model reads about -99.5 and the retrained model 0.  With the
    conventional AUCs (forget = members) 0.99724 and 0.448 the old formula gave +123."""
    assert M.privleak(0.99724, 0.448) == pytest.approx(-99.5, abs=0.05)
    assert M.privleak(0.448, 0.448) == 0.0
    assert M.privleak(0.2, 0.448) > 0  # over-unlearned: the forget set looks less familiar than fresh data
    assert M.privleak(0.75, 0.5) == pytest.approx(-50.0)
    with pytest.raises(ValueError, match="reference AUC of 1"):
        M.privleak(0.9, 1.0)


def test_privleak_equals_muse_pipeline_on_min_k_scores():
    """End to end against MUSE's own orientation: the unlearned model still separates the
    forget set (higher Min-40% log-probs), the retrained model does not."""
    rng = np.random.default_rng(7)
    holdout_u, holdout_r = rng.normal(-3, 1, 50), rng.normal(-3, 1, 50)
    forget_u = rng.normal(-1.5, 1, 40)  # still familiar
    forget_r = rng.normal(-3.1, 1, 40)  # like fresh data
    forget_u[:4] = holdout_u[:4]  # ties count half in both
    ours = M.privleak(M.mia_auc(forget_u, holdout_u, "mia_min_k"), M.mia_auc(forget_r, holdout_r, "mia_min_k"))
    muse = _muse_privleak(_muse_auc(forget_u, holdout_u), _muse_auc(forget_r, holdout_r))
    assert ours == pytest.approx(muse, rel=1e-9)
    assert muse < -50
    # and the AUC itself is MUSE's complement
    assert M.mia_auc(forget_u, holdout_u, "mia_min_k") == pytest.approx(1 - _muse_auc(forget_u, holdout_u))


def test_registry():
    from pytest_unlearn.errors import UnknownNameError
    with pytest.raises(UnknownNameError, match="did you mean 'es'"):
        M.get_metric("ess")
    assert M.get_metric("ppl").higher_is_more_knowledge is False
    assert set(M.METRICS.names()) >= {"es", "em", "prob", "ppl", "rouge_l", "truth_ratio", "mia_loss",
                                      "mia_zlib", "mia_min_k", "mia_min_k_pp", "truth_ratio_tofu"}
