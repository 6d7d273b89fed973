"""Claims, the uncertainty of the numbers behind them, and the rules that turn both into verdicts.

A figure config lists its claims (``configs/figure/<paper>/<figure>.yaml``)::

    claims:
      - id: sink_cut_headwise
        kind: paper                        # paper | control | sanity
        statement: headwise gating cuts first-token attention at least 3x
        paper_value: 0.467 -> 0.073 (6.4x)
        source: Table 4
        measured: sink_ratio_headwise      # a key of the notebook's measurements
        replicated: ">= 3"
        partial: ">= 1.5"
        requires:                          # preconditions: measurement key -> rule
          baseline_first_token: ">= 0.3"
      - id: sink_cut_fixed_gate
        kind: control                      # our ablation; shown under the claim it qualifies
        qualifies: sink_cut_headwise
        ...

Kinds. ``paper`` claims are the paper's and the only ones counted in totals; ``control`` claims are
our own ablations or controls and name the paper claim they bear on (``qualifies``); ``sanity``
claims are identities true by construction or code checks, listed apart and never counted.

Numbers. A notebook reports each measurement as a plain number or as an :class:`Estimate`: a value
with an interval over its independent units (seeds, datasets, replicates), their count ``n`` and
the method (:func:`mean_interval`, :func:`paired_difference`, :func:`bootstrap`, ...). A single
exact quantity is an Estimate without interval, with the reason in ``method`` (:func:`exact`).

Verdicts (:func:`judge`), computed only here. A rule is ``<op> <number>`` (op in ``>=, >, <=, <``)
or ``in [lo, hi]``. With an interval:

* ``replicated`` when every point of the interval satisfies the ``replicated`` rule;
* ``not_replicated`` when no point of it satisfies the ``partial`` rule (the ``replicated`` rule
  where there is no partial one);
* ``partial`` otherwise (the interval straddles a bar: within noise, or the effect is weaker).

Without an interval the point value is judged the same way ("single measurement"). A failed
precondition, or a value that is missing or not finite, gives ``inconclusive``. Preconditions are
judged on their point value. Every verdict comes with a ``reason`` saying which case applied.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

VERDICTS = ("replicated", "partial", "not_replicated", "inconclusive")
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
    return text + (f"; partial if {partial.strip()}" if partial else "")


# --------------------------------------------------------------------------- estimates
@dataclass(frozen=True)
class Estimate:
    """A measured number with its uncertainty over ``n`` independent units.

    ``interval`` is ``(lo, hi)`` or ``None`` for a single exact quantity (then ``method`` says
    why); ``units`` are the per-unit values it aggregates (every seed, never one picked).
    """

    value: float
    interval: tuple[float, float] | None = None
    n: int = 1
    method: str = "single measurement"
    units: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "interval": list(self.interval) if self.interval else None,
                "n": self.n, "method": self.method, "units": list(self.units)}

    def __format__(self, spec: str) -> str:
        spec = spec or ".4g"
        if self.interval is None:
            return format(self.value, spec)
        lo, hi = self.interval
        return f"{format(self.value, spec)} [{format(lo, spec)}, {format(hi, spec)}]"


def _finite(values: Iterable[float]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=float)


def exact(value: float, why: str) -> Estimate:
    """One exact quantity (no independent units to vary): no interval, ``why`` says so."""
    return Estimate(float(value), None, 1, why)


def mean_interval(samples: Sequence[float], level: float = 0.95, unit: str = "seeds") -> Estimate:
    """Mean of independent ``samples`` with a Student-t interval: x̄ ± t_{n-1} s/√n."""
    from scipy import stats

    x = _finite(samples)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, None, 0, f"no {unit}")
    mean = float(x.mean())
    if n < 2 or not np.isfinite(x).all():
        return Estimate(mean, None, n, f"mean of {n} {unit}: too few finite units for an interval",
                        tuple(x.tolist()))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, (mean - half, mean + half), n,
                    f"{level:.0%} t interval of the mean over {n} {unit}", tuple(x.tolist()))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                      unit: str = "seeds") -> Estimate:
    """Mean of ``a_i - b_i`` over paired units with a t interval over the paired differences."""
    a, b = _finite(a), _finite(b)
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} and {len(b)} values are not paired")
    est = mean_interval(a - b, level, unit)
    method = est.method.replace("of the mean", "over paired differences") if est.interval else est.method
    return Estimate(est.value, est.interval, est.n, method, est.units)


def bootstrap(samples: Sequence[Any], statistic, level: float = 0.95, resamples: int = 4000,
              seed: int = 0, unit: str = "seeds") -> Estimate:
    """``statistic(samples)`` with a percentile bootstrap interval over the independent units.

    ``samples`` is a sequence of units (numbers, or rows of an array: each unit resampled whole);
    ``statistic`` maps an array of units to one number.
    """
    units = np.asarray(samples, dtype=float)
    n = len(units)
    value = float(statistic(units)) if n else math.nan
    if n < 2 or not np.isfinite(units).all():
        return Estimate(value, None, n, f"{unit}: too few finite units for an interval")
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(units[rng.integers(0, n, n)]) for _ in range(resamples)], dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) < resamples // 2:
        return Estimate(value, None, n, f"{unit}: the statistic is not finite on most resamples")
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    flat = tuple(units.tolist()) if units.ndim == 1 else ()
    return Estimate(value, (float(lo), float(hi)), n,
                    f"{level:.0%} percentile bootstrap over {n} {unit} ({resamples} resamples)", flat)


def ratio_of_means(numerator: Sequence[float], denominator: Sequence[float], level: float = 0.95,
                   unit: str = "seeds", seed: int = 0) -> Estimate:
    """mean(numerator) / mean(denominator) with a percentile bootstrap interval over paired units
    (unit i is resampled on both sides at once: the same seed, the same dataset)."""
    num, den = _finite(numerator), _finite(denominator)
    if len(num) != len(den):
        raise ValueError(f"ratio_of_means: {len(num)} and {len(den)} values are not paired")
    return bootstrap(np.stack([num, den], 1), lambda u: u[:, 0].mean() / u[:, 1].mean(),
                     level, seed=seed, unit=f"paired {unit}")


def proportion(successes: int, trials: int, level: float = 0.95, unit: str = "seeds") -> Estimate:
    """A share ``successes / trials`` with a Wilson score interval."""
    from scipy import stats

    if trials == 0:
        return Estimate(math.nan, None, 0, f"no {unit}")
    p, z = successes / trials, float(stats.norm.ppf(0.5 + level / 2))
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return Estimate(p, (max(0.0, centre - half), min(1.0, centre + half)), trials,
                    f"{level:.0%} Wilson interval over {trials} {unit}")


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
    """``(verdict, reason)`` from a value, its interval (or None) and the rules (module docstring)."""
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
    if holds_everywhere(replicated, lo, hi):
        return "replicated", f"interval {shown} lies inside '{replicated}'"
    if not holds_somewhere(weaker, lo, hi):
        return "not_replicated", f"interval {shown} lies outside '{weaker}'"
    if holds_somewhere(replicated, lo, hi):
        return "partial", f"interval {shown} straddles '{replicated}': within noise"
    if partial and holds_everywhere(partial, lo, hi):
        return "partial", f"interval {shown} inside '{partial}' but outside '{replicated}': a weaker effect"
    return "partial", (f"interval {shown} outside '{replicated}' and straddles '{partial}': at most "
                       "a weaker effect, within noise")


@dataclass
class Claim:
    id: str
    kind: str
    qualifies: str | None
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


def evaluate(specs: Sequence[Mapping[str, Any]], measurements: Mapping[str, Any]) -> list[Claim]:
    """Claims from their config specs and the notebook's measurements (missing -> inconclusive)."""
    validate_specs(specs)
    claims = []
    for spec in specs:
        est = as_estimate(measurements.get(spec["measured"]))
        value = est.value if est is not None and math.isfinite(est.value) else None
        interval = list(est.interval) if est is not None and est.interval is not None else None
        if interval is not None and not all(math.isfinite(x) for x in interval):
            interval = None
        pre = check_preconditions(spec.get("requires") or {}, measurements)
        verdict_, reason = judge(value, interval, spec["replicated"], spec.get("partial"), pre)
        method = est.method if est is not None else "not measured"
        claims.append(Claim(
            id=spec["id"], kind=spec["kind"], qualifies=spec.get("qualifies"),
            statement=spec["statement"], paper_value=spec["paper_value"], source=spec.get("source", ""),
            measured=value, interval=interval, n=est.n if est is not None else 0,
            interval_method=method, requires=[asdict(p) for p in pre],
            rules={"replicated": spec["replicated"], "partial": spec.get("partial")},
            criterion=criterion_text(spec["replicated"], spec.get("partial")),
            verdict=verdict_, reason=reason,
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
