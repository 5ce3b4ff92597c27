"""Chained attacks (``a+b``): the parser's rules and errors, the canonical spec and cache key,
the second step running on the first step's attacked weights (checked against an independent
construction), every sample scored once, weights restored bit for bit, and the controls of
``assert_forgotten`` running the same chain."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_attacks import (RecordingScorer, assert_unchanged, make_ctx, state, unlearned,  # noqa: E402,F401
                          world)

from pytest_unlearn.attacks import Attack, AttackOutcome, Chain, parse_attack, run_attack, split_chain  # noqa: E402
from pytest_unlearn.attacks.weight_attacks import quantizable_weights, rtn_quantize  # noqa: E402
from pytest_unlearn.cache import ResultCache  # noqa: E402
from pytest_unlearn.errors import AttackError, UnknownNameError  # noqa: E402
from pytest_unlearn.models import handle_from_objects  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the spec

def test_chain_specs_parse_and_round_trip():
    a = parse_attack("relearn+logit_lens")
    assert isinstance(a, Chain) and [s.name for s in a.steps] == ["relearn", "logit_lens"]
    assert a.spec == parse_attack("relearn").spec + "+" + parse_attack("logit_lens").spec
    assert parse_attack(a.spec) == a and parse_attack(a.spec).spec == a.spec
    q = parse_attack("quantize:4+paraphrase")
    assert q.steps[0].bits == 4 and q.steps[1].name == "paraphrase" and q.kind == "weight"
    assert parse_attack("quantize:bits=4 + paraphrase:source=auto") == q
    three = parse_attack("relearn:steps=2+quantize:8+logit_lens:-1")
    assert [s.name for s in three.steps] == ["relearn", "quantize", "logit_lens"]
    assert parse_attack(three.spec) == three
    # a '+' inside a value is not a chain; the canonical spec quotes it
    p = parse_attack("prefill:text=1+1 is")
    assert p.text == "1+1 is" and p.spec == 'prefill:text="1+1 is"' and parse_attack(p.spec) == p
    assert split_chain('prefill:text="a+relearn"') == ['prefill:text="a+relearn"']
    assert split_chain("relearn:lr=1e+0+logit_lens") == ["relearn:lr=1e+0", "logit_lens"]


def test_chain_and_its_steps_have_different_specs_and_cache_keys(world):
    from pytest_unlearn.attacks.weight_attacks import _outcome_key
    from pytest_unlearn.metrics import get_metric

    ctx = make_ctx(world)
    m, h, d = get_metric("es"), world["original"], world["forget"]
    chain = parse_attack("quantize:8+paraphrase")
    other = parse_attack("quantize:8+jailbreak")
    keys = {chain._key(m, h, d, ctx), other._key(m, h, d, ctx),
            _outcome_key(parse_attack("quantize:8"), m, h, d, ctx)}
    assert len(keys) == 3
    assert chain != other and chain != parse_attack("quantize:8")


@pytest.mark.parametrize("spec, words", [
    ("quantize+relearn", ["relearn cannot be step 2", "put relearn first"]),
    ("relearn+relearn:steps=3", ["relearn cannot be step 2"]),
    ("paraphrase+quantize", ["step 1 (paraphrase) is a prompt attack", "weight attack", "quantize:4+paraphrase"]),
    ("logit_lens+paraphrase", ["representation attack"]),
    ("quantize+quantise:8", ["unknown attack 'quantise'", "did you mean 'quantize'"]),
    ("relearn+logit_len", ["did you mean 'logit_lens'"]),
    ("quantize:5+paraphrase", ["4 or 8"]),
])
def test_bad_chains_explain(spec, words):
    with pytest.raises((AttackError, UnknownNameError)) as info:
        parse_attack(spec)
    for w in words:
        assert w in str(info.value)


class _InPlace(Attack):
    """A weight attack defined elsewhere that does not hand over its weights."""

    name = "in_place"
    kind = "weight"

    def _run(self, metric, model, data, ctx):
        return AttackOutcome(ctx.scorer.per_sample(metric, model, data), {}, None, None)


def test_two_weight_attacks_only_when_both_restore():
    assert [s.name for s in Chain([parse_attack("quantize:8"), parse_attack("ablate")]).steps] == ["quantize", "ablate"]
    with pytest.raises(AttackError, match="does not hand over its attacked weights and restore them"):
        Chain([_InPlace(), parse_attack("paraphrase")])
    assert Chain([parse_attack("quantize"), _InPlace()]).steps[1].name == "in_place"  # last: anything


# ---------------------------------------------------------------- running

def test_quantize_then_paraphrase_is_paraphrase_on_quantized_weights(world):
    """Independent construction: quantize a copy by hand, run paraphrase on it."""
    model, data = world["original"], world["forget"]
    ctx = make_ctx(world)
    before = state(model.model)
    out = run_attack("quantize:4+paraphrase", "prob", model, data, ctx)
    assert_unchanged(model.model, before)
    copy_model = copy.deepcopy(model.model)
    with torch.no_grad():
        for _, w, _ in quantizable_weights(copy_model):
            w.copy_(rtn_quantize(w, 4, 128))
    by_hand = run_attack("paraphrase", "prob", handle_from_objects(copy_model, model.tokenizer, name="q"), data,
                         make_ctx(world))
    np.testing.assert_allclose(out.values, by_hand.values, rtol=1e-6, atol=1e-9)
    plain = run_attack("paraphrase", "prob", model, data, ctx)
    assert not np.allclose(out.values, plain.values)  # the weights really were quantized
    assert out.prompts == by_hand.prompts and out.parts is not None
    assert all(d.startswith("rtn 4-bit; ") for d in out.details)
    assert out.notes[0].startswith("quantize+paraphrase: quantize:bits=4") and "bit for bit" in out.notes[0]


def test_relearn_then_logit_lens_scores_each_fold_once_on_its_weights(world, unlearned):
    """relearn+logit_lens keeps, per sample, the most knowledge over layers of the relearned
    model; the last layer is relearn's own score, so it is never below relearn alone."""
    data = world["forget"]
    before = state(unlearned.model)
    spec = "relearn:steps=5,lr=1e-3"
    scorer = RecordingScorer()
    chain = run_attack(spec + "+logit_lens", "es", unlearned, data, make_ctx(world, scorer=scorer))
    assert_unchanged(unlearned.model, before)
    alone = run_attack(spec, "es", unlearned, data, make_ctx(world))
    assert np.all(chain.values >= alone.values) and chain.values.mean() > alone.values.mean() - 1e-12
    clean = make_ctx(world).scorer.per_sample("es", unlearned, data)
    assert clean.mean() < 0.1 and chain.values.mean() > clean.mean() + 0.2
    # each sample scored in exactly one fold (logit_lens scores each of its batches once per layer)
    folds = {d.split(";")[0] for d in chain.details}
    assert folds == {"fold 1/2", "fold 2/2"}
    seen = [sid for ids in scorer.scored for sid in ids]
    n_layers = 2
    assert sorted(seen) == sorted(list(data.ids) * n_layers)
    assert chain.cost["training_steps"] == 5 * 2


def test_chain_controls_on_a_never_knew_model(world, unlearned):
    """The same chain on the reference model (never saw the forget set) does not inject:
    it stays far below what the chain finds in the unlearned model."""
    data = world["forget"]
    spec = "relearn:steps=5,lr=1e-3+logit_lens"
    found = run_attack(spec, "es", unlearned, data, make_ctx(world)).values.mean()
    control = run_attack(spec, "es", world["reference"], data, make_ctx(world)).values.mean()
    assert control < found - 0.15


def test_chain_outcome_cache(world, tmp_path):
    data, model = world["forget"], world["original"]
    ctx = make_ctx(world, cache=ResultCache(tmp_path))
    first = run_attack("relearn:steps=1,lr=1e-3+paraphrase", "prob", model, data, ctx)
    # a new session (a new scorer, so no in-memory memo): the disk cache serves the outcome
    ctx = make_ctx(world, cache=ResultCache(tmp_path))
    second = run_attack("relearn:steps=1,lr=1e-3+paraphrase", "prob", model, data, ctx)
    np.testing.assert_array_equal(first.values, second.values)
    assert first.cost["training_steps"] == 2 and second.cost["training_steps"] == 0 and second.cost.get("cached")
    assert second.details == first.details and second.prompts == first.prompts and second.parts == first.parts
    third = run_attack("relearn:steps=1,lr=1e-3+jailbreak", "prob", model, data, ctx)  # the other spec: no hit
    assert third.cost["training_steps"] == 2


def test_chain_generates_under_the_whole_chain(world):
    model, data = world["original"], world["forget"]
    ctx = make_ctx(world)
    chain = parse_attack("quantize:8+paraphrase")
    out = chain.run("es", model, data, ctx)
    before = state(model.model)
    texts = chain.generate(model, data, [3, 0], ctx, out)
    assert_unchanged(model.model, before)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert parse_attack("relearn:steps=1+logit_lens").generate(model, data, [0], ctx) is None


def test_assert_forgotten_runs_the_chain_on_the_controls(toy_world, tmp_path):
    from pytest_unlearn import assert_forgotten
    from pytest_unlearn.suite import Suite

    suite = Suite.from_paths(original=toy_world["original"], model=toy_world["original"],
                             forget=toy_world["forget"], retain=toy_world["retain"],
                             reference=toy_world["reference"], cache_dir=None)
    with pytest.raises(AssertionError) as info:
        assert_forgotten("es", 0.5, under_attack=["quantize:8+paraphrase"], suite=suite)
    message = str(info.value)
    assert "quantize:8+paraphrase" in message and "quantize+paraphrase: quantize:bits=8" in message
    record = info.value.result.record
    row = [r for r in record["attacks"] if r["attack"] == "quantize:8+paraphrase"][0]
    assert row["original"] is not None and row["reference"] is not None and row["kind"] == "weight"
    frame = info.value.result.scores
    assert "reference:quantize:8+paraphrase" in frame.columns
    ctx = suite.attack_context()
    direct = run_attack("quantize:8+paraphrase", "es", suite.reference, suite.forget, ctx).values
    np.testing.assert_array_equal(frame["reference:quantize:8+paraphrase"].to_numpy(), direct)
    suite.close()


def test_a_chain_carries_every_steps_version_in_its_key(monkeypatch):
    """A changed step (its algorithm version bumped) must never serve an old chain outcome."""
    from pytest_unlearn.attacks import parse_attack
    from pytest_unlearn.attacks.weight_attacks import Quantize

    chain = parse_attack("quantize:4+paraphrase")
    before = chain.version
    assert Quantize.version in before
    monkeypatch.setattr(Quantize, "version", Quantize.version + "-changed")
    assert parse_attack("quantize:4+paraphrase").version != before
