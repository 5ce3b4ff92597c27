"""Tests for pytest_unlearn.attacks: the spec parser, every attack on the toy models,
determinism, weight restoration, fold coverage, and that the attacks find knowledge
an "unlearned" model still holds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn.attacks import (  # noqa: E402
    ATTACKS, Attack, AttackContext, AttackOutcome, InContext, Quantize, attack_is_uninformative,
    parse_attack, run_attack,
)
from pytest_unlearn.attacks.prompt_attacks import JAILBREAK_TEMPLATES, noise_text, rule_paraphrases  # noqa: E402
from pytest_unlearn.attacks.weight_attacks import nf4_quantize, rtn_quantize, NF4_CODE  # noqa: E402
from pytest_unlearn.cache import ResultCache  # noqa: E402
from pytest_unlearn.data import dataset_from_records, load_dataset  # noqa: E402
from pytest_unlearn.errors import AttackError, UnknownNameError  # noqa: E402
from pytest_unlearn.models import handle_from_objects, load_model  # noqa: E402
from pytest_unlearn.prompts import dataset_parts  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402

NAMES = {"jailbreak", "prefill", "paraphrase", "icl", "noise", "quantize", "relearn", "logit_lens", "gcg", "ablate"}


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def world(toy_world):
    return {
        "original": load_model(toy_world["original"], name="original"),
        "reference": load_model(toy_world["reference"], name="reference"),
        "forget": load_dataset(toy_world["forget"], name="forget"),
        "retain": load_dataset(toy_world["retain"], name="retain"),
    }


@pytest.fixture(scope="module")
def unlearned(world):
    """The original after 10 steps of gradient ascent on the forget set: forget ES drops
    to ~0, but the knowledge is only suppressed."""
    from pytest_unlearn.toy import ascent_unlearned

    return ascent_unlearned(world["original"], world["forget"])


@pytest.fixture(scope="module")
def text_data(world):
    """The forget facts as MUSE-style text rows."""
    records = [{"text": f"{r['question']} {r['answer']}"} for r in world["forget"].records()]
    return dataset_from_records(records, name="forget-text")


class RecordingScorer(Scorer):
    """Records which samples, with which prompt parts, each scoring call saw."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.scored: list[list[str]] = []
        self.parts: list = []

    def per_sample(self, metric, handle, dataset, **kw):
        self.scored.append(list(dataset.ids))
        self.parts.append(kw.get("parts"))
        return super().per_sample(metric, handle, dataset, **kw)


def make_ctx(world, **kw) -> AttackContext:
    kw.setdefault("scorer", Scorer())
    kw.setdefault("forget", world["forget"])
    kw.setdefault("retain", world["retain"])
    return AttackContext(**kw)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before: dict) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"
    assert not any("lora" in name for name, _ in model.named_modules())


# ---------------------------------------------------------------- spec parser

def test_registry_has_every_contract_name():
    assert set(ATTACKS.names()) == NAMES
    for name in NAMES:
        assert issubclass(ATTACKS.get(name), Attack)


def test_positional_named_and_defaults():
    a = parse_attack("quantize:4")
    assert a.params == {"bits": 4, "method": "rtn", "group_size": 128, "include_head": False,
                        "bitsandbytes": False}
    assert a.spec == "quantize:bits=4,bitsandbytes=false,group_size=128,include_head=false,method=rtn"
    assert parse_attack("quantize:bits=4,method=nf4").method == "nf4"
    r = parse_attack("relearn:steps=20,lr=2e-5")
    assert (r.steps, r.lr, r.folds, r.on, r.lora) == (20, 2e-5, 2, "forget", "auto")
    assert parse_attack("icl:shots=5").shots == 5
    assert parse_attack("noise:rate=0.2").rate == 0.2
    assert parse_attack(" Quantize : bits = 8 ").bits == 8
    assert parse_attack("relearn:lora=true").lora is True
    assert parse_attack("relearn:on=data/related.jsonl").on == "data/related.jsonl"


def test_list_and_text_params():
    assert parse_attack("logit_lens:4,8").layers == (4, 8)
    assert parse_attack("logit_lens:layers=8,4,4").layers == (4, 8)
    assert parse_attack("logit_lens").layers == "all"
    assert parse_attack("jailbreak:templates=novel,archivist").templates == ("archivist", "novel")
    assert parse_attack("prefill:text=Sure, here it is:").text == "Sure, here it is:"
    p = parse_attack('prefill:text="x=1, \\"quoted\\""')
    assert p.text == 'x=1, "quoted"'


def test_canonical_spec_round_trips_and_equality():
    for spec in ["quantize", "quantize:8", "relearn:steps=3,lr=0.5,lora=false", "logit_lens:-1,2",
                 "prefill:text=Sure, here: ", "jailbreak", "paraphrase:rules", "icl:2,source=forget"]:
        a = parse_attack(spec)
        assert parse_attack(a.spec) == a
        assert parse_attack(a.spec).spec == a.spec
    assert Quantize(bits=8) == parse_attack("quantize:bits=8") == Quantize(8)
    assert parse_attack(Quantize()) == Quantize()
    assert InContext(shots=2).shots == 2
    assert "quantize:bits=8" in repr(Quantize(bits=8))


@pytest.mark.parametrize("spec, words", [
    ("quantise:4", ["quantize"]),
    ("relarn", ["relearn"]),
])
def test_unknown_name_suggests(spec, words):
    with pytest.raises(UnknownNameError) as info:
        parse_attack(spec)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("spec, words", [
    ("quantize:3", ["bits", "4 or 8", "accepts"]),
    ("quantize:bitz=4", ["unknown parameter 'bitz'", "did you mean 'bits'", "group_size"]),
    ("quantize:4,8", ["no name", "name=value"]),
    ("quantize:bits=4,bits=8", ["twice"]),
    ("quantize:bits=8,method=nf4", ["4-bit"]),
    ("relearn:lr=fast", ["lr", "number"]),
    ("relearn:lr=0", ["greater than 0"]),
    ("relearn:folds=1", ["at least 2"]),
    ("relearn:on=somewhere", ["forget, retain or a path"]),
    ("relearn:lora=maybe", ["auto, true or false"]),
    ("icl:shots=2.5", ["integer"]),
    ("noise:rate=1.5", ["at most 1"]),
    ("jailbreak:templates=novl", ["did you mean 'novel'"]),
    ("logit_lens:layers=a,b", ["integer"]),
    ('prefill:text="unterminated', ["quote"]),
    (":4", ["no attack name"]),
])
def test_malformed_specs_explain(spec, words):
    with pytest.raises(AttackError) as info:
        parse_attack(spec)
    for w in words:
        assert w in str(info.value)


def test_non_string_spec_is_an_attack_error():
    with pytest.raises(AttackError):
        parse_attack(4)
    with pytest.raises(AttackError):
        Quantize(bits=4, nope=1)
    with pytest.raises(AttackError):
        Quantize(4, "rtn", 128, False, False, "extra")


def test_attack_is_uninformative():
    assert attack_is_uninformative(1.0, 0.3, "es")
    assert not attack_is_uninformative(1.0, 0.8, "es")
    assert not attack_is_uninformative(0.0, 0.0, "es")  # nothing to lose
    assert attack_is_uninformative(1.2, 3.0, "ppl")
    assert not attack_is_uninformative(1.2, 1.3, "ppl")
    assert attack_is_uninformative(0.1, 2.0, "mia_loss")
    assert not attack_is_uninformative(0.8, 0.7, "es", tolerance=0.8)
    assert attack_is_uninformative(0.8, 0.7, "es", tolerance=0.9)
    assert not attack_is_uninformative(float("nan"), 0.0, "es")


@pytest.mark.parametrize("metric, clean, attacked, reference, kept", [
    # higher = more knowledge: the score itself, from 0 (chance) or from the reference
    ("es", 0.8, 0.3, None, 0.3 / 0.8),
    ("es", 0.8, 0.5, None, 0.5 / 0.8),
    ("es", 0.8, 0.45, 0.2, (0.45 - 0.2) / (0.8 - 0.2)),
    ("prob", 0.9, 0.6, None, 0.6 / 0.9),
    # perplexity: on the token-probability scale 1/ppl (1.01 -> 1.03 is 0.990 -> 0.971)
    ("ppl", 1.01, 1.03, None, (1 / 1.03) / (1 / 1.01)),
    ("ppl", 1.01, 3.0, None, (1 / 3.0) / (1 / 1.01)),
    ("ppl", 1.01, 2.0, 5.0, (1 / 2.0 - 1 / 5.0) / (1 / 1.01 - 1 / 5.0)),
    # mean NLL: exp(-NLL), the same probability
    ("mia_loss", 0.01, 0.03, None, math.exp(-0.03) / math.exp(-0.01)),
    # truth ratio: 1 - R (R = 1: no preference for the true answer)
    ("truth_ratio", 0.1, 0.6, None, (1 - 0.6) / (1 - 0.1)),
    ("truth_ratio", 0.1, 0.2, 0.9, (0.9 - 0.2) / (0.9 - 0.1)),
    # no chance level: only against a reference, in the metric's own units
    ("mia_zlib", 0.01, 0.05, 0.06, (0.06 - 0.05) / (0.06 - 0.01)),
    ("mia_min_k_pp", 2.0, 1.0, 0.0, (1.0 - 0.0) / (2.0 - 0.0)),
])
def test_knowledge_kept_means_the_same_for_every_metric(metric, clean, attacked, reference, kept):
    from pytest_unlearn.attacks import knowledge_kept

    assert knowledge_kept(clean, attacked, metric, reference) == pytest.approx(kept)
    assert attack_is_uninformative(clean, attacked, metric, reference=reference) == (kept < 0.5)


def test_a_small_perplexity_rise_is_not_destroyed_knowledge():
    """ppl 1.01 -> 1.03 (probability 0.990 -> 0.971) keeps 98% of the knowledge; measured from
    the bound (perfect knowledge) it read as tripled distance, i.e. destroyed."""
    assert not attack_is_uninformative(1.01, 1.03, "ppl")
    assert not attack_is_uninformative(0.01, 0.03, "mia_loss")
    assert not attack_is_uninformative(0.01, 0.03, "truth_ratio")
    assert attack_is_uninformative(1.01, 3.0, "ppl")


def test_uninformative_is_one_rule_for_every_kind_of_attack():
    from pytest_unlearn.attacks import judged_by_control, knowledge_kept

    weight, lens, prompt = parse_attack("quantize:4"), parse_attack("logit_lens"), parse_attack("paraphrase")
    assert judged_by_control(weight) and judged_by_control(lens) and not judged_by_control(prompt)
    assert attack_is_uninformative(1.0, 0.1, "es", attack=weight)
    assert attack_is_uninformative(1.0, 0.1, "es", attack=lens)  # the assertions skipped it, the audit did not
    assert not attack_is_uninformative(1.0, 0.1, "es", attack=prompt)
    # nothing to measure: no chance level and no reference, an original at chance, NaN
    assert knowledge_kept(0.01, 0.05, "mia_zlib") is None
    assert knowledge_kept(0.1, 0.0, "es", reference=0.2) is None
    # per-sample arrays: mapped per sample, then averaged
    assert knowledge_kept([1.0, 2.0], [2.0, 4.0], "ppl") == pytest.approx((0.5 + 0.25) / (1.0 + 0.5))


# ---------------------------------------------------------------- every attack runs

CHEAP_SPECS = ["jailbreak", "prefill", "paraphrase", "paraphrase:source=rules", "icl", "icl:source=forget",
               "noise:rate=0.3", "quantize:8", "quantize:method=nf4", "logit_lens", "relearn:steps=1,lr=1e-3",
               "relearn:on=retain,steps=1", "gcg:steps=2,candidates=4", "ablate",
               "relearn:steps=1,lr=1e-3+logit_lens"]


@pytest.mark.parametrize("spec", CHEAP_SPECS)
def test_every_attack_runs_aligned(world, spec):
    data = world["forget"]
    model = world["original"]
    before = state(model.model)
    out = run_attack(spec, "es", model, data, make_ctx(world))
    assert isinstance(out, AttackOutcome)
    assert out.values.shape == (len(data),)
    assert np.all((out.values >= 0) & (out.values <= 1))
    assert len(out.details) == len(data)
    attack = parse_attack(spec)
    assert out.spec == attack.spec
    if attack.kind == "prompt":
        assert len(out.prompts) == len(data) and all(out.prompts)
    else:
        assert out.prompts is None
    assert set(out.cost) >= {"seconds", "forward_batches", "training_steps"}
    assert out.cost["forward_batches"] >= 1
    assert out.notes
    assert_unchanged(model.model, before)


def test_prompt_attacks_on_text_data(world, text_data):
    ctx = make_ctx(world)
    model = world["original"]
    contexts = text_data.prompts
    for spec in ["jailbreak", "prefill", "paraphrase", "icl", "noise:rate=1"]:
        out = run_attack(spec, "es", model, text_data, ctx)
        assert out.values.shape == (len(text_data),) and np.isfinite(out.values).all()
        if spec != "noise:rate=1":
            assert all(c in p for c, p in zip(contexts, out.prompts)), spec
    out = run_attack("paraphrase", "es", model, text_data, ctx)
    assert "rule-based" in " ".join(out.notes)


def test_worst_case_over_variants_and_details(world):
    data, model = world["forget"], world["original"]
    ctx = make_ctx(world)
    out = run_attack("jailbreak:templates=novel,archivist", "es", model, data, ctx)
    per = {}
    for name in ("archivist", "novel"):
        instruction = JAILBREAK_TEMPLATES[name][0]
        parts = [p.with_(question=instruction.replace("{question}", p.question)) for p in dataset_parts(data)]
        per[name] = ctx.scorer.per_sample("es", model, data, parts=parts)
    np.testing.assert_array_equal(out.values, np.maximum(per["archivist"], per["novel"]))
    assert all(per[d][i] == out.values[i] for i, d in enumerate(out.details))


def test_paraphrase_sources(world):
    data, model = world["forget"], world["original"]
    ctx = make_ctx(world)
    out = run_attack("paraphrase", "es", model, data, ctx)
    assert "paraphrased_question" in out.notes[0]
    assert out.prompts == list(data.frame["paraphrased_question"])
    plain = dataset_from_records([{"question": r["question"], "answer": r["answer"]} for r in data.records()])
    with pytest.raises(AttackError, match="paraphrased_question"):
        run_attack("paraphrase:source=dataset", "es", model, plain, ctx)
    rules = rule_paraphrases("Where was Ada born?")
    assert rules["wh_swap"] == "In what place was Ada born?"
    assert rules["tell_me"] == "Tell me: where was Ada born?"


def test_prefill_sets_the_assistant_turn(world):
    data, model = world["forget"], world["original"]
    out = run_attack("prefill:text=Certainly: ", "es", model, data, make_ctx(world))
    assert all("[assistant starts with] Certainly:" in p for p in out.prompts)
    chat = RecordingScorer()
    run_attack("prefill", "es", model, data, make_ctx(world, scorer=chat))
    first = chat.parts[-1][0]
    assert first.prefill == "Sure, here is the answer:" and first.answer == data.answers[0]
    plain = RecordingScorer(prompt="plain")
    run_attack("prefill", "es", model, data, make_ctx(world, scorer=plain))
    first = plain.parts[-1][0]
    assert first.prefill == " Sure, here is the answer:" and first.answer == data.answers[0]


class EncodingScorer(Scorer):
    """Records the answer text of every sample each encode saw (the joining space included)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.answer_texts: list[str] = []

    def encode(self, handle, parts, names=None):
        encoded = super().encode(handle, parts, names)
        self.answer_texts += [e.answer_text for e in encoded]
        return encoded


@pytest.mark.parametrize("prompt", [None, "plain"])  # None: the chat template
def test_prefill_keeps_the_space_before_paraphrased_and_perturbed_answers(world, prompt):
    data, model = world["forget"], world["original"]
    scorer = EncodingScorer(prompt=prompt)
    run_attack("prefill", "truth_ratio", model, data, make_ctx(world, scorer=scorer))
    rec = data.records()
    expected = [r["paraphrased_answer"] for r in rec] + [a for r in rec for a in r["perturbed_answer"]]
    assert sorted(scorer.answer_texts) == sorted(" " + a for a in expected)


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("spec", ["icl", "icl:source=forget", "noise:rate=0.5"])
def test_seeded_and_deterministic(world, spec):
    data, model = world["forget"], world["original"]
    a = run_attack(spec, "prob", model, data, make_ctx(world, seed=0))
    b = run_attack(spec, "prob", model, data, make_ctx(world, seed=0))
    c = run_attack(spec, "prob", model, data, make_ctx(world, seed=1))
    np.testing.assert_array_equal(a.values, b.values)
    assert a.prompts == b.prompts and a.details == b.details
    assert (a.prompts, a.details) != (c.prompts, c.details)


def test_icl_never_uses_the_sample_itself_and_checks_sizes(world):
    data, model = world["forget"], world["original"]
    out = run_attack("icl:shots=4,source=forget", "es", model, data, make_ctx(world))
    for sid, detail in zip(data.ids, out.details):
        assert sid not in detail and len(detail.split(" ")[-1].split(",")) == 4
    with pytest.raises(AttackError, match="retain"):
        run_attack("icl", "es", model, data, make_ctx(world, retain=None))
    with pytest.raises(AttackError, match="too few"):
        run_attack(f"icl:shots={len(data)},source=forget", "es", model, data, make_ctx(world))


def test_noise_text_never_empties_words_and_respects_rate():
    rng = np.random.default_rng(0)
    text = "Where was Corvan Stenhouse born in the year of the flood?"
    assert noise_text(text, 0.0, rng) == text
    noisy = noise_text(text, 1.0, np.random.default_rng(0))
    assert noisy != text and len(noisy.split()) == len(text.split())
    assert noise_text(text, 1.0, np.random.default_rng(0)) == noisy


# ---------------------------------------------------------------- quantization

@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [128, 32, 7])
def test_rtn_error_bound(bits, group_size):
    g = torch.Generator().manual_seed(bits * 100 + group_size)
    w = torch.randn(5, 300, generator=g) * torch.logspace(-3, 1, 300)
    q, scale = rtn_quantize(w, bits, group_size, return_scale=True)
    assert q.shape == w.shape and q.dtype == w.dtype
    assert torch.all((w - q).abs() <= scale / 2 * (1 + 1e-5) + 1e-9)
    levels = 2 ** (bits - 1) - 1
    steps = q / torch.where(scale > 0, scale, torch.ones_like(scale))
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= levels + 1e-3
    assert torch.equal(rtn_quantize(torch.zeros(3, 10), bits, group_size), torch.zeros(3, 10))


def test_rtn_8bit_is_finer_than_4bit_and_nf4_uses_its_levels():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    err4 = (rtn_quantize(w, 4, 128) - w).abs().mean()
    err8 = (rtn_quantize(w, 8, 128) - w).abs().mean()
    assert err8 < err4 / 8
    q = nf4_quantize(w)
    blocks, qb = w.reshape(-1, 64), q.reshape(-1, 64)
    normed = qb / blocks.abs().amax(-1, keepdim=True)
    code = torch.tensor(NF4_CODE)
    assert torch.all((normed[..., None] - code).abs().min(-1).values < 1e-5)
    assert (q - w).abs().mean() < err4 * 1.5


def test_quantize_8bit_changes_scores_little_and_restores(world, unlearned):
    data = world["forget"]
    for handle in (world["original"], unlearned):
        ctx = make_ctx(world)
        before = state(handle.model)
        clean = ctx.scorer.per_sample("prob", handle, data)
        q8 = run_attack("quantize:8", "prob", handle, data, ctx)
        assert np.abs(q8.values - clean).max() < 0.05
        run_attack("quantize:bits=4,include_head=true", "prob", handle, data, ctx)
        run_attack("quantize:method=nf4", "prob", handle, data, ctx)
        assert_unchanged(handle.model, before)
        np.testing.assert_array_equal(ctx.scorer.per_sample("prob", handle, data), clean)


def test_quantize_bitsandbytes_needs_cuda(world):
    with pytest.raises(AttackError, match="bitsandbytes"):
        run_attack("quantize:bitsandbytes=true", "es", world["original"], world["forget"], make_ctx(world))


def test_weight_attack_outcome_cache(world, tmp_path):
    data, model = world["forget"], world["original"]
    first = run_attack("relearn:steps=1,lr=1e-3", "es", model, data, make_ctx(world, cache=ResultCache(tmp_path)))
    # a new session (a new scorer, so an empty memo) reads the outcome from the disk cache
    second = run_attack("relearn:steps=1,lr=1e-3", "es", model, data, make_ctx(world, cache=ResultCache(tmp_path)))
    np.testing.assert_array_equal(first.values, second.values)
    assert first.cost["training_steps"] == 2 and second.cost["training_steps"] == 0
    assert second.cost.get("cached") and second.details == first.details


# ---------------------------------------------------------------- relearning

def test_relearn_scores_every_sample_once_and_restores(world):
    data, model, folds = world["forget"], world["original"], 3
    before = state(model.model)
    scorer = RecordingScorer()
    out = run_attack(f"relearn:steps=2,lr=1e-2,folds={folds}", "es", model, data, make_ctx(world, scorer=scorer))
    scored = [sid for ids in scorer.scored for sid in ids]
    assert sorted(scored) == sorted(data.ids)
    assert len(scorer.scored) == folds
    assert len(set(out.details)) == folds
    assert out.cost["training_steps"] == 2 * folds
    assert_unchanged(model.model, before)


def test_relearn_lora_restores(world):
    model = world["original"]
    before = state(model.model)
    flags = [p.requires_grad for p in model.model.parameters()]
    out = run_attack("relearn:steps=1,lr=1e-2,lora=true", "es", model, world["forget"], make_ctx(world))
    assert "LoRA" in out.notes[0]
    assert_unchanged(model.model, before)
    assert [p.requires_grad for p in model.model.parameters()] == flags


def test_relearn_recovers_superficially_forgotten_knowledge(world, unlearned):
    data = world["forget"]
    ctx = make_ctx(world)
    clean = ctx.scorer.per_sample("es", unlearned, data).mean()
    relearned = run_attack("relearn:steps=5,lr=1e-3", "es", unlearned, data, ctx).values.mean()
    control = run_attack("relearn:steps=5,lr=1e-3", "es", world["reference"], data, ctx).values.mean()
    assert clean < 0.1
    assert relearned > clean + 0.2
    assert control < relearned - 0.15


def test_relearn_sources_and_errors(world, tmp_path):
    data, model = world["forget"], world["original"]
    related = tmp_path / "related.jsonl"
    related.write_text("".join(json.dumps(r) + "\n" for r in world["retain"].records()[:4]))
    out = run_attack(f"relearn:on={related},steps=1", "es", model, data, make_ctx(world))
    assert set(out.details) == {"related.jsonl"}
    with pytest.raises(AttackError, match="retain"):
        run_attack("relearn:on=retain", "es", model, data, make_ctx(world, retain=None))
    with pytest.raises(AttackError, match="folds"):
        run_attack(f"relearn:folds={len(data) + 1}", "es", model, data, make_ctx(world))
    with pytest.raises(AttackError, match="does not exist"):
        run_attack(f"relearn:on={tmp_path / 'missing.csv'}", "es", model, data, make_ctx(world))


# ---------------------------------------------------------------- logit lens

def test_logit_lens_is_never_below_the_last_layer(world, unlearned):
    data = world["forget"]
    for handle in (world["original"], unlearned):
        ctx = make_ctx(world)
        clean = ctx.scorer.per_sample("es", handle, data)
        out = run_attack("logit_lens", "es", handle, data, ctx)
        assert np.all(out.values >= clean)
        last = run_attack("logit_lens:-1", "es", handle, data, ctx)
        np.testing.assert_array_equal(last.values, clean)


def test_logit_lens_one_forward_per_batch_and_cache(world, tmp_path):
    data, model = world["forget"], world["original"]
    ctx = make_ctx(world, scorer=Scorer(batch_size=4, cache=ResultCache(tmp_path)))
    out = run_attack("logit_lens:0,1,2", "prob", model, data, ctx)
    assert out.cost["forward_batches"] == -(-len(data) // 4)
    assert {d.split("/")[0] for d in out.details} <= {"layer 0", "layer 1", "layer 2"}
    again = run_attack("logit_lens:0,1,2", "prob", model, data, ctx)
    assert again.cost["forward_batches"] == 0
    np.testing.assert_array_equal(again.values, out.values)


def test_logit_lens_errors(world):
    data, model = world["forget"], world["original"]
    with pytest.raises(AttackError, match="does not exist"):
        run_attack("logit_lens:layers=9", "es", model, data, make_ctx(world))
    with pytest.raises(AttackError, match="generation"):
        run_attack("logit_lens", "rouge_l", model, data, make_ctx(world))


def test_other_architectures_gpt2(world):
    """GPT-2: Conv1D weights (transposed), final norm at transformer.ln_f, tied LM head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = world["original"].tokenizer
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    handle = handle_from_objects(GPT2LMHeadModel(config).eval(), tokenizer, name="gpt2")
    before = state(handle.model)
    data = world["forget"]
    ctx = make_ctx(world)
    clean = ctx.scorer.per_sample("prob", handle, data)
    lens = run_attack("logit_lens", "prob", handle, data, ctx)
    assert np.all(lens.values >= clean) and "LayerNorm" in lens.notes[0]
    q = run_attack("quantize:method=nf4,include_head=true", "prob", handle, data, ctx)
    assert "9 weight tensors" in q.notes[0]  # 4 Conv1D per block + the tied head, once
    assert_unchanged(handle.model, before)


def test_logit_lens_names_the_architecture_without_a_final_norm():
    from pytest_unlearn.attacks.logit_lens import find_final_norm

    with pytest.raises(AttackError, match="Bilinear"):
        find_final_norm(torch.nn.Bilinear(2, 2, 2))


# ---------------------------------------------------------------- attack inputs that hold the answer

def _with_leaks(world):
    """The forget set with a duplicate of its first fact under a paraphrased question, and a
    retain set with a row that repeats the second forget fact (answer differently spaced and
    punctuated)."""
    forget = world["forget"].records()
    retain = world["retain"].records()
    dup = {"question": forget[0]["paraphrased_question"], "answer": forget[0]["answer"]}
    repeat = {"question": "Tell me something true.", "answer": "  " + forget[1]["answer"].upper().rstrip(".") + " !"}
    qa = lambda rows: [{"question": r["question"], "answer": r["answer"]} for r in rows]  # noqa: E731
    return (dataset_from_records(qa(forget) + [dup], name="forget"),
            dataset_from_records(qa(retain) + [repeat], name="retain"))


def test_normalise_answer():
    from pytest_unlearn.attacks import normalise_answer

    assert normalise_answer(" Paris.") == normalise_answer("paris") == "paris"
    assert normalise_answer("Zorbin Quill was born in Vellmar.") == \
        normalise_answer("ZORBIN QUILL WAS BORN IN VELLMAR !")
    assert normalise_answer("born in Vellmar") != normalise_answer("born in Kelpford")


def test_icl_never_shows_a_shot_that_states_the_scored_answer(world):
    from pytest_unlearn.attacks import normalise_answer

    forget, retain = _with_leaks(world)
    ctx = make_ctx(world, forget=forget, retain=retain)
    for spec, pool in [(f"icl:shots={len(retain) - 1}", retain),
                       (f"icl:shots={len(forget) - 3},source=forget", forget)]:
        out = run_attack(spec, "es", world["original"], forget, ctx)
        by_id = dict(zip(pool.ids, pool.answers))
        for answer, detail in zip(forget.answers, out.details):
            shown = detail.split(" ")[-1].split(",")
            assert all(normalise_answer(by_id[j]) != normalise_answer(answer) for j in shown), (spec, detail)
        # retain: the repeated fact is left out for the one sample it repeats; forget: the
        # duplicate pair each leave the other out
        assert out.excluded == (1 if pool is retain else 2)
        assert any(f"{out.excluded} shot candidate(s) left out" in n for n in out.notes)
    with pytest.raises(AttackError, match="same answer"):
        run_attack(f"icl:shots={len(retain)}", "es", world["original"], forget, ctx)


def test_relearn_never_trains_on_a_row_that_states_a_scored_answer(world):
    from pytest_unlearn.attacks import normalise_answer

    forget, retain = _with_leaks(world)
    ctx = make_ctx(world, forget=forget, retain=retain)
    keys = [normalise_answer(a) for a in forget.answers]
    for spec, left_out in [(f"relearn:folds={len(forget)}", 2), ("relearn:on=retain", 1)]:
        plan = parse_attack(spec)._plan(forget, ctx)
        assert sum(len(rows) for _, rows, _, _ in plan) == len(forget)
        for _, rows, train, _ in plan:
            scored = {keys[i] for i in rows}
            assert not scored & {normalise_answer(a) for a in train.answers}
        # leave-one-out: each of the duplicate pair is left out of the other's training fold;
        # retain: the row repeating a forget fact
        assert sum(x for *_, x in plan) == left_out
    out = run_attack("relearn:on=retain,steps=1", "es", world["original"], forget, ctx)
    assert out.excluded == 1 and any("1 training row(s) left out" in n for n in out.notes)


def test_relearn_generates_on_the_relearned_weights_and_restores(world):
    """Each row's fold is trained again with its seed: greedy decoding reproduces the answer
    exactly where the attack's ES is 1, and the weights are put back."""
    model, data = world["original"], world["forget"]
    ctx = make_ctx(world)
    attack = parse_attack("relearn:steps=2,lr=1e-2")
    before = state(model.model)
    es = attack.run("es", model, data, ctx).values
    rows = [5, 0, 3]
    texts = attack.generate(model, data, rows, ctx)
    assert_unchanged(model.model, before)
    assert [t.startswith(data.answers[i]) for t, i in zip(texts, rows)] == [bool(es[i] == 1.0) for i in rows]
    assert parse_attack("logit_lens").generate(model, data, rows, ctx) is None  # cannot generate
