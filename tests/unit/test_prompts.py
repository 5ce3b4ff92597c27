"""Prompt formats and answer-exact tokenisation."""

from __future__ import annotations

import warnings

import pytest

from pytest_unlearn.errors import ConfigError, MetricError
from pytest_unlearn.prompts import (PromptFormat, PromptParts, TruncationWarning, encode,
                                    parse_prompt_format, render_context)
from pytest_unlearn.toy import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(["Where was Ada born? Ada was born in Vellmar. Question Answer"] * 5, vocab_size=300)


def test_auto_format_is_chat_when_template_exists(tok):
    assert parse_prompt_format(None, tok).kind == "chat"
    assert parse_prompt_format("auto", tok).kind == "chat"
    tok2 = tiny_tokenizer(["abc"], vocab_size=270)
    tok2.chat_template = None
    assert parse_prompt_format(None, tok2).kind == "plain"
    with pytest.raises(ConfigError, match="no chat template"):
        parse_prompt_format("chat", tok2)


def test_format_string_and_errors(tok):
    f = parse_prompt_format("Q: {question}\nA:", tok)
    assert f == PromptFormat("format", "Q: {question}\nA:")
    for bad in ("nonsense", "{question} {other}"):
        with pytest.raises(ConfigError):
            parse_prompt_format(bad, tok)


def test_chat_answer_tokens_are_exactly_the_answer(tok):
    fmt = parse_prompt_format("chat", tok)
    p = PromptParts("Where was Ada born?", "Ada was born in Vellmar.")
    (e,) = encode(tok, fmt, [p], max_length=512)
    assert tok.decode(e.input_ids[e.answer_start:]) == p.answer
    context = tok.decode(e.input_ids[: e.answer_start])
    assert context.endswith("<|im_start|>assistant\n")
    assert "<|im_end|>" not in tok.decode(e.input_ids[e.answer_start:])  # end-of-turn is not scored


def test_plain_format_puts_one_space_before_the_answer(tok):
    (e,) = encode(tok, parse_prompt_format("plain", tok), [PromptParts("Where was Ada born?", "Vellmar")],
                  max_length=512)
    assert tok.decode(e.input_ids[: e.answer_start]) == "Question: Where was Ada born?\nAnswer:"
    assert tok.decode(e.input_ids[e.answer_start:]) == " Vellmar"


def test_shots_prefill_and_system_in_chat(tok):
    p = PromptParts("Where was Ada born?", "x", shots=(("q1", "a1"),), prefill="Sure:", system="Be terse.")
    text = render_context(tok, parse_prompt_format("chat", tok), p)
    assert text.index("Be terse.") < text.index("q1") < text.index("a1") < text.index("Where was Ada")
    assert text.endswith("<|im_start|>assistant\nSure:")


def test_text_rows_are_not_templated(tok):
    p = PromptParts("Ada was born", " in Vellmar.", templated=False)
    (e,) = encode(tok, parse_prompt_format("chat", tok), [p], max_length=512)
    assert tok.decode(e.input_ids) == "Ada was born in Vellmar."
    assert tok.decode(e.input_ids[e.answer_start:]) == " in Vellmar."


def test_answer_that_tokenises_to_nothing_is_an_error(tok):
    with pytest.raises(MetricError, match="tokenises to nothing"):
        encode(tok, parse_prompt_format("chat", tok), [PromptParts("q", "")], max_length=512,
               sample_names=["forget.jsonl sample 3"])


def test_truncation_cuts_the_prompt_and_warns(tok):
    long_q = "Where was Ada born? " * 40
    with pytest.warns(TruncationWarning, match="1 of 1 prompts"):
        (e,) = encode(tok, parse_prompt_format("chat", tok), [PromptParts(long_q, "Vellmar.")], max_length=30)
    assert len(e.input_ids) == 30 and e.truncated
    assert tok.decode(e.input_ids[e.answer_start:]) == "Vellmar."


def test_answer_longer_than_context_is_an_error(tok):
    with pytest.raises(MetricError, match="longer than the model's context"):
        encode(tok, parse_prompt_format("chat", tok), [PromptParts("q", "Ada was born in Vellmar. " * 20)],
               max_length=16)


def test_no_warning_when_everything_fits(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode(tok, parse_prompt_format("chat", tok), [PromptParts("q?", "a.")], max_length=512)


# ---------------------------------------------------------------- SentencePiece answer boundary

SP_TEXTS = ["Question: Where was Ada born?\nAnswer: Ada was born in Vellmar. The quick brown fox jumps."] * 20
LLAMA2_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
               "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}"
               "{% endif %}{% endfor %}")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def sentencepiece_tokenizer(pipeline: str = "legacy", *, eos: bool = False, cls: str = "fast"):
    """A Llama-2 / Mistral-v0.1 style byte-fallback BPE with a prepended ``▁``: ``legacy`` as
    transformers 4.x loads Llama-2's tokenizer.json (normalizer Prepend + Replace), ``metaspace``
    with a Metaspace pre-tokenizer (prepend_scheme="always"); BOS added, EOS too if ``eos``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(SP_TEXTS, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        show_progress=False))
    if pipeline == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A" + (" </s>" if eos else ""), special_tokens=[("<s>", 1), ("</s>", 2)])
    wrapper = LlamaTokenizerFast if cls == "llama" else PreTrainedTokenizerFast
    out = wrapper(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out.chat_template = LLAMA2_CHAT
    return out


@pytest.fixture(scope="module", params=["legacy", "metaspace"])
def sp(request):
    return sentencepiece_tokenizer(request.param)


def joint(tok, text: str) -> list[int]:
    """The tokenisation of the whole text, BOS first (what TOFU / OpenUnlearning feed the model)."""
    return [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]


def test_separate_answer_tokenisation_has_an_extra_prefix_token():
    """The pitfall the joint tokenisation avoids: ' Vellmar' on its own starts with a lone '▁'."""
    tok = sentencepiece_tokenizer("legacy")
    alone = tok.convert_ids_to_tokens(tok(" Vellmar", add_special_tokens=False)["input_ids"])
    together = tok.convert_ids_to_tokens(tok("Answer: Vellmar", add_special_tokens=False)["input_ids"])
    assert alone == ["▁", "▁Vellmar"] and together[-2:] == [":", "▁Vellmar"]


@pytest.mark.parametrize("prompt", ["plain", "Q: {question}\nA:", "Q: {question}\nA: "])
def test_sentencepiece_scores_exactly_the_answer_tokens_of_the_joint_tokenisation(sp, prompt):
    fmt = parse_prompt_format(prompt, sp)
    (e,) = encode(sp, fmt, [PromptParts("Where was Ada born?", "Vellmar")], max_length=512)
    context = fmt.template.format(question="Where was Ada born?") if fmt.template else \
        "Question: Where was Ada born?\nAnswer:"
    full = context.rstrip(" ") + " Vellmar"
    assert e.input_ids == joint(sp, full)  # the model reads exactly the joint tokenisation
    assert sp.convert_ids_to_tokens(e.input_ids[e.answer_start:]) == ["▁Vellmar"]
    assert sp.convert_ids_to_tokens(e.input_ids[e.answer_start - 1:e.answer_start])[0].endswith(":")


def test_sentencepiece_chat_answer_is_tokenised_as_in_the_whole_conversation(sp):
    """Llama-2's template puts a space before the assistant's message; the scored ids are the
    conversation's own ids (prompt and answer), and nothing after the answer is scored."""
    p = PromptParts("Where was Ada born?", "Ada was born in Vellmar.")
    (e,) = encode(sp, parse_prompt_format("chat", sp), [p], max_length=512)
    conversation = sp.apply_chat_template(
        [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.answer}], tokenize=False)
    full = sp(conversation, add_special_tokens=False)["input_ids"]
    assert e.input_ids == full[:len(e.input_ids)]
    assert sp.convert_ids_to_tokens(full[len(e.input_ids):])[-1] == "</s>"
    assert sp.decode(e.input_ids[e.answer_start:]).strip() == p.answer
    assert sp.convert_ids_to_tokens(e.input_ids[e.answer_start:])[0] == "▁Ada"


def test_sentencepiece_chatml_answer_has_no_invented_prefix():
    """After 'assistant\\n' the answer's first token carries no '▁' in the joint text, though the
    answer tokenised alone would start with one."""
    tok = sentencepiece_tokenizer("legacy")
    tok.chat_template = CHATML
    p = PromptParts("Where was Ada born?", "Vellmar")
    (e,) = encode(tok, parse_prompt_format("chat", tok), [p], max_length=512)
    text = tok.apply_chat_template([{"role": "user", "content": p.question}], tokenize=False,
                                   add_generation_prompt=True)
    assert e.input_ids == tok(text + "Vellmar", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(e.input_ids[e.answer_start:])[0] != "▁Vellmar"
    assert tok.decode(e.input_ids[e.answer_start:]) == "Vellmar"


@pytest.mark.parametrize("cls", ["fast", "llama"])
def test_an_appended_eos_never_sits_between_prompt_and_answer(cls):
    if cls == "llama":  # transformers' own switch
        tok = sentencepiece_tokenizer("legacy", cls=cls)
        tok.add_eos_token = True
        if hasattr(tok, "update_post_processor"):
            tok.update_post_processor()
    else:  # a post-processor that appends EOS
        tok = sentencepiece_tokenizer("legacy", eos=True)
    assert tok("Where", add_special_tokens=True)["input_ids"][-1] == tok.eos_token_id  # the trap is set
    parts = [PromptParts("Where was Ada born?", "Vellmar"),
             PromptParts("Ada was born in ", "Vellmar.", templated=False)]
    plain, text = encode(tok, parse_prompt_format("plain", tok), parts, max_length=512)
    for e in (plain, text):
        assert tok.eos_token_id not in e.input_ids
        leading = tok("x", add_special_tokens=True)["input_ids"][:1]  # BOS where the tokenizer adds one
        if leading == [tok.bos_token_id]:
            assert e.input_ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(plain.input_ids[plain.answer_start:]) == ["▁Vellmar"]
    assert tok.decode(text.input_ids[text.answer_start:]) == "Vellmar."


def test_a_token_across_the_boundary_belongs_to_the_context():
    """'bro' + 'wn fox' is read as '▁brown ▁fox': '▁brown' starts before the answer, so it is
    context; the scored tokens are those starting at or after the answer's first character."""
    tok = sentencepiece_tokenizer("metaspace")
    (e,) = encode(tok, parse_prompt_format("plain", tok), [PromptParts("The quick bro", "wn fox", templated=False)],
                  max_length=512)
    assert e.input_ids == joint(tok, "The quick brown fox")  # no space inserted
    enc = tok("The quick brown fox", add_special_tokens=False, return_offsets_mapping=True)
    cut = len("The quick bro")
    expected = [t for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"]) if a >= cut]
    assert e.input_ids[e.answer_start:] == expected and expected


@pytest.mark.parametrize("offsets, context, k", [
    ([(0, 1), (1, 7), (7, 12)], "Answer:", 2),           # ' Paris' after 'Answer:'
    ([(0, 1), (1, 7), (7, 12)], "Answer: ", 2),          # the context's space glued to 'Paris'
    ([(0, 1), (1, 7), (7, 8), (8, 12)], "Answer: ", 3),  # a separate space token stays context
    ([(0, 5), (5, 9)], "bro", 1),                        # 'brown' straddles: context
    ([(0, 2), (2, 4)], "abcd", 2),                       # nothing left for the answer
])
def test_answer_boundary_rule(offsets, context, k):
    from pytest_unlearn.prompts import answer_boundary

    assert answer_boundary(offsets, context) == k


# ---------------------------------------------------------------- text rows and format strings

def test_text_rows_are_read_byte_for_byte(tok):
    from pytest_unlearn.data import dataset_from_records
    from pytest_unlearn.prompts import dataset_parts

    records = [{"text": "Ada was born\n\nin Vellmar, a town in the north."},
               {"prompt": "Ada was bro", "completion": "wn-haired."},
               {"prompt": "Ada was born", "completion": ", they say."}]
    data = dataset_from_records(records)
    encoded = encode(tok, parse_prompt_format("chat", tok), dataset_parts(data), max_length=512)
    originals = [records[0]["text"], "Ada was brown-haired.", "Ada was born, they say."]
    for e, text in zip(encoded, originals):
        assert e.context_text + e.answer_text == text
        assert tok.decode(e.input_ids) == text


def test_format_string_whitespace_is_kept(tok):
    fmt = parse_prompt_format("Q: {question}\nA:\n", tok)
    assert fmt.template == "Q: {question}\nA:\n" and fmt.spec == "format:Q: {question}\nA:\n"
    (e,) = encode(tok, fmt, [PromptParts("Where was Ada born?", "Vellmar")], max_length=512)
    assert tok.decode(e.input_ids) == "Q: Where was Ada born?\nA:\nVellmar"
    assert tok.decode(e.input_ids[e.answer_start:]) == "Vellmar"
    assert parse_prompt_format(" plain\n", tok).kind == "plain"
    assert parse_prompt_format("\tchat ", tok).kind == "chat"


# ---------------------------------------------------------------- system prompt, template arguments, date

DATED = ("{{ 'Today Date: ' + strftime_now('%d %b %Y') + '\n' }}"
         "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
DATE_STRING = ("{{ 'Today Date: ' + (date_string if date_string is defined else 'unknown') + '\n' }}"
               "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}{% if greeting is defined %}"
               "{{ greeting }}{% endif %}")


def _clock_module():
    """The transformers module whose ``datetime`` the template's ``strftime_now`` reads."""
    import importlib

    for name in ("transformers.utils.chat_template_utils", "transformers.tokenization_utils_base"):
        module = importlib.import_module(name)
        if "strftime_now" in getattr(module, "__dict__", {}) or "datetime" in module.__dict__:
            src = __import__("inspect").getsource(module)
            if "def strftime_now" in src:
                return module
    pytest.skip("this transformers version has no strftime_now")


def _at(day: int):
    import datetime as dt

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2025, 3, day, 12, 0, tzinfo=tz)

    return Clock


def test_a_template_that_reads_the_date_gets_a_fixed_one(monkeypatch):
    tok = tiny_tokenizer(["Where was Ada born? Vellmar Today Date"] * 5, vocab_size=300)
    tok.chat_template = DATED
    module = _clock_module()
    parts = [PromptParts("Where was Ada born?", "Vellmar")]
    ids, texts = [], []
    for day in (1, 2):
        monkeypatch.setattr(module, "datetime", _at(day))
        assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False).startswith(
            f"Today Date: 0{day} Mar 2025")  # the clock is really moved
        fmt = parse_prompt_format("chat", tok)
        (e,) = encode(tok, fmt, parts, max_length=512)
        ids.append(e.input_ids)
        texts.append(e.context_text)
    assert ids[0] == ids[1]
    assert texts[0].startswith("Today Date: 26 Jul 2024\n")
    assert fmt.date == "2024-07-26" and fmt.spec == "chat|date:2024-07-26"
    # a date of the user's choice, through the template arguments
    fmt = parse_prompt_format("chat", tok, template_args='{"date_string": "01 Jan 2025"}')
    assert fmt.date == "2025-01-01" and "Today Date: 01 Jan 2025" in render_context(tok, fmt, parts[0])
    # a template without a date gets none
    tok.chat_template = CHATML
    assert parse_prompt_format("chat", tok).date is None and parse_prompt_format("chat", tok).spec == "chat"


def test_date_string_system_prompt_and_template_arguments_reach_the_template(tok):
    import copy

    dated = copy.deepcopy(tok)
    dated.chat_template = DATE_STRING
    fmt = parse_prompt_format("auto", dated, system="Be terse.", template_args={"greeting": "Hi!"})
    text = render_context(dated, fmt, PromptParts("Where was Ada born?", "Vellmar"))
    assert text == "Today Date: 26 Jul 2024\nsystem: Be terse.\nuser: Where was Ada born?\nassistant: Hi!"
    assert fmt.spec == 'chat|system:Be terse.|args:{"greeting":"Hi!"}|date:2024-07-26'
    plain = parse_prompt_format("plain", tok, system="Be terse.")
    assert render_context(tok, plain, PromptParts("q?", "a")).startswith("Be terse.\n\nQuestion: q?")
    assert plain.spec == "plain|system:Be terse."


@pytest.mark.parametrize("bad", ['{"a": 1', "[1, 2]", '"text"', '{"tokenize": true}'])
def test_bad_chat_template_args_name_the_setting(bad):
    from pytest_unlearn.config import Settings

    with pytest.raises(ConfigError, match="unlearn_chat_template_args / --unlearn-chat-template-args"):
        Settings(chat_template_args=bad)
    with pytest.raises(ConfigError, match="unlearn_chat_template_args"):
        parse_prompt_format("chat", None, template_args=bad)


def test_settings_keep_the_format_string_and_system_prompt_exactly(pytester):
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nunlearn_prompt = "Q: {question}\\nA:\\n"\n'
        'unlearn_system_prompt = "Be terse.\\n"\nunlearn_chat_template_args = \'{"x": 1}\'\n')
    pytester.makepyfile("""
        def test_settings(unlearn):
            s = unlearn.settings
            assert s.prompt == "Q: {question}\\nA:\\n", repr(s.prompt)
            assert s.system_prompt == "Be terse.\\n", repr(s.system_prompt)
            assert s.chat_template_args == '{"x": 1}'
            assert unlearn.scorer.system_prompt == s.system_prompt
            assert unlearn.scorer.chat_template_args == s.chat_template_args
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
