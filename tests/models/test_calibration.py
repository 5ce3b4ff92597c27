"""Tests for pytest_unlearn.calibration: UWC mixing, the alpha search, caching, compare, plots."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import calibration  # noqa: E402
from pytest_unlearn.cache import ResultCache  # noqa: E402
from pytest_unlearn.calibration import mixing  # noqa: E402
from pytest_unlearn.calibration import (  # noqa: E402
    CalibrationWarning,
    calibrate,
    compare,
    mix_into,
    mixed_fingerprint,
    plot_curve,
    retain_target,
)
from pytest_unlearn.data import dataset_from_records, load_dataset  # noqa: E402
from pytest_unlearn.errors import ConfigError, ModelMismatchError  # noqa: E402
from pytest_unlearn.models import handle_from_objects, load_model  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402
from pytest_unlearn.toy import tiny_llama, tiny_tokenizer, toy_facts  # noqa: E402


@pytest.fixture(scope="module")
def world(toy_world):
    return SimpleNamespace(
        original=load_model(toy_world["original"], name="original"),
        reference=load_model(toy_world["reference"], name="reference"),
        retain=load_dataset(toy_world["retain"], name="retain"),
        forget=load_dataset(toy_world["forget"], name="forget"),
    )


def noisy(handle, scale: float, seed: int = 0, name: str = "noisy"):
    """The model with gaussian noise added to every MLP weight (retain ES collapses)."""
    model = copy.deepcopy(handle.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if ".mlp." in pname:
                param.add_(torch.randn(param.shape, generator=gen) * scale)
    return handle_from_objects(model, handle.tokenizer, name=name)


def lerp_model(original, unlearned, alpha: float):
    """theta(alpha) built independently of mix_into: a fresh copy and torch.lerp."""
    model = copy.deepcopy(original.model)
    src_u = dict(unlearned.model.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.lerp(param.detach().clone(), src_u[name], alpha))
    return handle_from_objects(model, original.tokenizer, name=f"lerp{alpha}")


def logits(model, ids=torch.tensor([[1, 5, 9, 17, 33, 40, 2]])):
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------- mixing

def test_mix_endpoints_are_exact_and_middle_is_lerp(world):
    original, unlearned = world.original, world.reference
    working = copy.deepcopy(unlearned.model)
    mix_into(working, original.model, unlearned.model, 0.0)
    assert torch.equal(logits(working), logits(original.model))
    mix_into(working, original.model, unlearned.model, 1.0)
    assert torch.equal(logits(working), logits(unlearned.model))
    mix_into(working, original.model, unlearned.model, 0.3)
    src_o, src_u = dict(original.model.named_parameters()), dict(unlearned.model.named_parameters())
    for name, param in working.named_parameters():
        assert torch.equal(param, torch.lerp(src_o[name], src_u[name], 0.3)), name
    assert not torch.equal(logits(working), logits(original.model))
    with pytest.raises(ValueError, match="separate copy"):
        mix_into(unlearned.model, original.model, unlearned.model, 0.5)


def test_mixed_fingerprints_are_deterministic():
    assert mixed_fingerprint("a", "b", 1.0) == "b"
    assert mixed_fingerprint("a", "b", 0.0) == "a"
    assert mixed_fingerprint("a", "b", 0.25) == mixed_fingerprint("a", "b", 0.25)
    assert len({mixed_fingerprint("a", "b", 0.25), mixed_fingerprint("a", "b", 0.5),
                mixed_fingerprint("b", "a", 0.25)}) == 3


def test_retain_target_reads_the_knowledge_direction():
    assert retain_target("es", 0.8, 0.5) == pytest.approx(0.4)
    assert retain_target("ppl", 2.0, 0.8) == pytest.approx(2.5)      # lower is more knowledge
    assert retain_target("mia_min_k", -2.0, 0.5) == pytest.approx(-4.0)  # negative, higher = more


# ---------------------------------------------------------------- the search

def test_calibrate_finds_the_largest_alpha_meeting_tau(world):
    unlearned = noisy(world.original, 0.3)
    tol = 0.01
    res = calibrate(world.original, unlearned, world.retain, 0.9, "es", forget=world.forget, tol=tol)
    assert 0.0 < res.alpha < 1.0
    assert res.evaluations <= 8
    assert res.monotone and res.original_retain_score == pytest.approx(1.0)
    assert res.target == pytest.approx(0.9 * res.original_retain_score)
    assert res.retain_score >= res.target
    # checked independently of mix_into and of the search's own bookkeeping
    fresh = Scorer()
    at_alpha = fresh.score("es", lerp_model(world.original, unlearned, res.alpha), world.retain).reduced
    beyond = lerp_model(world.original, unlearned, min(1.0, res.alpha + tol))
    past = fresh.score("es", beyond, world.retain).reduced
    assert at_alpha >= res.target and at_alpha == pytest.approx(res.retain_score)
    assert past < res.target
    # the model handed back is the mixed model at alpha, with a derived fingerprint
    expected = mixed_fingerprint(world.original.fingerprint, unlearned.fingerprint, res.alpha)
    assert res.model.fingerprint == expected
    assert res.model.name == "noisy@uwc(tau=0.9)"
    assert torch.equal(logits(res.model.model), logits(lerp_model(world.original, unlearned, res.alpha).model))
    # the curve: every evaluated point, sorted, forget only where computed
    curve = res.curve
    assert list(curve.columns) == ["alpha", "retain_score", "forget_score"]
    assert curve["alpha"].is_monotonic_increasing and curve["alpha"].iloc[[0, -1]].tolist() == [0.0, 1.0]
    assert len(curve) == res.evaluations + 1  # + the original's own score at alpha = 0
    assert curve["forget_score"].notna().sum() == 3  # alpha = 0, chosen alpha, alpha = 1
    assert res.forget_score == pytest.approx(curve.set_index("alpha").loc[res.alpha, "forget_score"])
    assert res.forget_score_uncalibrated == pytest.approx(curve["forget_score"].iloc[-1])
    report = json.loads(json.dumps(res.to_dict()))
    assert report["alpha"] == res.alpha and len(report["curve"]) == len(curve)


def test_alpha_is_one_when_the_unlearned_model_meets_the_bar(world):
    same = world.original.derive(fingerprint=world.original.fingerprint, name="same")
    res = calibrate(world.original, same, world.retain, 0.9)
    assert res.alpha == 1.0 and res.evaluations == 1 and res.forget_score is None
    assert res.model.model is world.original.model  # no working copy was made
    assert any("already meets" in note for note in res.notes)
    # ppl: lower is more knowledge, the bar is original / tau
    res = calibrate(world.original, world.reference, world.retain, 0.5, "ppl")
    assert res.target == pytest.approx(res.original_retain_score / 0.5)
    assert res.alpha == 1.0 and res.retain_score <= res.target


def test_invalid_settings_are_config_errors(world):
    with pytest.raises(ConfigError, match="tau"):
        calibrate(world.original, world.reference, world.retain, 1.5)
    with pytest.raises(ConfigError, match="tol"):
        calibrate(world.original, world.reference, world.retain, 0.9, tol=0)


@pytest.fixture(scope="module")
def untrained():
    """Two untrained tiny models of one architecture, and a two-row QA set (fast)."""
    records = toy_facts(2)
    tok = tiny_tokenizer([r["question"] + " " + r["answer"] for r in records] * 3, vocab_size=300)

    def make(seed, **kw):
        return handle_from_objects(tiny_llama(tok, seed=seed, **kw), tok, name=f"m{seed}")

    return SimpleNamespace(tok=tok, make=make, a=make(0), b=make(1),
                           data=dataset_from_records(records, name="retain"))


class CurveScorer:
    """Scores a model by the alpha its weights were mixed at, read back from one weight."""

    def __init__(self, original, unlearned, curve):
        self.o = original.model.lm_head.weight.detach().reshape(-1)[:8].clone()
        self.u = unlearned.model.lm_head.weight.detach().reshape(-1)[:8].clone()
        self.curve = curve
        self.alphas: list[float] = []

    def score(self, metric, handle, dataset, *, reduce="mean"):
        w = handle.model.lm_head.weight.detach().reshape(-1)[:8]
        alpha = float(((w - self.o) / (self.u - self.o)).mean())
        self.alphas.append(alpha)
        return SimpleNamespace(reduced=self.curve(alpha))


def test_non_monotone_curve_warns_and_scans_the_grid(untrained):
    def curve(a):  # a dip, a recovery that still meets the bar, then a fail above the dip
        return 1.0 if a < 1e-6 else 0.95 if a < 0.47 else 0.2 if a < 0.78 else 0.93 if a < 0.93 else 0.5

    scorer = CurveScorer(untrained.a, untrained.b, curve)
    with pytest.warns(CalibrationWarning, match="not monotone"):
        res = calibrate(untrained.a, untrained.b, untrained.data, 0.9, scorer=scorer)
    assert not res.monotone
    assert res.alpha == pytest.approx(0.9)  # the largest grid alpha whose score meets 0.9
    assert curve(res.alpha) >= 0.9
    grid = np.linspace(0, 1, 21)
    assert all(np.isclose(res.curve["alpha"], g).any() for g in grid)
    assert any("grid scan" in note for note in res.notes)


def test_monotone_fake_curve_converges_fast(untrained):
    scorer = CurveScorer(untrained.a, untrained.b, lambda a: 1.0 - a ** 2)
    res = calibrate(untrained.a, untrained.b, untrained.data, 0.6, scorer=scorer, tol=0.01)
    truth = 0.4 ** 0.5
    assert truth - 0.01 <= res.alpha <= truth + 1e-9
    assert res.evaluations <= 8 and res.monotone


def test_mismatched_models_name_the_tensor(untrained):
    wider = untrained.make(0, hidden_size=32, intermediate_size=64)
    with pytest.raises(ModelMismatchError, match="model.embed_tokens.weight"):
        calibrate(untrained.a, wider, untrained.data, 0.9, scorer=Scorer())
    deeper = untrained.make(0, layers=3)
    with pytest.raises(ModelMismatchError, match=r"model\.layers\.2\."):
        calibrate(untrained.a, deeper, untrained.data, 0.9)
    with pytest.raises(ModelMismatchError, match="model.embed_tokens.weight"):
        mix_into(copy.deepcopy(untrained.a.model), untrained.a.model, wider.model, 0.5)


# ---------------------------------------------------------------- caching

def test_second_call_is_served_from_the_cache(world, tmp_path):
    unlearned = noisy(world.original, 0.3, seed=1, name="noisy1")
    cache = ResultCache(tmp_path / "cache")
    first_scorer = Scorer(cache=cache)
    first = calibrate(world.original, unlearned, world.retain, 0.9, forget=world.forget, scorer=first_scorer)
    assert first.evaluations > 0 and first_scorer.cost.forward_passes > 0 and not first.cached
    again_scorer = Scorer(cache=cache)
    again = calibrate(world.original, unlearned, world.retain, 0.9, forget=world.forget, scorer=again_scorer)
    assert again.cached and again.evaluations == 0
    assert again_scorer.cost.forward_passes == 0 and again_scorer.cost.cached == 0
    assert again.alpha == first.alpha and again.monotone == first.monotone
    assert again.curve.equals(first.curve)
    assert again.model.fingerprint == first.model.fingerprint
    assert torch.equal(logits(again.model.model), logits(first.model.model))
    # another tau is another calibration, but the token statistics of alpha = 0 and 1 are reused
    third_scorer = Scorer(cache=cache)
    third = calibrate(world.original, unlearned, world.retain, 0.6, scorer=third_scorer)
    assert not third.cached and third_scorer.cost.cached >= 2


# ---------------------------------------------------------------- compare and plot

def test_compare_orders_by_calibrated_forget_score(world, monkeypatch):
    copies = []
    real_deepcopy = copy.deepcopy
    counting = SimpleNamespace(deepcopy=lambda *a: copies.append(1) or real_deepcopy(*a))
    monkeypatch.setattr(mixing, "copy", counting)
    candidates = {"noisy": noisy(world.original, 0.3),
                  "noisier": noisy(world.original, 1.0, seed=2, name="noisier"),
                  "reference": world.reference,
                  "same": world.original.derive(fingerprint=world.original.fingerprint, name="same")}
    table = compare(world.original, candidates, world.retain, world.forget, 0.9, "es")
    assert list(table.columns) == ["candidate", "alpha", "retain_score", "forget_score",
                                   "forget_score_uncalibrated", "evaluations"]
    assert sorted(table["candidate"]) == sorted(candidates)
    assert table["forget_score"].is_monotonic_increasing  # lower forget ES = stronger unlearning first
    rows = table.set_index("candidate")
    assert rows.loc["same", "alpha"] == 1.0 and rows.loc["reference", "alpha"] == 1.0
    assert rows.loc["noisy", "alpha"] < 1.0 and rows.loc["noisy", "retain_score"] >= 0.9
    assert table["candidate"].iloc[0] == "reference" and table["candidate"].iloc[-1] == "same"
    assert len(copies) == 1  # one working copy served both mixed candidates
    ppl = compare(world.original, {k: candidates[k] for k in ("same", "reference")},
                  world.retain, world.forget, 0.9, "ppl")
    assert ppl["forget_score"].is_monotonic_decreasing  # ppl: higher = less knowledge, first
    assert ppl["candidate"].tolist() == ["reference", "same"]


def test_plot_curve_writes_a_png(untrained, tmp_path):
    pytest.importorskip("matplotlib")
    scorer = CurveScorer(untrained.a, untrained.b, lambda a: 1.0 - a)
    res = calibrate(untrained.a, untrained.b, untrained.data, 0.9, scorer=scorer, tol=0.05)
    path = plot_curve(res, tmp_path / "plots" / "uwc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_working_copy_on_gpu_reads_host_sources(untrained):
    working = copy.deepcopy(untrained.b.model).to("cuda")
    mix_into(working, untrained.a.model, untrained.b.model, 0.25)
    src_a, src_b = dict(untrained.a.model.named_parameters()), dict(untrained.b.model.named_parameters())
    assert next(untrained.a.model.parameters()).device.type == "cpu"  # the sources stay where they are
    for name, param in working.named_parameters():
        expected = torch.lerp(src_a[name], src_b[name], 0.25)
        torch.testing.assert_close(param.cpu(), expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- one working copy per unlearned model

def test_one_working_copy_serves_every_tau_and_metric(world, toy_world, monkeypatch):
    from pytest_unlearn.suite import Suite

    copies = []
    real_deepcopy = copy.deepcopy
    monkeypatch.setattr(mixing, "copy", SimpleNamespace(deepcopy=lambda *a: copies.append(1) or real_deepcopy(*a)))
    suite = Suite.from_paths(original=toy_world["original"], retain=toy_world["retain"], cache_dir=None, device="cpu")
    unlearned = noisy(world.original, 0.3)
    try:
        results = [suite.calibrate(0.9, model=unlearned), suite.calibrate(0.6, model=unlearned),
                   suite.calibrate(0.9, "prob", model=unlearned)]
        mixed = [r for r in results if 0.0 < r.alpha < 1.0]
        assert len({r.alpha for r in mixed}) >= 2
        assert len(copies) == 1  # one working copy for every tau and metric
        assert len({id(r.model.model) for r in mixed}) == 1
        assert suite._workspaces[unlearned.fingerprint].device == "cpu"
        # each calibrated handle still computes its own alpha after the others were used
        for r in mixed + mixed[::-1]:
            expected = lerp_model(world.original, unlearned, r.alpha).model
            assert torch.equal(logits(r.model.model), logits(expected)), r.alpha
            scored = Scorer().score(r.metric, r.model, world.retain).reduced
            assert scored == pytest.approx(r.retain_score)
    finally:
        suite.close()
    assert suite._workspaces == {} and all(r.model.model is None for r in mixed)


def test_the_working_copy_is_made_on_its_device_without_a_host_copy(untrained, monkeypatch):
    """The copy's tensors are allocated on the target device (the meta device stands for a
    GPU here): no parameter or buffer is deep-copied on the host on the way."""
    copied = []
    real = torch.Tensor.__deepcopy__
    monkeypatch.setattr(torch.Tensor, "__deepcopy__", lambda self, memo: copied.append(self.shape) or real(self, memo))
    model = untrained.b.model
    model.tie_weights()
    working = calibration.empty_copy(model, "meta")
    assert copied == []
    assert {p.device.type for p in working.parameters()} | {b.device.type for b in working.buffers()} == {"meta"}
    assert [n for n, _ in working.named_parameters()] == [n for n, _ in model.named_parameters()]
    out_w, in_w = working.get_output_embeddings(), working.get_input_embeddings()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (out_w.weight is in_w.weight) == tied
    assert next(model.parameters()).device.type == "cpu"  # the source is untouched
