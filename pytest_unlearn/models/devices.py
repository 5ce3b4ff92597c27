"""Devices and dtypes: resolving ``unlearn_device`` / ``unlearn_dtype``, and spreading a model
larger than one GPU over the visible GPUs with accelerate's ``device_map="auto"`` (on request,
``device="sharded"``, or with ``device="auto"`` on CUDA when its weights would take more than
:data:`DEVICE_MAP_FRACTION` of the GPU's free memory, :func:`needs_device_map`)."""

from __future__ import annotations

import json
import pathlib
import struct
from typing import TYPE_CHECKING, Iterable

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_MAP_FRACTION = 0.9  # device="auto" spreads a model whose weights exceed this share of a GPU's free memory
DEVICE_SPECS = "auto, cpu, cuda, cuda:N or sharded"
ONE_DEVICE_HINT = ("load the model on one device (unlearn_device / --unlearn-device cuda:N or cpu, "
                   "with a smaller unlearn_dtype if it does not fit)")


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
