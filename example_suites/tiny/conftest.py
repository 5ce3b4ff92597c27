"""Fixtures of the tiny example suite: the models are built (or reused) when pytest starts,
and every test that takes ``candidate`` runs once per release candidate.

``--expected-verdicts FILE`` (the ``pytest_unlearn.expected_verdicts`` plugin, enabled below)
compares each test's outcome with the JSON map in FILE (test id -> "passed" / "failed") at the
end of the run, prints the comparison and makes the exit status 0 exactly when every outcome is
the expected one: the suite demonstrates failing gates, and a demo run passes when they fail
where they should.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

pytest_plugins = ["pytest_unlearn.expected_verdicts"]


def _build_module():
    spec = importlib.util.spec_from_file_location("tiny_build_models", HERE / "build_models.py")
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


# "retrain" is the reference model: retraining without the forget set is exact unlearning.
CANDIDATES = [Candidate("retrain", BUILD.MODELS / "reference",
                        "retrained from scratch on the retain facts only (exact unlearning)")]
CANDIDATES += [Candidate(name, BUILD.MODELS / "candidates" / name, cfg["about"])
               for name, cfg in BUILD.CANDIDATES.items()]


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # under pytest-xdist the controller builds, once
        BUILD.build(quiet=True)


def pytest_generate_tests(metafunc):
    if "candidate" in metafunc.fixturenames:
        metafunc.parametrize("candidate", CANDIDATES, ids=[c.name for c in CANDIDATES])
