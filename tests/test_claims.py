import math

import pytest

from replicate import claims


@pytest.mark.parametrize("rule,value,expected", [
    (">= 3", 3.0, True), (">= 3", 2.99, False), ("> 3", 3.0, False), ("< 0.1", 0.05, True),
    ("<= -0.35", -0.35, True), ("in [-0.65, -0.35]", -0.5, True), ("in [-0.65, -0.35]", -0.3, False),
    ("in [1e-3, 2e-3]", 0.0015, True),
])
def test_rules(rule, value, expected):
    assert claims.holds(rule, value) is expected


def test_verdict_ladder():
    assert claims.verdict(4.0, ">= 3", ">= 1.5") == "replicated"
    assert claims.verdict(2.0, ">= 3", ">= 1.5") == "partial"
    assert claims.verdict(1.0, ">= 3", ">= 1.5") == "not_replicated"
    assert claims.verdict(1.0, ">= 3") == "not_replicated"
    assert claims.verdict(math.nan, ">= 3") == "inconclusive"
    assert claims.verdict(None, ">= 3") == "inconclusive"


def test_bad_rule_is_named():
    with pytest.raises(ValueError, match="bad claim rule 'about 3'"):
        claims.holds("about 3", 1.0)


def test_evaluate_computes_every_verdict_from_measurements():
    specs = [
        {"id": "a", "statement": "s", "paper_value": "p", "measured": "x", "replicated": ">= 3", "partial": ">= 1"},
        {"id": "b", "statement": "s", "paper_value": "p", "measured": "y", "replicated": "< 0"},
        {"id": "c", "statement": "s", "paper_value": "p", "measured": "missing", "replicated": "< 0"},
    ]
    judged = claims.evaluate(specs, {"x": 2.0, "y": -1.0})
    assert [c.verdict for c in judged] == ["partial", "replicated", "inconclusive"]
    assert judged[0].criterion == "replicated if measured >= 3; partial if >= 1"
    assert judged[2].measured == "not measured"
