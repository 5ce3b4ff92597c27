"""Result cache integrity: atomic writes, corrupted entries recomputed, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pytest_unlearn.cache import ResultCache, cache_key, source_fingerprint


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"logprob": rng.normal(size=100), "lengths": np.arange(5), "text": np.array(["a", "bé"])}


def test_roundtrip_and_hit_counts(tmp_path):
    c = ResultCache(tmp_path)
    key = cache_key("stats", "fp", 1)
    assert c.get(key) is None
    c.put(key, _arrays())
    got = c.get(key)
    for k, v in _arrays().items():
        np.testing.assert_array_equal(got[k], v)
    assert (c.hits, c.misses) == (1, 1)


def test_key_depends_on_every_part():
    assert cache_key("a", 1) != cache_key("a", 2) != cache_key("b", 2)
    assert cache_key("a", {"x": 1, "y": 2}) == cache_key("a", {"y": 2, "x": 1})


def test_source_fingerprint_follows_the_code(tmp_path):
    """A model built by older code must not be reused: the fingerprint changes with any byte of
    the files it covers, and is stable otherwise."""
    script = tmp_path / "build.py"
    script.write_text("STEPS = 18\n")
    first = source_fingerprint("training", files=[script])
    assert first == source_fingerprint("training", files=[script])
    assert len(first) == 16 and int(first, 16) >= 0
    script.write_text("STEPS = 19\n")
    assert source_fingerprint("training", files=[script]) != first
    assert source_fingerprint("training") != source_fingerprint("forward")
    # a package counts with all its files: the methods package differs from its __init__ alone
    assert source_fingerprint("methods") != source_fingerprint(files=[_package_file("methods/__init__.py")])


def test_source_fingerprint_covers_every_file_of_a_package(tmp_path, monkeypatch):
    import pytest_unlearn.cache as cache

    package = tmp_path / "pkg"
    (package / "methods" / "sub").mkdir(parents=True)
    (package / "methods" / "__init__.py").write_text("")
    (package / "methods" / "sub" / "deep.py").write_text("A = 1\n")
    (package / "cache.py").write_text("")
    monkeypatch.setattr(cache, "__file__", str(package / "cache.py"))
    before = source_fingerprint("methods")
    (package / "methods" / "sub" / "deep.py").write_text("A = 2\n")
    assert source_fingerprint("methods") != before


def test_source_fingerprint_refuses_an_unknown_module():
    with pytest.raises(FileNotFoundError, match="no module 'trainig'"):
        source_fingerprint("trainig")


def _package_file(relative: str):
    from pathlib import Path

    import pytest_unlearn

    return Path(pytest_unlearn.__file__).parent / relative


def test_disabled_cache_neither_reads_nor_writes(tmp_path):
    c = ResultCache(None)
    c.put("k", _arrays())
    assert c.get("k") is None and not any(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_entry_is_detected_and_removed(tmp_path, damage):
    c = ResultCache(tmp_path)
    key = cache_key("x")
    c.put(key, _arrays())
    path = c._path(key)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        # change one byte of array payload (not the zip directory): checksum must catch it
        i = data.index(b"\x93NUMPY") + 200
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "garbage":
        path.write_bytes(b"not a cache entry")
    else:
        path.write_bytes(b"")
    assert c.get(key) is None
    assert not path.exists()
    c.put(key, _arrays())
    assert c.get(key) is not None


def test_pickled_object_arrays_are_never_loaded(tmp_path):
    c = ResultCache(tmp_path)
    key = cache_key("evil")
    path = c._path(key)
    path.parent.mkdir(parents=True)
    np.savez(path, x=np.array([object()], dtype=object), __checksum__=np.array("0"))
    assert c.get(key) is None


def _writer(root, seed, n):
    c = ResultCache(root)
    for i in range(n):
        c.put(cache_key("shared", i % 3), _arrays(seed))


def test_concurrent_writers_never_leave_a_broken_entry(tmp_path):
    procs = [mp.get_context("spawn").Process(target=_writer, args=(str(tmp_path), s, 30)) for s in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = ResultCache(tmp_path)
    for i in range(3):
        got = c.get(cache_key("shared", i))
        assert got is not None and len(got["logprob"]) == 100
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_killed_writer_leaves_no_partial_entry(tmp_path):
    """A process killed in the middle of a write leaves nothing that a reader could trust."""
    script = textwrap.dedent(f"""
        import numpy as np, os, signal
        from pytest_unlearn import cache as C
        real_replace = os.replace
        def die(*a):  # killed after writing the temporary file, before it is moved into place
            os.kill(os.getpid(), signal.SIGKILL)
        C.os.replace = die
        C.ResultCache({str(tmp_path)!r}).put(C.cache_key("k"), {{"x": np.arange(10**6)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    c = ResultCache(tmp_path)
    assert c.get(cache_key("k")) is None
    assert not list(tmp_path.rglob("*.npz")) or all(p.name.startswith(".tmp-") for p in tmp_path.rglob("*.npz"))


# ---------------------------------------------------------------- a cache that cannot be written

def test_a_cache_that_cannot_be_written_warns_once_and_runs_uncached(tmp_path):
    """A file where the cache folder should be (as root, chmod cannot make a folder read-only,
    but a file in the way fails every write the same way)."""
    from pytest_unlearn.errors import CacheWarning

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    c = ResultCache(blocker / "results")
    assert c.get(cache_key("x")) is None  # reading is a miss, not an error
    with pytest.warns(CacheWarning, match=r"cannot write the result cache in .*blocker/results: .*blocker is a file, "
                                          r"not a folder; running without the cache") as caught:
        c.put(cache_key("x"), _arrays())
        c.put(cache_key("y"), _arrays())  # no second warning
    assert len(caught) == 1
    assert not c.enabled and c.get(cache_key("x")) is None


def test_cache_clear_also_clears_the_file_digest_memo(pytester, monkeypatch, tmp_path):
    """`pytest --cache-clear` forgets the memoised checkpoint digests too."""
    monkeypatch.setenv("PYTEST_UNLEARN_CACHE_DIR", str(tmp_path / "user-cache"))
    from pytest_unlearn.models import fingerprints

    memo = fingerprints._memo_path()
    memo.parent.mkdir(parents=True)
    memo.write_text('{"/some/model.safetensors": {"key": [1, 2, 3, 4], "sha256": "stale"}}')
    pytester.makepyfile("def test_a():\n    pass\n")
    pytester.runpytest().assert_outcomes(passed=1)
    assert memo.exists()  # a plain run keeps it
    pytester.runpytest("--cache-clear").assert_outcomes(passed=1)
    assert not memo.exists()
