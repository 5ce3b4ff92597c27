"""Evaluation sharded over processes with torch.distributed (docs/distributed.md).

One ``torchrun`` job of two gloo ranks on the CPU runs a small pytest project: the gathered
per-sample results equal a one-process run bit for bit, also under relearn and quantize when
the ranks' own training would differ (rank 0's weights are broadcast); a cache hit on rank 0 alone neither
hangs nor desynchronises the ranks; a failure on one rank reaches every rank; ranks out of
step get an error, not a hang; and the plugin gives the verdicts, summary and report of a
serial run, with one report written, by rank 0.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from report_compare import normalise, summary

from pytest_unlearn import distributed
from pytest_unlearn.forward import length_sorted_batches

METRICS = ("es", "em", "prob", "mia_zlib", "mia_min_k_pp", "truth_ratio", "rouge_l")
BATCH = 3          # 13 samples: batches of 3, 3, 3, 3, 1 -> rank 0 gets 3 of them, rank 1 two
N_SAMPLES = 13
TIMEOUT = 300      # a hang fails the test instead of blocking the run


# ---------------------------------------------------------------- no processes needed

def test_each_rank_gets_whole_batches_that_rebatch_to_themselves():
    """The claim the sharding rests on: a rank's samples, listed in sorted-batch order and
    batched again with the same batch size, give back exactly its share of the batches of a
    single-process run; every sample goes to exactly one rank."""
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(0, 40)
        lengths = [rng.randint(1, 6) for _ in range(n)]  # many ties
        batch_size, world = rng.randint(1, 7), rng.randint(1, 5)
        full = length_sorted_batches(lengths, batch_size)
        seen = []
        for rank in range(world):
            mine = distributed.rank_batches(lengths, batch_size, rank, world)
            assert mine == full[rank::world]
            rows = [i for batch in mine for i in batch]
            again = length_sorted_batches([lengths[i] for i in rows], batch_size)
            assert [[rows[j] for j in batch] for batch in again] == mine
            seen += rows
        assert sorted(seen) == list(range(n))


def test_one_process_is_untouched(toy_world, monkeypatch):
    """Without a process group nothing is sharded: no collective, the cache object as given."""
    from pytest_unlearn.cache import ResultCache
    from pytest_unlearn.prompts import dataset_parts
    from pytest_unlearn.scoring import Scorer
    from pytest_unlearn.suite import Suite

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", distributed.SWITCH_ENV):
        monkeypatch.delenv(var, raising=False)
    assert not distributed.active() and not distributed.launched() and not distributed.setup()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main_process()
    cache = ResultCache(None)
    scorer = Scorer(batch_size=BATCH, cache=cache)
    assert scorer.cache is cache
    # run_sharded in one process: the whole job, in input order
    items, extras = distributed.run_sharded("t", [3, 1, 2], 2, lambda rows: ([r * 10 for r in rows], "x"))
    assert items == [0, 10, 20] and extras == ["x"]

    def no_collective(*args, **kwargs):
        raise AssertionError("a collective in a one-process run")

    monkeypatch.setattr(distributed, "exchange", no_collective)
    suite = Suite.from_paths(original=toy_world["original"], forget=toy_world["forget"], cache_dir=None)
    try:
        parts = dataset_parts(suite.forget)
        assert len(scorer.token_stats(suite.original, parts)) == len(parts)
        assert len(scorer.generate(suite.original, parts[:2])) == 2
    finally:
        suite.close()


# ---------------------------------------------------------------- helpers

def varied_records(world) -> list[dict]:
    """13 toy facts with questions and answers of varied lengths."""
    rows = [json.loads(line) for key in ("forget", "retain")
            for line in Path(world[key]).read_text(encoding="utf-8").splitlines()][:N_SAMPLES]
    for i, row in enumerate(rows):
        if i % 3 == 1:
            row["question"] += " Answer in one short sentence, please, and be precise."
        if i % 4 == 2:
            row["answer"] += " Few people know that."
        if i == 5:
            row["question"] = "Quick: " + row["question"]
    return rows


def child_env() -> dict:
    """The environment of a launched job: one thread per process, no trace of this run's
    pytest-xdist worker or launcher."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_XDIST") and k not in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", distributed.SWITCH_ENV):
        env.pop(var, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def run(cmd: list[str], cwd) -> tuple[int, str]:
    """Run ``cmd``; on a timeout kill its whole process group (torchrun and its ranks) and fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish in {TIMEOUT} s (a hang?)\n{out[-6000:]}")
    return proc.returncode, out


def torchrun(*args: str, cwd) -> tuple[int, str]:
    # --standalone: a local rendezvous on a free port, so parallel runs do not collide
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
               cwd)


# ---------------------------------------------------------------- one torchrun job for both tests

GATE = """
from pytest_unlearn import assert_forgotten, assert_retained

def test_forgotten_under_attack():
    assert_forgotten("es", threshold=0.8, under_attack=["paraphrase", "quantize:8", "relearn:steps=2"])

def test_original_leaks(unlearn):
    assert_forgotten("es", threshold=0.3, model=unlearn.settings.original)

def test_retained():
    assert_retained("prob", min_ratio=0.5)

def test_generation_forgotten():
    assert_forgotten("rouge_l", threshold=0.9)
"""

# one report path per rank (and "serial"), to see which processes write one
CONFTEST = """
import os

import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    tag = os.environ.get("RANK", "serial")
    config.option.unlearn_report = f"report-{tag}.json"
    config.option.xmlpath = f"junit-{tag}.xml"
"""

# what every rank's test file starts with: the files the job shares, and what each rank raised
RANK_PRELUDE = """
import json
import pickle
from pathlib import Path

HERE = Path(__file__).parent


def caught(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # what each rank raised is the point
        return (type(exc).__name__, str(exc))
"""

# what each rank computes, pickled for the test process to compare with one process
SHARDS = RANK_PRELUDE + """
from pytest_unlearn import distributed
from pytest_unlearn.cache import ResultCache
from pytest_unlearn.data import dataset_from_records
from pytest_unlearn.forward import answer_logits
from pytest_unlearn.prompts import dataset_parts
from pytest_unlearn.scoring import Scorer


def test_shards(unlearn):
    spec = json.loads((HERE / "spec.json").read_text())
    batch, metrics = spec["batch"], spec["metrics"]
    rank = distributed.rank()
    seen = {"rank": rank, "world": distributed.world_size(), "active": distributed.active()}
    handle = unlearn.original
    data = dataset_from_records(spec["records"], name="varied")
    parts = dataset_parts(data)

    # scores, token statistics and generations, sharded
    scorer = Scorer(batch_size=batch)
    seen["values"] = {m: scorer.per_sample(m, handle, data) for m in metrics}
    seen["logprob"] = scorer.token_stats(handle, parts).logprob
    seen["texts"] = scorer.generate(handle, parts)
    seen["cost"] = scorer.cost.as_dict()
    seen["es_default_batch"] = Scorer().per_sample("es", handle, data)  # batch size 8: 2 batches

    # the cache: rank 0's folder holds the entry, rank 1's folder is empty
    folder = HERE / f"cache-rank{rank}"
    if rank == 0:
        with distributed.replicated():
            Scorer(batch_size=batch, cache=ResultCache(folder)).per_sample("es", handle, data)
    scorer = Scorer(batch_size=batch, cache=ResultCache(folder))
    seen["cached_es"] = scorer.per_sample("es", handle, data)
    seen["cached_cost"] = scorer.cost.as_dict()
    seen["computed_rouge"] = scorer.per_sample("rouge_l", handle, data)  # a miss: rank 0 writes it
    seen["cache_files"] = sorted(p.name for p in folder.rglob("*.npz"))

    # a failure in one rank's share reaches every rank
    def fails_on_rank1(model, ids, mask, pos, keep):
        if distributed.rank() == 1:
            raise RuntimeError("the forward pass broke on rank 1")
        return answer_logits(model, ids, mask, pos, keep)

    seen["failure"] = caught(lambda: Scorer(batch_size=batch).token_stats(
        handle, parts, logits_fn=fails_on_rank1, variant="fails"))

    # a NaN logit on one rank: the same MetricError everywhere
    def nan_on_rank1(model, ids, mask, pos, keep):
        logits = answer_logits(model, ids, mask, pos, keep)
        if distributed.rank() == 1:
            logits = logits.clone()
            logits[0, -1, 0] = float("nan")
        return logits

    seen["nan"] = caught(lambda: Scorer(batch_size=batch).token_stats(
        handle, parts, logits_fn=nan_on_rank1, variant="nan"))

    # out of step (rank 1 scores one sample more): an error on both ranks, not a hang ...
    seen["out_of_step"] = caught(lambda: Scorer(batch_size=batch).per_sample(
        "es", handle, data.subset(range(5 + rank))))
    # ... and the next call is in step again
    seen["after"] = Scorer(batch_size=batch).per_sample("em", handle, data)
    (HERE / f"shards-rank{rank}.pkl").write_bytes(pickle.dumps(seen))
"""


# relearn and quantize under torchrun: each rank's own training (or rounding) is made to differ
# on purpose, as GPU kernels may; every rank must still score rank 0's weights
WEIGHT_ATTACKS = ("quantize:8", "relearn:steps=2,lr=1e-2", "relearn:steps=2,lr=1e-2,lora=true")
ATTACK_METRICS = ("es", "prob")

ATTACKS = RANK_PRELUDE + """
import torch

from pytest_unlearn import distributed
from pytest_unlearn.attacks import AttackContext, run_attack
from pytest_unlearn.attacks import quantize, relearn, session_memo
from pytest_unlearn.data import dataset_from_records
from pytest_unlearn.errors import AttackError
from pytest_unlearn.scoring import Scorer


def test_weight_attacks(unlearn, monkeypatch):
    spec = json.loads((HERE / "spec.json").read_text())
    rank = distributed.rank()
    trained = []
    real_train, real_quantize = relearn.train_answers, quantize.Quantize.quantize

    def train_differently(model, *args, **kwargs):
        trained.append(kwargs.get("desc"))
        real_train(model, *args, **kwargs)
        if rank:  # rank 1 ends its training elsewhere
            gen = torch.Generator().manual_seed(rank)
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))

    def quantize_differently(self, weight):
        out = real_quantize(self, weight)
        return out * 1.05 if rank else out

    monkeypatch.setattr(relearn, "train_answers", train_differently)
    monkeypatch.setattr(quantize.Quantize, "quantize", quantize_differently)
    data = dataset_from_records(spec["records"], name="varied")
    scorer = Scorer(batch_size=spec["batch"])
    ctx = AttackContext(scorer, forget=data, seed=0)
    seen = {"rank": rank, "active": distributed.active(),
            "values": {a: {m: run_attack(a, m, unlearn.original, data, ctx).values for m in spec["attack_metrics"]}
                       for a in spec["weight_attacks"]}}
    memo = session_memo.memo_for(scorer)
    seen.update(trained=trained, trainings=memo.trainings, applied=memo.applied)

    # a failure on rank 0 while it computes the weights reaches every rank; tensors that
    # differ between the ranks are an error, not a silent mismatch
    def broken():
        raise AttackError("training broke on rank 0")

    seen["failure"] = caught(lambda: distributed.from_rank0("t", broken, [("w", torch.zeros(3))]))
    seen["layout"] = caught(lambda: distributed.from_rank0("t", lambda: 1, [("w", torch.zeros(3 + rank))]))
    got = torch.full((4,), float(rank))
    seen["moved"] = (distributed.from_rank0("t", lambda: "done", [("w", got)]), got.tolist())
    (HERE / f"attacks-rank{rank}.pkl").write_bytes(pickle.dumps(seen))
"""


def project_files(world: dict, forget: Path) -> dict[str, str]:
    """The gate project: the toy world with ``forget`` as forget set, batches of 3."""
    return {"pytest.ini": "[pytest]\n"
                          f"unlearn_original = {world['original']}\n"
                          f"unlearn_model = {world['reference']}\n"
                          f"unlearn_reference = {world['reference']}\n"
                          f"unlearn_forget = {forget}\n"
                          f"unlearn_retain = {world['retain']}\n"
                          f"unlearn_batch_size = {BATCH}\n",
            "conftest.py": CONFTEST, "test_gate.py": GATE}


def launch_job(world: dict, root: Path) -> dict:
    """Run ``torchrun --nproc_per_node 2 -m pytest`` (gloo, CPU) in ``root`` on a small project:
    the gate tests of test_gate.py, and test_shards.py, which pickles what each rank computed."""
    forget = root / "forget.jsonl"  # 7 samples: an odd number
    forget.write_text("".join(Path(world["forget"]).read_text(encoding="utf-8").splitlines(True)[:7]))
    for name, text in project_files(world, forget).items():
        (root / name).write_text(text)
    (root / "test_shards.py").write_text(SHARDS)
    (root / "test_weight_attacks.py").write_text(ATTACKS)
    records = varied_records(world)
    (root / "spec.json").write_text(json.dumps({"records": records, "batch": BATCH, "metrics": METRICS,
                                                "weight_attacks": WEIGHT_ATTACKS,
                                                "attack_metrics": ATTACK_METRICS}))
    logs = root / "logs"
    code, out = torchrun("--redirects", "3", "--log-dir", str(logs), "-m", "pytest", "-p", "no:randomly", cwd=root)
    stdout = [next(iter(logs.glob(f"*/attempt_0/{r}/stdout.log")), None) for r in (0, 1)]
    assert all(stdout), out[-6000:]
    return {"root": str(root), "world": {k: str(v) for k, v in world.items()}, "code": code, "out": out[-6000:],
            "records": records, "stdout": [p.read_text() for p in stdout]}


@pytest.fixture(scope="module")
def job(toy_world, tmp_path_factory) -> dict:
    """The torchrun job of :func:`launch_job`, run once for both tests (starting the ranks is most
    of the cost); under pytest-xdist, once for all workers (the first one to get here runs it,
    on its toy world, which the tests then use)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        result = launch_job(toy_world, tmp_path_factory.mktemp("torchrun-job"))
    else:
        from filelock import FileLock

        shared = tmp_path_factory.getbasetemp().parent / "torchrun-job"
        with FileLock(f"{shared}.lock"):
            done = shared / "job.json"
            if not done.is_file():
                shared.mkdir(exist_ok=True)
                done.write_text(json.dumps(launch_job(toy_world, shared)))
            result = json.loads(done.read_text())
    result["root"] = Path(result["root"])
    return result


def one_process(original, records) -> dict:
    """The same scores from one plain process (this one, on one thread like the ranks)."""
    import torch

    from pytest_unlearn.data import dataset_from_records
    from pytest_unlearn.models import load_model
    from pytest_unlearn.prompts import dataset_parts
    from pytest_unlearn.scoring import Scorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    handle = load_model(original, device="cpu", name="original")
    try:
        data = dataset_from_records(records, name="varied")
        parts = dataset_parts(data)
        scorer = Scorer(batch_size=BATCH)
        return {"values": {m: scorer.per_sample(m, handle, data) for m in METRICS},
                "logprob": scorer.token_stats(handle, parts).logprob,
                "texts": scorer.generate(handle, parts),
                "cost": scorer.cost.as_dict(),
                "es_default_batch": Scorer().per_sample("es", handle, data)}
    finally:
        handle.release()
        torch.set_num_threads(threads)


def test_sharded_scores_equal_one_process(job):
    records = job["records"]
    lengths = {len(r["question"]) + len(r["answer"]) for r in records}
    assert len(records) % 2 == 1 and len(lengths) > 5
    paths = [job["root"] / f"shards-rank{r}.pkl" for r in (0, 1)]
    assert all(p.is_file() for p in paths), job["stdout"][0][-6000:]
    ranks = [pickle.loads(p.read_bytes()) for p in paths]
    single = one_process(job["world"]["original"], records)

    for seen in ranks:
        assert seen["world"] == 2 and seen["active"]
        for m in METRICS:
            assert np.array_equal(seen["values"][m], single["values"][m]), m
        assert len(seen["logprob"]) == N_SAMPLES
        assert all(np.array_equal(a, b) for a, b in zip(seen["logprob"], single["logprob"]))
        assert seen["texts"] == single["texts"]
        assert np.array_equal(seen["es_default_batch"], single["es_default_batch"])
        # the cost counts the job's batches, as one process does
        assert seen["cost"]["forward_batches"] == single["cost"]["forward_batches"]
        assert seen["cost"]["generation_batches"] == single["cost"]["generation_batches"]

        # rank 0's hit is every rank's hit: nothing computed, nothing hung
        assert np.array_equal(seen["cached_es"], single["values"]["es"])
        assert seen["cached_cost"]["cache_hits"] == 1 and seen["cached_cost"]["forward_batches"] == 0
        assert np.array_equal(seen["computed_rouge"], single["values"]["rouge_l"])

        assert seen["nan"][0] == "MetricError" and "NaN or inf logits" in seen["nan"][1]
        assert seen["out_of_step"][0] == "DistributedError" and "out of step" in seen["out_of_step"][1]
        assert np.array_equal(seen["after"], single["values"]["em"])
    # rank 0 alone writes the cache: rank 1's own folder stays empty
    assert len(ranks[0]["cache_files"]) == 2 and ranks[1]["cache_files"] == []
    assert ranks[0]["nan"] == ranks[1]["nan"]
    assert ranks[1]["failure"] == ("RuntimeError", "the forward pass broke on rank 1")
    assert ranks[0]["failure"][0] == "DistributedError" and "rank 1 of 2 failed" in ranks[0]["failure"][1]


def one_process_attacks(original, records) -> dict:
    """The weight attacks' scores from one plain process (training and rounding as on rank 0)."""
    import torch

    from pytest_unlearn.attacks import AttackContext, run_attack
    from pytest_unlearn.data import dataset_from_records
    from pytest_unlearn.models import load_model
    from pytest_unlearn.scoring import Scorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    handle = load_model(original, device="cpu", name="original")
    try:
        data = dataset_from_records(records, name="varied")
        ctx = AttackContext(Scorer(batch_size=BATCH), forget=data, seed=0)
        return {a: {m: run_attack(a, m, handle, data, ctx).values for m in ATTACK_METRICS} for a in WEIGHT_ATTACKS}
    finally:
        handle.release()
        torch.set_num_threads(threads)


def test_every_rank_scores_rank0s_attacked_weights(job):
    """relearn and quantize under torchrun: rank 0 alone trains / quantizes and the other rank
    receives its weights, so the gathered scores are those of one model (rank 0's, which is the
    one-process model), although rank 1's own training and rounding would differ."""
    paths = [job["root"] / f"attacks-rank{r}.pkl" for r in (0, 1)]
    assert all(p.is_file() for p in paths), job["stdout"][0][-6000:]
    ranks = [pickle.loads(p.read_bytes()) for p in paths]
    single = one_process_attacks(job["world"]["original"], job["records"])
    folds = 2 * sum(a.startswith("relearn") for a in WEIGHT_ATTACKS)
    for seen in ranks:
        assert seen["active"]
        for attack in WEIGHT_ATTACKS:
            for m in ATTACK_METRICS:
                assert np.array_equal(seen["values"][attack][m], single[attack][m]), (seen["rank"], attack, m)
        # trained once per fold in the job (on rank 0); the second metric applied the kept folds
        assert seen["trainings"] == folds and seen["applied"] == folds
        assert seen["failure"] == ("AttackError", "training broke on rank 0")
        assert seen["layout"][0] == "DistributedError" and "other tensors" in seen["layout"][1]
        assert seen["moved"] == ("done", [0.0] * 4)
    assert len(ranks[0]["trained"]) == folds and ranks[1]["trained"] == []


# ---------------------------------------------------------------- the plugin under torchrun


def outcomes(text: str) -> dict:
    return pytest.RunResult.parse_summary_nouns(text.splitlines())


def serial_run(pytester, world: dict, forget: Path):
    """The gate tests in one plain pytest run (in this process, on one thread like the ranks; its
    own result cache, so it computes, and counts, what the job computed)."""
    import torch
    from conftest import import_every_module

    # pytester's in-process runs drop the modules first imported inside them: import them out here
    import_every_module()
    for name, text in project_files(world, forget).items():
        (pytester.path / name).write_text(text)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pytester.runpytest("test_gate.py", "-p", "no:randomly", "-p", "no:xdist", "-o", "cache_dir=serial-cache")
    finally:
        torch.set_num_threads(threads)


def test_plugin_under_torchrun_reports_once_with_the_serial_verdicts(job, pytester):
    root, rank_out = job["root"], job["stdout"]
    serial = serial_run(pytester, job["world"], root / "forget.jsonl")
    serial_out = serial.stdout.str()
    serial.assert_outcomes(passed=3, failed=1)

    assert job["code"] != 0  # a gate failed, on every rank
    expected = {"passed": 3 + 2, "failed": 1}  # the gate tests, test_shards and test_weight_attacks
    assert outcomes(rank_out[0]) == outcomes(rank_out[1]) == expected, rank_out[0][-6000:]
    # rank 0 alone: the summary, the JSON report, the JUnit XML
    assert summary(rank_out[0]) == summary(serial_out)
    assert "unlearning summary" not in rank_out[1]
    assert sorted(p.name for p in root.glob("report-*.json")) == ["report-0.json"]
    assert sorted(p.name for p in root.glob("junit-*.xml")) == ["junit-0.xml"]
    sharded = json.loads((root / "report-0.json").read_text())
    one = json.loads((pytester.path / "report-serial.json").read_text())
    assert normalise(sharded) == normalise(one)
    assert sharded["cost"]["forward_batches"] == one["cost"]["forward_batches"] > 0
    # the job cached its results (rank 0 wrote them)
    assert list((root / ".pytest_cache" / "d" / "unlearn").rglob("*.npz"))
