"""Greedy coordinate gradient (GCG, Zou et al. 2023): optimised adversarial tokens in the prompt.

``length`` tokens are put in the user turn right after the question (``position=suffix``;
for text rows: at the end of the context) or right before it (``position=prefix``, followed
by a space) and optimised by :mod:`.gcg_search` to maximise the log-likelihood of the answer.

``mode=universal`` (the default, the honest setting): the forget set is split into
``folds`` like ``relearn``'s (the same seeded split), one suffix is optimised on the other
folds' samples and each fold is scored with the suffix found without it, so every sample is
scored exactly once and no suffix has seen the answer it is scored on.

``mode=sample``: one suffix per sample, optimised on that sample's own answer and scored
on it.  The strongest and least honest setting: it optimises on the very answer it scores,
so it is an upper bound (the controls run the same on the original and the reference).

Everything is seeded (``seed``, else the session's ``unlearn_seed``), so a run is
deterministic.  Cost: universal ``folds x steps x (candidates + 3) x batch_size`` forward
sequences, per sample ``steps x (candidates + 3)`` (the backward pass counted as two),
plus the losses before and after and one scoring pass; see docs/attacks.md.  The model
must be fully in memory: a model spread with CPU or disk offload has no gradients to give
(an AttackError says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import AttackError
from ..prompts import dataset_parts
from . import gcg_search
from .base import Attack, AttackOutcome, normalise_answer, register_attack
from .gcg_search import allowed_tokens
from .params import Param, as_choice, as_int
from .prompt_attacks import describe

if TYPE_CHECKING:
    from ..models import ModelHandle

__all__ = ["GCG", "allowed_tokens"]

SHOWN_SAMPLES = 3  # per-sample mode: the worst samples whose suffix the notes show


def new_counter() -> dict:
    """Batched passes and the sequences in them, counted by :mod:`.gcg_search`."""
    return {"forward": 0, "backward": 0, "forward_rows": 0, "backward_rows": 0}


def as_seed(value):
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return as_int(0, 2**63 - 1)(value)
    except ValueError:
        raise ValueError(f"expected auto (the session's unlearn_seed) or an integer >= 0, got {value!r}") from None


@register_attack
class GCG(Attack):
    """Adversarial tokens optimised by greedy coordinate gradient: universal over training
    folds and scored on the held-out fold (default), or one per sample on its own answer."""

    name = "gcg"
    kind = "prompt"
    cost_hint = ("universal: folds x steps x (candidates + 3) x batch_size forward sequences; sample: samples x "
                 "steps x (candidates + 3); plus one scoring pass")
    PARAMS = (Param("length", 10, as_int(1, 256), "tokens optimised (the suffix or prefix)"),
              Param("steps", 20, as_int(1, 1_000_000), "greedy coordinate steps per fold (per sample)"),
              Param("candidates", 8, as_int(1, 4096),
                    "single-token swaps evaluated per step, in one batched forward pass"),
              Param("topk", 32, as_int(1, 1_000_000), "tokens per position, ranked by the gradient, to swap in"),
              Param("batch_size", 2, as_int(1, 4096),
                    "universal: training samples per step (a seeded mini-batch); sample: samples optimised "
                    "together in the batched passes"),
              Param("folds", 2, as_int(2, 1000),
                    "forget-set folds: optimised on the others, scored on each (universal mode only)"),
              Param("seed", "auto", as_seed, "auto (the session's unlearn_seed) or an integer"),
              Param("mode", "universal", as_choice("universal", "sample"),
                    "universal: one suffix per fold, scored on held-out samples; sample: one per sample, "
                    "optimised on the answer it is scored on (an upper bound)"),
              Param("position", "suffix", as_choice("suffix", "prefix"),
                    "where the tokens go: after the question (suffix) or before it (prefix)"))

    def _seed(self, ctx) -> int:
        return int(ctx.seed) if self.seed == "auto" else int(self.seed)

    def place(self, question: str, text: str) -> str:
        """``question`` with the optimised ``text`` inserted at ``position``."""
        return question + text if self.position == "suffix" else text + " " + question

    def _check_model(self, model) -> None:
        names = [n for n, p in model.model.named_parameters() if p.device.type == "meta"]
        if names:
            raise AttackError(f"attack {self.spec}: gcg needs gradients through the whole model, but "
                              f"{len(names)} weight tensor(s) are offloaded by accelerate (e.g. '{names[0]}'; "
                              "device_map with CPU or disk offload), so no gradient can be taken; load the model "
                              "on devices that hold all of it (more GPUs, a smaller unlearn_dtype) or use prompt "
                              "attacks that need no gradient (jailbreak, prefill, paraphrase, icl)")
        if model.model.get_input_embeddings() is None:
            raise AttackError(f"attack {self.spec}: the model has no input embeddings to take a gradient through")

    def optimise(self, model: "ModelHandle", parts, ctx, seed: int, counter: dict | None = None, *,
                 scorer=None) -> tuple[list[int], float, float, int]:
        """The universal tokens found for the training ``parts``: (token ids, loss before, loss
        after, samples used).  The loss is the mean answer NLL over every usable training sample.

        ``parts`` are PromptParts (the tokens are placed into the question) or functions from
        the inserted text to the PromptParts to optimise (multiple-choice prompts), encoded
        with ``scorer`` (default: ``ctx.scorer``)."""
        from ..prompts import PromptParts

        makers = [(lambda text, p=p: p.with_(question=self.place(p.question, text)))
                  if isinstance(p, PromptParts) else p for p in parts]
        counter = counter if counter is not None else new_counter()
        return gcg_search.universal(self, model, makers, scorer if scorer is not None else ctx.scorer, seed,
                                    counter)

    def objective(self, metric, model, data, ctx):
        """(scorer, per row a function from the inserted text to the PromptParts whose answer
        the tokens are optimised for).  QA and text rows: the tokens go into the question and
        the answer is the row's.  Multiple-choice rows under a multiple-choice metric: the
        metric's own prompt (lm-eval's letter prompt with the correct letter as the answer for
        ``mc_acc`` / ``mc_prob``, the continuation prompt with the correct choice's text for
        ``mc_acc_text``), the tokens placed in the question inside it."""
        base, place = dataset_parts(data), self.place
        if metric.source != "multiple_choice":
            return ctx.scorer, [(lambda text, p=p: p.with_(question=place(p.question, text))) for p in base]
        from ..multiple_choice import LETTERS, _rows, _scorer_for, letter_prompt, text_prompt

        choices, answers, subjects = _rows(data, metric)
        makers = []
        for p, c, a, subject in zip(base, choices, answers, subjects):
            if metric.name == "mc_acc_text":
                makers.append(lambda text, p=p, c=c, a=a, subject=subject: p.with_(
                    question=text_prompt(place(p.question, text), subject), answer=c[a]))
            else:
                makers.append(lambda text, p=p, c=c, a=a, subject=subject: p.with_(
                    question=letter_prompt(place(p.question, text), c, subject), answer=LETTERS[a]))
        return _scorer_for(ctx.scorer, model), makers

    # ------------------------------------------------------------ running
    def _run(self, metric, model, data, ctx):
        from .weight_attacks import _outcome_key

        self._check_model(model)
        n = len(data)
        if self.mode == "universal" and n < self.folds:
            raise AttackError(f"attack {self.spec}: {n} sample(s) cannot be split into {self.folds} folds; "
                              f"use gcg:folds={max(2, n)}" if n >= 2 else
                              f"attack {self.spec}: a universal {self.position} needs at least 2 samples "
                              "(one to optimise on, one to score); gcg:mode=sample optimises on the sample itself")
        seed = self._seed(ctx)
        key = _outcome_key(self, metric, model, data, ctx, "gcg")
        base = dataset_parts(data)
        hit = _cached(ctx, key, base, self.place)
        if hit is not None:
            return hit
        scorer, makers = self.objective(metric, model, data, ctx)
        counter = new_counter()
        run = self._per_sample if self.mode == "sample" else self._universal
        texts, details, notes, excluded, finish = run(model, data, makers, scorer, seed, counter)
        parts = [p.with_(question=self.place(p.question, s)) for p, s in zip(base, texts)]
        values = ctx.scorer.per_sample(metric, model, data, parts=parts)
        notes += finish(metric, values)
        outcome = AttackOutcome(values, {"gcg_forward_passes": counter["forward"],
                                         "gcg_backward_passes": counter["backward"],
                                         "gcg_forward_rows": counter["forward_rows"],
                                         "gcg_backward_rows": counter["backward_rows"]},
                                details, [describe(p) for p in parts], notes, parts=parts, excluded=excluded)
        _store(ctx, key, outcome, texts)
        return outcome

    def _settings(self, seed: int) -> str:
        return (f"{self.steps} steps, {self.candidates} candidates from the top {self.topk}, {self.batch_size} "
                f"sample(s) per {'step' if self.mode == 'universal' else 'batched pass'}, seed {seed}")

    def _universal(self, model, data, makers, scorer, seed, counter):
        from .weight_attacks import forget_folds

        n, where = len(data), self.position
        folds = forget_folds(n, self.folds, seed)
        texts, details = [""] * n, [""] * n
        notes = [f"gcg: a universal {self.length}-token {where} per fold ({self._settings(seed)}); "
                 "each fold scored with the " + where + " optimised on the others"]
        answers = [normalise_answer(a) for a in data.answers]
        excluded = 0
        for k, rows in enumerate(folds):
            train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != k]))
            scored = {answers[i] for i in rows} - {""}
            kept = [int(j) for j in train if answers[j] not in scored]  # relearn's rule: never the scored facts
            excluded += len(train) - len(kept)
            if not kept:
                raise AttackError(f"attack {self.spec}: every training sample of fold {k + 1} states an answer it "
                                  "is scored on; optimising on them would teach the scored facts themselves")
            fold_seed = (seed * 1000 + k) & 0x7FFF_FFFF_FFFF
            ids, before, after, used = gcg_search.universal(self, model, [makers[i] for i in kept], scorer,
                                                            fold_seed, counter)
            text = model.tokenizer.decode(ids)
            label = f"fold {k + 1}/{self.folds}"
            for i in rows:
                texts[i] = text
                details[i] = f"{label}: {where} {text!r}"
            notes.append(f"gcg: {label} {where} {text!r}, optimised on {used} training sample(s): answer NLL "
                         f"{before:.3f} -> {after:.3f}")
        if excluded:
            notes.append(f"gcg: {excluded} training sample(s) left out: their answer equals one the fold is scored on")
        return texts, details, notes, excluded, lambda metric, values: []

    def _per_sample(self, model, data, makers, scorer, seed, counter):
        n, where = len(data), self.position
        seeds = [(seed * 1_000_003 + i) & 0x7FFF_FFFF_FFFF for i in range(n)]
        found, initial = gcg_search.per_sample(self, model, makers, scorer, seeds, counter)
        if all(f is None for f in found):
            raise AttackError(f"attack {self.spec}: the {where} merges with the prompt's tokens in every sample, "
                              "so it cannot be optimised token by token")
        decode = model.tokenizer.decode
        texts = [decode(f[0]) if f is not None else decode(initial) for f in found]
        details = [f"own {where} {t!r}: answer NLL {f[1]:.3f} -> {f[2]:.3f}" if f is not None else
                   f"{where} not optimised (it merges with the prompt's tokens): {t!r}" for t, f in zip(texts, found)]
        done = [f for f in found if f is not None]
        notes = [f"gcg: one {self.length}-token {where} per sample ({self._settings(seed)}), optimised on the very "
                 f"answer it is scored on: an upper bound, not a held-out result; answer NLL over the {len(done)} "
                 f"optimised sample(s), mean {np.mean([f[1] for f in done]):.3f} -> "
                 f"{np.mean([f[2] for f in done]):.3f}"]
        if len(done) < n:
            notes.append(f"gcg: {n - len(done)} sample(s) scored with the unoptimised {where}: it merges with their "
                         "prompt's tokens")

        def finish(metric, values):
            order = np.argsort(-values if metric.higher_is_more_knowledge else values, kind="stable")
            return [f"gcg: sample {data.ids[i]} ({metric.name} {values[i]:.4g} under attack): {details[i]}"
                    for i in order[:SHOWN_SAMPLES]]
        return texts, details, notes, 0, finish


def _cached(ctx, key: str, base, place) -> AttackOutcome | None:
    if ctx.cache is None or not ctx.cache.enabled:
        return None
    hit = ctx.cache.get(key)
    if hit is None:
        return None
    texts = [str(s) for s in hit["suffixes"]]
    parts = [p.with_(question=place(p.question, s)) for p, s in zip(base, texts)]
    return AttackOutcome(np.asarray(hit["values"], dtype=np.float64), {"cached": True},
                         [str(d) for d in hit["details"]], [describe(p) for p in parts],
                         [str(x) for x in hit["notes"]] + ["result read from the attack cache"], parts=parts,
                         excluded=int(hit["excluded"]))


def _store(ctx, key: str, outcome: AttackOutcome, texts: list[str]) -> None:
    if ctx.cache is not None and ctx.cache.enabled:
        ctx.cache.put(key, {"values": np.asarray(outcome.values, dtype=np.float64),
                            "details": np.array(outcome.details, dtype=str),
                            "notes": np.array(outcome.notes, dtype=str),
                            "suffixes": np.array(texts, dtype=str),
                            "excluded": np.array(int(outcome.excluded), dtype=np.int64)})
