"""A cold load of a model folder opens each safetensors shard once and hashes it from the same
mapping the weights come from (pytest_unlearn/models/shards.py); the fingerprint, its memo and
the loaded model are those of a load by path followed by hashing the files."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pathlib
import shutil
import struct
import sys
import threading

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn.errors import ModelLoadError  # noqa: E402
from pytest_unlearn.models import fingerprints, load_model, loading, shards  # noqa: E402
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer  # noqa: E402

TEXTS = ["The capital of France is Paris.", "Alice was born in Lyon in 1901."] * 5
FILES = (".safetensors",) + loading.SIDECAR_SUFFIXES


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_UNLEARN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One model saved as a single file and as shards of about 1.5 MB."""
    tokenizer = tiny_tokenizer(TEXTS, vocab_size=300)
    model = tiny_llama(tokenizer, hidden_size=128, intermediate_size=512, layers=4)
    root = tmp_path_factory.mktemp("saved")
    for name, kwargs in (("single", {}), ("sharded", {"max_shard_size": "1500KB"})):
        model.save_pretrained(root / name, **kwargs)
        tokenizer.save_pretrained(root / name)
    assert len(list((root / "sharded").glob("*.safetensors"))) >= 3
    return root


def copy_of(saved, name, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(saved / name, tmp_path / name))


def expected_fingerprint(folder: pathlib.Path, dtype: str = "torch.float32") -> str:
    """The folder fingerprint, reimplemented: sha256 over (relative name, sha256 of the file's
    bytes) of the weights and sidecars in name order, then the dtype."""
    digest = hashlib.sha256(f"{fingerprints.FINGERPRINT_VERSION}\0folder\0".encode())
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in FILES):
        digest.update(f"{path.name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\0".encode())
    digest.update(f"dtype\0{dtype}\0".encode())
    return digest.hexdigest()


class FileEvents:
    """inotify: how often each watched file is opened and read with read(2) (page faults of a
    memory mapping are not reads).  Closes are watched too, so that two opens in a row are
    not merged into one event."""

    IN_ACCESS, IN_CLOSE_NOWRITE, IN_OPEN = 0x1, 0x10, 0x20

    def __init__(self, paths):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.names = {}
        for path in paths:
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path),
                                             self.IN_ACCESS | self.IN_OPEN | self.IN_CLOSE_NOWRITE)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.names[wd] = pathlib.Path(path).name
        self.opens = dict.fromkeys(self.names.values(), 0)
        self.reads = dict.fromkeys(self.names.values(), 0)

    def collect(self):
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            pos = 0
            while pos < len(data):
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
                pos += 16 + length
                name = self.names.get(wd)
                if name is not None and mask & self.IN_OPEN:
                    self.opens[name] += 1
                if name is not None and mask & self.IN_ACCESS:
                    self.reads[name] += 1
        os.close(self.fd)
        return self


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts opens with Linux inotify")
def test_a_cold_load_opens_each_shard_once_and_never_reads_it_through_read(saved, tmp_path):
    """Loading by path and then hashing opened every shard twice (transformers' mapping, then
    the hash's read() calls); now one open and one mapping serve both."""
    folder = copy_of(saved, "sharded", tmp_path)
    weights = sorted(folder.glob("*.safetensors"))
    events = FileEvents(weights)
    handle = load_model(folder, device="cpu", dtype="float32")
    events.collect()
    assert events.opens == {p.name: 1 for p in weights}
    assert events.reads == {p.name: 0 for p in weights}
    assert handle.fingerprint == expected_fingerprint(folder)


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_the_fingerprint_is_the_one_the_files_hash_to(saved, tmp_path, layout):
    """Cache keys do not change: a mapped load's fingerprint is the files' fingerprint, cold, from
    the memo, and by the path-loading route (transformers opens the files, then they are hashed)."""
    folder = copy_of(saved, layout, tmp_path)
    cold = load_model(folder, device="cpu", dtype="float32").fingerprint
    assert cold == expected_fingerprint(folder)
    assert load_model(folder, device="cpu", dtype="float32").fingerprint == cold
    by_path = load_model(folder, device="cpu", dtype="float32", trust_remote_code=True)  # loaded by path
    assert by_path.fingerprint == cold
    assert load_model(folder, device="cpu", dtype="bfloat16").fingerprint == expected_fingerprint(
        folder, "torch.bfloat16")


def test_shard_digests_are_memoised_and_not_hashed_again(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprints, "MEMO_RACY_SECONDS", -1e9)  # memoise however recent
    folder = copy_of(saved, "sharded", tmp_path)
    hashed, real = [], shards.Shard.sha256
    monkeypatch.setattr(shards.Shard, "sha256", lambda self, stop=None: hashed.append(self.path.name)
                        or real(self, stop))
    first = load_model(folder, device="cpu", dtype="float32").fingerprint
    weights = sorted(folder.glob("*.safetensors"))
    assert sorted(hashed) == [p.name for p in weights]
    large = [p for p in weights if p.stat().st_size >= fingerprints.MEMO_MIN_SIZE]
    assert len(large) >= 2
    memo = json.loads((tmp_path / "cache" / "file-digests.json").read_text())
    for path in large:
        assert memo[str(path)]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    hashed.clear()
    assert load_model(folder, device="cpu", dtype="float32").fingerprint == first
    assert sorted(hashed) == [p.name for p in weights if p not in large]  # small files: every time


def test_a_hub_blob_named_by_its_sha256_is_mapped_but_not_hashed(saved, tmp_path, monkeypatch):
    snap = tmp_path / "models--org--tiny" / "snapshots" / ("a" * 40)
    blobs = tmp_path / "models--org--tiny" / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for path in (saved / "single").iterdir():
        blob = blobs / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy(path, blob)
        os.symlink(os.path.relpath(blob, snap), snap / path.name)
    hashed = []
    monkeypatch.setattr(shards.Shard, "sha256", lambda self, stop=None: hashed.append(self.path))
    assert load_model(snap, device="cpu", dtype="float32").fingerprint == expected_fingerprint(saved / "single")
    assert hashed == []


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", ["single", "sharded", "bf16 file", "no generation config"])
def test_the_mapped_model_is_the_model_loaded_by_path(saved, tmp_path, variant):
    folder = copy_of(saved, "sharded" if variant == "sharded" else "single", tmp_path)
    if variant == "bf16 file":
        model = loading._load_by_path(folder, torch.float32, False, False, True)
        shutil.rmtree(folder)
        model.to(torch.bfloat16).save_pretrained(folder)
        shutil.copy(saved / "single" / "tokenizer.json", folder)
        shutil.copy(saved / "single" / "tokenizer_config.json", folder)
    if variant == "no generation config":
        (folder / "generation_config.json").unlink()
    mapped = load_model(folder, device="cpu", dtype="float32").model
    by_path = loading._load_by_path(folder, torch.float32, False, False, True)
    a, b = state(mapped), state(by_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)
    assert mapped.config.to_dict() == by_path.config.to_dict()
    assert mapped.generation_config.to_dict() == by_path.generation_config.to_dict()
    assert type(mapped) is type(by_path) and not mapped.training


def test_changing_a_loaded_weight_in_place_leaves_the_file_untouched(saved, tmp_path):
    """The weights are views of a private (copy-on-write) mapping: attacks change them in place."""
    folder = copy_of(saved, "single", tmp_path)
    before = (folder / "model.safetensors").read_bytes()
    model = load_model(folder, device="cpu", dtype="float32").model
    weight = model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        weight.add_(1.0)
    assert (folder / "model.safetensors").read_bytes() == before
    again = load_model(folder, device="cpu", dtype="float32").model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(again + 1.0, weight)


def test_a_weight_written_while_the_shard_is_hashed_does_not_change_the_fingerprint(saved, tmp_path, monkeypatch):
    """The weights are copy-on-write views of the file: a write made while loading (here after
    from_pretrained, before the hash reads the page) reaches neither the file nor the digest."""
    from transformers import LlamaForCausalLM

    folder = copy_of(saved, "single", tmp_path)
    written, real_hash, real_load = threading.Event(), shards.Shard.sha256, LlamaForCausalLM.from_pretrained

    def late_hash(self, stop=None):
        assert written.wait(10)
        return real_hash(self, stop)

    def writing_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.0)
        written.set()
        return model

    monkeypatch.setattr(shards.Shard, "sha256", late_hash)
    monkeypatch.setattr(LlamaForCausalLM, "from_pretrained", writing_load)
    handle = load_model(folder, device="cpu", dtype="float32")
    assert handle.fingerprint == expected_fingerprint(folder)
    from safetensors.torch import load_file

    assert torch.equal(handle.model.lm_head.weight, -load_file(folder / "model.safetensors")["lm_head.weight"])


def test_a_failed_load_stops_the_hashing(saved, tmp_path, monkeypatch):
    folder = copy_of(saved, "single", tmp_path)
    started, outcome, real = threading.Event(), [], shards.Shard.sha256

    def slow_hash(self, stop=None):
        started.set()
        stop.wait(10)  # hash only once the load has failed
        try:
            return real(self, stop)
        except shards.HashingStopped:
            outcome.append("stopped")
            raise

    def failing(*args, **kwargs):
        started.wait(10)
        raise RuntimeError("size mismatch for lm_head.weight")

    monkeypatch.setattr(shards.Shard, "sha256", slow_hash)
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: failing()))
    with pytest.raises(ModelLoadError, match="cannot load the model: RuntimeError: size mismatch") as info:
        load_model(folder, device="cpu", dtype="float32")
    assert str(folder) in str(info.value)
    assert outcome == ["stopped"]


@pytest.mark.parametrize("damage", ["truncated", "header past the end", "offsets past the end"])
def test_a_damaged_shard_is_a_model_load_error(saved, tmp_path, damage):
    folder = copy_of(saved, "single", tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "header past the end":
        data = struct.pack("<Q", len(data)) + data[8:]
    else:
        header = json.loads(data[8:8 + size])
        name = next(k for k in header if k != "__metadata__")
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [start + 10**9, end + 10**9]
        text = json.dumps(header).encode().ljust(size)
        data = struct.pack("<Q", len(text)) + text + data[8 + size:]
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match="cannot load the model") as info:
        load_model(folder, device="cpu", dtype="float32")
    assert str(folder) in str(info.value)
