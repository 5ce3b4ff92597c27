"""The logit-lens attack: read the answer out of intermediate layers.

Unlearning often suppresses a fact only in the last layers; decoding an intermediate
hidden state through the model's final norm and LM head ("logit lens", Patil et al.
2023) can still extract it.  For every requested layer the same token statistics as
the clean pass (:mod:`~pytest_unlearn.forward`) are computed from that layer's logits,
the metric is evaluated per layer, and the per-sample worst case (most knowledge) is
kept.

Layers are numbered like ``hidden_states``: ``0`` is the embedding output, ``l`` the
output of decoder block ``l``, and the last one (``L``, the number of blocks) is the
model's own output logits, so with ``layers=all`` (``1..L``) the attack is never
below the clean score.  Negative numbers count from the end (``-1`` = ``L``).

Cost: ONE forward pass per batch with ``output_hidden_states=True``; each further layer
costs only the final norm and LM head on the answer positions.  The work is done
through ``Scorer.per_sample(..., logits_fn=..., variant="logit_lens:<layer>")``, so
results are cached per layer like any other score: the data is cut into the scorer's
own length-sorted batches and, for each batch, the hidden states of the one forward
pass serve every layer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from ..errors import AttackError
from ..forward import _accepts, default_batch_size, length_sorted_batches
from ..prompts import dataset_parts
from .base import Attack, AttackOutcome, register_attack, worst_case
from .params import Param, as_int_list

_NORM_PATHS = (("model", "norm"), ("transformer", "ln_f"), ("gpt_neox", "final_layer_norm"),
               ("model", "final_layernorm"), ("model", "decoder", "final_layer_norm"))
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")
_MISSING = object()


def _architecture(model) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{type(model).__name__}" + (f" (model_type {model_type!r})" if model_type else "")


def find_final_norm(model):
    """The final normalisation applied before the LM head (Identity when the
    architecture has none); AttackError naming the architecture when it cannot be found."""
    import torch

    candidates = []
    for path in _NORM_PATHS:
        obj = model
        for attr in path:
            obj = getattr(obj, attr, _MISSING)
            if obj is _MISSING:
                break
        candidates.append(obj)
    base = getattr(model, "base_model", None)
    if base is not None:
        candidates += [getattr(base, name, _MISSING) for name in _NORM_NAMES]
        decoder = getattr(base, "decoder", None)
        if decoder is not None:
            candidates += [getattr(decoder, name, _MISSING) for name in _NORM_NAMES]
    for obj in candidates:
        if obj is None:
            return torch.nn.Identity()  # the architecture has no final norm (configured off)
        if isinstance(obj, torch.nn.Module):
            return obj
    raise AttackError(f"logit_lens: cannot find the final norm of {_architecture(model)}; looked for "
                      "model.norm, transformer.ln_f, gpt_neox.final_layer_norm and the base model's "
                      f"{', '.join(_NORM_NAMES)}")


def find_lm_head(model):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise AttackError(f"logit_lens: {_architecture(model)} has no output embeddings (LM head)")
    return head


def num_layers(model) -> int:
    """Number of decoder blocks (from the config, else from one tiny forward pass)."""
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), output_hidden_states=True)
    return len(out.hidden_states) - 1


class LensLogits:
    """``logits_fn`` factory: one forward pass per batch, projected for every layer.

    ``for_layer(l)`` returns a function with :func:`~pytest_unlearn.forward.answer_logits`'s
    signature.  The hidden states (copies of the answer positions only, not views that would
    keep the whole sequence's states alive) of the last few batches are kept, so calling the
    functions of all layers on the same batch runs the model once.  Each layer's logits then
    go through the same chunked statistics as the model's own
    (:func:`~pytest_unlearn.forward.stats_from_logits`), one layer at a time.
    """

    def __init__(self, model, layers: list[int], n_layers: int, max_batches: int = 4):
        self.norm = find_final_norm(model)
        self.head = find_lm_head(model)
        self.layers = layers
        self.n_layers = n_layers
        self.max_batches = max_batches
        self.forwards = 0
        self._entries: OrderedDict[str, tuple] = OrderedDict()

    def _states(self, model, ids, mask, pos, keep: int):
        digest = hashlib.sha256(ids.cpu().numpy().tobytes() + mask.cpu().numpy().tobytes()
                                + repr((tuple(ids.shape), keep)).encode()).hexdigest()
        if digest in self._entries:
            self._entries.move_to_end(digest)
            return self._entries[digest]
        kwargs = {"input_ids": ids, "attention_mask": mask, "output_hidden_states": True, "use_cache": False}
        if _accepts(model, "position_ids"):
            kwargs["position_ids"] = pos
        if _accepts(model, "logits_to_keep"):
            kwargs["logits_to_keep"] = keep
        out = model(**kwargs)
        self.forwards += 1
        # copies of the answer positions only: a slice (a view) would keep every layer's hidden
        # states for the whole sequence alive as long as the entry is kept
        hidden = {l: out.hidden_states[l][:, -keep:, :].clone() for l in self.layers if l < self.n_layers}
        entry = (out.logits[:, -keep:, :].clone(), hidden)
        del out
        self._entries[digest] = entry
        while len(self._entries) > self.max_batches:
            self._entries.popitem(last=False)
        return entry

    def for_layer(self, layer: int):
        def logits_fn(model, ids, mask, pos, keep):
            final, hidden = self._states(model, ids, mask, pos, keep)
            if layer >= self.n_layers:
                return final
            return self.head(self.norm(hidden[layer]))
        return logits_fn


@register_attack
class LogitLens(Attack):
    """Decode the answer from intermediate layers; worst case over layers."""

    name = "logit_lens"
    kind = "representation"
    cost_hint = "one forward pass per batch, plus the final norm and LM head once per layer"
    PARAMS = (Param("layers", "all", as_int_list(),
                    "'all' (every decoder block's output, 1..L) or a comma-separated list; 0 = embeddings, "
                    "-1 = last", multi=True),)

    def resolve_layers(self, n_layers: int) -> list[int]:
        if self.layers == "all":
            return list(range(1, n_layers + 1))
        out = set()
        for layer in self.layers:
            resolved = layer + n_layers + 1 if layer < 0 else layer
            if not 0 <= resolved <= n_layers:
                raise AttackError(f"attack {self.spec}: layer {layer} does not exist; the model has "
                                  f"{n_layers} decoder layers (0 = embeddings .. {n_layers} = output, "
                                  f"or -1 .. -{n_layers + 1})")
            out.add(resolved)
        return sorted(out)

    def _run(self, metric, model, data, ctx):
        if metric.source == "generation":
            raise AttackError(f"attack {self.spec}: {metric.name} is generation-based; the logit lens "
                              "decodes single positions, so use a forward-pass metric (es, em, prob, ...)")
        n_layers = num_layers(model.model)
        layers = self.resolve_layers(n_layers)
        lens = LensLogits(model.model, layers, n_layers)
        parts = dataset_parts(data)
        encoded = ctx.scorer.encode(model, parts)
        batch = ctx.scorer.batch_size or default_batch_size(model.device)
        per_layer = {l: np.full(len(data), np.nan) for l in layers}
        for rows in length_sorted_batches([len(e.input_ids) for e in encoded], batch):
            subset = data if rows == list(range(len(data))) else data.subset(rows)
            sub_parts = [parts[i] for i in rows]
            for layer in layers:
                per_layer[layer][rows] = ctx.scorer.per_sample(
                    metric, model, subset, parts=sub_parts, logits_fn=lens.for_layer(layer),
                    variant=f"logit_lens:{layer}")
        values, details = worst_case(metric, [per_layer[l] for l in layers],
                                     [f"layer {l}/{n_layers}" for l in layers])
        notes = [f"logit_lens: layers {', '.join(map(str, layers))} of {n_layers} decoded through "
                 f"{type(lens.norm).__name__} and the LM head ({n_layers} = the model's own output); "
                 f"{lens.forwards} forward pass(es) with hidden states"]
        return AttackOutcome(values, {"forward_batches": lens.forwards}, details, None, notes)
