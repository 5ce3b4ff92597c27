"""How the cost of scoring and of the attacks grows with the number of samples and the answer length.

    python benchmarks/bench_scaling.py [--model PATH] [--forget FILE] [--retain FILE]
                                       [--sizes-n 8,16,32,64] [--sizes-tokens 8,16,32,64]
                                       [--fixed-n 16] [--fixed-tokens 16] [--repeat 2]
                                       [--relearn-steps 2] [--costs tf,gen,quantize,relearn]
                                       [--threads N] [--quick]

Defaults: the SmolLM2 example suite's fine-tuned SmolLM2-135M-Instruct
(``example_suites/smollm2/.models/original``, built by ``example_suites/smollm2/build_models.py``)
and its forget set, chat prompt format, float32 on the CPU, the scorer's default batch size.

Costs, each measured at every size (fresh ``Scorer`` each time, nothing is a cache hit):

* ``tf``: the teacher-forced scoring pass serving all forward-pass metrics (es, em, prob, ppl,
  mia_*): a fresh temporary cache, so the first metric runs the pass and the others read its
  token statistics, as in a real session;
* ``gen``: ``rouge_l``, batched greedy generation (KV cache; each sample may generate up to
  1.25 x its own answer + 8 tokens and stops at end-of-sequence);
* ``quantize``: the ``quantize:4`` attack with ``es`` (quantize the weights, score, restore);
* ``relearn``: the ``relearn:steps=K`` attack with ``es`` (2 folds x K AdamW steps of 4 samples,
  full fine-tuning, then each fold's held-out rows scored; restores).  K is 2 by default to
  bound the run time: a step of full fine-tuning costs about one scoring pass of 20 samples
  on a CPU.

Data: synthetic QA rows.  Row ``i`` takes the question of forget row ``i mod N``; its answer is
that row's answer repeated and cut to the requested number of tokens (the model's tokenizer),
so answer length is controlled; rows that repeat a forget row carry a distinct ``copy``
column, so every row has its own id and nothing is deduplicated.  Axis "n": ``--sizes-n``
samples with ``--fixed-tokens``-token answers; axis "answer tokens": ``--fixed-n`` samples
with ``--sizes-tokens``-token answers.

Each time is the best of ``--repeat`` rounds (every size once per round, so drift in the load
of a shared machine hits all sizes alike); two rounds by default, about 8 minutes on an idle
2-core CPU.  ``--quick`` (about 2 minutes): sizes 4,8,16 samples and 8,16,32 tokens, 8 samples
on the length axis, one round, 1 relearn step per fold.  Wall-clock seconds and this process's
CPU seconds (all its threads, ``time.process_time``) are both recorded and both fitted: when
other processes compete for the CPUs both grow (threads also spin while waiting for each other),
so a point far off the others in both clocks marks a burst of load, not a property of the cost.

Fits, per cost, axis and clock (see :func:`fit`): the raw exponent (least-squares slope of
log(time) on log(size)); the least-squares line ``time = a + b * size`` (a: the fixed overhead,
such as quantizing the weights or the training steps, whose number does not depend on n;
b: the cost per sample or per answer token); and the exponent of the marginal cost, from the
increments between consecutive sizes, which a fixed overhead cancels out of; it is not given
when the time fell between two sizes or an increment is smaller than the round-to-round spread
of its two points (then the line is the reading).  A fixed overhead makes the raw exponent
smaller than the marginal one at small sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from smollm2_inputs import DEFAULT_FORGET, DEFAULT_MODEL, DEFAULT_RETAIN, check_inputs, machine_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COSTS = ("tf", "gen", "quantize", "relearn")


def int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if len(values) < 2 or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"need at least 2 positive sizes, got {text!r}")
    return sorted(set(values))


def synthetic_rows(forget, tokenizer, n: int, answer_tokens: int):
    """``n`` QA rows with answers of ``answer_tokens`` tokens, built from the forget rows."""
    from pytest_unlearn.data import dataset_from_records

    questions, answers = forget.prompts, forget.answers
    records = []
    for i in range(n):
        j, copy = i % len(forget), i // len(forget)
        base = answers[j].strip()
        ids: list[int] = []
        text = base
        while len(ids) < answer_tokens:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            text = text + " " + base
        answer = tokenizer.decode(ids[:answer_tokens]).strip()
        records.append({"question": questions[j], "answer": answer, "copy": copy})
    return dataset_from_records(records, name="forget", source=f"synthetic n={n} tokens={answer_tokens}")


def fit(sizes, times, spread=None) -> dict:
    """Three honest summaries of how ``times`` grow with ``sizes``.

    * ``raw``: least-squares slope of log(time) on log(size) (a fixed overhead pulls it below
      the exponent of the size-dependent part);
    * ``a``, ``b``, ``resid``: least-squares line ``time = a + b * size``: the fixed overhead,
      the cost per unit of size, and the largest relative residual (small = a line fits);
    * ``k``: the exponent of the marginal cost, from the increments between consecutive sizes
      (a fixed overhead cancels out of them): ``log(dt/ds)`` against the log of the geometric
      midpoint has slope ``k - 1``.  ``None`` (with ``why``) when the time fell between two
      sizes, or when an increment is smaller than the round-to-round spread (``spread``: max -
      min over the rounds, per size) of its two points added up: then the increments are noise.
    """
    import numpy as np

    s, t = np.asarray(sizes, dtype=float), np.asarray(times, dtype=float)
    raw = float(np.polyfit(np.log(s), np.log(t), 1)[0])
    b, a = (float(x) for x in np.polyfit(s, t, 1))
    resid = float(np.max(np.abs(a + b * s - t) / t))
    dt, ds = np.diff(t), np.diff(s)
    k, why = None, None
    if not np.all(dt > 0):
        why = "fell"
    elif spread is not None and np.any(dt < np.asarray(spread[:-1]) + np.asarray(spread[1:])):
        why = "noise"
    else:
        mid = np.sqrt(s[:-1] * s[1:])
        k = 1.0 + (float(np.polyfit(np.log(mid), np.log(dt / ds), 1)[0]) if len(dt) > 1 else 0.0)
    growth = float((t[-1] - t[0]) / t[-1])
    return {"raw": raw, "a": a, "b": b, "resid": resid, "k": k, "why": why, "growth": growth}


def shape_of(k: float) -> str:
    if k < 0.5:
        return "about constant"
    if k < 0.8:
        return "sublinear"
    if k <= 1.2:
        return "linear"
    if k < 1.8:
        return "between linear and quadratic"
    return "quadratic or worse"


WHY = {"fell": "the time fell between two sizes",
       "noise": "an increment is smaller than the round-to-round spread of its two points"}


def reading(axis: str, sizes, f: dict) -> str:
    lo, hi = min(sizes), max(sizes)
    if f["growth"] < 0:
        return (f"no growth measured: the time at {hi} is {1 / (1 - f['growth']):.0%} of the time at {lo} "
                f"(raw exponent {f['raw']:.2f})")
    if f["growth"] < 0.15:
        return (f"about constant in {axis}: {f['growth']:.0%} more time at {hi} than at {lo}; the fixed part "
                f"dominates (raw exponent {f['raw']:.2f})")
    line = (f"a fixed {f['a']:.2f} s plus {f['b']:.3g} s per unit" if f["a"] > 0
            else f"no fixed overhead visible (intercept {f['a']:.2f} s), {f['b']:.3g} s per unit")
    if f["k"] is None:
        if f["resid"] <= 0.10:
            return (f"linear in {axis} by the line ({line}, fits within {f['resid']:.0%}); no marginal "
                    f"exponent: {WHY[f['why']]}; raw exponent {f['raw']:.2f}")
        return (f"grows {f['growth']:.0%} from {lo} to {hi}, but no line fits within 10% and "
                f"{WHY[f['why']]}, so no shape is claimed; raw exponent {f['raw']:.2f}")
    return (f"{shape_of(f['k'])} in {axis} (marginal exponent {f['k']:.2f}); line: {line} "
            f"(fits within {f['resid']:.0%}); raw exponent {f['raw']:.2f}")


class Clock:
    """Wall seconds and this process's CPU seconds (all threads) of a ``with`` block."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--forget", type=Path, default=DEFAULT_FORGET)
    parser.add_argument("--retain", type=Path, default=DEFAULT_RETAIN,
                        help="the attack context's retain set (the attacks timed here do not train on it)")
    parser.add_argument("--prompt", default="chat", help="prompt format (the example suite uses chat)")
    parser.add_argument("--batch-size", type=int, default=None, help="scorer batch size (default: 8 on the CPU)")
    parser.add_argument("--sizes-n", type=int_list, default=None, help="sample counts (default 8,16,32,64)")
    parser.add_argument("--sizes-tokens", type=int_list, default=None,
                        help="answer lengths in tokens (default 8,16,32,64)")
    parser.add_argument("--fixed-n", type=int, default=None, help="samples on the answer-length axis (default 16)")
    parser.add_argument("--fixed-tokens", type=int, default=16, help="answer tokens on the n axis")
    parser.add_argument("--repeat", type=int, default=None, help="rounds; the best time is kept (default 2)")
    parser.add_argument("--relearn-steps", type=int, default=None, help="relearn steps per fold (default 2)")
    parser.add_argument("--costs", default=",".join(COSTS), help=f"subset of {','.join(COSTS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: sizes 4,8,16 and 8,16,32 tokens, 8 samples on the length axis, "
                             "one round, 1 relearn step per fold")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.quick:
        args.sizes_n = args.sizes_n or [4, 8, 16]
        args.sizes_tokens = args.sizes_tokens or [8, 16, 32]
        args.fixed_n = args.fixed_n or 8
        args.repeat = args.repeat or 1
        args.relearn_steps = args.relearn_steps or 1
    args.sizes_n = args.sizes_n or [8, 16, 32, 64]
    args.sizes_tokens = args.sizes_tokens or [8, 16, 32, 64]
    args.fixed_n = args.fixed_n or 16
    args.repeat = args.repeat or 2
    args.relearn_steps = args.relearn_steps or 2
    if min(args.sizes_n + [args.fixed_n]) < 2 and "relearn" in args.costs:
        parser.error("relearn splits the rows into 2 folds: every sample count must be at least 2")
    costs = [c.strip() for c in args.costs.split(",") if c.strip()]
    unknown = [c for c in costs if c not in COSTS]
    if unknown:
        parser.error(f"unknown cost(s) {', '.join(unknown)}; choose from {', '.join(COSTS)}")
    check_inputs(args.model, [args.forget, args.retain])

    import numpy as np
    import torch

    from pytest_unlearn.attacks import AttackContext, parse_attack
    from pytest_unlearn.cache import ResultCache
    from pytest_unlearn.data import load_dataset
    from pytest_unlearn.metrics import METRICS, get_metric
    from pytest_unlearn.models import load_model
    from pytest_unlearn.prompts import dataset_parts
    from pytest_unlearn.scoring import Scorer

    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(torch))
    t0 = time.perf_counter()
    handle = load_model(args.model, name="original", device="cpu", dtype="float32")
    tok = handle.tokenizer
    print(f"model: {args.model} ({sum(p.numel() for p in handle.model.parameters()) / 1e6:.0f}M parameters, "
          f"{handle.dtype}, {handle.device}), loaded in {time.perf_counter() - t0:.1f} s")
    forget = load_dataset(args.forget, name="forget")
    retain = load_dataset(args.retain, name="retain")
    forward_metrics = [m for m in METRICS.names() if METRICS.get(m).source == "forward"]
    es, rouge = get_metric("es"), get_metric("rouge_l")
    quantize, relearn = parse_attack("quantize:4"), parse_attack(f"relearn:steps={args.relearn_steps}")
    print(f"data: rows built from {args.forget} ({len(forget)} rows); prompt format {args.prompt}, batch size "
          f"{args.batch_size or 'default (8 on the CPU)'}; best of {args.repeat} round(s)")
    print(f"costs: tf = one teacher-forced pass for {len(forward_metrics)} forward metrics "
          f"({', '.join(forward_metrics)}); gen = rouge_l (greedy generation); quantize = {quantize.spec} "
          f"with es; relearn = {relearn.spec} with es")

    def fresh_scorer(cache_dir=None):
        return Scorer(prompt=args.prompt, batch_size=args.batch_size,
                      cache=ResultCache(cache_dir) if cache_dir else None)

    def run_tf(ds):
        with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
            scorer = fresh_scorer(tmp)
            with Clock() as clock:
                for m in forward_metrics:
                    scorer.per_sample(m, handle, ds)
        return clock, {}

    def run_gen(ds):
        with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
            scorer = fresh_scorer(tmp)
            with Clock() as clock:
                scorer.per_sample(rouge, handle, ds)
            texts = scorer.generate(handle, dataset_parts(ds))  # a cache hit: the texts just generated
        generated = np.mean([len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts])
        return clock, {"generated": float(generated)}

    def run_attack(attack):
        def run(ds):
            scorer = fresh_scorer()
            ctx = AttackContext(scorer, forget=ds, retain=retain, seed=args.seed, progress=False, cache=None)
            with Clock() as clock:
                attack.run(es, handle, ds, ctx)
            return clock, {}
        return run

    runners = {"tf": run_tf, "gen": run_gen, "quantize": run_attack(quantize), "relearn": run_attack(relearn)}

    # warm-up (not counted): the first forward and backward passes of a process are slower
    warm = synthetic_rows(forget, tok, 4, 8)
    for c in costs:
        if c == "relearn":  # one step per fold is enough to warm up autograd and AdamW
            parse_attack("relearn:steps=1").run(es, handle, warm, AttackContext(fresh_scorer(), forget=warm,
                                                                                seed=args.seed))
        else:
            runners[c](warm)

    axes = [("n", "n", [(s, args.fixed_tokens) for s in args.sizes_n], args.sizes_n,
             f"samples, {args.fixed_tokens}-token answers"),
            ("answer tokens", "tokens", [(args.fixed_n, s) for s in args.sizes_tokens], args.sizes_tokens,
             f"answer tokens, {args.fixed_n} samples")]
    started = time.perf_counter()
    fits, gen_note = [], None
    for axis, short, points, sizes, what in axes:
        data = [synthetic_rows(forget, tok, n, L) for n, L in points]
        measured = []
        for ds in data:
            enc = fresh_scorer().encode(handle, dataset_parts(ds))
            measured.append((float(np.mean([e.n_answer for e in enc])), sum(len(e.input_ids) for e in enc)))
        rounds = {(c, kind): [[] for _ in data] for c in costs for kind in ("wall", "cpu")}
        extra = [{} for _ in data]
        for _ in range(args.repeat):
            for i, ds in enumerate(data):
                for c in costs:
                    clock, info = runners[c](ds)
                    rounds[c, "wall"][i].append(clock.wall)
                    rounds[c, "cpu"][i].append(clock.cpu)
                    extra[i].update(info)
        best = {key: [min(r) for r in values] for key, values in rounds.items()}
        spread = {key: [max(r) - min(r) for r in values] if args.repeat > 1 else None
                  for key, values in rounds.items()}
        print()
        print(f"axis {axis} ({what}); wall and process CPU seconds, best of {args.repeat}"
              f"{' +- the spread over the rounds' if args.repeat > 1 else ''}; "
              f"load average now {os.getloadavg()[0]:.2f}")
        head = f"{short:>6}  {'ans tok':>7}  {'tokens':>6}"
        for c in costs:
            head += f"  {c + ' wall':>13}  {c + ' cpu':>12}"
            if c == "gen":
                head += f"  {'gen tok':>7}"
        print(head)
        print("-" * len(head))
        for i, size in enumerate(sizes):
            line = f"{size:>6}  {measured[i][0]:7.1f}  {measured[i][1]:6d}"
            for c in costs:
                for kind, width in (("wall", 13), ("cpu", 12)):
                    cell = f"{best[c, kind][i]:.2f}"
                    if spread[c, kind] is not None:
                        cell += f"+-{spread[c, kind][i]:.2f}"
                    line += f"  {cell:>{width}}"
                if c == "gen":
                    line += f"  {extra[i]['generated']:7.1f}"
            print(line)
        for c in costs:
            for kind in ("wall", "cpu"):
                fits.append((axis, c, kind, sizes, fit(sizes, best[c, kind], spread[c, kind])))
        if "gen" in costs and axis == "answer tokens":
            made = [e["generated"] for e in extra]
            gen_note = (f"gen / answer tokens: the model generated {min(made):.1f} to {max(made):.1f} tokens per "
                        f"answer at every answer length (greedy decoding stops at end-of-sequence), so a "
                        f"longer reference answer raises the allowed budget (1.25 x + 8 tokens), not the work")

    print()
    print("fits per cost, axis and clock: raw = least-squares slope of log(time) on log(size); "
          "a, b = least-squares line time = a + b * size (a: fixed overhead, b: seconds per unit), resid = its "
          "largest relative residual; k = exponent of the marginal cost, from the increments between "
          "consecutive sizes (a fixed overhead cancels out of them); k = fell: the time fell between two sizes; "
          "k = noise: an increment is smaller than the round-to-round spread of its two points added up. "
          "Units: one sample (axis n) or one answer token in every sample (axis answer tokens)")
    head = (f"{'axis':<13}  {'cost':<8}  {'clock':<5}  {'raw':>5}  {'a (s)':>7}  {'b (s/unit)':>10}  "
            f"{'resid':>6}  {'k':>5}")
    print(head)
    print("-" * len(head))
    for axis, c, kind, sizes, f in fits:
        k = f["why"] if f["k"] is None else f"{f['k']:.2f}"
        print(f"{axis:<13}  {c:<8}  {kind:<5}  {f['raw']:5.2f}  {f['a']:7.2f}  {f['b']:10.4f}  "
              f"{f['resid']:6.1%}  {k:>5}")
    print()
    for axis, c, kind, sizes, f in fits:
        print(f"{c} / {axis} ({kind}): {reading(axis, sizes, f)}")
    if gen_note:
        print(gen_note)
    print(f"\nmeasuring took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
