"""The cost of every attack, as a multiple of one plain scoring pass measured in the same run.

    python benchmarks/bench_attacks.py [--model PATH] [--forget FILE] [--retain FILE] [--toy [DIR]]
                                       [--metric es] [--repeat 3] [--repeat-attacks 1]
                                       [--threads N] [--attacks SPEC;SPEC...]

Defaults: the SmolLM2 example suite's fine-tuned SmolLM2-135M-Instruct that knows the forget
facts (``example_suites/smollm2/.models/original``, built by
``example_suites/smollm2/build_models.py``) and its forget and retain sets, chat prompt
format, float32 on the CPU, the scorer's default batch size.  ``--toy``: the test suite's toy
world instead (``pytest_unlearn.toy.build_toy_world``: a 2-layer Llama of hidden size 64 that
knows 8 forget and 16 retain facts), built in a few seconds into DIR or a temporary folder,
prompt format auto; the quick target, for a machine without the SmolLM2 models.

The attacks are every name in the attack registry (``pytest_unlearn.attacks.ATTACKS``) at
its default parameters (``gcg`` and ``ablate`` included), plus the variants of ``VARIANTS``
(``quantize:8``, 4-bit NF4, ``relearn:steps=10``, ``gcg:mode=sample``, and the chains
``quantize:4+paraphrase`` and ``relearn+logit_lens``).  For each one the script times ``attack.run(metric, model, forget,
ctx)`` with a fresh ``Scorer`` without a cache and ``AttackContext(cache=None)``, so every
forward pass and every training step really runs, and compares it with the median of
``--repeat`` plain scoring passes of the same metric on the same set (also uncached; the
first half run before the attacks and the rest after them, so that drift in the load of a
shared machine moves the unit less).

Prints the machine, the plain pass, then one row per attack: wall seconds (median of
``--repeat-attacks`` runs), the ratio to one plain pass, the same ratio in process CPU
seconds (all threads; a second view of the same work, which differs from the wall ratio when
other processes compete for the CPUs), the seconds the Scorer spent in
forward passes / generation ("scoring s") and the rest ("other s": quantizing, training,
copying and restoring weights, prompt building), the samples scored as multiples of the
set ("passes"), the mean tokens per scored sample relative to the plain prompts, the
attacked mean of the metric, and what the cost consists of.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from smollm2_inputs import DEFAULT_FORGET, DEFAULT_MODEL, DEFAULT_RETAIN, check_inputs, machine_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# parameter variants run besides each registered attack's defaults (names not registered are skipped)
# (a variant equal to the defaults, such as quantize:4, just names that run more explicitly)
VARIANTS = {
    "quantize": ["quantize:4", "quantize:8", "quantize:4,method=nf4", "quantize:4+paraphrase"],
    "relearn": ["relearn:steps=10", "relearn+logit_lens"],
    "gcg": ["gcg:mode=sample"],
}
KIND_ORDER = {"prompt": 0, "representation": 1, "weight": 2}
# cheap untimed runs before the measurements, so that the first weight attack does not pay the
# process's one-time costs (first large allocations, autograd and optimizer start-up) alone
WARMUP = {"quantize": "quantize:8", "relearn": "relearn:steps=1"}


def attack_specs(selected: str | None) -> list[str]:
    """``--attacks`` (semicolon-separated specs), else every registered attack plus ``VARIANTS``."""
    from pytest_unlearn.attacks import ATTACKS, parse_attack

    if selected:
        return [s.strip() for s in selected.split(";") if s.strip()]
    names = sorted(ATTACKS.names(), key=lambda n: (KIND_ORDER.get(ATTACKS.get(n).kind, 9), n))
    labels: dict[str, str] = {}  # canonical spec -> label, in order
    for name in names:
        for spec in [name] + VARIANTS.get(name, []):
            canonical = parse_attack(spec).spec
            if canonical not in labels or labels[canonical] == name:
                labels[canonical] = spec  # quantize:4 is a clearer label than quantize
    return list(labels.values())


def make_counting_scorer(prompt, batch_size):
    """A Scorer without a cache that also counts the samples and tokens it scores."""
    from pytest_unlearn.scoring import Scorer

    class CountingScorer(Scorer):
        def __init__(self):
            super().__init__(prompt=prompt, batch_size=batch_size)  # no cache: nothing is a hit
            self.rows = 0
            self.tokens = 0
            self._last = []

        def encode(self, handle, parts, names=None):
            self._last = super().encode(handle, parts, names)
            return self._last

        def _count(self):
            self.rows += len(self._last)
            self.tokens += sum(len(e.input_ids) for e in self._last)

        def token_stats(self, handle, parts, **kwargs):
            out = super().token_stats(handle, parts, **kwargs)
            self._count()
            return out

        def generate(self, handle, parts, names=None):
            out = super().generate(handle, parts, names)
            self._count()
            return out

    return CountingScorer()


def describe(attack, outcome, handle, passes: float, token_factor: float, plain_batches: int,
             n_samples: int) -> str:
    """What the measured cost consists of (from the attack's parameters and the counts of this run)."""
    kind, name = attack.kind, attack.name
    longer = f", {token_factor:.1f}x the tokens per sample" if abs(token_factor - 1) >= 0.05 else ""
    if name == "gcg":
        cost = outcome.cost
        fw, bw = cost.get("gcg_forward_passes", 0), cost.get("gcg_backward_passes", 0)
        rows = (cost.get("gcg_forward_rows", 0) + 3 * cost.get("gcg_backward_rows", 0)) / max(n_samples, 1)
        what = (f"{attack.folds} folds x {attack.steps} steps" if attack.mode == "universal" else
                f"{n_samples} samples x {attack.steps} steps, {attack.batch_size} samples per pass")
        return (f"{what}: {fw} batched forward passes ({attack.candidates} candidates per sample and step, plus "
                f"the loss before and after) + {bw} forward-backward passes: {rows:.0f} sequences per sample "
                f"(forward-backward = 3) + {passes:g} scoring pass{longer}")
    if "+" in name:
        steps = outcome.cost.get("training_steps", 0)
        return (f"{attack.steps[0].name} ({steps} AdamW steps)" if steps else attack.steps[0].name) + \
            f", then {attack.rest.name} on each variant of the attacked weights (samples scored: {passes:g}x the set)"
    if name == "ablate":
        return ("forget + retain prompts once with hidden states, snapshot + projection of the residual-writing "
                f"weights + {passes:g} scoring pass + restore")
    if kind == "prompt":
        return f"{passes:g} scoring pass{'' if passes == 1 else 'es'} on rewritten prompts{longer}"
    if name == "quantize":
        from pytest_unlearn.attacks.weight_attacks import quantizable_weights

        targets = quantizable_weights(handle.model, attack.include_head)
        values = sum(w.numel() for _, w, _ in targets)
        return (f"snapshot + {attack.method} {attack.bits}-bit of {len(targets)} tensors "
                f"({values / 1e6:.3g}M values) + {passes:g} scoring pass + restore")
    if name == "relearn":
        steps = outcome.cost.get("training_steps", 0)
        if attack.on == "forget":
            train = f"{attack.folds} folds x {attack.steps} steps ({steps} AdamW steps of {attack.batch_size})"
            score = f"{passes:g} scoring pass (each fold scores its held-out rows)"
        else:
            train = f"{steps} AdamW steps of {attack.batch_size} on {attack.on}"
            score = f"{passes:g} scoring pass"
        return f"snapshot + {train} + {score} + restores"
    if name == "logit_lens":
        from pytest_unlearn.attacks.logit_lens import num_layers

        fb = outcome.cost.get("forward_batches", 0)
        layers = len(attack.resolve_layers(num_layers(handle.model)))
        return (f"{fb} forward batches with hidden states (= {fb / max(plain_batches, 1):g} pass) "
                f"+ final norm and LM head x {layers} layers")
    return f"{attack.cost_hint} (measured: {passes:g} scoring passes)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--forget", type=Path, default=DEFAULT_FORGET)
    parser.add_argument("--retain", type=Path, default=DEFAULT_RETAIN)
    parser.add_argument("--toy", nargs="?", const="", default=None, metavar="DIR",
                        help="the toy world of the tests instead of SmolLM2, built into DIR (default: a temporary "
                             "folder)")
    parser.add_argument("--metric", default="es")
    parser.add_argument("--prompt", default=None,
                        help="prompt format (default: chat, as the example suite; auto with --toy)")
    parser.add_argument("--batch-size", type=int, default=None, help="scorer batch size (default: 8 on the CPU)")
    parser.add_argument("--repeat", type=int, default=3, help="plain scoring passes; the median is the unit")
    parser.add_argument("--repeat-attacks", type=int, default=1, help="runs per attack; the median is shown")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", default=None,
                        help="semicolon-separated specs instead of the registry, e.g. 'prefill;quantize:8'")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import numpy as np

    from pytest_unlearn.attacks import AttackContext, parse_attack
    from pytest_unlearn.data import load_dataset
    from pytest_unlearn.metrics import get_metric
    from pytest_unlearn.models import load_model

    try:  # a bad metric or attack spec fails here, before anything is loaded or timed
        metric = get_metric(args.metric)
        specs = attack_specs(args.attacks)
        attacks = [parse_attack(s) for s in specs]
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.toy is not None:
        import tempfile

        from pytest_unlearn.toy import build_toy_world

        folder = Path(args.toy) if args.toy else Path(tempfile.mkdtemp(prefix="toy-world-"))
        t0 = time.perf_counter()
        toy = build_toy_world(folder)
        print(f"toy world built in {folder} in {time.perf_counter() - t0:.1f} s")
        args.model, args.forget, args.retain = toy["original"], toy["forget"], toy["retain"]
    args.prompt = args.prompt or ("auto" if args.toy is not None else "chat")
    check_inputs(args.model, [args.forget, args.retain])

    print(machine_line(torch))
    t0 = time.perf_counter()
    handle = load_model(args.model, name="original", device="cpu", dtype="float32")
    n_params = sum(p.numel() for p in handle.model.parameters())
    print(f"model: {args.model} ({n_params / 1e6:.3g}M parameters, {handle.dtype}, {handle.device}), "
          f"loaded in {time.perf_counter() - t0:.1f} s")
    forget = load_dataset(args.forget, name="forget")
    retain = load_dataset(args.retain, name="retain")

    # the unit: one plain, uncached scoring pass of the metric on the forget set
    def plain():
        scorer = make_counting_scorer(args.prompt, args.batch_size)
        t, c = time.perf_counter(), time.process_time()
        values = scorer.per_sample(metric, handle, forget)
        return time.perf_counter() - t, time.process_time() - c, values, scorer

    warmups = [WARMUP[n] for n in dict.fromkeys(a.name for a in attacks) if n in WARMUP]
    for spec in warmups:
        ctx = AttackContext(make_counting_scorer(args.prompt, args.batch_size), forget=forget, retain=retain,
                            seed=args.seed, cache=None)
        parse_attack(spec).run(metric, handle, forget, ctx)
    plain()  # warm-up, not counted (after the attack warm-ups: the next pass is not the first after training)
    # the plain passes are split: the first half before the attacks, the rest after them, so
    # that drift in the machine's load over the run moves the unit less
    before = max(1, (args.repeat + 1) // 2)
    runs = [plain() for _ in range(before)]
    _, _, clean, sc = runs[0]
    plain_rows, plain_tokens = sc.rows, sc.tokens
    plain_batches = sc.cost.forward_passes + sc.cost.generations
    print(f"data: {args.forget} ({len(forget)} samples, {plain_tokens} tokens in the plain prompts), "
          f"retain {args.retain} ({len(retain)}); prompt format {args.prompt}, batch size "
          f"{args.batch_size or 'default (8 on the CPU)'}; no cache anywhere")
    print(f"warm-up, not counted: {''.join(w + ', ' for w in warmups)}one plain pass")
    print(f"plain {metric.name} pass ({plain_batches} batches, mean {metric.name} {np.mean(clean):.4f}): "
          f"{', '.join(f'{r[0]:.3f}' for r in runs)} s before the attacks")
    print()

    rows = []
    for attack, label in zip(attacks, specs):
        secs, result, error = [], None, None
        for _ in range(max(1, args.repeat_attacks)):
            scorer = make_counting_scorer(args.prompt, args.batch_size)
            ctx = AttackContext(scorer, original=None, forget=forget, retain=retain, seed=args.seed,
                                progress=False, cache=None)
            t, c = time.perf_counter(), time.process_time()
            try:
                outcome = attack.run(metric, handle, forget, ctx)
            except Exception as exc:  # report and go on: one broken attack must not hide the others
                error = f"{type(exc).__name__}: {exc}"
                break
            secs.append((time.perf_counter() - t, time.process_time() - c, scorer.cost.seconds,
                         scorer.rows, scorer.tokens))
            result = outcome, scorer
        if error is not None:
            print(f"  {label}: FAILED {error}")
            rows.append((label, None))
            continue
        outcome, scorer = result
        wall, cpu, scoring, n_rows, n_tokens = sorted(secs)[len(secs) // 2]
        passes = n_rows / plain_rows
        factor = (n_tokens / n_rows) / (plain_tokens / plain_rows) if n_rows else float("nan")
        if attack.name == "logit_lens":
            passes = outcome.cost.get("forward_batches", 0) / max(plain_batches, 1)
        what = describe(attack, outcome, handle, round(passes, 2), factor, plain_batches, len(forget))
        rows.append((label, (wall, cpu, scoring, wall - scoring, passes,
                             float(np.mean(outcome.values)), what, outcome.spec)))
        print(f"  {label}: {wall:.2f} s, CPU {cpu:.2f} s; load average {os.getloadavg()[0]:.2f}")

    runs += [plain() for _ in range(args.repeat - before)]
    t_plain = statistics.median(r[0] for r in runs)
    c_plain = statistics.median(r[1] for r in runs)
    print(f"plain {metric.name} pass: {', '.join(f'{r[0]:.3f}' for r in runs[before:]) or 'none'} s after the "
          f"attacks; median of all {len(runs)}: {t_plain:.3f} s wall, {c_plain:.3f} s CPU")
    rows = [(label, None if r is None else (r[0], r[0] / t_plain, r[1] / c_plain) + r[2:])
            for label, r in rows]
    print()
    print(f"attack cost vs one plain {metric.name} scoring pass ({t_plain:.3f} s) on {len(forget)} samples; "
          f"{'median of ' + str(args.repeat_attacks) + ' runs' if args.repeat_attacks > 1 else 'one run'} each")
    w = max([len(r[0]) for r in rows] + [len("(no attack)")])
    head = (f"{'attack':<{w}}  {'seconds':>8}  {'ratio':>7}  {'cpu ratio':>9}  {'scoring s':>9}  {'other s':>8}  "
            f"{'passes':>6}  {'mean ' + metric.name:>8}  cost consists of")
    print(head)
    print("-" * len(head))
    for label, r in rows:
        if r is None:
            print(f"{label:<{w}}  failed")
            continue
        wall, ratio, cpu_ratio, scoring, other, passes, mean, what, _ = r
        print(f"{label:<{w}}  {wall:8.2f}  {ratio:6.1f}x  {cpu_ratio:8.1f}x  {scoring:9.2f}  {other:8.2f}  "
              f"{passes:6.2f}  {mean:8.4f}  {what}")
    print(f"{'(no attack)':<{w}}  {t_plain:8.2f}  {1.0:6.1f}x  {1.0:8.1f}x  {'':>9}  {'':>8}  {1.0:6.2f}  "
          f"{np.mean(clean):8.4f}  1 scoring pass")
    print()
    print("ratio: wall seconds / the plain pass's median wall seconds; cpu ratio: the same with this "
          "process's CPU seconds (all threads); the two differ when other processes compete for the CPUs.")
    print("scoring s: time the Scorer spent in teacher-forced passes / generation; other s: the rest "
          "(weight snapshot, quantizing, training, restore, prompt building).")
    print("passes: samples scored / samples in the set (logit_lens: forward batches / plain batches).")
    print("canonical specs:")
    for label, r in rows:
        if r is not None:
            print(f"  {label:<{w}}  {r[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
