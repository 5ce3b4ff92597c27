"""Shared fixtures: a tiny unlearning scenario trained from scratch once per session."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory):
    """Keep the library's user-level caches (file digests, results) out of $HOME."""
    os.environ["PYTEST_UNLEARN_CACHE_DIR"] = str(tmp_path_factory.mktemp("unlearn-cache"))


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory):
    """Paths of a tiny scenario: forget/retain/holdout .jsonl, and model folders
    ``original`` (knows forget + retain) and ``reference`` (retain only)."""
    from pytest_unlearn.toy import build_toy_world

    return build_toy_world(tmp_path_factory.mktemp("toy-world"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests: on a shared 2-core machine this is many times
    faster than several threads competing.  Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def import_every_module() -> None:
    """Import every pytest_unlearn module (not ``__main__``, which runs the command line)."""
    import importlib
    import pkgutil

    import pytest_unlearn

    for info in pkgutil.walk_packages(pytest_unlearn.__path__, "pytest_unlearn."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - an optional dependency that is not installed
            pass


@pytest.fixture(scope="module")
def warm_plugin(toy_world):
    """pytester's in-process runs drop the modules first imported inside them, so a module whose
    tests run pytest in-process imports the package, and the transformers modules a model and
    generation need, out here, once (``_warm`` fixtures request this)."""
    from pytest_unlearn.prompts import dataset_parts
    from pytest_unlearn.suite import Suite

    import_every_module()
    suite = Suite.from_paths(original=toy_world["original"], forget=toy_world["forget"], cache_dir=None)
    suite.scorer.generate(suite.original, dataset_parts(suite.forget)[:1])
    suite.close()
