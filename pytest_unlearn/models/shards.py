"""Safetensors weight shards read once: hashed for the fingerprint and loaded from one mapping.

A model folder's fingerprint hashes its files (:mod:`.fingerprints`).  Loading the folder by
path and hashing it afterwards opens every weight file twice: transformers maps it to build the
model, then the hash reads it again through ``read()``.  :func:`load_mapped` opens each shard
transformers would load (``model.safetensors``, or the files named in
``model.safetensors.index.json``) once and maps it privately (copy-on-write, as transformers'
own loader maps it).  The fingerprint's sha256 of a shard not yet known (not in the digest memo,
not a hub blob named by its sha256) is computed over the mapped bytes in background threads
while ``from_pretrained`` builds the model from tensors that are views of the same mapping
(``state_dict=``).  So each byte of a shard is read from the file once, never copied through
``read()``; a checkpoint loaded in its own dtype on the CPU keeps its weights in the mapping, as
transformers does (writes to a weight copy the page, never touch the file).  The fingerprint is
the one the files hash to: the same digests, combined the same way, memoised the same way.

Loaded by path instead, then hashed (:class:`NotMappable`): a model spread with a device map,
``trust_remote_code`` (model or generation code from the checkpoint), a quantized checkpoint
(``quantization_config``), pickle weights, a folder without ``model.safetensors`` or its index,
a model type without a built-in causal LM class, and a tensor dtype torch cannot view.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import pathlib
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

from .fingerprints import CHUNK, _files_fingerprint

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
#: safetensors dtype -> (torch dtype name, bytes per element)
DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
          "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
          "U8": ("uint8", 1), "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1),
          "F8_E5M2": ("float8_e5m2", 1), "U16": ("uint16", 2), "U32": ("uint32", 4), "U64": ("uint64", 8)}


class NotMappable(Exception):
    """This folder is loaded by path (transformers opens the files) and hashed afterwards."""


class HashingStopped(Exception):
    """The load failed, so the fingerprint is not needed."""


class Shard:
    """One safetensors file, opened once: its tensors, views of a private (copy-on-write)
    mapping, and its sha256, read through a read-only mapping of the same open file.  Both
    mappings share the page cache's pages, so the file is read from disk once; the hash does not
    see a write the loader makes to a weight (that goes to a private copy of the page)."""

    def __init__(self, path):
        self.path = pathlib.Path(path).absolute()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self.stat = os.fstat(fd)  # the file mapped, for the digest memo's key
            if self.stat.st_size < 8:
                raise ValueError(f"{self.path.name}: not a safetensors file ({self.stat.st_size} bytes)")
            self.buffer = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
            self.pristine = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.header, self.data_start = _parse_header(self.path.name, self.pristine)

    def tensors(self) -> dict:
        """Every tensor of the file as a view of the mapping (a copy only where an old writer left
        a tensor unaligned for its dtype)."""
        import torch

        out = {}
        for name, info in self.header.items():
            dtype = getattr(torch, DTYPES[info["dtype"]][0])
            shape = [int(d) for d in info["shape"]]
            numel = math.prod(shape)
            offset = self.data_start + int(info["data_offsets"][0])
            if numel == 0:
                out[name] = torch.empty(shape, dtype=dtype)
                continue
            tensor = torch.frombuffer(self.buffer, dtype=dtype, count=numel, offset=offset).view(shape)
            out[name] = tensor.clone() if offset % tensor.element_size() else tensor
        return out

    def sha256(self, stop: threading.Event | None = None) -> str:
        """sha256 of the file's bytes, read from the read-only mapping (hashlib releases the
        GIL); each hashed chunk is unmapped from it again (``MADV_DONTNEED``: the pages stay in
        the page cache for the weights' mapping), so the hash does not count twice in the
        process's resident memory."""
        digest = hashlib.sha256()
        view = memoryview(self.pristine)
        release = getattr(mmap, "MADV_DONTNEED", None)
        try:
            for start in range(0, len(view), CHUNK):
                if stop is not None and stop.is_set():
                    raise HashingStopped(str(self.path))
                digest.update(view[start:start + CHUNK])
                if release is not None:
                    self.pristine.madvise(release, start, min(CHUNK, len(view) - start))
        finally:
            view.release()
        return digest.hexdigest()


def _parse_header(name: str, buffer) -> tuple[dict, int]:
    """The tensors of a safetensors header (``__metadata__`` left out), checked against the
    file's size, and where the data starts; ``NotMappable`` for a dtype torch has no view of."""
    import torch

    (size,) = struct.unpack("<Q", buffer[:8])
    if size > min(MAX_HEADER, len(buffer) - 8):
        raise ValueError(f"{name}: not a safetensors file (header of {size} bytes in a file of {len(buffer)})")
    try:
        header = json.loads(bytes(buffer[8:8 + size]))
    except ValueError as exc:
        raise ValueError(f"{name}: not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{name}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    data_len = len(buffer) - 8 - size
    for key, info in header.items():
        try:
            kind = info["dtype"]
            start, end = (int(x) for x in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{name}: tensor {key!r} has a malformed header entry") from exc
        if any(d < 0 for d in shape):
            raise ValueError(f"{name}: tensor {key!r} has a negative dimension")
        numel = math.prod(shape)
        if kind not in DTYPES or not hasattr(torch, DTYPES[kind][0]):
            raise NotMappable(f"{name}: tensor {key!r} has dtype {kind}")
        if not 0 <= start <= end <= data_len or end - start != numel * DTYPES[kind][1]:
            raise ValueError(f"{name}: tensor {key!r} does not fit the file (offsets {start}..{end}, "
                             f"{data_len} bytes of data)")
    return header, 8 + size


def shard_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The safetensors files ``from_pretrained`` loads from ``folder``: those its index names,
    else ``model.safetensors``."""
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NotMappable(f"{index}: unreadable index") from exc
        return [folder / name for name in names]
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    raise NotMappable(f"{folder}: no {SINGLE} nor {INDEX}")


def _model_class(config):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        from transformers.models.auto.auto_factory import _get_model_class

        return _get_model_class(config, MODEL_FOR_CAUSAL_LM_MAPPING)
    except (ImportError, KeyError) as exc:
        raise NotMappable(f"no built-in causal LM class for {type(config).__name__}") from exc


def _generation_config(folder: pathlib.Path):
    """The generation config ``from_pretrained`` would read: ``generation_config.json``, else
    derived from ``config.json``."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(folder))
    except OSError:
        return GenerationConfig.from_pretrained(str(folder), config_file_name="config.json",
                                                _from_model_config=True)


def load_mapped(folder: pathlib.Path, dtype_kwarg: dict, hashed_files, extra) -> tuple[object, str]:
    """``(model, fingerprint)`` of a Hugging Face model folder, every shard opened and read once
    (see the module docstring); the fingerprint is ``_files_fingerprint("folder", folder,
    hashed_files, extra)``.  Raises :class:`NotMappable` before reading any weight when the
    folder is to be loaded by path; any other error is the load's."""
    from transformers import AutoConfig

    files = shard_files(folder)
    config = AutoConfig.from_pretrained(str(folder))
    if getattr(config, "quantization_config", None) is not None:
        raise NotMappable(f"{folder}: quantized checkpoint")
    model_class = _model_class(config)
    generation_config = _generation_config(folder) if model_class.can_generate() else None
    shards = [Shard(path) for path in files]
    state_dict = {}
    for shard in shards:
        state_dict.update(shard.tensors())
    mapped = {str(shard.path): shard for shard in shards}
    del shards
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pytest-unlearn-fingerprint") as pool:
        job = pool.submit(_files_fingerprint, "folder", folder, hashed_files, extra, mapped=mapped, stop=stop)
        del mapped
        try:
            model = model_class.from_pretrained(None, config=config, state_dict=state_dict, **dtype_kwarg)
        except BaseException:
            stop.set()  # the fingerprint is not needed: stop hashing, then raise the load's error
            raise
        finally:
            del state_dict
        fingerprint = job.result()
    model.config.name_or_path = str(folder)  # as a load by path sets it
    if generation_config is not None:
        model.generation_config = generation_config
    return model, fingerprint
