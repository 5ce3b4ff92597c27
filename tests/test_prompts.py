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
