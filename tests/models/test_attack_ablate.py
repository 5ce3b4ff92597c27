"""The ablate attack: the forget-vs-retain direction of the residual stream, projected out of
every weight that writes to it.  Checked against an independent computation of the direction
and of the projection, on a model unlearned by RMU (the library's own implementation steers
forget activations along a random direction), with controls and bit-for-bit restoration."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_attacks import assert_unchanged, make_ctx, state, world  # noqa: E402,F401

from pytest_unlearn import methods  # noqa: E402
from pytest_unlearn.attacks import parse_attack, run_attack  # noqa: E402
from pytest_unlearn.attacks.ablate import ablation_direction, project_out, residual_writers  # noqa: E402
from pytest_unlearn.errors import AttackError  # noqa: E402
from pytest_unlearn.models import handle_from_objects  # noqa: E402
from pytest_unlearn.prompts import dataset_parts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rmu_model(world):
    """RMU at layer 1 of 2: forget ES drops to 0 while retain ES stays 1."""
    return methods.rmu(world["original"], world["forget"], world["retain"], steps=200, lr=3e-3)


def test_spec():
    a = parse_attack("ablate")
    assert a.layer == "middle" and a.kind == "weight" and parse_attack(a.spec) == a
    assert parse_attack("ablate:-1").layer == -1 and parse_attack("ablate:layer=2").layer == 2
    with pytest.raises(AttackError, match="middle or a layer number"):
        parse_attack("ablate:layer=top")


def test_project_out_against_the_formula():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(6, generator=g)
    r = r / r.norm()
    P = torch.eye(6) - torch.outer(r, r)
    w_out = torch.randn(6, 4, generator=g)     # Linear (out=6, in=4)
    rows = torch.randn(9, 6, generator=g)      # embedding / Conv1D (.., out=6)
    b = torch.randn(6, generator=g)
    torch.testing.assert_close(project_out(w_out, r, "out"), P @ w_out)
    torch.testing.assert_close(project_out(rows, r, "rows"), rows @ P)
    torch.testing.assert_close(project_out(rows, r, "conv"), rows @ P)
    torch.testing.assert_close(project_out(b, r, "bias"), P @ b)
    half = project_out(w_out.to(torch.bfloat16), r, "out")
    assert half.dtype == torch.bfloat16


def _direction_by_hand(handle, scorer, data, retain, layer):
    """One prompt at a time, no padding: mean last-prompt-token state, forget minus retain."""
    def mean(ds):
        enc = scorer.encode(handle, dataset_parts(ds))
        states = []
        with torch.no_grad():
            for e in enc:
                ids = torch.tensor([e.input_ids[:e.answer_start]])
                out = handle.model(input_ids=ids, output_hidden_states=True)
                states.append(out.hidden_states[layer][0, -1].double())
        return torch.stack(states).mean(0)
    diff = mean(data) - mean(retain)
    return diff / diff.norm()


def test_direction_matches_an_unbatched_computation(world, rmu_model):
    ctx = make_ctx(world)
    r, norm = ablation_direction(ctx, rmu_model, dataset_parts(world["forget"]), dataset_parts(world["retain"]), 1)
    expected = _direction_by_hand(rmu_model, ctx.scorer, world["forget"], world["retain"], 1)
    assert norm > 0
    torch.testing.assert_close(r.double(), expected, rtol=1e-4, atol=1e-5)


def test_no_block_writes_along_the_direction_and_weights_restore(world, rmu_model):
    ctx = make_ctx(world)
    attack = parse_attack("ablate")
    before = state(rmu_model.model)
    r, _ = ablation_direction(ctx, rmu_model, dataset_parts(world["forget"]), dataset_parts(world["retain"]), 1)
    gen = attack.attacked(rmu_model, world["forget"], ctx)
    label, rows, handle = next(gen)
    assert label == "ablated at layer 1/2" and list(rows) == list(range(len(world["forget"])))
    assert handle.fingerprint != rmu_model.fingerprint
    enc = ctx.scorer.encode(handle, dataset_parts(world["retain"]))
    with torch.no_grad():
        out = handle.model(input_ids=torch.tensor([enc[0].input_ids]), output_hidden_states=True)
    for h in out.hidden_states[:-1]:  # the residual stream before the final norm, at every layer
        assert (h[0].double() @ r.double()).abs().max() < 1e-4 * h[0].norm(dim=-1).max()
    gen.close()
    assert_unchanged(rmu_model.model, before)


def test_ablate_recovers_rmu_knowledge_where_prompts_and_quantization_do_not(world, rmu_model):
    data = world["forget"]
    ctx = make_ctx(world)
    before = state(rmu_model.model)
    clean = ctx.scorer.per_sample("es", rmu_model, data).mean()
    found = run_attack("ablate", "es", rmu_model, data, ctx)
    assert_unchanged(rmu_model.model, before)
    simple = {s: run_attack(s, "es", rmu_model, data, ctx).values.mean()
              for s in ("quantize:4", "prefill", "paraphrase", "noise")}
    assert clean < 0.05 and ctx.scorer.per_sample("es", rmu_model, world["retain"]).mean() > 0.9
    assert found.values.mean() > clean + 0.2
    assert found.values.mean() > max(simple.values()) + 0.1, simple
    again = run_attack("ablate", "es", rmu_model, data, ctx)
    np.testing.assert_array_equal(again.values, found.values)
    assert "forget minus retain" in found.notes[0] and "output projections" in found.notes[0]


def test_controls_keep_the_original_and_inject_nothing(world):
    ctx = make_ctx(world)
    data = world["forget"]
    original = run_attack("ablate", "es", world["original"], data, ctx).values.mean()
    assert original > 0.9  # the original keeps its knowledge: the attack is informative
    ref = world["reference"]
    ref_clean = ctx.scorer.per_sample("es", ref, data).mean()
    assert run_attack("ablate", "es", ref, data, ctx).values.mean() < ref_clean + 0.1


def test_gpt2_writers(world):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = world["original"].tokenizer
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    handle = handle_from_objects(GPT2LMHeadModel(config).eval(), tok, name="gpt2")
    names = [n for n, _, _ in residual_writers(handle.model)]
    assert names == ["transformer.wte.weight", "transformer.wpe.weight",
                     "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
                     "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias",
                     "transformer.h.1.attn.c_proj.weight", "transformer.h.1.attn.c_proj.bias",
                     "transformer.h.1.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.bias"]
    before = state(handle.model)
    out = run_attack("ablate", "prob", handle, world["forget"], make_ctx(world))
    assert np.isfinite(out.values).all()
    assert_unchanged(handle.model, before)


def test_against_a_file_of_other_prompts(world, rmu_model, tmp_path):
    import json

    path = tmp_path / "harmless.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in world["retain"].records()))
    data = world["forget"]
    same = run_attack(f"ablate:against={path}", "es", rmu_model, data, make_ctx(world, retain=None))
    default = run_attack("ablate", "es", rmu_model, data, make_ctx(world))
    np.testing.assert_array_equal(same.values, default.values)  # the same prompts: the same direction
    assert "forget minus harmless.jsonl" in same.notes[0]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in world["retain"].records()[:5]))
    assert parse_attack(f"ablate:against={other}").chain_extra(data, make_ctx(world)) != \
        parse_attack(f"ablate:against={path}").chain_extra(data, make_ctx(world))
    with pytest.raises(AttackError, match="does not exist"):
        run_attack(f"ablate:against={tmp_path / 'missing.csv'}", "es", rmu_model, data, make_ctx(world))
    with pytest.raises(AttackError, match="retain or a path"):
        parse_attack("ablate:against=somewhere")


def test_errors(world):
    data, model = world["forget"], world["original"]
    with pytest.raises(AttackError, match="no retain set"):
        run_attack("ablate", "es", model, data, make_ctx(world, retain=None))
    with pytest.raises(AttackError, match="does not exist"):
        run_attack("ablate:layer=5", "es", model, data, make_ctx(world))
    with pytest.raises(AttackError, match="choose a later layer"):
        run_attack("ablate:layer=0", "es", model, data, make_ctx(world))


def test_ablate_then_logit_lens(world, rmu_model):
    data = world["forget"]
    ctx = make_ctx(world)
    before = state(rmu_model.model)
    chained = run_attack("ablate+logit_lens", "es", rmu_model, data, ctx).values
    alone = run_attack("ablate", "es", rmu_model, data, ctx).values
    assert_unchanged(rmu_model.model, before)
    assert np.all(chained >= alone)


def test_relearning_plus_probing_recovers_more_than_either_alone(world, rmu_model):
    """The paper's relearning + probing on the RMU model: the relearned model's intermediate
    layers hold more than its output (relearn alone) or the unlearned model's layers
    (logit_lens alone); on the never-knew reference the chain injects nothing."""
    data = world["forget"]
    ctx = make_ctx(world)
    relearn = "relearn:steps=5,lr=1e-3"
    chain = run_attack(relearn + "+logit_lens", "es", rmu_model, data, ctx).values.mean()
    alone = {s: run_attack(s, "es", rmu_model, data, ctx).values.mean() for s in (relearn, "logit_lens")}
    assert chain > max(alone.values()) + 0.1, (chain, alone)
    ref = world["reference"]
    ref_clean = ctx.scorer.per_sample("es", ref, data).mean()
    assert run_attack(relearn + "+logit_lens", "es", ref, data, ctx).values.mean() < ref_clean + 0.1
