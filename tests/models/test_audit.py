"""Tests for pytest_unlearn.audit: the metric robustness audit, its CLI and assert_metric_robust.

Checkpoints are made on the toy world's original with gradient ascent and NPO for a few
steps (large learning rates: the toy model is tiny), plus the reference model, so the
audited models span "knows everything" to "forgot everything".
"""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import assert_metric_robust, audit_metrics  # noqa: E402
from pytest_unlearn import methods  # noqa: E402
from pytest_unlearn.attacks import Attack, AttackContext, AttackOutcome, Quantize, Relearn, run_attack  # noqa: E402
from pytest_unlearn.audit import (  # noqa: E402
    TABLE_COLUMNS, AuditResult, _ranking, fit_line, split_attack_list)
from pytest_unlearn.cli import audit_main, main  # noqa: E402
from pytest_unlearn.data import load_dataset  # noqa: E402
from pytest_unlearn.errors import ConfigError, UnlearningAssertionError  # noqa: E402
from pytest_unlearn.models import load_model  # noqa: E402
from pytest_unlearn.prompts import dataset_parts  # noqa: E402
from pytest_unlearn.scoring import Scorer  # noqa: E402
from pytest_unlearn.suite import Suite  # noqa: E402

METRICS = ("es", "em", "prob", "truth_ratio", "mia_loss")
ATTACKS = ["paraphrase", "quantize:8", "noise"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(toy_world):
    original = load_model(toy_world["original"], device="cpu", name="original")
    forget = load_dataset(toy_world["forget"], name="forget")
    retain = load_dataset(toy_world["retain"], name="retain")
    checkpoints = [load_model(toy_world["reference"], device="cpu", name="reference")]
    for steps in (2, 4, 8):
        checkpoints.append(methods.ga(original, forget, steps=steps, lr=1e-3, batch_size=4))
    checkpoints.append(methods.npo(original, forget, retain, steps=4, lr=1e-3, batch_size=4))
    return SimpleNamespace(original=original, forget=forget, retain=retain, checkpoints=checkpoints,
                           paths=toy_world)


@pytest.fixture(scope="module")
def audit(world) -> AuditResult:
    return audit_metrics(world.original, world.checkpoints, world.forget, world.retain, metrics=METRICS,
                         attacks=ATTACKS)


# ---------------------------------------------------------------- the statistics

def test_fit_line_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.random(7)
    y = 0.7 * x + 0.1 + rng.normal(0, 0.05, 7)
    fit = fit_line(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit["pcc"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert fit["slope"] == pytest.approx(slope, abs=1e-10)
    assert fit["intercept"] == pytest.approx(intercept, abs=1e-10)
    assert fit["n"] == 7


def test_fit_line_edge_cases():
    assert math.isnan(fit_line([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])["pcc"])      # no spread before
    assert math.isnan(fit_line([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])["slope"])
    flat = fit_line([0.1, 0.2, 0.3], [0.4, 0.4, 0.4])                         # after is constant
    assert math.isnan(flat["pcc"]) and flat["slope"] == pytest.approx(0.0)
    assert math.isnan(fit_line([1.0], [1.0])["pcc"])
    dropped = fit_line([0.0, 1.0, 2.0, math.inf, math.nan], [0.0, 2.0, 4.0, 1.0, 1.0])
    assert dropped["n"] == 3 and dropped["slope"] == pytest.approx(2.0) and dropped["pcc"] == pytest.approx(1.0)


def test_ranking_breaks_pcc_ties_by_slope():
    import pandas as pd

    rows = [  # a and b tie on mean PCC (to 3 decimals); b's slopes are closer to 1; c has the highest PCC
        ("a", "paraphrase", 0.9501, 1.30, True), ("a", "relearn", 0.9001, 2.0, False),
        ("b", "paraphrase", 0.9499, 1.05, True), ("b", "relearn", 0.9001, 3.0, False),
        ("c", "paraphrase", 0.99, 0.5, True), ("c", "relearn", math.nan, math.nan, False),
        ("d", "paraphrase", 0.97, 1.0, True), ("d", "relearn", 0.97, 1.0, False),
    ]
    table = pd.DataFrame([{"metric": m, "attack": a, "split": "forget", "pcc": p, "slope": s, "surface": surf}
                          for m, a, p, s, surf in rows])
    ranking = _ranking(table, ["a", "b", "c", "d"])
    assert list(ranking["metric"]) == ["d", "b", "a", "c"]  # c: its NaN PCC counts as 0
    assert ranking.set_index("metric").loc["c", "nan_rows"] == 1
    assert ranking.set_index("metric").loc["b", "mean_abs_slope_dev"] == pytest.approx(0.05)  # surface only


def test_ranking_uses_the_rows_every_metric_has():
    import pandas as pd

    rows = [("tr", "paraphrase", "forget", 0.99), ("es", "paraphrase", "forget", 0.95),
            ("es", "paraphrase", "retain", 0.10), ("prob", "paraphrase", "forget", 0.90),
            ("prob", "paraphrase", "retain", 0.99)]
    table = pd.DataFrame([{"metric": m, "attack": a, "split": s, "pcc": p, "slope": 1.0, "surface": True}
                          for m, a, s, p in rows])
    notes = []
    ranking = _ranking(table, ["es", "prob", "tr"], notes)
    assert list(ranking["metric"]) == ["tr", "es", "prob"] and (ranking["rows"] == 1).all()
    assert any("ranked on the 1 attack/split rows they all have (paraphrase/forget)" in n for n in notes)


def test_split_attack_list():
    assert split_attack_list("paraphrase,quantize:4") == ["paraphrase", "quantize:4"]
    assert split_attack_list("relearn:steps=5,lr=1e-4,paraphrase,logit_lens:layers=1,2") == \
        ["relearn:steps=5,lr=1e-4", "paraphrase", "logit_lens:layers=1,2"]
    assert split_attack_list('prefill:text="a, b",noise') == ['prefill:text="a, b"', "noise"]
    assert split_attack_list(["quantize:4", "relearn"]) == ["quantize:4", "relearn"]


def test_split_attack_list_keeps_chains_whole():
    assert split_attack_list("gcg,relearn+logit_lens,quantize:4+paraphrase") == \
        ["gcg", "relearn+logit_lens", "quantize:4+paraphrase"]
    assert split_attack_list("relearn:steps=5,lr=1e-4+logit_lens:layers=1,2,noise") == \
        ["relearn:steps=5,lr=1e-4+logit_lens:layers=1,2", "noise"]


# ---------------------------------------------------------------- the audit on the toy world

def test_table_shape_and_columns(audit, world):
    assert list(audit.table.columns) == TABLE_COLUMNS
    assert len(audit.table) == len(METRICS) * len(ATTACKS) * 2
    assert set(audit.table["attack"]) == set(ATTACKS)  # labelled as the user wrote them
    assert set(audit.table["split"]) == {"forget", "retain"}
    assert (audit.table["n"] == len(world.checkpoints)).all()
    assert audit.table["pcc"].notna().all()
    assert set(audit.table.loc[audit.table["surface"], "attack"]) == {"paraphrase", "noise"}
    # (5 checkpoints + the original as control) x metrics x splits x (no attack + attacks)
    assert len(audit.scores) == 6 * len(METRICS) * 2 * (1 + len(ATTACKS))
    assert len(audit.checkpoints) == 5 and audit.checkpoints[0]["name"] == "reference"
    assert audit.metrics == list(METRICS) and audit.attacks == ATTACKS


def test_pcc_and_slope_match_numpy_on_the_audited_numbers(audit):
    for r in audit.table.itertuples():
        x = audit.before(r.metric, r.split)
        y = audit.after(r.metric, r.attack, r.split).reindex(x.index)
        assert r.pcc == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9), (r.metric, r.attack, r.split)
        slope, intercept = np.polyfit(x.to_numpy(), y.to_numpy(), 1)
        assert r.slope == pytest.approx(slope, rel=1e-7, abs=1e-9)
        assert r.intercept == pytest.approx(intercept, rel=1e-7, abs=1e-9)
        assert r.before_mean == pytest.approx(x.mean()) and r.after_mean == pytest.approx(y.mean())


def test_scores_are_sample_means_and_attacks_match_direct_runs(audit, world):
    """The shared-pass shortcut gives what scoring each metric and attack on its own gives."""
    scorer = Scorer()
    ckpt = world.checkpoints[2]
    ctx = AttackContext(scorer, original=world.original, forget=world.forget, retain=world.retain, seed=0)
    for metric in METRICS:
        for split, data in (("forget", world.forget), ("retain", world.retain)):
            direct = scorer.score(metric, ckpt, data).reduced
            assert audit.before(metric, split)[ckpt.name] == pytest.approx(direct, rel=1e-9)
    for metric, attack in (("truth_ratio", "paraphrase"), ("em", "quantize:8"), ("mia_loss", "noise")):
        direct = run_attack(attack, metric, ckpt, world.retain, ctx).values.mean()
        assert audit.after(metric, attack, "retain")[ckpt.name] == pytest.approx(direct, rel=1e-9)
    # the original is scored as the control, outside the fit
    control = audit.scores[audit.scores["role"] == "original"]
    assert set(control["checkpoint"]) == {"original"}
    row = audit.row("es", "quantize:8", "forget")
    assert row["original_before"] == pytest.approx(scorer.score("es", world.original, world.forget).reduced)


def test_recommendation_is_the_highest_mean_pcc(audit):
    mean_pcc = audit.table.groupby("metric")["pcc"].mean()
    assert audit.ranking.set_index("metric")["mean_pcc"].to_dict() == pytest.approx(mean_pcc.to_dict())
    best = mean_pcc.round(3).max()
    tied = mean_pcc[mean_pcc.round(3) == best].index
    assert audit.recommendation in tied
    dev = audit.ranking.set_index("metric")["mean_abs_slope_dev"]
    assert dev[audit.recommendation] == dev[tied].min()
    assert audit.ranking.iloc[0]["metric"] == audit.recommendation
    md = audit.to_markdown()
    assert f"Recommended metric: `{audit.recommendation}`" in md and "| metric | attack | split | PCC |" in md


def test_without_refits_on_the_remaining_checkpoints(audit, world):
    dropped = world.checkpoints[0].name
    refit = audit.without([dropped])
    assert [c["name"] for c in refit.checkpoints] == [c["name"] for c in audit.checkpoints[1:]]
    assert (refit.table["n"] == len(world.checkpoints) - 1).all()
    r = refit.row("es", "paraphrase", "forget")
    x = audit.before("es", "forget").drop(dropped)
    y = audit.after("es", "paraphrase", "forget").reindex(x.index)
    assert r["pcc"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
    assert list(refit.table["surface"]) == list(audit.table["surface"])
    with pytest.raises(KeyError, match="nope"):
        audit.without(["nope"])


def test_plot_and_save(audit, tmp_path):
    pytest.importorskip("matplotlib")
    path = audit.plot(tmp_path / "one.png", metrics=["es", "prob"])
    assert path.is_file() and path.stat().st_size > 1000
    paths = audit.save(tmp_path / "out", plots=False)  # the CLI test covers save() with plots
    for key in ("table", "ranking", "scores", "markdown", "json"):
        assert paths[key].is_file(), key
    assert "plot" not in paths and not (tmp_path / "out" / "scatter.png").exists()
    import json
    saved = json.loads(paths["json"].read_text())
    assert saved["recommendation"] == audit.recommendation and len(saved["table"]) == len(audit.table)


def test_weight_attacks_run_once_per_model_and_split(world, monkeypatch):
    calls = {"quantize": 0, "relearn": 0}
    for cls, name in ((Quantize, "quantize"), (Relearn, "relearn")):
        original_run = cls._run

        def counting(self, *args, _run=original_run, _name=name, **kwargs):
            calls[_name] += 1
            return _run(self, *args, **kwargs)
        monkeypatch.setattr(cls, "_run", counting)
    result = audit_metrics(world.original, world.checkpoints[1:4], world.forget, world.retain,
                           metrics=["es", "prob", "mia_min_k"], attacks=["quantize:8", "relearn:steps=1,lr=1e-3"],
                           splits=["forget"])
    assert calls == {"quantize": 4, "relearn": 4}  # 3 checkpoints + the control, one split, three metrics
    assert result.table["pcc"].notna().all()


def test_gcg_and_chained_attacks_in_the_audit(world):
    """audit_metrics(..., attacks=["gcg", "relearn+logit_lens"]): every metric's value under each
    equals a direct run of the attack with that metric; gcg is a prompt (surface) attack, the
    chain a weight attack judged by the original's control."""
    ckpts = world.checkpoints[1:4]
    specs = ["gcg:steps=2,candidates=4", "relearn:steps=1,lr=1e-3+logit_lens"]
    result = audit_metrics(world.original, ckpts, world.forget, world.retain, metrics=["es", "prob"],
                           attacks=",".join(specs), splits=["forget"])
    assert result.attacks == specs
    ctx = AttackContext(Scorer(), original=world.original, forget=world.forget, retain=world.retain)
    for spec in specs:
        for ck in ckpts:
            for metric in ("es", "prob"):
                direct = run_attack(spec, metric, ck, world.forget, ctx).values.mean()
                assert result.after(metric, spec, "forget")[ck.name] == pytest.approx(direct, rel=1e-9, abs=1e-12)
    assert bool(result.row("prob", specs[0])["surface"]) and not bool(result.row("prob", specs[1])["surface"])
    assert result.table["original_after"].notna().all()


class _MeanOfTwo(Attack):
    """An attack outside the worst-case rule: the mean of two prompt variants."""

    name = "mean_of_two"
    kind = "prompt"

    def _run(self, metric, model, data, ctx):
        base = dataset_parts(data)
        a = ctx.scorer.per_sample(metric, model, data, parts=base)
        b = ctx.scorer.per_sample(metric, model, data, parts=[p.with_(question="Tell me: " + p.question) for p in base])
        return AttackOutcome((a + b) / 2, {}, None, None)


def test_attacks_the_shortcut_cannot_rebuild_run_per_metric(world):
    ckpts = world.checkpoints[1:4]
    result = audit_metrics(world.original, ckpts, world.forget, world.retain, metrics=["es", "prob"],
                           attacks=[_MeanOfTwo()], splits=["forget"], controls=False)
    ctx = AttackContext(Scorer(), original=world.original, forget=world.forget, retain=world.retain)
    for ck in ckpts:
        direct = _MeanOfTwo().run("prob", ck, world.forget, ctx).values.mean()
        assert result.after("prob", "mean_of_two", "forget")[ck.name] == pytest.approx(direct, rel=1e-9)


def test_a_metric_an_attack_cannot_score_is_a_noted_nan_row(world):
    result = audit_metrics(world.original, world.checkpoints[:3], world.forget, world.retain,
                           metrics=["es", "rouge_l"], attacks=["logit_lens"], splits=["forget"], controls=False)
    row = result.row("rouge_l", "logit_lens", "forget")
    assert math.isnan(row["pcc"]) and row["n"] == 0
    assert any("rouge_l" in n and "generation-based" in n for n in result.notes)
    assert result.recommendation == "es"


def test_bad_inputs(world):
    with pytest.raises(ConfigError, match="at least 2"):
        audit_metrics(world.original, world.checkpoints[:1], world.forget, world.retain, metrics=["es"])
    with pytest.raises(ConfigError, match="listed twice"):
        audit_metrics(world.original, world.checkpoints, world.forget, world.retain, metrics=["es"],
                      attacks=["quantize:4", "quantize:bits=4"])
    with pytest.raises(ConfigError, match="unknown split"):
        audit_metrics(world.original, world.checkpoints, world.forget, world.retain, metrics=["es"],
                      splits=["holdout"])


# ---------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def saved_checkpoints(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for i, ck in enumerate(world.checkpoints[1:4]):
        ck.save(root / f"ck{i}")
    return root


def test_cli_audit_writes_table_and_plots(world, saved_checkpoints, tmp_path, capsys):
    out = tmp_path / "audit"
    rc = audit_main(["--original", str(world.paths["original"]), "--checkpoints-dir", str(saved_checkpoints),
                     "--checkpoint", str(world.paths["reference"]), "--forget", str(world.paths["forget"]),
                     "--retain", str(world.paths["retain"]), "--attacks", "paraphrase,quantize:8",
                     "--metrics", "es,prob", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "recommended metric:" in printed and "| rank | metric |" in printed
    for name in ("table.csv", "ranking.csv", "scores.csv", "audit.md", "audit.json"):
        assert (out / name).is_file(), name
    if pytest.importorskip("matplotlib"):
        assert (out / "scatter.png").is_file()
    import pandas as pd
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 2 * 2 * 2 and set(table["attack"]) == {"paraphrase", "quantize:8"}
    assert (table["n"] == 4).all()


def test_cli_reports_bad_arguments(world, saved_checkpoints, tmp_path, capsys):
    rc = main(["audit", "--original", str(world.paths["original"]), "--checkpoint", str(saved_checkpoints / "ck0"),
               "--forget", str(world.paths["forget"]), "--retain", str(world.paths["retain"]),
               "--out", str(tmp_path)])
    assert rc == 2
    assert "at least 2 checkpoints" in capsys.readouterr().err


def test_cli_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "pytest_unlearn.cli", "audit", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--checkpoint" in done.stdout and "--attacks" in done.stdout


# ---------------------------------------------------------------- assert_metric_robust

@pytest.fixture
def suite(world):
    s = Suite.from_paths(original=world.paths["original"], forget=world.paths["forget"],
                         retain=world.paths["retain"], cache_dir=None, device="cpu")
    with s:
        yield s


def test_assert_metric_robust_passes_a_lenient_bar(suite, world):
    result = assert_metric_robust("es", under_attack=["paraphrase", "quantize:8"], min_pcc=0.5,
                                  checkpoints=world.checkpoints)
    assert isinstance(result, AuditResult) and result.metrics == ["es"]
    assert (result.table["pcc"] >= 0.5).all()


def test_assert_metric_robust_fails_readably(suite, world):
    with pytest.raises(UnlearningAssertionError) as info:
        assert_metric_robust("prob", under_attack=["paraphrase"], min_pcc=0.99999, max_slope_dev=0.0,
                             checkpoints=world.checkpoints)
    message = str(info.value)
    assert "prob" in message and "is not robust on 5 checkpoints" in message
    assert "attack" in message and "PCC" in message and "slope" in message and "verdict" in message
    assert "paraphrase" in message and "fail: PCC < 1.0000" in message and "|slope-1| > 0.0000" in message
    assert "reference" in message and "->" in message  # the per-checkpoint numbers behind the row
    assert isinstance(info.value.result, AuditResult)


def test_assert_metric_robust_accepts_paths_and_checks_arguments(suite, world, saved_checkpoints):
    paths = [saved_checkpoints / f"ck{i}" for i in range(3)]
    result = assert_metric_robust("es", under_attack="quantize:8", min_pcc=0.5, checkpoints=paths,
                                  splits=["forget"])
    assert [c["name"] for c in result.checkpoints] == ["ck0", "ck1", "ck2"]
    with pytest.raises(ConfigError, match="min_pcc"):
        assert_metric_robust("es", min_pcc=2, checkpoints=paths)
