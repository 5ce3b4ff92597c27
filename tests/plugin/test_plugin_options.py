"""The plugin's options, settings and fixtures: ini keys and flags, path resolution,
clear errors for missing configuration, ``-p no:unlearn``, and a plugin that costs
nothing in runs that do not use it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from pytest_unlearn.config import Settings, missing, worker_device
from pytest_unlearn.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""



def ini(pytester, toy_world, **extra) -> None:
    values = {"original": toy_world["original"], "model": toy_world["reference"],
              "forget": toy_world["forget"], "retain": toy_world["retain"], **extra}
    pytester.makeini("[pytest]\n" + "".join(f"unlearn_{k} = {v}\n" for k, v in values.items() if v is not None))


# ---------------------------------------------------------------- settings, without pytest

def test_settings_validate_numbers_and_name_the_key_and_flag():
    with pytest.raises(ConfigError, match=r"unlearn_batch_size / --unlearn-batch-size must be an integer"):
        Settings(batch_size="lots")
    with pytest.raises(ConfigError, match=r"at least 1"):
        Settings(batch_size=0)
    assert Settings(batch_size="4", seed="7").batch_size == 4


def test_settings_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings(forget="data/f.jsonl").forget == str(tmp_path / "data" / "f.jsonl")


def test_missing_names_ini_key_and_flag():
    assert str(missing("model")) == ("no unlearned model configured: set `unlearn_model` in pytest.ini / "
                                     "pyproject.toml or pass --unlearn-model PATH")
    assert "--unlearn-reference PATH" in str(missing("reference"))


def test_xdist_workers_are_pinned_to_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_device("auto", "gw0") == "cuda:0"
    assert worker_device("auto", "gw6") == "cuda:2"
    assert worker_device("cpu", "gw6") == "cpu"  # an explicit device is never changed
    assert worker_device("auto", "") == "auto"  # not under xdist
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_device("auto", "gw3") == "auto"


# ---------------------------------------------------------------- through pytest

def test_ini_paths_resolve_relative_to_the_ini_file_and_flags_win(pytester, toy_world):
    cfg = pytester.mkdir("cfg")
    (cfg / "data").mkdir()
    shutil.copy(toy_world["forget"], cfg / "data" / "forget.jsonl")
    shutil.copy(toy_world["retain"], pytester.path / "retain-here.jsonl")
    (cfg / "pytest.ini").write_text(
        "[pytest]\nunlearn_forget = data/forget.jsonl\nunlearn_retain = data/missing.jsonl\n"
        "unlearn_batch_size = 4\nunlearn_seed = 5\nunlearn_prompt = plain\n")
    pytester.makepyfile(test_settings=f"""
        def test_settings(unlearn):
            s = unlearn.settings
            assert s.forget == {str(cfg / "data" / "forget.jsonl")!r}
            assert s.retain == {str(pytester.path / "retain-here.jsonl")!r}
            assert (s.batch_size, s.seed, s.prompt, s.device) == (4, 11, "plain", "auto")
            assert len(unlearn.forget) == 8 and len(unlearn.retain) == 16
            assert unlearn.reference is None and unlearn.holdout is None
    """)
    result = pytester.runpytest("-c", "cfg/pytest.ini", "--rootdir", str(pytester.path), "test_settings.py",
                                "--unlearn-retain", "retain-here.jsonl", "--unlearn-seed", "11")
    result.assert_outcomes(passed=1)


def test_relative_model_and_data_paths_in_tests_start_from_the_rootdir(pytester, toy_world, monkeypatch):
    """`model=` / `data=` inside a test resolve like ini paths, from the rootdir, wherever
    pytest was started (here: from a sub-folder)."""
    ini(pytester, toy_world)
    (pytester.path / "models").mkdir()
    (pytester.path / "models" / "ref").symlink_to(toy_world["reference"], target_is_directory=True)
    (pytester.path / "data").mkdir()
    shutil.copy(toy_world["forget"], pytester.path / "data" / "forget.jsonl")
    tests = pytester.mkdir("tests")
    (tests / "test_relative.py").write_text(
        "from pytest_unlearn import assert_forgotten\n\n"
        "def test_relative(unlearn):\n"
        "    assert len(unlearn.data('data/forget.jsonl')) == 8\n"
        "    assert_forgotten('es', 0.3, model='models/ref', data='data/forget.jsonl')\n\n"
        "def test_missing():\n"
        "    assert_forgotten('es', 0.3, data='data/forgte.jsonl')\n")
    monkeypatch.chdir(tests)
    result = pytester.runpytest("test_relative.py", "--unlearn-no-cache")
    result.assert_outcomes(passed=1, failed=1)
    # the path is shown from where pytest runs, with the folder it is relative to
    result.stdout.fnmatch_lines([f"*DataError: ../data/forgte.jsonl: file not found (relative paths start from "
                                 f"{tests}); did you mean 'forget.jsonl'?*"])


def test_fixtures_load_models_and_data(pytester, toy_world):
    ini(pytester, toy_world, reference=toy_world["reference"], holdout=toy_world["holdout"])
    pytester.makepyfile("""
        def test_fixtures(unlearn, original_model, unlearned_model, reference_model,
                          forget_set, retain_set, holdout_set):
            assert original_model.name == "original" and unlearned_model.name == "unlearned"
            # the same checkpoint in two roles is loaded once and has one fingerprint
            assert reference_model.fingerprint == unlearned_model.fingerprint != original_model.fingerprint
            assert unlearn.original is original_model and unlearn.reference is reference_model
            assert (len(forget_set), len(retain_set), len(holdout_set)) == (8, 16, 8)
            result = unlearn.score("es", model=original_model, data=forget_set)
            assert list(result.values.index) == forget_set.ids and result.reduced > 0.9
            assert unlearn.score("es", reduce="max").reduced == unlearn.score("es").values.max()
    """)
    from pytest_unlearn import session

    before = session.frames()
    pytester.runpytest().assert_outcomes(passed=1)
    assert session.frames() == before  # the inner session cleaned up (suite, recorder and baseline store)


def test_missing_configuration_is_a_clean_error_naming_key_and_flag(pytester):
    pytester.makepyfile("""
        from pytest_unlearn import assert_forgotten

        def test_fixture(unlearned_model):
            pass

        def test_assertion():
            assert_forgotten("es", 0.1)

        def test_optional(reference_model):
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=2, failed=1)
    result.stdout.fnmatch_lines([
        "*no unlearned model configured: set `unlearn_model` in pytest.ini / pyproject.toml or pass "
        "--unlearn-model PATH*",
        "*no reference model (a model that never saw the forget set) configured*--unlearn-reference PATH*",
        "*ConfigError: no forget set configured: set `unlearn_forget` in pytest.ini / pyproject.toml or pass "
        "--unlearn-forget PATH*",
    ])
    out = result.stdout.str()
    assert "suite.py" not in out and "config.py" not in out  # no traceback from inside the library
    assert "During handling" not in out


def test_a_bad_ini_value_errors_only_where_used(pytester):
    pytester.makeini("[pytest]\nunlearn_batch_size = lots\n")
    pytester.makepyfile("""
        def test_unrelated():
            pass

        def test_uses(unlearn):
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*unlearn_batch_size / --unlearn-batch-size must be an integer, got 'lots'*"])


def test_p_no_unlearn_disables_the_plugin(pytester):
    pytester.makepyfile("def test_a(unlearn):\n    pass\n")
    result = pytester.runpytest("-p", "no:unlearn")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'unlearn' not found*"])
    assert pytester.runpytest("-p", "no:unlearn", "--unlearn-model", "x").ret == pytest.ExitCode.USAGE_ERROR


def test_importing_the_plugin_imports_nothing_heavy():
    code = ("import sys, pytest_unlearn.plugin\n"
            "from pytest_unlearn import assert_forgotten, assert_retained, Suite\n"
            "heavy = [m for m in ('torch', 'transformers', 'numpy', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_run_without_the_plugin_s_fixtures_pays_and_prints_nothing(pytester):
    pytester.makepyfile("""
        import sys

        def test_plain():
            assert "torch" not in sys.modules and "pandas" not in sys.modules
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    shown = [line for line in result.stdout.lines if not line.startswith("plugins:")]  # lists the dist
    assert not [line for line in shown if "unlearn" in line.lower()]
