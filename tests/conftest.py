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
