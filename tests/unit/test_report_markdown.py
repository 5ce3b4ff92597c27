"""The Markdown report's chart data: every condition carries its controls; the renderer as a
``pytest-unlearn report`` subcommand."""

import json
import subprocess
import sys

from pytest_unlearn import cli, report_markdown
from pytest_unlearn.report_markdown import WORST, attack_panels


def _record(model: str, fingerprint: str, rows: list[tuple[str, float, float, float]], worst: float) -> dict:
    return {"kind": "forgotten", "metric": "es", "threshold": 0.25, "higher_is_more_knowledge": True,
            "verdict": "fail", "calibrate": None, "score": worst,
            "model": {"name": model, "fingerprint": fingerprint},
            "attacks": [{"attack": a, "score": s, "original": o, "reference": r} for a, s, o, r in rows]}


def test_controls_are_charted_for_every_condition():
    rows = [("none", 0.16, 1.0, 0.12), ("paraphrase", 0.17, 0.92, 0.13), ("relearn", 0.29, 0.76, 0.13)]
    groups = {("cand",): [_record("cand", "f1", rows, 0.29)]}
    panels = attack_panels(groups, {("cand",): "cand"})
    (key, panel), = panels.items()
    assert key == ("es", 0.25, True)
    assert panel["conditions"] == ["none", "paraphrase", "relearn"]
    assert panel["original"] == {"none": 1.0, "paraphrase": 0.92, "relearn": 0.76}
    assert panel["reference"] == {"none": 0.12, "paraphrase": 0.13, "relearn": 0.13}
    assert panel["models"]["cand"] == {"none": 0.16, "paraphrase": 0.17, "relearn": 0.29, WORST: 0.29}


def test_reference_scored_as_a_candidate_is_flagged_and_calibrated_checks_are_left_out():
    ref_rows = [("none", 0.12, 1.0, 0.12)]
    calibrated = dict(_record("cand", "f1", [("none", 0.1, 1.0, 0.12)], 0.1), calibrate=0.9)
    groups = {("ref",): [_record("reference", "fr", ref_rows, 0.12)], ("cand",): [calibrated]}
    panels = attack_panels(groups, {("ref",): "reference", ("cand",): "cand"}, reference_fingerprint="fr")
    (panel,) = panels.values()
    assert panel.get("reference_scored") is True
    assert list(panel["models"]) == ["reference"]
    assert WORST not in panel["models"]["reference"]  # one condition: no separate worst case


def test_pytest_unlearn_report_writes_what_the_module_entry_point_writes(tmp_path, capsys):
    rows = [("none", 0.16, 1.0, 0.12), ("paraphrase", 0.29, 0.92, 0.13)]
    report = {"schema": "pytest-unlearn-report/1", "assertions": [_record("cand", "f1", rows, 0.29)]}
    path = tmp_path / "unlearn-report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    assert cli.main(["report", str(path), str(tmp_path / "a" / "report.md"), "--no-plots"]) == 0
    assert report_markdown.main([str(path), str(tmp_path / "b" / "report.md"), "--no-plots"]) == 0
    text = (tmp_path / "a" / "report.md").read_text(encoding="utf-8")
    assert text == (tmp_path / "b" / "report.md").read_text(encoding="utf-8")
    assert "### Model cand" in text and "paraphrase" in text
    assert not list((tmp_path / "a").glob("*.png"))
    assert "markdown report:" in capsys.readouterr().out


def test_pytest_unlearn_report_refuses_a_file_that_is_not_a_report(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text("{}", encoding="utf-8")
    assert cli.main(["report", str(bad), str(tmp_path / "out.md")]) == 2
    err = capsys.readouterr().err
    assert "pytest-unlearn report: error:" in err and "not a pytest-unlearn report" in err
    assert not (tmp_path / "out.md").exists()
    done = subprocess.run([sys.executable, "-m", "pytest_unlearn.cli", "report", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--no-plots" in done.stdout
