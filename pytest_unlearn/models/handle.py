"""The loaded model under test: :class:`ModelHandle` (model, tokenizer, fingerprint) and the
tokenizer check every comparison of two models needs (:func:`check_same_tokenizer`)."""

from __future__ import annotations

import gc
import os
import pathlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ModelMismatchError
from .devices import device_map_of

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
        from ..forward import input_device

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
