"""The attack framework: :class:`Attack`, its context and outcome, the registry.

Every attack subclasses :class:`Attack` (its parameters, canonical spec, ``run``) and is
registered by name with :func:`register_attack`.  Attack specs such as ``quantize:bits=4``
are parsed in :mod:`.spec` (:func:`parse_attack`, :func:`split_chain`, :func:`run_attack`);
the control rules that say whether an attack is informative (:func:`knowledge_kept`,
:func:`attack_is_uninformative`) are in :mod:`.controls`.  Both are importable from here as
before.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from ..errors import AttackError
from ..metrics import Metric, get_metric
from ..registry import Registry
from .controls import attack_is_uninformative, judged_by_control, knowledge_kept
from .params import Param, format_value

if TYPE_CHECKING:
    from ..cache import ResultCache
    from ..data import Dataset
    from ..models import ModelHandle
    from ..scoring import Scorer

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackOutcome", "Param", "attack_is_uninformative",
           "judged_by_control", "knowledge_kept", "normalise_answer", "parse_attack", "register_attack",
           "run_attack", "split_chain", "worst_case"]


# ---------------------------------------------------------------- context and outcome

@dataclass
class AttackContext:
    """What an attack may use besides the model and data it attacks."""

    scorer: "Scorer"
    original: "ModelHandle | None" = None  # for attacks that need it
    forget: "Dataset | None" = None        # the full forget set (icl from other forget items)
    retain: "Dataset | None" = None        # icl shots; relearn on retain
    seed: int = 0
    progress: bool = False
    cache: "ResultCache | None" = None     # attack-level result cache (weight attacks)


@dataclass
class AttackOutcome:
    """Per-sample scores under one attack (aligned with the data rows)."""

    values: np.ndarray          # worst case (most knowledge) over the attack's variants
    cost: dict                  # seconds, forward_batches, training_steps (+ cached)
    details: list[str] | None   # per sample: the variant that gave the worst case
    prompts: list[str] | None   # per sample: the attacked prompt text (None for weight attacks)
    notes: list[str] = field(default_factory=list)
    spec: str = ""              # the canonical spec of the attack that produced it
    excluded: int = 0           # inputs left out because their answer equals a scored one
                                # (icl shot candidates over all samples, relearn training rows)
    parts: list | None = None   # per sample: the attacked PromptParts (prompt attacks), to generate from


def _generate_rows(ctx: AttackContext, handle: "ModelHandle", data: "Dataset", rows, parts=None,
                   read=None) -> list:
    """Greedy answers of ``handle`` for some rows (their prompt parts, or ``parts``), or what
    ``read(handle, rows_data, parts, names)`` reads from it instead (see :meth:`Attack.generate`)."""
    from ..prompts import dataset_parts

    rows = [int(i) for i in rows]
    if parts is None:
        base = dataset_parts(data)
        parts = [base[i] for i in rows]
    names = [f"{data.source} sample {data.ids[i]}" for i in rows]
    if read is not None:
        return list(read(handle, data.subset(rows), parts, names))
    return list(ctx.scorer.generate(handle, parts, names))


def normalise_answer(text) -> str:
    """An answer reduced for "is this the same fact?": casefolded, with every punctuation
    and whitespace character removed (``"Paris."`` and ``" paris"`` are equal)."""
    return "".join(ch for ch in str(text).casefold() if ch.isalnum())


def same_answer(a: str, b: str) -> bool:
    """Whether two normalised answers are the same fact (an empty answer matches nothing)."""
    return bool(a) and a == b


# ---------------------------------------------------------------- the base class

class Attack(ABC):
    """Base class of every attack.  Subclasses set ``name``, ``kind``, ``cost_hint`` and
    ``PARAMS`` (the first is the one a bare value in a spec sets) and implement ``_run``.

    Construct from Python with keywords (``Quantize(bits=8)``) or positionally in
    ``PARAMS`` order; every value is checked and coerced, and every parameter is
    readable as an attribute (``attack.bits``).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "prompt" | "weight" | "representation"
    cost_hint: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    follows: ClassVar[str] = ""  # non-empty: why this attack cannot follow another in a chain

    def __init__(self, *args, **kwargs):
        if len(args) > len(self.PARAMS):
            raise self.error(f"takes at most {len(self.PARAMS)} positional parameter(s), got {len(args)}")
        given: dict[str, Any] = {}
        for p, value in zip(self.PARAMS, args):
            given[p.name] = value
        for key, value in kwargs.items():
            if key in given:
                raise self.error(f"parameter {key!r} is given twice")
            given[key] = value
        self.params = self._coerce(given)
        self._check()

    # -- parameters
    @classmethod
    def param_names(cls) -> list[str]:
        return [p.name for p in cls.PARAMS]

    @classmethod
    def accepted(cls) -> str:
        if not cls.PARAMS:
            return f"{cls.name} takes no parameters"
        return f"{cls.name} accepts: " + "; ".join(p.describe() for p in cls.PARAMS)

    @classmethod
    def error(cls, message: str) -> AttackError:
        return AttackError(f"attack {cls.name!r}: {message}. {cls.accepted()}")

    @classmethod
    def _coerce(cls, given: dict[str, Any]) -> dict[str, Any]:
        by_name = {p.name: p for p in cls.PARAMS}
        out = {}
        for key, value in given.items():
            p = by_name.get(key)
            if p is None:
                near = difflib.get_close_matches(str(key), list(by_name), n=1, cutoff=0.5)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise cls.error(f"unknown parameter {key!r}{hint}")
            try:
                out[key] = p.coerce(value)
            except ValueError as exc:
                raise cls.error(f"{key}={_show(value)}: {exc}") from None
        return {p.name: out.get(p.name, p.default) for p in cls.PARAMS}

    def _check(self) -> None:
        """Cross-parameter checks (override; raise ``self.error(...)``)."""

    def __getattr__(self, key: str):
        params = self.__dict__.get("params")
        if params is not None and key in params:
            return params[key]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {key!r}")

    @property
    def spec(self) -> str:
        """Canonical spec: the name and every parameter (defaults included), sorted."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={format_value(v)}" for k, v in sorted(self.params.items()))

    def __eq__(self, other) -> bool:
        return isinstance(other, Attack) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __str__(self) -> str:
        return self.spec

    # -- running
    def run(self, metric: "str | Metric", model: "ModelHandle", data: "Dataset",
            ctx: AttackContext) -> AttackOutcome:
        """Score ``metric`` on ``data`` under this attack (worst case per sample).

        Fills in the cost: wall seconds, forward batches the scorer ran (unless the
        attack counted its own) and training steps.
        """
        m = get_metric(metric)
        scorer_cost = ctx.scorer.cost
        before = scorer_cost.forward_passes + scorer_cost.generations
        t0 = time.perf_counter()
        outcome = self._run(m, model, data, ctx)
        outcome.cost["seconds"] = round(time.perf_counter() - t0, 3)
        outcome.cost.setdefault("forward_batches", scorer_cost.forward_passes + scorer_cost.generations - before)
        outcome.cost.setdefault("training_steps", 0)
        outcome.spec = self.spec
        outcome.values = np.asarray(outcome.values, dtype=np.float64)
        if len(outcome.values) != len(data):
            raise AttackError(f"attack {self.spec}: internal error, {len(outcome.values)} values "
                              f"for {len(data)} samples")
        return outcome

    @abstractmethod
    def _run(self, metric: Metric, model: "ModelHandle", data: "Dataset", ctx: AttackContext) -> AttackOutcome:
        """Score ``data`` under the attack: one value per row (the attack's worst variant)."""

    def attacked(self, model: "ModelHandle", data: "Dataset", ctx: AttackContext, only=None):
        """Weight attacks that can start a chain (``quantize+paraphrase``) are generators of
        ``(label, rows, handle)``: the attacked weights (in place, under a derived handle)
        and the rows of ``data`` they may score (only variants scoring a row in ``only``,
        when given); every changed tensor is put back bit for bit when the generator moves
        on or is closed.  Attacks that cannot start a chain do not override this."""
        raise AttackError(f"attack {self.spec}: cannot start a chain (it does not hand over attacked weights)")

    def chain_extra(self, data: "Dataset", ctx: AttackContext) -> list:
        """What besides the spec, seed, model and data decides :meth:`attacked`'s weights (cache keys)."""
        return []

    def generate(self, model: "ModelHandle", data: "Dataset", rows: Sequence[int], ctx: AttackContext,
                 outcome: AttackOutcome | None = None, read=None) -> list | None:
        """Greedy answers to ``rows`` of ``data`` *under this attack*, for failure messages:
        from the attacked prompts that ``outcome`` recorded (prompt attacks), or, for attacks
        that change the weights, on the attacked weights before they are restored.  ``None``
        where the attack cannot generate (e.g. ``logit_lens`` reads intermediate layers).
        ``read(handle, rows_data, parts, names)``, when given, is read from the attacked model
        instead of greedy answers (the choice a multiple-choice metric counts as picked)."""
        wanted = [int(i) for i in rows]
        if outcome is not None and outcome.parts is not None:
            return _generate_rows(ctx, model, data, wanted, [outcome.parts[i] for i in wanted], read)
        if type(self).attacked is Attack.attacked:
            return None
        # the attacked weights of the variants holding ``rows`` (relearn's folds come from the
        # session memo, or are trained again: same seed, same weights), restored after each
        out: dict[int, Any] = {}
        with contextlib.closing(self.attacked(model, data, ctx, set(wanted))) as variants:
            for _, variant_rows, handle in variants:
                held = {int(r) for r in variant_rows}
                mine = [i for i in wanted if i in held and i not in out]
                if mine:
                    out.update(zip(mine, _generate_rows(ctx, handle, data, mine, read=read)))
        return [out[i] for i in wanted]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def worst_case(metric: Metric, stacked: Sequence[np.ndarray], names: Sequence[str]
               ) -> tuple[np.ndarray, list[str]]:
    """Per-sample "most knowledge" over variants, and the name of the variant that gave it.

    ``stacked`` holds one array per variant (NaN where a variant does not apply to a
    sample); ties go to the first variant.
    """
    arr = np.vstack([np.asarray(v, dtype=np.float64) for v in stacked])
    best = metric.knowledge_max(arr)
    oriented = arr if metric.higher_is_more_knowledge else -arr
    choice = np.argmax(np.where(np.isnan(oriented), -np.inf, oriented), axis=0)
    return np.asarray(best, dtype=np.float64), [names[i] for i in choice]


# ---------------------------------------------------------------- registry and parser

#: The entry-point group through which another distribution adds attacks (see docs/extending.md).
ATTACK_ENTRY_POINTS = "pytest_unlearn.attacks"
ATTACK_KINDS = ("prompt", "weight", "representation")


def _adopt_attack(obj) -> "tuple[str, type[Attack]] | None":
    return (obj.name, obj) if isinstance(obj, type) and issubclass(obj, Attack) else None


ATTACKS: Registry[type[Attack]] = Registry("attack", entry_point_group=ATTACK_ENTRY_POINTS, adopt=_adopt_attack)


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register an :class:`Attack` subclass under its ``name`` (a word), so that
    ``under_attack=[...]`` and the audit accept it by name.  Its ``kind`` must be ``"prompt"``,
    ``"weight"`` or ``"representation"``; a name already registered raises
    :class:`~pytest_unlearn.errors.RegistrationError`."""
    from ..errors import RegistrationError

    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise RegistrationError(f"register_attack takes an Attack subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cls.name):
        raise RegistrationError(f"attack {cls.__name__}: name must be a word (letters, digits, '_'), "
                                f"got {cls.name!r}")
    if cls.kind not in ATTACK_KINDS:
        raise RegistrationError(f"attack {cls.name!r}: kind must be one of {', '.join(ATTACK_KINDS)}, "
                                f"got {cls.kind!r}")
    if getattr(cls, "__abstractmethods__", None):
        raise RegistrationError(f"attack {cls.name!r}: implement {', '.join(sorted(cls.__abstractmethods__))} "
                                f"(it scores the data under the attack; see docs/extending.md)")
    ATTACKS.register(cls.name, cls)
    return cls


# the spec parser, importable from here as before; it imports the names above, so it comes
# last (the package imports this module first)
from .spec import parse_attack, run_attack, split_chain  # noqa: E402
