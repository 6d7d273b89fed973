"""Claims, the uncertainty of the numbers behind them, and the rules that turn both into verdicts.

A figure config lists its claims (``configs/figure/<paper>/<figure>.yaml``)::

    claims:
      - id: sink_cut_headwise
        kind: paper                        # paper | control | sanity
        statement: headwise gating cuts first-token attention at least 3x
        paper_value: 0.467 -> 0.073 (6.4x)
        source: Table 4
        measured: sink_ratio_headwise      # a key the figure's measures function returns
        replicated: ">= 3"                 # the paper's effect
        partial: ">= 1.5"                  # the smallest effect of interest (optional)
        requires:                          # preconditions: measurement key -> rule
          baseline_first_token: ">= 0.3"
      - id: sink_cut_fixed_gate
        kind: control                      # our ablation; shown under the claim it qualifies
        qualifies: sink_cut_headwise
        ...

Kinds. ``paper`` claims are the paper's and the only ones counted in totals; ``control`` claims are
our own ablations or controls and name the paper claim they qualify; ``sanity`` claims are
identities true by construction or code checks, listed apart and never counted.

Numbers. A figure's measures function (``replicate/papers/<paper>/measures.py``) returns each
measurement as a plain number (preconditions, sanity values) or as an :class:`Estimate`: a value
with an interval over its independent units (seeds, datasets, replicates), the per-unit values and
the estimator that turns them into the interval, so the scorecard recomputes every interval from
the json (:func:`recompute`). The estimators:

* :func:`mean_interval`, :func:`paired_difference`: Student-t interval of a mean;
* :func:`log_mean_interval`, :func:`ratio_interval`: t interval on the logs (ratios, speed-ups:
  the geometric mean of per-unit values);
* :func:`ratio_of_means`: delta-method t interval on the log of mean(a)/mean(b);
* :func:`proportion`: Wilson score interval;
* :func:`bootstrap`: percentile bootstrap of a named statistic, only over >= 30 units;
* :func:`two_stage_interval`: Stein's two-stage t interval (the pilot's sd fixes n);
* :func:`exact`: one exact quantity, no interval.

A statistic over a set (frontier points, cells) is computed per unit and then averaged over units,
so every point estimate lies inside its interval. ``tests/test_claims.py`` checks each method's
coverage on simulated units.

Verdicts (:func:`judge`), computed only here. A rule is ``<op> <number>`` (op in ``>=, >, <=, <``)
or ``in [lo, hi]``. ``replicated`` is the paper's effect; ``partial`` is the smallest effect of
interest (without it, the replicated bar is). With an interval, by what it excludes:

* ``replicated`` when every point satisfies the ``replicated`` rule;
* ``partial`` when every point satisfies the ``partial`` rule but not every point the replicated
  one (a weaker effect);
* ``not_replicated`` when no point satisfies the ``replicated`` rule and some point fails the
  ``partial`` one (the paper's effect is excluded);
* ``undecided`` when the interval reaches the replicated bar and also fails the smallest effect of
  interest: the design cannot tell. Each claim carries its minimum detectable effect
  (:func:`power_summary`) and the units that would decide its current estimate.

Without an interval the point value is judged ("single measurement"). A failed precondition, or a
value that is not finite, gives ``inconclusive``; a key the measures did not return is an error.
Preconditions are judged on their point value. Every verdict comes with a ``reason``.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

VERDICTS = ("replicated", "partial", "undecided", "not_replicated", "inconclusive")
# The version of the claims json this module writes: 2 = recomputable intervals with their units,
# the undecided verdict and each claim's minimum detectable effect.
CLAIM_CONTRACT = 2
KINDS = ("paper", "control", "sanity")
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_COMPARE = re.compile(rf"^\s*(>=|<=|>|<)\s*{_NUMBER}\s*$")
_INTERVAL = re.compile(rf"^\s*in\s*\[\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\]\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


# --------------------------------------------------------------------------- rules
def parse_rule(rule: str) -> tuple[str, float, float]:
    """``(op, a, b)``: ``(">=", 3, nan)`` for ``>= 3``, ``("in", lo, hi)`` for ``in [lo, hi]``."""
    if m := _COMPARE.match(str(rule)):
        return m.group(1), float(m.group(2)), math.nan
    if m := _INTERVAL.match(str(rule)):
        lo, hi = float(m.group(1)), float(m.group(2))
        if lo > hi:
            raise ValueError(f"bad claim rule {rule!r}: the interval's lower end exceeds its upper end")
        return "in", lo, hi
    raise ValueError(f"bad claim rule {rule!r}: expected '<op> <number>' (op in >=, >, <=, <) "
                     "or 'in [lo, hi]'")


def holds(rule: str, value: float) -> bool:
    """Whether the point ``value`` satisfies ``rule`` (``>= 3``, ``< 0.1``, ``in [-0.65, -0.35]``)."""
    op, a, b = parse_rule(rule)
    return a <= value <= b if op == "in" else _OPS[op](value, a)


def holds_everywhere(rule: str, lo: float, hi: float) -> bool:
    """Whether every point of ``[lo, hi]`` satisfies ``rule``."""
    op, a, b = parse_rule(rule)
    if op == "in":
        return a <= lo and hi <= b
    return _OPS[op](lo, a) if op in (">=", ">") else _OPS[op](hi, a)


def holds_somewhere(rule: str, lo: float, hi: float) -> bool:
    """Whether some point of ``[lo, hi]`` satisfies ``rule``."""
    op, a, b = parse_rule(rule)
    if op == "in":
        return hi >= a and lo <= b
    return _OPS[op](hi, a) if op in (">=", ">") else _OPS[op](lo, a)


def criterion_text(replicated: str, partial: str | None = None) -> str:
    text = f"replicated if measured {replicated.strip()}"
    return text + (f"; smallest effect of interest {partial.strip()}" if partial else "")


# --------------------------------------------------------------------------- estimates
@dataclass(frozen=True)
class Estimate:
    """A measured number with its uncertainty over ``n`` independent units.

    ``interval`` is ``(lo, hi)`` or ``None`` for a single exact quantity (then ``method`` says
    why); ``units`` are the per-unit values it aggregates (every seed, never one picked).
    ``estimator`` names the rule that turns ``units`` into ``value`` and ``interval`` (see
    :data:`ESTIMATORS`), so anyone holding the json can recompute both (:func:`recompute`).
    ``se`` and ``df`` are the standard error and degrees of freedom behind the interval, on the
    estimator's ``scale`` (``"log"`` for ratios: the interval is symmetric in log space); they give
    the claim's minimum detectable effect (:func:`minimum_detectable_effect`).
    """

    value: float
    interval: tuple[float, float] | None = None
    n: int = 1
    method: str = "single measurement"
    units: tuple = ()
    estimator: Mapping[str, Any] | None = None
    se: float | None = None
    df: float | None = None
    scale: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "interval": list(self.interval) if self.interval else None,
                "n": self.n, "method": self.method, "units": _plain(self.units),
                "estimator": dict(self.estimator) if self.estimator else None,
                "se": self.se, "df": None if self.df is None or math.isinf(self.df) else self.df,
                "scale": self.scale}

    def __format__(self, spec: str) -> str:
        spec = spec or ".4g"
        if self.interval is None:
            return format(self.value, spec)
        lo, hi = self.interval
        return f"{format(self.value, spec)} [{format(lo, spec)}, {format(hi, spec)}]"


def _plain(units) -> list:
    return [_plain(u) if isinstance(u, (list, tuple)) else float(u) for u in units]


def _values(values: Iterable[float]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=float)


def _quantile(p: float, df: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(p) if math.isinf(df) else stats.t.ppf(p, df))


def exact(value: float, why: str) -> Estimate:
    """One exact quantity (no independent units to vary): no interval, ``why`` says so."""
    return Estimate(float(value), None, 1, why, estimator={"name": "exact"})


def _t_estimate(x: np.ndarray, level: float, unit: str, log: bool, pilot: int | None = None) -> Estimate:
    """Mean (of logs when ``log``) of the units with a Student-t interval.

    Plain: x̄ ± t_{n-1, (1+level)/2} s/√n. Two-stage (``pilot`` = n0, Stein 1945): the mean of all n
    units ± t_{n0-1} s0/√n with s0 the standard deviation of the first n0 units, exact for normal
    units when n was chosen from s0 alone (:func:`two_stage_sample_size`)."""
    name = ("stein_" if pilot else "") + ("t_log_mean" if log else "t_mean")
    spec = {"name": name, "level": level, "unit": unit, **({"pilot": pilot} if pilot else {})}
    n, units = len(x), tuple(x.tolist())
    what = "geometric mean" if log else "mean"
    if n == 0:
        return Estimate(math.nan, None, 0, f"no {unit}", units, spec)
    usable = np.isfinite(x).all() and (not log or (x > 0).all())
    z = np.log(x) if usable and log else x
    centre = float(z.mean())
    value = math.exp(centre) if usable and log else centre
    base = pilot or n
    if base < 2 or not usable:
        why = "a unit is not finite" + (" or not positive" if log else "") if not usable else "too few units"
        return Estimate(value, None, n, f"{what} of {n} {unit}: {why}, no interval", units, spec)
    sd = float(z[:base].std(ddof=1))
    se, df = sd / math.sqrt(n), base - 1
    half = _quantile(0.5 + level / 2, df) * se
    lo, hi = centre - half, centre + half
    interval = (math.exp(lo), math.exp(hi)) if log else (lo, hi)
    kind = " (on the logs)" if log else ""
    stage = f", two-stage: sd from the first {pilot} (Stein)" if pilot else ""
    return Estimate(value, interval, n, f"{level:.0%} t interval{kind} of the {what} over {n} {unit}{stage}",
                    units, spec, se, float(df), "log" if log else "linear")


def mean_interval(samples: Sequence[float], level: float = 0.95, unit: str = "seeds") -> Estimate:
    """Mean of independent ``samples`` with a Student-t interval: x̄ ± t_{n-1} s/√n."""
    return _t_estimate(_values(samples), level, unit, log=False)


def log_mean_interval(samples: Sequence[float], level: float = 0.95, unit: str = "seeds") -> Estimate:
    """Geometric mean of positive per-unit values (ratios, speed-ups) with a t interval on their
    logs: exp(mean log x ± t_{n-1} s_log/√n). The point estimate lies inside its interval."""
    return _t_estimate(_values(samples), level, unit, log=True)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                      unit: str = "seeds") -> Estimate:
    """Mean of ``a_i - b_i`` over paired units with a t interval over the paired differences."""
    a, b = _values(a), _values(b)
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} and {len(b)} values are not paired")
    return _t_estimate(a - b, level, f"{unit} (paired differences)", log=False)


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float], level: float = 0.95,
                   unit: str = "seeds") -> Estimate:
    """Geometric mean of the per-unit ratios ``numerator_i / denominator_i`` (paired units: the
    same seed, the same dataset) with a t interval on their logs (:func:`log_mean_interval`)."""
    num, den = _values(numerator), _values(denominator)
    if len(num) != len(den):
        raise ValueError(f"ratio_interval: {len(num)} and {len(den)} values are not paired")
    with np.errstate(divide="ignore", invalid="ignore"):
        return _t_estimate(num / den, level, f"paired {unit}", log=True)


def ratio_of_means(numerator: Sequence[float], denominator: Sequence[float], level: float = 0.95,
                   unit: str = "seeds") -> Estimate:
    """mean(numerator) / mean(denominator) over paired units, with a delta-method t interval on the
    log of the ratio: Var[log(ā/b̄)] ≈ (s_a²/ā² + s_b²/b̄² - 2 s_ab/(ā b̄)) / n, t with n-1 df.
    The units written are the (numerator, denominator) pairs."""
    num, den = _values(numerator), _values(denominator)
    if len(num) != len(den):
        raise ValueError(f"ratio_of_means: {len(num)} and {len(den)} values are not paired")
    return _ratio_of_means(np.stack([num, den], 1) if len(num) else np.zeros((0, 2)), level, f"paired {unit}")


def _ratio_of_means(pairs: np.ndarray, level: float, unit: str) -> Estimate:
    spec = {"name": "t_log_ratio_of_means", "level": level, "unit": unit}
    n, units = len(pairs), tuple(map(tuple, pairs.tolist()))
    if n == 0:
        return Estimate(math.nan, None, 0, f"no {unit}", units, spec)
    a, b = pairs[:, 0], pairs[:, 1]
    ma, mb = float(a.mean()), float(b.mean())
    value = ma / mb if mb != 0 else math.nan
    if n < 2 or not np.isfinite(pairs).all() or ma <= 0 or mb <= 0:
        return Estimate(value, None, n, f"ratio of means over {n} {unit}: too few units, a non-finite "
                        "unit or a non-positive mean, no interval", units, spec)
    cov = np.cov(a, b, ddof=1)
    var = (cov[0, 0] / ma**2 + cov[1, 1] / mb**2 - 2 * cov[0, 1] / (ma * mb)) / n
    se, df = math.sqrt(max(var, 0.0)), n - 1
    half = _quantile(0.5 + level / 2, df) * se
    centre = math.log(value)
    return Estimate(value, (math.exp(centre - half), math.exp(centre + half)), n,
                    f"{level:.0%} delta-method t interval on the log ratio of means over {n} {unit}",
                    units, spec, se, float(df), "log")


def proportion(successes: int, trials: int, level: float = 0.95, unit: str = "seeds") -> Estimate:
    """A share ``successes / trials`` with a Wilson score interval (units: one 0/1 per trial)."""
    if not 0 <= successes <= trials:
        raise ValueError(f"proportion: {successes} successes out of {trials} trials")
    return _wilson(np.r_[np.ones(int(successes)), np.zeros(int(trials - successes))], level, unit)


def _wilson(outcomes: np.ndarray, level: float, unit: str) -> Estimate:
    spec = {"name": "wilson", "level": level, "unit": unit}
    trials, units = len(outcomes), tuple(outcomes.tolist())
    if trials == 0:
        return Estimate(math.nan, None, 0, f"no {unit}", units, spec)
    p, z = float(outcomes.mean()), _quantile(0.5 + level / 2, math.inf)
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return Estimate(p, (max(0.0, centre - half), min(1.0, centre + half)), trials,
                    f"{level:.0%} Wilson interval over {trials} {unit}", units, spec, half / z, math.inf)


# A 95% percentile bootstrap of a mean covers 89% at 8-10 normal units, 92-93% at 20-30 and 94% at
# 40 (2,000 simulated datasets; tests/test_claims.py checks 30 and 60): below 30 units use a t interval.
MIN_BOOTSTRAP_UNITS = 30


def bootstrap(samples: Sequence[Any], statistic, level: float = 0.95, resamples: int = 4000,
              seed: int = 0, unit: str = "datasets", params: Mapping[str, Any] | None = None) -> Estimate:
    """``statistic(units, **params)`` with a percentile bootstrap interval over whole units.

    For many units only (at least :data:`MIN_BOOTSTRAP_UNITS`: with 3 units a percentile
    bootstrap is the min-max range, and it undercovers up to about 30 units). ``samples`` is a
    sequence of units (numbers, or rows: each unit resampled whole); ``statistic`` must be a
    module-level function, named in the json so the interval can be recomputed; extra arguments go
    in ``params`` (JSON values)."""
    name = f"{getattr(statistic, '__module__', '?')}:{getattr(statistic, '__qualname__', '?')}"
    if "<" in name or _import(name) is not statistic:
        raise ValueError(f"bootstrap: statistic {name} is not an importable module-level function "
                         "(no lambda or closure; pass extra arguments with params={...})")
    spec = {"name": "bootstrap", "level": level, "unit": unit, "statistic": name,
            "params": dict(params or {}), "resamples": resamples, "seed": seed}
    return _bootstrap(np.asarray(samples, dtype=float), spec)


def _import(name: str):
    import importlib

    module, _, qualname = name.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def _bootstrap(units: np.ndarray, spec: Mapping[str, Any]) -> Estimate:
    statistic, params, n = _import(spec["statistic"]), spec["params"], len(units)
    if statistic is None:
        raise ValueError(f"bootstrap: statistic {spec['statistic']} cannot be imported")
    if n < MIN_BOOTSTRAP_UNITS:
        raise ValueError(f"bootstrap over {n} {spec['unit']}: a percentile bootstrap needs at least "
                         f"{MIN_BOOTSTRAP_UNITS} units; use a t interval over per-unit values")
    value, stored = float(statistic(units, **params)), tuple(_plain(units.tolist()))
    if not np.isfinite(units).all():
        return Estimate(value, None, n, f"{spec['unit']}: a unit is not finite, no interval", stored, spec)
    rng = np.random.default_rng(spec["seed"])
    draws = np.array([statistic(units[rows], **params)
                      for rows in rng.integers(0, n, (spec["resamples"], n))], dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) < spec["resamples"] // 2:
        return Estimate(value, None, n, f"{spec['unit']}: the statistic is not finite on most resamples",
                        stored, spec)
    level = spec["level"]
    lo, hi = (float(q) for q in np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2]))
    return Estimate(value, (min(lo, value), max(hi, value)), n,
                    f"{level:.0%} percentile bootstrap over {n} {spec['unit']} ({spec['resamples']} resamples)",
                    stored, spec, float(draws.std(ddof=1)), math.inf)


def two_stage_sample_size(pilot: Sequence[float], half_width: float, level: float = 0.95,
                          max_n: int = 12, log: bool = False) -> int:
    """Stein's (1945) second stage: the total n whose t interval, with the pilot's sd and n0-1
    degrees of freedom, has half-width at most ``half_width`` (on the log scale when ``log``):
    n = max(n0, ⌈(t_{n0-1} s0 / h)²⌉), capped at ``max_n``. Chosen from the pilot's spread alone,
    never from its mean, so the final interval (:func:`two_stage_interval`) keeps its level."""
    x = _values(pilot)
    x = np.log(x) if log else x
    n0 = len(x)
    if n0 < 2 or not np.isfinite(x).all() or half_width <= 0:
        raise ValueError(f"two_stage_sample_size: need >= 2 finite pilot units and a positive half-width "
                         f"(got {n0} units, half-width {half_width})")
    need = math.ceil((_quantile(0.5 + level / 2, n0 - 1) * x.std(ddof=1) / half_width) ** 2)
    return int(min(max(n0, need), max(max_n, n0)))


def two_stage_interval(samples: Sequence[float], pilot: int, level: float = 0.95, unit: str = "seeds",
                       log: bool = False) -> Estimate:
    """The final interval of Stein's two-stage design: the mean of all units (pilot first) with the
    pilot's sd and n0-1 degrees of freedom (geometric mean and logs when ``log``)."""
    x = _values(samples)
    if not 2 <= pilot <= len(x):
        raise ValueError(f"two_stage_interval: pilot {pilot} needs 2 <= pilot <= {len(x)} units")
    return _t_estimate(x, level, unit, log=log, pilot=pilot)


ESTIMATORS = ("t_mean", "t_log_mean", "stein_t_mean", "stein_t_log_mean", "t_log_ratio_of_means",
              "wilson", "bootstrap", "exact")


def recompute(record: Mapping[str, Any]) -> Estimate:
    """The Estimate a json measurement's ``units`` and ``estimator`` give (the scorecard compares
    it with the stored value and interval)."""
    spec = record.get("estimator") or {}
    name, units = spec.get("name"), _nan_for_null(record.get("units") or [])
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {', '.join(ESTIMATORS)}")
    level, unit = spec.get("level", 0.95), spec.get("unit", "units")
    if name == "exact":
        return Estimate(_nan_for_null(record.get("value")), None, 1, record.get("method", ""), estimator=spec)
    if name in ("t_mean", "t_log_mean", "stein_t_mean", "stein_t_log_mean"):
        return _t_estimate(_values(units), level, unit, log="log" in name, pilot=spec.get("pilot"))
    if name == "t_log_ratio_of_means":
        return _ratio_of_means(np.asarray(units, dtype=float).reshape(-1, 2), level, unit)
    if name == "wilson":
        return _wilson(_values(units), level, unit)
    return _bootstrap(np.asarray(units, dtype=float), spec)


def _nan_for_null(value):
    """A json value with the nulls that strict JSON writes for NaN / inf read back as NaN."""
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return math.nan if value is None else float(value)


def minimum_detectable_effect(est: Estimate, level: float | None = None, power: float = 0.8) -> float | None:
    """The smallest distance from a bar that the estimate's design separates from it with
    probability ``power``: (q_{(1+level)/2} + q_{power}) · se, q of t with the estimate's df (normal
    for large-sample methods). On the log scale for ratios (a factor: exp of this). None without an
    interval (no standard error)."""
    if est.se is None or est.df is None or not math.isfinite(est.se):
        return None
    level = level or (est.estimator or {}).get("level", 0.95)
    return (_quantile(0.5 + level / 2, est.df) + _quantile(power, est.df)) * est.se


def units_needed(est: Estimate, distance: float, level: float | None = None, power: float = 0.8,
                 max_n: int = 10_000) -> int | None:
    """Units at which an effect ``distance`` away from a bar (on the estimate's scale) would be
    separated from it with probability ``power``, from the per-unit sd the estimate shows; None when
    the estimate has no standard error, the distance is 0, or more than ``max_n`` would be needed."""
    if est.se is None or est.df is None or not math.isfinite(est.se) or distance <= 0:
        return None
    level = level or (est.estimator or {}).get("level", 0.95)
    sd = est.se * math.sqrt(est.n)
    large = math.isinf(est.df)
    for n in range(2, max_n + 1):
        df = math.inf if large else n - 1
        if (_quantile(0.5 + level / 2, df) + _quantile(power, df)) * sd / math.sqrt(n) <= distance:
            return n
    return None


def as_estimate(value: Any) -> Estimate | None:
    """A measurement as an Estimate (a plain number is a single measurement); None if absent."""
    if isinstance(value, Estimate):
        return value
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return Estimate(float(value))


# --------------------------------------------------------------------------- verdicts
@dataclass
class Precondition:
    measured: str
    rule: str
    value: float | None
    holds: bool

    def text(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:.4g}"
        return f"{self.measured} = {shown} fails '{self.rule}'"


def check_preconditions(requires: Mapping[str, str], measurements: Mapping[str, Any]) -> list[Precondition]:
    """Each precondition judged on its measurement's point value (missing or non-finite: fails)."""
    out = []
    for key, rule in (requires or {}).items():
        est = as_estimate(measurements.get(key))
        value = est.value if est is not None and math.isfinite(est.value) else None
        out.append(Precondition(key, rule, value, value is not None and holds(rule, value)))
    return out


def _fmt_interval(lo: float, hi: float) -> str:
    return f"[{lo:.4g}, {hi:.4g}]"


def judge(value: float | None, interval: Sequence[float] | None, replicated: str,
          partial: str | None = None, preconditions: Sequence[Precondition] = ()) -> tuple[str, str]:
    """``(verdict, reason)`` from a value, its interval (or None) and the rules (module docstring).

    ``partial`` is the claim's smallest effect of interest; without one the replicated bar is
    (no weaker band). With an interval, from what it excludes:

    * ``replicated``: every point satisfies ``replicated``;
    * ``partial``: every point satisfies ``partial`` but not every point ``replicated`` (a weaker
      effect, or at least a weaker one when the interval also reaches the replicated bar);
    * ``not_replicated``: no point satisfies ``replicated`` and some point fails ``partial`` (the
      paper's effect is excluded; at most a weaker one remains);
    * ``undecided``: the interval reaches both the replicated bar and below the smallest effect of
      interest: the design cannot tell (its minimum detectable effect says how far it can see).
    """
    failed = [p for p in preconditions if not p.holds]
    if failed:
        return "inconclusive", "precondition failed: " + "; ".join(p.text() for p in failed)
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "inconclusive", "nothing finite was measured"
    weaker = partial or replicated
    if interval is None:
        if holds(replicated, value):
            return "replicated", f"single measurement {value:.4g} satisfies '{replicated}'"
        if partial and holds(partial, value):
            return "partial", f"single measurement {value:.4g} satisfies only '{partial}'"
        return "not_replicated", f"single measurement {value:.4g} fails '{weaker}'"
    lo, hi = (float(x) for x in interval)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive", "the interval is not finite"
    shown = _fmt_interval(lo, hi)
    reaches_bar, all_bar = holds_somewhere(replicated, lo, hi), holds_everywhere(replicated, lo, hi)
    all_weaker, any_weaker = holds_everywhere(weaker, lo, hi), holds_somewhere(weaker, lo, hi)
    if all_bar:
        return "replicated", f"interval {shown} lies inside '{replicated}'"
    if all_weaker and partial:
        if reaches_bar:
            return "partial", (f"interval {shown} satisfies '{partial}' throughout and reaches "
                               f"'{replicated}': at least a weaker effect")
        return "partial", f"interval {shown} inside '{partial}' but outside '{replicated}': a weaker effect"
    if not reaches_bar:
        if any_weaker and partial:
            return "not_replicated", (f"interval {shown} excludes '{replicated}'; a weaker effect "
                                      f"('{partial}') is not excluded")
        return "not_replicated", f"interval {shown} lies outside '{weaker}': excludes the paper's effect"
    if not partial:
        return "undecided", f"interval {shown} straddles '{replicated}': cannot tell at this n"
    return "undecided", (f"interval {shown} reaches '{replicated}' and also fails '{partial}': "
                         "cannot tell at this n")


def _boundaries(*rules: str | None) -> list[float]:
    out = []
    for rule in rules:
        if rule:
            op, a, b = parse_rule(rule)
            out += [a, b] if op == "in" else [a]
    return out


def power_summary(est: Estimate | None, replicated: str, partial: str | None) -> dict[str, Any]:
    """The claim's minimum detectable effect at its n (distance from the replicated bar at which an
    effect is separated from it with 80% power; a factor for ratios) and the units that would
    decide its current point estimate (separate it from every bar of the rules)."""
    none = {"mde": None, "mde_scale": None, "units_to_decide": None}
    mde = minimum_detectable_effect(est) if est is not None else None
    if mde is None or not math.isfinite(est.value):
        return none
    log = est.scale == "log"
    bars = [b for b in _boundaries(replicated, partial) if not log or b > 0]
    if log and est.value <= 0:
        return none
    at = math.log(est.value) if log else est.value
    distance = min((abs(at - (math.log(b) if log else b)) for b in bars), default=0.0)
    return {"mde": math.exp(mde) if log else mde, "mde_scale": "factor" if log else "difference",
            "units_to_decide": units_needed(est, distance)}


def mde_text(claim: Mapping[str, Any]) -> str:
    """``±0.031`` (a difference) or ``×1.42`` (a factor) or ``—``."""
    mde = claim.get("mde")
    if mde is None:
        return "—"
    return f"×{mde:.3g}" if claim.get("mde_scale") == "factor" else f"±{mde:.3g}"


@dataclass
class Claim:
    id: str
    kind: str
    qualifies: str | None
    measurement: str
    statement: str
    paper_value: str
    source: str
    measured: float | None
    interval: list[float] | None
    n: int
    interval_method: str
    requires: list[dict]
    rules: dict
    criterion: str
    verdict: str
    reason: str
    mde: float | None = None
    mde_scale: str | None = None
    units_to_decide: int | None = None
    units: list | None = None  # the measurement's per-unit values, beside its interval

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_specs(specs: Sequence[Mapping[str, Any]], where: str = "claims") -> None:
    """Raise ValueError naming the claim and key for a bad kind, rule, precondition or reference."""
    ids = [s.get("id") for s in specs]
    for spec in specs:
        cid = spec.get("id", "?")
        if ids.count(cid) > 1:
            raise ValueError(f"{where}: claim id '{cid}' appears {ids.count(cid)} times")
        if spec.get("kind") in (None, "???"):
            raise ValueError(f"{where}: claim '{cid}' has no kind: add `kind:` paper, control or sanity")
        if spec.get("kind") not in KINDS:
            raise ValueError(f"{where}: claim '{cid}' has kind {spec.get('kind')!r}; expected one of "
                             f"{', '.join(KINDS)}")
        for key in ("replicated", "partial"):
            if spec.get(key) is not None:
                _parse_named(spec[key], f"{where}: claim '{cid}' {key}")
        for key, rule in (spec.get("requires") or {}).items():
            _parse_named(rule, f"{where}: claim '{cid}' requires.{key}")
        target = spec.get("qualifies")
        if spec.get("kind") == "control":
            if not target and not any(s.get("kind") == "paper" for s in specs):
                continue  # a figure of the suite's own (no paper claim): its controls stand alone
            if not target:
                raise ValueError(f"{where}: control claim '{cid}' must name the paper claim it "
                                 "qualifies ('qualifies: <id>')")
            kinds = {s.get("id"): s.get("kind") for s in specs}
            if kinds.get(target) != "paper":
                raise ValueError(f"{where}: claim '{cid}' qualifies '{target}', which is not a paper "
                                 "claim of this figure")
        elif target:
            raise ValueError(f"{where}: only control claims qualify another; '{cid}' is {spec.get('kind')}")


def _parse_named(rule: str, where: str) -> None:
    try:
        parse_rule(rule)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


class MissingMeasurement(ValueError):
    """A claim reads a measurement key that the figure's measures did not return."""


def evaluate(specs: Sequence[Mapping[str, Any]], measurements: Mapping[str, Any],
             where: str = "claims") -> list[Claim]:
    """Claims from their config specs and the figure's measurements.

    Every key a claim reads (``measured`` and ``requires``) must be present: a missing key is a
    :class:`MissingMeasurement` naming it (a typo or a measures function out of step with its
    config), never an ``inconclusive`` claim. A present key whose value is NaN is inconclusive."""
    validate_specs(specs, where)
    read = {s["measured"]: s["id"] for s in specs}
    read.update({key: s["id"] for s in specs for key in (s.get("requires") or {})})
    missing = sorted(set(read) - set(measurements))
    if missing:
        raise MissingMeasurement(f"{where}: no measurement " + ", ".join(
            f"'{key}' (read by claim '{read[key]}')" for key in missing))
    claims = []
    for spec in specs:
        est = as_estimate(measurements.get(spec["measured"]))
        value = est.value if est is not None and math.isfinite(est.value) else None
        interval = list(est.interval) if est is not None and est.interval is not None else None
        if interval is not None and not all(math.isfinite(x) for x in interval):
            interval = None
        pre = check_preconditions(spec.get("requires") or {}, measurements)
        verdict_, reason = judge(value, interval, spec["replicated"], spec.get("partial"), pre)
        claims.append(Claim(
            id=spec["id"], kind=spec["kind"], qualifies=spec.get("qualifies"), measurement=spec["measured"],
            statement=spec["statement"], paper_value=spec["paper_value"], source=spec.get("source", ""),
            measured=value, interval=interval, n=est.n if est is not None else 0,
            interval_method=est.method if est is not None else "not measured",
            requires=[asdict(p) for p in pre],
            rules={"replicated": spec["replicated"], "partial": spec.get("partial")},
            criterion=criterion_text(spec["replicated"], spec.get("partial")),
            verdict=verdict_, reason=reason, **power_summary(est, spec["replicated"], spec.get("partial")),
            units=_plain(est.units) if est is not None else None,
        ))
    return claims


def rejudge(claim: Mapping[str, Any], replicated: str, partial: str | None,
            requires: Mapping[str, str]) -> tuple[str, str]:
    """The verdict a claim record's own numbers give under the given rules (for the scorecard)."""
    pre = []
    for p in claim.get("requires") or []:
        rule = requires.get(p.get("measured"), p.get("rule"))
        value = p.get("value")
        pre.append(Precondition(p.get("measured"), rule, value,
                                isinstance(value, (int, float)) and holds(rule, value)))
    missing = set(requires) - {p.measured for p in pre}
    pre += [Precondition(key, requires[key], None, False) for key in sorted(missing)]
    return judge(claim.get("measured"), claim.get("interval"), replicated, partial, pre)
