"""The claim contract: rules on points and intervals, estimates with hand-computed intervals,
preconditions, kinds, and strict JSON."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from replicate import claims, runs


@pytest.mark.parametrize("rule,value,expected", [
    (">= 3", 3.0, True), (">= 3", 2.99, False), ("> 3", 3.0, False), ("< 0.1", 0.05, True),
    ("<= -0.35", -0.35, True), ("in [-0.65, -0.35]", -0.5, True), ("in [-0.65, -0.35]", -0.3, False),
    ("in [1e-3, 2e-3]", 0.0015, True),
])
def test_point_rules(rule, value, expected):
    assert claims.holds(rule, value) is expected


@pytest.mark.parametrize("rule,lo,hi,everywhere,somewhere", [
    (">= 0.05", 0.06, 0.2, True, True),     # inside
    (">= 0.05", 0.01, 0.13, False, True),   # straddling
    (">= 0.05", -0.1, 0.04, False, False),  # outside
    ("> 0", 0.0, 1.0, False, True),         # the closed end touches a strict bar
    ("< 2", -1.0, 1.9, True, True),
    ("< 2", 1.5, 2.5, False, True),
    ("<= 2", 2.0, 3.0, False, True),
    ("in [-0.65, -0.35]", -0.6, -0.4, True, True),
    ("in [-0.65, -0.35]", -0.5, -0.2, False, True),
    ("in [-0.65, -0.35]", -0.3, -0.1, False, False),
    ("in [-0.65, -0.35]", -0.9, -0.1, False, True),  # interval covers the whole rule
])
def test_interval_rules(rule, lo, hi, everywhere, somewhere):
    assert claims.holds_everywhere(rule, lo, hi) is everywhere
    assert claims.holds_somewhere(rule, lo, hi) is somewhere


def test_verdict_from_interval_inside_straddling_outside():
    assert claims.judge(0.1, [0.06, 0.2], ">= 0.05", "> 0")[0] == "replicated"
    verdict, reason = claims.judge(0.07, [0.01, 0.13], ">= 0.05", "> 0")  # straddles the bar
    assert verdict == "partial" and reason == "interval [0.01, 0.13] straddles '>= 0.05': within noise"
    verdict, reason = claims.judge(0.03, [0.01, 0.04], ">= 0.05", "> 0")  # all between the bars
    assert verdict == "partial" and "inside '> 0' but outside '>= 0.05': a weaker effect" in reason
    verdict, reason = claims.judge(0.01, [-0.01, 0.04], ">= 0.05", "> 0")  # below, straddling partial
    assert verdict == "partial" and "straddles '> 0'" in reason and "within noise" in reason
    verdict, reason = claims.judge(-0.05, [-0.1, -0.01], ">= 0.05", "> 0")
    assert verdict == "not_replicated" and "outside '> 0'" in reason
    # no partial rule: the replicated rule decides both ends
    assert claims.judge(3.5, [2.8, 4.1], ">= 3")[0] == "partial"
    assert claims.judge(2.0, [1.5, 2.5], ">= 3")[0] == "not_replicated"


def test_verdict_from_a_single_measurement():
    assert claims.judge(4.0, None, ">= 3", ">= 1.5") == (
        "replicated", "single measurement 4 satisfies '>= 3'")
    assert claims.judge(2.0, None, ">= 3", ">= 1.5")[0] == "partial"
    assert claims.judge(1.0, None, ">= 3", ">= 1.5")[0] == "not_replicated"
    assert claims.judge(math.nan, None, ">= 3")[0] == "inconclusive"
    assert claims.judge(None, None, ">= 3") == ("inconclusive", "nothing finite was measured")


def test_a_failed_precondition_is_inconclusive_and_named():
    specs = [{"id": "cut", "kind": "paper", "statement": "s", "paper_value": "6.4x",
              "measured": "ratio", "replicated": ">= 3", "requires": {"baseline_first_token": ">= 0.3"}}]
    (claim,) = claims.evaluate(specs, {"ratio": 3.2, "baseline_first_token": 0.22})
    assert claim.verdict == "inconclusive"
    assert claim.reason == "precondition failed: baseline_first_token = 0.22 fails '>= 0.3'"
    assert claim.requires == [{"measured": "baseline_first_token", "rule": ">= 0.3", "value": 0.22,
                               "holds": False}]
    (claim,) = claims.evaluate(specs, {"ratio": 3.2})  # a precondition never measured fails too
    assert claim.verdict == "inconclusive" and "not measured" in claim.reason
    (claim,) = claims.evaluate(specs, {"ratio": 3.2, "baseline_first_token": 0.4})
    assert claim.verdict == "replicated"


def test_mean_interval_matches_a_hand_computed_t_interval():
    est = claims.mean_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd of 1, 2, 3 is 1
    assert est.value == 2.0 and est.n == 3 and est.units == (1.0, 2.0, 3.0)
    assert est.interval == pytest.approx((2.0 - half, 2.0 + half))
    assert "95% t interval" in est.method
    one = claims.mean_interval([5.0])
    assert one.interval is None and one.n == 1 and "too few" in one.method


def test_paired_difference_is_the_t_interval_of_the_differences():
    a, b = [1.0, 1.1, 1.3], [0.9, 1.0, 1.0]  # differences 0.1, 0.1, 0.3
    est = claims.paired_difference(a, b)
    ref = claims.mean_interval([0.1, 0.1, 0.3])
    assert est.value == pytest.approx(ref.value) and est.interval == pytest.approx(ref.interval)
    assert "paired differences" in est.method
    with pytest.raises(ValueError, match="not paired"):
        claims.paired_difference([1.0], [1.0, 2.0])


def test_bootstrap_and_ratio_of_means():
    same = claims.bootstrap([2.0, 2.0, 2.0, 2.0], np.mean)
    assert same.interval == (2.0, 2.0) and same.n == 4
    ratio = claims.ratio_of_means([6.0, 6.0, 6.0], [2.0, 2.0, 2.0])
    assert ratio.value == 3.0 and ratio.interval == (3.0, 3.0)
    spread = claims.ratio_of_means([4.0, 6.0, 8.0], [2.0, 2.0, 2.0])
    assert spread.interval[0] >= 2.0 and spread.interval[1] <= 4.0 and spread.interval[0] < 3 < spread.interval[1]
    # the bootstrap is deterministic for a seed
    assert claims.bootstrap([1.0, 3.0, 2.0, 5.0], np.mean) == claims.bootstrap([1.0, 3.0, 2.0, 5.0], np.mean)


def test_proportion_wilson_interval_by_hand():
    est = claims.proportion(2, 3)
    z = stats.norm.ppf(0.975)
    p, n = 2 / 3, 3
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert est.interval == pytest.approx((centre - half, centre + half))


def test_evaluate_records_interval_n_method_rules_and_reason():
    specs = [
        {"id": "gain", "kind": "paper", "statement": "s", "paper_value": "p", "measured": "gain",
         "replicated": ">= 0.01", "partial": "> 0", "source": "Table 1"},
        {"id": "ablation", "kind": "control", "qualifies": "gain", "statement": "s", "paper_value": "—",
         "measured": "abl", "replicated": "> 0"},
        {"id": "identity", "kind": "sanity", "statement": "s", "paper_value": "—", "measured": "missing",
         "replicated": "< 1e-6"},
    ]
    gain = claims.paired_difference([1.10, 1.12, 1.14], [1.0, 1.0, 1.0])  # t interval [0.07, 0.17]
    judged = claims.evaluate(specs, {"gain": gain, "abl": np.float64(0.5)})
    assert [c.verdict for c in judged] == ["replicated", "replicated", "inconclusive"]
    first = judged[0].to_dict()
    assert first["interval"] == pytest.approx(list(gain.interval)) and first["n"] == 3
    assert first["rules"] == {"replicated": ">= 0.01", "partial": "> 0"} and first["source"] == "Table 1"
    assert first["criterion"] == "replicated if measured >= 0.01; partial if > 0"
    assert judged[1].qualifies == "gain" and judged[1].interval is None and judged[1].n == 1
    assert judged[2].measured is None and judged[2].n == 0


@pytest.mark.parametrize("spec,message", [
    ({"kind": "claim"}, "kind 'claim'"),
    ({"replicated": "at least 0.01"}, "claim 'x' replicated: bad claim rule 'at least 0.01'"),
    ({"requires": {"base": "big"}}, "requires.base: bad claim rule 'big'"),
    ({"kind": "control"}, "must name the paper claim"),
    ({"kind": "control", "qualifies": "nope"}, "not a paper claim"),
    ({"qualifies": "x"}, "only control claims"),
])
def test_bad_specs_are_named(spec, message):
    base = {"id": "x", "kind": "paper", "statement": "s", "paper_value": "p", "measured": "m",
            "replicated": "> 0"}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        claims.validate_specs([{**base, **spec}], where="fig.yaml")


def test_rejudge_uses_the_given_rules():
    (claim,) = claims.evaluate([{"id": "a", "kind": "paper", "statement": "s", "paper_value": "p",
                                 "measured": "m", "replicated": ">= 0.05", "partial": "> 0"}],
                               {"m": claims.Estimate(0.07, (0.01, 0.13), 3, "t")})
    record = claim.to_dict()
    assert claims.rejudge(record, ">= 0.05", "> 0", {})[0] == "partial"
    assert claims.rejudge(record, ">= 0.005", None, {})[0] == "replicated"  # an edited rule changes it
    assert claims.rejudge(record, ">= 0.005", None, {"base": "> 1"})[0] == "inconclusive"


def test_json_is_strict_and_non_finite_numbers_are_noted(tmp_path):
    path = tmp_path / "metrics.json"
    payload = {"final_val_loss": float("nan"), "val": [{"step": 10, "val_loss": float("inf")}],
               "estimate": claims.Estimate(1.0, (0.5, float("nan")), 3, "t"), "x": np.float32(0.25)}
    runs.write_json_atomic(path, payload)
    raw = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert raw["final_val_loss"] is None and raw["val"][0]["val_loss"] is None and raw["x"] == 0.25
    assert raw["non_finite"] == {"final_val_loss": "nan", "val[0].val_loss": "inf",
                                 "estimate.interval[1]": "nan"}
    back = runs.read_json(path)  # the run store restores what the notes say
    assert math.isnan(back["final_val_loss"]) and back["val"][0]["val_loss"] == math.inf
