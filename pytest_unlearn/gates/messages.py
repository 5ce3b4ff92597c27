"""Failure messages of ``assert_forgotten`` and ``assert_retained``: what failed, the table
of conditions, the worst samples with what the model generates, and one next step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..formatting import number as fmt, text_table
from .measure import generate, generate_under
from .record import short
from .verdict import BOOTSTRAP_RESAMPLES

if TYPE_CHECKING:
    from ..suite import Suite
    from .measure import Measurement
    from .verdict import Figures

__all__ = ["forgotten_message", "worst_samples", "next_step", "retained_message", "MAX_SHOWN_SAMPLES",
           "MIN_SHOWN_SAMPLES"]

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
            lines.append(f"     prompt:    {short(s['prompt'])}")
            lines.append(f"     answer:    {short(s['answer'])}")
            if s.get("generated_under", "none") != "none":
                under = f" under {s['generated_under']}"
            else:
                under = f" (no attack; {s['attack']} cannot generate)" if s["attack"] != "none" else ""
            lines.append(f"     generated{under}: {short(s['generated'])}")
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


def retained_message(m, handle, dataset, score, orig, ratio, min_ratio, required, shown) -> str:
    word = "at least" if m.higher_is_more_knowledge else "at most"
    lines = [f"{m.name} ({m.description}; {m.direction}) on {dataset.name} ({len(dataset)} samples, "
             f"{dataset.source})",
             f"the {handle.name} model scores {fmt(score)} vs the original's {fmt(orig)}: a ratio of "
             f"{fmt(ratio)}, below min_ratio {fmt(min_ratio)} (it must score {word} {fmt(required)})",
             "", "samples that lost the most:"]
    for k, s in enumerate(shown, 1):
        lines.append(f"  {k}. sample {s['id']}: {m.name} {fmt(s['score'])} (original {fmt(s['original'])})")
        lines.append(f"     prompt:    {short(s['prompt'])}")
        lines.append(f"     answer:    {short(s['answer'])}")
        lines.append(f"     generated: {short(s['generated'])}")
    lines += ["", "next: unlearning took retained knowledge with it: make it gentler (fewer steps, a lower "
                  "learning rate, a larger retain-loss weight) or compare at equal retention "
                  "(assert_forgotten(..., calibrate=0.9)), and re-run"]
    return "\n".join(lines)
