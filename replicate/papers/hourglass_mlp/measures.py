"""The measurements behind every hourglass_mlp claim: one function per figure,
``measures.<figure>(runs, cfg)``, with ``runs`` the figure's run table (``FigureContext.runs()``:
one row per seed, each run training every shape of the grid at every rate of its family's grid)
and ``cfg`` the composed figure config.

Paper: Chen, Lee, Liao & Shiu, "Rethinking the shape convention of an MLP" (arXiv 2510.01796),
Sec. 4 (Pareto frontiers of PSNR vs parameters; optimal shapes vs budget) and Sec. 3 (the fixed
random input projection W_in).

Every claim's number is a statistic computed on each seed alone, the learning-rate and frontier
selection rerun on that seed (``analysis.shapes_by_seed``), then averaged over seeds with a
Student-t interval (``claims.mean_interval``; a difference of two families' trends on the same
seed with ``claims.paired_difference``). Its preconditions are judged on every seed: the fewest
frontier points any seed compares (``frontier_points_*``, ``distinct_best_shapes*``) and the
frontier shapes, summed over seeds, whose selected rate sits at an edge of the family's grid
(``lr_edge_frontier_points_*``). Context numbers (best PSNR, train-minus-test, seed sd, gaps at
total parameters) describe the selection on all seeds' means, which the figures draw.
"""

from __future__ import annotations

import pandas as pd

from replicate import claims
from replicate.papers.hourglass_mlp import analysis as A
from replicate.papers.hourglass_mlp.pareto import shape_table

FAMILIES = ("hourglass", "conventional", "conventional_head")


def pareto_denoise(runs: pd.DataFrame, cfg) -> dict:
    """Hourglass vs conventional frontiers for denoising (Sec. 4, the denoising Pareto plots)."""
    return pareto(runs, cfg)


def pareto_superres(runs: pd.DataFrame, cfg) -> dict:
    """Hourglass vs conventional frontiers for 2x super-resolution (Sec. 4)."""
    return pareto(runs, cfg)


def pareto(runs: pd.DataFrame, cfg) -> dict:
    """For each baseline (plain conventional, conventional + head): the Hourglass (fixed lift)
    frontier's win fraction and mean test-PSNR gap over it at the distinct frontier points of
    matched trainable budgets, each a t interval over the per-seed values; the preconditions;
    context numbers (worst gap, the gaps with the Hourglass at total parameters, per family
    best test PSNR, train-minus-test, frontier size; seed sd, divergences, the input's PSNR)."""
    table, grid = _search(runs, cfg)
    by_seed, pooled = A.shapes_by_seed(table), A.per_shape(table)
    at_total = {seed: A.at_total_params(shapes) for seed, shapes in by_seed.items()}
    out: dict = {}
    for name, base in A.BASELINES.items():
        gaps = A.gap_per_seed(by_seed, "hourglass", base)
        out[f"win_fraction_vs_{name}"] = claims.mean_interval(gaps["win_fraction"], unit="seeds")
        out[f"mean_gap_db_vs_{name}"] = claims.mean_interval(gaps["mean_gap"], unit="seeds")
        out[f"min_gap_db_vs_{name}"] = float(gaps["min_gap"].min())
        out[f"frontier_points_vs_{name}"] = int(gaps["n_points"].min())
        total = A.gap_per_seed(at_total, "hourglass", base)
        out[f"mean_gap_db_vs_{name}_total_params"] = float(total["mean_gap"].mean())
        out[f"win_fraction_vs_{name}_total_params"] = float(total["win_fraction"].mean())
    edges = A.lr_edge_table(by_seed, FAMILIES, grid).groupby("key")["at_lr_edge"].sum()
    for key in FAMILIES:
        rows = A.family(pooled, key)
        front = A.val_frontier(rows)
        out[f"best_test_psnr_{key}"] = float(rows["test_psnr"].max())
        out[f"train_minus_test_db_{key}"] = float((front["train_psnr"] - front["test_psnr"]).mean())
        out[f"frontier_points_{key}"] = int(len(front))
        out[f"lr_edge_frontier_points_{key}"] = int(edges.get(key, 0))
    out["seeds"] = len(by_seed)
    out["median_seed_sd_db"] = A.median_seed_sd(pooled)
    out["diverged_shape_runs"] = int(table["diverged"].sum())
    out["input_psnr_db"] = A.input_psnr(runs)
    return out


def shape_trends(runs: pd.DataFrame, cfg) -> dict:
    """Spearman rho of depth, d_z and d_h of the Hourglass frontier picks with the budget (Sec. 4
    optimal-shape trends), the contrast of the d_h and depth trends with the conventional + head
    family on the same seed, and the fixed-minus-trained lift gap at matched trainable budgets
    (Sec. 3); each a t interval over the per-seed values; the preconditions and context."""
    table, grid = _search(runs, cfg)
    by_seed, pooled = A.shapes_by_seed(table), A.per_shape(table)
    dims = {"hourglass": ("depth", "d_z", "d_h"), "conventional": ("depth", "d_h"),
            "conventional_head": ("depth", "d_h")}
    rho = {(key, dim): A.trend_per_seed(by_seed, key, dim) for key in dims for dim in dims[key]}
    out: dict = {f"rho_{dim}": claims.mean_interval(rho["hourglass", dim], unit="seeds")
                 for dim in ("depth", "d_z", "d_h")}
    for dim in ("depth", "d_h"):
        out[f"rho_{dim}_hourglass_minus_conventional_head"] = claims.paired_difference(
            rho["hourglass", dim], rho["conventional_head", dim], unit="seeds")
        for key in ("conventional", "conventional_head"):
            out[f"rho_{dim}_{key}"] = claims.mean_interval(rho[key, dim], unit="seeds")
    lift = A.gap_per_seed(by_seed, "hourglass", "hourglass_trained")
    out["mean_gap_db_fixed_minus_trained"] = claims.mean_interval(lift["mean_gap"], unit="seeds")
    out["min_gap_db_fixed_minus_trained"] = float(lift["min_gap"].min())
    out["win_fraction_fixed_over_trained"] = float(lift["win_fraction"].mean())
    out["frontier_points_lift"] = int(lift["n_points"].min())
    out["distinct_best_shapes"] = A.smallest_frontier(by_seed, "hourglass")
    out["distinct_best_shapes_conventional_head"] = A.smallest_frontier(by_seed, "conventional_head")
    keys = ("hourglass", "hourglass_trained", "conventional_head")
    edges = A.lr_edge_table(by_seed, keys, grid).groupby("key")["at_lr_edge"].sum()
    for key in keys:
        out[f"lr_edge_frontier_points_{key}"] = int(edges.get(key, 0))
    pairs = A.lift_pairs(pooled)
    out["same_shape_gain_db_trained_mean"] = float(pairs["gain_db"].mean()) if len(pairs) else float("nan")
    out["seeds"] = len(by_seed)
    out["median_seed_sd_db"] = A.median_seed_sd(pooled)
    return out


def _search(runs: pd.DataFrame, cfg) -> tuple[pd.DataFrame, dict]:
    """The per-(run, shape, rate) table of the runs and each family's rate grid, after checking
    that the runs solved the figure's task (``run.module.task.kind``)."""
    table = shape_table(runs)
    wanted = cfg.figure.run.module.task.kind
    found = sorted(set(table["task"]))
    if found != [wanted]:
        raise ValueError(f"{cfg.figure.paper}/{cfg.figure.name}: runs solved task {found}, "
                         f"the figure asks for {wanted!r}")
    return table, A.lr_grids(runs)
