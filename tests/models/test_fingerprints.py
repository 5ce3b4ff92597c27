"""Fingerprints of large checkpoints: parallel hashing, hub cache blobs named by their sha256,
and the memo of an in-memory model's fingerprint."""

from __future__ import annotations

import copy
import hashlib
import os
import threading

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import models  # noqa: E402
from pytest_unlearn.models import fingerprints  # noqa: E402
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer  # noqa: E402

TEXTS = ["The capital of France is Paris.", "Alice was born in Lyon in 1901."] * 5


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_UNLEARN_CACHE_DIR", str(tmp_path / "cache"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spy_reads(monkeypatch) -> list:
    """Record every file the digest code reads."""
    read, real = [], fingerprints._sha256_file

    def recording(path):
        read.append(os.path.realpath(path))
        return real(path)

    monkeypatch.setattr(fingerprints, "_sha256_file", recording)
    return read


def hub_snapshot(root, files: dict[str, bytes], blob_name=None):
    """A Hugging Face hub cache layout: snapshots/<rev>/<file> -> ../../blobs/<name>."""
    repo = root / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / ("a" * 40)
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = blobs / (blob_name(name, data) if blob_name else sha256(data))
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)
    return snap


def test_a_hub_blob_named_by_its_sha256_is_not_read(tmp_path, monkeypatch):
    data = {"model.safetensors": os.urandom(3 * 2**20), "config.json": b'{"model_type": "llama"}'}
    snap = hub_snapshot(tmp_path / "hub", data)
    plain = tmp_path / "plain"
    plain.mkdir()
    for name, content in data.items():
        (plain / name).write_bytes(content)
    read = spy_reads(monkeypatch)
    digests = fingerprints._file_digests([snap / n for n in data])
    assert read == []  # neither file was opened: both blob names are sha256s
    assert digests == {str(snap / n): sha256(c) for n, c in data.items()}
    # the same content outside the hub cache, hashed, has the same fingerprint
    assert (fingerprints._files_fingerprint("folder", snap, [snap / n for n in data])
            == fingerprints._files_fingerprint("folder", plain, [plain / n for n in data]))


@pytest.mark.parametrize("blob_name", [
    lambda name, data: hashlib.sha1(data).hexdigest(),            # git blob (non-LFS): 40 digits
    lambda name, data: sha256(data).upper(),                      # not the hub's lower-case hex
    lambda name, data: sha256(data)[:-1] + "g",                   # not hex
    lambda name, data: sha256(data) + ".incomplete",              # an interrupted download
])
def test_other_blob_names_are_hashed(tmp_path, monkeypatch, blob_name):
    data = {"model.safetensors": os.urandom(2**20 + 7)}
    snap = hub_snapshot(tmp_path / "hub", data, blob_name)
    read = spy_reads(monkeypatch)
    digests = fingerprints._file_digests([snap / "model.safetensors"])
    assert digests[str(snap / "model.safetensors")] == sha256(data["model.safetensors"])
    assert len(read) == 1


def test_a_file_named_like_a_sha256_outside_a_hub_cache_is_hashed(tmp_path, monkeypatch):
    """A 64-hex name is trusted only in a folder called blobs, reached through a link."""
    content = os.urandom(2**20)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    direct = blobs / ("0" * 64)  # a wrong name, opened directly (no snapshot link)
    direct.write_bytes(content)
    other = tmp_path / "elsewhere"
    other.mkdir()
    linked = other / ("1" * 64)
    linked.write_bytes(content)
    os.symlink(linked, tmp_path / "link.safetensors")  # a link, but not into blobs/
    read = spy_reads(monkeypatch)
    digests = fingerprints._file_digests([direct, tmp_path / "link.safetensors"])
    assert set(digests.values()) == {sha256(content)}
    assert len(read) == 2


def test_large_files_are_hashed_in_parallel_threads(tmp_path, monkeypatch):
    """Two shards are hashed at once: each waits at a barrier for the other (a sequential
    loop would break the barrier), and the digests are those of a sequential hash."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    shards = []
    for i in range(4):
        shard = tmp_path / f"model-{i:05d}-of-00004.safetensors"
        shard.write_bytes(os.urandom(fingerprints.MEMO_MIN_SIZE + i))
        shards.append(shard)
    barrier, threads, real = threading.Barrier(2, timeout=10), set(), fingerprints._sha256_file

    def meeting(path):
        threads.add(threading.get_ident())
        barrier.wait()
        return real(path)

    monkeypatch.setattr(fingerprints, "_sha256_file", meeting)
    digests = fingerprints._file_digests(shards)
    assert digests == {str(s): sha256(s.read_bytes()) for s in shards}
    assert len(threads) >= 2 and threading.get_ident() not in threads


def test_one_file_is_hashed_in_the_calling_thread(tmp_path, monkeypatch):
    big = tmp_path / "model.safetensors"
    big.write_bytes(os.urandom(fingerprints.MEMO_MIN_SIZE))
    threads, real = [], fingerprints._sha256_file
    monkeypatch.setattr(fingerprints, "_sha256_file", lambda p: threads.append(threading.get_ident()) or real(p))
    fingerprints._file_digests([big])
    assert threads == [threading.get_ident()]


def test_an_unreadable_shard_is_a_model_load_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    shards = [tmp_path / f"s{i}.safetensors" for i in range(3)]
    for s in shards:
        s.write_bytes(os.urandom(fingerprints.MEMO_MIN_SIZE))

    def fails(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fingerprints, "_sha256_file", fails)
    with pytest.raises(models.ModelLoadError, match="cannot read file"):
        fingerprints._file_digests(shards)


# --- in-memory models -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    tokenizer = tiny_tokenizer(TEXTS, vocab_size=300)
    return tokenizer, tiny_llama(tokenizer)


def count_hashes(monkeypatch) -> list:
    calls, real = [], fingerprints._hash_weights
    monkeypatch.setattr(fingerprints, "_hash_weights", lambda model: calls.append(model) or real(model))
    return calls


def test_an_in_memory_models_fingerprint_is_memoised(tiny, monkeypatch):
    tokenizer, base = tiny
    model = copy.deepcopy(base)
    calls = count_hashes(monkeypatch)
    first = models.handle_from_objects(model, tokenizer).fingerprint
    again = models.handle_from_objects(model, tokenizer, name="original").fingerprint
    assert again == first and len(calls) == 1
    # the memo keeps the tokenizer apart: another tokenizer, another fingerprint, no re-read
    other = tiny_tokenizer(TEXTS[:1], vocab_size=290)
    assert models.weights_fingerprint(model, other) != first and len(calls) == 1
    # an equal copy is another object: hashed once, same fingerprint
    assert models.weights_fingerprint(copy.deepcopy(model), tokenizer) == first and len(calls) == 2


def test_an_in_place_change_invalidates_the_memo(tiny, monkeypatch):
    tokenizer, base = tiny
    model = copy.deepcopy(base)
    first = models.weights_fingerprint(model, tokenizer)
    calls = count_hashes(monkeypatch)
    weight = model.model.layers[0].mlp.up_proj.weight
    saved = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] += 1.0  # through a view of the parameter
    changed = models.weights_fingerprint(model, tokenizer)
    assert changed != first and len(calls) == 1
    with torch.no_grad():
        weight[0, 0] = saved
    assert models.weights_fingerprint(model, tokenizer) == first and len(calls) == 2
    # a replaced tensor (same values) is re-read too
    weight.data = weight.data.clone()
    assert models.weights_fingerprint(model, tokenizer) == first and len(calls) == 3
    # a trained model (an optimizer step) is re-read
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    assert models.weights_fingerprint(model, tokenizer) != first and len(calls) == 4


def test_the_memoised_fingerprint_equals_a_fresh_hash(tiny):
    """Independent reimplementation: sha256 over (name, shape, dtype, bytes) of the state dict."""
    tokenizer, base = tiny
    model = copy.deepcopy(base)
    digest = hashlib.sha256(f"{fingerprints.FINGERPRINT_VERSION}\0memory\0".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert models.weights_fingerprint(model) == digest.hexdigest()
    assert models.weights_fingerprint(model) == digest.hexdigest()  # from the memo


def test_inference_mode_weights_are_hashed_every_time(tiny, monkeypatch):
    tokenizer, base = tiny
    with torch.inference_mode():
        model = copy.deepcopy(base)
        for p in model.parameters():
            p.data = p.data.clone()
    calls = count_hashes(monkeypatch)
    first = models.weights_fingerprint(model, tokenizer)
    assert models.weights_fingerprint(model, tokenizer) == first and len(calls) == 2


def test_the_fingerprint_with_a_tokenizer_is_the_unmemoised_one(tiny):
    """The memo changes no fingerprint: weights, then the tokenizer's signature, in one stream."""
    tokenizer, base = tiny
    model = copy.deepcopy(base)
    digest = hashlib.sha256(f"{fingerprints.FINGERPRINT_VERSION}\0memory\0".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(fingerprints._tokenizer_signature(tokenizer))
    assert models.weights_fingerprint(model, tokenizer) == digest.hexdigest()
    assert models.weights_fingerprint(model, tokenizer) == digest.hexdigest()
