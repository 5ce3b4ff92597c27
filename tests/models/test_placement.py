"""Placement planned once: the device of every role (unlearned, original, calibration's working
copy, reference) is decided before any model is loaded, from the checkpoints' sizes and the GPUs'
free memory (simulated here: no test needs a GPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import models  # noqa: E402
from pytest_unlearn.models import devices  # noqa: E402
from pytest_unlearn.models import plan_placement, weights_bytes  # noqa: E402
from pytest_unlearn.suite import Suite  # noqa: E402

GB = 10**9
W7 = int(13.5 * GB)  # a 7B model's bf16 weights
ALL = {"model": W7, "original": W7, "working copy": W7, "reference": W7}


def test_everything_on_one_gpu_that_holds_it():
    assert plan_placement(ALL, [80 * GB]) == dict.fromkeys(ALL, "cuda:0")


def test_a_role_that_does_not_fit_next_to_the_others_goes_to_the_cpu_whole():
    """90% of 50 GB holds three 13.5 GB models: the fourth (the reference, planned last) goes
    to the CPU on one device, never spread with offload (which the weight attacks refuse)."""
    plan = plan_placement(ALL, [50 * GB])
    assert plan == {"model": "cuda:0", "original": "cuda:0", "working copy": "cuda:0", "reference": "cpu"}


def test_only_a_model_larger_than_the_largest_gpu_is_sharded():
    plan = plan_placement({"model": 150 * GB, "original": 150 * GB}, [80 * GB, 80 * GB])
    assert plan == {"model": "sharded", "original": "sharded"}
    # 90% of the free memory is for weights: 73 GB fits 80 GB free, 73 GB does not fit 80 GB x 0.9 = 72 GB
    assert plan_placement({"model": 72 * GB}, [80 * GB]) == {"model": "cuda:0"}
    assert plan_placement({"model": 73 * GB}, [80 * GB]) == {"model": "sharded"}


def test_roles_are_balanced_over_gpus_in_order():
    plan = plan_placement(ALL, [40 * GB, 30 * GB])
    # room 36 and 27: model -> 0 (22.5 left), original -> 1 (13.5 left), copy -> 0 (9 left), reference -> 1 (0)
    assert plan == {"model": "cuda:0", "original": "cuda:1", "working copy": "cuda:0", "reference": "cuda:1"}
    assert plan_placement(ALL, []) == {}


# --- the suite plans before loading ---------------------------------------------------------

@pytest.fixture
def recorded(toy_world, monkeypatch):
    """load_model records the device each role is loaded with (and loads on the CPU);
    GPUs are simulated by the free-memory figures the test sets."""
    events: list = []
    real_load = models.load_model

    def load(path, **kwargs):
        events.append(("load", kwargs.get("name"), kwargs.get("device")))
        return real_load(path, **{**kwargs, "device": "cpu", "dtype": "float32"})

    monkeypatch.setattr(models, "load_model", load)
    size = weights_bytes(sorted(toy_world["original"].glob("*.safetensors")), torch.bfloat16)
    return events, size


def suite_of(toy_world, **settings) -> Suite:
    return Suite.from_paths(original=toy_world["original"], model=toy_world["original"].parent / "unlearned",
                            reference=toy_world["reference"], forget=toy_world["forget"],
                            retain=toy_world["retain"], cache_dir=None, **settings)


@pytest.fixture
def unlearned_copy(toy_world):
    import shutil

    target = toy_world["original"].parent / "unlearned"
    if not target.exists():
        shutil.copytree(toy_world["original"], target)
    return target


def test_the_reference_loaded_late_keeps_its_planned_device(toy_world, unlearned_copy, recorded, monkeypatch):
    """The GPU holds three models: the plan, made before the first load, gives the reference
    (loaded after calibration) the CPU, not device "auto" (spread with offload, then refused by
    the weight attacks); free memory is measured once, before any load."""
    events, size = recorded
    monkeypatch.setattr(models, "gpu_free_bytes", lambda: events.append(("measure",)) or [int(3.5 * size / 0.9)])
    suite = suite_of(toy_world)
    suite.unlearned
    suite.original
    assert suite.calibration_device() == "cuda:0"
    suite.reference
    assert events == [("measure",), ("load", "unlearned", "cuda:0"), ("load", "original", "cuda:0"),
                      ("load", "reference", "cpu")]
    assert suite.placement() == {"model": "cuda:0", "original": "cuda:0", "working copy": "cuda:0",
                                 "reference": "cpu"}
    suite.close()


def test_the_working_copy_goes_to_the_cpu_when_the_gpu_holds_two(toy_world, unlearned_copy, recorded, monkeypatch):
    events, size = recorded
    monkeypatch.setattr(models, "gpu_free_bytes", lambda: [int(2.5 * size / 0.9)])
    suite = suite_of(toy_world)
    assert suite.calibration_device() == "cpu"
    suite.reference
    assert events == [("load", "reference", "cpu")]
    suite.close()


def test_one_checkpoint_in_two_roles_is_planned_once(toy_world, recorded, monkeypatch):
    """Original and unlearned are one checkpoint (loaded once): the GPU holding 3.5 models takes
    it, the working copy and the reference (counted twice, the reference would go to the CPU)."""
    events, size = recorded
    monkeypatch.setattr(models, "gpu_free_bytes", lambda: [int(3.5 * size / 0.9)])
    suite = Suite.from_paths(original=toy_world["original"], model=toy_world["original"],
                             reference=toy_world["reference"], cache_dir=None)
    assert suite.placement() == {"model": "cuda:0", "original": "cuda:0", "working copy": "cuda:0",
                                 "reference": "cuda:0"}
    suite.close()


@pytest.mark.parametrize("device", ["cpu", "sharded", "cuda:1"])
def test_an_explicit_device_is_not_planned(toy_world, unlearned_copy, recorded, monkeypatch, device):
    events, _ = recorded
    monkeypatch.setattr(models, "gpu_free_bytes", lambda: pytest.fail("measured without need"))
    suite = suite_of(toy_world, device=device)
    suite.reference
    assert suite.placement() == {} and events == [("load", "reference", device)]
    suite.close()


def test_no_gpu_no_plan(toy_world, unlearned_copy, recorded, monkeypatch):
    events, _ = recorded
    monkeypatch.setattr(models, "gpu_free_bytes", lambda: [])
    suite = suite_of(toy_world)
    suite.reference
    assert suite.placement() == {} and events == [("load", "reference", "auto")]
    assert suite.calibration_device() is None
    suite.close()


def test_free_memory_is_measured_after_releasing_cached_blocks(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: calls.append("mem_get_info") or (7, 9))
    assert devices._free_gpu_bytes(torch.device("cuda", 0)) == 7
    assert calls == ["empty_cache", "mem_get_info"]
