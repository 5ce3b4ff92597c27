"""IdK: fine-tune the forget questions toward "I don't know"-style answers."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..training import sequence_nll
from .training_run import _check, _name, _retain_term, _Run

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import ModelHandle

#: Refusal answers for :func:`idk`; each forget sample gets one, chosen with the seed.
IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure.",
    "I don't have that information.",
    "I have no idea.",
    "I can't answer that.",
    "That is not something I know.",
    "I'm afraid I don't know.",
    "I cannot say.",
    "I have no information about that.",
    "Sorry, I don't know the answer.",
)


def idk(model: "ModelHandle", forget: "Dataset", retain: "Dataset | None" = None, *, steps: int = 30,
        lr: float = 1e-5, batch_size: int = 8, seed: int = 0, prompt=None, progress: bool = False,
        out_dir=None, retain_weight: float = 1.0, answers=IDK_ANSWERS) -> "ModelHandle":
    """Fine-tune forget questions toward "I don't know"-style answers (+ retain NLL).

    Each forget sample gets one of ``answers`` (a seeded choice); the target is that
    answer followed by the end-of-sequence token, so the model learns to stop after
    refusing.  ``retain_weight * NLL(retain)`` is added when ``retain`` is given.
    """
    _check("idk", steps, lr, batch_size, forget)
    answers = list(answers)
    if not answers:
        raise ConfigError("idk: answers must hold at least one refusal text")
    rng = random.Random(seed)
    targets = [rng.choice(answers) for _ in range(len(forget))]
    run = _Run(model, prompt, seed)
    forget_batches = run.batches(run.encode(forget, targets, eos=True), batch_size, steps)
    retain_term = _retain_term(run, retain, retain_weight, batch_size, steps)

    def loss():
        nll = sequence_nll(run.model, next(forget_batches)).mean()
        keep = retain_term() if retain_term else nll.new_zeros(())
        return nll + keep, {"idk_nll": nll.detach(), "retain": keep.detach()}

    run.train(loss, steps=steps, lr=lr, progress=progress, desc="idk")
    used = retain_weight if retain_term else 0.0
    return run.finish(_name("idk", steps, lr, retain_weight=used), out_dir)
