"""Mixing the weights of two models: theta(alpha) = (1 - alpha) * original + alpha * unlearned.

Whether two models can be mixed (:func:`check_compatible`), mixing in place into a working
copy one tensor at a time (:func:`mix_into`), the working copy itself allocated directly on its
device (:func:`empty_copy`) and the mixed model's fingerprint (:func:`mixed_fingerprint`)."""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError, ModelMismatchError

if TYPE_CHECKING:
    import torch

STRUCTURAL_KEYS = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")


def mixable_tensors(model) -> dict[str, "torch.Tensor"]:
    """Parameters and buffers of ``model`` by name (tied weights listed once)."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return tensors


def _model_type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def check_compatible(original, unlearned) -> None:
    """Raise :class:`ModelMismatchError` unless the two models (handles or modules) can be
    mixed: same ``config.model_type``, same tensor names and shapes (the message names the
    first mismatching tensor), same structural config, same tokenizer vocabulary."""
    m_o = getattr(original, "model", original)
    m_u = getattr(unlearned, "model", unlearned)
    tok_o, tok_u = getattr(original, "tokenizer", None), getattr(unlearned, "tokenizer", None)
    if tok_o is not None and tok_u is not None and tok_o is not tok_u:
        if len(tok_o) != len(tok_u) or tok_o.get_vocab() != tok_u.get_vocab():
            raise ModelMismatchError("cannot mix the models: their tokenizers have different vocabularies "
                                     f"({len(tok_o)} vs {len(tok_u)} tokens); mixing needs the model the "
                                     "unlearned one was made from, with the same tokenizer")
    t_o, t_u = _model_type(m_o), _model_type(m_u)
    if t_o != t_u:
        raise ModelMismatchError(f"cannot mix models of different architectures: the original is "
                                 f"model_type {t_o!r}, the unlearned model {t_u!r}")
    a, b = mixable_tensors(m_o), mixable_tensors(m_u)
    for name, tensor in a.items():
        if name not in b:
            raise ModelMismatchError(f"cannot mix the models: tensor '{name}' {tuple(tensor.shape)} of the "
                                     "original has no counterpart in the unlearned model")
        if tensor.shape != b[name].shape:
            raise ModelMismatchError(f"cannot mix the models: tensor '{name}' has shape {tuple(tensor.shape)} "
                                     f"in the original but {tuple(b[name].shape)} in the unlearned model")
    for name, tensor in b.items():
        if name not in a:
            raise ModelMismatchError(f"cannot mix the models: tensor '{name}' {tuple(tensor.shape)} of the "
                                     "unlearned model has no counterpart in the original")
    c_o, c_u = getattr(m_o, "config", None), getattr(m_u, "config", None)
    for key in STRUCTURAL_KEYS:
        v_o, v_u = getattr(c_o, key, None), getattr(c_u, key, None)
        if v_o is not None and v_u is not None and v_o != v_u:
            raise ModelMismatchError(f"cannot mix the models: config {key} is {v_o} in the original "
                                     f"but {v_u} in the unlearned model")


def mix_into(working_model, original_params, unlearned_params, alpha: float) -> None:
    """Set ``working_model``'s weights to ``(1 - alpha) * original + alpha * unlearned`` in place.

    ``original_params`` / ``unlearned_params`` are models or name -> tensor mappings
    (:func:`mixable_tensors`); they are only read.  Float32/64 tensors are mixed with
    ``copy_`` + ``lerp_`` on the working tensor itself (bit-identical to ``torch.lerp``);
    half-precision ones through float32, one tensor at a time.  ``alpha = 0`` and ``1`` copy
    the original / unlearned tensor exactly.  A source tensor on another device (sources in
    host memory, working copy on a GPU) is moved one tensor at a time.  Non-floating buffers
    are copied from the unlearned model.  A PEFT adapter handle arrives already merged into
    full weights (``load_model`` merges it), so mixing the full tensors is correct for it too.
    """
    import torch

    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    orig = original_params if isinstance(original_params, Mapping) else mixable_tensors(original_params)
    unl = unlearned_params if isinstance(unlearned_params, Mapping) else mixable_tensors(unlearned_params)
    with torch.no_grad():
        for name, w in mixable_tensors(working_model).items():
            o, u = orig.get(name), unl.get(name)
            if o is None or u is None:
                raise ModelMismatchError(f"cannot mix: tensor '{name}' of the working model is missing from the "
                                         f"{'original' if o is None else 'unlearned'} model")
            if o.shape != w.shape or u.shape != w.shape:
                raise ModelMismatchError(f"cannot mix: tensor '{name}' has shape {tuple(w.shape)} in the "
                                         f"working model, {tuple(o.shape)} in the original, "
                                         f"{tuple(u.shape)} in the unlearned")
            if w.data_ptr() in (o.data_ptr(), u.data_ptr()) and w.numel():
                raise ValueError(f"mix_into: the working model shares tensor '{name}' with a source model; "
                                 "mix into a separate copy")
            if not w.is_floating_point() or alpha == 1.0:
                w.copy_(u)
            elif alpha == 0.0:
                w.copy_(o)
            elif w.dtype in (torch.float32, torch.float64) and o.dtype == w.dtype == u.dtype:
                w.copy_(o)
                w.lerp_(u.to(w.device, non_blocking=True), alpha)
            else:
                w.copy_(torch.lerp(o.to(w.device, torch.float32), u.to(w.device, torch.float32), alpha))


def mixed_fingerprint(original_fingerprint: str, unlearned_fingerprint: str, alpha: float) -> str:
    """Deterministic fingerprint of theta(alpha); the endpoints keep the sources' fingerprints
    (theta(0) is the original and theta(1) the unlearned model, bit for bit)."""
    alpha = float(alpha)
    if alpha == 1.0:
        return unlearned_fingerprint
    if alpha == 0.0:
        return original_fingerprint
    text = f"pytest-unlearn-uwc-mix-v1\0{original_fingerprint}\0{unlearned_fingerprint}\0{alpha.hex()}"
    return hashlib.sha256(text.encode()).hexdigest()


def empty_copy(model, device=None):
    """A copy of ``model``'s modules whose parameters and buffers are new, *uninitialised*
    tensors on ``device`` (default: where each one is): the weights are never duplicated in
    host memory on the way to a GPU.  Tied weights stay tied.  The caller fills the tensors
    (:func:`mix_into` writes every one of them)."""
    import torch

    memo: dict[int, Any] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for t in store.values():
                if t is None or id(t) in memo:
                    continue
                fresh = torch.empty_like(t, device=device if device is not None else t.device)
                memo[id(t)] = (torch.nn.Parameter(fresh, requires_grad=t.requires_grad)
                               if isinstance(t, torch.nn.Parameter) else fresh)
    return copy.deepcopy(model, memo)
