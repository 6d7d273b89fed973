"""Pareto frontiers of PSNR vs trainable parameters, the dominance criterion and shape trends.

Paper (arXiv 2510.01796, Sec. 4): every architecture of the search is a point (parameters,
PSNR); a family's Pareto frontier is its set of non-dominated points, and the claim is that the
Hourglass frontier lies above the conventional one. Definitions used here:

* a point *dominates* another when it has no more parameters and no lower PSNR, and is strictly
  better in one of the two (:func:`pareto_mask`);
* a frontier's *value at budget P* is the best PSNR among the family's points with at most P
  trainable parameters (:func:`frontier_value`; a step function, undefined below its smallest
  point);
* frontier A *dominates* frontier B over the budgets where both are defined and below both
  families' largest point: the *matched budgets* are every point's parameter count (of either
  family) in ``[max(min_A, min_B), min(max_A, max_B)]``. :func:`compare_frontiers` returns the
  fraction of matched budgets where A is strictly higher and the mean and minimum gap A − B in dB.

Learning rate (baselines tuned as hard as the method): each shape gets the learning rate with
the best validation PSNR (mean over seeds), and its point is the mean *test* PSNR at that rate.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

SHAPE_KEYS = ["family", "d_z", "d_h", "depth", "train_lift"]


def shape_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, shape) from the runs' ``probes.shapes``, with the run's lr and seed."""
    rows = []
    for run in runs.itertuples():
        probes = run.probes or {}
        for shape in probes.get("shapes", []):
            rows.append({"lr": probes.get("lr"), **shape, "seed": run.seed, "task": probes["task"]["kind"],
                         "run_status": run.status})
    if not rows:
        raise ValueError("no run has shape measurements (probes.shapes): did every run diverge?")
    return pd.DataFrame(rows)


def select_learning_rate(table: pd.DataFrame) -> pd.DataFrame:
    """Per shape: the lr with the best mean validation PSNR over seeds, and at that lr the mean and
    sd of test and train PSNR over seeds. A shape diverged at every lr keeps NaN PSNR."""
    per_lr = (table.groupby(SHAPE_KEYS + ["lr"], dropna=False)
              .agg(val_psnr=("val_psnr", "mean"), test_psnr=("test_psnr", "mean"),
                   test_sd=("test_psnr", "std"), train_psnr=("train_psnr", "mean"),
                   seeds=("seed", "nunique"), trainable=("trainable", "first"), fixed=("fixed", "first"),
                   diverged=("diverged", "sum"))
              .reset_index())
    ranked = per_lr.assign(_key=per_lr["val_psnr"].fillna(-np.inf))
    best = ranked.sort_values("_key", ascending=False).groupby(SHAPE_KEYS, dropna=False).head(1)
    return best.drop(columns="_key").sort_values(["family", "trainable"]).reset_index(drop=True)


def pareto_mask(params: Iterable[float], scores: Iterable[float]) -> np.ndarray:
    """True for points no other point dominates (no more params, no lower score, one strictly
    better). NaN scores are never on the frontier; exact duplicates both stay."""
    p, s = np.asarray(list(params), float), np.asarray(list(scores), float)
    keep = np.zeros(len(p), bool)
    for i in range(len(p)):
        if not np.isfinite(s[i]):
            continue
        others = np.isfinite(s) & (p <= p[i]) & (s >= s[i]) & ((p < p[i]) | (s > s[i]))
        keep[i] = not others.any()
    return keep


def frontier_value(params: Iterable[float], scores: Iterable[float], budgets: Iterable[float]) -> np.ndarray:
    """Best score among points with params <= budget, for each budget (NaN below every point)."""
    p, s = np.asarray(list(params), float), np.asarray(list(scores), float)
    finite = np.isfinite(s)
    out = []
    for b in np.asarray(list(budgets), float):
        within = finite & (p <= b)
        out.append(s[within].max() if within.any() else np.nan)
    return np.asarray(out)


def matched_budgets(params_a: Iterable[float], params_b: Iterable[float]) -> np.ndarray:
    """Every point's parameter count inside both families' ranges (see the module docstring)."""
    a, b = np.asarray(list(params_a), float), np.asarray(list(params_b), float)
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    both = np.unique(np.concatenate([a, b]))
    return both[(both >= lo) & (both <= hi)]


def compare_frontiers(a: pd.DataFrame, b: pd.DataFrame, x: str = "trainable", y: str = "test_psnr") -> dict:
    """Frontier of ``a`` vs frontier of ``b`` at the matched budgets: win fraction of ``a``, mean
    and minimum gap (a − b), number of budgets and the budget range."""
    a, b = a[np.isfinite(a[y])], b[np.isfinite(b[y])]
    if a.empty or b.empty:
        return {"win_fraction": np.nan, "mean_gap": np.nan, "min_gap": np.nan, "n_budgets": 0,
                "budget_lo": np.nan, "budget_hi": np.nan}
    budgets = matched_budgets(a[x], b[x])
    gap = frontier_value(a[x], a[y], budgets) - frontier_value(b[x], b[y], budgets)
    if len(budgets) == 0:
        return {"win_fraction": np.nan, "mean_gap": np.nan, "min_gap": np.nan, "n_budgets": 0,
                "budget_lo": np.nan, "budget_hi": np.nan}
    return {"win_fraction": float(np.mean(gap > 0)), "mean_gap": float(np.mean(gap)),
            "min_gap": float(np.min(gap)), "n_budgets": int(len(budgets)),
            "budget_lo": float(budgets.min()), "budget_hi": float(budgets.max())}


def frontier(table: pd.DataFrame, x: str = "trainable", y: str = "test_psnr") -> pd.DataFrame:
    """The Pareto-optimal rows of one family, sorted by parameters."""
    return table[pareto_mask(table[x], table[y])].sort_values(x)


def best_per_budget(table: pd.DataFrame, budgets: Iterable[float], x: str = "trainable",
                    y: str = "test_psnr") -> pd.DataFrame:
    """For each budget, the row with the best score among rows with ``x`` <= budget (the shape
    the frontier picks there); budgets below every row are skipped."""
    rows = []
    finite = table[np.isfinite(table[y])]
    for budget in budgets:
        within = finite[finite[x] <= budget]
        if len(within):
            rows.append({"budget": float(budget), **within.loc[within[y].idxmax()].to_dict()})
    return pd.DataFrame(rows)


def trend(budgets: Iterable[float], values: Iterable[float]) -> float:
    """Spearman rank correlation of a chosen shape's dimension with the budget: 0 when the
    dimension never changes, NaN with fewer than 3 budgets."""
    b, v = np.asarray(list(budgets), float), np.asarray(list(values), float)
    if len(b) < 3:
        return float("nan")
    if np.all(v == v[0]):
        return 0.0
    return float(stats.spearmanr(b, v).statistic)
