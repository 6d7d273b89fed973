"""The numbers behind the MIST claims: one function per figure (:func:`error_vs_n`,
:func:`error_vs_dim`, :func:`calibration`, :func:`runtime`), each ``(runs, cfg) -> {key: Estimate
or number}``, and the estimators they use, each with its interval over the independent units.

A notebook-only module: no training module imports it (so editing it never retrains a run; the
package's ``analysis`` module is imported by ``estimate()`` and so is part of the training code).

Units. The trained estimator is fixed (one meta-training run per objective, the shared runs of
``parts/mist/runs.yaml``), so the independent units are the fixed *test datasets*, hundreds per
split: MSE ratios have a delta-method t interval on the log ratio of means, shares of datasets a
Wilson interval, means a t interval, and statistics over bins or over the τ grid (shares of bins
won, a trend slope, the calibration error, a rank correlation) a percentile bootstrap over datasets
whose statistic is a module-level function (the json names it, so the interval can be recomputed).
All are conditional on that one trained network: seed-to-seed variation of meta-training is not
in them. Timings (:func:`speedup`) are over timing repeats.

Input: the estimates table of :func:`replicate.papers.mist.analysis.estimates_table` (one row per
dataset: ``split``, ``family``, ``n``, ``d``, true ``mi`` and one column per estimator).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from replicate import claims
from replicate.papers.mist import baselines

MI_STRATA = (0.3, 1.0)  # the strata: MI <= 0.3, 0.3 < MI <= 1, MI > 1 (nats)
STRATUM_NAMES = ("low", "mid", "high")


# --------------------------------------------------------------------------- strata
def mi_stratum(mi, edges=MI_STRATA) -> np.ndarray:
    """Stratum name per dataset: ``low`` (MI <= edges[0]), ``mid`` (<= edges[1]), ``high``."""
    mi = np.asarray(mi, dtype=float)
    return np.asarray(STRATUM_NAMES, dtype=object)[np.searchsorted(np.asarray(edges), mi, side="left")]


def stratum_label(name: str, edges=MI_STRATA) -> str:
    """``"MI <= 0.3"``, ``"0.3 < MI <= 1"``, ``"MI > 1"`` for ``low``, ``mid``, ``high``."""
    lo, hi = edges
    return {"low": f"MI <= {lo:g}", "mid": f"{lo:g} < MI <= {hi:g}", "high": f"MI > {hi:g}"}[name]


def squared_error(table: pd.DataFrame, method: str) -> np.ndarray:
    """Per dataset (estimate - true MI)^2 of ``method``'s column (NaN where it is missing)."""
    return ((table[method] - table["mi"]) ** 2).to_numpy(dtype=float)


def mse(table: pd.DataFrame, method: str) -> float:
    """Mean squared error of ``method`` over the datasets that have its estimate (NaN if none)."""
    sq = squared_error(table, method)
    sq = sq[np.isfinite(sq)]
    return float(sq.mean()) if len(sq) else math.nan


def formatted(frame: pd.DataFrame, spec: str = ".3g") -> pd.DataFrame:
    """``frame`` with every :class:`~replicate.claims.Estimate` cell written "value [lo, hi]"."""
    return frame.map(lambda v: format(v, spec) if isinstance(v, claims.Estimate) else v)


# --------------------------------------------------------------------------- MSE comparisons
def mse_ratio(table: pd.DataFrame, numerator: str = "ksg", denominator: str = "mist") -> claims.Estimate:
    """MSE(numerator) / MSE(denominator) over the table's datasets (above 1: ``denominator`` is
    better), with a paired percentile bootstrap over datasets (both estimators' errors on the same
    resampled datasets)."""
    return claims.ratio_of_means(squared_error(table, numerator), squared_error(table, denominator),
                                 unit="datasets")


def win_rate(table: pd.DataFrame, method: str = "mist", other: str = "ksg") -> claims.Estimate:
    """Share of datasets where ``method``'s absolute error is below ``other``'s (Wilson interval);
    datasets where either estimate is missing are left out."""
    a = (table[method] - table["mi"]).abs().to_numpy(dtype=float)
    b = (table[other] - table["mi"]).abs().to_numpy(dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    return claims.proportion(int((a[ok] < b[ok]).sum()), int(ok.sum()), unit="datasets")


def _bin_mses(units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin values present in ``units`` (column 0) and per-bin means of columns 1 and 2."""
    levels, codes = np.unique(units[:, 0], return_inverse=True)
    count = np.bincount(codes).astype(float)
    return levels, np.bincount(codes, units[:, 1]) / count, np.bincount(codes, units[:, 2]) / count


def share_of_bins_won(units: np.ndarray) -> float:
    """Bootstrap statistic: share of the bins (values of column 0) where the mean of column 1
    (one estimator's squared errors) is below that of column 2 (the other's)."""
    _, a, b = _bin_mses(units)
    return float(np.mean(a < b))


def slope_of_log_mse_ratio(units: np.ndarray) -> float:
    """Bootstrap statistic: least-squares slope, against the bin value (column 0), of
    log(per-bin mean of column 1 / per-bin mean of column 2); NaN with fewer than 2 usable bins."""
    x, num, den = _bin_mses(units)
    keep = (num > 0) & (den > 0)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(x[keep], np.log(num[keep] / den[keep]), 1)[0])


def spearman(units: np.ndarray) -> float:
    """Bootstrap statistic: Spearman correlation of columns 0 and 1 (0 when either is constant)."""
    from scipy.stats import rankdata

    a, b = rankdata(units[:, 0]), rankdata(units[:, 1])
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def mean_calibration_gap(units: np.ndarray, tau: list[float]) -> float:
    """Bootstrap statistic: mean over the τ grid of |share of rows with indicator 1 in column j - τ_j|
    (units: one row of indicators 1{MI <= q̂_τ} per dataset)."""
    return float(np.abs(units.mean(axis=0) - np.asarray(tau)).mean())


def nominal_gap_difference(units: np.ndarray, nominal: float) -> float:
    """Bootstrap statistic: |mean of column 0 - nominal| - |mean of column 1 - nominal| (two
    coverage indicators per dataset)."""
    return abs(units[:, 0].mean() - nominal) - abs(units[:, 1].mean() - nominal)


def bootstrap_over_datasets(units: np.ndarray, statistic, **params) -> claims.Estimate:
    """``claims.bootstrap`` over datasets (rows of ``units``); below the bootstrap's minimum number
    of units (a smoke-scale test set) the statistic's value alone, marked as such."""
    if len(units) < claims.MIN_BOOTSTRAP_UNITS:
        value = statistic(units, **params) if len(units) else math.nan
        point = claims.exact(value, f"{len(units)} datasets: too few for a bootstrap interval")
        return dataclasses.replace(point, n=len(units))
    return claims.bootstrap(units, statistic, unit="datasets", params=params or None)


def frac_bins_won(table: pd.DataFrame, by: str, method: str = "mist", other: str = "ksg") -> claims.Estimate:
    """Share of the ``by`` bins (sample sizes, dimensions) where ``method``'s MSE is below
    ``other``'s, with a percentile bootstrap over datasets (resampled across all bins; a bin left
    empty by a resample is not counted in it)."""
    units = np.column_stack([table[by].to_numpy(dtype=float), squared_error(table, method),
                             squared_error(table, other)])
    return bootstrap_over_datasets(units, share_of_bins_won)


def log_ratio_slope(table: pd.DataFrame, by: str = "d", numerator: str = "ksg",
                    denominator: str = "mist") -> claims.Estimate:
    """Least-squares slope of log(MSE_numerator / MSE_denominator) per ``by`` bin against the bin
    value (e.g. per unit of dimension): above 0, the gap widens. Percentile bootstrap over datasets."""
    units = np.column_stack([table[by].to_numpy(dtype=float), squared_error(table, numerator),
                             squared_error(table, denominator)])
    return bootstrap_over_datasets(units, slope_of_log_mse_ratio)


def per_bin_ratios(table: pd.DataFrame, by: str, numerator: str = "ksg", denominator: str = "mist") -> pd.DataFrame:
    """One row per ``by`` bin: datasets, both MSEs and their ratio with its bootstrap interval."""
    rows = []
    for value, group in table.groupby(by, sort=True):
        est = mse_ratio(group, numerator, denominator)
        lo, hi = est.interval or (math.nan, math.nan)
        rows.append({by: value, "datasets": len(group), f"mse_{numerator}": mse(group, numerator),
                     f"mse_{denominator}": mse(group, denominator),
                     "ratio": est.value, "ratio_lo": lo, "ratio_hi": hi})
    return pd.DataFrame(rows)


def stratified_comparison(table: pd.DataFrame, edges=MI_STRATA, method: str = "mist",
                          other: str = "ksg") -> pd.DataFrame:
    """One row per (split, MI stratum): datasets, MSEs, the MSE ratio other/method with its
    bootstrap interval, and ``method``'s win rate with its Wilson interval."""
    rows = []
    strata = mi_stratum(table["mi"], edges)
    for split in sorted(table["split"].unique()):
        for name in STRATUM_NAMES:
            group = table[(table["split"] == split) & (strata == name)]
            ratio, wins = mse_ratio(group, other, method), win_rate(group, method, other)
            rows.append({"split": split, "stratum": name, "true MI": stratum_label(name, edges),
                         "datasets": len(group),
                         f"mse_{method}": mse(group, method), f"mse_{other}": mse(group, other),
                         "ratio": ratio, "win_rate": wins})
    return pd.DataFrame(rows)


def nonfinite_estimates(table: pd.DataFrame, methods=("mist", "mist_qr")) -> int:
    """How many datasets have a non-finite estimate from any of ``methods`` (a diverged network)."""
    values = table[list(methods)].to_numpy(dtype=float)
    return int((~np.isfinite(values)).any(axis=1).sum())


def rank_correlation(table: pd.DataFrame, method: str) -> claims.Estimate:
    """Spearman correlation between ``method``'s estimates and the true MI over datasets, with a
    percentile bootstrap over datasets: near 0 when an estimator ignores its input (e.g. a network
    that collapsed to a constant)."""
    units = np.column_stack([table["mi"].to_numpy(dtype=float), table[method].to_numpy(dtype=float)])
    return bootstrap_over_datasets(units[np.isfinite(units).all(axis=1)], spearman)


# --------------------------------------------------------------------------- independence
def mean_estimate(table: pd.DataFrame, method: str = "mist") -> claims.Estimate:
    """Mean of ``method``'s estimates over the table's datasets (on independent data the truth is
    0, so this is the bias), with a t interval over datasets."""
    values = table[method].to_numpy(dtype=float)
    return claims.mean_interval(values[np.isfinite(values)], unit="datasets")


def false_dependence_rate(table: pd.DataFrame, lo: str = "q_0.05", threshold: float = 0.0) -> claims.Estimate:
    """Share of (independent) datasets whose lower quantile ``lo`` is above ``threshold``: the
    rate of a false "dependent" call by the rule "q̂_0.05 > 0" (Wilson interval over datasets)."""
    q = table[lo].to_numpy(dtype=float)
    q = q[np.isfinite(q)]
    return claims.proportion(int((q > threshold).sum()), len(q), unit="datasets")


def independence_table(table: pd.DataFrame, methods=("mist", "mist_qr", "ksg"), by=("n", "d")) -> pd.DataFrame:
    """Per ``by`` cell of independent data: datasets, every method's mean estimate (t interval)
    and the false-dependence rate of MIST-QR's 5 % quantile (Wilson)."""
    rows = []
    for key, g in table.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key), datasets=len(g))
        row.update({f"mean {m}": mean_estimate(g, m) for m in methods})
        if "q_0.05" in g:
            row["P(q0.05 > 0)"] = false_dependence_rate(g)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- calibration
def coverage_share(covered: pd.Series) -> claims.Estimate:
    """Share of datasets whose interval covers the truth (Wilson), over rows with an interval."""
    c = covered.dropna().to_numpy(dtype=float)
    return claims.proportion(int(c.sum()), len(c), unit="datasets")


def coverage_by_stratum(table: pd.DataFrame, lo: str = "q_0.05", hi: str = "q_0.95",
                        edges=MI_STRATA) -> pd.DataFrame:
    """Per (split, true-MI stratum): datasets, coverage of [lo, hi] (Wilson) and the shares of
    datasets whose truth lies below ``lo`` and above ``hi`` (where the misses are)."""
    rows = []
    strata = mi_stratum(table["mi"], edges)
    for split in sorted(table["split"].unique()):
        for name in STRATUM_NAMES:
            g = table[(table["split"] == split) & (strata == name)]
            below, above = (g["mi"] < g[lo]).to_numpy(), (g["mi"] > g[hi]).to_numpy()
            rows.append({"split": split, "stratum": name, "true MI": stratum_label(name, edges), "datasets": len(g),
                         "coverage": claims.proportion(int((~below & ~above).sum()), len(g), unit="datasets"),
                         "truth below lo": float(below.mean()) if len(g) else math.nan,
                         "truth above hi": float(above.mean()) if len(g) else math.nan})
    return pd.DataFrame(rows)


def calibration_error(table: pd.DataFrame, tau) -> claims.Estimate:
    """Mean over the τ grid of |empirical P(MI <= q̂_τ) - τ|, with a percentile bootstrap over
    datasets (each dataset's row of indicators resampled whole)."""
    below = np.column_stack([(table["mi"] <= table[f"q_{t:g}"]).to_numpy(dtype=float) for t in tau])
    return bootstrap_over_datasets(below, mean_calibration_gap, tau=[float(t) for t in tau])


def coverage_gap_difference(covered_a, covered_b, nominal: float = 0.9) -> claims.Estimate:
    """|coverage_a - nominal| - |coverage_b - nominal| over the same datasets (above 0: ``b`` is
    closer to nominal), with a paired percentile bootstrap over datasets."""
    units = np.column_stack([np.asarray(covered_a, dtype=float), np.asarray(covered_b, dtype=float)])
    return bootstrap_over_datasets(units, nominal_gap_difference, nominal=float(nominal))


# --------------------------------------------------------------------------- timing
def timing_repeats(fns: dict, repeats: int) -> pd.DataFrame:
    """Wall seconds of every ``fns[name]()`` per repeat, after one warm-up call each; within a
    repeat the methods run back to back, so repeat ``r`` of two methods is a pair (same machine
    load)."""
    for fn in fns.values():
        fn()
    rows = []
    for r in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            rows.append({"repeat": r, "method": name, "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)


def runtime_repeats(net, spec: dict, infonce_spec: dict, ksg_k: int = 5) -> pd.DataFrame:
    """Seconds per estimate for MIST (batched: per dataset of a batch; one at a time), KSG and
    InfoNCE at each n of ``spec``, every repeat (columns n, repeat, method, seconds), on Gaussian
    data with d = ``spec["d"]`` (the cost does not depend on the distribution)."""
    import torch

    frames = []
    infonce = f"InfoNCE ({infonce_spec['steps']} steps)"
    for n in spec["n_grid"]:
        rng = np.random.default_rng(int(n))
        x = rng.standard_normal((spec["batch"], n, spec["d"])).astype(np.float32)
        y = (0.7 * x + rng.standard_normal(x.shape)).astype(np.float32)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def batched():
            with torch.no_grad():
                net(xt, yt)

        def single():
            with torch.no_grad():
                net(xt[:1], yt[:1])

        fns = {"MIST (batched)": batched, "MIST (one at a time)": single,
               f"KSG (k={ksg_k})": lambda: baselines.ksg(x[0], y[0], ksg_k),
               infonce: lambda: baselines.infonce(x[0], y[0], infonce_spec["steps"], infonce_spec["lr"],
                                                  infonce_spec["hidden"], infonce_spec["embed"])}
        frame = timing_repeats(fns, spec["repeats"])
        frame.loc[frame.method == "MIST (batched)", "seconds"] /= spec["batch"]
        frames.append(frame.assign(n=int(n)))
    return pd.concat(frames, ignore_index=True)[["n", "repeat", "method", "seconds"]]


def speedup(times: pd.DataFrame, slow: str, fast: str) -> claims.Estimate:
    """seconds(slow) / seconds(fast) as the geometric mean of the per-repeat ratios, with a t
    interval over repeats on the log scale (``times``: columns repeat, method, seconds, one n;
    repeat r of both methods ran back to back, so they are paired)."""
    wide = times.pivot(index="repeat", columns="method", values="seconds")
    return claims.ratio_interval(wide[slow].to_numpy(dtype=float), wide[fast].to_numpy(dtype=float),
                                 unit="timing repeats")


# --------------------------------------------------------------------------- figures
def _measure(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.figure.measure, resolve=True)


def estimates(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """The estimates table of a figure's two runs on every evaluation split (in, out, copula,
    independent; InfoNCE on its subset): :func:`replicate.papers.mist.analysis.evaluate`, cached
    under the run store so that every MIST figure computes it once."""
    from replicate.papers.mist.analysis import evaluate

    measure = _measure(cfg)
    return evaluate(runs, measure, measure["eval"]["mi_max"], extra_splits=True, infonce=True)[0]


def calibration_table(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """:func:`estimates` with the percentile-bootstrap interval of KSG on a per-bin subset
    (``boot_lo``, ``boot_hi``; cached like the estimates), each interval's coverage of the true MI
    (``cover_qr`` for MIST-QR's [q̂_0.05, q̂_0.95], ``cover_boot``) and width."""
    from replicate.papers.mist import analysis

    measure = _measure(cfg)
    table, sets = analysis.evaluate(runs, measure, measure["eval"]["mi_max"], extra_splits=True, infonce=True)
    key = analysis.cache_key("calibration", sorted(Path(d).name for d in runs.run_dir), measure["eval"],
                             measure.get("copula"), measure.get("independent"), measure["ksg_k"],
                             measure["bootstrap"])
    table = analysis.cached(analysis.cache_folder(runs), key, lambda: analysis.add_bootstrap(
        table.drop(columns=["infonce"]), sets, measure["bootstrap"], measure["ksg_k"]))
    return table.assign(cover_qr=analysis.coverage(table, "q_0.05", "q_0.95"),
                        cover_boot=analysis.coverage(table, "boot_lo", "boot_hi"),
                        width_qr=table["q_0.95"] - table["q_0.05"], width_boot=table["boot_hi"] - table["boot_lo"])


def _independent_core(table: pd.DataFrame) -> pd.DataFrame:
    """Independent pairs at n = 200 with d_x = d_y <= 4 (the cells every scale evaluates)."""
    indep = table[table.split == "independent"]
    return indep[(indep.n == 200) & (indep.d == indep.dy) & (indep.d <= 4)]


def _per_bin(table: pd.DataFrame, by: str, split: str) -> dict:
    """Per ``by`` bin (a sample size, a dimension): datasets and the MSE ratio KSG / MIST, keyed
    ``datasets_<by><value>_<split>`` and ``mse_ratio_ksg_over_mist_<by><value>_<split>``."""
    out = {}
    for value, group in table.groupby(by, sort=True):
        out[f"datasets_{by}{value}_{split}"] = len(group)
        out[f"mse_ratio_ksg_over_mist_{by}{value}_{split}"] = mse_ratio(group, "ksg", "mist")
    return out


ERROR_METHODS = ("mist", "mist_qr", "ksg", "cca", "infonce")
POINT_METHODS = ("mist", "mist_qr", "ksg", "cca")
STRATIFIED_SPLITS = ("in", "out", "copula")


def error_vs_n(runs: pd.DataFrame, cfg, table: pd.DataFrame | None = None) -> dict:
    """Error vs sample size (Gritsai et al. 2025, Sec. 5, error-vs-n figure). Per split (in, out,
    copula): MSE ratios KSG / MIST and KSG / MIST-QR (delta-method t interval over datasets), MIST's
    win rate (Wilson), the share of n bins MIST wins and CCA wins (bootstrap over datasets), every
    method's MSE and the ratio per n bin; the same per true-MI stratum
    (``<split>_mi_<low|mid|high>``); the normal-score KSG control on the copulas; MIST-QR's rank
    correlation with the truth; mean estimates and MIST-QR's false-dependence rate on independent
    pairs. ``table``: :func:`estimates` when already at hand."""
    table = estimates(runs, cfg) if table is None else table
    edges = tuple(_measure(cfg)["mi_strata"])
    out = {"mist_nonfinite_estimates": nonfinite_estimates(table, ["mist"]),
           "mistqr_nonfinite_estimates": nonfinite_estimates(table, ["mist_qr"])}
    for split in STRATIFIED_SPLITS:
        t = table[table.split == split]
        out.update({f"datasets_{split}": len(t),
                    f"mse_ratio_ksg_over_mist_{split}": mse_ratio(t, "ksg", "mist"),
                    f"mse_ratio_ksg_over_mistqr_{split}": mse_ratio(t, "ksg", "mist_qr"),
                    f"win_rate_mist_over_ksg_{split}": win_rate(t, "mist", "ksg"),
                    f"frac_n_bins_mist_beats_ksg_{split}": frac_bins_won(t, "n", "mist", "ksg"),
                    f"frac_n_bins_cca_beats_mist_{split}": frac_bins_won(t, "n", "cca", "mist"),
                    **{f"mse_{m}_{split}": mse(t, m) for m in ERROR_METHODS}})
        out.update(_per_bin(t, "n", split))
    for r in stratified_comparison(table[table.split.isin(STRATIFIED_SPLITS)], edges).itertuples():
        key = f"{r.split}_mi_{r.stratum}"
        out.update({f"mse_ratio_ksg_over_mist_{key}": r.ratio, f"win_rate_mist_over_ksg_{key}": r.win_rate,
                    f"datasets_{key}": r.datasets, f"mse_mist_{key}": r.mse_mist, f"mse_ksg_{key}": r.mse_ksg})
    copula = table[table.split == "copula"]
    copula_low = copula[mi_stratum(copula["mi"], edges) == "low"]
    out.update({"mse_ratio_ksgranks_over_mist_copula": mse_ratio(copula, "ksg_ranks", "mist"),
                "mse_ratio_ksgranks_over_mist_copula_mi_low": mse_ratio(copula_low, "ksg_ranks", "mist"),
                "mse_ksg_ranks_copula": mse(copula, "ksg_ranks"),
                "qr_median_rank_correlation_in": rank_correlation(table[table.split == "in"], "mist_qr")})
    indep, core = table[table.split == "independent"], _independent_core(table)
    out.update({"datasets_independent_n200_d4": len(core),
                **{f"mean_{m}_independent_n200_d4": mean_estimate(core, m) for m in POINT_METHODS},
                **{f"mean_{m}_independent": mean_estimate(indep, m) for m in POINT_METHODS},
                "false_dependence_rate_n200_d4": false_dependence_rate(core),
                "false_dependence_rate_independent": false_dependence_rate(indep)})
    return out


def error_vs_dim(runs: pd.DataFrame, cfg, table: pd.DataFrame | None = None) -> dict:
    """Error vs dimension (Gritsai et al. 2025, Sec. 5, error-vs-dimension figure), on the in and
    out splits' d_x = d_y cells: the share of d bins MIST wins and the slope of log(KSG MSE / MIST
    MSE) on d (bootstrap over datasets); MSE ratios KSG / MIST at the largest d, at the two largest
    d with true MI in the low stratum, and on the d_x != d_y cells (delta-method t interval over
    datasets); every method's MSE and the ratio per d. ``table``: :func:`estimates` when already at hand."""
    table = estimates(runs, cfg) if table is None else table
    table = table[table.split.isin(["in", "out"])]
    measure = _measure(cfg)
    edges, d_grid = tuple(measure["mi_strata"]), sorted(measure["eval"]["d_grid"])
    out = {"mist_nonfinite_estimates": nonfinite_estimates(table, ["mist"]),
           "mistqr_nonfinite_estimates": nonfinite_estimates(table, ["mist_qr"])}
    for split in ("in", "out"):
        part = table[table.split == split]
        t, u = part[part.d == part.dy], part[part.d != part.dy]
        low_top = t[t.d.isin(d_grid[-2:]) & (mi_stratum(t.mi, edges) == "low")]
        out.update({
            f"frac_d_bins_mist_beats_ksg_{split}": frac_bins_won(t, "d", "mist", "ksg"),
            f"mse_ratio_ksg_over_mist_top_d_{split}": mse_ratio(t[t.d == d_grid[-1]], "ksg", "mist"),
            f"log_ratio_slope_per_d_{split}": log_ratio_slope(t, "d", "ksg", "mist"),
            f"mse_ratio_ksg_over_mist_top2_d_{split}_mi_low": mse_ratio(low_top, "ksg", "mist"),
            f"datasets_top2_d_{split}_mi_low": len(low_top),
            f"mse_ratio_ksg_over_mist_unequal_{split}": mse_ratio(u, "ksg", "mist"),
            f"datasets_unequal_{split}": len(u),
            **{f"mse_{m}_d{d}_{split}": mse(t[t.d == d], m) for m in ERROR_METHODS for d in sorted(t.d.unique())},
        })
        out.update(_per_bin(t, "d", split))
    return out


def calibration(runs: pd.DataFrame, cfg, table: pd.DataFrame | None = None) -> dict:
    """Calibration of MIST-QR (Gritsai et al. 2025, Sec. 5, calibration figure). Per split (in,
    out): coverage of MIST-QR's 90% interval on every dataset and on the bootstrap subset, of the
    bootstrap KSG interval on that subset (Wilson), |coverage_boot - 0.9| - |coverage_QR - 0.9| on
    the same datasets and the calibration error over the τ grid (bootstrap over datasets), mean
    widths; coverage per true-MI stratum; the copula split's coverage and calibration error; the
    crossing rate; rank correlations with the truth; the false-dependence rate of q̂_0.05 > 0 on
    independent pairs. ``table``: :func:`calibration_table` when already at hand."""
    from replicate.papers.mist.analysis import TAU_GRID, crossing_rate

    table = calibration_table(runs, cfg) if table is None else table
    edges = tuple(_measure(cfg)["mi_strata"])
    main = table[table.split.isin(STRATIFIED_SPLITS)]
    out = {"crossing_rate": crossing_rate(table, TAU_GRID),
           "qr_median_rank_correlation_in": rank_correlation(table[table.split == "in"], "mist_qr"),
           "mist_rank_correlation_in": rank_correlation(table[table.split == "in"], "mist"),
           "quantile_nonfinite_estimates": nonfinite_estimates(table, [f"q_{t:g}" for t in TAU_GRID])}
    for split in ("in", "out"):
        t = table[table.split == split]
        p = t[t.cover_boot.notna()]
        out.update({f"coverage_qr_{split}": coverage_share(t.cover_qr),
                    f"coverage_qr_subset_{split}": coverage_share(p.cover_qr),
                    f"coverage_boot_{split}": coverage_share(p.cover_boot),
                    f"coverage_gap_difference_boot_minus_qr_{split}": coverage_gap_difference(p.cover_boot, p.cover_qr),
                    f"calibration_error_{split}": calibration_error(t, TAU_GRID),
                    f"width_qr_{split}": float(p.width_qr.mean()), f"width_boot_{split}": float(p.width_boot.mean()),
                    f"datasets_{split}": len(t), f"datasets_bootstrap_subset_{split}": len(p)})
    copula = table[table.split == "copula"]
    out.update({"coverage_qr_copula": coverage_share(copula.cover_qr),
                "calibration_error_copula": calibration_error(copula, TAU_GRID), "datasets_copula": len(copula)})
    for r in coverage_by_stratum(main, "q_0.05", "q_0.95", edges).itertuples():
        out[f"coverage_qr_{r.split}_mi_{r.stratum}"] = r.coverage
    indep, core = table[table.split == "independent"], _independent_core(table)
    out.update({"datasets_independent_n200_d4": len(core), "datasets_independent": len(indep),
                "false_dependence_rate_n200_d4": false_dependence_rate(core),
                "false_dependence_rate_independent": false_dependence_rate(indep)})
    return out


def runtime_table(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """Every timing repeat of every method at every n of ``measure.timing`` (:func:`runtime_repeats`),
    the MIST network being the figure's MSE run."""
    from replicate.papers.mist.analysis import trained_nets

    measure = _measure(cfg)
    return runtime_repeats(trained_nets(runs)["mse"], measure["timing"], measure["infonce"], measure["ksg_k"])


def runtime(runs: pd.DataFrame, cfg, timing: pd.DataFrame | None = None) -> dict:
    """Runtime (Gritsai et al. 2025, Sec. 5): at ``measure.timing.reference_n``, InfoNCE's and
    KSG's seconds per estimate over MIST's, batched and one at a time (geometric mean of the
    per-repeat ratios, t interval on the logs over repeats); the median seconds of every method at
    every n. ``timing``: :func:`runtime_table` when already at hand (a notebook times once and
    plots the same repeats)."""
    timing = runtime_table(runs, cfg) if timing is None else timing
    at_ref = timing[timing.n == _measure(cfg)["timing"]["reference_n"]]
    infonce = next(m for m in timing.method.unique() if m.startswith("InfoNCE"))
    ksg = next(m for m in timing.method.unique() if m.startswith("KSG"))
    out = {f"speedup_{name}_over_mist_{kind}": speedup(at_ref, slow, f"MIST ({label})")
           for name, slow in (("infonce", infonce), ("ksg", ksg))
           for kind, label in (("batched", "batched"), ("single", "one at a time"))}
    medians = timing.groupby(["method", "n"]).seconds.median()
    out.update({f"seconds_{method}_n{n}": float(s) for (method, n), s in medians.items()})
    return out
