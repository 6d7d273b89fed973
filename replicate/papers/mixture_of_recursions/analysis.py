"""Notebook-side analysis of the Mixture-of-Recursions figures (Bae et al. 2025): the run
tables (one row per run: model label, seed, training FLOPs, isoFLOP budget, validation NLL under
both routing rules; depth shares and rule agreement) and the numbers every claim is judged on,
each an :class:`replicate.claims.Estimate` over its independent units.

Units are independent training runs: seeds, and for comparisons pooled over N_r in {2, 3},
(N_r, seed) pairs of runs (each pair a distinct pair of runs); never one seed picked. Notebook-only:
the training code never imports this module.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from replicate import claims as claims_lib

BUDGET_TOLERANCE = 0.05  # a run belongs to a budget when its FLOPs are within 5% of it


PAPER_AUX = ("logits", 0.001)  # the paper's auxiliary loss: BCE on the routing logits, coefficient 0.001
PAPER_AUX_SUFFIX = " (paper aux 0.001)"


def model_label(variant: str, n_rec: int, kv_share: bool = False, aux_mode: str | None = None,
                aux_coef: float | None = None) -> str:
    """Display label; an expert-choice model trained with the paper's auxiliary-loss setting (the
    control of our deviation) gets ``PAPER_AUX_SUFFIX``, any other non-default setting its own."""
    if variant == "vanilla":
        return "vanilla"
    name = {"recursive": "recursive", "recursive_gated": "recursive fixed-gate", "mor_ec": "MoR-EC",
            "mor_tc": "MoR-TC"}[variant]
    label = f"{name} N_r={n_rec}" + (" +KV share" if kv_share else "")
    if variant == "mor_ec" and aux_mode is not None:
        if (aux_mode, float(aux_coef)) == PAPER_AUX:
            label += PAPER_AUX_SUFFIX
        elif (aux_mode, float(aux_coef)) != DEFAULT_AUX:
            label += f" ({aux_mode} aux {aux_coef:g})"
    return label


DEFAULT_AUX = ("detached", 0.1)  # text_lm.yaml's default (our deviation); a test keeps the two in step


def probe_label(p: dict) -> str:
    """``model_label`` of a run from its probes."""
    return model_label(p["variant"], p["n_rec"], p["kv_share"], p.get("aux_mode"), p.get("aux_coef"))


def run_table(runs: pd.DataFrame, budgets: list[float]) -> pd.DataFrame:
    """One row per finished run: label, seed, params, flops, budget (index or -1), nll_topk,
    nll_causal (the threshold rule; equal to top-k for models without expert-choice)."""
    rows = []
    for r in runs.itertuples():
        p = r.probes
        flops = p["train_flops"]
        ratios = [abs(flops / b - 1) for b in budgets]
        k = int(np.argmin(ratios))
        rows.append({"label": probe_label(p),
                     "variant": p["variant"], "n_rec": p["n_rec"] if p["variant"] != "vanilla" else 0,
                     "kv_share": p["kv_share"], "seed": r.seed if "seed" in runs else 0,
                     "steps": r.steps, "params": r.params, "flops": flops,
                     "budget": k if ratios[k] < BUDGET_TOLERANCE else -1,
                     "nll_topk": p["nll"]["topk"], "nll_causal": p["nll"]["threshold"],
                     "run_dir": r.run_dir, "wall_seconds": r.wall_seconds})
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].fillna(0).astype(int)
    return table


def mean_at(table: pd.DataFrame, label: str, budget: int, column: str) -> float:
    """Mean of ``column`` over seeds for one model at one budget (NaN when absent)."""
    rows = table[(table.label == label) & (table.budget == budget)]
    return float(rows[column].mean()) if len(rows) else math.nan


def nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _seed(row) -> int:
    seed = getattr(row, "seed", 0)
    return 0 if seed is None or pd.isna(seed) else int(seed)


# --------------------------------------------------------------------------- claim numbers

OFF_BUDGET = -1  # run_table's budget for runs that spend no isoFLOP budget (equal-steps controls)


def side_values(table: pd.DataFrame, label: str, budget: int, column: str) -> pd.Series:
    """``column`` per seed for one model at one budget (``OFF_BUDGET`` for the equal-steps runs)."""
    rows = table[(table.label == label) & (table.budget == budget)]
    return rows.groupby("seed")[column].mean()


def paired_gaps(table: pd.DataFrame, comparisons: dict) -> pd.DataFrame:
    """One row per (comparison, seed) where both sides have a finished run: ``a``, ``b`` and
    ``gap = a - b``.

    ``comparisons`` maps a name (e.g. ``"N_r=2"``) to two sides ``((label, budget, column),
    (label, budget, column))``; the sides are paired by seed (same seed, same data order).
    """
    rows = []
    for name, (side_a, side_b) in comparisons.items():
        a, b = side_values(table, *side_a), side_values(table, *side_b)
        for seed in sorted(set(a.index) & set(b.index)):
            rows.append({"comparison": name, "seed": int(seed), "a": float(a[seed]), "b": float(b[seed]),
                         "gap": float(a[seed] - b[seed])})
    return pd.DataFrame(rows, columns=["comparison", "seed", "a", "b", "gap"])


def gap_estimate(gaps: pd.DataFrame) -> claims_lib.Estimate:
    """Mean of ``gaps.gap`` with a t interval over its rows (independent pairs of runs)."""
    unit = "seeds" if gaps.comparison.nunique() <= 1 else "(N_r, seed) run pairs"
    return claims_lib.paired_difference(gaps.a, gaps.b, unit=unit)


def share_of_gain(part: pd.DataFrame, whole: pd.DataFrame) -> claims_lib.Estimate:
    """mean(part.gap) / mean(whole.gap) with a paired percentile bootstrap over the units the
    two tables share (same comparison and seed): e.g. the fixed-gate model's gain over the
    recursive model as a share of MoR-EC's."""
    both = part.merge(whole, on=["comparison", "seed"], suffixes=("_part", "_whole"))
    unit = "seeds" if both.comparison.nunique() <= 1 else "(N_r, seed) units"
    return claims_lib.ratio_of_means(both.gap_part, both.gap_whole, unit=unit)


def nr_comparisons(minuend: str, subtrahend: str, budget_a: int, budget_b: int, col_a: str = "nll_causal",
                   col_b: str = "nll_causal", n_recs=(2, 3)) -> dict:
    """``{"N_r=n": ((minuend N_r=n, budget_a, col_a), (subtrahend N_r=n, budget_b, col_b))}``;
    a label containing ``{n}`` is formatted with N_r."""
    return {f"N_r={n}": ((minuend.format(n=n), budget_a, col_a), (subtrahend.format(n=n), budget_b, col_b))
            for n in n_recs}


DEPTH_COLUMNS = ["label", "variant", "seed", "n_rec", "deep_share_topk", "deep_share_causal", "capacity",
                 "causal_deviation", "rule_agreement", "imbalance", "dead_token_ratio", "run_dir"]


def depth_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per MoR run: label, variant, seed, N_r, the share of tokens reaching the deepest
    recursion under top-k and under the causal rule, its trained capacity (1/N_r for expert-choice;
    token-choice has none) and the causal share's absolute deviation from it, the mean rule
    agreement over routed steps (expert-choice), the imbalance (largest |share of depth i - 1/N_r|
    under the causal rule, for token-choice) and the dead-token ratio."""
    rows = []
    for r in runs.itertuples():
        p = r.probes
        if p["variant"] not in ("mor_ec", "mor_tc"):
            continue
        n_rec = int(p["n_rec"])
        deep = float(p["depth_share"]["threshold"][-1])
        capacity = 1.0 / n_rec if p["variant"] == "mor_ec" else math.nan
        agreement = p.get("rule_agreement") or {}
        rows.append({"label": probe_label(p), "variant": p["variant"],
                     "seed": _seed(r),
                     "n_rec": n_rec, "deep_share_topk": float(p["depth_share"]["topk"][-1]),
                     "deep_share_causal": deep, "capacity": capacity,
                     "causal_deviation": abs(deep - capacity),
                     "rule_agreement": float(np.mean(list(agreement.values()))) if agreement else math.nan,
                     "imbalance": max(abs(x - 1.0 / n_rec) for x in p["depth_share"]["threshold"]),
                     "dead_token_ratio": float(p.get("dead_token_ratio", math.nan)),
                     "run_dir": r.run_dir})
    return pd.DataFrame(rows, columns=DEPTH_COLUMNS)


def causal_depth_deviation(depths: pd.DataFrame, label: str = "MoR-EC N_r=2") -> claims_lib.Estimate:
    """Mean over seeds of |causal deep share - capacity| for one expert-choice model, t interval
    over seeds (every seed of that model)."""
    return claims_lib.mean_interval(depths[depths.label == label].causal_deviation)


def rule_agreement(depths: pd.DataFrame, labels: list[str] | None = None) -> claims_lib.Estimate:
    """Mean over every expert-choice run (N_r in {2, 3}, every seed; only ``labels`` when given,
    else every label without ``PAPER_AUX_SUFFIX``) of its rule agreement (each run's mean over
    its routed steps), t interval over the runs."""
    ec = depths[depths.variant == "mor_ec"]
    ec = ec[ec.label.isin(labels)] if labels is not None else ec[~ec.label.str.endswith(PAPER_AUX_SUFFIX)]
    unit = "runs (N_r x seeds)" if ec.n_rec.nunique() > 1 else "seeds"
    return claims_lib.mean_interval(ec.rule_agreement, unit=unit)


def tc_imbalance(depths: pd.DataFrame) -> claims_lib.Estimate:
    """Mean over every token-choice run (N_r x seeds) of its depth imbalance, t interval over runs."""
    return claims_lib.mean_interval(depths[depths.variant == "mor_tc"].imbalance, unit="runs (N_r x seeds)")


def round_speedups(seconds_model: list[float], seconds_base: list[float], batch_model: int,
                   batch_base: int) -> np.ndarray:
    """Per timing round, the model's tokens/s over the baseline's: (batch_model / t_model) /
    (batch_base / t_base) (both generate the same number of tokens per sequence)."""
    t_m, t_b = np.asarray(seconds_model, float), np.asarray(seconds_base, float)
    if len(t_m) != len(t_b):
        raise ValueError(f"round_speedups: {len(t_m)} and {len(t_b)} rounds are not paired")
    return (batch_model / t_m) / (batch_base / t_b)


def speedup_estimate(seconds_model, seconds_base, batch_model: int, batch_base: int) -> claims_lib.Estimate:
    """Mean per-round speed-up with a t interval over the interleaved timing rounds (one trained
    model per variant: the interval covers timing noise, not seed-to-seed variation)."""
    return claims_lib.mean_interval(round_speedups(seconds_model, seconds_base, batch_model, batch_base),
                                    unit="timing rounds")
