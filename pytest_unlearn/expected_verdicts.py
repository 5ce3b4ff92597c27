"""``--expected-verdicts FILE``: a run that succeeds when every test has the outcome FILE declares.

A suite that demonstrates unlearning gates has gates that must fail (a candidate that only hides
what it knows).  FILE is a JSON object, test id -> ``"passed"`` / ``"failed"`` (or ``"skipped"``,
``"error"``); keys starting with ``_`` are comments.  At the end of the run each test's outcome is
compared with the declared one, the comparison is printed after the unlearning summary, and the
exit status is 0 exactly when every declared test ran with its declared outcome and no other test
ran.  Without the option nothing changes: failing gates fail the run, as in CI.

Not registered by default: a suite enables it in its top-level ``conftest.py`` with
``pytest_plugins = ["pytest_unlearn.expected_verdicts"]`` (or ``-p pytest_unlearn.expected_verdicts``).
Under pytest-xdist the controller compares, from the reports the workers send.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

OUTCOMES = ("passed", "failed", "skipped", "error")
NOT_RUN = "not run"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--expected-verdicts", metavar="FILE", default=None,
                     help="compare test outcomes with FILE (JSON: test id -> passed/failed); "
                          "exit 0 exactly when all match")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--expected-verdicts")
    if path and not hasattr(config, "workerinput"):  # xdist workers send their reports to the controller
        config.pluginmanager.register(ExpectedVerdicts(read_expected(Path(path))), "unlearn-expected-verdicts")


def read_expected(path: Path) -> dict[str, str]:
    """The declared outcomes in ``path`` (comments dropped); a usage error naming the file and the
    entry when it cannot be read, is not a JSON object, or declares an unknown outcome."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--expected-verdicts {path}: cannot read it: {exc}") from None
    if not isinstance(data, dict):
        raise pytest.UsageError(f"--expected-verdicts {path}: expected a JSON object (test id -> outcome), "
                                f"got {type(data).__name__}")
    expected = {k: v for k, v in data.items() if not k.startswith("_")}
    for test, want in expected.items():
        if want not in OUTCOMES:
            raise pytest.UsageError(f"--expected-verdicts {path}: {test!r} expects {want!r}; "
                                    f"an outcome is one of {', '.join(OUTCOMES)}")
    return expected


def outcome(report: pytest.TestReport) -> str | None:
    """A test's outcome from one of its reports: its call, or a setup that did not pass."""
    if report.when == "call" or (report.when == "setup" and not report.passed):
        return ("passed" if report.passed else "skipped" if report.skipped
                else "failed" if report.when == "call" else "error")
    return None


def compare(expected: dict[str, str], seen: dict[str, str]) -> dict:
    """Rows ``(test, expected, got, ok)`` in the file's order (``got`` is ``"not run"`` for a test
    that did not run), the tests that ran without a declared outcome, and whether all agree."""
    rows = []
    for test, want in expected.items():
        got = seen.get(test, NOT_RUN)
        rows.append((test, want, got, got == want))
    extra = sorted(set(seen) - set(expected))
    return {"rows": rows, "extra": extra, "ok": all(r[3] for r in rows) and not extra}


def summary_lines(check: dict) -> list[str]:
    """The comparison as the terminal shows it, under the ``expected verdicts`` header."""
    width = max((len(r[0]) for r in check["rows"]), default=10)
    lines = [f"{test:<{width}}  expected {want:<7} got {got:<7} {'ok' if ok else 'MISMATCH'}"
             for test, want, got, ok in check["rows"]]
    lines += [f"{test:<{width}}  not in the expected verdicts: MISMATCH" for test in check["extra"]]
    n_ok = sum(r[3] for r in check["rows"])
    lines.append(f"{n_ok} of {len(check['rows'])} verdicts as expected"
                 + ("" if check["ok"] else "; the run does NOT show what the suite's README describes"))
    return lines


class ExpectedVerdicts:
    """The session's outcomes (on the xdist controller: the workers' reports) and the comparison."""

    def __init__(self, expected: dict[str, str]):
        self.expected = expected
        self.seen: dict[str, str] = {}
        self.check: dict | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        got = outcome(report)
        if got is not None:
            self.seen[report.nodeid] = got

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.check = compare(self.expected, self.seen)
        session.exitstatus = 0 if self.check["ok"] else 1

    @pytest.hookimpl(trylast=True)  # after the unlearning summary
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.check is None:
            return
        terminalreporter.write_sep("=", "expected verdicts")
        for line in summary_lines(self.check):
            terminalreporter.write_line(line)
