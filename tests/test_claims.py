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


@pytest.mark.parametrize("interval,verdict,why", [
    ((0.06, 0.2), "replicated", "lies inside '>= 0.05'"),
    ((0.01, 0.04), "partial", "a weaker effect"),               # all between the bars
    ((0.01, 0.13), "partial", "at least a weaker effect"),      # above 0 throughout, reaches the bar
    ((-0.01, 0.04), "not_replicated", "excludes '>= 0.05'"),    # the paper's effect excluded
    ((-0.1, -0.01), "not_replicated", "excludes the paper's effect"),
    ((-0.02, 0.13), "undecided", "cannot tell"),                # reaches the bar and below 0
])
def test_every_verdict_is_reachable_from_an_interval(interval, verdict, why):
    got, reason = claims.judge(sum(interval) / 2, interval, ">= 0.05", "> 0")
    assert got == verdict and why in reason


def test_without_a_smallest_effect_the_bar_decides_both_ends():
    assert claims.judge(3.5, [3.1, 4.1], ">= 3")[0] == "replicated"
    assert claims.judge(3.5, [2.8, 4.1], ">= 3") == (
        "undecided", "interval [2.8, 4.1] straddles '>= 3': cannot tell at this n")
    assert claims.judge(2.0, [1.5, 2.5], ">= 3")[0] == "not_replicated"


def test_two_sided_rules_reach_every_verdict():
    rep, weak = "in [-0.65, -0.35]", "in [-0.8, -0.25]"
    assert claims.judge(-0.5, [-0.6, -0.4], rep, weak)[0] == "replicated"
    assert claims.judge(-0.3, [-0.33, -0.27], rep, weak)[0] == "partial"
    assert claims.judge(-0.1, [-0.2, 0.0], rep, weak)[0] == "not_replicated"
    assert claims.judge(-0.5, [-0.9, -0.4], rep, weak)[0] == "undecided"


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
    (claim,) = claims.evaluate(specs, {"ratio": 3.2, "baseline_first_token": math.nan})
    assert claim.verdict == "inconclusive" and "not measured" in claim.reason
    with pytest.raises(claims.MissingMeasurement, match="'baseline_first_token' \\(read by claim 'cut'\\)"):
        claims.evaluate(specs, {"ratio": 3.2}, where="gated_attention/attention_sink")
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


def spread_of(units):
    """A module-level statistic (the bootstrap names it in the json)."""
    return float(np.ptp(units))


def test_bootstrap_refuses_few_units_and_unnamed_statistics():
    with pytest.raises(ValueError, match="needs at least 30 units"):
        claims.bootstrap([1.0, 2.0, 3.0], claims_statistic_mean)
    with pytest.raises(ValueError, match="not an importable module-level function"):
        claims.bootstrap(list(range(10)), lambda u: u.mean())
    units = np.linspace(1.0, 5.0, 30)
    est = claims.bootstrap(units, claims_statistic_mean)
    assert est == claims.bootstrap(units, claims_statistic_mean)  # deterministic for its seed
    assert est.interval[0] <= est.value <= est.interval[1]
    assert est.estimator["statistic"] == f"{__name__}:claims_statistic_mean"


def claims_statistic_mean(units, shift=0.0):
    return float(np.mean(units)) + shift


def test_ratio_of_means_delta_method_by_hand():
    ratio = claims.ratio_of_means([6.0, 6.0, 6.0], [2.0, 2.0, 2.0])
    assert ratio.value == 3.0 and ratio.interval == pytest.approx((3.0, 3.0))
    a, b = np.array([4.0, 6.0, 8.0]), np.array([2.0, 2.5, 3.0])
    est = claims.ratio_of_means(a, b)
    cov = np.cov(a, b)
    var = (cov[0, 0] / 36 + cov[1, 1] / 6.25 - 2 * cov[0, 1] / 15) / 3
    half = stats.t.ppf(0.975, 2) * math.sqrt(var)
    assert est.value == pytest.approx(2.4)
    assert est.interval == pytest.approx((2.4 * math.exp(-half), 2.4 * math.exp(half)))
    assert est.units == ((4.0, 2.0), (6.0, 2.5), (8.0, 3.0)) and est.scale == "log"


def test_ratio_interval_is_the_geometric_mean_of_per_unit_ratios():
    est = claims.ratio_interval([2.0, 8.0], [1.0, 2.0])  # ratios 2 and 4
    logs = np.log([2.0, 4.0])
    half = stats.t.ppf(0.975, 1) * logs.std(ddof=1) / math.sqrt(2)
    assert est.value == pytest.approx(math.sqrt(8))
    assert est.interval == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert est.units == (2.0, 4.0)
    assert claims.ratio_interval([1.0, -1.0], [1.0, 1.0]).interval is None  # a negative ratio


@pytest.mark.parametrize("make", [
    lambda: claims.mean_interval([0.1, 0.4, 0.2]),
    lambda: claims.paired_difference([1.0, 1.1, 1.3], [0.9, 1.0, 1.0]),
    lambda: claims.log_mean_interval([1.2, 1.9, 1.4]),
    lambda: claims.ratio_interval([3.0, 4.0, 5.0], [2.0, 2.2, 2.1]),
    lambda: claims.ratio_of_means([3.0, 4.0, 5.0], [2.0, 2.2, 2.1]),
    lambda: claims.proportion(7, 20),
    lambda: claims.two_stage_interval([1.0, 1.4, 1.1, 1.3, 0.9], pilot=3),
    lambda: claims.bootstrap(np.sin(np.arange(32.0)), claims_statistic_mean, params={"shift": 1.0}),
    lambda: claims.exact(2.5, "one exact count"),
    lambda: claims.exact(math.nan, "nothing measured"),
    lambda: claims.mean_interval([0.1, math.nan, 0.3]),  # a diverged seed: NaN, written as null
    lambda: claims.ratio_of_means([1.0, math.nan], [1.0, 2.0]),
])
def test_every_estimate_is_recomputed_from_its_json_and_holds_its_point(make):
    est = make()
    record = json.loads(json.dumps(runs.strict(est)))  # as written: NaN becomes null
    again = claims.recompute(record)
    assert again.value == pytest.approx(est.value, rel=1e-12, nan_ok=True)
    assert (again.interval is None) == (est.interval is None)
    if est.interval is not None:
        assert again.interval == pytest.approx(est.interval, rel=1e-12)
        assert est.interval[0] <= est.value <= est.interval[1]
        assert est.units, "an interval without its units cannot be checked"


def _coverage(draw, estimate, truth, n, datasets=2000, seed=0):
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(datasets):
        lo, hi = estimate(draw(rng, n)).interval
        hits += lo <= truth <= hi
    return hits / datasets


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("name,draw,estimate,truth", [
    ("t mean", lambda r, n: r.normal(1.0, 0.3, n), claims.mean_interval, 1.0),
    ("paired difference", lambda r, n: (r.normal(2.0, 0.5, n), r.normal(1.5, 0.5, n)),
     lambda ab: claims.paired_difference(*ab), 0.5),
    ("log mean", lambda r, n: np.exp(r.normal(math.log(1.5), 0.4, n)), claims.log_mean_interval, 1.5),
    ("ratio of paired units", lambda r, n: (np.exp(r.normal(1.0, 0.3, n)), np.exp(r.normal(0.5, 0.3, n))),
     lambda ab: claims.ratio_interval(*ab), math.exp(0.5)),
    ("ratio of means", lambda r, n: (r.normal(3.0, 0.3, n), r.normal(2.0, 0.2, n)),
     lambda ab: claims.ratio_of_means(*ab), 1.5),
])
def test_interval_coverage_is_nominal(name, draw, estimate, truth, n):
    """Each t-family method covers the truth 95% of the time (±3 points) over 2,000 datasets."""
    assert abs(_coverage(draw, estimate, truth, n) - 0.95) <= 0.03, name


@pytest.mark.parametrize("n", [3, 5, 10])
def test_stein_two_stage_coverage_is_nominal(n):
    """Pilot of n0 units fixes n from its sd alone; the interval with n0-1 df keeps its level."""
    def design(rng, n0):
        pilot = rng.normal(0.0, 1.0, n0)
        total = claims.two_stage_sample_size(pilot, half_width=0.6, max_n=40)
        return np.r_[pilot, rng.normal(0.0, 1.0, total - n0)]
    assert abs(_coverage(design, lambda x: claims.two_stage_interval(x, pilot=n), 0.0, n) - 0.95) <= 0.03


@pytest.mark.parametrize("n", [3, 5, 10])
def test_wilson_coverage_averaged_over_the_truth(n):
    """Binomial coverage oscillates with p at small n (no interval is exact there); averaged over
    p ~ U(0.2, 0.8) Wilson's stays at its level within ±3 points."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(2000):
        p = rng.uniform(0.2, 0.8)
        lo, hi = claims.proportion(int(rng.binomial(n, p)), n).interval
        hits += lo <= p <= hi
    assert abs(hits / 2000 - 0.95) <= 0.03


@pytest.mark.parametrize("n", [30, 60])
def test_bootstrap_coverage_with_enough_units(n):
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(2000):
        lo, hi = claims.bootstrap(rng.normal(1.0, 0.5, n), claims_statistic_mean, resamples=500,
                                  seed=int(rng.integers(1 << 30))).interval
        hits += lo <= 1.0 <= hi
    assert abs(hits / 2000 - 0.95) <= 0.03


def test_two_stage_sample_size_by_hand():
    pilot = [0.0, 1.0, 2.0]  # sd 1, t_{2, .975} = 4.303
    assert claims.two_stage_sample_size(pilot, half_width=1.0) == 12  # capped at max_n = 12
    assert claims.two_stage_sample_size(pilot, half_width=1.0, max_n=100) == math.ceil(stats.t.ppf(0.975, 2) ** 2)
    assert claims.two_stage_sample_size(pilot, half_width=10.0) == 3


def test_minimum_detectable_effect_and_units_to_decide():
    est = claims.mean_interval([1.0, 2.0, 3.0])  # se 1/sqrt(3), df 2
    mde = (stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) / math.sqrt(3)
    assert claims.minimum_detectable_effect(est) == pytest.approx(mde)
    n = claims.units_needed(est, 1.0)
    assert (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) / math.sqrt(n) <= 1.0
    assert (stats.t.ppf(0.975, n - 2) + stats.t.ppf(0.8, n - 2)) / math.sqrt(n - 1) > 1.0
    power = claims.power_summary(claims.ratio_interval([2.0, 2.4, 2.2], [1.0, 1.0, 1.0]), ">= 3", ">= 1.5")
    assert power["mde_scale"] == "factor" and power["mde"] > 1 and power["units_to_decide"] >= 2
    assert claims.power_summary(claims.exact(1.0, "x"), ">= 3", None)["mde"] is None


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
    judged = claims.evaluate(specs, {"gain": gain, "abl": np.float64(0.5), "missing": math.nan})
    assert [c.verdict for c in judged] == ["replicated", "replicated", "inconclusive"]
    first = judged[0].to_dict()
    assert first["interval"] == pytest.approx(list(gain.interval)) and first["n"] == 3
    assert first["rules"] == {"replicated": ">= 0.01", "partial": "> 0"} and first["source"] == "Table 1"
    assert first["criterion"] == "replicated if measured >= 0.01; smallest effect of interest > 0"
    assert first["mde"] == pytest.approx(claims.minimum_detectable_effect(gain)) and first["units_to_decide"] >= 2
    assert first["units"] == pytest.approx([0.10, 0.12, 0.14]) and first["units"] == gain.to_dict()["units"]
    assert judged[1].qualifies == "gain" and judged[1].interval is None and judged[1].n == 1
    assert judged[2].measured is None and judged[2].n == 1


@pytest.mark.parametrize("spec,message", [
    ({"kind": "claim"}, "kind 'claim'"),
    ({"replicated": "at least 0.01"}, "claim 'x' replicated: bad claim rule 'at least 0.01'"),
    ({"requires": {"base": "big"}}, "requires.base: bad claim rule 'big'"),
    ({"kind": "control", "qualifies": "nope"}, "not a paper claim"),
    ({"qualifies": "x"}, "only control claims"),
])
def test_bad_specs_are_named(spec, message):
    base = {"id": "x", "kind": "paper", "statement": "s", "paper_value": "p", "measured": "m",
            "replicated": "> 0"}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        claims.validate_specs([{**base, **spec}], where="fig.yaml")


def test_controls_stand_alone_only_in_a_figure_without_paper_claims():
    control = {"id": "c", "kind": "control", "statement": "s", "paper_value": "—", "measured": "m",
               "replicated": "in [-0.02, 0.02]"}
    claims.validate_specs([control, {**control, "id": "d"}], where="fig.yaml")  # the suite's own figure
    paper = {"id": "x", "kind": "paper", "statement": "s", "paper_value": "p", "measured": "m", "replicated": "> 0"}
    with pytest.raises(ValueError, match="claim 'c' must name the paper claim"):
        claims.validate_specs([paper, control], where="fig.yaml")


def test_rejudge_uses_the_given_rules():
    (claim,) = claims.evaluate([{"id": "a", "kind": "paper", "statement": "s", "paper_value": "p",
                                 "measured": "m", "replicated": ">= 0.05", "partial": "> 0"}],
                               {"m": claims.Estimate(0.07, (0.01, 0.13), 3, "t")})
    record = claim.to_dict()
    assert claims.rejudge(record, ">= 0.05", "> 0", {})[0] == "partial"
    assert claims.rejudge(record, ">= 0.05", None, {})[0] == "undecided"
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
