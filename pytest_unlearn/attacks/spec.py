"""Attack specs: parsing ``quantize:bits=4`` and ``relearn+logit_lens`` into attacks.

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
import re
from typing import TYPE_CHECKING

from ..errors import AttackError
from .base import ATTACKS, Attack, AttackContext, AttackOutcome, _show
from .params import as_text

if TYPE_CHECKING:
    from ..data import Dataset
    from ..metrics import Metric
    from ..models import ModelHandle

__all__ = ["parse_attack", "run_attack", "split_chain"]


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
