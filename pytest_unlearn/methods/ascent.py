"""Methods that make the forget answers less likely: GA, GD, KL and NPO.

``ga`` ascends the forget answers' NLL; ``gd`` adds the retain NLL, ``kl`` a KL term that
keeps the retain next-token distributions near the original's; ``npo`` bounds the ascent
with a preference loss against the original (Negative Preference Optimization).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..training import collate, seeded_batches, sequence_nll
from .training_run import _answer_logprobs, _check, _name, _need_retain, _retain_term, _Run, summed_nll

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import ModelHandle


def ga(model: "ModelHandle", forget: "Dataset", retain: "Dataset | None" = None, *, steps: int = 30,
       lr: float = 1e-5, batch_size: int = 8, seed: int = 0, prompt=None, progress: bool = False,
       out_dir=None) -> "ModelHandle":
    """Gradient ascent: minimise ``-NLL`` of the forget answers (``retain`` is ignored)."""
    _check("ga", steps, lr, batch_size, forget)
    run = _Run(model, prompt, seed)
    forget_batches = run.batches(run.encode(forget), batch_size, steps)

    def loss():
        nll = sequence_nll(run.model, next(forget_batches)).mean()
        return -nll, {"forget_nll": nll.detach()}

    run.train(loss, steps=steps, lr=lr, progress=progress, desc="ga")
    return run.finish(_name("ga", steps, lr), out_dir)


def gd(model: "ModelHandle", forget: "Dataset", retain: "Dataset | None" = None, *, steps: int = 30,
       lr: float = 1e-5, batch_size: int = 8, seed: int = 0, prompt=None, progress: bool = False,
       out_dir=None, retain_weight: float = 1.0) -> "ModelHandle":
    """Gradient difference: ``-NLL(forget) + retain_weight * NLL(retain)``."""
    _check("gd", steps, lr, batch_size, forget)
    _need_retain("gd", retain)
    run = _Run(model, prompt, seed)
    forget_batches = run.batches(run.encode(forget), batch_size, steps)
    retain_term = _retain_term(run, retain, retain_weight, batch_size, steps)

    def loss():
        nll = sequence_nll(run.model, next(forget_batches)).mean()
        keep = retain_term() if retain_term else nll.new_zeros(())
        return -nll + keep, {"forget_nll": nll.detach(), "retain": keep.detach()}

    run.train(loss, steps=steps, lr=lr, progress=progress, desc="gd")
    return run.finish(_name("gd", steps, lr, retain_weight=retain_weight), out_dir)


def kl(model: "ModelHandle", forget: "Dataset", retain: "Dataset | None" = None, *, steps: int = 30,
       lr: float = 1e-5, batch_size: int = 8, seed: int = 0, prompt=None, progress: bool = False,
       out_dir=None, retain_weight: float = 1.0) -> "ModelHandle":
    """GA on forget + ``retain_weight * KL(original || current)`` on retain.

    The KL is between the next-token distributions (full vocabulary) at the positions
    that predict retain answer tokens, averaged over those tokens; the original's
    log-probs come from the input model under ``no_grad``.
    """
    import torch

    _check("kl", steps, lr, batch_size, forget)
    _need_retain("kl", retain)
    run = _Run(model, prompt, seed)
    forget_batches = run.batches(run.encode(forget), batch_size, steps)
    retain_batches = run.batches(run.encode(retain), batch_size, steps, offset=1)

    def loss():
        nll = sequence_nll(run.model, next(forget_batches)).mean()
        batch = next(retain_batches)
        with torch.no_grad():
            target = _answer_logprobs(run.original.model, batch)
        current = _answer_logprobs(run.model, batch)
        divergence = torch.nn.functional.kl_div(current, target, reduction="batchmean", log_target=True)
        return -nll + retain_weight * divergence, {"forget_nll": nll.detach(), "kl": divergence.detach()}

    run.train(loss, steps=steps, lr=lr, progress=progress, desc="kl")
    return run.finish(_name("kl", steps, lr, retain_weight=retain_weight), out_dir)


def npo(model: "ModelHandle", forget: "Dataset", retain: "Dataset | None" = None, *, steps: int = 30,
        lr: float = 1e-5, batch_size: int = 8, seed: int = 0, prompt=None, progress: bool = False,
        out_dir=None, beta: float = 0.1, retain_weight: float = 1.0) -> "ModelHandle":
    """Negative Preference Optimization (Zhang et al. 2024), plus retain NLL ("NPO+RT").

    ``L = -(2/beta) * mean(log sigmoid(-beta * log(pi(y|x) / pi_ref(y|x))))`` with
    ``log(pi/pi_ref) = NLL_ref - NLL_current``, where NLL is the answer's *summed* token
    NLL (the sequence log-likelihood, as in the paper and open-unlearning).  The
    reference is the input model; its NLLs are computed once under ``no_grad``.  When
    ``retain`` is given, ``retain_weight * NLL(retain)`` is added (0 disables it).
    """
    import torch

    _check("npo", steps, lr, batch_size, forget)
    if not beta > 0:
        raise ConfigError(f"npo: beta must be positive, got {beta!r}")
    run = _Run(model, prompt, seed)
    encoded = run.encode(forget)
    ref = run.reference_nll(encoded, batch_size)
    order = seeded_batches(len(encoded), batch_size, steps, seed)
    retain_term = _retain_term(run, retain, retain_weight, batch_size, steps)

    def loss():
        idx = next(order)
        current = summed_nll(run.model, collate(encoded, idx, run.pad, run.device))
        log_ratio = ref[idx] - current  # log pi(y|x) - log pi_ref(y|x)
        forget_loss = -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * log_ratio).mean()
        keep = retain_term() if retain_term else forget_loss.new_zeros(())
        return forget_loss + keep, {"log_ratio": log_ratio.detach().mean(), "retain": keep.detach()}

    run.train(loss, steps=steps, lr=lr, progress=progress, desc="npo")
    used = retain_weight if retain_term else 0.0
    return run.finish(_name("npo", steps, lr, beta=beta, retain_weight=used), out_dir)
