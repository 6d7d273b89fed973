"""Every number the Mixture-of-Recursions claims read (Bae et al. 2025), one function per figure:
``measures.<figure>(runs, cfg) -> {measurement key: Estimate | float}``.

``runs`` is the figure's run table (``FigureContext.runs()``: one row per sweep point, with the
run's ``probes``), ``cfg`` the composed figure config (``cfg.figure.measure`` holds the
notebook-side parameters). Runs are picked by their config values (variant, N_r, KV sharing,
auxiliary-loss setting, budget; ``analysis.Side``), never by position. Units are independent
training runs (seeds, or (N_r, seed) run pairs where a number pools N_r); the throughput ratios
pair each seed's MoR model with the vanilla model of the same seed.
"""

from __future__ import annotations

import math

import numpy as np
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
    minus EC, or the control setting minus the paper's (positive: the first is worse). MoR-EC is
    read under the causal rule unless the key says top-k, with the paper's auxiliary loss unless
    the key says ``detached``; ``rand_router`` is MoR-EC with random scores in place of routers;
    ``equal_steps`` keys use the MoR-EC runs trained for vanilla's step count; ``pooled`` keys pool
    N_r in {2, 3} as (N_r, seed) units and are shown, not judged (each N_r is its own claim).
    ``vanilla_gated`` is vanilla with the fixed-gate update on its two groups of middle blocks
    (equal FLOPs to vanilla): MoR-EC against it compares MoR with the same small residual scale."""
    table = run_table(runs, list(cfg.figure.measure.budgets))
    top = len(cfg.figure.measure.budgets) - 1

    def at(variant: str, n_rec: int = 0, budget: int = top, **config) -> Side:
        return Side(variant, budget, n_rec, **config)

    def one(a: Side, b: Side) -> pd.DataFrame:
        return paired_gaps(table, {"": (a, b)})

    def pooled(pair) -> pd.DataFrame:
        return paired_gaps(table, over_n_rec(pair))

    ec2, ec3, rec2, rec3 = at("mor_ec", 2), at("mor_ec", 3), at("recursive", 2), at("recursive", 3)
    detached, random = at("mor_ec", 2, aux="detached"), at("mor_ec", 2, rand_router=True)
    return {
        "gain_ec2_vs_recursive2_causal": one(rec2, ec2),
        "gain_ec3_vs_recursive3_causal": one(rec3, ec3),
        "gain_ec2_vs_recursive2_topk": one(rec2, at("mor_ec", 2, rule="topk")),
        "gain_ec_vs_recursive_causal": pooled(lambda n: (at("recursive", n), at("mor_ec", n))),
        "gain_ec_vs_recursive_topk": pooled(lambda n: (at("recursive", n), at("mor_ec", n, rule="topk"))),
        "gap_ec2_vs_vanilla_causal": one(ec2, at("vanilla")),
        "gap_ec2_vs_vanilla_topk": one(at("mor_ec", 2, rule="topk"), at("vanilla")),
        "gap_ec3_vs_vanilla_causal": one(ec3, at("vanilla")),
        "gap_tc3_vs_ec3": one(at("mor_tc", 3), ec3),
        "gap_tc2_vs_ec2": one(at("mor_tc", 2), ec2),
        "kv_share_cost_ec3": one(at("mor_ec", 3, kv_share=True), ec3),
        "equal_steps_gain_ec_vs_recursive": pooled(lambda n: (at("recursive", n),
                                                              at("mor_ec", n, budget=OFF_BUDGET))),
        "equal_steps_gap_ec2_vs_vanilla": one(at("mor_ec", 2, budget=OFF_BUDGET), at("vanilla")),
        "gain_detached_aux_ec2_vs_recursive": one(rec2, detached),
        "gap_detached_vs_paper_aux_ec2": one(detached, ec2),
        "gap_detached_vs_paper_aux_ec2_topk": one(at("mor_ec", 2, aux="detached", rule="topk"),
                                                  at("mor_ec", 2, rule="topk")),
        "gain_ec2_vs_rand_router": one(random, ec2),
        "gain_rand_router_vs_recursive2": one(rec2, random),
        "gain_fixed_gate_vs_recursive": pooled(lambda n: (at("recursive", n), at("recursive_gated", n))),
        "gain_ec_vs_fixed_gate": pooled(lambda n: (at("recursive_gated", n), at("mor_ec", n))),
        "equal_steps_gain_ec_vs_fixed_gate": pooled(lambda n: (at("recursive_gated", n),
                                                               at("mor_ec", n, budget=OFF_BUDGET))),
        "gap_fixed_gate2_vs_vanilla": one(at("recursive_gated", 2), at("vanilla")),
        "gap_ec2_vs_vanilla_gated_causal": one(ec2, at("vanilla_gated", 2)),
        "gain_gated_vanilla_vs_vanilla": one(at("vanilla"), at("vanilla_gated", 2)),
        "gap_fixed_gate2_vs_vanilla_gated": one(at("recursive_gated", 2), at("vanilla_gated", 2)),
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
    expert-choice run with the paper's auxiliary loss (N_r x seeds), over its N_r = 2 seeds and over
    the detached-BCE control's seeds; the token-choice depth imbalance over every token-choice run;
    the run counts the claims require; and, per model label, the causal deepest-recursion share and
    dead-token ratio (means with t intervals over seeds)."""
    depths = depth_table(runs)
    tc = depths[depths.variant == "mor_tc"]
    out: dict = {
        "rule_agreement_ec": rule_agreement(depths),
        "rule_agreement_ec2": rule_agreement(depths, n_rec=2),
        "rule_agreement_ec2_detached": rule_agreement(depths, aux="detached", n_rec=2),
        "causal_depth_deviation_ec2": causal_depth_deviation(depths, 2),
        "causal_depth_deviation_ec3": causal_depth_deviation(depths, 3),
        "causal_depth_deviation_ec2_detached": causal_depth_deviation(depths, 2, aux="detached"),
        "tc_depth_imbalance": tc_imbalance(depths),
        "n_runs_ec": float(len(expert_choice_runs(depths))),
        "n_seeds_ec2": float(len(expert_choice_runs(depths, n_rec=2))),
        "n_seeds_ec2_detached": float(len(expert_choice_runs(depths, aux="detached", n_rec=2))),
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
    notebook's machine). Units are seeds: each seed's MoR model is paired with the vanilla model
    of the same seed, timed in the same interleaved rounds. Per MoR model: vanilla's KV-cache bytes
    per sequence over its own (each seed's count is exact: one deterministic greedy generation);
    the speed-up over vanilla at the fixed batch (both models at the same batch: the gain of
    skipping work, depth-wise, alone), the batch-size gain (the model's own tokens/s at its
    memory-budget batch over at the fixed batch) and the speed-up at the memory-budget batch (the
    product of the two, vanilla's budget batch being the fixed one); each a geometric mean over
    seeds of per-seed ratios of tokens/s (median over timing rounds) with a t interval on the logs.
    Also MoR-EC N_r=3's mean depth (mean over seeds), the seed counts and the device name."""
    vanilla = _model_rows(decoded, "vanilla", 0)
    if vanilla.empty:
        raise ValueError("measures.throughput: the run table has no vanilla run to compare with")
    out: dict = {"device": str(vanilla.device.iloc[0])}
    models = {"ec3": ("mor_ec", 3, False), "ec2": ("mor_ec", 2, False), "ec3_kv_share": ("mor_ec", 3, True),
              "recursive2": ("recursive", 2, False)}
    for name, (variant, n_rec, kv_share) in models.items():
        rows = _model_rows(decoded, variant, n_rec, kv_share)
        base = vanilla.loc[vanilla.index.intersection(rows.index)]
        rows = rows.loc[base.index]
        out[f"n_seeds_{name}"] = float(len(rows))
        out[f"cache_ratio_{name}"] = claims.ratio_interval(base.cache_kb_per_seq, rows.cache_kb_per_seq,
                                                           unit="seeds (bytes counted exactly per trained model)")
        out[f"speedup_{name}_fixed"] = _rate_ratio(rows, "fixed", base, "fixed")
        out[f"speedup_{name}_budget"] = _rate_ratio(rows, "budget", base, "budget")
        out[f"batch_gain_{name}"] = _rate_ratio(rows, "budget", rows, "fixed")
    ec3 = _model_rows(decoded, "mor_ec", 3)
    out["mean_depth_ec3"] = float(ec3.mean_depth.mean()) if len(ec3) else math.nan
    return out


def _model_rows(decoded: pd.DataFrame, variant: str, n_rec: int, kv_share: bool = False) -> pd.DataFrame:
    """The decoded runs of one model, indexed by seed (one run per seed)."""
    rows = decoded[(decoded.variant == variant) & (decoded.n_rec == n_rec) & (decoded.kv_share == kv_share)]
    if rows.seed.duplicated().any():
        raise ValueError(f"measures.throughput: two runs of {variant} N_r={n_rec} kv_share={kv_share} share a seed")
    return rows.set_index("seed").sort_index()


def _rate_ratio(rows: pd.DataFrame, where: str, base: pd.DataFrame, base_where: str) -> claims.Estimate:
    """Per seed, tokens/s of ``rows`` at ``where`` over ``base``'s at ``base_where`` (median over
    timing rounds); geometric mean over seeds with a t interval on the logs."""
    return speedup_estimate([float(np.median(s)) for s in rows[f"seconds_{where}"]],
                            [float(np.median(s)) for s in base[f"seconds_{base_where}"]],
                            _batches(rows, where), _batches(base, base_where),
                            unit="seeds (median tokens/s over interleaved timing rounds)")


def _batches(rows: pd.DataFrame, where: str) -> np.ndarray:
    return rows["budget_batch" if where == "budget" else "batch"].to_numpy(float)
