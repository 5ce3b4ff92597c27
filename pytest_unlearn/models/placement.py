"""Placement planned once: which GPU each model of a suite (model, original, working copy,
reference) goes to, from the checkpoints' sizes and the GPUs' free memory."""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

from .devices import DEVICE_MAP_FRACTION, _free_gpu_bytes, weights_bytes

if TYPE_CHECKING:
    import torch


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
