"""Training memory: the LM head on the answer positions only, an estimate that refuses (before any
step, on CUDA; simulated here with a replaced free-memory figure) training that cannot fit, naming
the remedy, and an out-of-memory step run again as gradient-accumulated micro-batches."""

from __future__ import annotations

import copy
import functools

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import load_dataset, load_model  # noqa: E402
from pytest_unlearn import training  # noqa: E402
from pytest_unlearn.attacks import AttackContext, run_attack  # noqa: E402
from pytest_unlearn.attacks import relearn  # noqa: E402
from pytest_unlearn.errors import AttackError, UnlearnError  # noqa: E402
from pytest_unlearn.prompts import dataset_parts  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(toy_world):
    return {"original": load_model(toy_world["original"], name="original"),
            "forget": load_dataset(toy_world["forget"], name="forget"),
            "retain": load_dataset(toy_world["retain"], name="retain")}


def full_logits_nll(model, batch):
    """The answer NLL from the logits of every position (the definition)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids, use_cache=False).logits[:, :-1].float()
    labels = batch.labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return nll.sum(-1) / (labels != -100).sum(-1)


def test_the_training_loss_uses_the_answer_positions_only(world, monkeypatch):
    handle = world["original"]
    encoded = Scorer().encode(handle, dataset_parts(world["forget"]))
    batch = training.collate(encoded, [0, 3, 5, 7], training.pad_id(handle.tokenizer), "cpu")
    kept = []
    real = handle.model.forward

    @functools.wraps(real)
    def spy(*args, **kwargs):
        kept.append(kwargs.get("logits_to_keep"))
        return real(*args, **kwargs)

    monkeypatch.setattr(handle.model, "forward", spy)
    got = training.sequence_nll(handle.model, batch)
    longest = max(encoded[i].n_answer for i in [0, 3, 5, 7])
    assert kept == [longest + 1] and longest + 1 < batch.input_ids.shape[1]
    monkeypatch.undo()
    torch.testing.assert_close(got, full_logits_nll(handle.model, batch), rtol=1e-6, atol=1e-6)


def test_the_estimate_is_about_20_bytes_per_parameter_in_bf16():
    params = [torch.nn.Parameter(torch.zeros(1000, 10, dtype=torch.bfloat16))]
    assert training.training_bytes(params) / 10_000 + 2 == 20  # + the bf16 weight itself
    params32 = [torch.nn.Parameter(torch.zeros(1000, 10))]
    assert training.training_bytes(params32) / 10_000 + 4 == 16


def test_relearn_that_cannot_fit_is_refused_before_any_step(world, monkeypatch):
    monkeypatch.setattr(training, "free_device_bytes", lambda device: 2**20)  # 1 MiB free
    steps = []
    monkeypatch.setattr(training.MasterAdamW, "step", lambda self, lr=None: steps.append(1))
    ctx = AttackContext(Scorer(), forget=world["forget"], retain=world["retain"])
    with pytest.raises(UnlearnError, match=r"needs about .* GiB.*only 0\.0 GiB is free.*lora=true.*batch_size=1"):
        run_attack("relearn:steps=2,lora=false", "es", world["original"], world["forget"], ctx)
    assert steps == []
    # with enough memory the same attack runs; the CPU (no figure) is never refused
    monkeypatch.setattr(training, "free_device_bytes", lambda device: 2**40)
    run_attack("relearn:steps=1,lora=false", "es", world["original"], world["forget"], ctx)
    monkeypatch.undo()
    assert training.free_device_bytes("cpu") is None


def test_unlearning_methods_are_refused_too(world, monkeypatch):
    from pytest_unlearn import methods

    monkeypatch.setattr(training, "free_device_bytes", lambda device: 2**20)
    with pytest.raises(UnlearnError, match="lower batch_size"):
        methods.unlearn("ga", world["original"], world["forget"], steps=1)


def test_an_out_of_memory_step_is_run_in_micro_batches(world, monkeypatch):
    """The step is the same: the gradients of every step match those of the unsplit batch."""
    handle, data = world["original"], world["forget"]
    ctx = AttackContext(Scorer())
    real_step = training.MasterAdamW.step
    grads: list = []
    monkeypatch.setattr(training.MasterAdamW, "step", lambda self, lr=None: (
        grads.append([p.grad.clone() for p in self.params]), real_step(self, lr))[1])

    def step_grads(limit):
        grads.clear()
        model = copy.deepcopy(handle.model)
        real = model.forward
        calls = []

        @functools.wraps(real)
        def limited(*args, **kwargs):
            calls.append(kwargs["input_ids"].shape[0])
            if model.training and limit and kwargs["input_ids"].shape[0] > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(*args, **kwargs)

        model.forward = limited
        for p in model.parameters():
            p.requires_grad_(True)
        relearn.train_answers(model, handle, data, ctx, steps=1, lr=1e-3, batch_size=4, seed=0)
        return list(grads[0]), calls

    plain, calls = step_grads(None)
    backed_off, split_calls = step_grads(1)
    assert calls == [4] and split_calls == [4, 2, 1, 1, 1, 1]
    for a, b in zip(plain, backed_off):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(torch.OutOfMemoryError):
        step_grads(-1)  # even one sample does not fit: the error comes through
