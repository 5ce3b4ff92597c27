"""Controls as the user meets them in a pytest run: a vacuous pass (the original never knew
the data) is shown in the terminal summary and as a warning, and an opt-in turns it into an
error; a failure shows what the attacked model produced and what to do next."""

from __future__ import annotations


import pytest


VACUOUS_SUITE = """
from pytest_unlearn import assert_forgotten

def test_gate_on_data_the_original_never_knew(unlearn):
    assert_forgotten("es", threshold=0.3, data=unlearn.settings.holdout)

def test_gate_on_the_forget_set():
    assert_forgotten("es", threshold=0.3)
"""


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""



def _ini(pytester, toy_world, extra=""):
    pytester.makeini(
        "[pytest]\n"
        f"unlearn_original = {toy_world['original']}\n"
        f"unlearn_model = {toy_world['reference']}\n"
        f"unlearn_forget = {toy_world['forget']}\n"
        f"unlearn_retain = {toy_world['retain']}\n"
        f"unlearn_holdout = {toy_world['holdout']}\n" + extra)


def test_a_vacuous_pass_is_shown_in_the_summary_and_warned(pytester, toy_world):
    _ini(pytester, toy_world)
    pytester.makepyfile(test_gate=VACUOUS_SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*unlearning summary*",
        "notes (a pass here shows little):",
        "*test_gate_on_data_the_original_never_knew: vacuous check: the original model scores * on holdout "
        "with no attack, already within the threshold 0.3000*",
    ])
    # as a pytest warning too, and only for the vacuous gate
    result.stdout.fnmatch_lines(["*warnings summary*", "*UnlearnWarning: vacuous check*"])
    assert "test_gate_on_the_forget_set: vacuous" not in result.stdout.str()


@pytest.mark.parametrize("how", ["flag", "ini"])
def test_strict_vacuous_turns_a_vacuous_pass_into_an_error(pytester, toy_world, how):
    _ini(pytester, toy_world, "unlearn_strict_vacuous = true\n" if how == "ini" else "")
    pytester.makepyfile(test_gate=VACUOUS_SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", *(["--unlearn-strict-vacuous"] if how == "flag" else []))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*VacuousCheckError: vacuous pass refused (unlearn_strict_vacuous / --unlearn-strict-vacuous): "
        "the original model scores * on holdout*",
        "*FAILED test_gate.py::test_gate_on_data_the_original_never_knew*",
    ])
