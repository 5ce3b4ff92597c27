"""Changing weights in place: the snapshot that puts them back, the fingerprint of the attacked copy.

Weight attacks (:mod:`.quantize`, :mod:`.relearn`, :mod:`.ablate`) change the model they
are given in place and restore every changed tensor bit for bit afterwards, from a
:class:`WeightSnapshot` kept in CPU memory.  The attacked weights are scored under a derived
handle whose fingerprint (:func:`derived_fingerprint`) hashes the model's fingerprint, the
attack spec and version, the fold, the seed and whatever else decides the weights, so the
scorer's cache never mixes them up with the clean model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..cache import cache_key

if TYPE_CHECKING:
    import torch

    from ..models import ModelHandle


class WeightSnapshot:
    """A CPU copy of some parameters (and their ``requires_grad``) to put back bit for bit."""

    def __init__(self, params: Sequence["torch.nn.Parameter"]):
        self.params = list(params)
        self.saved = [p.detach().to("cpu", copy=True) for p in self.params]
        self.flags = [p.requires_grad for p in self.params]

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for p, saved, flag in zip(self.params, self.saved, self.flags):
                p.copy_(saved)
                p.requires_grad_(flag)


def derived_fingerprint(model: "ModelHandle", spec: str, fold: int | str, seed: int, *extra,
                        version: str = "") -> str:
    """Fingerprint of an attacked copy: hash(model fingerprint, spec, the attack's algorithm
    version, fold, seed, extra)."""
    return cache_key("attacked-model", model.fingerprint, spec, version, fold, int(seed), *extra)
