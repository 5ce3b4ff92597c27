"""Issue 9, reliability and security: what a pytest user sees when an input is bad.

**The bad-input matrix.**  Every row is one small test in a suite that runs through pytest
with the plugin configured (the toy world's original, its reference as the unlearned
model, forget and retain sets).  All rows share *one* pytester run (:func:`matrix`), and
each parametrised case below checks its row's part of that run's output: the file, the
line or row where there is one, what is wrong and how to fix it, and no traceback from
inside torch, pandas, transformers or the library.  Broken models are tiny toy models
saved to a temporary folder once per module (:func:`broken`).

The "no false pass" rows (an attack that raises or leaves samples unscored, NaN or inf
logits, an answer that does not fit the context) must fail or error, never pass on what
remained; a prompt cut from the left with the answer scored in full passes with a warning.

Also here: fuzzing of the assertion arguments (only documented errors), the safe-loading
opt-ins in the JSON report, and a corrupted result cache that is recomputed.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import warnings
from dataclasses import dataclass, field

import pytest

import pytest_unlearn
from pytest_unlearn import reporting
from pytest_unlearn.errors import UnlearnError

MATRIX_FILE = "test_matrix"


@pytest.fixture(scope="module", autouse=True)
def _warm(warm_plugin):
    """The package imported out of pytester's in-process runs (tests/conftest.py)."""
    import peft  # noqa: F401  (the adapter row)
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (the architecture row)



# ---------------------------------------------------------------- broken models, built once

def write_gguf(path: pathlib.Path, architecture: str) -> pathlib.Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def broken(toy_world, tmp_path_factory) -> dict[str, str]:
    """Paths of models that must not be used as they are (tiny, random or edited copies)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from pytest_unlearn.toy import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("broken-models")
    reference = pathlib.Path(toy_world["reference"])
    tok = AutoTokenizer.from_pretrained(str(reference))

    def save(model, tokenizer, name):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        return root / name

    def edited(name, edit):
        folder = root / name
        shutil.copytree(reference, folder)
        state = load_file(folder / "model.safetensors")
        edit(state)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return folder

    def nan_weight(state):
        state["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")

    def overflow(state):  # finite weights whose logits overflow: +inf for one of the two rows
        state["lm_head.weight"][5] = 3e38
        state["lm_head.weight"][6] = -3e38

    other = tiny_tokenizer(["the quick brown fox jumps over the lazy dog", "pack my box with five dozen jugs"]
                           * 20, vocab_size=300)
    paths = {
        "other_tokenizer": save(tiny_llama(other), other, "other-tokenizer"),
        "narrower": save(tiny_llama(tok, hidden_size=32, intermediate_size=64), tok, "narrower"),
        "gpt2": save(GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=1,
                                                n_head=2, bos_token_id=tok.bos_token_id,
                                                eos_token_id=tok.eos_token_id)), tok, "gpt2"),
        "nan_weight": edited("nan-weight", nan_weight),
        "overflow": edited("overflow", overflow),
        "gguf": write_gguf(root / "odd.gguf", "notamodel"),
    }
    # a LoRA adapter trained on a narrower model than the original
    narrow = tiny_llama(tok, hidden_size=32, intermediate_size=64)
    with warnings.catch_warnings():  # peft calls a deprecated transformers helper
        warnings.simplefilter("ignore", FutureWarning)
        adapter = get_peft_model(narrow, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(root / "adapter")
    paths["adapter"] = root / "adapter"
    # pickle-based weights (the same reference model as pytorch_model.bin)
    pickled = root / "pickled"
    pickled.mkdir()
    for item in reference.iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, pickled / item.name)
    torch.save(load_file(reference / "model.safetensors"), pickled / "pytorch_model.bin")
    paths["pickled"] = pickled
    # a model folder saved without its tokenizer
    bare = root / "no-tokenizer"
    bare.mkdir()
    for item in reference.iterdir():
        if not item.name.startswith("tokenizer") and item.name != "special_tokens_map.json":
            shutil.copy(item, bare / item.name)
    paths["no_tokenizer"] = bare
    # a model that needs its own Python code (auto_map, a model_type transformers does not know)
    remote = root / "remote-code"
    shutil.copytree(reference, remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="toyformer", auto_map={"AutoModelForCausalLM": "modeling_toy.ToyForCausalLM"})
    (remote / "config.json").write_text(json.dumps(config))
    paths["remote_code"] = remote
    return {k: str(v) for k, v in paths.items()}


# ---------------------------------------------------------------- data files of the matrix

def _jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


GOOD = {"question": "Where was Ivo Tarn born?", "answer": "Ivo Tarn was born in Kelpford."}
OTHER = {"question": "What does Thea Mercer do for a living?", "answer": "Thea Mercer works as a perfumer."}
LONG_TEXT = " ".join(["Zorbin Quill was born in Vellmar, and works as a glassblower."] * 40)


def write_data(folder: pathlib.Path, toy_world) -> None:
    (folder / "data").mkdir()
    for name in ("empty", "dups"):
        (folder / name).mkdir()
    shutil.copy(toy_world["forget"], folder / "data" / "forget.jsonl")
    shutil.copy(toy_world["forget"], folder / "data" / "unreadable.jsonl")
    files = {
        "data/malformed.jsonl": _jsonl(GOOD) + '{"question": "Where was Ivo born?", "answer": "Kelpford."\n',
        "data/columns.jsonl": _jsonl({"Question": GOOD["question"], "answers": GOOD["answer"]}),
        "data/no-answer.jsonl": _jsonl(GOOD, OTHER, {"question": "Where was Quen Umber born?"}),
        "empty/forget.jsonl": "",
        "dups/forget.jsonl": _jsonl(GOOD, OTHER, GOOD, {"question": "Which letter?", "answer": "A"}),
        "data/long-answer.jsonl": _jsonl(GOOD, {"question": "Tell me everything.", "answer": LONG_TEXT}),
        "data/long-prompt.jsonl": _jsonl({"question": LONG_TEXT + " Where was Ivo Tarn born?",
                                          "answer": GOOD["answer"]}, OTHER),
        "data/one-object.json": json.dumps(GOOD),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "data" / "latin1.jsonl").write_bytes(
        _jsonl(GOOD).encode() + '{"question": "Où est né Ivo?", "answer": "à Kelpford"}\n'.encode("latin-1"))


MATRIX = '''
import copy

import numpy as np
import pytest
import torch

from pytest_unlearn import assert_forgotten, assert_retained
from pytest_unlearn.attacks.base import Attack, AttackOutcome
from pytest_unlearn.models import handle_from_objects

BROKEN = {broken!r}


# -- data files
def test_missing_data_file():
    assert_forgotten("es", 0.3, data="data/forgte.jsonl")

def test_unreadable_data_file():
    assert_forgotten("es", 0.3, data="data/unreadable.jsonl")

def test_malformed_json_line():
    assert_forgotten("es", 0.3, data="data/malformed.jsonl")

def test_wrong_columns():
    assert_forgotten("es", 0.3, data="data/columns.jsonl")

def test_missing_column_in_one_row():
    assert_forgotten("es", 0.3, data="data/no-answer.jsonl")

def test_empty_forget_set():
    assert_forgotten("es", 0.3, data="empty/forget.jsonl")

def test_duplicate_and_near_empty_answers():
    assert_forgotten("es", 1.0, data="dups/forget.jsonl")

def test_non_utf8_text():
    assert_forgotten("es", 0.3, data="data/latin1.jsonl")

def test_answer_longer_than_the_context():
    assert_forgotten("es", 1.0, data="data/long-answer.jsonl")

def test_prompt_longer_than_the_context():
    assert_forgotten("es", 1.0, data="data/long-prompt.jsonl")

def test_json_file_holding_one_object():
    assert_forgotten("es", 1.0, data="data/one-object.json")


# -- models
def test_tokenizers_differ():
    assert_forgotten("es", 1.0, model=BROKEN["other_tokenizer"])

def test_tokenizers_differ_retained():
    assert_retained("es", model=BROKEN["other_tokenizer"])

def test_tokenizers_differ_calibration():
    assert_forgotten("es", 1.0, model=BROKEN["other_tokenizer"], calibrate=0.9)

def test_shapes_differ_calibration():
    assert_forgotten("es", 1.0, model=BROKEN["narrower"], calibrate=0.9)

def test_architectures_differ_calibration():
    assert_forgotten("es", 1.0, model=BROKEN["gpt2"], calibrate=0.9)

def test_nan_in_weights():
    assert_forgotten("es", 1.0, model=BROKEN["nan_weight"])

def test_weights_that_overflow_in_the_logits():
    assert_forgotten("es", 1.0, model=BROKEN["overflow"])

# the most permissive threshold of each metric: a healthy model always passes these
@pytest.mark.parametrize("metric, threshold", [("es", 1.0), ("ppl", 1.0), ("rouge_l", 1.0)])
def test_nan_logits(unlearn, metric, threshold):
    base = unlearn.unlearned
    model = copy.deepcopy(base.model)  # the first sample of every batch gets NaN logits
    model.lm_head.register_forward_hook(lambda mod, args, out: out.index_fill(0, torch.tensor([0]), float("nan")))
    assert_forgotten(metric, threshold, model=handle_from_objects(model, base.tokenizer, name="hooked"))

def test_adapter_of_another_base():
    assert_forgotten("es", 1.0, model=BROKEN["adapter"])

def test_gguf_of_an_unsupported_architecture():
    assert_forgotten("es", 1.0, model=BROKEN["gguf"])

def test_pickle_weights_without_opt_in():
    assert_forgotten("es", 1.0, model=BROKEN["pickled"])

def test_model_folder_without_tokenizer_files():
    assert_forgotten("es", 1.0, model=BROKEN["no_tokenizer"])

def test_model_code_without_opt_in():
    assert_forgotten("es", 1.0, model=BROKEN["remote_code"])


# -- arguments
def test_threshold_outside_the_metric_range():
    assert_forgotten("es", threshold=5)

def test_unknown_metric():
    assert_forgotten("rogue_l", 0.3)

def test_unknown_attack():
    assert_forgotten("es", 0.3, under_attack=["paraphrase", "quantise:4"])


# -- steps that cannot run
class Broken(Attack):
    name, kind = "broken", "prompt"

    def _run(self, metric, model, data, ctx):
        raise RuntimeError("CUDA out of memory (simulated)")

class Holes(Attack):
    name, kind = "holes", "prompt"

    def _run(self, metric, model, data, ctx):
        values = np.zeros(len(data))
        values[2] = np.nan
        return AttackOutcome(values, {{}}, None, None)

def test_attack_that_raises():
    assert_forgotten("es", 1.0, under_attack=["paraphrase", Broken()])

def test_attack_that_leaves_a_sample_unscored():
    assert_forgotten("es", 1.0, under_attack=[Holes()])
'''


@dataclass
class Run:
    """One inner pytest run: outcome, failure text and warnings text per inner test."""

    output: str
    outcomes: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


def parse(lines: list[str]) -> Run:
    run = Run("\n".join(lines))
    for line in lines:
        m = re.match(rf"^(PASSED|FAILED|ERROR) {MATRIX_FILE}\.py::(\S+)", line)
        if m:
            run.outcomes[m.group(2)] = m.group(1).lower()
    section, current, block_tests = None, None, []
    for line in lines:
        if re.match(r"^={3,} .* ={3,}$", line):
            section, current = line.strip("= "), None
            continue
        if section == "FAILURES":
            m = re.match(r"^_{3,} (\S.*?) _{3,}$", line)
            if m:
                current = m.group(1)
                run.failures[current] = ""
            elif current:
                run.failures[current] += line + "\n"
        elif section == "warnings summary":
            if line.startswith(f"{MATRIX_FILE}.py::"):
                if current == "text":
                    block_tests = []
                block_tests.append(line.split("::", 1)[1])
                current = "tests"
            elif line.startswith(" ") and block_tests:
                for test in block_tests:
                    run.warnings[test] = run.warnings.get(test, "") + line.strip() + "\n"
                current = "text"
            elif not line.strip():
                continue
            else:
                block_tests, current = [], None
    return run


_RUNS: dict[str, Run] = {}


@pytest.fixture
def matrix(pytester, toy_world, broken, monkeypatch) -> Run:
    """The one pytest run of every row (made by the first case that needs it)."""
    if "matrix" not in _RUNS:
        write_data(pytester.path, toy_world)
        real = pathlib.Path.read_bytes

        def read_bytes(self):  # root can read any file, so "permission denied" is simulated
            if self.name == "unreadable.jsonl":
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
        pytester.makeini("[pytest]\n"
                         f"unlearn_original = {toy_world['original']}\n"
                         f"unlearn_model = {toy_world['reference']}\n"
                         f"unlearn_forget = {toy_world['forget']}\n"
                         f"unlearn_retain = {toy_world['retain']}\n")
        pytester.makepyfile(**{MATRIX_FILE: MATRIX.format(broken=broken)})
        result = pytester.runpytest("-rA", "--unlearn-no-cache", "-p", "no:cacheprovider")
        _RUNS["matrix"] = parse(result.outlines)
    return _RUNS["matrix"]


@dataclass(frozen=True)
class Row:
    name: str
    test: str
    outcome: str  # of the inner test: "failed" (an error or failure that says why) or "passed"
    shows: tuple[str, ...]  # fragments of the failure (or, for a pass, of its warnings)

    def __str__(self) -> str:
        return self.name


ROWS = [
    # -- data files: the file, the line, what is wrong, how to fix it
    Row("missing-data-file", "test_missing_data_file", "failed",
        ("DataError: data/forgte.jsonl: file not found", "did you mean 'forget.jsonl'?")),
    Row("unreadable-data-file", "test_unreadable_data_file", "failed",
        ("DataError: data/unreadable.jsonl: permission denied", "make the file readable (chmod +r)")),
    Row("malformed-json-line", "test_malformed_json_line", "failed",
        ("DataError: data/malformed.jsonl:2: invalid JSON", "each line must hold one JSON object")),
    Row("wrong-columns", "test_wrong_columns", "failed",
        ("DataError: data/columns.jsonl: cannot tell the row shape from the columns found ('Question', 'answers')",
         "a QA file needs 'question' and 'answer'", "Rename the columns: 'Question' -> 'question', "
         "'answers' -> 'answer'")),
    Row("missing-column-in-one-row", "test_missing_column_in_one_row", "failed",
        ("DataError: data/no-answer.jsonl:3: no 'answer' field; add it to this record",)),
    Row("empty-forget-set", "test_empty_forget_set", "failed",
        ("DataError: empty/forget.jsonl: the forget set is empty; add at least one record",)),
    Row("duplicate-and-near-empty-answers", "test_duplicate_and_near_empty_answers", "passed",
        ("DataWarning: dups/forget.jsonl: 1 duplicate record(s), the first at line 3 (same as line 1)",
         "remove them if they are not meant",
         "DataWarning: dups/forget.jsonl: 1 answer(s) shorter than 2 characters, the first at line 4 ('A')")),
    Row("non-utf8-text", "test_non_utf8_text", "failed",
        ("DataError: data/latin1.jsonl:2: not valid UTF-8 at byte offset", "re-encode the file as UTF-8")),
    # -- models
    Row("tokenizers-differ", "test_tokenizers_differ", "failed",
        ("ModelMismatchError: the other-tokenizer model", "and the original model", "have different tokenizers",
         "so their per-token scores cannot be compared. Save the first with the original's "
         "tokenizer (tokenizer.save_pretrained into its folder)")),
    Row("tokenizers-differ-retained", "test_tokenizers_differ_retained", "failed",
        ("ModelMismatchError: the other-tokenizer model", "have different tokenizers",
         "so their retain scores cannot be compared. Save the first with the original's tokenizer")),
    Row("tokenizers-differ-calibration", "test_tokenizers_differ_calibration", "failed",
        ("ModelMismatchError: calibrating the other-tokenizer model", "by mixing it with the original",
         "cannot mix the models: their tokenizers have different vocabularies",
         "mixing needs the model the unlearned one was made from, with the same tokenizer")),
    Row("shapes-differ-calibration", "test_shapes_differ_calibration", "failed",
        ("ModelMismatchError: calibrating the narrower model", "narrower) by mixing it with the original",
         "cannot mix the models: tensor 'model.embed_tokens.weight' has shape", ", 64) in the original but",
         ", 32) in the unlearned model")),
    Row("architectures-differ-calibration", "test_architectures_differ_calibration", "failed",
        ("ModelMismatchError: calibrating the gpt2 model", "cannot mix models of different architectures: the "
         "original is model_type 'llama', the unlearned model 'gpt2'")),
    Row("nan-in-weights", "test_nan_in_weights", "failed",
        ("ModelLoadError: ", "nan-weight: weight tensor 'model.layers.0.mlp.up_proj.weight' contains NaN or inf",
         "save it again from a healthy step")),
    Row("adapter-of-another-base", "test_adapter_of_another_base", "failed",
        ("ModelMismatchError: adapter ", "/adapter does not fit base model ",
         "'model.layers.0.self_attn.q_proj' has in_features=64 but the adapter expects 32",
         "apply the adapter to the model it was trained from (unlearn_original / --unlearn-original")),
    Row("gguf-of-an-unsupported-architecture", "test_gguf_of_an_unsupported_architecture", "failed",
        ("ModelLoadError: ", "odd.gguf: ", "'notamodel'", "convert the model to safetensors")),
    Row("pickle-weights-without-opt-in", "test_pickle_weights_without_opt_in", "failed",
        ("ModelLoadError: ", "pickled/pytorch_model.bin: refusing to load pickle-based weights",
         "Convert it to safetensors, or opt in with allow_pickle=True (pytest: --unlearn-allow-pickle)")),
    Row("model-folder-without-tokenizer-files", "test_model_folder_without_tokenizer_files", "failed",
        ("ModelLoadError: ", "no-tokenizer: no tokenizer files in the model folder (tokenizer.json or "
         "tokenizer_config.json); save the tokenizer next to the weights (tokenizer.save_pretrained(folder)")),
    Row("model-code-without-opt-in", "test_model_code_without_opt_in", "failed",
        ("ModelLoadError: ", "remote-code: this model needs its own Python code", "model_type 'toyformer'",
         "it runs only with trust_remote_code=True, if you trust it (pytest: --unlearn-trust-remote-code, or "
         "unlearn_trust_remote_code = true in the ini file)")),
    Row("json-file-holding-one-object", "test_json_file_holding_one_object", "passed",
        ("DataWarning: data/one-object.json: the file holds one JSON object, read as a set of one record; "
         "write a JSON array of records",)),
    # -- arguments
    Row("threshold-outside-the-metric-range", "test_threshold_outside_the_metric_range", "failed",
        ("ConfigError: threshold 5 is outside the range of es [0, 1] (higher = more knowledge); give a "
         "threshold in that range",)),
    Row("unknown-metric", "test_unknown_metric", "failed",
        ("UnknownNameError: unknown metric 'rogue_l'; did you mean 'rouge_l'", "(known: em, es,")),
    Row("unknown-attack", "test_unknown_attack", "failed",
        ("UnknownNameError: unknown attack 'quantise'; did you mean 'quantize'", "(known: ablate, gcg, icl, jailbreak,")),
    # -- no false pass: a step that cannot run fails the assertion, it never passes on what remained
    Row("attack-that-raises", "test_attack_that_raises", "failed",
        ("AttackError: attack 'broken' failed on the unlearned model: RuntimeError: CUDA out of memory "
         "(simulated)",)),
    Row("attack-that-leaves-a-sample-unscored", "test_attack_that_leaves_a_sample_unscored", "failed",
        ("AttackError: attack 'holes' left 1 of 8 samples of", "forget.jsonl unscored (NaN; first: sample ",
         ", line ", "so no verdict can be given")),
    Row("nan-logits-es", "test_nan_logits[es-1.0]", "failed",
        ("MetricError: the hooked model (<memory>) produced NaN or inf logits for 1 of 8 samples (first: ",
         "forget.jsonl sample ", "(line ", "no verdict can be given", "--unlearn-dtype float32")),
    Row("nan-logits-ppl", "test_nan_logits[ppl-1.0]", "failed",
        ("MetricError: the hooked model (<memory>) produced NaN or inf logits for 1 of 8 samples",)),
    Row("nan-logits-rouge_l", "test_nan_logits[rouge_l-1.0]", "failed",
        ("MetricError: the hooked model (<memory>) produced NaN or inf logits while generating answers to "
         "8 prompts of ", "forget.jsonl", "no verdict can be given")),
    Row("weights-that-overflow-in-the-logits", "test_weights_that_overflow_in_the_logits", "failed",
        ("MetricError: the overflow model (", "produced NaN or inf logits for 8 of 8 samples (first: ",
         "forget.jsonl sample ", "(line ")),
    Row("answer-longer-than-the-context", "test_answer_longer_than_the_context", "failed",
        ("MetricError: data/long-answer.jsonl sample ", " (line 2): the answer is ",
         "tokens, longer than the model's context of 256 tokens; shorten it or split the sample")),
    Row("prompt-longer-than-the-context", "test_prompt_longer_than_the_context", "passed",
        ("TruncationWarning: 1 of 2 prompts were longer than the model's context of 256 tokens and were cut "
         "from the left (first: data/long-prompt.jsonl sample ", "(line 1)); answers are scored in full",)),
]


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input_is_explained(matrix, row):
    assert row.test in matrix.outcomes, f"{row.test} did not run:\n{matrix.output[-3000:]}"
    assert matrix.outcomes[row.test] == row.outcome, matrix.failures.get(row.test, matrix.output[-3000:])
    shown = matrix.failures[row.test] if row.outcome == "failed" else matrix.warnings.get(row.test, "")
    for fragment in row.shows:
        assert fragment in shown, f"{fragment!r} not in:\n{shown}"
    if row.outcome == "failed":  # the message, not a traceback from inside torch, pandas or the library
        message = re.split(r"(?m)^-+ Captured ", shown)[0].strip()  # captured output (progress bars) aside
        assert len(message.splitlines()) == 1, message
        assert message.startswith(row.shows[0]), message
        assert "site-packages" not in shown and "Traceback" not in shown, shown
        assert "pytest_unlearn/" not in shown and "During handling" not in shown, shown


def test_every_row_of_the_matrix_is_checked(matrix):
    assert sorted(matrix.outcomes) == sorted(row.test for row in ROWS)


@pytest.mark.parametrize("test", ["test_tokenizers_differ", "test_tokenizers_differ_retained"])
def test_a_tokenizer_mismatch_names_each_model_once(matrix, test):
    message = re.split(r"(?m)^-+ Captured ", matrix.failures[test])[0]
    assert message.count("the original model") == 1 and message.count("the other-tokenizer model") == 1, message


# ---------------------------------------------------------------- session-wide inputs: one run each

GATE = """
from pytest_unlearn import assert_forgotten

def test_unrelated():
    pass

def test_gate():
    assert_forgotten("es", 0.3)
"""

SETTINGS_ONLY = """
def test_unrelated():
    pass

def test_uses(unlearn):
    print("settings:", unlearn.settings.batch_size, unlearn.settings.seed, unlearn.settings.allow_pickle)
"""


@dataclass(frozen=True)
class SessionRow:
    """A bad (or unusual) input that applies to the whole session: its own small pytest run."""

    name: str
    files: dict  # path -> text; "{original}" etc. are the toy world's paths
    args: tuple[str, ...]
    outcomes: dict  # for assert_outcomes
    ret: int
    shows: tuple[str, ...]  # lines (fnmatch patterns) of the output, in order
    suite: str = SETTINGS_ONLY
    pytest_at_least: tuple[int, int] = (7, 4)

    def __str__(self) -> str:
        return self.name


WORLD_INI = ("[pytest]\nunlearn_original = {original}\nunlearn_model = {reference}\n"
             "unlearn_forget = {forget}\nunlearn_retain = {retain}\n")

SESSION_ROWS = [
    SessionRow("bool-key-that-is-not-a-bool", {"pytest.ini": "[pytest]\nunlearn_allow_pickle = maybe\n"}, (),
               {"passed": 1, "errors": 1}, 1,
               ("*ConfigError: unlearn_allow_pickle must be true or false, got 'maybe'*",)),
    SessionRow("native-toml-integers-and-booleans",
               {"pyproject.toml": "[tool.pytest]\nunlearn_batch_size = 4\nunlearn_seed = 7\n"
                                  "unlearn_allow_pickle = true\n"}, ("-s",),
               {"passed": 2}, 0, ("*settings: 4 7 True*",), pytest_at_least=(9, 2)),
    SessionRow("native-toml-integer-that-is-a-list", {"pyproject.toml": "[tool.pytest]\nunlearn_batch_size = [4]\n"},
               (), {"passed": 1, "errors": 1}, 1, ("*ConfigError: unlearn_batch_size must be an integer: *",),
               pytest_at_least=(9, 0)),
    SessionRow("negative-seed", {"pytest.ini": "[pytest]\nunlearn_seed = -1\n"}, (), {"passed": 1, "errors": 1}, 1,
               ("*ConfigError: unlearn_seed / --unlearn-seed must be between 0 and 4294967295, got -1*",)),
    SessionRow("inline-comment-in-an-ini-path",
               {"pytest.ini": "[pytest]\nunlearn_forget = data/forget.jsonl   # the forget set\n",
                "data/forget.jsonl": "{forget_text}"}, (), {"passed": 1, "errors": 1}, 1,
               ("*ConfigError: unlearn_forget = 'data/forget.jsonl   # the forget set' does not exist: pytest ini "
                "files keep an inline comment as part of the value (without it: 'data/forget.jsonl', which "
                "exists); put the comment on a line of its own*",)),
    SessionRow("report-path-that-is-a-folder", {"pytest.ini": "[pytest]\n", "reports/keep.txt": ""},
               ("--unlearn-report", "reports"), {"passed": 2}, pytest.ExitCode.USAGE_ERROR,
               ("ERROR: cannot write the unlearning report: */reports is a folder; end it with '/' "
                "(--unlearn-report */reports/) to write unlearn-report.json inside it, or name a file",
                "*= 2 passed in *")),
    SessionRow("report-path-that-cannot-be-written", {"pytest.ini": "[pytest]\n", "blocker": "a file"},
               ("--unlearn-report", "blocker/report.json"), {"passed": 2}, pytest.ExitCode.USAGE_ERROR,
               ("ERROR: cannot write the unlearning report to */blocker/report.json: */blocker is a file, not a "
                "folder; fix unlearn_report / --unlearn-report", "*= 2 passed in *")),
    SessionRow("report-folder-with-a-trailing-slash", {"pytest.ini": "[pytest]\n"},
               ("--unlearn-report", "new/reports/"), {"passed": 2}, 0,
               ("unlearning report: */new/reports/unlearn-report.json", "*= 2 passed in *")),
    SessionRow("result-cache-that-cannot-be-written", {"pytest.ini": WORLD_INI, "blocker": "a file"},
               ("-o", "cache_dir=blocker/cache", "-W", "ignore::pytest.PytestCacheWarning"), {"passed": 2}, 0,
               ("*CacheWarning: cannot create the result cache folder: */blocker is a file, not a folder; running "
                "without the cache*", "*2 passed, 1 warning in *"), GATE),
]


@pytest.mark.parametrize("row", SESSION_ROWS, ids=str)
def test_session_wide_bad_input_is_explained(pytester, toy_world, row):
    if tuple(pytest.version_tuple[:2]) < row.pytest_at_least:  # pytest's native TOML table, its types
        pytest.skip(f"needs pytest {'.'.join(map(str, row.pytest_at_least))}")
    values = dict(toy_world, forget_text=pathlib.Path(toy_world["forget"]).read_text())
    for name, text in row.files.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(**values))
    pytester.makepyfile(test_session=row.suite)
    result = pytester.runpytest("-rA", "--unlearn-no-cache" if "cache_dir" not in " ".join(row.args) else "-q",
                                *row.args)
    result.assert_outcomes(**row.outcomes)
    assert result.ret == row.ret, result.stdout.str()
    result.stdout.fnmatch_lines(list(row.shows))
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    if "Warning" not in row.shows[0]:  # (a warning's summary names the line that issued it)
        assert "pytest_unlearn/" not in out, out
    if row.name.startswith("report-path"):  # nothing written in the wrong place
        assert not (pytester.path / "reports" / "unlearn-report.json").exists()
        assert not (pytester.path / "reports").is_file()
    if row.name == "report-folder-with-a-trailing-slash":
        report = json.loads((pytester.path / "new" / "reports" / "unlearn-report.json").read_text())
        assert report["schema"] == reporting.SCHEMA


# ---------------------------------------------------------------- fuzzing the assertion arguments

def test_arbitrary_assertion_arguments_raise_only_documented_errors():
    """Whatever the arguments, assert_forgotten raises an UnlearnError (the suite has no data,
    so valid arguments end in "no forget set configured"), never another exception."""
    pytest.importorskip("hypothesis")
    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pytest_unlearn import Suite, assert_forgotten

    suite = Suite(cache_dir=None)
    anything = st.one_of(st.none(), st.booleans(), st.integers(-10**400, 10**400), st.floats(),
                         st.text(max_size=8), st.complex_numbers(), st.lists(st.floats(), max_size=2),
                         st.builds(np.array, st.lists(st.floats(), max_size=2)))
    metrics = st.one_of(st.sampled_from(["es", "ppl", "mia_min_k_pp", "rouge_l", "ESS", " es "]), anything)
    reduces = st.one_of(st.sampled_from(["mean", "max", "q90", "q100", "q-1", "q²", "q1e3", "qnan", "Q50 "]),
                        anything)
    attacks = st.one_of(anything, st.lists(st.one_of(st.sampled_from(["quantize:4", "icl:shots=0", "noise:"]),
                                                     anything), max_size=3))

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(metrics, anything, reduces, st.one_of(st.none(), anything), attacks)
    def check(metric, threshold, reduce, confidence, under_attack):
        with reporting.recording() as recorder:  # keep these records out of this session's summary
            try:
                assert_forgotten(metric, threshold, reduce=reduce, confidence=confidence,
                                 under_attack=under_attack, suite=suite)
            except UnlearnError:
                pass
        assert [r["verdict"] for r in recorder.assertions] == ["error"]

    check()


# ---------------------------------------------------------------- safe loading: opt-ins are recorded

def test_opt_ins_are_shown_in_the_json_report_header(pytester, toy_world, broken):
    pytester.makeini("[pytest]\n"
                     f"unlearn_original = {toy_world['original']}\n"
                     f"unlearn_model = {broken['pickled']}\n"
                     f"unlearn_forget = {toy_world['forget']}\n"
                     f"unlearn_retain = {toy_world['retain']}\n"
                     "unlearn_trust_remote_code = true\n")
    pytester.makepyfile(test_gate="from pytest_unlearn import assert_forgotten\n\n"
                                  "def test_gate():\n    assert_forgotten('es', threshold=0.3)\n")
    refused = pytester.runpytest("-p", "no:cacheprovider")
    refused.assert_outcomes(failed=1)
    refused.stdout.fnmatch_lines(["*refusing to load pickle-based weights*--unlearn-allow-pickle*"])

    result = pytester.runpytest("-p", "no:cacheprovider", "--unlearn-allow-pickle", "--unlearn-report", "r.json")
    result.assert_outcomes(passed=1)
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["opt_ins"] == ["allow_pickle", "trust_remote_code"]
    assert report["settings"]["allow_pickle"] is True and report["settings"]["trust_remote_code"] is True
    assert report["models"]["unlearned"]["source"] == broken["pickled"]
    assert report["models"]["unlearned"]["opt_ins"] == ["allow_pickle", "trust_remote_code"]
    # the pickled copy of the reference model scores exactly as the safetensors one
    assert report["assertions"][0]["score"] == pytest.approx(0.1629, abs=1e-4)


# ---------------------------------------------------------------- a corrupted result cache

CACHE_SUITE = """
from pytest_unlearn import assert_forgotten

def test_forgotten():
    assert_forgotten("es", threshold=0.3)

def test_original_leaks(unlearn):
    assert_forgotten("prob", threshold=0.5, model=unlearn.settings.original)
"""


def test_a_corrupted_cache_entry_is_recomputed_and_the_verdict_is_unchanged(pytester, toy_world):
    from pytest_unlearn.cache import ResultCache

    pytester.makeini("[pytest]\n"
                     f"unlearn_original = {toy_world['original']}\n"
                     f"unlearn_model = {toy_world['reference']}\n"
                     f"unlearn_forget = {toy_world['forget']}\n"
                     f"unlearn_retain = {toy_world['retain']}\n")
    pytester.makepyfile(test_gate=CACHE_SUITE)

    def run() -> dict:
        pytester.runpytest("--unlearn-report", "report.json").assert_outcomes(passed=1, failed=1)
        report = json.loads((pytester.path / "report.json").read_text())
        figures = [(a["test"], a["verdict"], a["score"], a["samples"], a.get("message")) for a in report["assertions"]]
        return {"figures": figures, "cost": report["cost"]}

    first = run()
    root = pytester.path / ".pytest_cache" / "d" / "unlearn"
    entries = sorted(root.rglob("*.npz"))
    assert len(entries) >= 3 and first["cost"]["forward_batches"] > 0
    for k, path in enumerate(entries):  # truncated, bit-flipped, replaced by garbage
        data = bytearray(path.read_bytes())
        if k % 3 == 0:
            data = data[: len(data) // 2]
        elif k % 3 == 1:
            data[len(data) // 2] ^= 0xFF
        else:
            data = bytearray(b"not an npz file")
        path.write_bytes(bytes(data))
    second = run()
    assert second["figures"] == first["figures"]
    # every broken entry was detected and recomputed: the run cost what the first, cold one did
    for key in ("forward_batches", "generation_batches", "cache_hits"):
        assert second["cost"][key] == first["cost"][key], key
    # the broken entries were replaced by good ones: every one loads and verifies again
    cache = ResultCache(root)
    assert all(cache.get(path.stem) is not None for path in entries)
