"""Determinism: the same inputs and seed give bit-identical per-sample scores and verdicts.

Two runs of one suite, each computing everything (``--unlearn-no-cache``), in different
processes (so with different Python hash seeds and a different history of global random
state): one serial in this process, one in fresh ``pytest -n 2`` workers.
Their JSON reports must agree exactly, float for float, for every forward-pass metric
(with a seeded bootstrap bound) and for the attacks that draw random numbers (``icl``
shots, ``noise`` typos, ``relearn`` folds, batches and training), and the seed must be
printed in the report and in the terminal summary.  A library-level test checks that the
seed is really used: another seed draws other shots, typos and bootstrap resamples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from report_compare import normalise, summary

import pytest_unlearn

pytest.importorskip("xdist")

SEED = 7
ATTACKS = ["icl:shots=2", "noise:rate=0.5", "relearn:steps=2,folds=2"]

SUITE = f"""
import math

import pytest

from pytest_unlearn import assert_forgotten

# the most permissive threshold of each metric: every assertion passes and records its scores
FORWARD = [("es", 1.0), ("em", 1.0), ("prob", 1.0), ("ppl", 1.0), ("mia_loss", 0.0), ("mia_zlib", 0.0),
           ("mia_min_k", 0.0), ("mia_min_k_pp", math.inf), ("truth_ratio", 0.0)]


@pytest.mark.parametrize("metric, threshold", FORWARD)
def test_forward_metric(metric, threshold):
    assert_forgotten(metric, threshold, confidence=0.9)


def test_seeded_attacks():
    assert_forgotten("prob", 1.0, under_attack={ATTACKS!r}, confidence=0.9)


def test_a_failing_verdict(unlearn):
    assert_forgotten("es", 0.3, model=unlearn.settings.original, under_attack=["noise:rate=0.5"])
"""


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""



@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread here and in the workers: the same float sums in every process."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_same_seed_gives_bit_identical_scores_and_verdicts(pytester, toy_world, one_thread):
    pytester.makeini("[pytest]\n"
                     f"unlearn_original = {toy_world['original']}\n"
                     f"unlearn_model = {toy_world['reference']}\n"
                     f"unlearn_forget = {toy_world['forget']}\n"
                     f"unlearn_retain = {toy_world['retain']}\n"
                     f"unlearn_seed = {SEED}\n")
    pytester.makepyfile(test_suite=SUITE)
    args = ("--unlearn-no-cache", "-p", "no:cacheprovider")
    first = pytester.runpytest("-p", "no:xdist", *args, "--unlearn-report", "first.json")
    second = pytester.runpytest_subprocess("-n", "2", *args, "--unlearn-report", "second.json")
    for result in (first, second):
        result.assert_outcomes(passed=10, failed=1)
    a = json.loads((pytester.path / "first.json").read_text())
    b = json.loads((pytester.path / "second.json").read_text())

    # the seed is in the report header and in the terminal summary's header
    assert a["seed"] == b["seed"] == SEED and a["settings"]["no_cache"] is True
    for result in (first, second):
        assert summary(result)[1].startswith(f"seed {SEED} (unlearn_seed / --unlearn-seed)")
    assert summary(first) == summary(second)
    assert a["cost"]["cache_hits"] == b["cost"]["cache_hits"] == 0  # really computed, twice

    # everything recorded is identical, float for float (JSON keeps every bit of a float64)
    assert normalise(a) == normalise(b)
    assert b["workers"] and a["workers"] is None
    by_test = {r["test"].split("::")[1]: r for r in a["assertions"]}
    assert len(by_test) == 11 and {r["verdict"] for r in a["assertions"]} == {"pass", "fail"}
    assert by_test["test_a_failing_verdict"]["verdict"] == "fail"
    assert all(r["bound"] is not None for name, r in by_test.items() if name.startswith("test_forward"))
    attacked = by_test["test_seeded_attacks"]
    assert [row["attack"] for row in attacked["attacks"]] == ["none", *ATTACKS]
    for sample in attacked["samples"].values():  # every sample scored under every attack, on both models
        for scores in (sample["scores"], sample["original"]):
            assert set(scores) == {"none", *ATTACKS} and all(isinstance(v, float) for v in scores.values())
    notes = " ".join(attacked["notes"])
    assert f"drawn with seed {SEED}" in notes and f"seed {SEED}" in notes.split("noise:")[1]


def test_the_seed_is_used(toy_world):
    """Another seed draws other shots and typos (so the check above is not vacuous); the same
    seed in another suite gives the same scores."""
    from pytest_unlearn import Suite
    from pytest_unlearn.assertions import bootstrap_bound
    from pytest_unlearn.attacks import parse_attack
    from pytest_unlearn.metrics import get_metric

    m = get_metric("prob")
    outcomes = {}
    for seed in (0, 0, 1):
        suite = Suite.from_paths(original=toy_world["original"], model=toy_world["reference"],
                                 forget=toy_world["forget"], retain=toy_world["retain"], seed=seed, cache_dir=None)
        try:
            outcomes.setdefault(seed, []).append(
                {spec: suite.run_attack(parse_attack(spec), m, suite.unlearned, suite.forget)
                 for spec in ("icl:shots=2", "noise:rate=0.5")})
        finally:
            suite.close()
    (once, again), (other,) = outcomes[0], outcomes[1]
    for spec in ("icl:shots=2", "noise:rate=0.5"):
        assert once[spec].values.tobytes() == again[spec].values.tobytes()
        assert once[spec].prompts == again[spec].prompts and once[spec].details == again[spec].details
        assert once[spec].values.tobytes() != other[spec].values.tobytes()
    assert once["icl:shots=2"].details != other["icl:shots=2"].details  # the shots drawn (sample ids)
    assert once["noise:rate=0.5"].prompts != other["noise:rate=0.5"].prompts  # the typos made
    values = once["noise:rate=0.5"].values
    assert bootstrap_bound(values, m, "mean", 0.9, 0) == bootstrap_bound(values, m, "mean", 0.9, 0)
    assert bootstrap_bound(values, m, "mean", 0.9, 0) != bootstrap_bound(values, m, "mean", 0.9, 1)
    assert np.all(np.isfinite(values))
