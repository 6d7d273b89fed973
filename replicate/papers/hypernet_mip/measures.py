"""The measurements behind every hypernet_mip claim: one function per figure,
``measures.<figure>(runs, cfg)``, with ``runs`` the figure's run table (``FigureContext.runs()``:
one row per sweep point, each run training the seeds of ``module.seeds`` side by side) and ``cfg``
the composed figure config (``cfg.figure.measure`` holds the thresholds, learning rates and
tolerances).

Paper: Ortiz, Guttag & Dalca, "Magnitude Invariant Parametrizations Improve Hypernetwork
Learning" (ICLR 2024, arXiv 2304.07645): Sec. 3 (the proportionality θ(cγ) = cθ(γ) of a zero-bias
ReLU-family hypernetwork), Sec. 4 / Fig. 2 (MIP: θ = θ₀ + h(E(γ)) with a constant-norm encoding
E), the training curves (faster convergence, better or equal final loss) and the ablation study
("MIP improves training in all scenarios").

Runs are found by their config values (variant, task kind, learning rate and seed of each run's
effective config: ``analysis.expand_seeds``), never by their position in the sweep. Units are
seeds (a seed fixes the hypernetwork init and the γ, noise and image stream, so the variants of
one seed are paired). Each variant is judged at its own learning rate, chosen on validation on
separate selection seeds (``analysis.lr_selection``); a speed-up is a curve of per-seed steps
ratios over several loss thresholds, summarised per seed by its geometric mean over the
thresholds (t interval on the logs); a loss gain is a paired t interval over seeds. Ablation
cells are judged each on its own seeds; a universal claim over cells is judged on the weakest
cell (``analysis.weakest_cell``) with intervals that hold for all cells at once (Bonferroni).
Init-time slopes are fitted per init seed, with a t interval over the init seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from replicate import claims
from replicate.papers.hypernet_mip import analysis as A

VARIANTS = ("default", "encoding", "residual", "mip")
# speed-up measurement -> (baseline, variant): steps of the baseline ÷ steps of the variant
SPEEDUPS = {"mip": ("default", "mip"), "encoding": ("default", "encoding"), "residual": ("default", "residual"),
            "mip_over_encoding": ("encoding", "mip")}


def threshold_key(threshold: float) -> str:
    """The suffix naming one loss threshold in a measurement key (``at_0.85``)."""
    return f"at_{float(threshold):g}"


def convergence(runs: pd.DataFrame, cfg) -> dict:
    """Per regime r (the keys of ``measure.thresholds``) and variant v:

    ``<v>_best_lr_r``, ``<v>_lr_interior_r``, ``<v>_lr_rel_gap_r``   the lr chosen on the selection
        seeds (``measure.selection_seeds``) by the mean validation loss over training, whether
        the grid brackets it, and how far the claim lr ``measure.lr[r][v]`` is from it (relative);
    ``speedup_<name>_r`` (``SPEEDUPS``)   the per-seed geometric mean over ``measure.thresholds[r]``
        of the steps ratio baseline ÷ variant, t interval on the logs over the evaluation seeds,
        and ``speedup_<name>_r_at_<threshold>`` at each threshold;
    ``final_gain_r``   default − MIP final loss (mean over the last ``measure.final_frac`` of
        training), paired t over seeds; ``default_plateau_drop_r`` how much the default's loss
        still falls at the end (mean over its seeds), the final-loss claims' precondition;
    ``<v>_reached_frac_r``, ``n_seeds_<v>_r``, ``final_loss_<v>_r``, ``final_sd_default_r``.

    A variant or regime whose runs are absent gives NaN (its claim is inconclusive)."""
    m = cfg.figure.measure
    table = convergence_table(runs, cfg)
    sel = [int(s) for s in m.selection_seeds]
    out: dict = {"final_tolerance": float(m.final_tolerance), "lr_rel_tol": float(m.lr_rel_tol),
                 "plateau_tol": float(m.plateau_tol)}
    for regime, thresholds in m.thresholds.items():
        rows = {}
        for v in VARIANTS:
            claim_lr = float(m.lr[regime][v]) if v in m.lr[regime] else math.nan
            choice = A.lr_selection(table, regime, v, claim_lr, sel)
            out[f"{v}_best_lr_{regime}"] = choice["best_lr"]
            out[f"{v}_lr_interior_{regime}"] = choice["interior"]
            out[f"{v}_lr_rel_gap_{regime}"] = choice["rel_gap"]
            rows[v] = A.evaluation_rows(table, regime, v, claim_lr, sel)
            d = rows[v]
            out[f"{v}_reached_frac_{regime}"] = float(d.reached.mean()) if len(d) else math.nan
            out[f"n_seeds_{v}_{regime}"] = int(len(d))
            out[f"final_loss_{v}_{regime}"] = float(d.final.mean()) if len(d) else math.nan
        for name, (base, var) in SPEEDUPS.items():
            overall, per_thr = A.speedup_curve(rows[base], rows[var])
            out[f"speedup_{name}_{regime}"] = overall
            for t, est in zip(thresholds, per_thr or [claims.log_mean_interval([])] * len(thresholds)):
                out[f"speedup_{name}_{regime}_{threshold_key(t)}"] = est
        out[f"final_gain_{regime}"] = A.paired_gain(rows["default"], rows["mip"])
        dd = rows["default"]
        out[f"default_plateau_drop_{regime}"] = float(dd.plateau_drop.mean()) if len(dd) else math.nan
        out[f"mip_plateau_drop_{regime}"] = float(rows["mip"].plateau_drop.mean()) if len(rows["mip"]) else math.nan
        out[f"final_sd_default_{regime}"] = float(dd.final.std()) if len(dd) > 1 else math.nan
    return out


def convergence_table(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """One row per run and seed (``analysis.curve_table``) at the figure's thresholds."""
    m = cfg.figure.measure
    return A.curve_table(A.expand_seeds(runs, cfg), {k: list(v) for k, v in m.thresholds.items()},
                         int(cfg.figure.run.trainer.max_steps), float(m.final_frac))


def ablations(runs: pd.DataFrame, cfg) -> dict:
    """Over the ablation cells (``ablation_cells``):

    ``gain_weakest_cell``   the gain default − MIP of the cell that decides "MIP is better in every
        cell" (``analysis.weakest_cell`` at the tie ``measure.tie``), with its paired t interval at
        the Bonferroni level 1 − 0.05/cells (simultaneous over cells);
    ``speedup_weakest_cell``   the same for the speed-up (steps to ``measure.threshold``) at 1;
    ``frac_cells_mip_better``   share of cells whose own 95% interval of the gain lies above 0
        (Wilson over cells); ``n_cells_mip_worse``: cells whose interval lies below 0;
    ``mean_gain_over_seeds``   per seed the gain averaged over cells, t over seeds;
    ``tuned_gain_<optimizer>``   default vs MIP each at its own best lr of the optimiser block
        (``analysis.tuned_lr_gain``), with ``<optimizer>_best_lr_<v>`` and ``<optimizer>_lr_interior_<v>``;
    counts of cells, seeds and divergences."""
    m = cfg.figure.measure
    table = ablation_seeds(runs, cfg)
    cells = ablation_cells(runs, cfg, table)
    n = len(cells)
    tie = float(m.tie)
    out: dict = {"n_cells": int(n), "tie": tie, "n_seeds_min": int(cells.n_seeds.min()) if n else 0,
                 "level_simultaneous": _simultaneous_level(n)}
    k = A.weakest_cell(list(cells.sim_est), tie) if n else None
    out["gain_weakest_cell"] = cells.sim_est.iloc[k] if k is not None else claims.mean_interval([])
    speed = list(cells.speed_sim_est) if n else []
    ks = A.weakest_cell(speed, 1.0) if n else None
    out["speedup_weakest_cell"] = speed[ks] if ks is not None else claims.log_mean_interval([])
    out["frac_cells_mip_better"] = A.cell_fraction(cells.status == "MIP better")
    out["n_cells_mip_better"] = int((cells.status == "MIP better").sum())
    out["n_cells_mip_worse"] = int((cells.status == "MIP worse").sum())
    out["n_cells_unresolved"] = int((cells.status == "unresolved").sum())
    out["mean_gain_over_seeds"] = A.gain_over_seeds(table)
    out["median_gain"] = float(np.nanmedian(cells.gain)) if n else math.nan
    base = A.base_setting(cfg)
    for opt in sorted(set(table.optimizer)):
        tuned = A.tuned_lr_gain(table, opt, base)
        out[f"tuned_gain_{opt}"] = tuned["gain"]
        for v in ("default", "mip"):
            out[f"{opt}_best_lr_{v}"] = tuned[f"best_lr_{v}"]
            out[f"{opt}_lr_interior_{v}"] = tuned[f"interior_{v}"]
    for opt in ("adam", "sgd"):
        out.setdefault(f"tuned_gain_{opt}", claims.paired_difference([], []))
        for v in ("default", "mip"):
            out.setdefault(f"{opt}_best_lr_{v}", math.nan)
            out.setdefault(f"{opt}_lr_interior_{v}", math.nan)
    out["n_seeds_diverged_default"] = int(((table.variant == "default") & table.diverged).sum())
    out["n_seeds_diverged_mip"] = int(((table.variant == "mip") & table.diverged).sum())
    return out


def _simultaneous_level(n_cells: int, alpha: float = 0.05) -> float:
    return 1 - alpha / max(1, n_cells)


def ablation_seeds(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """One row per run and seed with its cell's effective settings (``analysis.ablation_table``)."""
    m = cfg.figure.measure
    return A.ablation_table(A.expand_seeds(runs, cfg), float(m.threshold), int(cfg.figure.run.trainer.max_steps),
                            float(m.final_frac), float(m.diverged_loss))


def ablation_cells(runs: pd.DataFrame, cfg, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per ablation cell (``analysis.cell_outcomes``), its intervals at 95% and at the
    Bonferroni level over the cells (``sim_*``, and ``speed_sim_est`` for the speed-up)."""
    table = ablation_seeds(runs, cfg) if table is None else table
    max_steps = int(cfg.figure.run.trainer.max_steps)
    n = table.groupby(list(A.CELL_KEYS)).ngroups
    level = _simultaneous_level(n)
    return A.cell_outcomes(table, max_steps, level=level)


def proportionality(runs: pd.DataFrame, cfg) -> dict:
    """At initialisation (``analysis.init_probes``; no run is read): log-log slopes of ‖θ‖ against
    γ (Sec. 3: exactly 1 for the zero-bias default) and of MIP's ‖θ‖ and ‖θ − θ₀‖ (Sec. 4: flat),
    each fitted per init seed with a t interval over the init seeds; context slopes pooled over
    the init seeds, and ‖θ‖ at γ = max of the grid per init."""
    init, dims = A.init_probes(cfg)
    pooled = A.pooled_slopes(init)
    top = init[init["gamma"] == init["gamma"].max()].groupby("variant")["theta_norm"].mean()
    by_dims = {v: A.loglog_slope(d["gamma_norm"], d["theta_norm"]) for v, d in dims.groupby("variant")}
    return {
        "slope_theta_default": A.slope_over_seeds(init, "default", "theta_norm"),
        "abs_slope_theta_mip": A.slope_over_seeds(init, "MIP", "theta_norm", absolute=True),
        "slope_delta_mip": A.slope_over_seeds(init, "MIP", "delta_norm"),
        "slope_theta_default_oneblock": A.slope_over_seeds(init, "default, one-block init", "theta_norm"),
        "slope_theta_default_scaled": A.slope_over_seeds(init, "default, scaled init", "theta_norm"),
        "slope_theta_default_torch_init": float(pooled.loc["default, PyTorch init", "theta_norm"]),
        "slope_delta_encoding": float(pooled.loc["encoding only", "delta_norm"]),
        "slope_delta_residual": float(pooled.loc["residual only", "delta_norm"]),
        "slope_var_default": float(pooled.loc["default", "theta_var"]),
        "slope_logit_std_default": float(pooled.loc["default", "logit_std"]),
        "slope_grad_default": float(pooled.loc["default", "grad_norm"]),
        "slope_grad_mip": float(pooled.loc["MIP", "grad_norm"]),
        "slope_theta_vs_gamma_norm_dims_default": by_dims["default"],
        "slope_theta_vs_gamma_norm_dims_mip": by_dims["MIP"],
        "theta_norm_mip_init": float(init.loc[init["variant"] == "MIP", "theta_norm"].mean()),
        "theta_norm_default_gamma1": float(top["default"]),
        "theta_norm_default_oneblock_gamma1": float(top["default, one-block init"]),
        "theta_norm_default_scaled_gamma1": float(top["default, scaled init"]),
    }
