"""The example suites, run the way a user runs them (pytest in the suite's folder, in a
subprocess), give the verdicts their READMEs describe (``expected_verdicts.json``), print
the summary, and write the JSON and Markdown reports.

The tiny suite (a Llama trained from scratch in seconds) runs in the default test run; the
SmolLM2 suite (the demo: fine-tuning a real 135M model, minutes) is marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITES = ROOT / "example_suites"
SKIP = shutil.ignore_patterns(".models", "reports", ".pytest_cache", "__pycache__")


def _env() -> dict:
    """The environment of a user's shell: nothing of this pytest run leaks into the suite's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST")) and k != "PYTEST_ADDOPTS"}
    env.setdefault("OMP_NUM_THREADS", "1")  # shared CPU: one torch thread per process
    return env


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _show(proc: subprocess.CompletedProcess) -> str:
    out = (proc.stdout or "") + (proc.stderr or "")
    return out[-6000:]


def _expected(suite: Path) -> dict[str, str]:
    data = json.loads((suite / "expected_verdicts.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _check_suite_run(suite: Path, timeout: float) -> dict:
    """Run the suite with the JSON report and the expected-verdict check; return the report."""
    proc = _run(["-m", "pytest", "-p", "no:randomly", "--unlearn-report", "reports/unlearn-report.json",
                 "--expected-verdicts", "expected_verdicts.json"], suite, timeout)
    assert proc.returncode == 0, f"the suite's verdicts differ from expected_verdicts.json:\n{_show(proc)}"
    out = proc.stdout
    assert "unlearning summary" in out and "verdicts as expected" in out, _show(proc)
    expected = _expected(suite)
    assert f"{len(expected)} of {len(expected)} verdicts as expected" in out, _show(proc)

    report = json.loads((suite / "reports" / "unlearn-report.json").read_text(encoding="utf-8"))
    assert report["schema"].startswith("pytest-unlearn-report/")
    assert report["summary"]["error"] == 0
    # every assertion's recorded verdict agrees with the test outcome the suite expects
    seen = {}
    for rec in report["assertions"]:
        seen.setdefault(rec["test"], []).append(rec["verdict"])
    for test, want in expected.items():
        if test in seen:
            got = "passed" if all(v == "pass" for v in seen[test]) else "failed"
            assert got == want, f"{test}: the report says {seen[test]}, expected {want}"
    assert any(t not in seen for t in expected) or seen, "no assertion reached the report"
    return report


def _check_markdown(suite: Path, report: dict) -> str:
    proc = _run(["-m", "pytest_unlearn.report_markdown", "reports/unlearn-report.json",
                 "reports/unlearn-report.md"], suite, 300)
    assert proc.returncode == 0, _show(proc)
    md = (suite / "reports" / "unlearn-report.md").read_text(encoding="utf-8")
    assert "# Unlearning report" in md and "Verdicts at a glance" in md
    assert f"seed: {report['seed']}" in md
    for role, info in report["models"].items():
        assert info["fingerprint"][:12] in md, role
    pytest.importorskip("matplotlib")
    plots = sorted(p.name for p in (suite / "reports").glob("unlearn-report-*.png"))
    assert "unlearn-report-attacks-es.png" in plots and "unlearn-report-calibration.png" in plots, plots
    for name in plots:
        assert f"]({name})" in md
    return md


@pytest.fixture(scope="module")
def tiny_built(tmp_path_factory) -> Path:
    """A copy of the tiny suite whose models are built (by its build script, from scratch)."""
    suite = tmp_path_factory.mktemp("tiny-built") / "tiny"
    shutil.copytree(SUITES / "tiny", suite, ignore=SKIP)
    proc = _run(["build_models.py"], suite, 900)
    assert proc.returncode == 0, _show(proc)
    assert "building original, reference" in proc.stdout, _show(proc)
    proc = _run(["build_models.py"], suite, 300)  # a second start reuses them
    assert proc.returncode == 0 and "all models cached" in proc.stdout, _show(proc)
    return suite


def _copy(built: Path, dest: Path) -> Path:
    shutil.copytree(built, dest, ignore=shutil.ignore_patterns("reports", ".pytest_cache", "__pycache__"))
    return dest


def test_tiny_suite_gives_the_expected_verdicts(tiny_built, tmp_path):
    suite = _copy(tiny_built, tmp_path / "tiny")
    report = _check_suite_run(suite, timeout=900)
    # the story the README tells, read from the measured report
    by_test = {r["test"]: r for r in report["assertions"]}
    attacked = by_test["test_release_gate.py::test_forget_set_not_extracted_under_attack[npo]"]
    naive = by_test["test_release_gate.py::test_forget_set_not_extracted[npo]"]
    assert naive["verdict"] == "pass" and attacked["verdict"] == "fail"
    assert [row["attack"] for row in attacked["attacks"] if row["verdict"] == "leak"], attacked["attacks"]
    assert by_test["test_release_gate.py::test_forget_set_not_extracted_under_attack[retrain]"]["verdict"] == "pass"
    md = _check_markdown(suite, report)
    assert "### Model npo" in md


def test_tiny_models_built_by_other_code_are_rebuilt(tiny_built, tmp_path):
    """The build cache is keyed by the code that trains the models, not only by their
    configuration: after an edit of the build script every model is built again."""
    suite = _copy(tiny_built, tmp_path / "tiny")
    script = suite / "build_models.py"
    script.write_text(script.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    proc = _run(["build_models.py"], suite, 900)
    assert proc.returncode == 0, _show(proc)
    assert "building original, reference, idk, npo" in proc.stdout, _show(proc)


def test_tiny_suite_reports_unexpected_verdicts(tiny_built, tmp_path):
    """--expected-verdicts fails the run when an outcome differs from the declared one."""
    suite = _copy(tiny_built, tmp_path / "tiny")
    expected = json.loads((suite / "expected_verdicts.json").read_text(encoding="utf-8"))
    test = "test_release_gate.py::test_original_knows_the_forget_set"
    expected[test] = "failed"  # it passes
    (suite / "expected_verdicts.json").write_text(json.dumps(expected), encoding="utf-8")
    proc = _run(["-m", "pytest", "-p", "no:randomly", test, "--expected-verdicts", "expected_verdicts.json"],
                suite, 900)
    assert proc.returncode == 1, _show(proc)
    assert "expected failed  got passed  MISMATCH" in proc.stdout, _show(proc)
    assert "not run" in proc.stdout  # the other expected tests were deselected


def _smollm2_copy(tmp_path: Path) -> Path:
    """A copy of the SmolLM2 suite whose ``.models`` links to the suite's own, built (or
    reused) by its build script first."""
    source = SUITES / "smollm2"
    proc = _run(["build_models.py"], source, 3600)
    assert proc.returncode == 0, _show(proc)
    suite = tmp_path / "smollm2"
    shutil.copytree(source, suite, ignore=SKIP)
    (suite / ".models").symlink_to(source / ".models", target_is_directory=True)
    return suite


@pytest.mark.slow
def test_smollm2_suite_gives_the_expected_verdicts(tmp_path):
    """The demo's suite end to end: models built (or reused) in the suite's own .models/,
    the suite run from a copy, the verdicts its README describes."""
    suite = _smollm2_copy(tmp_path)
    report = _check_suite_run(suite, timeout=3600)
    by_test = {r["test"]: r for r in report["assertions"]}
    naive = by_test["test_release_gate.py::test_forget_set_not_extracted[rmu]"]
    attacked = by_test["test_release_gate.py::test_forget_set_not_extracted_under_attack[rmu]"]
    assert naive["verdict"] == "pass" and attacked["verdict"] == "fail"
    leaks = [row["attack"] for row in attacked["attacks"] if row["verdict"] == "leak"]
    assert leaks and all(a != "none" for a in leaks), attacked["attacks"]
    retrain = by_test["test_release_gate.py::test_forget_set_not_extracted_under_attack[retrain]"]
    assert retrain["verdict"] == "pass"
    md = _check_markdown(suite, report)
    assert "### Model rmu" in md


@pytest.mark.slow
def test_smollm2_multiple_choice_gate_gives_the_expected_verdicts(tmp_path):
    """The SmolLM2 suite's multiple-choice gate (``example_suites/smollm2/multiple_choice``, not
    part of the demo's run) on the same models and its own ``gd`` candidate (built when that
    suite starts): the verdicts its README describes."""
    suite = _smollm2_copy(tmp_path)
    report = _check_suite_run(suite / "multiple_choice", timeout=3600)
    by_test = {r["test"]: r for r in report["assertions"]}
    assert all(r["metric"] == "mc_acc_text" for r in report["assertions"]), report["assertions"]
    # the story the README tells: recognition outlives recall; the reference never knew
    gd = by_test["test_multiple_choice_gate.py::test_forget_set_not_recognised[gd]"]
    retrain = by_test["test_multiple_choice_gate.py::test_forget_set_not_recognised[retrain]"]
    assert gd["verdict"] == "fail" and retrain["verdict"] == "pass"
    assert by_test["test_multiple_choice_gate.py::test_retain_set_still_known[gd]"]["verdict"] == "pass"
    # rmu: at chance as asked, brought back by relearning
    naive = by_test["test_multiple_choice_gate.py::test_forget_set_not_recognised[rmu]"]
    attacked = by_test["test_multiple_choice_gate.py::test_forget_set_not_recognised_under_attack[rmu]"]
    assert naive["verdict"] == "pass" and naive["score"] <= naive["threshold"]
    assert attacked["verdict"] == "fail"
    leaks = [row["attack"] for row in attacked["attacks"] if row["verdict"] == "leak"]
    assert leaks and all(a.startswith("relearn") for a in leaks), attacked["attacks"]
    assert by_test["test_multiple_choice_gate.py::test_retain_set_still_known[rmu]"]["verdict"] == "pass"
    # the failure message shows the choice picked under relearning, not a generation
    shown = [s for s in attacked["worst_samples"] if s["attack"].startswith("relearn")]
    assert shown and all(s["picked"] == s["correct"] and s["generated_under"] == s["attack"] for s in shown)
    assert "picked under relearn" in attacked["message"]
