"""docs/report-schema.md documents every record kind the code writes, and a real report's
records carry exactly the keys documented for their kind."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = {"message", "baseline_models"}  # present only on failure / after a comparison


def documented_kinds() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "report-schema.md").read_text(encoding="utf-8")
    section = text[text.index("## Record kinds"):]
    section = section[:section.index("\n## ", 1)]
    kinds = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            kinds[cells[0].strip("`")] = set(re.findall(r"`([a-z_0-9]+)`", cells[2]))
    return kinds


def kinds_in_code() -> set[str]:
    """Every literal first argument of ``base_record(...)`` in the package."""
    kinds = set()
    for path in (ROOT / "pytest_unlearn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "base_record":
                if node.args and isinstance(node.args[0], ast.Constant):
                    kinds.add(node.args[0].value)
    return kinds


def test_every_kind_the_code_writes_is_documented():
    code = kinds_in_code()
    assert code == {"forgotten", "retained", "regression", "no_leak", "robust", "forget_quality"}
    assert set(documented_kinds()) == code


SUITE = """
from pytest_unlearn import assert_forgotten, assert_no_leak_found, assert_no_regression, assert_retained

def test_forgotten():
    assert_forgotten("es", threshold=0.3, under_attack=["noise"])

def test_leaks(unlearn):
    assert_forgotten("es", threshold=0.3, model=unlearn.settings.original)

def test_retained():
    assert_retained("es", min_ratio=0.9)

def test_regression():
    assert_no_regression("es", "forget-es")

def test_no_leak():
    assert_no_leak_found("es", 0.9, search=4, samples=1)
"""


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""



def test_a_real_report_matches_the_documented_keys(pytester, toy_world):
    pytest.importorskip("hypothesis")
    pytester.makeini(
        "[pytest]\n"
        f"unlearn_original = {toy_world['original']}\n"
        f"unlearn_model = {toy_world['reference']}\n"
        f"unlearn_forget = {toy_world['forget']}\n"
        f"unlearn_retain = {toy_world['retain']}\n"
        "unlearn_allow_pickle = true\n")
    pytester.makepyfile(test_gates=SUITE)
    out = pytester.path / "report.json"
    pytester.runpytest("-p", "no:cacheprovider", "--unlearn-update-baselines", f"--unlearn-report={out}")
    report = json.loads(out.read_text())
    records = report["assertions"]
    assert {r["kind"] for r in records} == {"forgotten", "retained", "regression", "no_leak"}
    assert "fail" in {r["verdict"] for r in records}
    kinds = documented_kinds()
    for record in records:
        assert record["verdict"] in ("pass", "fail"), record.get("message")
        keys, documented = set(record), kinds[record["kind"]]
        assert keys <= documented, (record["kind"], sorted(keys - documented))
        assert documented - OPTIONAL <= keys, (record["kind"], sorted(documented - OPTIONAL - keys))
        assert ("message" in keys) == (record["verdict"] == "fail")
