"""Reference unlearning methods: GA, GD, KL, NPO, IdK and RMU.

They make candidates for demos, calibration and the library's own self-tests.  Each
method is a function

    fn(model, forget, retain=None, *, steps, lr, batch_size=8, seed=0, prompt=None,
       progress=False, out_dir=None, **method_params) -> ModelHandle

that trains a deep copy of ``model.model`` (the input handle is never modified) and
returns a new handle named like ``"ga(steps=30,lr=1e-05)"`` whose fingerprint hashes
the new weights.  Samples are encoded exactly as for scoring
(:func:`~pytest_unlearn.prompts.encode` with the same ``prompt``: a format spec, ``None`` =
the chat template when the tokenizer has one, or the scorer's
:class:`~pytest_unlearn.prompts.PromptFormat`, ``scorer.prompt_format(model)``, which also
carries the system prompt and chat-template arguments), so a model is trained on the very tokens
it is later scored on, and every token-level loss covers the answer tokens only.

Common training set-up: AdamW (weight decay 0.01), constant learning rate after a linear
warm-up over the first 10% of the steps, gradient clipping at norm 1.0, seeded batches
(:func:`~pytest_unlearn.training.seeded_batches`; retain batches use ``seed + 1``) and a
seeded RNG (dropout), so a seed gives identical weights.  On CPU the copy is trained in
float32 and cast back to the input's dtype; a half-precision model (CUDA bf16/fp16)
keeps float32 master weights and AdamW state, since updates of size ``lr`` are mostly
below half-precision resolution and would round away.  The input model serves as the
frozen original (reference log-probs, KL targets, RMU retain activations), under
``no_grad`` and never trained, so no extra copy of the weights is made.

Defaults (starting points that should show an effect on a ~100M-parameter model in a
few dozen steps; the papers tune them per model and data set): ``steps=30``,
``batch_size=8``, ``lr=1e-5`` (RMU ``5e-5``, as in WMDP), ``retain_weight=1.0``, NPO
``beta=0.1``, RMU ``layer=round(0.4 * num_layers)``, ``steering_coef=6.5``,
``alpha=10``.  Tiny models trained from scratch (:mod:`pytest_unlearn.toy`) need far
larger learning rates (about 1e-3; RMU 1e-2).

The pieces: :mod:`.training_run` (the training run every method shares: the copy, the
encodings, the optimiser loop), :mod:`.ascent` (``ga``, ``gd``, ``kl``, ``npo``: the forget
answers made less likely), :mod:`.refusal` (``idk``: trained toward refusals) and
:mod:`.representation` (``rmu``: a decoder layer's output steered to a random direction).
Every name is importable from here (``from pytest_unlearn.methods import npo``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..registry import Registry
from .ascent import ga, gd, kl, npo
from .refusal import IDK_ANSWERS, idk
from .representation import decoder_layers, rmu
from .training_run import MAX_GRAD_NORM, WARMUP_FRACTION, WEIGHT_DECAY, summed_nll

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import ModelHandle

__all__ = ["IDK_ANSWERS", "MAX_GRAD_NORM", "METHODS", "WARMUP_FRACTION", "WEIGHT_DECAY", "decoder_layers", "ga",
           "gd", "idk", "kl", "npo", "rmu", "summed_nll", "unlearn"]

METHODS: Registry[Callable[..., "ModelHandle"]] = Registry("unlearning method")
for _name_, _fn in (("ga", ga), ("gd", gd), ("kl", kl), ("npo", npo), ("idk", idk), ("rmu", rmu)):
    METHODS.register(_name_, _fn)


def unlearn(method: str, model: "ModelHandle", forget: "Dataset", retain: "Dataset | None" = None,
            **kw) -> "ModelHandle":
    """Run the method registered as ``method``: ga, gd, kl, npo, idk or rmu (any case)."""
    return METHODS.get(method)(model, forget, retain, **kw)
