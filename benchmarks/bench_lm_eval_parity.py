"""Parity and speed of ``mc_acc`` against lm-evaluation-harness on the same model and questions.

Run it where the ``lm-eval`` package is installed (it is no dependency of pytest-unlearn)::

    python -m venv --system-site-packages /tmp/lmeval-venv
    /tmp/lmeval-venv/bin/pip install lm-eval
    PYTHONPATH=$PWD /tmp/lmeval-venv/bin/python benchmarks/bench_lm_eval_parity.py [--model FOLDER]

Without ``--model`` it saves a small random-weight Llama (a BPE tokenizer trained on the
questions) to a temporary folder.  Both sides run offline: lm-eval loads the folder with its
``hf`` model, a custom task YAML (the MMLU/WMDP zero-shot prompt, choices ``A``-``D``, the
answer index as target) and a local JSON Lines file; pytest-unlearn scores ``mc_acc`` with
``unlearn_prompt = plain`` (lm-eval's text verbatim).  Printed: the share of identical
per-question predictions (argmax letter) and each side's wall time, with model loading
excluded and a warm-up run first.  Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("cell virus protein gene enzyme membrane plasmid vector strain toxin culture sample assay "
         "primer sequence receptor antibody host pathogen spore").split()
TASK_YAML = """task: unlearn_parity_mc
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "The following are multiple choice questions (with answers) about {{{{subject.replace('_', ' ')}}}}.\\n\\n{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def questions(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, 7)
        rows.append({"question": f"Which {words[0]} binds the {words[1]} of the {words[2]} in case {i}?",
                     "subject": "college_biology", "choices": [f"the {w} {rng.randint(1, 99)}" for w in words[3:]],
                     "answer": rng.randrange(4)})
    return rows


def build_model(folder: Path, rows: list[dict]) -> None:
    from pytest_unlearn.multiple_choice import letter_prompt
    from pytest_unlearn.toy import tiny_llama, tiny_tokenizer

    texts = [letter_prompt(r["question"], r["choices"], r["subject"]) + " A B C D" for r in rows]
    tok = tiny_tokenizer(texts * 2, vocab_size=800)
    model = tiny_llama(tok, hidden_size=256, layers=4, heads=8, intermediate_size=768, max_positions=512, seed=1)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def run_ours(model_dir: str, data: str, batch_size: int):
    import numpy as np

    from pytest_unlearn import multiple_choice as MC
    from pytest_unlearn.data import load_dataset
    from pytest_unlearn.models import load_model
    from pytest_unlearn.prompts import dataset_parts
    from pytest_unlearn.scoring import Scorer

    handle = load_model(model_dir, device="cpu", dtype="float32")
    dataset = load_dataset(data, name="mc")
    names = [f"sample {i}" for i in dataset.ids]

    def once():
        scorer = Scorer(prompt="plain", batch_size=batch_size)  # a fresh scorer: no memoised results
        logps, _ = MC.letter_scores(scorer, handle, dataset, dataset_parts(dataset), names)
        return [int(np.argmax(v)) for v in logps]

    once()  # warm-up
    t0 = time.perf_counter()
    preds = once()
    return preds, time.perf_counter() - t0


def run_lm_eval(model_dir: str, task_dir: str, batch_size: int):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=task_dir)
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=batch_size)

    def once():
        out = lm_eval.simple_evaluate(model=lm, tasks=["unlearn_parity_mc"], task_manager=manager,
                                      log_samples=True, num_fewshot=0, bootstrap_iters=0)
        samples = sorted(out["samples"]["unlearn_parity_mc"], key=lambda s: s["doc_id"])
        return [max(range(len(s["filtered_resps"])), key=lambda j: s["filtered_resps"][j][0]) for s in samples]

    once()  # warm-up
    t0 = time.perf_counter()
    preds = once()
    return preds, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a model folder (default: a random-weight Llama saved to a temp folder)")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("lm-eval is not installed: see this script's docstring", file=sys.stderr)
        return 2
    import torch

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="lm-eval-parity-"))
    rows = questions(args.questions)
    data = work / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "task").mkdir()
    (work / "task" / "unlearn_parity_mc.yaml").write_text(TASK_YAML.format(data=str(data)))
    model_dir = args.model
    if model_dir is None:
        model_dir = str(work / "model")
        build_model(Path(model_dir), rows)
    ours, t_ours = run_ours(model_dir, str(data), args.batch_size)
    theirs, t_theirs = run_lm_eval(model_dir, str(work / "task"), args.batch_size)
    same = sum(a == b for a, b in zip(ours, theirs))
    acc_ours = sum(p == r["answer"] for p, r in zip(ours, rows)) / len(rows)
    acc_theirs = sum(p == r["answer"] for p, r in zip(theirs, rows)) / len(rows)
    print(f"model: {model_dir}  questions: {len(rows)}  batch size: {args.batch_size}  "
          f"torch threads: {torch.get_num_threads()}")
    print(f"identical per-question predictions: {same}/{len(rows)} ({same / len(rows):.1%})")
    print(f"{'':14}{'mc_acc':>8}{'seconds':>10}")
    print(f"{'pytest-unlearn':14}{acc_ours:8.3f}{t_ours:10.2f}")
    print(f"{'lm-eval':14}{acc_theirs:8.3f}{t_theirs:10.2f}")
    print(f"speed-up: {t_theirs / t_ours:.1f}x")
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
