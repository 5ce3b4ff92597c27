"""Failure messages of ``assert_forgotten`` and ``assert_retained``: what failed, the table
of conditions, the worst samples with what the model generates (for a multiple-choice metric:
the question, what the attack put around it, the choice the model picked and the correct one),
and one next step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..formatting import number as fmt, text_table
from .measure import generate, generate_under, picks
from .record import short
from .verdict import BOOTSTRAP_RESAMPLES

if TYPE_CHECKING:
    from ..suite import Suite
    from .measure import Measurement
    from .verdict import Figures

__all__ = ["forgotten_message", "worst_samples", "next_step", "retained_message", "retained_samples",
           "attack_fragment",
           "MAX_SHOWN_SAMPLES", "MIN_SHOWN_SAMPLES"]

MAX_SHOWN_SAMPLES = 5
MIN_SHOWN_SAMPLES = 3


def worst_samples(suite: "Suite", meas: "Measurement", fig: "Figures", threshold: float) -> list[dict]:
    """The samples shown in a failure: those beyond the threshold with the most knowledge
    (at most five; at least three shown), with the model's greedy answer (under the attack
    that was worst, where it can generate)."""
    m, dataset, worst, comps = meas.metric, meas.dataset, fig.worst, fig.conditions
    order = sorted(range(len(worst)), key=lambda i: -worst[i] if m.higher_is_more_knowledge else worst[i])
    leaking = [i for i in order if m.more_knowledge(worst[i], threshold)][:MAX_SHOWN_SAMPLES]
    chosen = leaking if len(leaking) >= MIN_SHOWN_SAMPLES else order[:MIN_SHOWN_SAMPLES]
    if _multiple_choice(m, dataset):
        return _choice_samples(suite, meas, fig, chosen)
    generated = generate(suite, meas.handle, dataset, chosen)
    under = ["none"] * len(chosen)
    by_attack: dict[str, list[int]] = {}
    for k, i in enumerate(chosen):
        if comps[fig.worst_at[i]] != "none":
            by_attack.setdefault(comps[fig.worst_at[i]], []).append(k)
    for label, ks in by_attack.items():  # what the attacked model produced, where the attack allows
        texts = generate_under(suite, meas.attacks[label], meas.handle, dataset, [chosen[k] for k in ks],
                               meas.outcomes.get(label))
        if texts is not None:
            for k, text in zip(ks, texts):
                generated[k], under[k] = text, label
    shown = []
    for i, text, gen_under in zip(chosen, generated, under):
        attack = comps[fig.worst_at[i]]
        outcome = meas.outcomes.get(attack)
        prompt = dataset.prompts[i]
        prompts = getattr(outcome, "prompts", None)
        if prompts is not None and prompts[i] is not None:
            prompt = prompts[i]
        details = getattr(outcome, "details", None)
        detail = details[i] if details is not None else None
        shown.append({"id": dataset.ids[i], "attack": attack, "score": float(worst[i]), "prompt": str(prompt),
                      "answer": str(dataset.answers[i]), "generated": str(text),
                      "generated_under": gen_under, "detail": None if detail is None else str(detail)})
    return shown


def _multiple_choice(m, dataset) -> bool:
    from ..multiple_choice import is_multiple_choice

    return getattr(m, "source", None) == "multiple_choice" and is_multiple_choice(dataset)


def _choice_samples(suite: "Suite", meas: "Measurement", fig: "Figures", chosen: list[int]) -> list[dict]:
    """The shown samples of a multiple-choice metric: no generation (a free answer is not what the
    metric scores) but the choice the model picked, read from the metric's own pass under the attack
    that was worst (on its recorded prompts or its attacked weights, where it can be re-run)."""
    from ..prompts import dataset_parts

    m, dataset, comps = meas.metric, meas.dataset, fig.conditions

    def aligned(got, n):
        return [got] * n if isinstance(got, str) else list(got)

    picked = aligned(picks(suite, m, meas.handle, dataset, chosen), len(chosen))
    under = ["none"] * len(chosen)
    by_attack: dict[str, list[int]] = {}
    for k, i in enumerate(chosen):
        if comps[fig.worst_at[i]] != "none":
            by_attack.setdefault(comps[fig.worst_at[i]], []).append(k)
    for label, ks in by_attack.items():
        got = generate_under(suite, meas.attacks[label], meas.handle, dataset, [chosen[k] for k in ks],
                             meas.outcomes.get(label), picks_of=m)
        if got is not None:
            for k, value in zip(ks, aligned(got, len(ks))):
                picked[k], under[k] = value, label
    base, frame, shown = dataset_parts(dataset), dataset.frame, []
    for k, i in enumerate(chosen):
        attack = comps[fig.worst_at[i]]
        outcome = meas.outcomes.get(attack)
        parts = getattr(outcome, "parts", None)
        attacked = parts[i] if parts is not None and parts[i] is not None else None
        prompts = getattr(outcome, "prompts", None)
        details = getattr(outcome, "details", None)
        choices = [str(c) for c in frame["choices"].iloc[i]]
        correct = int(frame["answer_index"].iloc[i])
        choice = picked[k] if isinstance(picked[k], int) else None
        shown.append({"id": dataset.ids[i], "attack": attack, "score": float(fig.worst[i]),
                      "prompt": str(prompts[i] if prompts is not None and prompts[i] is not None else dataset.prompts[i]),
                      "answer": str(dataset.answers[i]), "question": str(frame["question"].iloc[i]),
                      "attack_prompt": attack_fragment(base[i], attacked) if attacked is not None else None,
                      "choices": choices, "correct": correct, "picked": choice,
                      "generated": _choice(choices, choice) if choice is not None else str(picked[k]),
                      "generated_under": under[k],
                      "detail": None if details is None or details[i] is None else str(details[i])})
    return shown


def _choice(choices: list[str], index: int) -> str:
    from ..multiple_choice import LETTERS

    return f"{LETTERS[index]}. {choices[index]}"


def attack_fragment(base, attacked) -> str | None:
    """What a prompt attack put around a question (``PromptParts`` before and after), in words:
    the text before or after the question, a question asked another way, a system prompt, solved
    examples, the start of the answer; ``None`` when nothing changed."""
    out = []
    if attacked.system and attacked.system != base.system:
        out.append(f"system prompt {short(attacked.system, 120)!r}")
    if len(attacked.shots) > len(base.shots):
        out.append(f"{len(attacked.shots) - len(base.shots)} solved example(s) before the question")
    if attacked.question != base.question:
        at = attacked.question.find(base.question) if base.question else -1
        if at < 0:
            out.append(f"asked as {short(attacked.question, 240)!r}")
        else:
            before, after = attacked.question[:at].strip(), attacked.question[at + len(base.question):].strip()
            out += [f"before the question {short(before, 240)!r}"] if before else []
            out += [f"after the question {short(after, 240)!r}"] if after else []
    if attacked.prefill and attacked.prefill != base.prefill:
        out.append(f"the answer starts with {attacked.prefill.strip()!r}")
    return "; ".join(out) or None


def _sample_lines(s: dict) -> list[str]:
    """The lines of one shown sample after its heading."""
    if s["attack"] != "none" and s.get("generated_under", "none") == "none":
        fallback = f" (no attack; {s['attack']} cannot " + ("be re-run for this)" if "picked" in s else "generate)")
    else:
        fallback = ""
    under = f" under {s['generated_under']}" if s.get("generated_under", "none") != "none" else fallback
    if "picked" not in s:  # a generated answer
        return [f"     prompt:    {short(s['prompt'])}", f"     answer:    {short(s['answer'])}",
                f"     generated{under}: {short(s['generated'])}"]
    lines = [f"     question:  {short(s['question'])}"]
    if s.get("attack_prompt"):
        lines.append(f"     attack:    {short(s['attack_prompt'], 320)}")
    lines.append(f"     picked{under}: {short(s['generated'])}"
                 + (" (correct)" if s["picked"] is not None and s["picked"] == s["correct"] else ""))
    lines.append(f"     correct:   {short(_choice(s['choices'], s['correct']))}")
    return lines


def forgotten_message(m, threshold, reduce, label, dataset, rows, score, bound, confidence, seed, notes,
                      shown, n_leaking) -> str:
    from ..multiple_choice import chance_note
    from .forgotten import UNINFORMATIVE

    word = "at most" if m.higher_is_more_knowledge else "at least"
    lines = [f"{m.name} ({m.description}; {m.direction}) on {dataset.name} "
             f"({len(dataset)} samples, {dataset.source})",
             f"the {label} model scores {fmt(score)} (reduce={reduce}, worst case per sample over "
             f"{len(rows)} condition{'s' if len(rows) > 1 else ''}); it must be {word} {fmt(threshold)} "
             f"to count as forgotten"]
    lines += [chance] if (chance := chance_note(m, dataset)) else []
    if bound is not None:
        lines.append(f"{confidence:.0%} bootstrap bound ({BOOTSTRAP_RESAMPLES} resamples, seed {seed}): {fmt(bound)}")
    has_ref = any(r["reference"] is not None for r in rows)
    header = ["attack", "model", "original"] + (["reference"] if has_ref else []) + ["verdict"]
    body = []
    for r in rows:
        verdict = UNINFORMATIVE if r["verdict"] == "uninformative" else r["verdict"]
        if r.get("explained_by_reference") and r["verdict"] != "leak" and r["counted"] != r["score"]:
            verdict += (f" (on {r['explained_by_reference']} sample(s) no more than the reference: "
                        f"counted {fmt(r['counted'])})")
        body.append([r["attack"], fmt(r["score"]), fmt(r["original"])] + ([fmt(r["reference"])] if has_ref else [])
                    + [verdict])
    pad = [""] + ([""] if has_ref else [])
    if len(rows) > 1:
        body.append(["worst case", fmt(score)] + pad + ["leak" if m.more_knowledge(score, threshold) else "ok"])
    if bound is not None:
        body.append([f"{confidence:.0%} bound", fmt(bound)] + pad
                    + ["leak" if m.more_knowledge(bound, threshold) else "ok"])
    lines.append("")
    lines += ["  " + line for line in text_table(body, header, right=range(1, len(header) - 1))]
    if notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in notes]
    if shown:
        title = "worst leaking samples" if n_leaking >= len(shown) else "worst samples"
        lines += ["", f"{title} ({len(shown)} shown; {n_leaking} of {len(dataset)} beyond {fmt(threshold)}):"]
        for k, s in enumerate(shown, 1):
            lines.append(f"  {k}. sample {s['id']}: {m.name} {fmt(s['score'])} under {s['attack']}")
            lines += _sample_lines(s)
            if s.get("detail"):
                lines.append(f"     {s['attack']}: {short(s['detail'])}")
    lines += ["", "next: " + next_step(m, threshold, rows, score, bound)]
    return "\n".join(lines)


def next_step(m, threshold, rows, score, bound) -> str:
    """One actionable line that ends a failure message."""
    clean = rows[0]
    leaking = [r["attack"] for r in rows[1:] if r["verdict"] == "leak"]
    if m.more_knowledge(clean["counted"], threshold):
        return ("the model still states these facts with no attack: unlearn them (again, or with a stronger "
                "method or more steps) and re-run; the samples above are where to look first")
    if leaking or m.more_knowledge(score, threshold):
        which = ", ".join(leaking) if leaking else "the attacks, sample by sample"
        return (f"the knowledge is suppressed, not removed: {which} bring(s) it back; unlearn against that "
                "threat (e.g. a method robust to it, or unlearning under the attack) and re-run; do not drop "
                "the attack to make the gate pass")
    return (f"the score is within the threshold but the {BOOTSTRAP_RESAMPLES}-resample bootstrap bound "
            f"({fmt(bound)}) is not: more forget samples or a more complete unlearning narrow it")


def retained_samples(suite: "Suite", m, handle, dataset, chosen: list[int], mv, ov) -> list[dict]:
    """The samples shown when retention failed: the model's greedy answer, or for a multiple-choice
    metric the choice it picked and the correct one."""
    shown = [{"id": dataset.ids[i], "attack": "none", "score": float(mv[i]), "original": float(ov[i]),
              "prompt": str(dataset.prompts[i]), "answer": str(dataset.answers[i])} for i in chosen]
    if not _multiple_choice(m, dataset):
        for s, g in zip(shown, generate(suite, handle, dataset, chosen)):
            s["generated"] = str(g)
        return shown
    got = picks(suite, m, handle, dataset, chosen)
    for s, i, p in zip(shown, chosen, [got] * len(chosen) if isinstance(got, str) else got):
        choices = [str(c) for c in dataset.frame["choices"].iloc[i]]
        s.update(question=str(dataset.frame["question"].iloc[i]), attack_prompt=None, choices=choices,
                 correct=int(dataset.frame["answer_index"].iloc[i]), picked=p if isinstance(p, int) else None,
                 generated=_choice(choices, p) if isinstance(p, int) else str(p), generated_under="none")
    return shown


def retained_message(m, handle, dataset, score, orig, ratio, min_ratio, required, shown) -> str:
    word = "at least" if m.higher_is_more_knowledge else "at most"
    lines = [f"{m.name} ({m.description}; {m.direction}) on {dataset.name} ({len(dataset)} samples, "
             f"{dataset.source})",
             f"the {handle.name} model scores {fmt(score)} vs the original's {fmt(orig)}: a ratio of "
             f"{fmt(ratio)}, below min_ratio {fmt(min_ratio)} (it must score {word} {fmt(required)})",
             "", "samples that lost the most:"]
    for k, s in enumerate(shown, 1):
        lines.append(f"  {k}. sample {s['id']}: {m.name} {fmt(s['score'])} (original {fmt(s['original'])})")
        lines += _sample_lines(s)
    lines += ["", "next: unlearning took retained knowledge with it: make it gentler (fewer steps, a lower "
                  "learning rate, a larger retain-loss weight) or compare at equal retention "
                  "(assert_forgotten(..., calibrate=0.9)), and re-run"]
    return "\n".join(lines)
