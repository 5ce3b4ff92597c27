"""Property tests of the attack spec parser: any string either parses to an Attack whose
canonical spec parses back to the same attack, or fails with AttackError /
UnknownNameError (never another exception)."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_unlearn.attacks import ATTACKS, Attack, parse_attack  # noqa: E402
from pytest_unlearn.errors import AttackError, UnknownNameError  # noqa: E402

NAMES = ATTACKS.names()
PARAM_NAMES = sorted({p.name for n in NAMES for p in ATTACKS.get(n).PARAMS})
VALUE_BITS = ["4", "8", "nf4", "rtn", "true", "false", "auto", "all", "-1", "0", "2e-5", "1.5", "forget",
              "retain", "x.jsonl", '"', '\\"', ",", "=", ":", " ", "", "novel", "archivist", "nan", "inf",
              "sample", "universal", "prefix", "suffix"]


def check(spec):
    try:
        attack = parse_attack(spec)
    except (AttackError, UnknownNameError):
        return
    assert isinstance(attack, Attack)
    again = parse_attack(attack.spec)
    assert again == attack and again.spec == attack.spec and again.params == attack.params


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text(spec):
    check(spec)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=40))
def test_arbitrary_ascii_after_a_known_name(rest):
    for name in NAMES:
        check(f"{name}:{rest}")


spec_strategy = st.builds(
    lambda name, items: name + ":" + ",".join(items),
    st.sampled_from(NAMES),
    st.lists(st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PARAM_NAMES),
                  st.lists(st.sampled_from(VALUE_BITS), min_size=1, max_size=3).map("".join)),
        st.sampled_from(VALUE_BITS)), max_size=4),
)


@settings(max_examples=500, deadline=None)
@given(spec_strategy)
def test_grammar_shaped_specs(spec):
    check(spec)


def test_chained_specs_parse_or_fail_cleanly():
    """Any two specs joined by '+' (and arbitrary text around '+') either parse to an attack whose
    canonical spec parses back to it, or fail with AttackError / UnknownNameError."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(spec_strategy, min_size=2, max_size=3), st.sampled_from(["+", " + ", "+ "]))
    def joined(specs, sep):
        check(sep.join(specs))

    @settings(max_examples=200, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list("+:=,\" relarnquitz_8")), max_size=30))
    def plus_text(text):
        check(text)
        check("relearn+" + text)

    joined()
    plus_text()


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1).filter(lambda t: t.strip()))
def test_any_prefill_text_round_trips(text):
    attack = ATTACKS.get("prefill")(text=text)
    assert parse_attack(attack.spec).text == text


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.floats(), st.booleans(), st.lists(st.integers()), st.binary()))
def test_non_string_values_from_python(value):
    for name in NAMES:
        cls = ATTACKS.get(name)
        for p in cls.PARAMS:
            try:
                attack = cls(**{p.name: value})
            except AttackError:
                continue
            assert parse_attack(attack.spec) == attack
