"""Directional ablation: project a "forgetting" direction out of the weights.

Refusal- and RMU-style unlearning often works by pushing the residual stream of forget
prompts along one direction that later layers turn into a refusal or noise (Arditi et al.
2024; Łucki et al. 2024 recover RMU-unlearned knowledge this way).  The attack:

1. runs the forget prompts (the rows scored; prompts only, never answers) and the retain
   prompts (``ctx.retain``) once each, and takes the residual stream (``hidden_states``,
   numbered like ``logit_lens``'s: 0 = embeddings, ``l`` = output of block ``l``) at
   ``layer`` (default: the middle, ``L // 2``) on the last prompt token;
2. the direction ``r`` is the difference of the two means, normalised;
3. ``r`` is projected out of every weight that writes to the residual stream:
   the token (and position) embeddings ``E <- E - (E r) r^T``, and the output
   projections of attention and MLP blocks (``o_proj``, ``down_proj``; GPT-2's
   ``c_proj``; ``dense``, ``dense_4h_to_h``, ``out_proj``, ``fc2``)
   ``W <- W - r (r^T W)`` with their biases, so no block can write along ``r``;
4. the model is scored, and every changed tensor is put back bit for bit.

Exact for pre-norm architectures (Llama, Qwen, Mistral, GPT-2, ...), where the residual
stream is the sum of those writes.  A tied LM head changes with the embeddings (it then
cannot read ``r`` either).  Cost: one forward pass per batch of forget and retain prompts,
one pass over the residual-writing weights and a CPU copy of them, one scoring pass.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import AttackError
from ..prompts import dataset_parts
from .base import Attack, AttackContext, AttackOutcome, register_attack
from .params import Param, as_int
from .session_memo import _cached, _outcome_key, _store
from .snapshot import WeightSnapshot, derived_fingerprint

if TYPE_CHECKING:
    import torch

    from ..data import Dataset
    from ..models import ModelHandle

__all__ = ["Ablate", "ablation_direction", "project_out", "residual_writers"]

WRITER_NAMES = ("o_proj", "down_proj", "out_proj", "c_proj", "dense_4h_to_h", "fc2", "dense")


def as_layer(value):
    if isinstance(value, str) and value.strip().lower() == "middle":
        return "middle"
    try:
        return as_int()(value)
    except ValueError:
        raise ValueError(f"expected middle or a layer number, got {value!r}") from None


def as_against(value):
    from .relearn import DATA_SUFFIXES

    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"expected retain or a data file path, got {type(value).__name__}")
    text = os.fspath(value).strip()
    if text.lower() == "retain":
        return "retain"
    if not text.lower().endswith(DATA_SUFFIXES):
        raise ValueError(f"must be retain or a path to a {'/'.join(DATA_SUFFIXES)} data file (harmless or "
                         f"unrelated prompts), got {text!r}")
    return text


def hidden_size(model) -> int:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(model.get_input_embeddings().weight.shape[1])


def residual_writers(model) -> list[tuple[str, "torch.nn.Parameter", str]]:
    """(name, parameter, how) of every tensor that writes to the residual stream, each once:
    ``rows`` (an embedding: each row is written), ``out`` (a Linear weight, output first),
    ``conv`` (a GPT-2 Conv1D weight, output last), ``bias``."""
    import torch

    d = hidden_size(model)
    out, seen = [], set()

    def add(name, p, how):
        if p is not None and p.is_floating_point() and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p, how))

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is head:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Embedding) and module.embedding_dim == d:
            add(f"{name}.weight", module.weight, "rows")
        elif leaf in WRITER_NAMES and isinstance(module, torch.nn.Linear) and module.out_features == d:
            add(f"{name}.weight", module.weight, "out")
            add(f"{name}.bias", module.bias, "bias")
        elif leaf in WRITER_NAMES and type(module).__name__ == "Conv1D" and getattr(module, "nf", None) == d:
            add(f"{name}.weight", module.weight, "conv")
            add(f"{name}.bias", module.bias, "bias")
    return out


def project_out(weight: "torch.Tensor", r: "torch.Tensor", how: str) -> "torch.Tensor":
    """``weight`` with the unit direction ``r`` removed from what it writes (float32 maths,
    same dtype back)."""
    import torch

    w = weight.detach().float()
    r = r.to(device=w.device, dtype=torch.float32)
    if how == "out":  # W (d, in): outputs W x
        w = w - r[:, None] * (r @ w)[None, :]
    elif how in ("rows", "conv"):  # E (V, d) / W (in, d): outputs are rows
        w = w - (w @ r)[:, None] * r[None, :]
    elif how == "bias":
        w = w - (w @ r) * r
    else:
        raise ValueError(how)
    return w.to(weight.dtype)


def _last_token_means(ctx: AttackContext, model: "ModelHandle", parts, layer: int) -> "torch.Tensor":
    """Mean residual stream at ``layer`` on the last prompt token (prompts only)."""
    import torch

    from ..forward import _accepts, default_batch_size, input_device, length_sorted_batches
    from ..training import pad_id

    encoded = ctx.scorer.encode(model, parts)
    prompts = [list(e.input_ids[:e.answer_start]) for e in encoded]
    device = input_device(model.model)
    batch = ctx.scorer.batch_size or default_batch_size(device)
    total = None
    with torch.inference_mode():
        for rows in length_sorted_batches([len(p) for p in prompts], batch):
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id(model.tokenizer), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[r, width - len(prompts[i]):] = 1
            kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                      "output_hidden_states": True, "use_cache": False}
            if _accepts(model.model, "position_ids"):
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
            if _accepts(model.model, "logits_to_keep"):
                kwargs["logits_to_keep"] = 1
            h = model.model(**kwargs).hidden_states[layer][:, -1, :].double().sum(0).cpu()
            total = h if total is None else total + h
    return total / len(prompts)


def ablation_direction(ctx: AttackContext, model: "ModelHandle", forget_parts: Sequence, retain_parts: Sequence,
                       layer: int) -> tuple["torch.Tensor", float]:
    """The unit difference of mean last-prompt-token residuals (forget minus retain) at
    ``layer``, and the norm of the difference before normalising."""
    diff = _last_token_means(ctx, model, forget_parts, layer) - _last_token_means(ctx, model, retain_parts, layer)
    norm = float(diff.norm())
    if not norm > 1e-6 * max(1.0, float(diff.abs().max())) or not norm > 0:
        raise AttackError(f"ablate: forget and retain prompts have the same mean activation at layer {layer} "
                          "(at layer 0, the embeddings, the last prompt token is the same template token for "
                          "every prompt); there is no direction to ablate: choose a later layer")
    return (diff / norm).float(), norm


@register_attack
class Ablate(Attack):
    """Project the forget-vs-retain direction out of every residual-writing weight, score, restore."""

    name = "ablate"
    kind = "weight"
    cost_hint = ("one forward pass per batch of forget and retain prompts, one pass over the residual-writing "
                 "weights (and a CPU copy of them), one scoring pass")
    PARAMS = (Param("layer", "middle", as_layer,
                    "middle (L // 2) or the residual stream after block l (0 = embeddings .. L; -1 = last)"),
              Param("against", "retain", as_against,
                    "the prompts the forget prompts are contrasted with: retain (the retain set) or a data "
                    "file of harmless or unrelated prompts"))

    def resolve_layer(self, n_layers: int) -> int:
        if self.layer == "middle":
            return n_layers // 2
        resolved = self.layer + n_layers + 1 if self.layer < 0 else self.layer
        if not 0 <= resolved <= n_layers:
            raise AttackError(f"attack {self.spec}: layer {self.layer} does not exist; the model has {n_layers} "
                              f"decoder layers (0 = embeddings .. {n_layers}, or -1 .. -{n_layers + 1})")
        return resolved

    def _retain(self, ctx: AttackContext) -> "Dataset":
        if self.against != "retain":
            from ..data import load_dataset

            path = Path(self.against).expanduser()
            if not path.is_file():
                raise AttackError(f"attack {self.spec}: the contrast prompts file {str(path)!r} does not exist")
            return load_dataset(path, name="ablate-against")
        if ctx.retain is None:
            raise AttackError(f"attack {self.spec}: the direction is forget minus retain activations, and there "
                              "is no retain set; configure unlearn_retain / --unlearn-retain (or "
                              "AttackContext(retain=...)), or give ablate:against=<file of harmless prompts>")
        return ctx.retain

    @contextlib.contextmanager
    def _ablated(self, model: "ModelHandle", data: "Dataset", ctx: AttackContext):
        import torch

        from ..models import require_in_memory
        from .logit_lens import num_layers

        require_in_memory(model.model, f"attack {self.spec}")
        retain = self._retain(ctx)
        n_layers = num_layers(model.model)
        layer = self.resolve_layer(n_layers)
        r, norm = ablation_direction(ctx, model, dataset_parts(data), dataset_parts(retain), layer)
        targets = residual_writers(model.model)
        if not targets:
            raise AttackError(f"attack {self.spec}: found no weights of {type(model.model).__name__} that write "
                              f"to the residual stream (looked for embeddings and {', '.join(WRITER_NAMES)})")
        snapshot = WeightSnapshot([p for _, p, _ in targets])
        prompt = ctx.scorer.prompt_format(model).spec
        try:
            with torch.no_grad():
                for _, p, how in targets:
                    p.copy_(project_out(p, r, how))
            handle = model.derive(fingerprint=derived_fingerprint(model, self.spec, "all", ctx.seed, data.content_hash,
                                                                  retain.content_hash, prompt),
                                  name=f"{model.name} [{self.spec}]")
            info = {"layer": layer, "n_layers": n_layers, "norm": norm, "targets": targets,
                    "n_forget": len(data), "n_retain": len(retain)}
            yield handle, info
        finally:
            snapshot.restore()

    def attacked(self, model, data, ctx, only=None):
        with self._ablated(model, data, ctx) as (handle, info):
            yield f"ablated at layer {info['layer']}/{info['n_layers']}", np.arange(len(data)), handle

    def chain_extra(self, data, ctx) -> list:
        if self.against != "retain":
            return [self._retain(ctx).content_hash]
        return [ctx.retain.content_hash if ctx.retain is not None else None]

    def _run(self, metric, model, data, ctx):
        key = _outcome_key(self, metric, model, data, ctx, self.chain_extra(data, ctx))
        hit = _cached(ctx, key)
        if hit is not None:
            return hit
        with self._ablated(model, data, ctx) as (handle, info):
            values = ctx.scorer.per_sample(metric, handle, data)
        kinds = {"rows": "embedding", "out": "output projection", "conv": "output projection", "bias": "bias"}
        counts = {}
        for _, _, how in info["targets"]:
            counts[kinds[how]] = counts.get(kinds[how], 0) + 1
        label = f"ablated at layer {info['layer']}/{info['n_layers']}"
        contrast = "retain" if self.against == "retain" else Path(self.against).name
        notes = [f"ablate: direction = forget minus {contrast} mean residual at layer {info['layer']} of "
                 f"{info['n_layers']} (last prompt token; {info['n_forget']} forget and {info['n_retain']} "
                 f"{contrast} prompts; difference norm {info['norm']:.3g}), projected out of "
                 + ", ".join(f"{v} {k}{'s' if v > 1 else ''}" for k, v in counts.items())]
        outcome = AttackOutcome(values, {}, [label] * len(data), None, notes)
        _store(ctx, key, outcome)
        return outcome
