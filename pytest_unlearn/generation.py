"""Batched greedy generation (KV cache, left padding, a new-token budget per sample).

Used by ``rouge_l``, by failure messages that show what the model produced and by the leak
search.  The rules (:data:`GENERATION_POLICY`, recorded in the report and in the cache key):

* **Budget per sample.**  Sample ``i`` may generate ``floor(1.25 x n_i) + 8`` new tokens, where
  ``n_i`` is the number of tokens of its own reference answer (:func:`new_token_budget`).  Each
  row of a batch stops at its own budget (and its text is cut there), so a sample's generation
  never depends on the samples it is batched with, the batch size or an out-of-memory back-off:
  it is exactly what generating that sample alone gives.
* **Bounded by the context.**  The budget is lowered so that prompt + budget fits in the model's
  positions (:func:`token_budgets`); a lowered budget is recorded per sample
  (:attr:`Generations.cut`) and warned about.  Rows of one batch that would run past the
  positions while a longer-budget neighbour is still generating are generated in a separate
  call, so an absolute-position model (GPT-2, OPT) never indexes past its position table.
* **Plain argmax.**  Decoding is greedy argmax whatever the checkpoint's ``generation_config``
  ships: no repetition penalty, n-gram blocking, minimum length, bad or suppressed words,
  forced tokens, sequence bias, length decay or guidance (:func:`greedy_config`).
* **Stop tokens.**  A row stops at the first of any stop token: the tokenizer's EOS and every
  id in the model's ``generation_config.eos_token_id`` (an end-of-turn token, as Llama-3,
  Gemma or Phi-3.5 list there) (:func:`stop_token_ids`).

A batch that runs out of device memory is generated again in smaller batches
(:func:`~pytest_unlearn.batching.run_batches`).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

from .forward import default_batch_size, input_device, left_padded, length_sorted_batches

#: How generation is done; part of the cache key of every generation and of the report.
GENERATION_POLICY = {
    "decoding": "greedy argmax; the checkpoint's generation_config processors are switched off",
    "budget": "per sample: floor(1.25 x answer tokens) + 8 new tokens, lowered so that prompt + budget "
              "fits the model's context",
    "stop": "the tokenizer's eos_token_id and every id of the model's generation_config.eos_token_id",
}


class GenerationBudgetWarning(UserWarning):
    """A sample's new-token budget was lowered to fit the model's context."""


def new_token_budget(n_answer: int) -> int:
    """New tokens allowed for an answer of ``n_answer`` tokens: ``floor(1.25 x n_answer) + 8``."""
    return int(n_answer * 1.25) + 8


def model_context_length(model) -> int | None:
    """The number of positions of ``model`` from its config (``max_position_embeddings`` or
    ``n_positions``); ``None`` when the config names none."""
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            config = get_text(decoder=True)
        except TypeError:  # older signature
            config = get_text()
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def token_budgets(prompt_lengths: Sequence[int], answer_lengths: Sequence[int],
                  context_length: int | None, new_tokens: "int | Sequence[int] | None" = None
                  ) -> tuple[list[int], list[bool]]:
    """Each sample's new-token budget and whether it was lowered to fit ``context_length``
    (prompt + budget <= context; never below 0).  ``new_tokens`` fixes the budget instead of
    :func:`new_token_budget` (a benchmark's own length, e.g. MUSE's 128); a sequence gives
    each sample its own."""
    budgets, cut = [], []
    fixed = [new_tokens] * len(prompt_lengths) if new_tokens is None or isinstance(new_tokens, int) \
        else list(new_tokens)
    for p, n, f in zip(prompt_lengths, answer_lengths, fixed):
        want = new_token_budget(n) if f is None else int(f)
        room = want if context_length is None else max(0, context_length - p)
        budgets.append(min(want, room))
        cut.append(room < want)
    return budgets, cut


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and every EOS id of the model's generation config (int or list),
    falling back to the model config's when it has no generation config."""
    ids: list[int] = []

    def add(value) -> None:
        if value is None:
            return
        for v in (value if isinstance(value, (list, tuple, set)) else [value]):
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    add(getattr(tokenizer, "eos_token_id", None))
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        add(getattr(gen, "eos_token_id", None))
    else:
        add(getattr(getattr(model, "config", None), "eos_token_id", None))
    return ids


def greedy_config(max_new_tokens: int, stop_ids: Sequence[int], pad_token_id: int):
    """A fresh :class:`~transformers.GenerationConfig` for plain argmax decoding: only the budget,
    the stop tokens and the padding set, every logits processor at its neutral value."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
        eos_token_id=list(stop_ids) or None, pad_token_id=int(pad_token_id), use_cache=True,
        repetition_penalty=1.0, no_repeat_ngram_size=0,
    )


@contextlib.contextmanager
def _checkpoint_defaults_off(model) -> Iterator[None]:
    """Give ``model`` (and any module it wraps, e.g. a PEFT base model) a default
    ``generation_config`` while generating.  ``generate`` fills what a passed config leaves
    unset from the model's own config (transformers >= 4.50), which would bring the
    checkpoint's repetition penalty, bad words, forced tokens ... back in."""
    from transformers import GenerationConfig

    saved = []
    modules = model.modules() if hasattr(model, "modules") else [model]
    for m in modules:
        current = getattr(m, "generation_config", None)
        if isinstance(current, GenerationConfig):
            saved.append((m, current))
    try:
        for m, _ in saved:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, current in saved:
            m.generation_config = current


def _row_budget_criterion(start: int, budgets):
    """A stopping criterion that finishes each row at its own number of new tokens."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RowBudgets(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids.shape[1] - start) >= budgets.to(input_ids.device)

    return StoppingCriteriaList([RowBudgets()])


def _position_safe_groups(idx: Sequence[int], lengths: Sequence[int], budgets: Sequence[int],
                          context_length: int | None) -> list[list[int]]:
    """Split a batch so that no row is fed past ``context_length`` positions while a row with a
    larger budget is still generating (a finished row keeps being fed padding).  Rows with a
    budget of 0 are left out.  One group unless a prompt nearly fills the context."""
    rest = [i for i in idx if budgets[i] > 0]
    groups = []
    while rest:
        steps = max(budgets[i] for i in rest)
        group = [i for i in rest if context_length is None or lengths[i] + steps <= context_length]
        groups.append(group)  # never empty: the row with the largest budget fits by construction
        rest = [i for i in rest if i not in group]
    return groups


@dataclass
class Generations:
    """Greedy texts with each sample's new-token budget and whether it was cut to fit the context."""

    texts: list[str]
    budgets: list[int]
    cut: list[bool]

    @property
    def n_cut(self) -> int:
        return sum(bool(c) for c in self.cut)


def greedy_generations(model, tokenizer, contexts: Sequence[list[int]], answer_lengths: Sequence[int], *,
                       batch_size: int | None = None, progress: bool | str = False,
                       context_length: int | None = None,
                       new_tokens: "int | Sequence[int] | None" = None) -> Generations:
    """Greedy continuations of token-id contexts under :data:`GENERATION_POLICY`, decoded
    without special tokens and stripped.

    ``context_length`` bounds prompt + budget (default: :func:`model_context_length`).  One
    ``generate`` call per batch with a KV cache; a sample's text is what generating it alone
    gives.  ``new_tokens`` fixes every sample's budget (see :func:`token_budgets`).
    """
    import torch

    from .batching import run_batches, workload_key
    from .prompts import Encoded

    device = input_device(model)
    batch_size = batch_size or default_batch_size(device)
    if context_length is None:
        context_length = model_context_length(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        pad = 0
    stops = stop_token_ids(model, tokenizer)
    lengths = [len(c) for c in contexts]
    budgets, cut = token_budgets(lengths, answer_lengths, context_length, new_tokens)
    encoded = [Encoded(list(c), len(c)) for c in contexts]
    batches = length_sorted_batches(lengths, batch_size)
    out: dict[int, str] = {}
    iterator = batches
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(batches, desc=progress if isinstance(progress, str) else "generating",
                        unit="batch", leave=False)

    def decode(row_ids: list[int]) -> str:
        for j, t in enumerate(row_ids):
            if t in stops:
                row_ids = row_ids[:j]
                break
        return tokenizer.decode(row_ids, skip_special_tokens=True).strip()

    def work(idx: list[int]) -> None:
        texts = {i: "" for i in idx if budgets[i] == 0}
        for group in _position_safe_groups(idx, lengths, budgets, context_length):
            ids, mask, _ = left_padded(encoded, group, pad, device)
            rows = torch.tensor([budgets[i] for i in group])
            config = greedy_config(int(rows.max()), stops, pad)
            with _checkpoint_defaults_off(model):
                gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                     stopping_criteria=_row_budget_criterion(ids.shape[1], rows))
            new = gen[:, ids.shape[1]:].tolist()
            for r, i in enumerate(group):
                texts[i] = decode(new[r][:budgets[i]])
        out.update(texts)  # only once the whole batch succeeded (an OOM retry starts afresh)

    # a sample occupies its context plus the new tokens it may generate
    widths = [n + b for n, b in zip(lengths, budgets)]
    with torch.inference_mode():
        run_batches(iterator, work, widths=widths, device=device,
                    key=workload_key("generate", model, device), what="greedy generation")
    return Generations([out[i] for i in range(len(contexts))], budgets, cut)


def greedy_generate(model, tokenizer, contexts: Sequence[list[int]], answer_lengths: Sequence[int], *,
                    batch_size: int | None = None, progress: bool | str = False,
                    context_length: int | None = None) -> list[str]:
    """The texts of :func:`greedy_generations`."""
    return greedy_generations(model, tokenizer, contexts, answer_lengths, batch_size=batch_size,
                              progress=progress, context_length=context_length).texts


def warn_cut(gens: Generations, context_length: int | None, names: Sequence[str] | None = None) -> None:
    """Warn (:class:`GenerationBudgetWarning`) when budgets were lowered to fit the context."""
    if not gens.n_cut:
        return
    first = next(i for i, c in enumerate(gens.cut) if c)
    label = names[first] if names is not None else f"sample {first}"
    warnings.warn(GenerationBudgetWarning(
        f"{gens.n_cut} of {len(gens.cut)} samples had their new-token budget lowered to fit the model's "
        f"context of {context_length} tokens (first: {label}, {gens.budgets[first]} new tokens); their "
        "generated answers may stop short of the reference"), stacklevel=3)
