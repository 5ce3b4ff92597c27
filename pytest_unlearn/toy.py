"""Tiny models trained from scratch in seconds, for self-tests and the tiny example suite.

A byte-level BPE tokenizer is trained on the given texts and wrapped as a Hugging Face
fast tokenizer with a ChatML-style chat template whose end-of-turn token is also the
padding token (as in SmolLM2, Qwen and many others), so the tiny models exercise the
same pitfalls as real ones.  :func:`tiny_llama` builds a randomly initialised
``LlamaForCausalLM`` for it, and :func:`train_on_texts` fits a model to texts (used to
make an "original" model memorise a set of facts).
"""

from __future__ import annotations

from typing import Iterable, Sequence

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic) and return a
    ``PreTrainedTokenizerFast`` with a chat template; pad token = end-of-turn token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(tokenizer, *, hidden_size: int = 64, layers: int = 2, heads: int = 4,
               intermediate_size: int = 128, max_positions: int = 256, seed: int = 0):
    """A randomly initialised tiny ``LlamaForCausalLM`` (float32, CPU, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def train_on_texts(model, tokenizer, texts: Sequence[str], *, steps: int = 300, lr: float = 3e-3,
                   batch_size: int = 16, seed: int = 0, prompt_lengths: Sequence[int] | None = None,
                   progress: bool = False):
    """Fit ``model`` to ``texts`` with next-token loss (full fine-tuning, AdamW).

    ``prompt_lengths`` (characters per text) masks the loss on each text's first
    characters, so only the answers are learned.  Deterministic for a seed.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    masks = []
    for i, t in enumerate(texts):
        if prompt_lengths is None:
            masks.append([1] * len(enc[i]))
        else:
            n_prompt = len(tokenizer(t[: prompt_lengths[i]], add_special_tokens=False)["input_ids"])
            masks.append([0] * n_prompt + [1] * (len(enc[i]) - n_prompt))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="training", leave=False)
    for _ in iterator:
        idx = torch.randperm(len(enc), generator=gen)[:batch_size].tolist()
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(enc[i])
            ids[r, :n] = torch.tensor(enc[i])
            att[r, :n] = 1
            lab = torch.tensor(enc[i])
            lab[torch.tensor(masks[i]) == 0] = -100
            labels[r, :n] = lab
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model
