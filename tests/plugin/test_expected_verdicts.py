"""The ``pytest_unlearn.expected_verdicts`` plugin the example suites enable: ``--expected-verdicts
FILE`` makes a run succeed exactly when every test has the outcome FILE declares (no model: a
small suite of plain tests whose outcomes are known)."""

from __future__ import annotations

import json

import pytest

GATE = """
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("setup fails")

def test_kept():
    assert True

def test_leaks():
    assert False, "the gate fails"

@pytest.mark.parametrize("candidate", ["a", "b"])
def test_each(candidate):
    assert candidate == "a"

def test_skipped():
    pytest.skip("not here")

def test_errors(broken):
    pass
"""

#: what GATE's tests give
OUTCOMES = {
    "test_gate.py::test_kept": "passed",
    "test_gate.py::test_leaks": "failed",
    "test_gate.py::test_each[a]": "passed",
    "test_gate.py::test_each[b]": "failed",
    "test_gate.py::test_skipped": "skipped",
    "test_gate.py::test_errors": "error",
}


@pytest.fixture
def suite(pytester):
    """A suite that enables the plugin the way the example suites do (``pytest_plugins`` in its
    conftest), with a writer for its expected-verdict file."""
    pytester.makeconftest('pytest_plugins = ["pytest_unlearn.expected_verdicts"]\n')
    pytester.makepyfile(test_gate=GATE)

    def expect(verdicts: dict, name: str = "expected.json") -> str:
        (pytester.path / name).write_text(json.dumps({"_about": "a comment, not a test", **verdicts}))
        return name

    pytester.expect = expect
    return pytester


def table(result) -> list[str]:
    """The lines of the ``expected verdicts`` section."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "expected verdicts" in line and line.startswith("="))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("="))
    return lines[start + 1:end]


def test_every_outcome_as_declared_makes_the_run_succeed(suite):
    result = suite.runpytest("--expected-verdicts", suite.expect(OUTCOMES))
    assert result.ret == 0  # although tests failed and errored
    result.assert_outcomes(passed=2, failed=2, skipped=1, errors=1)
    rows = table(result)
    assert rows[0] == "test_gate.py::test_kept     expected passed  got passed  ok"
    assert rows[1] == "test_gate.py::test_leaks    expected failed  got failed  ok"
    assert rows[-1] == "6 of 6 verdicts as expected"
    assert len(rows) == 7 and all(r.endswith(" ok") for r in rows[:-1])


def test_an_outcome_other_than_declared_fails_the_run(suite):
    declared = {**OUTCOMES, "test_gate.py::test_leaks": "passed"}
    result = suite.runpytest("--expected-verdicts", suite.expect(declared))
    assert result.ret == 1
    rows = table(result)
    assert "test_gate.py::test_leaks    expected passed  got failed  MISMATCH" in rows
    assert rows[-1] == "5 of 6 verdicts as expected; the run does NOT show what the suite's README describes"


def test_a_declared_test_that_did_not_run_is_a_mismatch(suite):
    declared = {**OUTCOMES, "test_gate.py::test_gone": "passed"}
    result = suite.runpytest("--expected-verdicts", suite.expect(declared))
    assert result.ret == 1
    assert "test_gate.py::test_gone     expected passed  got not run MISMATCH" in table(result)
    assert table(result)[-1].startswith("6 of 7 verdicts as expected;")


def test_a_deselected_test_is_not_run(suite):
    result = suite.runpytest("--expected-verdicts", suite.expect(OUTCOMES), "-k", "kept")
    assert result.ret == 1
    rows = table(result)
    assert rows[0].endswith("got passed  ok")
    assert sum("got not run MISMATCH" in r for r in rows) == 5


def test_a_test_without_a_declared_outcome_is_a_mismatch(suite):
    declared = {k: v for k, v in OUTCOMES.items() if k != "test_gate.py::test_skipped"}
    result = suite.runpytest("--expected-verdicts", suite.expect(declared))
    assert result.ret == 1
    rows = table(result)
    assert "test_gate.py::test_skipped  not in the expected verdicts: MISMATCH" in rows
    assert rows[-1].startswith("5 of 5 verdicts as expected;")  # every declared one agrees, still a failure


def test_without_the_option_nothing_changes(suite):
    result = suite.runpytest()
    assert result.ret == 1  # the failing gates fail the run, as in CI
    assert not any("expected verdicts" in line for line in result.outlines)


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"),
    ("{not json", "cannot read it"),
    ('["test_gate.py::test_kept"]', "expected a JSON object (test id -> outcome), got list"),
    ('{"test_gate.py::test_kept": "pased"}', "'test_gate.py::test_kept' expects 'pased'; an outcome is one of"),
])
def test_a_bad_file_is_a_usage_error_before_any_test_runs(suite, content, message):
    if content is not None:
        (suite.path / "expected.json").write_text(content)
    result = suite.runpytest("--expected-verdicts", "expected.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--expected-verdicts expected.json: *{message}*"])
    assert "test_gate.py" not in result.stdout.str()


def test_enabled_with_p_instead_of_the_conftest(pytester):
    pytester.makepyfile(test_gate=GATE)
    (pytester.path / "expected.json").write_text(json.dumps(OUTCOMES))
    plain = pytester.runpytest("--expected-verdicts", "expected.json")
    assert plain.ret == pytest.ExitCode.USAGE_ERROR  # an opt-in plugin: not registered by default
    result = pytester.runpytest("-p", "pytest_unlearn.expected_verdicts", "--expected-verdicts", "expected.json")
    assert result.ret == 0
    assert table(result)[-1] == "6 of 6 verdicts as expected"


def test_under_xdist_the_controller_compares_the_workers_outcomes(suite):
    pytest.importorskip("xdist")
    declared = {**OUTCOMES, "test_gate.py::test_each[b]": "passed"}
    result = suite.runpytest_subprocess("-n", "2", "-p", "no:randomly", "--expected-verdicts", suite.expect(declared))
    assert result.ret == 1
    rows = table(result)
    assert "test_gate.py::test_each[b]  expected passed  got failed  MISMATCH" in rows
    assert rows[-1].startswith("5 of 6 verdicts as expected;")
    assert sum(line.startswith("=") and "expected verdicts" in line for line in result.outlines) == 1
