"""RMU (Representation Misdirection for Unlearning): steer a decoder layer's output on the
forget answers toward a fixed random direction, keep it on retain."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..training import TrainBatch, collate
from .training_run import _check, _name, _predicting, _Run

if TYPE_CHECKING:
    import torch

    from ..data import Dataset
    from ..models import ModelHandle


class _Stop(Exception):
    """Raised by the RMU hook: nothing after the steered layer needs computing."""


def decoder_layers(model) -> list:
    """The transformer blocks of a causal LM (Llama/Mistral/Qwen-style or GPT-2-style)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if obj is not None and len(obj) > 0:
            return list(obj)
    raise ConfigError(f"rmu: cannot find the decoder layers of {type(model).__name__} (looked for "
                      "model.layers, transformer.h, gpt_neox.layers, model.decoder.layers)")


def _mlp(layer, index: int):
    for attr in ("mlp", "feed_forward", "ffn"):
        module = getattr(layer, attr, None)
        if module is not None:
            return module
    raise ConfigError(f"rmu: decoder layer {index} ({type(layer).__name__}) has no 'mlp' module")


def _layer_output(model, layer, batch: TrainBatch) -> "torch.Tensor":
    """Hidden states leaving ``layer`` (batch, length, hidden); the forward stops there."""
    captured = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
              position_ids=batch.position_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def rmu(model: "ModelHandle", forget: "Dataset", retain: "Dataset | None" = None, *, steps: int = 30,
        lr: float = 5e-5, batch_size: int = 8, seed: int = 0, prompt=None, progress: bool = False,
        out_dir=None, layer: int | None = None, steering_coef: float = 6.5,
        alpha: float = 10.0) -> "ModelHandle":
    """Representation Misdirection for Unlearning (Li et al. 2024, WMDP).

    Loss = ``MSE(h(forget), c * scale * u) + alpha * MSE(h(retain), h_original(retain))``
    where ``h`` is the output of decoder layer ``layer`` (default ``round(0.4 * L)``,
    at least 1) at the positions that predict answer tokens, ``u`` a fixed random unit
    vector (uniform entries normalised, seeded, as in the WMDP code) and ``c`` =
    ``steering_coef``.  Only the MLP parameters of layers ``layer-2 .. layer`` train
    (the WMDP code trains just each MLP's output projection of those layers).  The
    layer output is caught with a forward hook that stops the forward pass there.

    Scale choice: the paper's ``c = 6.5`` is an absolute norm tuned for Zephyr-7B; here
    ``scale`` is the mean per-token norm of the original model's layer output on the
    forget answers divided by ``sqrt(hidden size)`` (the typical size of one coordinate),
    so the target's norm is ``c`` in units of that size and one default serves models of
    any width.  (WMDP steers layer 7 of Zephyr-7B's 32; pass ``layer`` to match.)  The paper's ``alpha`` (100 to 1200) balances its absolute-scale MSEs; the
    default 10 here is a starting point for this normalised form.  ``retain=None`` drops
    the retain term.
    """
    import torch

    _check("rmu", steps, lr, batch_size, forget)
    run = _Run(model, prompt, seed)
    layers = decoder_layers(run.model)
    frozen_layers = decoder_layers(run.original.model)
    n_layers = len(layers)
    if layer is None:
        layer = min(max(1, round(0.4 * n_layers)), n_layers - 1)
    if not (isinstance(layer, int) and 0 <= layer < n_layers):
        raise ConfigError(f"rmu: layer must be an integer in 0..{n_layers - 1}, got {layer!r}")
    params = [p for i in range(max(0, layer - 2), layer + 1) for p in _mlp(layers[i], i).parameters()]

    forget_enc = run.encode(forget)
    with torch.no_grad():
        norms = []
        for start in range(0, len(forget_enc), batch_size):
            idx = range(start, min(start + batch_size, len(forget_enc)))
            b = collate(forget_enc, idx, run.pad, run.device)
            h = _layer_output(run.original.model, frozen_layers[layer], b)[:, :-1][_predicting(b)]
            norms.append(h.float().norm(dim=-1))
        hidden = h.shape[-1]
        scale = float(torch.cat(norms).mean()) / math.sqrt(hidden)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden, generator=gen)
    control = (steering_coef * scale * u / u.norm()).to(run.device)

    forget_batches = run.batches(forget_enc, batch_size, steps)
    retain_batches = (run.batches(run.encode(retain), batch_size, steps, offset=1)
                      if retain is not None and len(retain) and alpha else None)

    def loss():
        b = next(forget_batches)
        h = _layer_output(run.model, layers[layer], b)[:, :-1][_predicting(b)].float()
        forget_loss = torch.nn.functional.mse_loss(h, control.expand_as(h))
        keep = forget_loss.new_zeros(())
        if retain_batches is not None:
            r = next(retain_batches)
            with torch.no_grad():
                target = _layer_output(run.original.model, frozen_layers[layer], r)
                target = target[:, :-1][_predicting(r)].float()
            current = _layer_output(run.model, layers[layer], r)[:, :-1][_predicting(r)].float()
            keep = alpha * torch.nn.functional.mse_loss(current, target)
        return forget_loss + keep, {"forget_mse": forget_loss.detach(), "retain": keep.detach()}

    run.train(loss, steps=steps, lr=lr, params=params, progress=progress, desc="rmu")
    return run.finish(_name("rmu", steps, lr, layer=layer, steering_coef=steering_coef,
                            alpha=alpha if retain_batches is not None else 0.0), out_dir)
