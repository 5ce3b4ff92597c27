"""The parent suite's hooks, reused: the models are built (or reused) in ``../.models/`` when
pytest starts, every test that takes ``candidate`` runs once per release candidate, one progress
line per test (see ``../conftest.py``); ``--expected-verdicts FILE`` checks the outcomes (the
``pytest_unlearn.expected_verdicts`` plugin)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("smollm2_suite_conftest", Path(__file__).resolve().parent.parent
                                               / "conftest.py")
_parent = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _parent  # its dataclass looks its module up
_spec.loader.exec_module(_parent)

pytest_plugins = ["pytest_unlearn.expected_verdicts"]

# pytest registers the hooks a conftest module holds: the parent's, under their own names
pytest_configure = _parent.pytest_configure
pytest_collection_finish = _parent.pytest_collection_finish
pytest_runtest_logstart = _parent.pytest_runtest_logstart
pytest_generate_tests = _parent.pytest_generate_tests
