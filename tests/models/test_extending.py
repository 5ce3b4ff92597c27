"""Extension points: register_metric / register_attack, and entry-point discovery (loaded lazily
on the first registry lookup, never at plugin import; a name registered twice raises)."""

from __future__ import annotations

import importlib.metadata
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pytest_unlearn
from pytest_unlearn.attacks import ATTACKS, Attack, AttackOutcome, parse_attack
from pytest_unlearn.errors import AttackError, RegistrationError, UnknownNameError
from pytest_unlearn.metrics import METRICS, get_metric
from pytest_unlearn.registry import Registry


@pytest.fixture
def fresh_registries(monkeypatch):
    """The real registries with their built-in items, entry points not yet loaded; restored after."""
    for reg in (METRICS, ATTACKS):
        reg.names()  # whatever is installed is loaded before the copy
        monkeypatch.setattr(reg, "_items", dict(reg._items))
        monkeypatch.setattr(reg, "_entry_points_loaded", False)


def fake_distribution(monkeypatch, tmp_path, module: str, source: str, groups: dict[str, list[tuple]]):
    """A module on sys.path and ``importlib.metadata.entry_points`` answering for its groups, as
    an installed distribution ``acme-unlearn`` declaring ``[project.entry-points.<group>]``."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        group = kwargs.get("group")
        if group in groups:
            calls.append(group)
            return [importlib.metadata.EntryPoint(name=n, value=v, group=group) for n, v in groups[group]]
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return calls


ACME = """
    import math
    import pytest_unlearn
    from pytest_unlearn.attacks import Attack, AttackOutcome


    def register():
        pytest_unlearn.register_metric(
            name="acme_top_share", higher_is_more_knowledge=True, range=(0.0, 1.0),
            fn=lambda stats, answer: float(sum(stats["correct"])) / len(stats["correct"]),
            description="share of answer tokens that are the argmax (a copy of em)")


    class Blank(Attack):
        name = "acme_blank"
        kind = "prompt"

        def _run(self, metric, model, data, ctx):
            raise NotImplementedError
"""


def test_a_metric_from_an_entry_point_is_found_and_scores(fresh_registries, monkeypatch, tmp_path):
    groups = {"pytest_unlearn.metrics": [("acme", "acme_metrics:register")]}
    calls = fake_distribution(monkeypatch, tmp_path, "acme_metrics", ACME, groups)
    assert "acme_metrics" not in sys.modules
    m = get_metric("acme_top_share")  # the first lookup loads the entry points
    assert calls == ["pytest_unlearn.metrics"]
    assert (m.higher_is_more_knowledge, m.lower_bound, m.upper_bound, m.source) == (True, 0.0, 1.0, "forward")
    METRICS.names()
    assert calls == ["pytest_unlearn.metrics"]  # once

    # it scores like the built-in metric it copies, through the ordinary scorer
    from pytest_unlearn.data import dataset_from_records
    from pytest_unlearn.models import handle_from_objects
    from pytest_unlearn.scoring import Scorer
    from pytest_unlearn.toy import tiny_llama, tiny_tokenizer, toy_facts

    records = toy_facts(3)
    tok = tiny_tokenizer([r["question"] + " " + r["answer"] for r in records] * 3, vocab_size=300)
    handle = handle_from_objects(tiny_llama(tok, seed=0), tok)
    data = dataset_from_records(records)
    scorer = Scorer()
    np.testing.assert_allclose(scorer.per_sample("acme_top_share", handle, data),
                               scorer.per_sample("em", handle, data))


def test_an_attack_class_from_an_entry_point_is_adopted(fresh_registries, monkeypatch, tmp_path):
    groups = {"pytest_unlearn.attacks": [("blank", "acme_attacks:Blank")]}
    fake_distribution(monkeypatch, tmp_path, "acme_attacks", ACME, groups)
    attack = parse_attack("acme_blank")
    assert attack.name == "acme_blank" and attack.kind == "prompt" and attack.spec == "acme_blank"


def test_an_entry_point_that_collides_raises_naming_it(fresh_registries, monkeypatch, tmp_path):
    groups = {"pytest_unlearn.metrics": [("twice", "acme_twice:register")]}
    fake_distribution(monkeypatch, tmp_path, "acme_twice", """
        import pytest_unlearn

        def register():
            pytest_unlearn.register_metric(name="ES", fn=lambda s, t: 0.0, higher_is_more_knowledge=True,
                                           range=(0, 1))
    """, groups)
    with pytest.raises(RegistrationError, match=r"entry point 'twice' \(acme_twice:register\).*"
                                                r"metric 'ES' is already registered"):
        get_metric("es")


def test_entry_points_are_not_read_at_plugin_import():
    code = textwrap.dedent("""
        import importlib.metadata as md
        groups = []
        real = md.entry_points
        def spy(**kw):
            groups.append(kw.get("group"))
            return real(**kw)
        md.entry_points = spy
        import pytest_unlearn.plugin, pytest_unlearn.metrics, pytest_unlearn.attacks
        assert not {"pytest_unlearn.metrics", "pytest_unlearn.attacks"} & set(groups), groups
        pytest_unlearn.metrics.get_metric("es")
        pytest_unlearn.attacks.parse_attack("noise")
        assert {"pytest_unlearn.metrics", "pytest_unlearn.attacks"} <= set(groups), groups
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_register_metric_checks_its_declaration(fresh_registries):
    ok = dict(name="acme_x", fn=lambda s, t: 0.0, higher_is_more_knowledge=False, range=(0, math.inf))
    with pytest.raises(TypeError):
        pytest_unlearn.register_metric("acme_x", ok["fn"], False, (0, 1))  # keyword-only
    for bad, match in [({"range": (1, 0)}, "lower < upper"), ({"range": (0, float("nan"))}, "lower < upper"),
                       ({"range": 3}, "two numbers"), ({"source": "tokens"}, "source must be"),
                       ({"fn": 3}, "callable"), ({"name": "a:b"}, "non-empty word"),
                       ({"higher_is_more_knowledge": "yes"}, "True or False")]:
        with pytest.raises(RegistrationError, match=match):
            pytest_unlearn.register_metric(**{**ok, **bad})
    m = pytest_unlearn.register_metric(**ok)
    assert get_metric("ACME_X") is m and not m.higher_is_more_knowledge and m.upper_bound == math.inf
    with pytest.raises(RegistrationError, match="already registered"):
        pytest_unlearn.register_metric(**ok)
    assert pytest_unlearn.register_metric(**ok, replace=True) is get_metric("acme_x")


def test_register_attack_checks_the_class(fresh_registries):
    class NoKind(Attack):
        name = "acme_nokind"

    class NoRun(Attack):
        name, kind = "acme_norun", "prompt"

    class Fine(Attack):
        name = "acme_fine"
        kind = "weight"

        def _run(self, metric, model, data, ctx) -> AttackOutcome:
            raise AttackError("not used here")

    with pytest.raises(RegistrationError, match="kind must be one of"):
        pytest_unlearn.register_attack(NoKind)
    with pytest.raises(RegistrationError, match="implement _run"):
        pytest_unlearn.register_attack(NoRun)
    with pytest.raises(RegistrationError, match="Attack subclass"):
        pytest_unlearn.register_attack(object)
    assert pytest_unlearn.register_attack(Fine) is Fine and ATTACKS.get("acme_fine") is Fine
    with pytest.raises(RegistrationError, match="already registered"):
        pytest_unlearn.register_attack(Fine)


def test_a_registry_without_a_group_reads_no_entry_points(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: pytest.fail("read"))
    reg = Registry("thing")
    reg.register("a", 1)
    assert reg.get("A") == 1 and "a" in reg and reg.names() == ["a"]
    with pytest.raises(UnknownNameError, match="unknown thing 'b'"):
        reg.get("b")
