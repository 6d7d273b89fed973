"""The numbers behind the Hourglass MLP claims (notebook-only: never imported by training code).

Paper: Chen, Lee, Liao & Shiu, "Rethinking the shape convention of an MLP" (MediaTek Research
2025, arXiv 2510.01796). Abstract: "Hourglass architectures consistently achieve superior Pareto
frontiers compared to conventional designs"; "as parameter budgets increase, optimal Hourglass
configurations favor deeper networks with wider skip connections and narrower bottlenecks — a
scaling pattern distinct from conventional MLPs"; the input projection "can remain fixed at random
initialization".

Selection on validation, reporting on test (no winner's curse from a larger grid):

* each shape's learning rate is the one with the best *validation* PSNR, averaged over the seeds
  in hand (:func:`per_shape`); a seed that diverged at a rate disqualifies that rate;
* a family's frontier is the Pareto set of (trainable parameters, *validation* PSNR)
  (:func:`val_frontier`); at a budget ``P`` the family's pick is the shape with the best
  validation PSNR among those with at most ``P`` trainable parameters, and the frontier's value
  there is that pick's *test* PSNR (:func:`frontier_picks`);
* two frontiers are compared at their *distinct frontier points* inside both families' parameter
  ranges (:func:`frontier_gap`): the budgets where either pick changes, so each distinct pair of
  picks counts once (a step function evaluated at every grid point's count repeats them);
* a shape trend is the Spearman correlation of a dimension of the pick with the budget over the
  family's own frontier points (:func:`shape_trend`).

Intervals are over seeds (:func:`over_seeds`): a percentile bootstrap that resamples whole seeds
(runs of every learning rate of one seed together) and reruns the selection on each resample.
The per-seed values shown with it are the statistic on each seed alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from replicate import claims

SHAPE_KEYS = ["family", "d_z", "d_h", "depth", "train_lift"]
BASELINES = {"plain": "conventional", "head": "conventional_head"}


def family_key(row) -> str:
    """The family a shape is plotted and compared as (trained-lift Hourglass shapes apart)."""
    return "hourglass_trained" if row["family"] == "hourglass" and bool(row["train_lift"]) else row["family"]


def per_shape(table: pd.DataFrame) -> pd.DataFrame:
    """One row per shape at the learning rate with the best mean validation PSNR over the table's
    seeds, with its mean validation, test and train PSNR there and a ``key`` column (family).

    ``table`` has one row per (run, shape): the shape keys, ``lr``, ``seed``, ``trainable``,
    ``fixed``, ``val_psnr``, ``test_psnr``, ``train_psnr``, ``diverged``. Duplicate seeds (a
    bootstrap resample) weigh twice. A NaN PSNR in any seed (a diverged run) makes that rate's
    mean NaN, so it is never selected; a shape with no finite rate keeps NaN.
    """
    def nanfree_mean(x):
        return float(np.mean(x.to_numpy(float)))  # NaN propagates

    grouped = table.groupby(SHAPE_KEYS + ["lr"], dropna=False)
    per_lr = grouped.agg(val_psnr=("val_psnr", nanfree_mean), test_psnr=("test_psnr", nanfree_mean),
                         train_psnr=("train_psnr", nanfree_mean), test_sd=("test_psnr", "std"),
                         seeds=("seed", "size"), trainable=("trainable", "first"),
                         fixed=("fixed", "first")).reset_index()
    ranked = per_lr.assign(_key=per_lr["val_psnr"].fillna(-np.inf))
    best = (ranked.sort_values(["_key", "lr"], ascending=[False, True])
            .groupby(SHAPE_KEYS, dropna=False).head(1).drop(columns="_key"))
    best = best.assign(key=best.apply(family_key, axis=1))
    return best.sort_values(["key", "trainable"]).reset_index(drop=True)


def val_frontier(rows: pd.DataFrame, x: str = "trainable", select: str = "val_psnr") -> pd.DataFrame:
    """The family's frontier chosen on validation: the shapes no other shape beats with no more
    parameters and no lower validation PSNR (strictly better in one), sorted by parameters."""
    p, s = rows[x].to_numpy(float), rows[select].to_numpy(float)
    keep = np.zeros(len(rows), bool)
    for i in range(len(rows)):
        if np.isfinite(s[i]):
            beaten = np.isfinite(s) & (p <= p[i]) & (s >= s[i]) & ((p < p[i]) | (s > s[i]))
            keep[i] = not beaten.any()
    return rows[keep].sort_values(x)


def frontier_picks(rows: pd.DataFrame, budgets: Iterable[float], x: str = "trainable",
                   select: str = "val_psnr") -> pd.DataFrame:
    """For each budget, the shape with the best validation PSNR among those within it (its row,
    with a ``budget`` column); budgets below every finite shape give a row of NaN."""
    finite = rows[np.isfinite(rows[select].to_numpy(float))]
    out = []
    for budget in budgets:
        within = finite[finite[x] <= budget]
        row = within.loc[within[select].idxmax()].to_dict() if len(within) else {}
        out.append({"budget": float(budget), **row})
    return pd.DataFrame(out)


def frontier_gap(a: pd.DataFrame, b: pd.DataFrame, x: str = "trainable", y: str = "test_psnr") -> dict:
    """Frontier ``a`` minus frontier ``b`` (both picked on validation, reported as ``y``) at the
    distinct frontier points of either family inside both families' parameter ranges.

    Returns ``win_fraction`` (share of those budgets where ``a`` is strictly higher),
    ``mean_gap``, ``min_gap``, ``n_points``, and the ``budgets`` and ``gaps`` arrays.
    """
    empty = {"win_fraction": math.nan, "mean_gap": math.nan, "min_gap": math.nan, "n_points": 0,
             "budgets": np.array([]), "gaps": np.array([])}
    a = a[np.isfinite(a["val_psnr"].to_numpy(float))]
    b = b[np.isfinite(b["val_psnr"].to_numpy(float))]
    if a.empty or b.empty:
        return empty
    lo, hi = max(a[x].min(), b[x].min()), min(a[x].max(), b[x].max())
    points = np.unique(np.concatenate([val_frontier(a, x)[x], val_frontier(b, x)[x]]).astype(float))
    budgets = points[(points >= lo) & (points <= hi)]
    if len(budgets) == 0:
        return empty
    gaps = frontier_picks(a, budgets, x)[y].to_numpy(float) - frontier_picks(b, budgets, x)[y].to_numpy(float)
    return {"win_fraction": float(np.mean(gaps > 0)), "mean_gap": float(np.mean(gaps)),
            "min_gap": float(np.min(gaps)), "n_points": int(len(budgets)), "budgets": budgets, "gaps": gaps}


def shape_trend(rows: pd.DataFrame, dim: str, x: str = "trainable") -> float:
    """Spearman ρ of dimension ``dim`` of the validation-frontier picks with their budgets, over
    the family's distinct frontier points; 0 when the dimension never changes, NaN with fewer
    than 3 points."""
    front = val_frontier(rows, x)
    if len(front) < 3:
        return math.nan
    values = front[dim].to_numpy(float)
    if np.all(values == values[0]):
        return 0.0
    return float(stats.spearmanr(front[x].to_numpy(float), values).statistic)


def family_grid(lr_grid, family: str) -> list[float]:
    """The learning-rate grid of a family: ``lr_grid`` is one list for every family or a dict
    ``{family: [...]}`` (the trained-lift Hourglass is family ``hourglass``)."""
    grid = lr_grid[family] if isinstance(lr_grid, dict) else lr_grid
    return sorted(float(v) for v in grid)


def at_lr_edge(rows: pd.DataFrame, lr_grid) -> np.ndarray:
    """True for the rows whose rate is the smallest or largest of their family's grid (their best
    rate may lie outside it); every row of a family whose grid has one rate."""
    out = []
    for family, lr in zip(rows["family"], rows["lr"].to_numpy(float)):
        grid = family_grid(lr_grid, family)
        out.append(len(grid) < 2 or lr in (grid[0], grid[-1]))
    return np.asarray(out, bool)


def lr_edge_points(rows: pd.DataFrame, lr_grid) -> int:
    """How many of the family's validation-frontier shapes picked the smallest or largest rate of
    their family's grid (``lr_grid``: a list, or a dict per family)."""
    front = val_frontier(rows)
    return int(at_lr_edge(front, lr_grid).sum()) if len(front) else 0


def resample(table: pd.DataFrame, seeds: Iterable[int]) -> pd.DataFrame:
    """The rows of the given seeds, a seed drawn twice appearing twice (relabelled 0, 1, ...)."""
    parts = [table[table["seed"] == s].assign(seed=i) for i, s in enumerate(seeds)]
    return pd.concat(parts, ignore_index=True)


def over_seeds(table: pd.DataFrame, statistic: Callable[[pd.DataFrame], float], resamples: int = 4000,
               seed: int = 0, cache: dict | None = None) -> claims.Estimate:
    """``statistic(per_shape(all seeds))`` with a percentile bootstrap over whole seeds.

    Each resample draws seeds with replacement and reruns the learning-rate and frontier
    selection on them (a multiset is computed once: n seeds have C(2n-1, n) of them). The
    Estimate's ``units`` are the statistic on each seed alone. ``cache`` (a dict) shares the
    per-shape tables of each multiset between several statistics of the same ``table``.
    """
    seeds = sorted(int(s) for s in table["seed"].unique())
    memo: dict[tuple[int, ...], float] = {}
    shapes_of = {} if cache is None else cache

    def on(draw) -> float:
        key = tuple(sorted(int(s) for s in draw))
        if key not in memo:
            if key not in shapes_of:
                shapes_of[key] = per_shape(resample(table, key))
            memo[key] = float(statistic(shapes_of[key]))
        return memo[key]

    est = claims.bootstrap(np.asarray(seeds, float), on, resamples=resamples, seed=seed, unit="seeds")
    singles = tuple(on([s]) for s in seeds)
    return dataclasses.replace(est, units=singles)


# --------------------------------------------------------------------------- the figures' statistics
def family(shapes: pd.DataFrame, key: str) -> pd.DataFrame:
    return shapes[shapes["key"] == key]


def gap_statistic(a: str, b: str, field: str) -> Callable[[pd.DataFrame], float]:
    """A statistic of :func:`frontier_gap` of family ``a`` over family ``b`` on a per-shape table."""
    return lambda shapes: frontier_gap(family(shapes, a), family(shapes, b))[field]


def trend_statistic(key: str, dim: str) -> Callable[[pd.DataFrame], float]:
    return lambda shapes: shape_trend(family(shapes, key), dim)


def trend_contrast_statistic(dim: str, other: str = "conventional_head") -> Callable[[pd.DataFrame], float]:
    """ρ(dim) of the fixed-lift Hourglass minus ρ(dim) of family ``other`` (same resample)."""
    return lambda shapes: shape_trend(family(shapes, "hourglass"), dim) - shape_trend(family(shapes, other), dim)


def pareto_measurements(table: pd.DataFrame, lr_grid) -> dict:
    """The Pareto figures' measurements: for each baseline, the Hourglass (fixed lift) frontier's
    win fraction and mean gap over it with intervals over seeds, plus context numbers (the same
    gaps with the Hourglass counted at its total parameters, fixed lift included; edge rates)."""
    shapes = per_shape(table)
    hourglass = family(shapes, "hourglass")
    out, cache = {}, {}
    for name, base in BASELINES.items():
        out[f"win_fraction_vs_{name}"] = over_seeds(table, gap_statistic("hourglass", base, "win_fraction"), cache=cache)
        out[f"mean_gap_db_vs_{name}"] = over_seeds(table, gap_statistic("hourglass", base, "mean_gap"), cache=cache)
        point = frontier_gap(hourglass, family(shapes, base))
        out[f"min_gap_db_vs_{name}"] = point["min_gap"]
        out[f"frontier_points_vs_{name}"] = point["n_points"]
        total = frontier_gap(hourglass.assign(trainable=hourglass["trainable"] + hourglass["fixed"]), family(shapes, base))
        out[f"mean_gap_db_vs_{name}_total_params"] = total["mean_gap"]
        out[f"win_fraction_vs_{name}_total_params"] = total["win_fraction"]
    for key, rows in shapes.groupby("key"):
        front = val_frontier(rows)
        out[f"best_test_psnr_{key}"] = float(rows["test_psnr"].max())
        out[f"train_minus_test_db_{key}"] = float((front["train_psnr"] - front["test_psnr"]).mean())
        out[f"frontier_points_{key}"] = int(len(front))
        out[f"lr_edge_frontier_points_{key}"] = lr_edge_points(rows, lr_grid)
    out["seeds"] = int(table["seed"].nunique())
    out["median_seed_sd_db"] = float(np.nanmedian(shapes["test_sd"])) if shapes["test_sd"].notna().any() else math.nan
    out["diverged_shape_runs"] = int(table["diverged"].sum())
    return out


def trend_measurements(table: pd.DataFrame, lr_grid) -> dict:
    """The shape_trends figure's measurements: ρ of depth, d_z, d_h of the Hourglass picks, the
    depth-trend contrast with the conventional + head family, and the fixed-vs-trained lift gap
    at matched trainable budgets, each with an interval over seeds; plus context numbers."""
    shapes = per_shape(table)
    hourglass = family(shapes, "hourglass")
    cache: dict = {}
    out = {f"rho_{dim}": over_seeds(table, trend_statistic("hourglass", dim), cache=cache) for dim in ("depth", "d_z", "d_h")}
    out["rho_depth_hourglass_minus_conventional_head"] = over_seeds(table, trend_contrast_statistic("depth"), cache=cache)
    out["rho_d_h_hourglass_minus_conventional_head"] = over_seeds(table, trend_contrast_statistic("d_h"), cache=cache)
    for key in ("conventional", "conventional_head"):
        for dim in ("depth", "d_h"):
            out[f"rho_{dim}_{key}"] = shape_trend(family(shapes, key), dim)
    out["mean_gap_db_fixed_minus_trained"] = over_seeds(table, gap_statistic("hourglass", "hourglass_trained", "mean_gap"),
                                                        cache=cache)
    lift = frontier_gap(hourglass, family(shapes, "hourglass_trained"))
    out["min_gap_db_fixed_minus_trained"] = lift["min_gap"]
    out["win_fraction_fixed_over_trained"] = lift["win_fraction"]
    out["frontier_points_lift"] = lift["n_points"]
    front = val_frontier(hourglass)
    out["distinct_best_shapes"] = int(len(front))
    out["distinct_best_shapes_conventional_head"] = int(len(val_frontier(family(shapes, "conventional_head"))))
    for key in ("hourglass", "hourglass_trained", "conventional_head"):
        out[f"lr_edge_frontier_points_{key}"] = lr_edge_points(family(shapes, key), lr_grid)
    out["seeds"] = int(table["seed"].nunique())
    out["median_seed_sd_db"] = float(np.nanmedian(shapes["test_sd"])) if shapes["test_sd"].notna().any() else math.nan
    return out
