"""Batched greedy generation (KV cache, left padding, bounded new tokens).

Used by ``rouge_l`` and by failure messages that show what the model produced.
A batch that runs out of device memory is generated again in smaller batches
(:func:`~pytest_unlearn.batching.run_batches`).
"""

from __future__ import annotations

from typing import Sequence

from .forward import default_batch_size, input_device, left_padded, length_sorted_batches


def new_token_budget(n_answer: int) -> int:
    """New tokens allowed for an answer of ``n_answer`` tokens: 1.25x + 8."""
    return int(n_answer * 1.25) + 8


def greedy_generate(model, tokenizer, contexts: Sequence[list[int]], answer_lengths: Sequence[int], *,
                    batch_size: int | None = None, progress: bool | str = False) -> list[str]:
    """Greedy continuations of token-id contexts, decoded without special tokens.

    Each batch generates at most ``new_token_budget`` of its longest answer and stops
    at the end-of-sequence token.
    """
    import torch

    from .batching import run_batches, workload_key
    from .prompts import Encoded

    device = input_device(model)
    batch_size = batch_size or default_batch_size(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [Encoded(list(c), len(c)) for c in contexts]
    batches = length_sorted_batches([len(c) for c in contexts], batch_size)
    out: dict[int, str] = {}
    iterator = batches
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(batches, desc=progress if isinstance(progress, str) else "generating",
                        unit="batch", leave=False)

    def work(idx: list[int]) -> None:
        ids, mask, _ = left_padded(encoded, idx, pad, device)
        budget = new_token_budget(max(answer_lengths[i] for i in idx))
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=budget, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id, num_beams=1,
                             temperature=None, top_p=None, top_k=None)
        texts = [tokenizer.decode(gen[r, ids.shape[1]:], skip_special_tokens=True).strip()
                 for r in range(len(idx))]
        out.update(zip(idx, texts))

    # a sample occupies its context plus the new tokens it may generate
    widths = [len(c) + new_token_budget(n) for c, n in zip(contexts, answer_lengths)]
    with torch.inference_mode():
        run_batches(iterator, work, widths=widths, device=device,
                    key=workload_key("generate", model, device), what="greedy generation")
    return [out[i] for i in range(len(contexts))]
