"""What a pytest run reports: the failure message in pytest's output, the terminal summary,
the JSON report (``--unlearn-report``, see docs/report-schema.md) and JUnit XML properties."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import pytest_unlearn
from pytest_unlearn.data import load_dataset

SUITE = """
from pytest_unlearn import assert_forgotten, assert_retained

def test_forgotten():
    assert_forgotten("es", threshold=0.3)

def test_original_leaks(unlearn):
    assert_forgotten("es", threshold=0.3, model=unlearn.settings.original)

def test_retained():
    assert_retained("es", min_ratio=0.9)

def test_calibrated(calibrated_model):
    result = assert_forgotten("es", threshold=0.3, calibrate=0.9)
    assert result.record["model"]["fingerprint"] == calibrated_model.fingerprint
"""


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""



@pytest.fixture
def outcome(pytester, toy_world):
    pytester.makeini(
        "[pytest]\n"
        f"unlearn_original = {toy_world['original']}\n"
        f"unlearn_model = {toy_world['reference']}\n"
        f"unlearn_reference = {toy_world['reference']}\n"
        f"unlearn_forget = {toy_world['forget']}\n"
        f"unlearn_retain = {toy_world['retain']}\n"
        "unlearn_allow_pickle = true\n")
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--unlearn-report", "out/report.json", "--junitxml", "junit.xml")
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    junit = ET.parse(pytester.path / "junit.xml").getroot()
    return result, report, junit


def test_reports(outcome, toy_world):
    """One run, every report (runs are the slow part, so they are checked together)."""
    result, report, junit = outcome
    result.assert_outcomes(passed=3, failed=1)
    check_terminal(result.stdout)
    check_json(report, toy_world)
    check_junit(junit)


def check_terminal(stdout):
    stdout.fnmatch_lines([
        # the failure: message built by the library, no frames from inside it
        "*UnlearningAssertionError: es (extraction strength*higher = more knowledge*",
        "*must be at most 0.3000 to count as forgotten*",
        "*attack*model*original*reference*verdict*",
        "*worst leaking samples*",
        "*generated:*",
        # the summary
        "*= unlearning summary =*",
        "test*check*model*attack*score*original*threshold*verdict",
        "*test_suite.py::test_calibrated*forgotten es*none*<= 0.3000*PASS",
        "*test_suite.py::test_forgotten*forgotten es*none*0.1629*1.0000*<= 0.3000*PASS",
        "*test_suite.py::test_original_leaks*forgotten es*none*1.0000*1.0000*<= 0.3000*FAIL",
        "*test_suite.py::test_retained*retained es*none*>= 0.9000*PASS",
        "calibration of unlearned (es, tau=0.9000): alpha=*retain*forget*evaluation*",
        "unlearning report: *out/report.json",
    ])
    assert "pytest_unlearn/" not in stdout.str()  # the library's frames are hidden


def check_json(report, toy_world):
    assert report["schema"] == "pytest-unlearn-report/1"
    assert report["library"] == {"name": "pytest-unlearn", "version": pytest_unlearn.__version__}
    assert report["seed"] == 0 and report["settings"]["model"] == str(toy_world["reference"])
    assert report["opt_ins"] == ["allow_pickle"]
    assert set(report["models"]) == {"original", "unlearned", "reference"}
    assert all(len(m["fingerprint"]) == 64 for m in report["models"].values())
    assert report["summary"] == {"assertions": 4, "pass": 3, "fail": 1, "error": 0}
    assert report["cost"]["forward_batches"] > 0
    tests = [(a["test"].split("::")[1], a["kind"]) for a in report["assertions"]]
    assert tests == [("test_calibrated", "forgotten"), ("test_forgotten", "forgotten"),
                     ("test_original_leaks", "forgotten"), ("test_retained", "retained")]
    calibrated, forgotten, leaks, retained = report["assertions"]
    ids = load_dataset(toy_world["forget"]).ids
    assert list(forgotten["samples"]) == ids
    sample = forgotten["samples"][ids[0]]
    assert set(sample) == {"scores", "worst", "worst_attack", "original", "reference"}
    assert sample["scores"]["none"] == sample["reference"]["none"] < sample["original"]["none"]
    row = forgotten["attacks"][0]
    assert row["attack"] == "none" and row["verdict"] == "ok" and row["original"] == 1.0
    assert forgotten["verdict"] == "pass" and forgotten["threshold"] == 0.3
    assert forgotten["direction"] == "higher = more knowledge" and forgotten["data"]["n"] == 8
    assert leaks["verdict"] == "fail" and len(leaks["worst_samples"]) == 5 and leaks["message"]
    assert {"prompt", "answer", "generated", "score", "attack"} <= set(leaks["worst_samples"][0])
    assert retained["min_ratio"] == 0.9 and len(retained["samples"]) == 16
    assert calibrated["calibrate"]["tau"] == 0.9
    (calibration,) = report["calibrations"]
    assert calibration["tau"] == 0.9 and 0 <= calibration["alpha"] <= 1
    assert calibration["curve"] and calibration["model"]["fingerprint"] == report["models"]["unlearned"]["fingerprint"]


def check_junit(junit):
    cases = {case.get("name"): case for case in junit.iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_forgotten"].iter("property")}
    assert props["unlearn.forgotten.es.verdict"] == "pass"
    assert props["unlearn.forgotten.es.threshold"] == "0.3000"
    assert json.loads(props["unlearn.forgotten.es.attack.none"])["original"] == 1.0
    failed = {p.get("name"): p.get("value") for p in cases["test_original_leaks"].iter("property")}
    assert failed["unlearn.forgotten.es.verdict"] == "fail"


TWO_MODELS = """
import pytest
from pytest_unlearn import assert_forgotten

def test_two_models(unlearn):
    assert_forgotten("es", threshold=0.3)
    with pytest.raises(AssertionError):
        assert_forgotten("es", threshold=0.3, model=unlearn.settings.original)
    assert_forgotten("ppl", threshold=1.5, model=unlearn.settings.reference)
"""


def test_two_assertions_in_one_test_on_two_models_are_told_apart(pytester, toy_world):
    """The summary names each assertion's model; JUnit property names are unique per assertion
    (no `unlearn.forgotten.es.verdict` holding `pass`, then `fail`)."""
    pytester.makeini("[pytest]\n"
                     f"unlearn_original = {toy_world['original']}\n"
                     f"unlearn_model = {toy_world['reference']}\n"
                     f"unlearn_forget = {toy_world['forget']}\n"
                     f"unlearn_retain = {toy_world['retain']}\n")
    pytester.makepyfile(test_two=TWO_MODELS)
    result = pytester.runpytest("--junitxml", "junit.xml", "--unlearn-no-cache")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "test*check*model*attack*score*original*threshold*verdict",
        "test_two.py::test_two_models  forgotten es   unlearned  none*0.1629*<= 0.3000  PASS",
        "test_two.py::test_two_models  forgotten es   original   none*1.0000*<= 0.3000  FAIL",
        "test_two.py::test_two_models  forgotten ppl  unlearned  none*>= 1.5000  PASS",
    ])
    (case,) = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    names = [p.get("name") for p in case.iter("property")]
    assert len(names) == len(set(names)), names
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert (props["unlearn.forgotten.es.verdict"], props["unlearn.forgotten.es.model"]) == ("pass", "unlearned")
    assert (props["unlearn.forgotten.es#2.verdict"], props["unlearn.forgotten.es#2.model"]) == ("fail", "original")
    assert props["unlearn.forgotten.ppl.verdict"] == "pass" and props["unlearn.forgotten.ppl.model"] == "unlearned"
