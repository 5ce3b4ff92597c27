"""Regression baselines (``assert_no_regression``, the ``unlearn_baseline`` fixture and
``--unlearn-update-baselines``), driven through pytest with ``pytester``.

The toy world's ``reference`` model (never saw the forget set) plays the accepted release
the baselines are made from; its ``original`` (knows everything) plays a release that
forgets less.  Inner suites pick the model through ``RELEASE`` (an environment variable),
so one test file makes the baseline and then checks a later release against it.
"""

from __future__ import annotations

import json
import shutil

import pytest

import pytest_unlearn
from pytest_unlearn.baselines import FORMAT, BaselineStore, default_name, render
from pytest_unlearn.data import load_dataset

CONFTEST = """
import os
import pytest

@pytest.fixture
def release(unlearn):
    # the model of the release under test: the configured one, or the original ("leaks")
    return unlearn.settings.original if os.environ.get("RELEASE") == "leaky" else None
"""

FLAG = "--unlearn-update-baselines"


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""



@pytest.fixture
def world(pytester, toy_world, monkeypatch):
    """A pytester folder configured for the toy world (the unlearned model: ``reference``)."""
    monkeypatch.delenv("RELEASE", raising=False)
    pytester.makeini("[pytest]\n"
                     f"unlearn_original = {toy_world['original']}\n"
                     f"unlearn_model = {toy_world['reference']}\n"
                     f"unlearn_forget = {toy_world['forget']}\n"
                     f"unlearn_retain = {toy_world['retain']}\n")
    pytester.makeconftest(CONFTEST)
    return pytester


def folder(pytester):
    return pytester.path / "unlearn-baselines"


def baseline_text(pytester, name: str) -> str:
    return (folder(pytester) / f"{name}.json").read_text(encoding="utf-8")


def records(pytester, report: str = "report.json") -> dict:
    """The regression records of the JSON report, by test name."""
    data = json.loads((pytester.path / report).read_text())
    return {a["test"].split("::")[-1]: a for a in data["assertions"] if a["kind"] == "regression"}


def section(stdout: str, test: str) -> str:
    """The failure section of one test in pytest's output."""
    start = stdout.index(f"_ {test} _")
    end = stdout.find("\n___", start + 1)
    ends = [i for i in (end, stdout.find("= short test summary", start), stdout.find("= unlearning", start))
            if i != -1]
    return stdout[start:min(ends)]


# ---------------------------------------------------------------- creating baselines

CREATE = """
from pytest_unlearn import assert_no_regression

def test_forget_es(unlearn_baseline):
    result = unlearn_baseline("es", under_attack=["paraphrase"])
    assert result.passed

def test_named():
    assert_no_regression("prob", "forget-prob", reduce="q90")

def test_default_name():
    assert_no_regression("em")
"""


def test_the_flag_creates_deterministic_diff_friendly_baselines(world, toy_world):
    from pytest_unlearn import session

    world.makepyfile(test_suite=CREATE)
    before = session.frames()
    result = world.runpytest(FLAG)
    result.assert_outcomes(passed=3)
    assert session.frames() == before  # the inner session cleaned up
    result.stdout.fnmatch_lines(["*= unlearning baselines =*",
                                 "created unlearn-baselines/forget-prob.json",
                                 "created unlearn-baselines/test_default_name.json",
                                 "created unlearn-baselines/test_forget_es.json"])
    names = sorted(p.name for p in folder(world).iterdir())
    assert names == ["forget-prob.json", "test_default_name.json", "test_forget_es.json"]

    # the content: valid JSON, a header that says what made it, one sorted line per sample
    text = baseline_text(world, "test_forget_es")
    doc = json.loads(text)
    assert list(doc) == ["format", "header", "reduced", "samples"] and doc["format"] == FORMAT
    header = doc["header"]
    from pytest_unlearn.attacks import parse_attack

    paraphrase = parse_attack("paraphrase").spec
    forget = load_dataset(toy_world["forget"])
    assert header["metric"] == "es" and header["direction"] == "higher = more knowledge"
    assert header["attacks"] == [paraphrase] and header["reduce"] == "mean" and header["seed"] == 0
    assert header["prompt"] == "chat"  # the toy tokenizer has a chat template
    assert header["data"] == {"name": "forget", "n": 8, "content_hash": forget.content_hash}
    assert header["library"] == {"name": "pytest-unlearn", "version": pytest_unlearn.__version__}
    assert header["test"] == "test_suite.py::test_forget_es"
    assert set(header["models"]) == {"model", "original"}
    assert header["models"]["model"]["fingerprint"] != header["models"]["original"]["fingerprint"]
    assert all(len(m["fingerprint"]) == 64 for m in header["models"].values())
    assert str(toy_world["reference"]) not in text  # no machine-specific paths
    assert set(doc["reduced"]) == {"none", paraphrase, "worst"}
    lines = text.splitlines()
    start = lines.index('  "samples": {')
    sample_lines = lines[start + 1:-2]
    assert lines[-2:] == ["  }", "}"] and len(sample_lines) == len(forget) == 8
    ids = [json.loads("{" + line.rstrip(",") + "}").popitem()[0] for line in sample_lines]
    assert ids == sorted(forget.ids)
    for line in sample_lines:
        (entry,) = json.loads("{" + line.rstrip(",") + "}").values()
        assert set(entry) == {"scores", "worst", "worst_attack"} and set(entry["scores"]) == {"none", paraphrase}
        assert entry["worst"] == max(entry["scores"].values())
    assert render(doc) == text  # the writer's own rendering round-trips
    assert json.loads(baseline_text(world, "forget-prob"))["header"]["reduce"] == "q90"

    # deterministic: created again (here through the ini key), byte for byte the same
    before = {p.name: p.read_bytes() for p in folder(world).iterdir()}
    shutil.rmtree(folder(world))
    ini = world.path.joinpath("tox.ini").read_text().rstrip("\n") + "\n"
    world.makeini(ini + "unlearn_update_baselines = true\n")
    world.runpytest().assert_outcomes(passed=3)
    assert {p.name: p.read_bytes() for p in folder(world).iterdir()} == before
    result = world.runpytest(FLAG)  # nothing changed: nothing is rewritten
    result.stdout.fnmatch_lines(["*= unlearning baselines =*", "3 baselines unchanged"])
    assert "created" not in result.stdout.str() and "updated" not in result.stdout.str()

    # the same release compared with its own baselines passes, with the check in the summary
    world.makeini(ini)
    result = world.runpytest()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_suite.py::test_forget_es*regression es*none*0.1629*1.0000*<= 0.2344*ok",
                                 "*paraphrase*0.1719*0.8638*<= 0.2344*ok",
                                 "*worst case*0.2344*<= 0.2344*PASS"])
    assert "= unlearning baselines =" not in result.stdout.str()


# ---------------------------------------------------------------- comparing

COMPARE = """
from pytest_unlearn import assert_no_regression

def test_leaks(unlearn_baseline, release):
    unlearn_baseline("es", model=release)

def test_within_tolerance(unlearn_baseline, release):
    unlearn_baseline("es", model=release, tolerance=1.0)

def test_half_tolerance(unlearn_baseline, release):
    unlearn_baseline("es", model=release, tolerance=0.5)

def test_same_release(unlearn_baseline):
    unlearn_baseline("es")

def test_reduced(unlearn_baseline):
    unlearn_baseline("es")
"""


def test_regressions_per_sample_and_reduced_with_tolerance(world, monkeypatch):
    world.makepyfile(test_suite=COMPARE)
    world.runpytest(FLAG).assert_outcomes(passed=5)
    base = json.loads(baseline_text(world, "test_leaks"))
    worst = {sid: entry["worst"] for sid, entry in base["samples"].items()}
    assert base["reduced"]["worst"] < 0.5 and 0.5 < max(worst.values()) < 1.0  # the toy world's shape
    # a hand-lowered reduced score: no sample regressed, the reduced score did
    path = folder(world) / "test_reduced.json"
    doc = json.loads(path.read_text())
    doc["reduced"]["worst"] = 0.1
    path.write_text(render(doc))

    monkeypatch.setenv("RELEASE", "leaky")
    result = world.runpytest("--unlearn-report", "report.json")
    result.assert_outcomes(passed=2, failed=3)
    out = result.stdout.str()
    recs = records(world)

    # every sample leaks again: all listed, with both scores and what the model generates
    leaks = section(out, "test_leaks")
    assert "UnlearningAssertionError: es (extraction strength" in leaks
    assert "regressed against baseline unlearn-baselines/test_leaks.json" in leaks
    assert f"reduced score (mean, worst case per sample over 1 condition): baseline " \
           f"{base['reduced']['worst']:.4f}, now 1.0000 (regressed" in leaks
    assert "8 of 8 samples regressed" in leaks
    for sid, score in worst.items():
        assert f"sample {sid}: es {score:.4f} -> 1.0000 ({1.0 - score:+.4f}) under none" in leaks
    assert leaks.count("generated:") == 5 and leaks.count("prompt:") == 5
    assert "--unlearn-update-baselines 'test_suite.py::test_leaks'" in leaks
    assert "pytest_unlearn/" not in out  # the library's frames are hidden
    assert recs["test_leaks"]["verdict"] == "fail" and sorted(recs["test_leaks"]["regressed"]) == sorted(worst)

    # tolerance: read in the knowledge direction, per sample and on the reduced score
    assert recs["test_within_tolerance"]["verdict"] == "pass"
    half = section(out, "test_half_tolerance")
    below = sorted(sid for sid, score in worst.items() if score + 0.5 < 1.0)
    assert 0 < len(below) < 8 and sorted(recs["test_half_tolerance"]["regressed"]) == below
    assert f"{len(below)} of 8 samples regressed" in half
    for sid in worst:
        assert (f"sample {sid}: es" in half) == (sid in below)

    # the same release passes; a lowered reduced score fails on the reduced score alone
    assert recs["test_same_release"]["verdict"] == "pass" and recs["test_same_release"]["regressed"] == []
    reduced = section(out, "test_reduced")
    assert f"baseline 0.1000, now {base['reduced']['worst']:.4f} (regressed: it may be at most 0.1000" in reduced
    assert "samples regressed" not in reduced and recs["test_reduced"]["regressed"] == []
    result.stdout.fnmatch_lines(["*test_suite.py::test_leaks*regression es*none*1.0000*1.0000*FAIL*"])

    # refreshing from the leaky release (once it is accepted): the update says what it changed
    result = world.runpytest(FLAG, "-k", "test_leaks")
    result.stdout.fnmatch_lines(["updated unlearn-baselines/test_leaks.json (8 of 8 samples forget less "
                                 "than the previous baseline)"])
    refreshed = json.loads(baseline_text(world, "test_leaks"))
    assert refreshed["reduced"]["worst"] == 1.0
    assert refreshed["header"]["models"]["model"]["fingerprint"] == base["header"]["models"]["original"]["fingerprint"]
    world.runpytest("-k", "test_leaks").assert_outcomes(passed=1)


# ---------------------------------------------------------------- refusals and clear errors

BASE = """
from pytest_unlearn import assert_no_regression

def test_base():
    assert_no_regression("es", "base", under_attack=["paraphrase"])
"""

CHECKS = """
from pytest_unlearn import assert_no_regression

def test_metric():
    assert_no_regression("prob", "metric", under_attack=["paraphrase"])

def test_attacks():
    assert_no_regression("es", "attacks")

def test_data(unlearn):
    assert_no_regression("es", "data", under_attack=["paraphrase"], data=unlearn.settings.retain)

def test_reduce():
    assert_no_regression("es", "reduce", under_attack=["paraphrase"], reduce="max")

def test_same():  # the canonical spec of "paraphrase": the same configuration
    assert_no_regression("es", "base", under_attack=["paraphrase:source=auto"])

def test_missing():
    assert_no_regression("es", "nowhere")

def test_twice(unlearn_baseline):
    unlearn_baseline("es", under_attack=["paraphrase"])
    unlearn_baseline("es", under_attack=["paraphrase"])
"""


def test_a_baseline_from_another_configuration_is_refused_and_a_missing_one_explained(world):
    world.makepyfile(test_suite=BASE)
    world.runpytest(FLAG).assert_outcomes(passed=1)
    base = baseline_text(world, "base")
    for name in ("metric", "attacks", "data", "reduce", "test_twice"):
        (folder(world) / f"{name}.json").write_text(base)
    (world.path / "test_suite.py").unlink()
    world.makepyfile(test_checks=CHECKS)
    result = world.runpytest()
    result.assert_outcomes(passed=1, failed=6)
    out = result.stdout.str()
    refused = "was made under a different configuration, so it is not compared"
    assert "BaselineError: baseline unlearn-baselines/metric.json " + refused in section(out, "test_metric")
    assert "metric: baseline 'es', now 'prob'" in section(out, "test_metric")
    assert "attacks: baseline ['paraphrase:source=auto'], now []" in section(out, "test_attacks")
    data = section(out, "test_data")
    assert "data: baseline forget (8 samples, content hash " in data and "now retain (16 samples" in data
    assert "reduce: baseline 'mean', now 'max'" in section(out, "test_reduce")
    for test in ("test_metric", "test_attacks", "test_data", "test_reduce"):
        text = section(out, test)
        assert f"refresh the baseline with `pytest --unlearn-update-baselines 'test_checks.py::{test}'`" in text
        assert "metric:" not in text or test == "test_metric"  # only the fields that differ
        assert "Traceback" not in text and "pytest_unlearn/" not in text
    missing = section(out, "test_missing")
    assert ("BaselineError: baseline unlearn-baselines/nowhere.json does not exist: create it from the accepted "
            "release with `pytest --unlearn-update-baselines 'test_checks.py::test_missing'`") in missing
    assert "used twice in test_checks.py::test_twice" in section(out, "test_twice")

    # another prompt format is another configuration too
    result = world.runpytest("--unlearn-prompt", "plain", "-k", "test_same")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*prompt: baseline 'chat', now 'plain'*"])

    # the flag refreshes them to the new configuration; then they compare
    result = world.runpytest(FLAG, "-k", "not twice")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["created unlearn-baselines/nowhere.json",
                                 "updated unlearn-baselines/attacks.json (new configuration: attacks)",
                                 "updated unlearn-baselines/base.json",  # only its header's test changed
                                 "updated unlearn-baselines/data.json (new configuration: data)",
                                 "updated unlearn-baselines/metric.json (new configuration: metric)",
                                 "updated unlearn-baselines/reduce.json (new configuration: reduce)"])
    assert json.loads(baseline_text(world, "metric"))["header"]["metric"] == "prob"
    assert json.loads(baseline_text(world, "data"))["header"]["data"]["name"] == "retain"
    world.runpytest("-k", "not twice").assert_outcomes(passed=6)


# ---------------------------------------------------------------- stale baselines

STALE = """
import pytest

def test_kept(unlearn_baseline):
    unlearn_baseline("es")

@pytest.mark.skip(reason="needs a GPU")
def test_skipped(unlearn_baseline):
    unlearn_baseline("es")
"""


def test_stale_baselines_are_reported_only_after_a_whole_suite_run(world):
    world.makepyfile(test_suite=STALE)
    world.runpytest(FLAG).assert_outcomes(passed=1, skipped=1)
    kept = baseline_text(world, "test_kept")
    (folder(world) / "test_skipped.json").write_text(kept)  # a skipped test still owns its baseline
    (folder(world) / "test_removed.json").write_text(kept)
    (folder(world) / "old").mkdir()
    (folder(world) / "old" / "renamed.json").write_text(kept)
    result = world.runpytest()
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*= unlearning baselines =*",
                                 "2 stale baselines under unlearn-baselines/: no test used them in this run*",
                                 "  unlearn-baselines/old/renamed.json",
                                 "  unlearn-baselines/test_removed.json"])
    assert "test_kept.json" not in result.stdout.str() and "test_skipped.json" not in result.stdout.str()
    # a run that did not cover the whole suite cannot tell
    for args in (["-k", "kept"], ["test_suite.py::test_kept"], ["-x", "--deselect", "test_suite.py::test_skipped"],
                 ["--collect-only"]):
        result = world.runpytest(*args)
        assert "stale baseline" not in result.stdout.str(), args


# ---------------------------------------------------------------- pytest-xdist

XDIST = """
from pytest_unlearn import assert_no_regression

def test_a(unlearn_baseline, release):
    unlearn_baseline("es", model=release)

def test_b(unlearn_baseline, release):
    unlearn_baseline("es", model=release, tolerance=1.0)

def test_c(release):
    assert_no_regression("es", "c-named", model=release)

def test_d(unlearn_baseline):
    unlearn_baseline("es")
"""


def test_xdist_writes_the_same_files_gives_the_same_verdicts_and_reports_stale_once(world, monkeypatch):
    pytest.importorskip("xdist")
    world.makepyfile(test_suite=XDIST)
    world.runpytest(FLAG, "-p", "no:xdist").assert_outcomes(passed=4)
    serial = {p.name: p.read_bytes() for p in folder(world).iterdir()}
    shutil.rmtree(folder(world))
    folder(world).mkdir()
    (folder(world) / "gone.json").write_bytes(serial["test_a.json"])
    # the workers (subprocesses: a run that imports torch and loads models, so only two runs)
    result = world.runpytest_subprocess(FLAG, "-n", "2")  # each worker writes the files of its tests
    result.assert_outcomes(passed=4)
    written = {p.name: p.read_bytes() for p in folder(world).iterdir()}
    assert written == {**serial, "gone.json": serial["test_a.json"]}
    out = result.stdout.str()
    assert out.count("created unlearn-baselines/") == 4 and out.count("= unlearning baselines =") == 1
    assert out.count("1 stale baseline under unlearn-baselines/") == 1
    assert not [p for p in folder(world).iterdir() if p.name.startswith(".")]  # no temporary files left

    (folder(world) / "test_d.json").unlink()
    monkeypatch.setenv("RELEASE", "leaky")
    runs = {"serial": world.runpytest("-p", "no:xdist", "-rf"), "xdist": world.runpytest_subprocess("-n", "2", "-rf")}
    outcomes = {}
    for name, result in runs.items():
        out = result.stdout.str()
        outcomes[name] = (result.parseoutcomes(),
                          sorted(line.split(" - ")[0] for line in result.stdout.lines if line.startswith("FAILED")),
                          sorted(line for line in result.stdout.lines if "regression es" in line))
        assert out.count("1 stale baseline under unlearn-baselines/") == 1, name
        assert out.count("  unlearn-baselines/gone.json") == 1, name
    assert outcomes["serial"] == outcomes["xdist"]
    counts, failed, _ = outcomes["xdist"]
    assert counts == {"passed": 1, "failed": 3}
    assert failed == ["FAILED test_suite.py::test_a", "FAILED test_suite.py::test_c", "FAILED test_suite.py::test_d"]


# ---------------------------------------------------------------- without pytest

def test_store_names_and_merges(tmp_path):
    store = BaselineStore(tmp_path)
    assert store.path_for("forget-es") == tmp_path / "unlearn-baselines" / "forget-es.json"
    assert store.path_for("forget-es.json") == tmp_path / "unlearn-baselines" / "forget-es.json"
    assert store.path_for("gates/x.json") == tmp_path / "gates" / "x.json"
    assert default_name("tests/test_gate.py::TestRelease::test_es[quantize:4]") == "TestRelease.test_es[quantize_4]"
    assert default_name("test_gate.py::test_es") == "test_es"
    worker = BaselineStore(tmp_path)
    worker.claim(worker.path_for("a"), "t.py::test_a")
    other = BaselineStore(tmp_path)
    other.claim(other.path_for("a"), "t.py::test_b")
    store.merge(worker.to_workeroutput())
    store.merge(other.to_workeroutput())
    assert store.used == {"unlearn-baselines/a.json": "t.py::test_a"}
    assert store.conflicts == ["baseline unlearn-baselines/a.json is used by both t.py::test_a and t.py::test_b: "
                               "one test, one file"]


def test_an_unreadable_baseline_is_a_clear_error(tmp_path):
    from pytest_unlearn import BaselineError
    from pytest_unlearn.baselines import read_baseline

    path = tmp_path / "x.json"
    path.write_text('{\n  "format": "pytest-unlearn-baseline/1",\n<<<<<<< HEAD\n}\n')
    with pytest.raises(BaselineError, match=r"x\.json:3: not valid JSON .*--unlearn-update-baselines"):
        read_baseline(path, "x.json")
    path.write_text('{"format": "something-else"}')
    with pytest.raises(BaselineError, match=r"is not a pytest-unlearn-baseline/1 file \(format: 'something-else'\)"):
        read_baseline(path, "x.json")
    doc = {"format": FORMAT, "header": {"b": 1, "a": [1, 2]}, "reduced": {"worst": 0.5}, "samples": {}}
    assert json.loads(render(doc)) == doc
