"""Fixtures of the SmolLM2 example suite: the models are built (or reused) when pytest starts,
and every test that takes ``candidate`` runs once per release candidate (the multiple-choice
suite in ``multiple_choice/``, which reuses these hooks, has candidates of its own besides:
``build_models.MC_CANDIDATES``, built only when that suite runs).

``--expected-verdicts FILE`` (the ``pytest_unlearn.expected_verdicts`` plugin, enabled below)
compares each test's outcome with the JSON map in FILE (test id -> "passed" / "failed") at the
end of the run, prints the comparison and makes the exit status 0 exactly when every outcome is
the expected one: the suite demonstrates failing gates, and a demo run passes when they fail
where they should.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytest_plugins = ["pytest_unlearn.expected_verdicts"]


def _build_module():
    spec = importlib.util.spec_from_file_location("smollm2_build_models", HERE / "build_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_module()


@dataclass(frozen=True)
class Candidate:
    name: str
    path: Path
    about: str

    def __str__(self) -> str:
        return self.name


def candidates(suite: str = "main") -> list[Candidate]:
    """The release candidates of ``suite`` (``main``, or ``multiple_choice``: its own besides).
    "retrain" is the reference model: fine-tuning without the forget set is exact unlearning."""
    out = [Candidate("retrain", BUILD.MODELS / "reference", "fine-tuned on the retain facts only (exact unlearning)")]
    return out + [Candidate(name, BUILD.MODELS / "candidates" / name, cfg["about"])
                  for name, cfg in BUILD.candidates_of(suite).items()]


CANDIDATES = candidates("main")


def suite_of(config) -> str:
    """``multiple_choice`` when pytest runs the suite in ``multiple_choice/`` (its pytest.ini),
    else ``main``."""
    inipath = getattr(config, "inipath", None)
    return "multiple_choice" if inipath is not None and Path(inipath).parent.name == "multiple_choice" else "main"


def pytest_configure(config):
    import torch

    torch.set_num_threads(BUILD.choose_threads(None))  # $UNLEARN_THREADS, else the default
    if not hasattr(config, "workerinput"):  # under pytest-xdist the controller builds, once
        BUILD.build(quiet=True, suite=suite_of(config))


# ---------------------------------------------------------------- progress

_CLOCK: dict = {}     # start time, number of tests, tests started
_REPORTER: dict = {}  # the terminal reporter (not on xdist workers)


def pytest_collection_finish(session):
    _CLOCK.update(start=time.perf_counter(), total=len(session.items), index=0)
    if not hasattr(session.config, "workerinput"):
        _REPORTER["tr"] = session.config.pluginmanager.get_plugin("terminalreporter")


@pytest.hookimpl(tryfirst=True)  # before pytest's own line for the test (under -v)
def pytest_runtest_logstart(nodeid, location):
    """One line per test: which one, how far the run is, and what the slow step is."""
    tr = _REPORTER.get("tr")
    if tr is None or "start" not in _CLOCK:
        return
    _CLOCK["index"] += 1
    elapsed = BUILD.duration(time.perf_counter() - _CLOCK["start"])
    note = ("; relearning trains each model not yet attacked (the candidate, the original, the reference), "
            "the slowest step of the suite" if "under_attack" in nodeid else "")
    tr.write_line(f"[suite {time.strftime('%H:%M:%S')}] test {_CLOCK['index']} of {_CLOCK['total']}, "
                  f"{elapsed} so far{note}")



def pytest_generate_tests(metafunc):
    if "candidate" in metafunc.fixturenames:
        chosen = candidates(suite_of(metafunc.config))
        metafunc.parametrize("candidate", chosen, ids=[c.name for c in chosen])
