"""The result cache under pytest's cache dir: a second identical run does no forward pass,
``--unlearn-no-cache`` neither reads nor writes it, and a changed model is scored again."""

from __future__ import annotations

import json
import shutil

import pytest

from pytest_unlearn import scoring

SUITE = """
from pytest_unlearn import assert_forgotten, assert_retained

def test_forgotten():
    assert_forgotten("es", threshold=0.3)

def test_original_leaks(unlearn):
    assert_forgotten("es", threshold=0.3, model=unlearn.settings.original)

def test_retained():
    assert_retained("prob", min_ratio=0.5)
"""


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""



@pytest.fixture
def forward_calls(monkeypatch):
    """Counts the batched forward passes the Scorer really runs."""
    calls = []
    real = scoring.teacher_forced_stats

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "teacher_forced_stats", counting)
    return calls


def setup_suite(pytester, toy_world, model) -> None:
    pytester.makeini("[pytest]\n"
                     f"unlearn_original = {toy_world['original']}\n"
                     f"unlearn_model = {model}\n"
                     f"unlearn_forget = {toy_world['forget']}\n"
                     f"unlearn_retain = {toy_world['retain']}\n")
    pytester.makepyfile(test_suite=SUITE)


def run(pytester, *args) -> dict:
    result = pytester.runpytest("--unlearn-report", "report.json", *args)
    result.assert_outcomes(passed=2, failed=1)
    return json.loads((pytester.path / "report.json").read_text())


def figures(report: dict) -> list:
    return [(a["test"], a["verdict"], a["score"], a["samples"], a["worst_samples"]) for a in report["assertions"]]


def entries(pytester) -> dict:
    return {p: p.stat().st_mtime_ns for p in (pytester.path / ".pytest_cache" / "d" / "unlearn").rglob("*.npz")}


def test_a_second_run_does_no_forward_pass_and_no_cache_neither_reads_nor_writes(
        pytester, toy_world, forward_calls):
    setup_suite(pytester, toy_world, toy_world["reference"])
    first = run(pytester)
    assert first["cost"]["forward_batches"] > 0 and first["cost"]["generation_batches"] > 0
    cached = entries(pytester)
    assert forward_calls and cached
    forward_calls.clear()
    second = run(pytester)  # identical: everything from the cache
    assert forward_calls == []
    assert second["cost"]["forward_batches"] == 0 and second["cost"]["generation_batches"] == 0
    assert second["cost"]["cache_hits"] > 0
    assert figures(second) == figures(first)
    third = run(pytester, "--unlearn-no-cache")  # computes everything again, writes nothing
    assert forward_calls and third["settings"]["no_cache"] is True
    assert third["cost"]["cache_hits"] == 0 and third["cost"]["forward_batches"] > 0
    assert entries(pytester) == cached
    assert figures(third) == figures(first)


def test_a_changed_model_is_scored_again(pytester, toy_world):
    candidate = pytester.path / "candidate"
    shutil.copytree(toy_world["reference"], candidate)
    setup_suite(pytester, toy_world, candidate)
    pytester.makepyfile(test_suite="from pytest_unlearn import assert_forgotten\n\n"
                                   "def test_forgotten():\n    assert_forgotten('es', threshold=0.3)\n")
    pytester.runpytest().assert_outcomes(passed=1)
    shutil.rmtree(candidate)  # a new release candidate at the same path: the original itself
    shutil.copytree(toy_world["original"], candidate)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the unlearned model scores 1.0000*"])
