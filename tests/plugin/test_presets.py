"""``unlearn_benchmark = tofu | muse``: the prompt, system prompt, chat-template arguments and
new-token budgets each benchmark's own evaluation uses, every part overridden by its explicit
setting, and files missing a column the preset expects (see pytest_unlearn/presets.py)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn.config import Settings  # noqa: E402
from pytest_unlearn.data import dataset_from_records  # noqa: E402
from pytest_unlearn.errors import ConfigError  # noqa: E402
from pytest_unlearn.models import handle_from_objects  # noqa: E402
from pytest_unlearn.prompts import PromptParts, dataset_parts  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QA = [{"question": "Where was Ada born?", "answer": "In Vellmar."},
      {"question": "Who is Bo Tarn?", "answer": "A perfumer who lives by the sea."}]
TEXTS = [{"prompt": "Ada was born in", "completion": " Vellmar, a town by the sea."}]


@pytest.fixture(scope="module")
def handle():
    tok = tiny_tokenizer([r["question"] + " " + r["answer"] for r in QA] * 5 + ["You are a helpful assistant."],
                         vocab_size=300)
    return handle_from_objects(tiny_llama(tok, max_positions=512), tok, name="tiny")


def _ini(toy_world, **extra) -> str:
    lines = ["[pytest]", f"unlearn_original = {toy_world['original']}", f"unlearn_model = {toy_world['original']}",
             f"unlearn_forget = {toy_world['forget']}", f"unlearn_retain = {toy_world['retain']}"]
    lines += [f"unlearn_{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ through pytest


def test_tofu_preset_from_the_ini(pytester, toy_world):
    pytester.makefile(".ini", pytest=_ini(toy_world, benchmark="TOFU"))
    pytester.makepyfile("""
        from pytest_unlearn.prompts import dataset_parts

        def test_tofu(unlearn):
            assert unlearn.settings.benchmark == "tofu"
            handle = unlearn.original
            fmt = unlearn.scorer.prompt_format(handle)
            # a chat model: its chat template, OpenUnlearning's system prompt and date
            assert fmt.kind == "chat", fmt
            assert fmt.system == "You are a helpful assistant."
            assert '"date_string":"10 Apr 2025"' in (fmt.template_args or "")
            enc = unlearn.scorer.encode(handle, dataset_parts(unlearn.forget)[:1])[0]
            assert "You are a helpful assistant." in enc.context_text
            # greedy answers: 200 new tokens (OpenUnlearning's generation config)
            gens = unlearn.scorer.generations(handle, dataset_parts(unlearn.forget)[:2])
            assert gens.budgets == [200, 200]
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_muse_preset_from_the_flag_and_explicit_settings_win(pytester, toy_world):
    pytester.makefile(".ini", pytest=_ini(toy_world, system_prompt="Be terse."))
    pytester.makepyfile("""
        from pytest_unlearn.prompts import PromptParts, dataset_parts

        def test_muse(unlearn):
            handle = unlearn.original
            fmt = unlearn.scorer.prompt_format(handle)
            # MUSE reads plain text, although this tokenizer has a chat template
            assert fmt.kind == "plain", fmt
            assert fmt.system == "Be terse."  # the explicit setting stays
            qa = dataset_parts(unlearn.forget)[:1]
            text = [PromptParts("Ada was born in", " Vellmar.", templated=False)]
            assert unlearn.scorer.generations(handle, qa).budgets == [32]     # KnowMem
            assert unlearn.scorer.generations(handle, text).budgets == [128]  # VerbMem
    """)
    pytester.runpytest("-p", "no:cacheprovider", "--unlearn-benchmark", "muse").assert_outcomes(passed=1)


def test_explicit_prompt_and_max_new_tokens_override_the_preset(pytester, toy_world):
    pytester.makefile(".ini", pytest=_ini(toy_world, benchmark="tofu", prompt="Q: {question} A:",
                                          max_new_tokens=5))
    pytester.makepyfile("""
        from pytest_unlearn.prompts import dataset_parts

        def test_override(unlearn):
            handle = unlearn.original
            fmt = unlearn.scorer.prompt_format(handle)
            assert fmt.kind == "format" and fmt.template == "Q: {question} A:", fmt
            assert fmt.system is None  # the preset's system prompt belongs to its chat format
            gens = unlearn.scorer.generations(handle, dataset_parts(unlearn.forget)[:2])
            assert gens.budgets == [5, 5]
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_tofu_forget_file_without_a_preset_column_names_column_file_and_preset(pytester, toy_world):
    rows = [json.loads(line) for line in open(toy_world["forget"]) if line.strip()]
    for row in rows:
        row.pop("paraphrased_answer")
    forget = pytester.path / "forget10.json"
    forget.write_text(json.dumps(rows))
    ini = _ini(toy_world, benchmark="tofu").replace(f"unlearn_forget = {toy_world['forget']}",
                                                   f"unlearn_forget = {forget}")
    pytester.makefile(".ini", pytest=ini)
    pytester.makepyfile("""
        import pytest
        from pytest_unlearn.errors import DataError

        def test_missing(unlearn):
            with pytest.raises(DataError) as info:
                unlearn.forget
            text = str(info.value)
            assert "'paraphrased_answer'" in text and "forget10.json" in text, text
            assert "unlearn_benchmark = tofu" in text, text
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_muse_verbmem_file_without_gt_names_column_file_and_preset(pytester, toy_world):
    verbmem = pytester.path / "verbmem_forget.json"
    verbmem.write_text(json.dumps([{"prompt": "Ada was born in", "target": " Vellmar."}]))
    ini = _ini(toy_world).replace(f"unlearn_forget = {toy_world['forget']}", f"unlearn_forget = {verbmem}")
    pytester.makefile(".ini", pytest=ini)
    pytester.makepyfile("""
        import pytest
        from pytest_unlearn.errors import DataError

        def test_missing(unlearn):
            with pytest.raises(DataError) as info:
                unlearn.forget
            text = str(info.value)
            assert "'gt'" in text and "verbmem_forget.json" in text and "unlearn_benchmark = muse" in text, text
    """)
    pytester.runpytest("-p", "no:cacheprovider", "--unlearn-benchmark=muse").assert_outcomes(passed=1)


# ------------------------------------------------------------------ the pieces


def test_unknown_benchmark_is_a_config_error():
    with pytest.raises(ConfigError, match="tofu, muse"):
        Settings(benchmark="wmdp")
    assert Settings(benchmark=" MUSE ").benchmark == "muse"
    with pytest.raises(ConfigError, match="unlearn_max_new_tokens"):
        Settings(max_new_tokens=0)


def test_tofu_preset_on_a_base_model_reads_question_answer(handle):
    tok = handle.tokenizer
    saved = tok.chat_template
    tok.chat_template = None
    try:
        fmt = Scorer(benchmark="tofu").prompt_format(handle)
    finally:
        tok.chat_template = saved
    assert fmt.kind == "format" and fmt.template == "Question: {question}\nAnswer:" and fmt.system is None


def test_tofu_preset_leaves_out_the_system_prompt_for_a_template_that_refuses_it(handle):
    tok = handle.tokenizer
    saved = tok.chat_template
    tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                         "supported') }}{% endif %}" + saved)
    try:
        fmt = Scorer(benchmark="tofu").prompt_format(handle)
        assert fmt.kind == "chat" and fmt.system is None
        assert Scorer(benchmark="tofu").prompt_format(handle).template_args == '{"date_string":"10 Apr 2025"}'
    finally:
        tok.chat_template = saved


def test_user_template_args_win_over_the_preset_date(handle):
    fmt = Scorer(benchmark="tofu", chat_template_args='{"date_string": "01 Jan 2025", "x": 1}').prompt_format(handle)
    assert json.loads(fmt.template_args) == {"date_string": "01 Jan 2025", "x": 1}


def test_muse_budgets_are_what_the_generations_use(handle):
    """The budget reaches ``generate``: the texts equal a plain greedy ``generate`` with MUSE's
    32 new tokens (KnowMem), and differ from the plugin's own per-answer budget."""
    data = dataset_from_records(QA, name="qa")
    parts = dataset_parts(data)
    muse = Scorer(benchmark="muse").generations(handle, parts)
    own = Scorer().generations(handle, parts)
    assert muse.budgets == [32, 32]
    assert own.budgets != muse.budgets
    scorer = Scorer(benchmark="muse")
    enc = scorer.encode(handle, parts)
    for e, text in zip(enc, muse.texts):
        ids = torch.tensor([e.input_ids[:e.answer_start]])
        with torch.no_grad():
            out = handle.model.generate(ids, max_new_tokens=32, do_sample=False, min_new_tokens=32,
                                        pad_token_id=handle.tokenizer.pad_token_id, eos_token_id=None)
        new = out[0, ids.shape[1]:].tolist()
        eos = handle.tokenizer.eos_token_id
        new = new[:new.index(eos)] if eos in new else new
        assert text == handle.tokenizer.decode(new, skip_special_tokens=True).strip()
    text_parts = [PromptParts(r["prompt"], r["completion"], templated=False) for r in TEXTS]
    assert Scorer(benchmark="muse").generations(handle, text_parts).budgets == [128]
    assert Scorer(benchmark="muse", max_new_tokens=3).generations(handle, text_parts + parts).budgets == [3, 3, 3]
