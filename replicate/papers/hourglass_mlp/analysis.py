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


# --------------------------------------------------------------------------- photos as units
# The figures' claims are judged with the held-out photos as units: each seed reruns the whole
# selection (rate per shape, frontier picks) on its own validation numbers, the picks are scored on
# every test photo, and a photo's value is the mean over seeds of its per-seed value. A photo is
# the independent unit a split can move (a different photo set moves every seed at once); the
# seeds are nested inside every photo, so their variation enters each photo's value, and a
# seeds-as-units interval (photos averaged) is reported beside it.
ROLES = {"main": ("val", "test"), "swapped": ("test", "val")}  # (selected on, reported on)


def select_rates(table: pd.DataFrame, select: str) -> pd.DataFrame:
    """One seed's rows (one per shape and rate): per shape, the row whose ``select`` column is
    highest (a NaN, i.e. a diverged copy, is never picked; ties go to the smaller rate), with a
    ``key`` column (family, trained-lift Hourglass apart). All columns are kept (per-photo lists,
    curves)."""
    ranked = table.assign(_key=table[select].astype(float).fillna(-np.inf))
    best = (ranked.sort_values(["_key", "lr"], ascending=[False, True])
            .groupby(SHAPE_KEYS, dropna=False).head(1).drop(columns="_key"))
    best = best.assign(key=best.apply(family_key, axis=1))
    return best.sort_values(["key", "trainable"]).reset_index(drop=True)


def comparison_budgets(a: pd.DataFrame, b: pd.DataFrame, select: str, x: str = "trainable") -> np.ndarray:
    """The distinct validation-frontier points of either family inside both families' ranges
    (as :func:`frontier_gap`)."""
    a = a[np.isfinite(a[select].to_numpy(float))]
    b = b[np.isfinite(b[select].to_numpy(float))]
    if a.empty or b.empty:
        return np.array([])
    lo, hi = max(a[x].min(), b[x].min()), min(a[x].max(), b[x].max())
    points = np.unique(np.concatenate([val_frontier(a, x, select)[x], val_frontier(b, x, select)[x]]).astype(float))
    return points[(points >= lo) & (points <= hi)]


def picks(rows: pd.DataFrame, budgets, select: str, x: str = "trainable") -> list:
    """For each budget, the row with the best ``select`` among rows within it (None below all)."""
    finite = rows[np.isfinite(rows[select].to_numpy(float))]
    out = []
    for budget in budgets:
        within = finite[finite[x] <= budget]
        out.append(within.loc[within[select].astype(float).idxmax()] if len(within) else None)
    return out


def values(row, column: str) -> np.ndarray:
    """A row's column as a float array (a per-photo list, or a scalar as one element)."""
    return np.atleast_1d(np.asarray(row[column], float))


def photo_gap(a: pd.DataFrame, b: pd.DataFrame, select: str, report: str) -> tuple[np.ndarray, np.ndarray]:
    """Frontier ``a`` minus frontier ``b``, both picked on ``select``, scored on ``report`` (a
    column of per-photo lists, or a scalar column): (budgets, gaps (n_budgets, n_photos))."""
    budgets = comparison_budgets(a, b, select)
    pa, pb = picks(a, budgets, select), picks(b, budgets, select)
    if len(budgets) == 0:
        return budgets, np.zeros((0, 1))
    return budgets, np.stack([values(ra, report) - values(rb, report) for ra, rb in zip(pa, pb)])


def seed_tables(table: pd.DataFrame) -> dict:
    return {seed: rows for seed, rows in table.groupby("seed", sort=True)}


def frontier_gaps(table: pd.DataFrame, a: str, b: str, select: str, report: str) -> dict:
    """Per seed: the selection on ``select``, then frontier ``a`` minus ``b`` on ``report``:
    ``{seed: {"budgets", "gaps" (n_budgets, n_photos), "per_photo" (mean over budgets)}}``."""
    out = {}
    for seed, rows in seed_tables(table).items():
        shapes = select_rates(rows, select)
        budgets, gaps = photo_gap(family(shapes, a), family(shapes, b), select, report)
        per_photo = gaps.mean(0) if len(budgets) else np.full(gaps.shape[1], np.nan)
        out[seed] = {"budgets": budgets, "gaps": gaps, "per_photo": per_photo}
    return out


def photo_units(per_seed: dict) -> np.ndarray:
    """Each photo's value: the mean over seeds of its per-seed value."""
    return np.mean(np.stack([v["per_photo"] for v in per_seed.values()]), axis=0)


def seed_units(per_seed: dict) -> np.ndarray:
    """Each seed's value: the mean over photos."""
    return np.asarray([float(np.mean(v["per_photo"])) for v in per_seed.values()])


def curve_table(table: pd.DataFrame, index: int) -> pd.DataFrame:
    """The table as it stood at validation check ``index``: the split-level PSNR columns replaced
    by the curve's values there."""
    out = table.copy()
    for col in ("val_psnr", "test_psnr", "val_mse_psnr", "test_mse_psnr"):
        if f"curve_{col}" in out:
            out[col] = [float(c[index]) if len(c) > index else np.nan for c in out[f"curve_{col}"]]
    return out


def half_index(steps) -> int:
    """The validation check closest to half the last one's step (T/2)."""
    steps = np.asarray(steps, float)
    return int(np.argmin(np.abs(steps - steps[-1] / 2)))


def convergence(table: pd.DataFrame, steps, statistic) -> dict:
    """How far a per-seed statistic moved between T/2 and T compared with its seed sd.

    ``statistic(table) -> {seed: value}`` is evaluated on the table as it stood at every
    validation check (:func:`curve_table`). Returns the per-step seed values (``curve``:
    rows ``{step, seed, value}``), ``shift`` (|mean at T - mean at T/2|), ``seed_sd`` (sd over
    seeds at T) and ``shift_over_sd`` (inf when the sd is 0 or there is one seed).
    """
    steps = list(steps)
    if not steps:
        return {"curve": [], "shift": math.nan, "seed_sd": math.nan, "shift_over_sd": math.inf}
    curve = []
    for i, step in enumerate(steps):
        for seed, value in statistic(curve_table(table, i)).items():
            curve.append({"step": int(step), "seed": int(seed), "value": float(value)})
    frame = pd.DataFrame(curve)
    last = frame[frame.step == steps[-1]]["value"].to_numpy(float)
    half = frame[frame.step == steps[half_index(steps)]]["value"].to_numpy(float)
    shift = float(abs(np.mean(last) - np.mean(half)))
    sd = float(np.std(last, ddof=1)) if len(last) > 1 else math.nan
    if shift == 0:
        ratio = 0.0  # did not move at all (a discrete statistic, e.g. a rank correlation)
    else:
        ratio = shift / sd if sd and np.isfinite(sd) and sd > 0 else math.inf
    return {"curve": curve, "shift": shift, "seed_sd": sd, "shift_over_sd": float(ratio)}


def margin_over(table: pd.DataFrame, keys, baseline: float, select: str, report: str, best_only: bool) -> float:
    """The smallest margin (dB) of family frontier picks over a baseline's ``report`` value, over
    seeds and families: at every validation-frontier point (``best_only=False``) or at each
    family's best frontier point (``best_only=True``)."""
    margins = []
    for rows in seed_tables(table).values():
        shapes = select_rates(rows, select)
        for key in keys:
            front = val_frontier(family(shapes, key), select=select)
            if front.empty:
                return math.nan
            score = front[report].to_numpy(float)
            margins.append(score[-1] - baseline if best_only else np.min(score) - baseline)
    return float(np.min(margins)) if margins else math.nan


def frontier_edge_points(table: pd.DataFrame, key: str, lr_grid, select: str = "val_psnr") -> int:
    """Validation-frontier shapes of family ``key`` whose selected rate is an edge of its grid,
    summed over seeds."""
    total = 0
    for rows in seed_tables(table).values():
        front = val_frontier(family(select_rates(rows, select), key), select=select)
        total += int(at_lr_edge(front, lr_grid).sum()) if len(front) else 0
    return total


# --------------------------------------------------------------------------- the ladder
def ladder_budget(trainable, budgets, tolerance: float = 0.1) -> np.ndarray:
    """The nominal ladder budget of each parameter count (NaN when none is within ``tolerance``)."""
    b = np.asarray(budgets, float)
    out = []
    for p in np.asarray(trainable, float):
        k = int(np.argmin(np.abs(p - b) / b))
        out.append(b[k] if abs(p - b[k]) <= tolerance * b[k] else np.nan)
    return np.asarray(out)


def relative_rank(values) -> np.ndarray:
    """Ranks of ``values`` scaled to [0, 1] (average ranks for ties; 0.5 for a single value)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return np.full(len(v), 0.5)
    return (stats.rankdata(v) - 1) / (len(v) - 1)


def ladder_winners(shapes: pd.DataFrame, budgets, dims, select: str = "val_psnr") -> pd.DataFrame:
    """One row per ladder budget: the allocation with the best ``select`` among those within
    +-10 % of it, with its dimensions both raw and as their rank among that budget's allocations
    (``<dim>_rank`` in [0, 1]: d_z and d_h grow with the budget by construction, their rank does
    not), and ``allocations`` (how many there were)."""
    shapes = shapes.assign(budget=ladder_budget(shapes["trainable"], budgets))
    rows = []
    for budget, group in shapes.dropna(subset=["budget"]).groupby("budget"):
        finite = group[np.isfinite(group[select].to_numpy(float))]
        if finite.empty:
            continue
        best = finite[select].astype(float).idxmax()
        row = {"budget": float(budget), "allocations": int(len(group)), "lr": float(group.loc[best, "lr"])}
        for dim in dims:
            ranks = pd.Series(relative_rank(group[dim].to_numpy(float)), index=group.index)
            row[dim] = float(group.loc[best, dim])
            row[f"{dim}_rank"] = float(ranks[best])
        rows.append(row)
    return pd.DataFrame(rows)


def spearman(x, y) -> float:
    """Spearman rho; 0 when either variable is constant, NaN with fewer than 3 points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return math.nan
    if np.all(y == y[0]) or np.all(x == x[0]):
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def permutation_p(x, y) -> float:
    """Exact one-sided permutation p-value of Spearman rho(x, y) >= observed: the share of all
    orderings of ``y`` against ``x`` whose rho reaches the observed one (ties included). With
    n points the smallest possible p is 1/n! for untied values."""
    import itertools

    x, y = np.asarray(x, float), np.asarray(y, float)
    observed = spearman(x, y)
    if not np.isfinite(observed):
        return math.nan
    rhos = [spearman(x, np.asarray(p)) for p in itertools.permutations(y)]
    return float(np.mean(np.asarray(rhos) >= observed - 1e-12))
