"""Notebook-side tables of the Mixture-of-Recursions figures: one row per run with its model
label, training FLOPs, isoFLOP budget and validation NLL under both routing rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

BUDGET_TOLERANCE = 0.05  # a run belongs to a budget when its FLOPs are within 5% of it


def model_label(variant: str, n_rec: int, kv_share: bool = False) -> str:
    if variant == "vanilla":
        return "vanilla"
    name = {"recursive": "recursive", "recursive_gated": "recursive fixed-gate", "mor_ec": "MoR-EC",
            "mor_tc": "MoR-TC"}[variant]
    return f"{name} N_r={n_rec}" + (" +KV share" if kv_share else "")


def run_table(runs: pd.DataFrame, budgets: list[float]) -> pd.DataFrame:
    """One row per finished run: label, seed, params, flops, budget (index or -1), nll_topk,
    nll_causal (the threshold rule; equal to top-k for models without expert-choice)."""
    rows = []
    for r in runs.itertuples():
        p = r.probes
        flops = p["train_flops"]
        ratios = [abs(flops / b - 1) for b in budgets]
        k = int(np.argmin(ratios))
        rows.append({"label": model_label(p["variant"], p["n_rec"], p["kv_share"]),
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
