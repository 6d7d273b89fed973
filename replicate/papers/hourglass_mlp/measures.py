"""The measurements behind every hourglass_mlp claim: one function per figure,
``measures.<figure>(runs, cfg)``, with ``runs`` the figure's run table (``FigureContext.runs()``:
one row per seed, each run training every shape of the grid at every rate of the lr grid) and
``cfg`` the composed figure config.

Paper: Chen, Lee, Liao & Shiu, "Rethinking the shape convention of an MLP" (arXiv 2510.01796),
Sec. 4 (Pareto frontiers of PSNR vs parameters; optimal shapes vs budget) and Sec. 3 (the fixed
random input projection W_in).

Units. Frontier and lift claims: the held-out test photos. Each seed reruns the selection (rate
per shape on validation, frontier picks on validation) and scores its picks on every test photo;
a photo's value is the mean of its per-seed values; the claim's interval is a Student-t interval
over photos (win shares: a Wilson interval over photos). The photo is the unit a different split
would move; a seeds-as-units interval (photos averaged) is reported beside it. Trend claims: the
ladder winners scored on each test photo, mean over seeds, t interval over photos; the seeds'
validation winners and their exact permutation null beside them.

Preconditions (``requires`` in the configs), judged on point values:

* convergence: the per-seed statistic behind the claim, recomputed at every validation check
  (``curve_*``), moved less than its seed sd between T/2 and T (``*_shift_over_seed_sd < 1``);
* the frontier beats the identity (every frontier point of both families above the degraded
  input's PSNR) and a classical filter (each family's best frontier point);
* validation and test agree: the gap with the roles swapped (selected on test, scored on
  validation photos) has the sign of the main one;
* no frontier shape's rate is an edge of the lr grid.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from replicate import claims
from replicate.papers.hourglass_mlp import analysis as A
from replicate.papers.hourglass_mlp.pareto import shape_table

CONVENTIONS = ("psnr", "mse_psnr")  # mean per-patch PSNR; PSNR of the mean MSE


def pareto_denoise(runs: pd.DataFrame, cfg) -> dict:
    """Hourglass vs conventional frontiers for denoising (Sec. 4, the denoising Pareto plots)."""
    return pareto(runs, cfg)


def pareto_superres(runs: pd.DataFrame, cfg) -> dict:
    """Hourglass vs conventional frontiers for 2x super-resolution (Sec. 4)."""
    return pareto(runs, cfg)


def _seed_mean_gap(a: str, b: str, select: str, report: str):
    def statistic(table: pd.DataFrame) -> dict:
        return {seed: float(np.mean(v["per_photo"])) for seed, v in A.frontier_gaps(table, a, b, select, report).items()}
    return statistic


def pareto(runs: pd.DataFrame, cfg) -> dict:
    """The Hourglass (fixed lift) frontier minus the conventional frontier at the distinct
    frontier points of matched trainable budgets, both picked on validation: the mean gap (dB)
    over test photos (t interval over photos) in both PSNR conventions and with the roles of the
    validation and test photos swapped; the share of test photos on which the Hourglass frontier
    is higher (Wilson interval); the preconditions (convergence, identity and classical
    baselines, split agreement, lr edges) and context (seeds-as-units intervals, best PSNRs)."""
    table, grid, probes = _search(runs, cfg)
    out: dict = {}
    gaps = {}
    for conv in CONVENTIONS:
        for role, (sel, rep) in A.ROLES.items():
            gaps[conv, role] = A.frontier_gaps(table, "hourglass", "conventional", f"{sel}_{conv}", f"{rep}_photo_{conv}")
    for conv in CONVENTIONS:
        suffix = "" if conv == "psnr" else "_mse"
        main = A.photo_units(gaps[conv, "main"])
        out[f"mean_gap_db{suffix}"] = claims.mean_interval(main, unit="photos")
        out[f"mean_gap_db{suffix}_seeds"] = claims.mean_interval(A.seed_units(gaps[conv, "main"]), unit="seeds")
        swapped = A.photo_units(gaps[conv, "swapped"])
        out[f"mean_gap_db{suffix}_swapped"] = claims.mean_interval(swapped, unit="photos")
        out[f"split_signs_agree{suffix}"] = float(np.sign(np.mean(main)) == np.sign(np.mean(swapped)))
    main = A.photo_units(gaps["psnr", "main"])
    out["win_share_photos"] = claims.proportion(int(np.sum(main > 0)), int(len(main)), unit="photos")
    out["frontier_points"] = int(min(len(v["budgets"]) for v in gaps["psnr", "main"].values()))
    out["gap_by_photo"] = {name: float(g) for name, g in zip(probes["photos"]["test"], main)}

    steps = probes["curve_steps"]
    conv = {}
    for c in CONVENTIONS:
        conv[c] = A.convergence(table, steps, _seed_mean_gap("hourglass", "conventional", f"val_{c}", f"test_{c}"))
    out["convergence_shift_over_seed_sd"] = conv["psnr"]["shift_over_sd"]
    out["convergence_shift_over_seed_sd_mse"] = conv["mse_psnr"]["shift_over_sd"]
    out["convergence_shift_db"] = conv["psnr"]["shift"]
    out["convergence_seed_sd_db"] = conv["psnr"]["seed_sd"]
    out["gap_curve"] = conv["psnr"]["curve"]
    out["validation_checks"] = len(steps)

    base = probes["baselines"]
    for c in CONVENTIONS:
        suffix = "" if c == "psnr" else "_mse"
        identity, classical = base["identity"]["test"][c], base["classical"]["test"][c]
        out[f"identity_test_{c}_db"] = float(identity)
        out[f"classical_test_{c}_db"] = float(classical)
        keys = ("hourglass", "conventional")
        out[f"frontier_minus_identity_db{suffix}"] = A.margin_over(table, keys, identity, f"val_{c}", f"test_{c}", best_only=False)
        out[f"frontier_minus_classical_db{suffix}"] = A.margin_over(table, keys, classical, f"val_{c}", f"test_{c}", best_only=True)
    out["classical_filter"] = base["classical"]["name"]
    for key in ("hourglass", "conventional"):
        out[f"lr_edge_frontier_points_{key}"] = A.frontier_edge_points(table, key, grid)
        rows = A.family(A.per_shape(table), key)
        out[f"best_test_psnr_{key}"] = float(rows["test_psnr"].max())
        front = A.val_frontier(rows)
        out[f"train_minus_test_db_{key}"] = float((front["train_psnr"] - front["test_psnr"]).mean())
    out["seeds"] = int(table["seed"].nunique())
    out["test_photos"] = len(probes["photos"]["test"])
    out["median_seed_sd_db"] = A.median_seed_sd(A.per_shape(table))
    out["diverged_shape_runs"] = int(table["diverged"].sum())
    return out


def _lift_gains(table: pd.DataFrame, select: str, report: str) -> dict:
    """Per seed, per Hourglass shape: fixed minus trained lift (each at its own rate picked on
    ``select``), scored on ``report``: ``{seed: DataFrame(d_z, d_h, depth, trainable, gain)}``
    with ``gain`` an array (per photo, or one value)."""
    out = {}
    for seed, rows in A.seed_tables(table).items():
        shapes = A.select_rates(rows, select)
        fixed, trained = A.family(shapes, "hourglass"), A.family(shapes, "hourglass_trained")
        paired = fixed.merge(trained, on=["d_z", "d_h", "depth"], suffixes=("_fixed", "_trained"))
        gains = [A.values(r, f"{report}_fixed") - A.values(r, f"{report}_trained") for _, r in paired.iterrows()]
        out[seed] = paired[["d_z", "d_h", "depth"]].assign(trainable=paired["trainable_fixed"].to_numpy(),
                                                         gain=pd.Series(gains, index=paired.index, dtype=object))
    return out


def _largest(frame: pd.DataFrame, budgets) -> pd.DataFrame:
    nominal = A.ladder_budget(frame["trainable"], budgets)
    return frame[nominal == np.nanmax(nominal)] if np.isfinite(nominal).any() else frame[frame.trainable == frame.trainable.max()]


def shape_trends(runs: pd.DataFrame, cfg) -> dict:
    """Trend claims on the iso-parameter ladder (Sec. 4 optimal shapes): on each seed (rates
    picked on validation) and each test photo, the allocation with the best PSNR on that photo at
    each budget, and the Spearman rho of its depth and of its d_z and d_h ranks (within the
    budget) with the budget; a photo's value is the mean over seeds, t interval over photos.
    Beside it: the same on each seed's validation winners (seeds as units) and their exact
    permutation null. The lift claim (Sec. 3): at every Hourglass shape, fixed minus trained
    W_in (each at its own validation-picked rate), per test photo, mean over seeds; the claim is
    the mean over the largest budget's allocations (t interval over photos)."""
    table, grid, probes = _search(runs, cfg)
    budgets = list((cfg.figure.get("measure") or {}).get("budgets") or [])
    out: dict = {}
    dims = {"hourglass": ("depth", "d_z", "d_h"), "conventional": ("depth", "d_h")}
    winners = {(seed, key): A.ladder_winners(A.family(A.select_rates(rows, "val_psnr"), key), budgets, dims[key])
               for seed, rows in A.seed_tables(table).items() for key in dims} if budgets else {}
    seeds = sorted(table["seed"].unique())

    def rho(key, dim):
        col = "depth" if dim == "depth" else f"{dim}_rank"
        return np.asarray([A.spearman(winners[s, key]["budget"], winners[s, key][col]) if len(winners.get((s, key), [])) else math.nan
                           for s in seeds], float)

    def photo_rho(key, dim):
        """Per test photo: each seed's winners scored on that photo (rates picked on validation),
        the rho of the winners' dimension with the budget, then the mean over seeds."""
        col = "depth" if dim == "depth" else f"{dim}_rank"
        per_seed = []
        for s, rows in A.seed_tables(table).items():
            shapes = A.family(A.select_rates(rows, "val_psnr"), key)
            scores = np.stack([A.values(r, "test_photo_psnr") for _, r in shapes.iterrows()])
            rhos = []
            for p in range(scores.shape[1]):
                w = A.ladder_winners(shapes.assign(_photo=scores[:, p]), budgets, dims[key], select="_photo")
                rhos.append(A.spearman(w["budget"], w[col]) if len(w) else math.nan)
            per_seed.append(rhos)
        return np.mean(np.asarray(per_seed, float), axis=0)

    photo = {(key, dim): photo_rho(key, dim) for key in dims for dim in dims[key]} if budgets else {}
    for dim in dims["hourglass"]:
        out[f"rho_{dim}"] = claims.mean_interval(photo["hourglass", dim], unit="photos") if budgets else claims.mean_interval([math.nan] * 2, unit="photos")
        out[f"rho_{dim}_seeds"] = claims.mean_interval(rho("hourglass", dim), unit="seeds")
        col = "depth" if dim == "depth" else f"{dim}_rank"
        out[f"rho_{dim}_null_p"] = [A.permutation_p(winners[s, "hourglass"]["budget"], winners[s, "hourglass"][col])
                                    if budgets else math.nan for s in seeds]
    for dim in dims["conventional"]:
        if budgets:
            out[f"rho_{dim}_conventional"] = claims.mean_interval(photo["conventional", dim], unit="photos")
            out[f"rho_{dim}_hourglass_minus_conventional"] = claims.paired_difference(
                photo["hourglass", dim], photo["conventional", dim], unit="photos")
        else:
            out[f"rho_{dim}_conventional"] = claims.mean_interval([math.nan] * 2, unit="photos")
            out[f"rho_{dim}_hourglass_minus_conventional"] = claims.mean_interval([math.nan] * 2, unit="photos")
        out[f"rho_{dim}_hourglass_minus_conventional_seeds"] = claims.paired_difference(
            rho("hourglass", dim), rho("conventional", dim), unit="seeds")
    counts = [len(w) for w in winners.values()]
    out["ladder_budgets"] = int(min(counts)) if counts else 0
    out["ladder_allocations"] = int(min((w["allocations"].min() for w in winners.values() if len(w)), default=0))
    out["winners"] = [{"seed": int(s), "family": k, **r} for (s, k), w in winners.items() for r in w.to_dict("records")]
    out["lr_edge_winners"] = int(sum(A.at_lr_edge(w.assign(family="hourglass" if k == "hourglass" else "conventional"), grid).sum()
                                     for (s, k), w in winners.items() if len(w)))

    # the lift: paired same-shape comparison
    gains = _lift_gains(table, "val_psnr", "test_photo_psnr")
    per_shape = pd.concat([g.assign(seed=s) for s, g in gains.items()])
    shape_rows = []
    for (d_z, d_h, depth), group in per_shape.groupby(["d_z", "d_h", "depth"]):
        photos = np.mean(np.stack(group["gain"].to_list()), axis=0)
        est = claims.mean_interval(photos, unit="photos")
        shape_rows.append({"d_z": int(d_z), "d_h": int(d_h), "depth": int(depth),
                           "trainable": int(group["trainable"].iloc[0]), "gain_db": float(est.value),
                           "interval": [float(v) for v in est.interval]})
    out["lift_gain_by_shape"] = shape_rows
    largest = [_largest(g, budgets) for g in gains.values()]
    out["fixed_minus_trained_db_largest"] = claims.mean_interval(
        np.mean([np.mean(np.stack(g["gain"].to_list()), axis=0) for g in largest], axis=0), unit="photos")
    out["fixed_minus_trained_db_all_shapes"] = claims.mean_interval(
        np.mean([np.mean(np.stack(g["gain"].to_list()), axis=0) for g in gains.values()], axis=0), unit="photos")
    out["lift_shapes_fixed_better"] = int(sum(r["gain_db"] > 0 for r in shape_rows))
    out["lift_shapes"] = len(shape_rows)

    def lift_statistic(t: pd.DataFrame) -> dict:
        g = _lift_gains(t, "val_psnr", "test_psnr")
        return {s: float(np.mean([float(np.mean(v)) for v in _largest(f, budgets)["gain"]])) for s, f in g.items()}

    conv = A.convergence(table, probes["curve_steps"], lift_statistic)
    out["lift_convergence_shift_over_seed_sd"] = conv["shift_over_sd"]
    out["lift_convergence_shift_db"] = conv["shift"]
    out["lift_curve"] = conv["curve"]

    def winner_statistic(t: pd.DataFrame) -> dict:
        res = {}
        for s, rows in A.seed_tables(t).items():
            w = A.ladder_winners(A.family(A.select_rates(rows, "val_psnr"), "hourglass"), budgets, dims["hourglass"])
            res[s] = A.spearman(w["budget"], w["depth"]) if len(w) else math.nan
        return res

    conv = A.convergence(table, probes["curve_steps"], winner_statistic) if budgets else {"shift_over_sd": math.inf, "shift": math.nan}
    out["trend_convergence_shift_over_seed_sd"] = conv["shift_over_sd"]
    out["trend_convergence_shift"] = conv["shift"]
    out["seeds"] = len(seeds)
    out["test_photos"] = len(probes["photos"]["test"])
    return out


def _search(runs: pd.DataFrame, cfg) -> tuple[pd.DataFrame, dict, dict]:
    """The per-(run, shape, rate) table of the runs, each family's rate grid and the first run's
    probes (photos, baselines, curve steps: the same in every run), after checking that the runs
    solved the figure's task (``run.module.task.kind``)."""
    table = shape_table(runs)
    wanted = cfg.figure.run.module.task.kind
    found = sorted(set(table["task"]))
    if found != [wanted]:
        raise ValueError(f"{cfg.figure.paper}/{cfg.figure.name}: runs solved task {found}, "
                         f"the figure asks for {wanted!r}")
    probes = next(p for p in runs["probes"] if p and p.get("shapes"))
    return table, A.lr_grids(runs), probes
