"""The GPU code paths, simulated on the CPU.

* Out-of-memory back-off: a model whose forward raises an out-of-memory error for batches
  of more than ``k`` rows must give the results of a run at the size the back-off lands on,
  remember that size, and fail clearly when even one sample does not fit.
* ``device="sharded"`` (accelerate ``device_map="auto"``): on a machine without a GPU the
  model is placed on the CPU by accelerate and must score exactly like a plain load; a
  device map with disk offload exercises accelerate's hooks on the CPU.
* The automatic choice of a device map under ``device="auto"``, with the memory query
  replaced.
"""

from __future__ import annotations

import functools
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import models  # noqa: E402
from pytest_unlearn.models import devices, loading  # noqa: E402
from pytest_unlearn.batching import (  # noqa: E402
    ModelDoesNotFitError,
    clear_memo,
    is_out_of_memory,
    remember_size,
    remembered_size,
    run_batches,
)
from pytest_unlearn.data import load_dataset  # noqa: E402
from pytest_unlearn.errors import ConfigError  # noqa: E402
from pytest_unlearn.forward import STAT_FIELDS, input_device, length_sorted_batches, teacher_forced_stats  # noqa: E402
from pytest_unlearn.generation import greedy_generate  # noqa: E402
from pytest_unlearn.models import load_model, needs_device_map, weights_bytes  # noqa: E402
from pytest_unlearn.prompts import dataset_parts  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402

OOM_ERRORS = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"),
    "RuntimeError": lambda: RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; "
                                         "15.78 GiB total capacity; 14.21 GiB already allocated)"),
}


@pytest.fixture(autouse=True)
def _fresh_memo():
    clear_memo()
    yield
    clear_memo()


@pytest.fixture(scope="module")
def world(toy_world):
    """The toy original model and all its samples (forget + retain + holdout), encoded."""
    handle = load_model(toy_world["original"], device="cpu", name="original")
    data = [load_dataset(toy_world[n], name=n) for n in ("forget", "retain", "holdout")]
    scorer = Scorer()
    encoded = [e for d in data for e in scorer.encode(handle, dataset_parts(d))]
    assert len({len(e.input_ids) for e in encoded}) > 3  # several lengths: real length sorting
    return handle, encoded, data


class OutOfMemoryAbove:
    """Make ``model.forward`` raise an out-of-memory error for batches of more than ``k`` rows;
    count the errors and record the sizes of the batches that ran."""

    def __init__(self, model, k: int, error=OOM_ERRORS["torch.OutOfMemoryError"]):
        self.model, self.k, self.error = model, k, error
        self.raised = 0
        self.rows: list[int] = []
        self.original = model.forward

        @functools.wraps(self.original)
        def forward(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows = int(ids.shape[0])
            if rows > self.k:
                self.raised += 1
                raise self.error()
            self.rows.append(rows)
            return self.original(*args, **kwargs)

        model.forward = forward

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        del self.model.forward  # back to the class's forward


def stats_of(handle, encoded, **kwargs):
    return teacher_forced_stats(handle.model, encoded, pad_token_id=handle.tokenizer.pad_token_id, **kwargs)


def assert_stats_equal(a, b):
    for f in STAT_FIELDS:
        for x, y in zip(getattr(a, f), getattr(b, f)):
            assert np.array_equal(x, y), f


def assert_stats_close(a, b):
    for f in STAT_FIELDS:
        for x, y in zip(getattr(a, f), getattr(b, f)):
            if f == "correct":
                assert np.array_equal(x, y)
            else:
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the back-off machinery

def test_is_out_of_memory():
    for make in OOM_ERRORS.values():
        assert is_out_of_memory(make())
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only torch / RuntimeError


def test_run_batches_halves_and_keeps_the_order():
    lengths = [5, 3, 9, 1, 7, 7, 2, 8, 4, 6, 3]
    batches = length_sorted_batches(lengths, 4)
    ran: list[list[int]] = []

    def work(idx):
        if len(idx) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        ran.append(idx)

    run_batches(batches, work, widths=lengths)
    assert ran == length_sorted_batches(lengths, 2)  # batches after a back-off are still length-sorted
    # without an error the batches run exactly as given
    ran.clear()
    run_batches(batches, lambda idx: ran.append(idx), widths=lengths)
    assert ran == batches


def test_run_batches_lets_other_errors_through():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_batches([[0, 1]], lambda idx: (_ for _ in ()).throw(RuntimeError("shape mismatch")), widths=[1, 1])
    with pytest.raises(ValueError):
        run_batches([[0]], lambda idx: (_ for _ in ()).throw(ValueError("bad")), widths=[1])


def test_memo_by_length_bucket():
    key = ("forward", "model")
    remember_size(key, 100, 4)  # bucket 128
    assert remembered_size(key, 100) == 4
    assert remembered_size(key, 128) == 4
    assert remembered_size(key, 300) == 4  # longer sequences need at least as much memory
    assert remembered_size(key, 64) is None  # shorter ones are not held back
    assert remembered_size(("generate", "model"), 100) is None
    remember_size(key, 200, 2)
    assert remembered_size(key, 300) == 2 and remembered_size(key, 100) == 4
    clear_memo()
    assert remembered_size(key, 100) is None


def test_length_sorted_batches_unchanged():
    lengths = [5, 3, 9, 1, 7, 7, 2, 8, 4, 6, 3]
    batches = length_sorted_batches(lengths, 3)
    assert batches == [[3, 6, 1], [10, 8, 0], [9, 4, 5], [7, 2]]
    subset = [i for b in batches[1:3] for i in b]  # whole batches in sorted order re-batch identically
    sub = length_sorted_batches([lengths[i] for i in subset], 3)
    assert [[subset[j] for j in b] for b in sub] == batches[1:3]


# ---------------------------------------------------------------- teacher-forced pass

@pytest.mark.parametrize("error", OOM_ERRORS, ids=list(OOM_ERRORS))
def test_forward_backs_off_to_the_size_that_fits(world, error):
    handle, encoded, _ = world
    reference = stats_of(handle, encoded, batch_size=4)
    with OutOfMemoryAbove(handle.model, 4, OOM_ERRORS[error]) as oom:
        stats = stats_of(handle, encoded)  # default size on CPU: 8
        assert oom.raised == 1  # one batch of 8 failed; every later batch ran at 4
        assert set(oom.rows) <= {1, 2, 3, 4} and max(oom.rows) == 4
        assert_stats_equal(stats, reference)  # the very batches of batch_size=4: bit-identical
        oom.raised, oom.rows[:] = 0, []
        again = stats_of(handle, encoded)
        assert oom.raised == 0  # the memo starts the second call at the size that worked
        assert_stats_equal(again, reference)


def test_forward_backs_off_below_an_odd_limit(world):
    handle, encoded, _ = world
    at_two = stats_of(handle, encoded, batch_size=2)
    at_three = stats_of(handle, encoded, batch_size=3)
    with OutOfMemoryAbove(handle.model, 3) as oom:
        stats = stats_of(handle, encoded)
        assert oom.raised == 2  # 8 -> 4 -> 2
    assert_stats_equal(stats, at_two)
    assert_stats_close(stats, at_three)  # other batches: the same up to float rounding


def test_forward_without_oom_is_unchanged(world):
    """The back-off machinery changes nothing when no error occurs."""
    handle, encoded, _ = world
    default = stats_of(handle, encoded)
    assert_stats_equal(default, stats_of(handle, encoded, batch_size=8))
    with OutOfMemoryAbove(handle.model, 1000) as oom:
        assert_stats_equal(default, stats_of(handle, encoded))
    assert oom.raised == 0


def test_forward_one_sample_does_not_fit(world):
    handle, encoded, _ = world
    with OutOfMemoryAbove(handle.model, 0) as oom:
        with pytest.raises(ModelDoesNotFitError) as info:
            stats_of(handle, encoded)
        assert oom.raised == 4  # 8, 4, 2, 1
    message = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert "does not fit" in message and "batch size 1" in message
    assert f"of {len(encoded)}" in message and "tokens" in message
    assert "unlearn_dtype" in message and "sharded" in message and "device_map" in message
    assert "OutOfMemoryError" in message


def test_scorer_gives_backed_off_scores(world):
    """Through the Scorer (its cache off): the scores of the run at the size that fits."""
    handle, _, data = world
    forget = data[0]
    expected = Scorer(batch_size=4).per_sample("es", handle, forget)
    with OutOfMemoryAbove(handle.model, 4) as oom:
        got = Scorer().per_sample("es", handle, forget)
    assert oom.raised == 1
    assert np.array_equal(got, expected)


# ---------------------------------------------------------------- greedy generation

def generate(handle, encoded, **kwargs):
    return greedy_generate(handle.model, handle.tokenizer, [e.input_ids[:e.answer_start] for e in encoded],
                           [e.n_answer for e in encoded], **kwargs)


def test_generation_backs_off(world):
    handle, encoded, _ = world
    encoded = encoded[:12]
    reference = generate(handle, encoded, batch_size=2)
    with OutOfMemoryAbove(handle.model, 3, OOM_ERRORS["RuntimeError"]) as oom:
        texts = generate(handle, encoded)
        assert oom.raised == 2  # 8 -> 4 -> 2
        assert max(oom.rows) == 2
        assert texts == reference
        oom.raised = 0
        assert generate(handle, encoded) == reference
        assert oom.raised == 0  # remembered
    assert any(texts)


def test_generation_one_sample_does_not_fit(world):
    handle, encoded, _ = world
    with OutOfMemoryAbove(handle.model, 0):
        with pytest.raises(ModelDoesNotFitError, match="greedy generation ran out of memory"):
            generate(handle, encoded[:5])


def test_memo_is_per_workload(world):
    """Generation's remembered size does not hold back the teacher-forced pass."""
    handle, encoded, _ = world
    with OutOfMemoryAbove(handle.model, 2) as oom:
        generate(handle, encoded[:8])
        assert oom.raised == 2
    with OutOfMemoryAbove(handle.model, 1000) as oom:
        stats_of(handle, encoded)
    assert max(oom.rows) == 8


# ---------------------------------------------------------------- device map

def test_needs_device_map():
    gib = 2**30
    assert not needs_device_map(10 * gib, 80 * gib)
    assert not needs_device_map(72 * gib, 80 * gib)  # exactly 90%
    assert needs_device_map(72 * gib + 1, 80 * gib)
    assert needs_device_map(140 * gib, 80 * gib)
    assert needs_device_map(1, 0)
    assert not needs_device_map(0, 0)


def test_weights_bytes_scales_to_the_dtype(toy_world):
    folder = toy_world["original"]
    files = sorted(folder.glob("*.safetensors"))
    model = load_model(folder, device="cpu").model
    n = sum(t.numel() for t in model.state_dict().values())
    assert weights_bytes(files, torch.float32) == 4 * n
    assert weights_bytes(files, torch.bfloat16) == 2 * n
    assert weights_bytes(files, torch.float32) <= sum(f.stat().st_size for f in files)


def test_weights_bytes_of_an_unreadable_header(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 1000) + b"{not json")
    assert weights_bytes([f], torch.float32) == f.stat().st_size


def test_automatic_device_map_decision(toy_world, monkeypatch):
    """device="auto" on CUDA spreads the model when the weights exceed 90% of the free memory."""
    folder = toy_world["original"]
    need = weights_bytes(sorted(folder.glob("*.safetensors")), torch.bfloat16)
    cuda = torch.device("cuda")
    monkeypatch.setattr(devices, "_free_gpu_bytes", lambda device: need)
    assert devices._auto_device_map(folder, cuda, torch.bfloat16)
    monkeypatch.setattr(devices, "_free_gpu_bytes", lambda device: 2 * need)
    assert not devices._auto_device_map(folder, cuda, torch.bfloat16)
    assert not devices._auto_device_map(folder, torch.device("cpu"), torch.bfloat16)  # never off CUDA

    def no_query(device):
        raise RuntimeError("no CUDA")

    monkeypatch.setattr(devices, "_free_gpu_bytes", no_query)
    assert not devices._auto_device_map(folder, cuda, torch.bfloat16)


def spy_on_device_map(monkeypatch) -> list[dict]:
    """Record the device-map arguments load_model passes to from_pretrained."""
    calls: list[dict] = []
    real = models.device_map_kwargs

    def recording():
        calls.append(real())
        return calls[-1]

    monkeypatch.setattr(loading, "device_map_kwargs", recording)
    return calls


def test_automatic_device_map_is_used_by_load_model(toy_world, monkeypatch):
    seen = []
    calls = spy_on_device_map(monkeypatch)
    monkeypatch.setattr(loading, "_auto_device_map", lambda folder, device, dtype: seen.append(device) or True)
    load_model(toy_world["original"], device="auto")
    assert seen and calls == [{"device_map": "auto"}]
    seen.clear()
    load_model(toy_world["original"], device="cpu")
    assert not seen and len(calls) == 1  # only device="auto" decides by itself


def test_sharded_load_scores_like_a_plain_load(world, toy_world, monkeypatch):
    plain, _, data = world
    calls = spy_on_device_map(monkeypatch)
    handle = load_model(toy_world["original"], device="sharded", name="original")
    assert calls == [{"device_map": "auto"}]  # loaded through accelerate's device_map="auto"
    if not torch.cuda.is_available():  # accelerate placed it all on the CPU: a plain model there
        assert handle.device_map is None and {p.device.type for p in handle.model.parameters()} == {"cpu"}
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert handle.device.type == expected_device
    assert handle.fingerprint == plain.fingerprint
    assert not models.spread_over_devices(handle.model)  # it fits one device here
    scorer = Scorer()
    for metric in ("es", "prob", "em"):
        for d in data:
            assert np.array_equal(scorer.per_sample(metric, handle, d), scorer.per_sample(metric, plain, d))
    assert scorer.generate(handle, dataset_parts(data[0])) == scorer.generate(plain, dataset_parts(data[0]))


def test_sharded_spec_checks():
    assert models.resolve_device("sharded").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="sharded"):
        models.resolve_device("gpu")


def test_sharded_gguf_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ConfigError, match="one device"):
        load_model(path, device="sharded")


@pytest.fixture(scope="module")
def offloaded(toy_world, tmp_path_factory):
    """The toy original with its last decoder layer offloaded to disk by accelerate (the same
    hooks as a model spread over GPUs with offload)."""
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    offload = tmp_path_factory.mktemp("offload")
    mp = pytest.MonkeyPatch()
    mp.setattr(loading, "device_map_kwargs", lambda: {"device_map": device_map, "offload_folder": str(offload)})
    try:
        handle = load_model(toy_world["original"], device="sharded", name="unlearned")
    finally:
        mp.undo()
    return handle


def test_offloaded_model_scores_like_a_plain_load(world, offloaded):
    plain, encoded, data = world
    assert models.spread_over_devices(offloaded.model)
    assert any(p.device.type == "meta" for p in offloaded.model.parameters())
    assert offloaded.device == torch.device("cpu") == input_device(offloaded.model)
    assert_stats_close(stats_of(offloaded, encoded), stats_of(plain, encoded))
    scorer = Scorer()
    np.testing.assert_allclose(scorer.per_sample("es", offloaded, data[0]),
                               scorer.per_sample("es", plain, data[0]), rtol=1e-6)
    assert generate(offloaded, encoded[:8]) == generate(plain, encoded[:8])


def test_offloaded_model_refuses_copies_and_in_place_changes(world, offloaded):
    from pytest_unlearn.attacks import AttackContext, parse_attack
    from pytest_unlearn.calibration import _Workspace
    from pytest_unlearn.methods import ga

    plain, _, data = world
    forget = data[0]
    with pytest.raises(ConfigError, match="calibration.*one device"):
        _Workspace().handle(plain, offloaded, 0.5, "mixed")
    with pytest.raises(ConfigError, match="training a copy.*one device"):
        ga(offloaded, forget, steps=1, lr=1e-3)
    ctx = AttackContext(scorer=Scorer())
    for spec in ("quantize:8", "relearn:steps=1"):
        with pytest.raises(ConfigError, match="offloaded"):
            parse_attack(spec).run("es", offloaded, forget, ctx)


def test_adapter_on_an_offloaded_base_is_refused(world, offloaded, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    plain = world[0]
    adapter = tmp_path / "adapter"
    get_peft_model(copy.deepcopy(plain.model), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    with pytest.raises(ConfigError, match="PEFT adapter.*one device"):
        load_model(adapter, base=offloaded)
    assert load_model(adapter, base=plain).fingerprint  # the same adapter on a plain base loads


def test_offloaded_nan_weight_is_found(toy_world, tmp_path):
    """The finite-weights check also reads weights accelerate offloaded."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir()
    for f in toy_world["original"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    weights = sorted(folder.glob("*.safetensors"))[0]
    tensors = load_file(weights)
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name][0, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    mp = pytest.MonkeyPatch()
    mp.setattr(loading, "device_map_kwargs",
               lambda: {"device_map": device_map, "offload_folder": str(tmp_path / "offload")})
    try:
        with pytest.raises(models.ModelLoadError, match=name.replace(".", r"\.")):
            load_model(folder, device="sharded")
    finally:
        mp.undo()
