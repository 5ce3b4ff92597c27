"""Under pytest-xdist each worker is its own session: the workers send their records to the
controller, which alone prints the summary and writes the report.  ``pytest -n 2`` must give
the same verdicts, numbers and report as a serial run (timings and costs aside)."""

from __future__ import annotations

import json

import pytest
from report_compare import normalise, summary

pytest.importorskip("xdist")

SUITE = """
from pytest_unlearn import assert_forgotten, assert_retained

def test_forgotten():
    assert_forgotten("es", threshold=0.8, under_attack=["paraphrase", "icl"], reduce="q90", confidence=0.9)

def test_original_leaks(unlearn):
    assert_forgotten("es", threshold=0.3, model=unlearn.settings.original)

def test_retained():
    assert_retained("es", min_ratio=0.9)

def test_prob_forgotten():
    assert_forgotten("prob", threshold=0.5)
"""


def test_xdist_gives_the_same_verdicts_numbers_and_report(pytester, toy_world):
    pytester.makeini("[pytest]\n"
                     f"unlearn_original = {toy_world['original']}\n"
                     f"unlearn_model = {toy_world['reference']}\n"
                     f"unlearn_reference = {toy_world['reference']}\n"
                     f"unlearn_forget = {toy_world['forget']}\n"
                     f"unlearn_retain = {toy_world['retain']}\n")
    pytester.makepyfile(test_suite=SUITE)
    # both in subprocesses (same threads, same numerics) and without the cache (both compute)
    parallel = pytester.runpytest_subprocess("-n", "2", "--unlearn-no-cache", "--unlearn-report", "parallel.json")
    serial = pytester.runpytest_subprocess("-p", "no:xdist", "--unlearn-no-cache", "--unlearn-report", "serial.json")
    for result in (parallel, serial):
        result.assert_outcomes(passed=3, failed=1)
    assert summary(parallel) == summary(serial)
    par = json.loads((pytester.path / "parallel.json").read_text())
    ser = json.loads((pytester.path / "serial.json").read_text())
    assert sorted(par["workers"]) == ["gw0", "gw1"] and ser["workers"] is None
    assert len({a["test"] for a in par["assertions"]}) == 4
    assert normalise(par) == normalise(ser)
    assert par["cost"]["forward_batches"] > 0  # summed over the workers
