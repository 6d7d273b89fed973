"""Claim records and the rules that turn a measured number into a verdict.

A figure config lists its claims (``configs/figure/<paper>/<figure>.yaml``)::

    claims:
      - id: sink_cut_headwise
        statement: headwise gating cuts first-token attention at least 3x
        paper_value: 0.467 -> 0.073 (6.4x)
        measured: sink_ratio_headwise     # a key of the notebook's measurements
        replicated: ">= 3"
        partial: ">= 1.5"

A rule is ``<op> <number>`` with op in ``>=, >, <=, <`` or ``in [lo, hi]``. The verdict is
``replicated`` when the ``replicated`` rule holds, else ``partial`` when the ``partial`` rule
holds, else ``not_replicated``; a missing or non-finite measurement is ``inconclusive``.
Verdicts are only ever computed here, from numbers.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

VERDICTS = ("replicated", "partial", "not_replicated", "inconclusive")
_COMPARE = re.compile(r"^\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")
_INTERVAL = re.compile(r"^\s*in\s*\[\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\]\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Claim:
    id: str
    statement: str
    paper_value: str
    measured: float | str | None
    criterion: str
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def holds(rule: str, value: float) -> bool:
    """Whether ``value`` satisfies ``rule`` (``>= 3``, ``< 0.1``, ``in [-0.65, -0.35]``)."""
    if m := _COMPARE.match(rule):
        return _OPS[m.group(1)](value, float(m.group(2)))
    if m := _INTERVAL.match(rule):
        return float(m.group(1)) <= value <= float(m.group(2))
    raise ValueError(f"bad claim rule {rule!r}: expected '<op> <number>' (op in >=, >, <=, <) "
                     "or 'in [lo, hi]'")


def verdict(value: Any, replicated: str, partial: str | None = None) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "inconclusive"
    if holds(replicated, value):
        return "replicated"
    if partial is not None and holds(partial, value):
        return "partial"
    return "not_replicated"


def criterion_text(replicated: str, partial: str | None = None) -> str:
    text = f"replicated if measured {replicated.strip()}"
    return text + (f"; partial if {partial.strip()}" if partial else "")


def evaluate(specs: list[Mapping[str, Any]], measurements: Mapping[str, Any]) -> list[Claim]:
    """Claims from their config specs and the notebook's measurements (missing -> inconclusive)."""
    for spec in specs:  # validate every rule before judging any
        holds(spec["replicated"], 0.0)
        if spec.get("partial"):
            holds(spec["partial"], 0.0)
    claims = []
    for spec in specs:
        value = measurements.get(spec["measured"])
        if hasattr(value, "item"):
            value = value.item()
        claims.append(Claim(
            id=spec["id"], statement=spec["statement"], paper_value=spec["paper_value"],
            measured=value if value is not None else "not measured",
            criterion=criterion_text(spec["replicated"], spec.get("partial")),
            verdict=verdict(value, spec["replicated"], spec.get("partial")),
        ))
    return claims
