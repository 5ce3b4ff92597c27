"""The configuration examples of README.md and docs/configuration.md run as written: each
code block is copied out of the page into a fresh project whose models and data (the toy
world's) sit at the paths the example names."""

from __future__ import annotations

import pathlib
import re
import shutil

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[2]


def blocks(page: str, language: str) -> list[str]:
    text = (ROOT / page).read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""



def lay_out(root: pathlib.Path, toy_world, config: str) -> None:
    """The toy world's files at every models/... and data/... path the example names."""
    for rel in sorted(set(re.findall(r"\b(?:models|data)/[\w./-]+", config))):
        rel = rel.rstrip(".")
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith("data/"):
            source = toy_world["retain"] if "retain" in rel else toy_world["forget"]
            shutil.copy(source, target)
        else:  # the original is the original; every other model is the one that never saw the forget set
            source = toy_world["original"] if rel == "models/original" else toy_world["reference"]
            target.symlink_to(source, target_is_directory=True)


def test_the_readme_example_runs_as_written(pytester, toy_world):
    (config,) = [b for b in blocks("README.md", "ini") if "unlearn_original" in b]
    (gate,) = [b for b in blocks("README.md", "python") if b.startswith("# test_release_gate.py")]
    name = config.splitlines()[0].lstrip("# ").strip()
    assert name == "pytest.ini"
    (pytester.path / name).write_text(config)
    lay_out(pytester.path, toy_world, config)
    (pytester.path / "test_release_gate.py").write_text(gate)
    result = pytester.runpytest("--unlearn-no-cache")
    # the unlearned model here never saw the forget set: both guarantees hold
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_release_gate.py::test_forget_set_cannot_be_extracted*forgotten es*",
                                 "*paraphrase*", "*quantize:8*", "*worst case*PASS"])


CHECK_SETTINGS = """
import os

def test_every_configured_path_exists(unlearn):
    s = unlearn.settings
    paths = [s.original, s.model, s.forget, s.retain, s.reference]
    assert all(p and os.path.exists(p) for p in paths), paths
    assert len(unlearn.forget) == 8 and len(unlearn.retain) == 16
    print("seed", s.seed, "batch", s.batch_size)
"""


@pytest.mark.parametrize("index", range(len(blocks("docs/configuration.md", "toml"))))
def test_the_configuration_page_s_toml_examples_read_as_written(pytester, toy_world, index):
    config = blocks("docs/configuration.md", "toml")[index]
    name = config.splitlines()[0].lstrip("# ").strip()
    assert name == "pyproject.toml"
    if "[tool.pytest]\n" in config and tuple(pytest.version_tuple[:2]) < (9, 2):
        pytest.skip("numbers and booleans in pytest's native TOML table need pytest 9.2")
    (pytester.path / name).write_text(config)
    lay_out(pytester.path, toy_world, config)
    pytester.makepyfile(test_settings=CHECK_SETTINGS)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)


def test_the_readme_library_example_runs_as_written(toy_world, tmp_path, monkeypatch, capsys):
    """The "Library use without pytest" block, run as a script in a folder with the toy world's
    models and data at the paths it names."""
    (code,) = [b for b in blocks("README.md", "python") if "from pytest_unlearn import load_model" in b]
    lay_out(tmp_path, toy_world, code)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (library example)", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "ScoreResult(es=" in out and "alpha" in out
