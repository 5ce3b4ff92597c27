"""Scoring a model on a dataset with any registered metric.

:class:`Scorer` ties the pieces together: prompt format -> :func:`~pytest_unlearn.prompts.encode`
-> one batched teacher-forced pass (:mod:`~pytest_unlearn.forward`) whose token
statistics serve every forward-pass metric at once, or batched greedy generation
for ``rouge_l``.  Token statistics and generations are cached by the content hash
of everything that produced them (model fingerprint, the exact token ids, device and dtype;
the batch size for token statistics, and the generation policy and context length for
generations, which do not depend on the batch), so a second run, or a second metric on the same data,
does no forward pass again.

A metric that comes out NaN for any sample raises :class:`MetricError` naming the
sample: a gate must never pass on what remains.  So does a NaN or +inf logit at any real
token position (in the teacher-forced pass or while generating), which would otherwise
read as "the model does not predict the answer", i.e. as forgotten (the guards are in
:mod:`~pytest_unlearn.score_checks`; a scoring's :class:`ScoreResult` and :class:`Cost` in
:mod:`~pytest_unlearn.score_result`).

Under ``torchrun`` (see :mod:`~pytest_unlearn.distributed` and docs/distributed.md) the
teacher-forced pass and batched generation are split over the ranks by whole length-sorted
batches and gathered, with results identical to one process; the result cache is then read
and written by rank 0 alone.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from . import distributed
from .cache import ResultCache, cache_key
from .errors import MetricError
from .forward import STAT_FIELDS, TokenStats, default_batch_size, teacher_forced_stats
from .metrics import Metric, get_metric, reduce_scores
from .prompts import PromptFormat, PromptParts, dataset_parts, encode, parse_prompt_format, parse_template_args
from .score_checks import _finite_logits, _model_label, _nonfinite_step_hook, _sample_names
from .score_result import Cost, ScoreResult

if TYPE_CHECKING:
    from .data import Dataset
    from .generation import Generations
    from .models import ModelHandle


def _ids_digest(encoded) -> str:
    h = hashlib.sha256()
    for e in encoded:
        h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
        h.update(np.int64(e.answer_start).tobytes())
        h.update(b"|")
    return h.hexdigest()


#: The settings that decide how a sample becomes the model's input (the prompt format, the
#: system prompt, the chat template's arguments).  Every :class:`Scorer` built from settings
#: (:meth:`Scorer.from_settings`) takes all of them, and so does every prompt format derived from
#: such a scorer (:meth:`Scorer.prompt_format`): a new prompt setting is added here once.
PROMPT_SETTINGS = ("prompt", "system_prompt", "chat_template_args", "benchmark", "max_new_tokens")


def prompt_settings(settings) -> dict:
    """``{"prompt": ..., "system_prompt": ..., "chat_template_args": ...}`` of ``settings`` (a
    :class:`~pytest_unlearn.config.Settings`, or anything with those attributes, such as parsed
    command-line arguments): the :class:`Scorer` keywords of :data:`PROMPT_SETTINGS`."""
    return {name: getattr(settings, name, None) for name in PROMPT_SETTINGS}


class Scorer:
    """Computes metrics; shared by the assertions, calibration, attacks and notebooks.

    Build one from settings with :meth:`from_settings`, so that every prompt setting is taken."""

    def __init__(self, *, prompt: str | PromptFormat | None = None, batch_size: int | None = None,
                 cache: ResultCache | None = None, progress: bool = False,
                 system_prompt: str | None = None, chat_template_args: str | dict | None = None,
                 benchmark: str | None = None, max_new_tokens: int | None = None):
        from .presets import get_preset

        self.prompt = prompt
        # a benchmark preset (pytest_unlearn.presets): defaults for the prompt, the system prompt, the
        # chat template's arguments and the new-token budget; each explicit setting wins
        self.preset = get_preset(benchmark)
        self.benchmark = self.preset.name if self.preset else None
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens is not None else None
        self._system_turn: dict[int, bool] = {}
        self.system_prompt = system_prompt
        self.chat_template_args = chat_template_args
        self.batch_size = batch_size
        self.cache = cache or ResultCache(None)
        self.progress = progress
        self.cost = Cost()
        self.last_truncated: list[int] = []  # positions the last encode cut to fit the context
        self.truncated: list[str] = []  # ids of the samples the last per_sample cut (any prompt of theirs)
        self.generation_cut: list[str] = []  # ids of the samples whose generation budget the last per_sample cut

    @classmethod
    def from_settings(cls, settings, **overrides) -> "Scorer":
        """A scorer with every prompt setting of ``settings`` (:data:`PROMPT_SETTINGS`) and its
        ``batch_size`` and ``progress``; ``overrides`` replace any of them (``batch_size=k``) or add
        the rest (``cache=``)."""
        kwargs = {**prompt_settings(settings), "batch_size": getattr(settings, "batch_size", None),
                  "progress": bool(getattr(settings, "progress", False))}
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def cache(self) -> ResultCache:
        """The result cache; under sharded evaluation, rank 0's view of it (read and written by
        rank 0 alone, see :class:`~pytest_unlearn.distributed.SharedCache`)."""
        return distributed.shared_cache(self._cache) if distributed.active() else self._cache

    @cache.setter
    def cache(self, value: ResultCache) -> None:
        self._cache = value

    # ------------------------------------------------------------ building blocks
    def prompt_format(self, handle: "ModelHandle") -> PromptFormat:
        prompt, system, args = self.prompt, self.system_prompt, self.chat_template_args
        preset = self.preset
        if preset is not None and not isinstance(prompt, PromptFormat):
            from . import presets

            tokenizer = handle.tokenizer
            has_template = bool(getattr(tokenizer, "chat_template", None))
            if prompt is None or not str(prompt).strip() or str(prompt).strip() == "auto":
                prompt = presets.prompt_spec(preset, has_template)
            if str(prompt).strip() == "chat" and has_template:
                args = presets.template_args(preset, parse_template_args(args))
                if system is None and preset.system_prompt and self._accepts_system(tokenizer):
                    system = preset.system_prompt
        return parse_prompt_format(prompt, handle.tokenizer, system=system, template_args=args)

    def _accepts_system(self, tokenizer) -> bool:
        key = id(tokenizer)
        if key not in self._system_turn:
            from .presets import accepts_system_turn

            self._system_turn[key] = accepts_system_turn(tokenizer)
        return self._system_turn[key]

    def new_tokens(self, parts: Sequence[PromptParts]) -> list[int] | None:
        """Each sample's fixed new-token budget (``max_new_tokens``, else the benchmark preset's for
        QA and text rows), or None: the generation policy's budget from the answer's length."""
        from .presets import new_tokens

        return new_tokens(self.preset, self.max_new_tokens, [p.templated for p in parts])

    def encode(self, handle: "ModelHandle", parts: Sequence[PromptParts], names: Sequence[str] | None = None):
        encoded = encode(handle.tokenizer, self.prompt_format(handle), parts,
                         max_length=handle.context_length, sample_names=names)
        self.last_truncated = [i for i, e in enumerate(encoded) if e.truncated]
        return encoded

    def _batch_size(self, handle) -> int | None:
        return self.batch_size

    def token_stats(self, handle: "ModelHandle", parts: Sequence[PromptParts], *,
                    names: Sequence[str] | None = None, logits_fn: Callable | None = None,
                    variant: str = "") -> TokenStats:
        """Token statistics of ``parts``; ``variant`` names a non-standard ``logits_fn``."""
        encoded = self.encode(handle, parts, names)
        key = cache_key("stats", handle.fingerprint, _ids_digest(encoded), self.batch_size,
                        str(handle.device.type), str(handle.dtype), variant)
        hit = self.cache.get(key)
        if hit is not None:
            self.cost.cached += 1
            return TokenStats.from_flat(hit)
        t0 = time.perf_counter()
        pad = handle.tokenizer.pad_token_id
        if pad is None:
            pad = handle.tokenizer.eos_token_id or 0
        bad_rows: list[tuple[int, ...]] = []
        if distributed.active():
            stats = self._sharded_stats(handle, encoded, pad, logits_fn, bad_rows, key)
        else:
            stats = teacher_forced_stats(handle.model, encoded, pad_token_id=pad,
                                         batch_size=self._batch_size(handle), progress=self.progress,
                                         logits_fn=_finite_logits(logits_fn, bad_rows))
        if bad_rows:  # never cache, never score: a NaN logit would read as "wrong token" (ES 0)
            where = {tuple(e.input_ids): i for i, e in enumerate(encoded)}
            bad = sorted({where[r] for r in bad_rows if r in where}) or [0]
            first = names[bad[0]] if names is not None else f"sample {bad[0]}"
            raise MetricError(
                f"{_model_label(handle)} produced NaN or inf logits for {len(bad)} of "
                f"{len(encoded)} samples (first: {first}); scores computed from them would be meaningless "
                "(a NaN logit reads as 'wrong token', i.e. as forgotten), so no verdict can be given. Check "
                "the weights for overflow, or load in float32 (unlearn_dtype / --unlearn-dtype float32)")
        bs = self.batch_size or default_batch_size(handle.device)  # the size the batches started at
        self.cost.forward_passes += -(-len(encoded) // bs)
        self.cost.seconds += time.perf_counter() - t0
        self.cache.put(key, stats.to_flat())
        return stats

    def _sharded_stats(self, handle, encoded, pad: int, logits_fn, bad_rows: list, key: str) -> TokenStats:
        """:func:`teacher_forced_stats` split over the ranks by whole length-sorted batches, gathered
        (the same on every rank, bit for bit what one process computes); ``bad_rows`` collects
        the rows with non-finite logits of every rank."""
        batch_size = self._batch_size(handle) or default_batch_size(handle.device)

        def compute(rows: list[int]):
            bad: list[tuple[int, ...]] = []
            part = teacher_forced_stats(handle.model, [encoded[i] for i in rows], pad_token_id=pad,
                                        batch_size=batch_size,
                                        progress=self.progress and distributed.is_main_process(),
                                        logits_fn=_finite_logits(logits_fn, bad))
            return [part.sample(j) for j in range(len(rows))], bad

        samples, bad = distributed.run_sharded(f"token statistics {key[:16]} ({len(encoded)} samples)",
                                               [len(e.input_ids) for e in encoded], batch_size, compute)
        bad_rows.extend(r for rows in bad if rows for r in rows)
        return TokenStats(**{f: [s[f] for s in samples] for f in STAT_FIELDS})

    def generate(self, handle: "ModelHandle", parts: Sequence[PromptParts],
                 names: Sequence[str] | None = None) -> list[str]:
        """Greedy answers to ``parts`` (cached); see :meth:`generations`."""
        return self.generations(handle, parts, names).texts

    def generations(self, handle: "ModelHandle", parts: Sequence[PromptParts],
                    names: Sequence[str] | None = None) -> "Generations":
        """Greedy answers to ``parts`` with each sample's new-token budget and whether it was cut
        to fit the context (cached; the generation policy is part of the key).  A cut budget is
        warned about (:class:`~pytest_unlearn.generation.GenerationBudgetWarning`)."""
        from .generation import GENERATION_POLICY, Generations, greedy_generations, warn_cut

        encoded = self.encode(handle, parts, names)
        context_length = handle.context_length
        fixed = self.new_tokens(parts)
        # no batch size in the key: each sample has its own budget and stops on its own, so its
        # generation does not depend on the batch it lands in (tests/models/test_batch_invariance.py)
        key = cache_key("generate", handle.fingerprint, _ids_digest(encoded),
                        str(handle.device.type), str(handle.dtype), GENERATION_POLICY, context_length,
                        *([list(fixed)] if fixed is not None else []))
        hit = self.cache.get(key)
        if hit is not None and {"text", "budget", "cut"} <= set(hit):
            self.cost.cached += 1
            gens = Generations([str(s) for s in hit["text"]], [int(b) for b in hit["budget"]],
                               [bool(c) for c in hit["cut"]])
            warn_cut(gens, context_length, names)
            return gens
        t0 = time.perf_counter()
        bad: list[bool] = []
        if distributed.active():
            gens = self._sharded_generate(handle, encoded, bad, key, fixed)
        else:
            hook = handle.model.register_forward_hook(_nonfinite_step_hook(bad))
            try:
                gens = greedy_generations(handle.model, handle.tokenizer,
                                          [e.input_ids[:e.answer_start] for e in encoded],
                                          [e.n_answer for e in encoded], batch_size=self.batch_size,
                                          progress=self.progress and "generating",
                                          context_length=context_length, new_tokens=fixed)
            finally:
                hook.remove()
        if bad:
            first = f" of {names[0].rsplit(' sample ', 1)[0]}" if names else ""
            raise MetricError(
                f"{_model_label(handle)} produced NaN or inf logits while generating "
                f"answers to {len(encoded)} prompts{first}; the generated text (and any metric on it) would "
                "be meaningless, so no verdict can be given. Check the weights for overflow, or load in "
                "float32 (unlearn_dtype / --unlearn-dtype float32)")
        self.cost.generations += -(-len(encoded) // (self.batch_size or default_batch_size(handle.device)))
        self.cost.seconds += time.perf_counter() - t0
        self.cache.put(key, {"text": np.array(gens.texts, dtype=str),
                             "budget": np.array(gens.budgets, dtype=np.int64),
                             "cut": np.array(gens.cut, dtype=bool)})
        warn_cut(gens, context_length, names)
        return gens

    def _sharded_generate(self, handle, encoded, bad: list, key: str, fixed=None) -> "Generations":
        """Greedy generation split over the ranks by whole length-sorted batches (of the prompts'
        lengths, as :func:`~pytest_unlearn.generation.greedy_generations` batches them), gathered."""
        from .generation import Generations, greedy_generations

        batch_size = self.batch_size or default_batch_size(handle.device)
        contexts = [e.input_ids[:e.answer_start] for e in encoded]

        def compute(rows: list[int]):
            flag: list[bool] = []
            hook = handle.model.register_forward_hook(_nonfinite_step_hook(flag))
            try:
                part = greedy_generations(handle.model, handle.tokenizer, [contexts[i] for i in rows],
                                          [encoded[i].n_answer for i in rows], batch_size=batch_size,
                                          progress=self.progress and distributed.is_main_process() and "generating",
                                          context_length=handle.context_length,
                                          new_tokens=None if fixed is None else [fixed[i] for i in rows])
            finally:
                hook.remove()
            return list(zip(part.texts, part.budgets, part.cut)), bool(flag)

        items, flags = distributed.run_sharded(f"generation {key[:16]} ({len(encoded)} prompts)",
                                               [len(c) for c in contexts], batch_size, compute)
        if any(flags):
            bad.append(True)
        return Generations([str(t) for t, _, _ in items], [int(b) for _, b, _ in items],
                           [bool(c) for _, _, c in items])

    # ------------------------------------------------------------ metrics
    def per_sample(self, metric: str | Metric, handle: "ModelHandle", dataset: "Dataset", *,
                   parts: Sequence[PromptParts] | None = None, logits_fn: Callable | None = None,
                   variant: str = "") -> np.ndarray:
        """One score per sample of ``dataset`` (``parts`` overrides the prompts)."""
        m = get_metric(metric)
        names = _sample_names(dataset)
        parts = list(parts) if parts is not None else dataset_parts(dataset)
        cut: set[int] = set()
        self.truncated, self.generation_cut = [], []
        if m.source == "forward":
            stats = self.token_stats(handle, parts, names=names, logits_fn=logits_fn, variant=variant)
            cut.update(self.last_truncated)
            values = np.array([m.fn(stats.sample(i), parts[i].answer) for i in range(len(parts))])
        elif m.source == "generation":
            gens = self.generations(handle, parts, names)
            cut.update(self.last_truncated)
            values = np.array([m.fn(g, p.answer) for g, p in zip(gens.texts, parts)])
            self.generation_cut = [dataset.ids[i] for i, c in enumerate(gens.cut) if c]
        elif m.source == "truth_ratio":
            values = self._truth_ratio(m, handle, dataset, parts, names, logits_fn, variant, cut)
        elif m.source == "multiple_choice":
            from .multiple_choice import score_multiple_choice
            values = score_multiple_choice(self, m, handle, dataset, parts, names, logits_fn=logits_fn,
                                           variant=variant)
        else:
            raise MetricError(f"metric {m.name!r} has unknown source {m.source!r}")
        bad = np.flatnonzero(np.isnan(values))
        if len(bad):
            raise MetricError(
                f"{m.name} is NaN for {len(bad)} of {len(values)} samples (first: {names[bad[0]]}); "
                "the model produced NaN or inf logits, so no verdict can be given"
            )
        self.truncated = [dataset.ids[i] for i in sorted(cut)]
        return values

    def _truth_ratio(self, m, handle, dataset, parts, names, logits_fn, variant, cut: set) -> np.ndarray:
        if not dataset.has("perturbed_answer"):
            raise MetricError(
                f"{dataset.source}: truth_ratio needs a 'perturbed_answer' column (a list of wrong "
                "answers per row) and ideally 'paraphrased_answer'"
            )
        para = list(dataset.frame["paraphrased_answer"]) if dataset.has("paraphrased_answer") else list(dataset.answers)
        pert = [list(x) for x in dataset.frame["perturbed_answer"]]
        para_parts = [p.with_(answer=a) for p, a in zip(parts, para)]
        flat = [(i, p.with_(answer=a)) for i, p in enumerate(parts) for a in pert[i]]
        s_para = self.token_stats(handle, para_parts, names=names, logits_fn=logits_fn, variant=variant)
        cut.update(self.last_truncated)
        s_pert = self.token_stats(handle, [p for _, p in flat], logits_fn=logits_fn, variant=variant)
        cut.update(flat[j][0] for j in self.last_truncated)
        grouped: list[list[np.ndarray]] = [[] for _ in parts]
        for j, (i, _) in enumerate(flat):
            grouped[i].append(s_pert.logprob[j])
        return np.array([m.fn(s_para.logprob[i], grouped[i]) for i in range(len(parts))])

    def score(self, metric: str | Metric, handle: "ModelHandle", dataset: "Dataset", *,
              reduce: str = "mean", parts: Sequence[PromptParts] | None = None,
              attack: str | None = None) -> ScoreResult:
        import pandas as pd

        m = get_metric(metric)
        values = self.per_sample(m, handle, dataset, parts=parts)
        series = pd.Series(values, index=pd.Index(dataset.ids, name="sample"), name=m.name)
        return ScoreResult(m, series, reduce_scores(values, reduce, m), reduce, handle.name,
                           dataset.name, attack, self.cost.as_dict(), truncated=list(self.truncated),
                           generation_cut=list(self.generation_cut))
