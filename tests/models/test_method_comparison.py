"""Tests for pytest_unlearn.method_comparison: the grid, the calibrated table, resume and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_unlearn import compare_methods, methods  # noqa: E402
from pytest_unlearn.calibration import calibrate  # noqa: E402
from pytest_unlearn.cli import main  # noqa: E402
from pytest_unlearn.data import load_dataset  # noqa: E402
from pytest_unlearn.errors import ConfigError, UnknownNameError, UnlearnError  # noqa: E402
from pytest_unlearn.method_comparison import (  # noqa: E402
    RUNS_FILE, TABLE_COLUMNS, ComparisonResult, expand_grid, read_runs, run_key)
from pytest_unlearn.models import load_model  # noqa: E402

GRID = {"ga": {"lr": [1e-3, 3e-3], "steps": [6], "batch_size": 4},
        "npo": {"lr": [1e-3, 3e-3], "steps": [6], "batch_size": 4}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(toy_world):
    return SimpleNamespace(original=load_model(toy_world["original"], device="cpu", name="original"),
                           forget=load_dataset(toy_world["forget"], name="forget"),
                           retain=load_dataset(toy_world["retain"], name="retain"), paths=toy_world)


@pytest.fixture
def count_unlearning(monkeypatch):
    """Counts calls of pytest_unlearn.methods.unlearn (what compare_methods trains with)."""
    calls = []
    real = methods.unlearn

    def counting(method, *args, **kwargs):
        calls.append((method, {k: v for k, v in kwargs.items() if k in ("lr", "steps", "beta")}))
        return real(method, *args, **kwargs)
    monkeypatch.setattr(methods, "unlearn", counting)
    return calls


@pytest.fixture(scope="module")
def first_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("comparison")
    result = compare_methods(world.original, GRID, world.forget, world.retain, tau=0.9, metric="es", out_dir=out,
                             save_checkpoints=True)
    return SimpleNamespace(out=out, result=result)


# ---------------------------------------------------------------- the grid and the key

def test_expand_grid():
    runs = expand_grid({"ga": {"steps": [20], "lr": [1e-5, 3e-5]}, "npo": [{"beta": 0.1}, {"beta": [0.5], "lr": 1e-5}],
                        "kl": None})
    assert runs == [("ga", {"lr": 1e-5, "steps": 20}), ("ga", {"lr": 3e-5, "steps": 20}),
                    ("npo", {"beta": 0.1}), ("npo", {"beta": 0.5, "lr": 1e-5}), ("kl", {})]
    with pytest.raises(UnknownNameError, match="npo"):
        expand_grid({"nop": {"lr": [1e-5]}})
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        expand_grid({"ga": {"step": [20]}})
    with pytest.raises(ConfigError, match="set by compare_methods"):
        expand_grid({"ga": {"seed": [1, 2]}})
    with pytest.raises(ConfigError, match="empty list"):
        expand_grid({"ga": {"lr": []}})


def test_run_key_changes_with_what_makes_the_run(world):
    base = dict(original=world.original, forget=world.forget, retain=world.retain, method="ga",
                params={"lr": 1e-3, "steps": 6}, seed=0, tau=0.9, metric="es")
    key = run_key(**base)
    assert key == run_key(**{**base, "params": {"steps": 6, "lr": 1e-3}})  # order does not matter
    for change in ({"params": {"lr": 3e-3, "steps": 6}}, {"params": {"lr": 1e-3, "steps": 7}}, {"seed": 1},
                   {"tau": 0.8}, {"metric": "em"}, {"method": "npo"}, {"forget": world.retain}):
        assert run_key(**{**base, **change}) != key, change


# ---------------------------------------------------------------- the comparison

def test_table_columns_and_rows(first_run):
    table = first_run.result.table
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == 4 and (table["status"] == "ok").all() and not table["cached"].any()
    assert sorted(table["method"]) == ["ga", "ga", "npo", "npo"]
    assert {json.dumps(p, sort_keys=True) for p in table["params"]} == {
        json.dumps({"batch_size": 4, "lr": lr, "steps": 6}, sort_keys=True) for lr in (1e-3, 3e-3)}
    assert table["alpha"].between(0, 1).all()
    assert (table["retain_score"] >= 0.9 * table["original_retain_score"] - 1e-12).all()  # the bar is met
    assert table["forget_score"].notna().all() and table["forget_score_uncalibrated"].notna().all()
    for method, group in table.groupby("method", sort=False):  # within a method: least forget ES first
        assert list(group["forget_score"]) == sorted(group["forget_score"])


def test_best_is_the_lowest_calibrated_forget_score_per_method(first_run):
    table, best = first_run.result.table, first_run.result.best
    assert list(best["method"]) == ["ga", "npo"]
    for r in best.itertuples():
        assert r.forget_score == table[table["method"] == r.method]["forget_score"].min()
    md = first_run.result.to_markdown()
    assert "## Best setting per method" in md and "forget (calibrated)" in md


def test_a_row_is_what_unlearning_and_calibrating_by_hand_gives(world, first_run):
    row = first_run.result.table.query("method == 'ga'").iloc[0]
    by_hand = methods.ga(world.original, world.forget, **row["params"], seed=0)
    cal = calibrate(world.original, by_hand, world.retain, 0.9, "es", forget=world.forget)
    assert row["alpha"] == cal.alpha
    assert row["retain_score"] == pytest.approx(cal.retain_score)
    assert row["forget_score"] == pytest.approx(cal.forget_score)
    assert row["forget_score_uncalibrated"] == pytest.approx(cal.forget_score_uncalibrated)


def test_results_are_stored_and_checkpoints_saved(first_run):
    stored = read_runs(first_run.out / RUNS_FILE)
    assert set(stored) == set(first_run.result.table["key"])
    for record in stored.values():
        assert record["status"] == "ok" and record["forget_hash"] and record["original_fingerprint"]
    for r in first_run.result.table.itertuples():
        assert Path(r.checkpoint).parent == first_run.out / "checkpoints"
        assert (Path(r.checkpoint) / "config.json").is_file()
        assert any(Path(r.checkpoint).glob("*.safetensors"))
    assert len(first_run.result.checkpoints) == 4
    for name in ("comparison.csv", "best.csv", "comparison.md"):
        assert (first_run.out / name).is_file()


def test_rerun_resumes_without_unlearning(world, first_run, count_unlearning):
    again = compare_methods(world.original, GRID, world.forget, world.retain, tau=0.9, metric="es",
                            out_dir=first_run.out)
    assert count_unlearning == []
    assert again.table["cached"].all()
    cols = ["method", "alpha", "retain_score", "forget_score", "forget_score_uncalibrated", "key"]
    assert again.table[cols].equals(first_run.result.table[cols])
    # a torn last line (a run killed while writing) is skipped; one new setting runs alone
    with open(first_run.out / RUNS_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"key": "abc", "algori')
    grid = {**GRID, "ga": {**GRID["ga"], "lr": [1e-3, 3e-3, 2e-3]}}
    more = compare_methods(world.original, grid, world.forget, world.retain, tau=0.9, metric="es",
                           out_dir=first_run.out)
    assert [m for m, _ in count_unlearning] == ["ga"] and count_unlearning[0][1]["lr"] == 2e-3
    assert len(more.table) == 5 and int((~more.table["cached"]).sum()) == 1
    # a different tau is a different run
    count_unlearning.clear()
    compare_methods(world.original, {"ga": {"lr": [1e-3], "steps": [6], "batch_size": 4}}, world.forget,
                    world.retain, tau=0.8, metric="es", out_dir=first_run.out)
    assert len(count_unlearning) == 1


def test_failed_runs_are_stored_and_not_retried(world, tmp_path, monkeypatch):
    real = methods.unlearn
    calls = []

    def flaky(method, *args, **kwargs):
        calls.append(kwargs["lr"])
        if kwargs["lr"] > 2e-3:
            raise UnlearnError("ga: the loss became nan at step 3; lower the learning rate")
        return real(method, *args, **kwargs)
    monkeypatch.setattr(methods, "unlearn", flaky)
    grid = {"ga": {"lr": [1e-3, 3e-3], "steps": [4], "batch_size": 4}}
    result = compare_methods(world.original, grid, world.forget, world.retain, out_dir=tmp_path)
    assert sorted(result.table["status"]) == ["error", "ok"]
    assert list(result.best["method"]) == ["ga"] and result.best.iloc[0]["params"]["lr"] == 1e-3
    assert any("loss became nan" in n for n in result.notes)
    calls.clear()
    compare_methods(world.original, grid, world.forget, world.retain, out_dir=tmp_path)
    assert calls == []
    compare_methods(world.original, grid, world.forget, world.retain, out_dir=tmp_path, retry_errors=True)
    assert calls == [3e-3]


def test_without_out_dir_nothing_is_stored(world, count_unlearning):
    grid = {"ga": {"lr": [1e-3], "steps": [2], "batch_size": 4}}
    result = compare_methods(world.original, grid, world.forget, world.retain)
    assert isinstance(result, ComparisonResult) and len(result.table) == 1 and result.out_dir is None
    compare_methods(world.original, grid, world.forget, world.retain)
    assert len(count_unlearning) == 2
    with pytest.raises(ConfigError, match="out_dir"):
        compare_methods(world.original, grid, world.forget, world.retain, save_checkpoints=True)


def test_cli_compare(world, first_run, capsys, count_unlearning):
    rc = main(["compare", "--original", str(world.paths["original"]), "--forget", str(world.paths["forget"]),
               "--retain", str(world.paths["retain"]), "--grid", json.dumps(GRID), "--tau", "0.9",
               "--out", str(first_run.out), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Calibrated method comparison" in printed and "4 runs (4 read from" in printed
    assert count_unlearning == []  # every run was already stored
    rc = main(["compare", "--original", str(world.paths["original"]), "--forget", str(world.paths["forget"]),
               "--retain", str(world.paths["retain"]), "--grid", "{not json", "--out", str(first_run.out)])
    assert rc == 2 and "--grid" in capsys.readouterr().err
    assert np.isfinite(first_run.result.table["seconds"]).all()
