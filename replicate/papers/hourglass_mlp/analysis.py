"""The statistics behind the Hourglass MLP claims (notebook-side: never imported by training code;
``measures`` turns them into each figure's measurements).

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

Units. One seed is one independent replicate of the whole search: every statistic of a claim is
computed on each seed alone, the selection rerun on that seed's runs (:func:`shapes_by_seed`,
:func:`gap_per_seed`, :func:`trend_per_seed`), and its interval is a t interval over the per-seed
values, so the point estimate (their mean) lies inside it. The selection on all seeds' means
(:func:`per_shape` of the whole table) is what the figures draw.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

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


def lr_grids(runs: pd.DataFrame) -> dict:
    """The learning-rate grid of each family, as the runs trained them (``probes.lrs``)."""
    grids = [p.get("lrs") for p in runs["probes"] if p and p.get("lrs")]
    if not grids:
        raise ValueError("no run records its learning-rate grids (probes.lrs)")
    return {k: sorted(float(v) for v in grid) for k, grid in grids[0].items()}


def input_psnr(runs: pd.DataFrame, split: str = "test") -> float:
    """PSNR of the degraded input itself on ``split``, averaged over the runs that recorded it."""
    values = [p["input_psnr"][split] for p in runs["probes"] if p and p.get("input_psnr")]
    return float(np.mean(values)) if values else math.nan


# --------------------------------------------------------------------------- per-seed statistics
def family(shapes: pd.DataFrame, key: str) -> pd.DataFrame:
    return shapes[shapes["key"] == key]


def shapes_by_seed(table: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Each seed's own :func:`per_shape` table: the search rerun on that seed's runs alone (its
    learning rates and frontiers selected on its own validation PSNR). Seeds are the units every
    interval is over: one seed is one independent replicate of the whole search."""
    return {int(s): per_shape(table[table["seed"] == s]) for s in sorted(table["seed"].unique())}


def gap_per_seed(by_seed: dict[int, pd.DataFrame], a: str, b: str) -> pd.DataFrame:
    """:func:`frontier_gap` of family ``a`` over family ``b`` on each seed alone: one row per seed
    with ``win_fraction``, ``mean_gap``, ``min_gap`` and ``n_points``."""
    rows = []
    for seed, shapes in by_seed.items():
        gap = frontier_gap(family(shapes, a), family(shapes, b))
        rows.append({"seed": seed, **{k: gap[k] for k in ("win_fraction", "mean_gap", "min_gap", "n_points")}})
    return pd.DataFrame(rows, columns=["seed", "win_fraction", "mean_gap", "min_gap", "n_points"])


def trend_per_seed(by_seed: dict[int, pd.DataFrame], key: str, dim: str) -> np.ndarray:
    """:func:`shape_trend` of dimension ``dim`` of family ``key`` on each seed alone."""
    return np.asarray([shape_trend(family(shapes, key), dim) for shapes in by_seed.values()], float)


def smallest_frontier(by_seed: dict[int, pd.DataFrame], key: str) -> int:
    """The fewest distinct validation-frontier shapes family ``key`` has on any one seed."""
    return min((len(val_frontier(family(shapes, key))) for shapes in by_seed.values()), default=0)


def lr_edge_table(by_seed: dict[int, pd.DataFrame], keys: Iterable[str], lr_grid) -> pd.DataFrame:
    """Per seed and family: its validation-frontier shapes and how many of them picked the
    smallest or largest rate of the family's grid (:func:`lr_edge_points`)."""
    return pd.DataFrame([{"seed": seed, "key": key, "frontier_shapes": len(val_frontier(family(shapes, key))),
                          "at_lr_edge": lr_edge_points(family(shapes, key), lr_grid)}
                         for seed, shapes in by_seed.items() for key in keys])


def at_total_params(shapes: pd.DataFrame) -> pd.DataFrame:
    """``shapes`` with every shape counted at its total parameters (the fixed lift included)."""
    return shapes.assign(trainable=shapes["trainable"] + shapes["fixed"])


def lift_pairs(shapes: pd.DataFrame) -> pd.DataFrame:
    """Each Hourglass shape with a fixed and a trained lift side by side (columns suffixed
    ``_fixed`` / ``_trained``) and ``gain_db``, trained minus fixed test PSNR."""
    paired = family(shapes, "hourglass").merge(family(shapes, "hourglass_trained"), on=["d_z", "d_h", "depth"],
                                               suffixes=("_fixed", "_trained"))
    return paired.assign(gain_db=paired["test_psnr_trained"] - paired["test_psnr_fixed"])


def gap_curves(table: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Frontier ``a`` minus frontier ``b`` at each distinct frontier point, on each seed alone
    (``seed`` = the seed) and with the selection on all seeds' means (``seed`` = ``"all"``):
    columns ``seed``, ``budget``, ``gap`` (for the figures)."""
    parts = {"all": per_shape(table), **shapes_by_seed(table)}
    rows = []
    for seed, shapes in parts.items():
        gap = frontier_gap(family(shapes, a), family(shapes, b))
        rows += [{"seed": seed, "budget": x, "gap": g} for x, g in zip(gap["budgets"], gap["gaps"])]
    return pd.DataFrame(rows, columns=["seed", "budget", "gap"])


def median_seed_sd(shapes: pd.DataFrame) -> float:
    """Median over shapes of the seed-to-seed sd of test PSNR at the selected rate (dB)."""
    return float(np.nanmedian(shapes["test_sd"])) if shapes["test_sd"].notna().any() else math.nan
