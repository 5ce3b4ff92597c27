"""Content fingerprints of models, which key every cached result.

A model larger than one GPU is spread over the visible GPUs (CPU memory taking what does
not fit) with accelerate's ``device_map="auto"``: on request (``device="sharded"``), or with
``device="auto"`` on CUDA when its weights would take more than
:data:`DEVICE_MAP_FRACTION` of the GPU's free memory (:func:`needs_device_map`).

Hashing a multi-GB checkpoint on every run would be slow, so the digest of each large file is
memoised by (path, size, mtime, inode, ctime) in ``file-digests.json`` under the user cache dir
(``$PYTEST_UNLEARN_CACHE_DIR``, else ``~/.cache/pytest-unlearn``); the files not in the memo
are hashed in parallel threads (hashlib releases the GIL on large buffers).  A file in a Hugging
Face hub cache (``snapshots/<rev>/<name>``, a link to ``blobs/<sha256>``) is not read at all
when its blob's name is a sha256 (64 hex digits): the hub names a Git LFS file's blob by the
sha256 of its content and checks it on download.  A model folder's safetensors shards are
hashed from the mapping the loader builds the model from (:mod:`.shards`), so a cold load
reads each shard once; the digests are the same.  An in-memory model's fingerprint is
memoised while none of its tensors is replaced or changed in place (PyTorch's version counters).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterable, Mapping

from ..atomic import write_text_atomically
from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from .shards import Shard

FINGERPRINT_VERSION = "pytest-unlearn-fingerprint-v1"
CHUNK = 8 * 2**20
MEMO_MIN_SIZE = 2**20      # smaller files are hashed every time
MEMO_RACY_SECONDS = 2.0    # a file modified this recently may change again within one mtime tick
HASH_THREADS = 8           # files hashed at once (bounded by the number of files and of CPUs)
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --- fingerprints -------------------------------------------------------------------------

def _memo_path() -> pathlib.Path:
    root = os.environ.get("PYTEST_UNLEARN_CACHE_DIR")
    base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "pytest-unlearn"
    return base / "file-digests.json"


def _read_memo(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(path: pathlib.Path, updates: dict) -> None:
    """Merge ``updates`` into the memo file atomically; failures only cost speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        memo = _read_memo(path)
        memo.update(updates)
        write_text_atomically(path, json.dumps(memo), mode=0o600)
    except OSError:
        pass


def _sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def clear_digest_memo() -> None:
    """Forget every memoised file digest (``pytest --cache-clear`` calls this)."""
    try:
        _memo_path().unlink()
    except OSError:
        pass


def hub_blob_sha256(path: pathlib.Path) -> str | None:
    """The sha256 a Hugging Face hub cache already names ``path``'s content by, else ``None``.

    In the hub cache (``models--org--name/snapshots/<rev>/<file>``) every file is a link to
    ``blobs/<name>``, where ``<name>`` is the sha256 of the content for Git LFS files (the
    weights; the hub checks it on download) and the 40-digit git blob sha1 for small files.  Only
    a 64-hex-digit name of a regular file in a folder called ``blobs`` reached through a link
    is trusted; anything else is hashed."""
    path = pathlib.Path(path)
    try:
        if not path.is_symlink() and not any(parent.is_symlink() for parent in path.parents):
            return None
        real = path.resolve(strict=True)
        if not real.is_file():
            return None
    except (OSError, RuntimeError):
        return None
    if real.parent.name != "blobs" or not _HEX64.fullmatch(real.name):
        return None
    return real.name


def _hash_threads(n: int) -> int:
    return max(1, min(n, HASH_THREADS, os.cpu_count() or 1))


def _file_digests(paths: Iterable[pathlib.Path], mapped: Mapping[str, "Shard"] | None = None,
                  stop: threading.Event | None = None) -> dict[str, str]:
    """sha256 of each file, memoised for large files by (path, size, mtime_ns, inode, ctime_ns).

    The ctime is in the key (as in git's index) because an in-place overwrite that restores
    size and mtime (``cp -p``, ``rsync -t``, ``touch -r``) cannot restore it: the kernel sets
    it on every write and every metadata change.  A hub cache blob named by its sha256 is not
    read (:func:`hub_blob_sha256`); the files left are hashed in parallel threads.  A file in
    ``mapped`` (absolute path -> :class:`~.shards.Shard`, opened once by the loader) is hashed
    from its mapping, keyed by the status of the file mapped, and the hashing gives up with
    :class:`~.shards.HashingStopped` once ``stop`` is set."""
    mapped = mapped or {}
    memo_file = _memo_path()
    memo = None
    result: dict[str, str] = {}
    todo: list[tuple[pathlib.Path, object]] = []  # (path, stat of a large file or None)
    for path in paths:
        path = pathlib.Path(path).absolute()
        named = hub_blob_sha256(path)
        if named is not None:
            result[str(path)] = named
            continue
        try:
            st = mapped[str(path)].stat if str(path) in mapped else path.stat()
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read file: {exc}") from exc
        if st.st_size < MEMO_MIN_SIZE:
            todo.append((path, None))
            continue
        if memo is None:
            memo = _read_memo(memo_file)
        entry = memo.get(str(path))
        if (isinstance(entry, dict) and entry.get("key") == _memo_key(st)
                and isinstance(entry.get("sha256"), str)):
            result[str(path)] = entry["sha256"]
            continue
        todo.append((path, st))

    def digest_of(path: pathlib.Path) -> str:
        if str(path) in mapped:
            return mapped[str(path)].sha256(stop)
        try:
            return _sha256_file(path)
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read file: {exc}") from exc

    threads = _hash_threads(sum(st is not None for _, st in todo))
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pytest-unlearn-sha256") as pool:
            digests = list(pool.map(digest_of, [path for path, _ in todo]))
    else:
        digests = [digest_of(path) for path, _ in todo]
    updates = {}
    for (path, st), digest in zip(todo, digests):
        result[str(path)] = digest
        if st is not None and time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > MEMO_RACY_SECONDS:
            updates[str(path)] = {"key": _memo_key(st), "sha256": digest}
    if updates:
        _write_memo(memo_file, updates)
    return result


def _memo_key(st) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _combine(kind: str, parts: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}\0{kind}\0".encode())
    for label, value in parts:
        digest.update(f"{label}\0{value}\0".encode())
    return digest.hexdigest()


def _files_fingerprint(kind: str, root: pathlib.Path, files: Iterable[pathlib.Path],
                       extra: Iterable[tuple[str, str]] = (), mapped: Mapping[str, "Shard"] | None = None,
                       stop: threading.Event | None = None) -> str:
    """Content fingerprint of ``files`` (named relative to ``root``, so copies agree); files in
    ``mapped`` are hashed from their mapping (:func:`_file_digests`)."""
    digests = _file_digests(files, mapped, stop)
    parts = sorted((os.path.relpath(p, root.absolute()), d) for p, d in digests.items())
    return _combine(kind, [*parts, *extra])


def _tokenizer_signature(tokenizer) -> bytes:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    template = getattr(tokenizer, "chat_template", None)
    specials = {k: str(getattr(tokenizer, k, None)) for k in
                ("bos_token", "eos_token", "pad_token", "unk_token", "padding_side")}
    digest.update(json.dumps([type(tokenizer).__name__, template, specials, len(tokenizer)],
                             sort_keys=True, default=str).encode())
    return digest.digest()


_WEIGHTS_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_WEIGHTS_MEMO_LOCK = threading.Lock()


def _tensors_signature(model) -> tuple | None:
    """Identity of every parameter's and buffer's storage and content version: unchanged while
    no tensor is replaced, reallocated or changed in place (each in-place op bumps the version
    counter, also under ``no_grad``); ``None`` when a tensor has no version counter (made
    under ``inference_mode``), which disables the memo."""
    try:
        return tuple((name, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device))
                     for name, t in model.state_dict(keep_vars=True).items())
    except (RuntimeError, AttributeError):
        return None


def weights_fingerprint(model, tokenizer=None) -> str:
    """Deterministic hash of parameter names, shapes, dtypes and bytes (and the tokenizer).

    The hash state after the weights is memoised per model object while
    :func:`_tensors_signature` is unchanged, so wrapping the same in-memory model again does
    not read every weight again (the fingerprint is the same as without the memo).  An
    in-place change through ``tensor.data`` bypasses the version counter; change weights
    through the parameters themselves, as optimizers do."""
    signature = _tensors_signature(model)
    state = None
    if signature is not None:
        with _WEIGHTS_MEMO_LOCK:
            try:
                entry = _WEIGHTS_MEMO.get(model)
            except TypeError:  # not weak-referenceable
                entry = None
        if entry is not None and entry[0] == signature:
            state = entry[1]
    if state is None:
        state = _hash_weights(model)
        if signature is not None:
            with _WEIGHTS_MEMO_LOCK:
                try:
                    _WEIGHTS_MEMO[model] = (signature, state)
                except TypeError:
                    pass
    digest = state.copy()
    if tokenizer is not None:
        digest.update(_tokenizer_signature(tokenizer))
    return digest.hexdigest()


def _hash_weights(model):
    """The sha256 state after every tensor's name, shape, dtype and bytes."""
    import torch

    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}\0memory\0".encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel():
                digest.update(flat.contiguous().cpu().view(torch.uint8).numpy().data)
    return digest
