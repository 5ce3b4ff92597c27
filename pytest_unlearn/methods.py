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
"""

from __future__ import annotations

import copy
import math
import random
from typing import TYPE_CHECKING, Callable, Iterator

from .errors import ConfigError, UnlearnError
from .prompts import Encoded, dataset_parts, encode, parse_prompt_format
from .registry import Registry
from .training import (MasterAdamW, TrainBatch, answer_window, check_training_fits, collate, gradient_checkpointing,
                       pad_id, seeded_batches, sequence_nll)

if TYPE_CHECKING:
    import torch

    from .data import Dataset
    from .models import ModelHandle

WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
WARMUP_FRACTION = 0.1

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


# ---------------------------------------------------------------- shared machinery

class _Run:
    """One training run: the trainable copy, the frozen original and the encodings."""

    def __init__(self, handle: "ModelHandle", prompt, seed: int):
        import torch

        self.original = handle
        self.seed = seed
        self.device = handle.device
        self.dtype = handle.dtype
        self.fmt = parse_prompt_format(prompt, handle.tokenizer)
        self.pad = pad_id(handle.tokenizer)
        from .models import require_one_device

        require_one_device(handle.model, f"training a copy of {handle.name} ({handle.source})")
        model = copy.deepcopy(handle.model)
        if self.device.type == "cpu" and self.dtype != torch.float32:
            model.float()
        self.flags = [p.requires_grad for p in model.parameters()]
        self.model = model
        self.max_tokens = 0  # the longest encoded sample (for the memory estimate)

    def encode(self, dataset: "Dataset", answers=None, *, eos: bool = False) -> list[Encoded]:
        parts = dataset_parts(dataset, answers=answers)
        names = [f"{dataset.source} sample {sid}" for sid in dataset.ids]
        eos_id = self.original.tokenizer.eos_token_id
        limit = self.original.context_length - (1 if eos else 0)
        encoded = encode(self.original.tokenizer, self.fmt, parts, max_length=limit, sample_names=names)
        if eos and eos_id is not None:
            encoded = [Encoded(e.input_ids + [eos_id], e.answer_start, e.truncated) for e in encoded]
        self.max_tokens = max([self.max_tokens, *(len(e.input_ids) for e in encoded)])
        return encoded

    def batches(self, encoded: list[Encoded], batch_size: int, steps: int,
                offset: int = 0) -> Iterator[TrainBatch]:
        for idx in seeded_batches(len(encoded), batch_size, steps, self.seed + offset):
            yield collate(encoded, idx, self.pad, self.device)

    def reference_nll(self, encoded: list[Encoded], batch_size: int) -> "torch.Tensor":
        """Per-sample *summed* answer NLL under the frozen original, shape (n,)."""
        import torch

        out = torch.empty(len(encoded), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                idx = list(range(start, min(start + batch_size, len(encoded))))
                batch = collate(encoded, idx, self.pad, self.device)
                out[idx] = summed_nll(self.original.model, batch).float()
        return out

    def train(self, loss_fn: Callable[[], tuple["torch.Tensor", dict]], *, steps: int, lr: float,
              params=None, progress: bool = False, desc: str = "unlearning", batch_size: int = 1) -> None:
        """``steps`` optimiser steps on ``loss_fn()`` (returns the loss and parts to show).

        On CUDA: refused before the first step when the estimate of what training needs
        (:func:`~pytest_unlearn.training.check_training_fits`) exceeds the free memory, and run
        with gradient checkpointing."""
        import torch

        model = self.model
        trainable = list(model.parameters()) if params is None else list(params)
        on_cuda = self.device.type == "cuda"
        check_training_fits(model, trainable, self.device, what=desc, batch_size=batch_size,
                            tokens=self.max_tokens, checkpointing=on_cuda,
                            remedy="unlearn a smaller model, train fewer parameters (rmu trains a few layers), "
                                   "or lower batch_size")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        opt = MasterAdamW(trainable, lr, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM)
        warmup = max(1, round(WARMUP_FRACTION * steps))
        iterator = range(steps)
        if progress:
            from tqdm.auto import tqdm
            iterator = tqdm(iterator, desc=desc, unit="step", leave=False)
        devices = [self.device] if self.device.type == "cuda" else []
        model.train()
        try:
            with torch.random.fork_rng(devices=devices), gradient_checkpointing(model, on_cuda):
                torch.manual_seed(self.seed)
                for step in iterator:
                    loss, shown = loss_fn()
                    if not torch.isfinite(loss):
                        raise UnlearnError(f"{desc}: the loss became {loss.item()} at step "
                                                 f"{step}; lower the learning rate")
                    opt.zero_grad()
                    loss.backward()
                    opt.step(lr * min(1.0, (step + 1) / warmup))
                    if progress:
                        iterator.set_postfix(loss=f"{loss.item():.4g}",
                                             **{k: f"{float(v):.4g}" for k, v in shown.items()})
        finally:
            model.eval()
            for p, flag in zip(model.parameters(), self.flags):
                p.requires_grad_(flag)
                p.grad = None

    def finish(self, name: str, out_dir=None) -> "ModelHandle":
        from .models import weights_fingerprint

        if next(p.dtype for p in self.model.parameters() if p.is_floating_point()) != self.dtype:
            self.model.to(self.dtype)  # trained in float32 on CPU: back to the input's dtype
        handle = self.original.derive(
            self.model, fingerprint=weights_fingerprint(self.model, self.original.tokenizer), name=name,
            source=str(out_dir) if out_dir is not None else f"<{name} of {self.original.source}>")
        if out_dir is not None:
            handle.save(out_dir)
        return handle


def summed_nll(model, batch: TrainBatch) -> "torch.Tensor":
    """Summed NLL of each sequence's answer tokens (= -log p(y|x)), shape (batch,)."""
    n = _predicting(batch).sum(-1)
    return sequence_nll(model, batch) * n


def _predicting(batch: TrainBatch) -> "torch.Tensor":
    """Mask over positions ``0 .. length-2`` of those whose next token is an answer token."""
    return batch.labels[:, 1:] != -100


def _answer_logprobs(model, batch: TrainBatch) -> "torch.Tensor":
    """log-softmax of the next-token distributions that predict answer tokens, (tokens, vocab)."""
    import torch

    logits, labels = answer_window(model, batch)  # the LM head on the answer positions only
    return torch.log_softmax(logits[labels != -100].float(), dim=-1)


def _check(method: str, steps: int, lr: float, batch_size: int, forget: "Dataset") -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{method}: steps must be a positive integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{method}: lr must be a positive number, got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{method}: batch_size must be a positive integer, got {batch_size!r}")
    if len(forget) == 0:
        raise ConfigError(f"{method}: the forget set {forget.source} is empty")


def _need_retain(method: str, retain) -> None:
    if retain is None or len(retain) == 0:
        raise ConfigError(f"{method} needs a retain set (retain=...); use 'ga' to unlearn without one")


def _name(method: str, steps: int, lr: float, **params) -> str:
    shown = "".join(f",{k}={v!r}" for k, v in params.items())
    return f"{method}(steps={steps},lr={lr!r}{shown})"


def _retain_term(run: _Run, retain, weight: float, batch_size: int, steps: int):
    """``weight * NLL(retain)`` per step as a closure, or None when disabled."""
    if retain is None or len(retain) == 0 or weight == 0:
        return None
    batches = run.batches(run.encode(retain), batch_size, steps, offset=1)
    return lambda: weight * sequence_nll(run.model, next(batches)).mean()


# ---------------------------------------------------------------- the methods

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


# ---------------------------------------------------------------- RMU

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


# ---------------------------------------------------------------- registry

METHODS: Registry[Callable[..., "ModelHandle"]] = Registry("unlearning method")
for _name_, _fn in (("ga", ga), ("gd", gd), ("kl", kl), ("npo", npo), ("idk", idk), ("rmu", rmu)):
    METHODS.register(_name_, _fn)


def unlearn(method: str, model: "ModelHandle", forget: "Dataset", retain: "Dataset | None" = None,
            **kw) -> "ModelHandle":
    """Run the method registered as ``method``: ga, gd, kl, npo, idk or rmu (any case)."""
    return METHODS.get(method)(model, forget, retain, **kw)
