"""The attack framework: :class:`Attack`, its context and outcome, the spec parser, the registry.

An attack spec is what users type in ``assert_forgotten(under_attack=[...])``::

    quantize                       every parameter at its default
    quantize:4                     a bare value sets the first parameter (bits)
    quantize:bits=4,method=nf4     named parameters, in any order
    logit_lens:layers=4,8          list parameters take comma-separated values
    prefill:text="Sure, here it is:"   quote values that hold commas or '='

Values are checked and coerced to the parameter's type; a malformed spec raises
:class:`~pytest_unlearn.errors.AttackError` saying what is wrong and listing the accepted
parameters, and an unknown attack name raises
:class:`~pytest_unlearn.errors.UnknownNameError` suggesting the nearest name.
:attr:`Attack.spec` is the canonical form (every parameter, defaults included, sorted by
name), so equal attacks have equal specs and ``parse_attack(a.spec) == a``.
"""

from __future__ import annotations

import difflib
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from ..errors import AttackError
from ..metrics import Metric, get_metric
from ..registry import Registry
from .params import Param, as_text, format_value

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


def _generate_rows(ctx: AttackContext, handle: "ModelHandle", data: "Dataset", rows, parts=None) -> list[str]:
    """Greedy answers of ``handle`` for some rows (their prompt parts, or ``parts``)."""
    from ..prompts import dataset_parts

    rows = [int(i) for i in rows]
    if parts is None:
        base = dataset_parts(data)
        parts = [base[i] for i in rows]
    names = [f"{data.source} sample {data.ids[i]}" for i in rows]
    return list(ctx.scorer.generate(handle, parts, names))


def normalise_answer(text) -> str:
    """An answer reduced for "is this the same fact?": casefolded, with every punctuation
    and whitespace character removed (``"Paris."`` and ``" paris"`` are equal)."""
    return "".join(ch for ch in str(text).casefold() if ch.isalnum())


def same_answer(a: str, b: str) -> bool:
    """Whether two normalised answers are the same fact (an empty answer matches nothing)."""
    return bool(a) and a == b


# ---------------------------------------------------------------- the base class

class Attack:
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

    def _run(self, metric: Metric, model: "ModelHandle", data: "Dataset", ctx: AttackContext) -> AttackOutcome:
        raise NotImplementedError

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
                 outcome: AttackOutcome | None = None) -> list[str] | None:
        """Greedy answers to ``rows`` of ``data`` *under this attack*, for failure messages:
        from the attacked prompts that ``outcome`` recorded (prompt attacks), or, for attacks
        that change the weights, on the attacked weights before they are restored.  ``None``
        where the attack cannot generate (e.g. ``logit_lens`` reads intermediate layers)."""
        if outcome is not None and outcome.parts is not None:
            return _generate_rows(ctx, model, data, rows, [outcome.parts[int(i)] for i in rows])
        return None


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
    ATTACKS.register(cls.name, cls)
    return cls


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (a backslash escapes inside quotes)."""
    parts, buf, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if quoted:
        raise ValueError("unterminated double quote")
    parts.append("".join(buf))
    return parts


def _unquote(text: str) -> str:
    """``"a \\"b\\""`` -> ``a "b"``; unquoted text is returned as it is."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == '"' and stripped[-1] == '"':
        out, escaped = [], False
        for ch in stripped[1:-1]:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                raise ValueError("a double quote inside a quoted value must be escaped as \\\"")
            else:
                out.append(ch)
        return "".join(out)
    if '"' in text:
        raise ValueError(f"stray double quote in {text!r}; quote the whole value")
    return text


_STEP_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::|$)")


def split_chain(spec: str) -> list[str]:
    """The steps of a chained spec (``relearn:steps=5+logit_lens`` -> two specs).

    A ``+`` outside double quotes starts a new step when the text after it begins with an
    attack name (a registered one or a near miss, so that a typo gets a suggestion), then
    ``:`` or the end; any other ``+`` belongs to a value (``prefill:text=1+1``).
    """
    try:
        pieces = _split_top(spec, "+")
    except ValueError:
        return [spec]  # the step's own parser reports the unterminated quote
    names = ATTACKS.names()
    steps = [pieces[0]]
    for piece in pieces[1:]:
        m = _STEP_NAME.match(piece)
        word = m.group(1).lower() if m else ""
        if word and (word in names or difflib.get_close_matches(word, names, n=1, cutoff=0.75)):
            steps.append(piece)
        else:
            steps[-1] += "+" + piece
    return steps


def parse_attack(spec: "str | Attack") -> Attack:
    """An :class:`Attack` from a spec string (or the attack itself); ``a+b`` is a chain
    (:class:`~pytest_unlearn.attacks.chain.Chain`)."""
    if isinstance(spec, Attack):
        return spec
    if not isinstance(spec, str):
        raise AttackError(f"an attack is a spec string such as 'quantize:4' or an Attack object, "
                          f"got {type(spec).__name__} {_show(spec)}")
    steps = split_chain(spec)
    if len(steps) > 1:
        from .chain import Chain

        return Chain([_parse_one(s) for s in steps], given=spec)
    return _parse_one(spec)


def _parse_one(spec: str) -> Attack:
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise AttackError(f"attack spec {spec!r} has no attack name (known: {', '.join(ATTACKS.names())})")
    cls = ATTACKS.get(name)  # UnknownNameError with suggestions
    if not sep or not rest.strip():
        return cls()
    try:
        tokens = _split_top(rest, ",")
    except ValueError as exc:
        raise cls.error(f"cannot parse {spec!r}: {exc}") from None
    by_name = {p.name: p for p in cls.PARAMS}
    raw: dict[str, list[str]] = {}
    current: str | None = None
    for position, token in enumerate(tokens):
        key, eq, value = token.partition("=")
        key = key.strip().lower()
        if eq and '"' not in key and key in by_name:
            if key in raw:
                raise cls.error(f"parameter {key!r} is given twice in {spec!r}")
            raw[key], current = [value], key
        elif current is not None and by_name[current].multi:
            raw[current].append(token)  # the next piece of a list or of free text
        elif eq and '"' not in key:
            cls._coerce({key: value})  # raises: unknown parameter (with a suggestion)
        elif position == 0 and cls.PARAMS:
            current = cls.PARAMS[0].name
            raw[current] = [token]
        elif not cls.PARAMS:
            raise cls.error(f"{spec!r} gives a value but there is nothing to set")
        else:
            raise cls.error(f"{token.strip()!r} in {spec!r} has no name: only the first value may "
                            f"be bare (it sets {cls.PARAMS[0].name}); write name=value")
    given = {}
    for key, pieces in raw.items():
        try:
            given[key] = _unquote(",".join(pieces))
        except ValueError as exc:
            raise cls.error(f"{key}: {exc}") from None
        if not by_name[key].multi or by_name[key].coerce is not as_text:
            given[key] = given[key].strip()
    return cls(**given)


def run_attack(spec: "str | Attack", metric: "str | Metric", model: "ModelHandle", data: "Dataset",
               ctx: AttackContext) -> AttackOutcome:
    """``parse_attack(spec).run(metric, model, data, ctx)``."""
    return parse_attack(spec).run(metric, model, data, ctx)


# ---------------------------------------------------------------- controls

def _as_knowledge(value, m: Metric):
    """A metric value on one scale for every metric: higher = more knowledge, and 0 = the
    metric's chance ("no knowledge") level; ``None`` for metrics without one.

    * ``es``, ``em``, ``prob``, ``rouge_l``: the value itself (0 = none of the answer);
    * ``ppl``: ``1 / ppl`` and ``mia_loss`` (mean NLL): ``exp(-NLL)``, both the geometric
      mean probability of the answer tokens; ``mia_min_k``: ``exp(value)``, the same over
      the least likely 40% of the tokens;
    * ``truth_ratio``: ``1 - R`` (``R = 1``: no preference between true and false answers).

    ``mia_zlib`` and ``mia_min_k_pp`` have no chance level; they are judged only against a
    reference model's score (:func:`knowledge_kept`).
    """
    v = np.asarray(value, dtype=np.float64)
    name = m.name
    if name in ("ppl",):
        return 1.0 / v
    if name in ("mia_loss",):
        return np.exp(-v)
    if name in ("mia_min_k",):
        return np.exp(v)
    if name in ("truth_ratio",):
        return 1.0 - v
    if m.higher_is_more_knowledge and math.isfinite(m.lower_bound) and math.isfinite(m.upper_bound):
        return v - m.lower_bound  # es, em, prob, rouge_l and bounded metrics registered elsewhere
    return None  # no chance level known: compare with a reference, or not at all


def knowledge_kept(clean, attacked, metric: "str | Metric", reference=None) -> float | None:
    """The share of the original's knowledge that survives an attack, on one scale for
    every metric: ``(K(attacked) - K0) / (K(clean) - K0)``.

    ``K`` maps a score onto the knowledge scale of :func:`_as_knowledge` (higher = more,
    0 = chance), so ES 1.0 -> 0.4 keeps 0.4 and perplexity 1.01 -> 1.03 (token probability
    0.990 -> 0.971) keeps 0.98.  ``K0``, the "no knowledge" level, is the chance level, or,
    when ``reference`` (the never-knew reference model's score with no attack) is given, the
    reference's knowledge: then the share is of the original's *distance to the reference*.
    Arrays (per-sample scores) are mapped per sample, then averaged.  ``None`` when there
    is nothing to measure: a metric with no chance level and no reference, a non-finite
    score, or an original that shows no more knowledge than the no-knowledge level.
    """
    m = get_metric(metric)
    scale = (lambda v: _as_knowledge(v, m)) if _as_knowledge(0.5, m) is not None else None
    if scale is None and reference is not None:  # no chance level: the raw score, oriented
        sign = 1.0 if m.higher_is_more_knowledge else -1.0
        scale = lambda v: sign * np.asarray(v, dtype=np.float64)  # noqa: E731
    if scale is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        kc, ka = float(np.mean(scale(clean))), float(np.mean(scale(attacked)))
        k0 = float(np.mean(scale(reference))) if reference is not None else 0.0
    if not all(math.isfinite(x) for x in (kc, ka, k0)) or kc <= k0:
        return None
    return (ka - k0) / (kc - k0)


def judged_by_control(attack) -> bool:
    """Whether an attack can be uninformative: attacks that change what the model computes
    (``weight`` and ``representation`` kinds) can break it; a prompt attack cannot, so
    the original failing under one makes it a weak attack, not a broken model."""
    return getattr(attack, "kind", "") != "prompt"


def attack_is_uninformative(clean_original, attacked_original, metric: "str | Metric",
                            tolerance: float = 0.5, *, reference=None, attack=None) -> bool:
    """True when an attack destroys the *original* model's knowledge: the original keeps
    less than ``tolerance`` of it (:func:`knowledge_kept`, measured from the reference's
    score when one is given, else from the metric's chance level).  With ``attack``, only
    attacks :func:`judged_by_control` can be uninformative.  This one rule serves the
    assertions and the metric audit.  The paper: such a weight attack must be reported as
    uninformative, not as "still forgotten".
    """
    if attack is not None and not judged_by_control(attack):
        return False
    if not 0 < tolerance <= 1:
        return False
    kept = knowledge_kept(clean_original, attacked_original, metric, reference)
    return kept is not None and kept < tolerance
