"""MUSE's criteria on files in MUSE's formats, against a reimplementation of MUSE's
evaluation loop (``metrics/verbmem.py``, ``knowmem.py``, ``privleak.py``) written here:
one prompt at a time, ``tokenizer(prompt)``, ``model.generate`` greedy, ROUGE-L F1 without
stemmer; Min-40% of the whole text and MUSE's AUC (holdout as the positive class) for PrivLeak."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pytest_unlearn.errors import ConfigError, DataError
from pytest_unlearn.suite import Suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def muse_files(toy_world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("muse")
    forget = [json.loads(line) for line in open(toy_world["forget"]) if line.strip()]
    retain = [json.loads(line) for line in open(toy_world["retain"]) if line.strip()]
    holdout = [json.loads(line) for line in open(toy_world["holdout"]) if line.strip()]
    files = {
        "verbmem": [{"prompt": r["question"], "gt": " " + r["answer"]} for r in forget[:4]],
        "forget_qa": [{"question": r["question"], "answer": r["answer"]} for r in forget[:4]],
        "forget_qa_icl": [{"question": r["question"], "answer": r["answer"]} for r in forget[4:6]],
        "privleak_forget": [r["question"] + " " + r["answer"] for r in forget],
        "privleak_holdout": [r["question"] + " " + r["answer"] for r in holdout],
        "retain_qa": [{"question": r["question"], "answer": r["answer"]} for r in retain[:4]],
    }
    paths = {}
    for name, value in files.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(value, indent=4))
    return paths, files


@pytest.fixture(scope="module")
def suite(toy_world):
    s = Suite.from_paths(original=toy_world["original"], model=toy_world["original"],
                         reference=toy_world["reference"], forget=toy_world["forget"],
                         retain=toy_world["retain"], holdout=toy_world["holdout"], cache_dir=None)
    yield s
    s.close()


def _muse_generate(handle, prompt: str, n: int) -> str:
    import torch

    ids = handle.tokenizer(prompt, return_tensors="pt", add_special_tokens=True).input_ids
    with torch.no_grad():
        out = handle.model.generate(ids.to(handle.model.device), max_new_tokens=n, do_sample=False,
                                    pad_token_id=handle.tokenizer.pad_token_id or handle.tokenizer.eos_token_id)
    return handle.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True,
                                         clean_up_tokenization_spaces=True)[0]


def _f1(reference: str, generated: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, generated)["rougeL"].fmeasure


def test_verbmem_matches_muse_loop(suite, muse_files):
    from pytest_unlearn import muse_verbmem
    from pytest_unlearn.muse import VERBMEM_NEW_TOKENS

    paths, files = muse_files
    assert VERBMEM_NEW_TOKENS == 128
    n = 12  # a short budget keeps the toy model inside its context
    result = muse_verbmem(data=str(paths["verbmem"]), max_new_tokens=n, suite=suite)
    handle, tok = suite.unlearned, suite.unlearned.tokenizer
    expected = []
    for row in files["verbmem"]:
        out = _muse_generate(handle, row["prompt"], n)
        gt = tok.batch_decode([tok(row["gt"], add_special_tokens=True).input_ids[:n]], skip_special_tokens=True,
                              clean_up_tokenization_spaces=True)[0]
        expected.append(_f1(gt, out))
    np.testing.assert_allclose(result.scores["rouge_l_f1"], expected, atol=1e-12)
    assert result.value == pytest.approx(np.mean(expected))
    assert result.value > 0.5  # the original model still recites its forget set


def test_knowmem_matches_muse_loop_with_icl(suite, muse_files):
    from pytest_unlearn import muse_knowmem

    paths, files = muse_files
    result = muse_knowmem(data=str(paths["forget_qa"]), icl=str(paths["forget_qa_icl"]), suite=suite)
    head = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in files["forget_qa_icl"])
    expected = []
    for row in files["forget_qa"]:
        out = _muse_generate(suite.unlearned, head + f"Question: {row['question']}\nAnswer: ", 32)
        for word in ["\n\n", "\nQuestion", "Question:"]:
            out = out.split(word)[0]
        expected.append(_f1(row["answer"], out))
    np.testing.assert_allclose(result.scores["rouge_l_f1"], expected, atol=1e-12)
    # utility preserved: KnowMem on retain
    kept = muse_knowmem(data=str(paths["retain_qa"]), suite=suite)
    assert 0.0 <= kept.value <= 1.0 and len(kept.scores) == 4


def _min40_whole_text(handle, text: str) -> float:
    import torch

    ids = torch.tensor(handle.tokenizer.encode(text)).unsqueeze(0)
    with torch.no_grad():
        logits = handle.model(ids.to(handle.model.device)).logits
    logp = torch.log_softmax(logits.float(), -1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1).numpy()
    k = max(1, int(len(logp) * 0.4))
    return float(np.sort(logp)[:k].mean())


def _muse_auc(forget_scores, holdout_scores) -> float:
    """MUSE: roc_curve(y, -ppl) with holdout = 1, ppl = -Min-40%: P(holdout scores higher)."""
    f, h = np.asarray(forget_scores), np.asarray(holdout_scores)
    return float(((h[:, None] > f[None, :]).sum() + 0.5 * (h[:, None] == f[None, :]).sum()) / (len(f) * len(h)))


def test_privleak_matches_muse_formula_on_whole_texts(suite, muse_files):
    from pytest_unlearn import muse_privleak

    paths, files = muse_files
    result = muse_privleak(forget=str(paths["privleak_forget"]), holdout=str(paths["privleak_holdout"]),
                           suite=suite)
    aucs = {}
    for role, handle in (("model", suite.unlearned), ("reference", suite.reference)):
        f = [_min40_whole_text(handle, t) for t in files["privleak_forget"]]
        h = [_min40_whole_text(handle, t) for t in files["privleak_holdout"]]
        aucs[role] = _muse_auc(f, h)
        if role == "model":
            np.testing.assert_allclose(result.forget_scores, f, rtol=1e-4)
    expected = (aucs["model"] - aucs["reference"]) / aucs["reference"] * 100
    assert result.privleak == pytest.approx(expected, rel=1e-6)
    assert result.auc == pytest.approx(1 - aucs["model"])  # mia_auc's orientation: 1 - MUSE's AUC


def test_privleak_needs_a_reference(toy_world, muse_files):
    from pytest_unlearn import muse_privleak

    paths, _ = muse_files
    s = Suite.from_paths(original=toy_world["original"], model=toy_world["original"], cache_dir=None)
    try:
        with pytest.raises(ConfigError, match="unlearn_reference"):
            muse_privleak(forget=str(paths["privleak_forget"]), holdout=str(paths["privleak_holdout"]), suite=s)
    finally:
        s.close()


def test_knowmem_on_a_text_file_names_column_and_file(suite, muse_files):
    from pytest_unlearn import muse_knowmem

    paths, _ = muse_files
    with pytest.raises(DataError) as err:
        muse_knowmem(data=str(paths["verbmem"]), suite=suite)
    assert "'question'" in str(err.value) and "verbmem.json" in str(err.value) and "knowmem" in str(err.value)


def test_icl_attack_takes_shots_from_a_muse_icl_file(suite, muse_files):
    from pytest_unlearn.attacks.base import parse_attack
    from pytest_unlearn.metrics import get_metric

    paths, files = muse_files
    attack = parse_attack(f"icl:shots=2,source={paths['forget_qa_icl']}")
    forget = suite.data(str(paths["forget_qa"]))
    outcome = suite.run_attack(attack, get_metric("es"), suite.unlearned, forget)
    # the file holds exactly two examples: every sample gets both, and nothing else
    for parts in outcome.parts:
        assert sorted(q for q, _ in parts.shots) == sorted(r["question"] for r in files["forget_qa_icl"])
    with pytest.raises(Exception, match="retain, forget or a"):
        parse_attack("icl:source=somewhere")
