"""The measurements behind every hypernet_mip claim: one function per figure,
``measures.<figure>(runs, cfg)``, with ``runs`` the figure's run table (``FigureContext.runs()``:
one row per sweep point, each run training the seeds of ``module.seeds`` side by side) and ``cfg``
the composed figure config (``cfg.figure.measure`` holds the thresholds and probe sizes).

Paper: Ortiz, Guttag & Dalca, "Magnitude Invariant Parametrizations Improve Hypernetwork
Learning" (ICLR 2024, arXiv 2304.07645): Sec. 3 (the proportionality θ(cγ) = cθ(γ) of a zero-bias
ReLU-family hypernetwork), Sec. 4 / Fig. 2 (MIP: θ = θ₀ + h(E(γ)) with a constant-norm encoding
E), the training curves (faster convergence) and the ablation study.

Runs are found by their config values (the variant, the hypernetwork init and the task kind of
each run's effective config: ``analysis.expand_seeds``), never by their position in the sweep.
Units are seeds (a seed fixes the hypernetwork init and the γ, noise and image stream, so the
variants of one seed are paired): a steps ratio is the geometric mean over seeds of the per-seed
ratios with a t interval on their logs (``claims.ratio_interval``), a loss gain the mean of paired
seed differences with a t interval. Ablation cells are the units of the cell fractions (Wilson).
Init-time slopes are fitted per init seed, with a t interval over the init seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from replicate.papers.hypernet_mip import analysis as A

# steps-ratio measurement suffix -> (baseline, variant): "<baseline>_over_<variant>"
RATIOS = (("default", "mip"), ("default", "encoding"), ("default", "residual"), ("default_scaled", "mip"),
          ("default_scaled", "encoding_scaled"), ("default", "default_scaled"), ("default_oneblock", "mip"),
          ("default_oneblock", "default"))


def convergence(runs: pd.DataFrame, cfg) -> dict:
    """Per regime (task kind; the keys of ``measure.threshold``): every steps ratio of ``RATIOS``,
    MIP's final-loss gain over the default, and per variant the share of seeds reaching the
    threshold (the ratios' preconditions), mean steps and mean final loss. Every key is returned
    for every regime and variant; one whose runs are not in ``runs`` (a smaller scale's sweep) is
    NaN, so its claim is inconclusive."""
    table = convergence_table(runs, cfg)
    variants = sorted({v for pair in RATIOS for v in pair} | set(table["variant"]))
    out: dict = {"final_tolerance": float(cfg.figure.measure.final_tolerance)}
    for regime in cfg.figure.measure.threshold:
        rows = table[table["regime"] == regime]
        for baseline, variant in RATIOS:
            out[f"steps_ratio_{baseline}_over_{variant}_{regime}"] = A.steps_ratio(table, regime, variant, baseline)
        out[f"final_gain_{regime}"] = A.final_gain(table, regime, "mip")
        for variant in variants:
            one = rows[rows["variant"] == variant]
            out[f"{variant}_reached_frac_{regime}"] = float(one["reached"].mean()) if len(one) else float("nan")
            out[f"steps_{variant}_{regime}"] = float(one["steps_censored"].mean()) if len(one) else float("nan")
            out[f"final_loss_{variant}_{regime}"] = float(one["final"].mean()) if len(one) else float("nan")
        out[f"runs_never_reaching_{regime}"] = int((~rows["reached"]).sum())
        out[f"final_sd_default_{regime}"] = float(rows.loc[rows["variant"] == "default", "final"].std())
    return out


def convergence_table(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """One row per run and seed (``analysis.seed_table``) at the figure's thresholds, a seed that
    never reaches its regime's threshold counted at the training budget ``run.trainer.max_steps``."""
    return A.seed_table(A.expand_seeds(runs, cfg), _thresholds(cfg), int(cfg.figure.run.trainer.max_steps))


def ablations(runs: pd.DataFrame, cfg) -> dict:
    """The share of ablation cells where MIP ends lower than the default by more than
    ``measure.tie`` and where it reaches ``measure.threshold`` no later (Wilson intervals over
    cells, each cell judged on its seed means), MIP's gain averaged over cells per seed (t interval
    over seeds), and counts: cells, ties, losses, cells reaching the threshold, divergences."""
    table = ablation_seeds(runs, cfg)
    cells = A.cell_outcomes(table, float(cfg.figure.measure.tie), int(cfg.figure.run.trainer.max_steps))
    decided = cells["mip_first"].dropna()
    finite_gain = cells["gain"].replace([np.inf, -np.inf], np.nan)
    return {
        "frac_cells_mip_better": A.cell_fraction(cells["mip_better"]),
        "n_cells": int(len(cells)),
        "n_cells_mip_better": int(cells["mip_better"].sum()),
        "n_cells_tie": int((~cells["mip_better"] & ~cells["mip_worse"]).sum()),
        "n_cells_mip_worse": int(cells["mip_worse"].sum()),
        "tie": float(cfg.figure.measure.tie),
        "frac_cells_mip_first": A.cell_fraction(decided),
        "n_cells_reaching_threshold": int(len(decided)),
        "mean_gain_over_seeds": A.gain_over_seeds(table),
        "median_gain": float(np.nanmedian(finite_gain)) if finite_gain.notna().any() else float("nan"),
        "median_speedup": float(np.nanmedian(cells.loc[cells["mip_first"].notna(), "speedup"]))
        if len(decided) else float("nan"),
        "n_seeds_diverged_default": int(((table["variant"] == "default") & np.isinf(table["final"])).sum()),
        "n_seeds_diverged_mip": int(((table["variant"] == "mip") & np.isinf(table["final"])).sum()),
    }


def ablation_seeds(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """One row per run and seed with its cell's effective settings (``analysis.ablation_table``)."""
    return A.ablation_table(A.expand_seeds(runs, cfg), float(cfg.figure.measure.threshold),
                            int(cfg.figure.run.trainer.max_steps))


def ablation_cells(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """One row per ablation cell (``analysis.cell_outcomes`` at ``measure.tie``)."""
    return A.cell_outcomes(ablation_seeds(runs, cfg), float(cfg.figure.measure.tie),
                           int(cfg.figure.run.trainer.max_steps))


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


def _thresholds(cfg):
    threshold = cfg.figure.measure.threshold
    return {k: float(v) for k, v in threshold.items()} if hasattr(threshold, "items") else float(threshold)
