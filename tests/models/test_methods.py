"""Tests for pytest_unlearn.methods on the toy world's original model.

The toy model is tiny (2 layers, 64 hidden units) and trained from scratch, so the
methods run with large learning rates and few steps; every run is seeded, so the
assertions are about fixed outcomes, with margins.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn.data import load_dataset  # noqa: E402
from pytest_unlearn.errors import ConfigError, UnknownNameError  # noqa: E402
from pytest_unlearn.forward import teacher_forced_stats  # noqa: E402
from pytest_unlearn.methods import (  # noqa: E402
    IDK_ANSWERS, METHODS, decoder_layers, ga, gd, kl, summed_nll, unlearn)
from pytest_unlearn.prompts import encode, parse_prompt_format  # noqa: E402
from pytest_unlearn.training import collate, pad_id  # noqa: E402
from pytest_unlearn.models import load_model  # noqa: E402
from pytest_unlearn.prompts import dataset_parts  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402

FAST = dict(steps=8, lr=1e-3, batch_size=4)
SETTINGS = {
    "ga": FAST, "gd": FAST, "kl": FAST, "npo": FAST,
    "idk": dict(steps=80, lr=3e-3, batch_size=4),
    "rmu": dict(steps=20, lr=2e-2, batch_size=4),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(toy_world):
    original = load_model(toy_world["original"], device="cpu", name="original")
    return SimpleNamespace(
        original=original,
        snapshot={k: v.clone() for k, v in original.model.state_dict().items()},
        forget=load_dataset(toy_world["forget"], name="forget"),
        retain=load_dataset(toy_world["retain"], name="retain"),
        scorer=Scorer(),
    )


@pytest.fixture(scope="module")
def unlearned(world):
    """``unlearned(method, **overrides)``: the method's result, computed once per module."""
    cache = {}

    def get(method: str, **overrides):
        key = (method, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = unlearn(method, world.original, world.forget, world.retain,
                                 **{**SETTINGS[method], **overrides})
        return cache[key]

    return get


def es(world, handle, which: str) -> float:
    return float(world.scorer.per_sample("es", handle, getattr(world, which)).mean())


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry_names():
    assert METHODS.names() == ["ga", "gd", "idk", "kl", "npo", "rmu"]


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_returns_new_model_and_leaves_input_alone(world, unlearned, method):
    out = unlearned(method)
    assert out.model is not world.original.model
    assert not same_weights(out.model, world.original.model)
    now = world.original.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in world.snapshot.items())
    assert out.fingerprint != world.original.fingerprint
    assert out.name.startswith(f"{method}(steps={SETTINGS[method]['steps']},lr=")
    assert out.tokenizer is world.original.tokenizer
    assert not out.model.training and out.dtype == torch.float32
    assert all(p.requires_grad for p in out.model.parameters())


def test_name_format(unlearned):
    assert unlearned("ga").name == "ga(steps=8,lr=0.001)"
    assert unlearned("npo").name == "npo(steps=8,lr=0.001,beta=0.1,retain_weight=1.0)"


@pytest.mark.parametrize("method", ["ga", "npo"])
def test_same_seed_same_weights(world, unlearned, method):
    again = unlearn(method, world.original, world.forget, world.retain, **SETTINGS[method])
    assert same_weights(again.model, unlearned(method).model)
    assert again.fingerprint == unlearned(method).fingerprint


def test_other_seed_other_weights(world, unlearned):
    other = ga(world.original, world.forget, seed=1, **FAST)
    assert other.fingerprint != unlearned("ga").fingerprint


@pytest.mark.parametrize("method", ["ga", "npo", "rmu"])
def test_forget_es_drops(world, unlearned, method):
    before = es(world, world.original, "forget")
    assert before > 0.9  # the original memorised the forget set
    assert es(world, unlearned(method), "forget") < before - 0.3


@pytest.mark.parametrize("method", ["gd", "kl"])
def test_retain_regulariser_beats_plain_ga(world, unlearned, method):
    assert es(world, unlearned(method), "retain") > es(world, unlearned("ga"), "retain") + 0.2


def test_npo_retain_term_keeps_retain(world, unlearned):
    with_rt = es(world, unlearned("npo"), "retain")
    without = unlearned("npo", retain_weight=0.0)
    assert without.name.endswith("retain_weight=0.0)")
    assert with_rt > es(world, without, "retain") + 0.1


def test_summed_nll_matches_scoring_log_probs(world):
    """NPO's sequence NLL equals minus the summed answer log-probs that scoring computes."""
    tok = world.original.tokenizer
    enc = encode(tok, parse_prompt_format(None, tok), dataset_parts(world.forget), max_length=256)
    stats = teacher_forced_stats(world.original.model, enc, pad_token_id=pad_id(tok))
    with torch.no_grad():
        got = summed_nll(world.original.model, collate(enc, [0, 1, 2], pad_id(tok), "cpu"))
    expected = torch.tensor([-stats.logprob[i].sum() for i in range(3)], dtype=torch.float32)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_rmu_updates_only_the_mlps_up_to_its_layer(world, unlearned):
    out = unlearned("rmu")
    assert "layer=1," in out.name  # round(0.4 * 2 layers)
    new, old = out.model.state_dict(), world.original.model.state_dict()
    changed = {k for k in new if not torch.equal(new[k], old[k])}
    assert changed and all(".mlp." in k for k in changed)
    assert any(k.startswith("model.layers.1.mlp.") for k in changed)
    assert len(decoder_layers(out.model)) == 2


def test_idk_answers_with_a_refusal(world, unlearned):
    longest = max(IDK_ANSWERS, key=len)  # answer length sets the generation budget
    parts = [p.with_(answer=longest) for p in dataset_parts(world.forget)]
    answers = world.scorer.generate(unlearned("idk"), parts)
    assert sum(a in IDK_ANSWERS for a in answers) >= len(answers) - 1, answers
    assert es(world, unlearned("idk"), "retain") > 0.9


def test_save_and_reload_gives_identical_logits(world, tmp_path):
    out = ga(world.original, world.forget, out_dir=tmp_path / "ga", **FAST)
    assert out.source == str(tmp_path / "ga")
    back = load_model(tmp_path / "ga", device="cpu")
    ids = torch.tensor([[1, 5, 9, 17, 33, 40]])
    with torch.no_grad():
        assert torch.equal(out.model(ids).logits, back.model(ids).logits)


def test_bfloat16_model_on_cpu_keeps_its_dtype(world):
    model = copy.deepcopy(world.original.model).to(torch.bfloat16)
    half = world.original.derive(model, fingerprint="bf16")
    out = ga(half, world.forget, steps=2, lr=1e-3, batch_size=2)
    assert out.dtype == torch.bfloat16 and half.dtype == torch.bfloat16
    assert not same_weights(out.model, half.model)


def test_progress_bar(world, capsys):
    ga(world.original, world.forget, steps=2, lr=1e-4, batch_size=2, progress=True)
    assert "ga" in capsys.readouterr().err


@pytest.mark.parametrize("fn", [gd, kl])
def test_regularised_methods_need_retain(world, fn):
    with pytest.raises(ConfigError, match="needs a retain set"):
        fn(world.original, world.forget, None, **FAST)


def test_bad_hyper_parameters(world):
    with pytest.raises(ConfigError, match="steps"):
        ga(world.original, world.forget, steps=0)
    with pytest.raises(ConfigError, match="layer"):
        unlearn("rmu", world.original, world.forget, layer=7, steps=1)


def test_unknown_method_suggests_nearest(world):
    with pytest.raises(UnknownNameError, match="did you mean 'npo'"):
        unlearn("nop", world.original, world.forget, world.retain)


def test_half_precision_updates_go_through_float32_master_weights():
    """Steps of size lr (1e-4) are below bfloat16's resolution at 0.5 (2**-9): plain AdamW
    on bf16 weights never moves them, the master-weight optimizer (used by the methods and
    the relearning attack) does."""
    import torch

    from pytest_unlearn.training import MasterAdamW

    plain = torch.nn.Parameter(torch.full((64,), 0.5, dtype=torch.bfloat16))
    mastered = torch.nn.Parameter(torch.full((64,), 0.5, dtype=torch.bfloat16))
    opt_plain = torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0)
    opt_master = MasterAdamW([mastered], 1e-4, weight_decay=0.0, max_grad_norm=1e9)
    for _ in range(20):
        for p, opt in ((plain, opt_plain), (mastered, opt_master)):
            opt.zero_grad()
            p.grad = torch.ones_like(p)
            opt.step()
    assert torch.all(plain == 0.5)
    assert torch.all(mastered < 0.5) and mastered.dtype == torch.bfloat16
    assert abs(float(mastered[0]) - (0.5 - 20 * 1e-4)) < 2 ** -10  # the bf16 value nearest the fp32 master
