"""The ``quantize`` attack: round the weights to 4 or 8 bits and back, score, restore.

Quantize-dequantize every ``Linear`` weight of the decoder layers (embeddings and the LM
head stay, unless ``include_head``), by group-wise symmetric round-to-nearest
(:func:`rtn_quantize`), NormalFloat-4 (:func:`nf4_quantize`) or the bitsandbytes kernels.
The weights change in place and are put back bit for bit (:mod:`.snapshot`); outcomes are
kept in the session memo and the result cache (:mod:`.session_memo`).  Under ``torchrun``
rank 0 alone quantizes and every rank receives its quantized weights before scoring.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from .. import distributed
from ..errors import AttackError
from .base import Attack, AttackContext, AttackOutcome, register_attack
from .params import Param, as_bool, as_choice, as_int
from .session_memo import _cached, _outcome_key, _store
from .snapshot import WeightSnapshot, derived_fingerprint

if TYPE_CHECKING:
    import torch

    from ..models import ModelHandle

NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
            0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
NF4_BLOCK = 64


# ---------------------------------------------------------------- quantizers (pure functions)

def rtn_quantize(weight: "torch.Tensor", bits: int, group_size: int, *, return_scale: bool = False):
    """Symmetric round-to-nearest, one scale per ``group_size`` consecutive inputs of each row.

    ``scale = absmax / (2**(bits-1) - 1)``; the dequantized weight differs from the
    original by at most ``scale / 2`` per element.  Same shape and dtype as ``weight``.
    """
    import torch

    w = weight.detach().float()
    rows = w.reshape(-1, w.shape[-1]) if w.dim() > 1 else w.reshape(1, -1)
    n = rows.shape[1]
    pad = (-n) % group_size
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    groups = rows.reshape(rows.shape[0], -1, group_size)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    deq = torch.clamp(torch.round(groups / safe), -qmax, qmax) * scale
    out = deq.reshape(rows.shape)[:, :n].reshape(weight.shape).to(weight.dtype)
    if return_scale:
        return out, scale.expand_as(groups).reshape(rows.shape)[:, :n].reshape(weight.shape)
    return out


def nf4_quantize(weight: "torch.Tensor", block: int = NF4_BLOCK) -> "torch.Tensor":
    """NormalFloat-4 (QLoRA): blockwise absmax over the flattened tensor, each value
    rounded to the nearest of the 16 NF4 levels."""
    import torch

    flat = weight.detach().float().reshape(-1)
    n = flat.numel()
    pad = (-n) % block
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.reshape(-1, block)
    absmax = blocks.abs().amax(-1, keepdim=True)
    normed = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    code = torch.tensor(NF4_CODE, device=flat.device)
    mids = (code[1:] + code[:-1]) / 2
    deq = code[torch.bucketize(normed, mids)] * absmax
    return deq.reshape(-1)[:n].reshape(weight.shape).to(weight.dtype)


def _bnb_quantize(weight: "torch.Tensor", bits: int, method: str) -> "torch.Tensor":
    import bitsandbytes.functional as bnbf

    if bits == 4:
        q, state = bnbf.quantize_4bit(weight, blocksize=NF4_BLOCK, quant_type="nf4" if method == "nf4" else "fp4")
        return bnbf.dequantize_4bit(q, state).to(weight.dtype)
    q, state = bnbf.quantize_blockwise(weight)
    return bnbf.dequantize_blockwise(q, state).to(weight.dtype)


def quantizable_weights(model, include_head: bool = False) -> list[tuple[str, "torch.nn.Parameter", bool]]:
    """(name, weight, transposed) of every Linear (and GPT-2 style Conv1D) weight, each
    parameter once; the LM head only with ``include_head``."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out, seen = [], set()
    for name, module in model.named_modules():
        is_conv1d = type(module).__name__ == "Conv1D"
        if not (isinstance(module, torch.nn.Linear) or is_conv1d):
            continue
        if module is head and not include_head:
            continue
        w = getattr(module, "weight", None)
        if w is None or not w.is_floating_point() or id(w) in seen:
            continue
        seen.add(id(w))
        out.append((f"{name}.weight", w, is_conv1d))
    return out


# ---------------------------------------------------------------- quantize

@register_attack
class Quantize(Attack):
    """Round the weights to 4 or 8 bits and back (RTN or NF4), score, restore."""

    name = "quantize"
    kind = "weight"
    version = "quantize-v1"  # part of every cache key: bump when the quantizers change
    cost_hint = "one pass over the Linear weights plus one scoring pass; a CPU copy of those weights"
    PARAMS = (Param("bits", 4, as_int(choices=(4, 8)), "4 or 8"),
              Param("method", "rtn", as_choice("rtn", "nf4"),
                    "rtn (group-wise symmetric round-to-nearest) or nf4 (NormalFloat-4, blocks of 64)"),
              Param("group_size", 128, as_int(1, 1 << 20), "rtn group size (inputs per scale)"),
              Param("include_head", False, as_bool, "also quantize the LM head"),
              Param("bitsandbytes", False, as_bool, "use bitsandbytes kernels (CUDA only)"))

    def _check(self):
        if self.method == "nf4" and self.bits != 4:
            raise self.error("method=nf4 is a 4-bit format; use bits=4, or method=rtn for 8 bits")

    def quantize(self, weight: "torch.Tensor") -> "torch.Tensor":
        if self.bitsandbytes:
            return _bnb_quantize(weight, self.bits, self.method)
        if self.method == "nf4":
            return nf4_quantize(weight)
        return rtn_quantize(weight, self.bits, self.group_size)

    def _check_bnb(self, model: "ModelHandle") -> None:
        if not self.bitsandbytes:
            return
        if model.device.type != "cuda":
            raise AttackError(f"attack {self.spec}: bitsandbytes=true needs the model on a CUDA device "
                              f"(it is on {model.device}); use the built-in quantizer (bitsandbytes=false)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise AttackError(f"attack {self.spec}: bitsandbytes=true but bitsandbytes is not installed "
                              "(pip install bitsandbytes); or use bitsandbytes=false") from None

    @contextlib.contextmanager
    def _quantized(self, model: "ModelHandle", ctx: AttackContext):
        """The model with its weights quantized (a derived handle, and the weights changed);
        afterwards every changed tensor is put back bit for bit."""
        import torch

        targets = quantizable_weights(model.model, self.include_head)
        if not targets:
            raise AttackError(f"attack {self.spec}: {type(model.model).__name__} has no Linear weights to quantize")
        fingerprint = derived_fingerprint(model, self.spec, "all", ctx.seed, version=self.version)
        snapshot = WeightSnapshot([w for _, w, _ in targets])

        def quantize_all() -> None:
            with torch.no_grad():
                for _, w, transposed in targets:
                    w.copy_(self.quantize(w.t()).t() if transposed else self.quantize(w))

        try:
            # under torchrun: rank 0 quantizes, every rank gets its weights
            distributed.from_rank0(f"quantize {self.spec} {fingerprint[:16]}", quantize_all,
                                   [(n, w) for n, w, _ in targets])
            yield (model.derive(fingerprint=fingerprint, name=f"{model.name} [{self.spec}]"), targets)
        finally:
            snapshot.restore()

    def attacked(self, model, data, ctx, only=None):
        """The quantized weights for a chain: one variant covering every row; restored after."""
        from ..models import require_in_memory

        self._check_bnb(model)
        require_in_memory(model.model, f"attack {self.spec}")
        with self._quantized(model, ctx) as (handle, _):
            yield f"{self.method} {self.bits}-bit", np.arange(len(data)), handle

    def _run(self, metric, model, data, ctx):
        from ..models import require_in_memory

        self._check_bnb(model)
        require_in_memory(model.model, f"attack {self.spec}")
        key = _outcome_key(self, metric, model, data, ctx)
        hit = _cached(ctx, key)
        if hit is not None:
            return hit
        with self._quantized(model, ctx) as (handle, targets):
            values = ctx.scorer.per_sample(metric, handle, data)
        n = sum(w.numel() for _, w, _ in targets)
        variant = f"{self.method} {self.bits}-bit" + (" (bitsandbytes)" if self.bitsandbytes else "")
        outcome = AttackOutcome(values, {}, [variant] * len(data), None,
                                [f"quantize: {len(targets)} weight tensors ({n:,} values) rounded to "
                                 f"{self.bits} bits by {'bitsandbytes ' if self.bitsandbytes else ''}"
                                 f"{self.method}{'' if self.method == 'nf4' else f' (group {self.group_size})'}"
                                 f"{', LM head included' if self.include_head else ''}"])
        _store(ctx, key, outcome)
        return outcome
