"""The gcg attack: a universal suffix optimised by greedy coordinate gradient on training
folds and scored on the held-out fold.  It lowers the objective, is deterministic for a
seed, leaves the weights alone, recovers answers a gradient-ascent "unlearned" model still
holds where the fixed prompt attacks do not, and does not inject knowledge into a model
that never saw the facts.  ``mode=sample`` (one suffix per sample, on its own answer)
recovers at least as much and is judged against the reference under the same attack;
``position=prefix`` puts the tokens before the question."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_attacks import (RecordingScorer, assert_unchanged, make_ctx, state, text_data,  # noqa: E402,F401
                          unlearned, world)

from pytest_unlearn.attacks import GCG, parse_attack, run_attack  # noqa: E402
from pytest_unlearn.attacks.gcg_search import _nll_rows, allowed_tokens, answer_tokens  # noqa: E402
from pytest_unlearn.attacks.weight_attacks import forget_folds  # noqa: E402
from pytest_unlearn.cache import ResultCache  # noqa: E402
from pytest_unlearn.errors import AttackError  # noqa: E402
from pytest_unlearn.prompts import dataset_parts  # noqa: E402
from pytest_unlearn.training import collate, pad_id, sequence_nll  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = "gcg:steps=10,candidates=8,batch_size=2"


def test_spec_defaults_and_errors():
    a = parse_attack("gcg")
    assert (a.length, a.steps, a.candidates, a.topk, a.batch_size, a.folds, a.seed) == (10, 20, 8, 32, 2, 2, "auto")
    assert (a.mode, a.position) == ("universal", "suffix")
    assert a.spec == ("gcg:batch_size=2,candidates=8,folds=2,length=10,mode=universal,position=suffix,seed=auto,"
                      "steps=20,topk=32")
    assert parse_attack("gcg:5").length == 5 and parse_attack("gcg:seed=3").seed == 3
    b = parse_attack("gcg:Mode=SAMPLE,position=Prefix")
    assert (b.mode, b.position) == ("sample", "prefix") and parse_attack(b.spec) == b and b != a
    assert parse_attack(a.spec) == a
    for spec, word in [("gcg:length=0", "at least 1"), ("gcg:folds=1", "at least 2"), ("gcg:seed=x", "auto"),
                       ("gcg:candidate=3", "did you mean 'candidates'"),
                       ("gcg:mode=each", "mode='each': must be one of universal, sample"),
                       ("gcg:mode=", "mode='': must be one of universal, sample"),
                       ("gcg:position=middle", "must be one of suffix, prefix"),
                       ("gcg:positon=prefix", "did you mean 'position'")]:
        with pytest.raises(AttackError, match=word):
            parse_attack(spec)
    assert a.kind == "prompt"


def test_nll_rows_matches_sequence_nll(world):
    """The per-row answer NLL from left-padded, last-positions logits equals training's."""
    model, data = world["original"], world["forget"]
    from pytest_unlearn.scoring import Scorer

    encoded = Scorer().encode(model, dataset_parts(data))
    idx = [0, 3, 5]
    batch = collate(encoded, idx, pad_id(model.tokenizer), "cpu")
    with torch.no_grad():
        expected = sequence_nll(model.model, batch)
        logits = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids).logits
        keep = max(encoded[i].n_answer for i in idx) + 1
        got = _nll_rows(logits[:, -keep:], [encoded[i].input_ids[encoded[i].answer_start:] for i in idx])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_allowed_tokens_are_printable_ascii_and_not_special(world):
    tok = world["original"].tokenizer
    mask = allowed_tokens(tok, len(tok) + 3)
    assert not mask[len(tok):].any()
    for i in tok.all_special_ids:
        assert not mask[i]
    for i in np.flatnonzero(mask)[:50]:
        text = tok.decode([int(i)])
        assert text.isascii() and text.isprintable() and text.strip()


def test_optimisation_lowers_the_objective_and_is_deterministic(world, unlearned):
    data = world["forget"]
    attack = parse_attack(FAST)
    parts = dataset_parts(data)[:4]
    ids, before, after, used = attack.optimise(unlearned, parts, make_ctx(world), seed=5)
    assert used == 4 and len(ids) == attack.length and after < before - 0.5
    again = attack.optimise(unlearned, parts, make_ctx(world), seed=5)
    assert again == (ids, before, after, used)
    other = attack.optimise(unlearned, parts, make_ctx(world), seed=6)
    assert other[0] != ids
    # the reported loss is the scorer's: the suffix text appended to every question
    scorer = make_ctx(world).scorer
    text = unlearned.tokenizer.decode(ids)
    from pytest_unlearn.data import dataset_from_records

    sub = dataset_from_records([{"question": p.question, "answer": p.answer} for p in parts])
    nll = scorer.per_sample("mia_loss", unlearned, sub, parts=[p.with_(question=p.question + text) for p in parts])
    assert nll.mean() == pytest.approx(after, rel=1e-4, abs=1e-5)


def test_held_out_folds_every_sample_once_and_weights_untouched(world, unlearned):
    data = world["forget"]
    before = state(unlearned.model)
    flags = [p.requires_grad for p in unlearned.model.parameters()]
    scorer = RecordingScorer()
    out = run_attack(FAST + ",folds=3", "es", unlearned, data, make_ctx(world, scorer=scorer))
    assert_unchanged(unlearned.model, before)
    assert [p.requires_grad for p in unlearned.model.parameters()] == flags
    assert all(p.grad is None for p in unlearned.model.parameters())
    assert scorer.scored == [list(data.ids)]  # one scoring pass over every sample
    folds = forget_folds(len(data), 3, 0)
    suffixes = {}
    for k, rows in enumerate(folds):
        texts = {out.details[i] for i in rows}
        assert len(texts) == 1 and next(iter(texts)).startswith(f"fold {k + 1}/3: suffix ")
        suffixes[k] = out.parts[rows[0]].question[len(data.prompts[rows[0]]):]
        for i in rows:
            assert out.parts[i].question == data.prompts[i] + suffixes[k]
            assert out.parts[i].answer == data.answers[i]
    assert len(set(suffixes.values())) == 3
    assert sum(repr(s) in " ".join(out.notes) for s in suffixes.values()) == 3  # the suffix is reported
    assert out.cost["gcg_backward_passes"] == 10 * 3


def test_gcg_recovers_what_fixed_prompts_do_not_and_does_not_inject(world, unlearned):
    data = world["forget"]
    ctx = make_ctx(world)
    clean = ctx.scorer.per_sample("es", unlearned, data).mean()
    found = run_attack("gcg", "es", unlearned, data, ctx).values.mean()
    fixed = max(run_attack(s, "es", unlearned, data, ctx).values.mean() for s in ("prefill", "paraphrase", "icl"))
    assert clean < 0.05
    assert found > clean + 0.1 and found > fixed + 0.1
    ref = world["reference"]
    ref_clean = ctx.scorer.per_sample("es", ref, data).mean()
    ref_gcg = run_attack("gcg", "es", ref, data, ctx).values.mean()
    assert ref_gcg < ref_clean + 0.1  # the control: no knowledge appears in a never-knew model


def test_seeded_runs_and_cache(world, unlearned, tmp_path):
    data = world["forget"]
    a = run_attack(FAST, "prob", unlearned, data, make_ctx(world, seed=0))
    b = run_attack(FAST, "prob", unlearned, data, make_ctx(world, seed=0))
    c = run_attack(FAST + ",seed=7", "prob", unlearned, data, make_ctx(world, seed=0))
    np.testing.assert_array_equal(a.values, b.values)
    assert a.details == b.details and a.details != c.details
    ctx = make_ctx(world, cache=ResultCache(tmp_path))
    first = run_attack(FAST, "prob", unlearned, data, ctx)
    second = run_attack(FAST, "prob", unlearned, data, ctx)
    assert second.cost.get("cached") and "gcg_backward_passes" not in second.cost
    np.testing.assert_array_equal(first.values, second.values)
    assert second.parts == first.parts and second.prompts == first.prompts
    texts = parse_attack(FAST).generate(unlearned, data, [0, 1], ctx, second)
    assert len(texts) == 2


def test_errors(world):
    data, model = world["forget"], world["original"]
    with pytest.raises(AttackError, match="folds"):
        run_attack(f"gcg:folds={len(data) + 1}", "es", model, data, make_ctx(world))
    from types import SimpleNamespace

    offloaded = SimpleNamespace(model=torch.nn.Linear(2, 2, device="meta"), tokenizer=model.tokenizer)
    with pytest.raises(AttackError, match="offloaded by accelerate"):
        GCG().run("es", offloaded, data, make_ctx(world))


def test_gcg_after_relearn_in_a_chain(world, unlearned):
    data = world["forget"]
    before = state(unlearned.model)
    out = run_attack("relearn:steps=2,lr=1e-3+" + FAST.replace("gcg:", "gcg:folds=2,"), "es", unlearned, data,
                     make_ctx(world))
    assert_unchanged(unlearned.model, before)
    assert all(";" in d and "suffix" in d for d in out.details) and np.isfinite(out.values).all()


@pytest.mark.parametrize("spec", ["gcg:steps=3,candidates=4", "gcg:steps=2,candidates=4,mode=sample", "ablate",
                                  "quantize:8+paraphrase",
                                  "relearn:steps=1,folds=2+logit_lens:layers=1"])
def test_new_attacks_run_on_multiple_choice_rows(spec):
    """gcg, ablate and chains on WMDP/MMLU-style rows scored with mc_prob: aligned, in (0, 1),
    weights restored."""
    from test_multiple_choice import ROWS

    from pytest_unlearn import multiple_choice as MC
    from pytest_unlearn.attacks import AttackContext
    from pytest_unlearn.data import dataset_from_records
    from pytest_unlearn.models import handle_from_objects
    from pytest_unlearn.scoring import Scorer
    from pytest_unlearn.toy import tiny_llama, tiny_tokenizer

    texts = [MC.letter_prompt(r["question"], r["choices"], r.get("subject")) + " A B C D E" for r in ROWS]
    texts += [MC.text_prompt(r["question"], r.get("subject")) + " " + c for r in ROWS for c in r["choices"]]
    tok = tiny_tokenizer(texts * 3, vocab_size=420)
    model = tiny_llama(tok, seed=4)
    handle = handle_from_objects(model, tok)
    rows = [dict(r, paraphrased_question="In other words: " + r["question"]) for r in ROWS]
    data = dataset_from_records(rows, name="mc")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    retain = dataset_from_records(rows[4:], name="mc-retain")
    ctx = AttackContext(scorer=Scorer(prompt="plain"), original=handle, forget=data, retain=retain)
    out = run_attack(spec, "mc_prob", handle, data, ctx)
    values = np.asarray(out.values)
    assert values.shape == (len(ROWS),) and np.all((values > 0) & (values < 1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if spec.startswith("gcg"):  # optimised for the metric's own prompt: the correct letter after it
        from pytest_unlearn.metrics import get_metric

        scorer, makers = GCG().objective(get_metric("mc_prob"), handle, data, ctx)
        first = makers[0](" zz")
        assert first.question == MC.letter_prompt(rows[0]["question"] + " zz", rows[0]["choices"],
                                                  rows[0].get("subject"))
        assert first.answer == "ABCDE"[data.frame["answer_index"][0]] and scorer.prompt.kind == "format"
        text = GCG().objective(get_metric("mc_acc_text"), handle, data, ctx)[1][1](" zz")
        assert text.answer == rows[1]["choices"][data.frame["answer_index"][1]]
        prefixed = GCG(position="prefix").objective(get_metric("mc_prob"), handle, data, ctx)[1][0](" zz")
        assert prefixed.question == MC.letter_prompt(" zz " + rows[0]["question"], rows[0]["choices"],
                                                     rows[0].get("subject"))
        if "mode=sample" in spec:  # one suffix per row, optimised for its own correct letter
            assert all(d.startswith("own suffix '") for d in out.details)
        else:
            assert sum("->" in n for n in out.notes if "suffix '" in n) == 2


def test_the_suffix_is_in_the_failure_message_and_the_report(toy_world, unlearned):
    from pytest_unlearn import assert_forgotten
    from pytest_unlearn.suite import Suite

    suite = Suite.from_paths(original=toy_world["original"], forget=toy_world["forget"],
                             retain=toy_world["retain"], cache_dir=None)
    with pytest.raises(AssertionError) as info:
        assert_forgotten("es", 0.01, under_attack=[FAST], model=unlearned, suite=suite)
    message = str(info.value)
    record = info.value.result.record
    row = [r for r in record["attacks"] if r["attack"] == FAST][0]
    suffixes = [n for n in row["notes"] if "suffix '" in n]
    assert len(suffixes) == 2 and all(n in message for n in suffixes)
    shown = [s for s in record["worst_samples"] if s["attack"] == FAST]
    assert shown and all("suffix" in s["detail"] for s in shown)
    assert all(s["generated_under"] == FAST for s in shown)  # generated from the attacked prompt
    suite.close()


# ---------------------------------------------------------------- mode=sample and position=prefix

SAMPLE = FAST + ",mode=sample"


def test_per_sample_recovers_at_least_as_much_as_universal(world, unlearned):
    """One suffix per sample, optimised on its own answer: each sample's answer NLL only goes
    down, the scored NLL is the one reported, and over the set it recovers at least as much
    as the held-out universal suffix (answer NLL and probability), in both positions."""
    data = world["forget"]
    before = state(unlearned.model)
    ctx = make_ctx(world)
    for position in ("suffix", "prefix"):
        universal = run_attack(f"{FAST},position={position}", "mia_loss", unlearned, data, ctx)
        each = run_attack(f"{SAMPLE},position={position}", "mia_loss", unlearned, data, ctx)
        assert each.values.mean() <= universal.values.mean()
        assert (run_attack(f"{SAMPLE},position={position}", "prob", unlearned, data, ctx).values.mean()
                >= run_attack(f"{FAST},position={position}", "prob", unlearned, data, ctx).values.mean())
        texts = set()
        for i, detail in enumerate(each.details):
            assert detail.startswith(f"own {position} '")
            nll_before, nll_after = (float(x) for x in detail.rsplit(": answer NLL ", 1)[1].split(" -> "))
            assert nll_after <= nll_before and each.values[i] == pytest.approx(nll_after, abs=2e-3)
            texts.add(detail.split("'")[1])
        assert len(texts) == len(data)  # a suffix of its own per sample
        n, steps = len(data), 10
        assert each.cost["gcg_backward_rows"] == n * steps and each.cost["gcg_backward_passes"] == n // 2 * steps
        assert each.cost["gcg_forward_rows"] == n * (steps * 8 + 2)  # 8 candidates per step, loss before and after
    assert_unchanged(unlearned.model, before)
    assert all(p.grad is None for p in unlearned.model.parameters())


def test_per_sample_suffix_never_states_its_own_answer(world, unlearned):
    data, tok = world["forget"], unlearned.tokenizer
    out = run_attack(SAMPLE, "es", unlearned, data, make_ctx(world))
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    for i, detail in enumerate(out.details):
        suffix = out.parts[i].question[len(data.prompts[i]):]
        ids = tok(suffix, add_special_tokens=False)["input_ids"]
        answer = tok(data.answers[i], add_special_tokens=False)["input_ids"]
        blocked = answer_tokens(texts, tok, answer)
        assert blocked[answer].all() and blocked.sum() < len(texts) // 4
        assert not blocked[ids].any(), (data.answers[i], suffix)


def test_per_sample_controls_original_kept_reference_judged(toy_world, world, unlearned):
    """The controls run the same per-sample attack.  On the original it costs almost no
    knowledge (it is optimised for the answer), so it is not uninformative.  On the reference (never
    saw the facts) it raises ES: a suffix optimised on the very answer steers a model's guess
    among the toy's few towns and jobs, where the held-out universal suffix does not.  That
    is why it is an upper bound, and the gate, with a reference configured, counts no sample
    where the reference under the same attack shows as much."""
    from pytest_unlearn import assert_forgotten
    from pytest_unlearn.suite import Suite

    data, ctx = world["forget"], make_ctx(world)
    original, ref = world["original"], world["reference"]
    assert (run_attack(SAMPLE, "prob", original, data, ctx).values
            >= ctx.scorer.per_sample("prob", original, data) - 0.01).all()
    ref_clean = ctx.scorer.per_sample("es", ref, data).mean()
    ref_each = run_attack(SAMPLE, "es", ref, data, ctx).values.mean()
    ref_universal = run_attack(FAST, "es", ref, data, ctx).values.mean()
    assert ref_universal < ref_clean + 0.05 < ref_each
    suite = Suite.from_paths(original=toy_world["original"], forget=toy_world["forget"],
                             retain=toy_world["retain"], reference=toy_world["reference"], cache_dir=None)
    with pytest.raises(AssertionError) as info:
        assert_forgotten("es", 0.01, under_attack=[SAMPLE], model=unlearned, suite=suite)
    row = [r for r in info.value.result.record["attacks"] if r["attack"] == SAMPLE][0]
    assert row["reference"] == pytest.approx(ref_each) and row["original"] == 1.0 and not row["uninformative"]
    assert row["explained_by_reference"] >= len(data) // 2 and row["counted"] < row["score"]
    assert f"{SAMPLE}: the reference model (never saw the forget set) also scores" in str(info.value)
    suite.close()


def test_per_sample_is_deterministic_and_cached_under_its_own_key(world, unlearned, tmp_path):
    data = world["forget"]
    a = run_attack(SAMPLE, "prob", unlearned, data, make_ctx(world, seed=0))
    b = run_attack(SAMPLE, "prob", unlearned, data, make_ctx(world, seed=0))
    c = run_attack(SAMPLE + ",seed=7", "prob", unlearned, data, make_ctx(world, seed=0))
    np.testing.assert_array_equal(a.values, b.values)
    assert a.details == b.details and a.notes == b.notes and a.details != c.details
    ctx = make_ctx(world, cache=ResultCache(tmp_path))
    universal = run_attack(FAST, "prob", unlearned, data, ctx)
    prefix = run_attack(FAST + ",position=prefix", "prob", unlearned, data, ctx)
    first = run_attack(SAMPLE, "prob", unlearned, data, ctx)
    assert not {"cached"} & (set(universal.cost) | set(prefix.cost) | set(first.cost))  # three keys
    second = run_attack(SAMPLE, "prob", unlearned, data, ctx)
    assert second.cost.get("cached") and second.parts == first.parts and second.details == first.details
    np.testing.assert_array_equal(first.values, a.values)
    assert run_attack(FAST + ",position=prefix", "prob", unlearned, data, ctx).parts == prefix.parts


def test_per_sample_runs_on_one_sample_where_universal_cannot(world, unlearned):
    from pytest_unlearn.data import dataset_from_records

    one = dataset_from_records(world["forget"].records()[:1], name="one")
    with pytest.raises(AttackError, match="gcg:mode=sample optimises on the sample itself"):
        run_attack(FAST, "es", unlearned, one, make_ctx(world))
    out = run_attack(SAMPLE, "es", unlearned, one, make_ctx(world))
    assert len(out.values) == 1 and out.details[0].startswith("own suffix")


def test_prefix_goes_before_the_question_and_recovers_without_injecting(world, unlearned):
    data, ctx = world["forget"], make_ctx(world)
    out = run_attack(FAST + ",position=prefix", "es", unlearned, data, ctx)
    for i, p in enumerate(out.parts):
        prefix = out.details[i].split("prefix ", 1)[1]
        assert p.question == eval(prefix) + " " + data.prompts[i] and p.answer == data.answers[i]  # noqa: S307
    assert sum("prefix '" in n and "->" in n for n in out.notes) == 2
    assert out.values.mean() > ctx.scorer.per_sample("es", unlearned, data).mean() + 0.1
    ref = world["reference"]  # no answer appears in a never-knew model (its answer probability stays put)
    assert (run_attack(FAST + ",position=prefix", "prob", ref, data, ctx).values.mean()
            < ctx.scorer.per_sample("prob", ref, data).mean() + 0.01)


def test_per_sample_suffixes_of_the_worst_samples_in_the_failure_message(toy_world, unlearned):
    from pytest_unlearn import assert_forgotten
    from pytest_unlearn.suite import Suite

    suite = Suite.from_paths(original=toy_world["original"], forget=toy_world["forget"],
                             retain=toy_world["retain"], cache_dir=None)
    with pytest.raises(AssertionError) as info:
        assert_forgotten("es", 0.01, under_attack=[SAMPLE], model=unlearned, suite=suite)
    message, record = str(info.value), info.value.result.record
    row = [r for r in record["attacks"] if r["attack"] == SAMPLE][0]
    shown = [n for n in row["notes"] if n.startswith("gcg: sample ")]
    assert len(shown) == 3 and all(n in message and "own suffix '" in n for n in shown)
    assert "upper bound" in row["notes"][0] and row["notes"][0] in message
    scores = [float(n.split("(es ")[1].split(" ")[0]) for n in shown]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(max(row_scores(record, SAMPLE)), abs=1e-4)
    worst = [s for s in record["worst_samples"] if s["attack"] == SAMPLE]
    assert worst and all(s["detail"].startswith("own suffix '") for s in worst)
    suite.close()


def row_scores(record, attack):
    return [s["scores"][attack] for s in record["samples"].values()]


def test_per_sample_after_relearn_in_a_chain(world, unlearned):
    before = state(unlearned.model)
    out = run_attack("relearn:steps=2,lr=1e-3+" + SAMPLE.replace("steps=10", "steps=3"), "es", unlearned,
                     world["forget"], make_ctx(world))
    assert_unchanged(unlearned.model, before)
    assert all("; own suffix '" in d for d in out.details) and np.isfinite(out.values).all()


def test_prefix_starts_the_context_of_text_rows(world, unlearned, text_data):
    """Text rows: the prefix is the first thing in the prompt (nothing before it to embed)."""
    base = dataset_parts(text_data)
    for spec in (FAST + ",position=prefix", SAMPLE + ",position=prefix"):
        out = run_attack(spec.replace("steps=10", "steps=2"), "mia_loss", unlearned, text_data, make_ctx(world))
        for i, part in enumerate(out.parts):
            prefix = eval(out.details[i].split("prefix ", 1)[1].split(": answer NLL")[0])  # noqa: S307
            assert part.question == prefix + " " + base[i].question and part.answer == base[i].answer
        assert np.isfinite(out.values).all()
