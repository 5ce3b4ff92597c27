"""Greedy generation: a budget per sample, plain argmax, every stop token, the context bound.

Every generation is checked against an independent argmax loop written here (no KV cache, no
padding, no ``generate``): feed the prompt and the tokens so far, take the argmax of the last
logits, stop at a stop token or after the sample's own budget of ``floor(1.25 x answer
tokens) + 8`` new tokens, decode without special tokens.

The scripted models are tiny Llamas whose only path is embedding -> lm_head (the attention and
MLP outputs are zeroed), so the next token is a lookup table of the last one: a chain of words
chosen here, generated with a real KV cache and left padding.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_unlearn import generation  # noqa: E402
from pytest_unlearn.cache import ResultCache  # noqa: E402
from pytest_unlearn.data import dataset_from_records  # noqa: E402
from pytest_unlearn.generation import (  # noqa: E402
    GenerationBudgetWarning,
    greedy_generate,
    greedy_generations,
    new_token_budget,
    stop_token_ids,
)
from pytest_unlearn.metrics import rouge_l_recall  # noqa: E402
from pytest_unlearn.models import handle_from_objects  # noqa: E402
from pytest_unlearn.prompts import PromptParts, dataset_parts  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECIALS = ["<pad>", "<eos>", "<eot>", "<unk>"]
WORDS = ([f"q{i}" for i in range(8)] + [f"f{i}" for i in range(12)] + [f"l{i}" for i in range(20)]
         + [f"w{i}" for i in range(12)] + ["ans", "junk"])


def word_tokenizer(eot_special: bool = True):
    """One token per word (whitespace split), decoded with spaces; EOS ``<eos>``, pad ``<pad>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    if eot_special:
        fast.add_special_tokens({"additional_special_tokens": ["<eot>"]})
    return fast


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def scripted_llama(tok, chains: dict[str, str], *, eos_ids=None):
    """A Llama whose greedy next token depends on the last token alone: ``chains`` maps a word
    to the words that follow it in turn (``"q0": "f0 f1 <eos>"`` makes q0 -> f0 -> f1 -> <eos>).
    Unscripted tokens continue with ``junk``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    v = len(tok)
    config = LlamaConfig(vocab_size=v, hidden_size=v, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=256,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    nxt = torch.full((v,), tok.convert_tokens_to_ids("junk"))
    for start, rest in chains.items():
        seq = [tok.convert_tokens_to_ids(w) for w in [start] + rest.split()]
        for a, b in zip(seq, seq[1:]):
            nxt[a] = b
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(v))
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(v, v)
        head[nxt, torch.arange(v)] = 1.0
        model.lm_head.weight.copy_(head)
    if eos_ids is not None:
        model.generation_config.eos_token_id = eos_ids
    return model


def random_llama(tok, seed: int = 0, max_positions: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(tok, n_positions: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=n_positions,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def argmax_loop(model, tok, prompt: list[int], budget: int, stops: set[int]) -> str:
    """Plain greedy decoding, written from the definition: no cache, no padding, no processors."""
    new: list[int] = []
    with torch.no_grad():
        for _ in range(budget):
            logits = model(input_ids=torch.tensor([prompt + new])).logits[0, -1]
            t = int(torch.argmax(logits))
            if t in stops:
                break
            new.append(t)
    return tok.decode(new, skip_special_tokens=True).strip()


def old_style_generate(model, tok, prompt: list[int], budget: int) -> str:
    """What ``generate`` gives with the checkpoint's generation_config left in place."""
    gen = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=budget, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    return tok.decode(gen[0, len(prompt):], skip_special_tokens=True).strip()


# ---------------------------------------------------------------- 1. a budget per sample

def test_budget_formula():
    assert [new_token_budget(n) for n in (0, 1, 3, 4, 8, 10)] == [8, 9, 11, 13, 18, 20]


def test_row_stops_at_its_own_budget_whatever_its_batch():
    """A one-token answer may generate 9 tokens; batched with a 16-token answer (budget 28) it
    used to generate 28 and reach the reference at token 10."""
    tok = word_tokenizer()
    filler = " ".join(f"f{i}" for i in range(9))
    long_answer = " ".join(f"l{i}" for i in range(16))
    model = scripted_llama(tok, {"q0": f"{filler} ans <eos>", "q1": f"{long_answer} <eos>"})
    prompts = [ids(tok, "q0"), ids(tok, "q1")]
    answers = [1, 16]
    stops = set(stop_token_ids(model, tok))
    expected = [argmax_loop(model, tok, p, new_token_budget(n), stops) for p, n in zip(prompts, answers)]
    assert expected == [filler, long_answer]
    for bs in (1, 2):
        gens = greedy_generations(model, tok, prompts, answers, batch_size=bs)
        assert gens.texts == expected, bs
        assert gens.budgets == [9, 28] and gens.cut == [False, False]


# ---------------------------------------------------------------- 5. independent of the batch size

@pytest.fixture(scope="module")
def scripted_world():
    """Answers of several lengths; for some the reference lies just past their own budget."""
    tok = word_tokenizer()
    f = [f"f{i}" for i in range(12)]
    lw = [f"l{i}" for i in range(20)]
    w = [f"w{i}" for i in range(12)]
    chains = {
        "q0": " ".join(f[:9]) + " ans <eos>",          # answer 'ans' is the 10th token: budget 9
        "q1": " ".join(lw[:16]) + " <eos>",            # 16-token answer, budget 28
        "q2": " ".join(w[:3]) + " <eos>",              # exact 3-token answer
        "q3": " ".join(f[9:12]) + " " + " ".join(w[3:12]) + " junk",  # answer 'w11' beyond budget 11
        "q4": " ".join(lw[16:20]) + " <eos>",          # 4-token answer
    }
    model = scripted_llama(tok, chains)
    records = [
        {"id": "short-late", "question": "q0", "answer": "ans"},
        {"id": "long", "question": "q1", "answer": " ".join(lw[:16])},
        {"id": "exact", "question": "q2", "answer": " ".join(w[:3])},
        {"id": "late2", "question": "q3 q3", "answer": "w11 w10 w9"},
        {"id": "four", "question": "q4", "answer": " ".join(lw[16:20])},
    ]
    handle = handle_from_objects(model, tok, name="scripted")
    return handle, dataset_from_records(records, name="forget")


def test_rouge_l_and_texts_identical_at_batch_sizes_1_3_8(scripted_world):
    handle, data = scripted_world
    runs = {}
    for bs in (1, 3, 8):
        scorer = Scorer(prompt="{question}", batch_size=bs)
        runs[bs] = (scorer.per_sample("rouge_l", handle, data),
                    scorer.generate(handle, dataset_parts(data)))
    for bs in (3, 8):
        assert np.array_equal(runs[bs][0], runs[1][0]), (bs, runs[bs][0], runs[1][0])
        assert runs[bs][1] == runs[1][1]
    # against the independent loop and the published ROUGE-L recall
    scores, texts = runs[1]
    stops = set(stop_token_ids(handle.model, handle.tokenizer))
    enc = Scorer(prompt="{question}").encode(handle, dataset_parts(data))
    expected = [argmax_loop(handle.model, handle.tokenizer, e.input_ids[:e.answer_start],
                            new_token_budget(e.n_answer), stops) for e in enc]
    assert texts == expected
    assert list(scores) == [rouge_l_recall(t, a) for t, a in zip(texts, data.answers)]
    assert scores[0] == 0.0 and scores[1] == 1.0  # the short answer's reference lies past its budget


def test_toy_model_generation_identical_at_batch_sizes_1_3_8(toy_world):
    """The trained toy model on all its samples: the same texts whatever the batch size."""
    from pytest_unlearn.data import load_dataset
    from pytest_unlearn.models import load_model
    handle = load_model(toy_world["original"], device="cpu", name="original")
    parts = [p for n in ("forget", "retain") for p in dataset_parts(load_dataset(toy_world[n], name=n))]
    runs = {bs: Scorer(batch_size=bs).generations(handle, parts) for bs in (1, 3, 8)}
    assert runs[3].texts == runs[1].texts and runs[8].texts == runs[1].texts
    assert runs[1].budgets == runs[8].budgets
    assert any(runs[1].texts)


# ---------------------------------------------------------------- 2. plain argmax

def _processor_settings(tok, first: int):
    return {
        "repetition_penalty": {"repetition_penalty": 1.3},
        "no_repeat_ngram_size": {"no_repeat_ngram_size": 1},
        "bad_words_ids": {"bad_words_ids": [[first]]},
        "suppress_tokens": {"suppress_tokens": [first]},
        "begin_suppress_tokens": {"begin_suppress_tokens": [first]},
        "forced_eos_token_id": {"forced_eos_token_id": tok.convert_tokens_to_ids("junk")},
        "sequence_bias": {"sequence_bias": {(first,): -100.0}},
    }


PROCESSORS = ["repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
              "begin_suppress_tokens", "forced_eos_token_id", "sequence_bias"]


@pytest.mark.parametrize("name", PROCESSORS)
def test_checkpoint_generation_config_does_not_change_the_argmax(name):
    tok = word_tokenizer()
    model = random_llama(tok, seed=3)
    prompts = [ids(tok, "q0 q1 q2"), ids(tok, "q3"), ids(tok, "q4 q5")]
    answers = [6, 2, 4]
    stops = set(stop_token_ids(model, tok))
    expected = [argmax_loop(model, tok, p, new_token_budget(n), stops) for p, n in zip(prompts, answers)]
    setting = _processor_settings(tok, ids(tok, expected[0].split()[0])[0])[name]
    for key, value in setting.items():
        setattr(model.generation_config, key, value)
    # the setting does change what generate() gives by default: this test can fail
    assert old_style_generate(model, tok, prompts[0], new_token_budget(answers[0])) != expected[0]
    assert greedy_generate(model, tok, prompts, answers, batch_size=2) == expected
    assert all(getattr(model.generation_config, k) == v for k, v in setting.items())  # left as it was


@pytest.mark.parametrize("setting", [{"min_new_tokens": 6}, {"min_length": 8}])
def test_minimum_length_is_not_inherited(setting):
    """A checkpoint asking for a minimum length must not keep an answer from ending."""
    tok = word_tokenizer()
    model = scripted_llama(tok, {"q0": "w0 w1 <eos> junk junk junk junk junk junk"})
    for key, value in setting.items():
        setattr(model.generation_config, key, value)
    prompt = ids(tok, "q0")
    assert old_style_generate(model, tok, prompt, 10) != "w0 w1"
    assert greedy_generate(model, tok, [prompt], [2]) == ["w0 w1"]


# ---------------------------------------------------------------- 3. stop tokens

def test_stops_at_the_generation_configs_end_of_turn_token():
    """The end-of-turn id is listed only in generation_config.eos_token_id, as Llama-3-Instruct,
    Gemma and Phi-3.5 do; the tokenizer's EOS is another token."""
    for special in (True, False):
        tok = word_tokenizer(eot_special=special)
        eot = tok.convert_tokens_to_ids("<eot>")
        model = scripted_llama(tok, {"q0": "w0 w1 <eot> junk w5 w6", "q1": "w2 <eos>"},
                               eos_ids=[tok.eos_token_id, eot])
        assert set(stop_token_ids(model, tok)) == {tok.eos_token_id, eot}
        prompts = [ids(tok, "q0"), ids(tok, "q1")]
        assert greedy_generate(model, tok, prompts, [2, 1], batch_size=2) == ["w0 w1", "w2"]


def test_stop_token_ids_int_list_and_missing():
    tok = word_tokenizer()
    model = random_llama(tok)
    model.generation_config.eos_token_id = 7
    assert stop_token_ids(model, tok) == [tok.eos_token_id, 7]
    model.generation_config.eos_token_id = [tok.eos_token_id, 9, 7]
    assert stop_token_ids(model, tok) == [tok.eos_token_id, 9, 7]
    model.generation_config.eos_token_id = None
    assert stop_token_ids(model, tok) == [tok.eos_token_id]


# ---------------------------------------------------------------- 4. the context bound

def test_budget_is_cut_to_the_context_of_an_absolute_position_model():
    """GPT-2 with 16 positions: a 12-token prompt may generate 4 tokens, not 1.25 x 6 + 8 = 15
    (an IndexError in the position table); batched with a short prompt whose budget is larger,
    neither row runs past the positions and each gives what it gives alone."""
    tok = word_tokenizer()
    model = tiny_gpt2(tok, n_positions=16)
    prompts = [ids(tok, " ".join(f"q{i % 8}" for i in range(12))), ids(tok, "q1 q2")]
    answers = [6, 4]
    stops = set(stop_token_ids(model, tok))
    gens = greedy_generations(model, tok, prompts, answers, batch_size=2)
    assert gens.budgets == [4, 13] and gens.cut == [True, False]
    assert gens.texts == [argmax_loop(model, tok, p, b, stops) for p, b in zip(prompts, [4, 13])]
    assert greedy_generate(model, tok, prompts, answers, batch_size=1) == gens.texts
    # a prompt that fills the context gets no new tokens
    full = greedy_generations(model, tok, [ids(tok, " ".join(["q1"] * 16))], [3])
    assert full.texts == [""] and full.budgets == [0] and full.cut == [True]


def test_scorer_records_and_warns_a_cut_budget(tmp_path):
    tok = word_tokenizer()
    model = tiny_gpt2(tok, n_positions=16)
    handle = handle_from_objects(model, tok, name="gpt2")
    data = dataset_from_records([
        {"id": "a", "question": " ".join(["q1"] * 10), "answer": "w0 w1 w2 w3"},
        {"id": "b", "question": "q2", "answer": "w4"},
    ], name="forget")
    scorer = Scorer(prompt="{question}", cache=ResultCache(tmp_path))
    with pytest.warns(GenerationBudgetWarning, match="1 of 2 samples"):
        gens = scorer.generations(handle, dataset_parts(data))
    assert gens.cut == [True, False] and gens.budgets == [6, new_token_budget(1)]
    with pytest.warns(GenerationBudgetWarning):  # a cache hit keeps the record
        again = scorer.generations(handle, dataset_parts(data))
    assert scorer.cost.cached == 1 and again == gens
    with pytest.warns(GenerationBudgetWarning):
        scores = scorer.per_sample("rouge_l", handle, data)
    assert len(scores) == 2


def test_score_result_names_the_samples_whose_budget_was_cut(tmp_path):
    """ScoreResult.generation_cut lists them for the generation metrics, like ScoreResult.truncated."""
    tok = word_tokenizer()
    handle = handle_from_objects(tiny_gpt2(tok, n_positions=16), tok, name="gpt2")
    data = dataset_from_records([
        {"question": " ".join(["q1"] * 10), "answer": "w0 w1 w2 w3"},
        {"question": "q2", "answer": "w4"},
        {"question": " ".join(["q3"] * 9), "answer": "w5"},
    ], name="forget")
    cut = [data.ids[0], data.ids[2]]
    scorer = Scorer(prompt="{question}", cache=ResultCache(tmp_path))
    with pytest.warns(GenerationBudgetWarning, match="2 of 3 samples"):
        result = scorer.score("rouge_l", handle, data)
    assert result.generation_cut == cut and result.truncated == []
    assert scorer.score("es", handle, data).generation_cut == []  # no generation, nothing cut
    with pytest.warns(GenerationBudgetWarning):  # from the cache: the same record
        assert scorer.score("rouge_l", handle, data).generation_cut == cut


def test_a_cached_generation_is_reused_at_another_batch_size(tmp_path):
    """Generation does not depend on the batch size, so neither does its cache key."""
    tok = word_tokenizer()
    handle = handle_from_objects(random_llama(tok, seed=3), tok, name="random")
    parts = [PromptParts(" ".join(f"q{j}" for j in range(i + 1)), " ".join(["w1"] * (i % 3 + 1)))
             for i in range(5)]
    first = Scorer(prompt="{question}", batch_size=1, cache=ResultCache(tmp_path))
    texts = first.generate(handle, parts)
    assert first.cost.generations == 5 and first.cost.cached == 0
    other = Scorer(prompt="{question}", batch_size=3, cache=ResultCache(tmp_path))
    assert other.generate(handle, parts) == texts
    assert other.cost.cached == 1 and other.cost.generations == 0
    fresh = Scorer(prompt="{question}", batch_size=3, cache=ResultCache(tmp_path / "empty"))
    assert fresh.generate(handle, parts) == texts  # and it is what batch size 3 generates


def test_policy_is_part_of_the_cache_key(tmp_path, monkeypatch):
    tok = word_tokenizer()
    model = scripted_llama(tok, {"q0": "w0 <eos>"})
    handle = handle_from_objects(model, tok, name="scripted")
    parts = [PromptParts("q0", "w0")]
    scorer = Scorer(prompt="{question}", cache=ResultCache(tmp_path))
    assert scorer.generate(handle, parts) == ["w0"]
    assert scorer.generate(handle, parts) == ["w0"] and scorer.cost.cached == 1
    monkeypatch.setattr(generation, "GENERATION_POLICY", {**generation.GENERATION_POLICY, "budget": "other"})
    scorer.generate(handle, parts)
    assert scorer.cost.cached == 1  # a changed policy never serves old text


def test_policy_reaches_the_report():
    from pytest_unlearn.reporting import Recorder, build_report

    report = build_report(Recorder(), {}, version="0")
    assert report["generation"] == generation.GENERATION_POLICY
    assert "1.25" in report["generation"]["budget"] and "argmax" in report["generation"]["decoding"]
