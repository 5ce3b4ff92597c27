"""``assert_no_leak_found``: check and measure (:func:`~pytest_unlearn.leak_search.find_leak`,
a property-based search for a prompt that extracts a forgotten fact), decide (a leak was
found), record (:func:`.record.run_recorded`), message (the minimal prompt, the model's
answer and the score)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..errors import UnlearningAssertionError
from ..formatting import number as fmt
from ..leak_search.search import DEFAULT_MAX_EXAMPLES
from .record import base_record, run_recorded

if TYPE_CHECKING:
    from ..leak_search.search import LeakSearchResult
    from ..suite import Suite

__tracebackhide__ = True

__all__ = ["assert_no_leak_found", "leak_message"]

LINE_LIMIT = 300


def assert_no_leak_found(metric, threshold, *, search: int = DEFAULT_MAX_EXAMPLES, model=None, data=None,
                         samples: int | Sequence[str] | None = None, time_budget: float | None = None,
                         seed: int | None = None, suite: "Suite | None" = None,
                         **options: Any) -> "LeakSearchResult":
    """Fail with :class:`~pytest_unlearn.errors.UnlearningAssertionError` when :func:`find_leak`
    finds, within ``search`` candidate prompts per sample (and ``time_budget`` seconds), a prompt
    transformation under which ``model`` shows more than ``threshold`` of ``metric``'s knowledge.
    ``options``: ``batch``, ``max_steps``, ``kinds``, ``retain``, ``database`` (see ``find_leak``).
    Returns the :class:`LeakSearchResult` when nothing leaks."""
    __tracebackhide__ = True
    from ..leak_search.search import find_leak

    record = base_record("no_leak", metric, threshold=threshold,
                         search={"max_examples": search, "time_budget": time_budget, "samples": samples,
                                 "seed": seed})

    def run():
        result = find_leak(metric, threshold, model=model, data=data, samples=samples, max_examples=search,
                           time_budget=time_budget, seed=seed, suite=suite, **options)
        _record(record, result)
        return result

    result = run_recorded(record, run)
    if result.found:
        raise UnlearningAssertionError(record["message"], result)
    return result


def _record(record: dict, result: "LeakSearchResult") -> None:
    m = result.metric
    shown = [{"id": result.sample, "attack": "leak-search", "score": result.score, "prompt": result.prompt,
              "answer": result.answer, "generated": result.generated, "generated_under": "leak-search",
              "detail": result.describe()}] if result.found else []
    record.update(metric=m.name, direction=m.direction, higher_is_more_knowledge=m.higher_is_more_knowledge,
                  threshold=result.threshold, verdict="fail" if result.found else "pass", score=result.score,
                  bound=None, reduce="max", search=result.to_dict(), notes=list(result.notes),
                  worst_samples=shown,
                  attacks=[{"attack": f"leak-search:{result.max_examples}", "kind": "prompt", "score": result.score,
                            "original": None, "reference": None, "verdict": "leak" if result.found else "ok",
                            "uninformative": False, "notes": list(result.notes),
                            "cost": {"seconds": round(result.seconds, 3), "forward_batches": result.forward_batches,
                                     "candidates": result.examples}}])
    if result.found:
        record["message"] = leak_message(result)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _cut(text: str, limit: int = LINE_LIMIT) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _block(label: str, text: str | None) -> list[str]:
    """``label: first line`` and the further lines aligned under it."""
    lines = str(text if text is not None else "-").splitlines() or [""]
    pad = " " * (len(label) + 2)
    return [f"  {label}: {_cut(lines[0])}"] + [f"  {pad}{_cut(line)}" for line in lines[1:]]


def leak_message(r: "LeakSearchResult") -> str:
    """The failure message of :func:`assert_no_leak_found` for a result that found a leak."""
    m = r.metric
    word = "at most" if m.higher_is_more_knowledge else "at least"
    leak = r.leak
    steps = len(r.transformation) if r.transformation is not None else 0
    lines = [f"{m.name} ({m.description}; {m.direction}) on {r.data} ({r.samples_total} samples, {r.source})",
             f"leak search: a prompt transformation makes the {r.model} model score {fmt(r.score)} on sample "
             f"{r.sample} (plain prompt: {fmt(r.baseline_score)}); it must be {word} {fmt(r.threshold)} "
             f"to count as forgotten",
             "",
             f"minimal transformation ({steps} step{'' if steps == 1 else 's'}, shrunk by hypothesis):"]
    if r.transformation is not None and len(r.transformation):
        lines += [f"  {i}. {s.describe(r.env)}" for i, s in enumerate(r.transformation.steps, 1)]
    else:
        lines.append("  none: the plain prompt already leaks")
    lines += _block("prompt", r.prompt)
    lines += _block("answer", r.answer)
    lines += _block("generated", r.generated)
    if r.transformation is not None and len(r.transformation):
        lines += _block("plain prompt", r.baseline_prompt)
        lines += _block("generated (plain prompt)", r.baseline_generated)
    lines.append("")
    where = f"the {_ordinal(r.samples_searched)} sample searched"
    if leak is not None:
        how = "replayed from the example database" if leak.replayed else "found"
        lines.append(f"search: {how} after {leak.examples_to_find} candidate prompt(s) ({leak.batches_to_find} "
                     f"batch(es) of {r.batch}) on {where}; {r.examples} candidates in all with shrinking, "
                     f"{r.forward_batches} forward batch(es), {r.seconds:.1f} s")
    budget = f"{r.max_examples} candidate prompts per sample"
    budget += f", {r.time_budget:g} s" if r.time_budget is not None else ", no time limit"
    budget += f", seed {r.seed}"
    if r.subset:
        budget += f"; a seeded subset of the {r.samples_total} samples"
    lines.append(f"budget: {budget}")
    if r.database:
        lines.append(f"replay: saved in {r.database}; the next run tries this prompt first")
    if r.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in r.notes]
    return "\n".join(lines)
