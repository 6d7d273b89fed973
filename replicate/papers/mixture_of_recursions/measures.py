"""Every number the Mixture-of-Recursions claims read (Bae et al. 2025), one function per figure:
``measures.<figure>(runs, cfg) -> {measurement key: Estimate | float}``.

``runs`` is the figure's run table (``FigureContext.runs()``: one row per sweep point, with the
run's ``probes``), ``cfg`` the composed figure config (``cfg.figure.measure`` holds the
notebook-side parameters). Runs are picked by their config values (variant, N_r, KV sharing,
auxiliary-loss setting, budget; ``analysis.Side``), never by position. Units are independent
training runs (seeds, or (N_r, seed) run pairs where a claim pools N_r), except the throughput
speed-ups, whose units are timing rounds of one trained model per variant.
"""

from __future__ import annotations

import math

import pandas as pd

from replicate import claims
from replicate.papers.mixture_of_recursions.analysis import (OFF_BUDGET, Side, causal_depth_deviation, depth_table,
                                                             expert_choice_runs, gap_estimate, gate_table, over_n_rec,
                                                             paired_gaps, rule_agreement, run_table, share_of_gain,
                                                             speedup_estimate, tc_imbalance, trained_gates)

# ------------------------------------------------------------------------------------ isoflop


def isoflop_units(runs: pd.DataFrame, cfg) -> dict[str, pd.DataFrame]:
    """Per measurement, its paired runs at the top budget (Table 3 protocol: equal training FLOPs):
    one row per (comparison, seed) with ``a``, ``b`` and ``gap = a - b`` (validation NLL, nats per
    byte). "Gain" = other model minus MoR (positive: MoR better); "gap" = MoR minus vanilla, or TC
    minus EC (positive: the first is worse). MoR-EC is read under the causal rule unless the key
    says top-k; ``equal_steps`` keys use the MoR-EC runs trained for vanilla's step count."""
    table = run_table(runs, list(cfg.figure.measure.budgets))
    top = len(cfg.figure.measure.budgets) - 1

    def at(variant: str, n_rec: int = 0, budget: int = top, **config) -> Side:
        return Side(variant, budget, n_rec, **config)

    def one(a: Side, b: Side) -> pd.DataFrame:
        return paired_gaps(table, {"": (a, b)})

    def pooled(pair) -> pd.DataFrame:
        return paired_gaps(table, over_n_rec(pair))

    ec, ec_paper = at("mor_ec", 2), at("mor_ec", 2, aux="paper")
    return {
        "gain_ec_vs_recursive_causal": pooled(lambda n: (at("recursive", n), at("mor_ec", n))),
        "gain_ec_vs_recursive_topk": pooled(lambda n: (at("recursive", n), at("mor_ec", n, rule="topk"))),
        "gap_ec2_vs_vanilla_causal": one(ec, at("vanilla")),
        "gap_ec2_vs_vanilla_topk": one(at("mor_ec", 2, rule="topk"), at("vanilla")),
        "gap_ec3_vs_vanilla_causal": one(at("mor_ec", 3), at("vanilla")),
        "gap_tc3_vs_ec3": one(at("mor_tc", 3), at("mor_ec", 3)),
        "gap_tc2_vs_ec2": one(at("mor_tc", 2), ec),
        "kv_share_cost_ec3": one(at("mor_ec", 3, kv_share=True), at("mor_ec", 3)),
        "equal_steps_gain_ec_vs_recursive": pooled(lambda n: (at("recursive", n),
                                                              at("mor_ec", n, budget=OFF_BUDGET))),
        "equal_steps_gap_ec2_vs_vanilla": one(at("mor_ec", 2, budget=OFF_BUDGET), at("vanilla")),
        "gain_paper_aux_ec2_vs_recursive": one(at("recursive", 2), ec_paper),
        "cost_paper_aux_vs_ours_ec2": one(ec_paper, ec),
        "cost_paper_aux_vs_ours_ec2_topk": one(at("mor_ec", 2, aux="paper", rule="topk"),
                                               at("mor_ec", 2, rule="topk")),
        "gain_fixed_gate_vs_recursive": pooled(lambda n: (at("recursive", n), at("recursive_gated", n))),
        "gain_ec_vs_fixed_gate": pooled(lambda n: (at("recursive_gated", n), at("mor_ec", n))),
        "equal_steps_gain_ec_vs_fixed_gate": pooled(lambda n: (at("recursive_gated", n),
                                                               at("mor_ec", n, budget=OFF_BUDGET))),
        "gap_fixed_gate2_vs_vanilla": one(at("recursive_gated", 2), at("vanilla")),
    }


def isoflop(runs: pd.DataFrame, cfg, read_gates=trained_gates) -> dict:
    """The isoFLOP figure's measurements (Table 3, Table 9 and Sec. 3.1 of the paper): every
    :func:`isoflop_units` gap as a mean with a t interval over its paired units; the fixed-gate
    model's share of MoR-EC's gain over the recursive model (per unit, recursive minus fixed-gate
    over recursive minus MoR-EC; mean with a t interval over the units both share), at equal
    FLOPs and against the equal-steps runs; the range of the mean gates w the trained MoR-EC
    routers apply at the top budget (``read_gates(run_dir)``, a checkpoint reload by default); and
    vanilla's mean NLL and seed-to-seed sd at the top budget."""
    units = isoflop_units(runs, cfg)
    out: dict = {key: gap_estimate(rows) for key, rows in units.items()}
    out["fixed_gate_share_of_ec_gain"] = share_of_gain(units["gain_fixed_gate_vs_recursive"],
                                                       units["gain_ec_vs_recursive_causal"])
    out["fixed_gate_share_of_equal_steps_gain"] = share_of_gain(units["gain_fixed_gate_vs_recursive"],
                                                                units["equal_steps_gain_ec_vs_recursive"])
    table = run_table(runs, list(cfg.figure.measure.budgets))
    top = len(cfg.figure.measure.budgets) - 1
    gates = gate_table(table, top, read_gates).filter(like="w at").stack()
    out["trained_gate_ec_min"] = float(gates.min()) if len(gates) else math.nan
    out["trained_gate_ec_max"] = float(gates.max()) if len(gates) else math.nan
    vanilla = Side("vanilla", top).values(table)
    out["nll_vanilla"] = float(vanilla.mean()) if len(vanilla) else math.nan
    out["seed_sd_vanilla"] = float(vanilla.std()) if len(vanilla) > 1 else math.nan
    return out


# ------------------------------------------------------------------------------------ depth_map


def depth_map(runs: pd.DataFrame, cfg) -> dict:
    """The depth-map figure's measurements (Sec. 2.2.1 and the routing analyses of Sec. 4): per
    expert-choice model, |causal share of the deepest recursion - capacity 1/N_r| (mean with a t
    interval over its seeds); the rule agreement (each run's mean over its routed steps) over every
    expert-choice run of our aux setting (N_r x seeds), and over the paper-setting and our N_r = 2
    runs; the token-choice depth imbalance over every token-choice run; the run counts the claims
    require; and, per model label, the causal deepest-recursion share and dead-token ratio (means
    with t intervals over seeds)."""
    depths = depth_table(runs)
    tc = depths[depths.variant == "mor_tc"]
    out: dict = {
        "rule_agreement_ec": rule_agreement(depths),
        "rule_agreement_ec2": rule_agreement(depths, n_rec=2),
        "rule_agreement_ec2_paper_coef": rule_agreement(depths, aux="paper", n_rec=2),
        "causal_depth_deviation_ec2": causal_depth_deviation(depths, 2),
        "causal_depth_deviation_ec3": causal_depth_deviation(depths, 3),
        "causal_depth_deviation_ec2_paper_coef": causal_depth_deviation(depths, 2, aux="paper"),
        "tc_depth_imbalance": tc_imbalance(depths),
        "n_runs_ec": float(len(expert_choice_runs(depths))),
        "n_seeds_ec2": float(len(expert_choice_runs(depths, n_rec=2))),
        "n_seeds_ec2_paper_coef": float(len(expert_choice_runs(depths, aux="paper", n_rec=2))),
        "n_runs_tc": float(len(tc)),
    }
    for label, rows in depths.groupby("label", sort=False):
        out[f"causal_deep_share[{label}]"] = claims.mean_interval(rows.deep_share_causal)
        out[f"dead_token_ratio[{label}]"] = claims.mean_interval(rows.dead_token_ratio)
    return out


# ------------------------------------------------------------------------------------ throughput


def throughput(decoded: pd.DataFrame, cfg) -> dict:
    """The throughput figure's measurements (Sec. 2.2.2 and 4.2, Fig. 4) from the run table with
    the decoding columns of ``timing.decode_runs`` (the timing protocol runs there, on the
    notebook's machine): per MoR model, vanilla's KV-cache bytes per sequence over its own (exact:
    one deterministic greedy generation of one trained model per variant); speed-ups over vanilla
    at the memory-budget batch and at the fixed batch (per timing round, the ratio of the two
    models' tokens/s; geometric mean with a t interval on the logs over the rounds: timing noise,
    not seed variation); MoR-EC N_r=3's mean depth; and the device name."""
    vanilla = _model_row(decoded, "vanilla", 0)
    if vanilla is None:
        raise ValueError("measures.throughput: the run table has no vanilla run to compare with")
    out: dict = {"device": str(vanilla.device)}
    models = {"ec3": ("mor_ec", 3, False), "ec2": ("mor_ec", 2, False), "ec3_kv_share": ("mor_ec", 3, True),
              "recursive2": ("recursive", 2, False)}
    for name, (variant, n_rec, kv_share) in models.items():
        row = _model_row(decoded, variant, n_rec, kv_share)
        out[f"cache_ratio_{name}"] = _cache_ratio(vanilla, row)
        for where in ("budget", "fixed"):
            out[f"speedup_{name}_{where}"] = _speedup(row, vanilla, where)
    ec3 = _model_row(decoded, "mor_ec", 3)
    out["mean_depth_ec3"] = float(ec3.mean_depth) if ec3 is not None else math.nan
    return out


def _model_row(decoded: pd.DataFrame, variant: str, n_rec: int, kv_share: bool = False):
    rows = decoded[(decoded.variant == variant) & (decoded.n_rec == n_rec) & (decoded.kv_share == kv_share)]
    if len(rows) > 1:
        raise ValueError(f"measures.throughput: {len(rows)} runs of {variant} N_r={n_rec} kv_share={kv_share}; "
                         "the figure decodes one trained model per variant")
    return rows.iloc[0] if len(rows) else None


def _cache_ratio(vanilla, row) -> claims.Estimate:
    if row is None:
        return claims.exact(math.nan, "model not run at this scale")
    return claims.exact(vanilla.cache_kb_per_seq / row.cache_kb_per_seq,
                        "bytes counted exactly from one greedy generation per model (deterministic), seed-0 models")


def _speedup(row, vanilla, where: str) -> claims.Estimate:
    if row is None:
        return claims.mean_interval([], unit="timing rounds (model not run at this scale)")
    batch = "budget_batch" if where == "budget" else "batch"
    return speedup_estimate(row[f"seconds_{where}"], vanilla[f"seconds_{where}"], int(row[batch]), int(vanilla[batch]))
