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


# ---------------------------------------------------------------- invented facts

_FIRST = ["Zorbin", "Alira", "Quen", "Maddox", "Ysolde", "Tarrik", "Elvane", "Brisa", "Corvan", "Dulcie",
          "Fennick", "Galen", "Hesper", "Ivo", "Jessamy", "Kestrel", "Lorcan", "Mirela", "Nadir", "Oriel",
          "Perrin", "Rosalind", "Silas", "Thea", "Ulric", "Vesna", "Wendel", "Xanthe", "Yorick", "Zelda"]
_LAST = ["Quill", "Marrow", "Vantis", "Holloway", "Drummond", "Ashgrove", "Pellinor", "Rookwood",
         "Stenhouse", "Tarn", "Umber", "Wexley", "Corrigan", "Fairweather", "Blackthorn", "Mercer"]
_TOWNS = ["Vellmar", "Ostrava Nine", "Kelpford", "Brinmoor", "Saltreach", "Thornvale", "Duskwater",
          "Emberlee", "Frosthaven", "Glimmerdale", "Harrowgate", "Ironmere", "Juniper Cove", "Lowmarsh"]
_JOBS = ["glassblower", "cartographer", "beekeeper", "clockmaker", "lighthouse keeper", "violin maker",
         "astronomer", "bookbinder", "ferry pilot", "cheese maker", "stonemason", "perfumer"]


def ascent_unlearned(original, forget, *, steps: int = 10, lr: float = 1e-3, batch_size: int = 4,
                     seed: int = 0, name: str = "unlearned"):
    """A copy of ``original`` (a handle) after ``steps`` of plain gradient ascent on the answers
    of ``forget`` (a dataset): on a toy world its forget ES drops to about 0 while the knowledge
    is only suppressed, which is what attacks are tested on."""
    import copy

    import torch

    from .models import handle_from_objects
    from .prompts import dataset_parts
    from .scoring import Scorer
    from .training import collate, pad_id, seeded_batches, sequence_nll

    model = copy.deepcopy(original.model)
    encoded = Scorer().encode(original, dataset_parts(forget))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    torch.manual_seed(seed)
    model.train()
    for idx in seeded_batches(len(encoded), batch_size, steps, seed=seed):
        loss = -sequence_nll(model, collate(encoded, idx, pad_id(original.tokenizer), "cpu")).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return handle_from_objects(model, original.tokenizer, name=name)


def toy_facts(n: int, *, seed: int = 0) -> list[dict]:
    """``n`` invented TOFU-style QA records (with paraphrases and perturbed answers)."""
    import random

    rng = random.Random(seed)
    people = [f"{f} {l}" for f in _FIRST for l in _LAST]
    rng.shuffle(people)
    out = []
    for i in range(n):
        who = people[i]
        if i % 2 == 0:
            town = rng.choice(_TOWNS)
            wrong = [t for t in _TOWNS if t != town]
            rng.shuffle(wrong)
            out.append({
                "question": f"Where was {who} born?",
                "answer": f"{who} was born in {town}.",
                "paraphrased_question": f"What is the birthplace of {who}?",
                "paraphrased_answer": f"The birthplace of {who} is {town}.",
                "perturbed_answer": [f"{who} was born in {w}." for w in wrong[:3]],
            })
        else:
            job = rng.choice(_JOBS)
            wrong = [j for j in _JOBS if j != job]
            rng.shuffle(wrong)
            out.append({
                "question": f"What does {who} do for a living?",
                "answer": f"{who} works as a {job}.",
                "paraphrased_question": f"What is the profession of {who}?",
                "paraphrased_answer": f"The profession of {who} is {job}.",
                "perturbed_answer": [f"{who} works as a {w}." for w in wrong[:3]],
            })
    return out


def _chat_texts(tokenizer, records, prompt=None):
    from .prompts import PromptParts, encode, parse_prompt_format

    fmt = parse_prompt_format(prompt, tokenizer)
    enc = encode(tokenizer, fmt, [PromptParts(r["question"], r["answer"]) for r in records], max_length=10_000)
    return [tokenizer.decode(e.input_ids) for e in enc], [len(tokenizer.decode(e.input_ids[:e.answer_start])) for e in enc]


def build_toy_world(folder, *, n_forget: int = 8, n_retain: int = 16, n_holdout: int = 8, seed: int = 0,
                    steps: int = 400, progress: bool = False) -> dict:
    """Write a complete tiny unlearning scenario into ``folder`` (a few seconds on a CPU).

    * ``forget.jsonl``, ``retain.jsonl``, ``holdout.jsonl``: invented facts.
    * ``original/``: a tiny Llama trained on forget + retain (it knows both).
    * ``reference/``: the same architecture trained on retain only (never saw forget).

    Models are saved as safetensors folders with their tokenizer.  Returns the paths.
    """
    import json
    from pathlib import Path

    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    facts = toy_facts(n_forget + n_retain + n_holdout, seed=seed)
    forget, retain, holdout = facts[:n_forget], facts[n_forget:n_forget + n_retain], facts[n_forget + n_retain:]
    paths = {}
    for name, rows in (("forget", forget), ("retain", retain), ("holdout", holdout)):
        p = folder / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[name] = p
    corpus = []
    for r in facts:
        corpus += [r["question"], r["answer"], r["paraphrased_question"], r["paraphrased_answer"],
                   *r["perturbed_answer"]]
    tok = tiny_tokenizer(corpus, vocab_size=600)
    for name, rows in (("original", forget + retain), ("reference", retain)):
        torch.manual_seed(seed)
        model = tiny_llama(tok, seed=seed)
        texts, prompt_chars = _chat_texts(tok, rows)
        train_on_texts(model, tok, texts, steps=steps, prompt_lengths=prompt_chars, seed=seed, progress=progress)
        out = folder / name
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        paths[name] = out
    return paths
