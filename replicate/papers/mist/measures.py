"""The numbers behind the MIST claims, each with its interval over the independent units.

A notebook-only module: no training module imports it (so editing it never retrains a run; the
package's ``analysis`` module is imported by ``estimate()`` and so is part of the training code).

Units. The trained estimator is fixed (one meta-training run per objective, the shared runs of
``parts/mist/runs.yaml``), so the independent units are the fixed *test datasets*: every interval
here is over datasets (a percentile bootstrap, or Wilson for a share of datasets), conditional on
that one trained network. Seed-to-seed variation of meta-training is not in these intervals.
Timings (:func:`speedup`) are over timing repeats.

Input: the estimates table of :func:`replicate.papers.mist.analysis.estimates_table` (one row per
dataset: ``split``, ``family``, ``n``, ``d``, true ``mi`` and one column per estimator).
"""

from __future__ import annotations

import math
import time

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


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    levels, codes = np.unique(np.asarray(values), return_inverse=True)
    return levels, codes.astype(float)


def _bin_mses(units: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin MSE of columns 1 and 2 of ``units`` (column 0 = bin code) and the bin counts."""
    codes = units[:, 0].astype(int)
    count = np.bincount(codes, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.bincount(codes, units[:, 1], bins) / count
        b = np.bincount(codes, units[:, 2], bins) / count
    return a, b, count


def frac_bins_won(table: pd.DataFrame, by: str, method: str = "mist", other: str = "ksg") -> claims.Estimate:
    """Share of the ``by`` bins (sample sizes, dimensions) where ``method``'s MSE is below
    ``other``'s, with a percentile bootstrap over datasets (resampled across all bins; a bin left
    empty by a resample is not counted in it)."""
    levels, codes = _codes(table[by])
    units = np.column_stack([codes, squared_error(table, method), squared_error(table, other)])

    def share(u):
        a, b, count = _bin_mses(u, len(levels))
        keep = count > 0
        return float(np.mean(a[keep] < b[keep]))

    return claims.bootstrap(units, share, unit="datasets")


def log_ratio_slope(table: pd.DataFrame, by: str = "d", numerator: str = "ksg",
                    denominator: str = "mist") -> claims.Estimate:
    """Least-squares slope of log(MSE_numerator / MSE_denominator) per ``by`` bin against the bin
    value (e.g. per unit of dimension): above 0, the gap widens. Percentile bootstrap over datasets."""
    levels, codes = _codes(table[by])
    x = levels.astype(float)
    units = np.column_stack([codes, squared_error(table, numerator), squared_error(table, denominator)])

    def slope(u):
        num, den, count = _bin_mses(u, len(levels))
        keep = (count > 0) & (num > 0) & (den > 0)
        if keep.sum() < 2:
            return math.nan
        return float(np.polyfit(x[keep], np.log(num[keep] / den[keep]), 1)[0])

    return claims.bootstrap(units, slope, unit="datasets")


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
    from scipy.stats import rankdata

    units = np.column_stack([table["mi"].to_numpy(dtype=float), table[method].to_numpy(dtype=float)])
    units = units[np.isfinite(units).all(axis=1)]

    def spearman(u):
        a, b = rankdata(u[:, 0]), rankdata(u[:, 1])
        if a.std() == 0 or b.std() == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1])

    return claims.bootstrap(units, spearman, unit="datasets", resamples=1000)


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
    tau = np.asarray(tau, dtype=float)
    below = np.column_stack([(table["mi"] <= table[f"q_{t:g}"]).to_numpy(dtype=float) for t in tau])
    return claims.bootstrap(below, lambda u: float(np.abs(u.mean(axis=0) - tau).mean()), unit="datasets")


def coverage_gap_difference(covered_a, covered_b, nominal: float = 0.9) -> claims.Estimate:
    """|coverage_a - nominal| - |coverage_b - nominal| over the same datasets (above 0: ``b`` is
    closer to nominal), with a paired percentile bootstrap over datasets."""
    units = np.column_stack([np.asarray(covered_a, dtype=float), np.asarray(covered_b, dtype=float)])
    return claims.bootstrap(units, lambda u: abs(u[:, 0].mean() - nominal) - abs(u[:, 1].mean() - nominal),
                            unit="paired datasets")


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
    interval over repeats on the log scale, exponentiated (``times``: columns repeat, method,
    seconds, one n)."""
    wide = times.pivot(index="repeat", columns="method", values="seconds")
    log_ratio = np.log(wide[slow].to_numpy(dtype=float) / wide[fast].to_numpy(dtype=float))
    est = claims.mean_interval(log_ratio, unit="timing repeats")
    interval = None if est.interval is None else (math.exp(est.interval[0]), math.exp(est.interval[1]))
    method = (est.method.replace("t interval of the mean", "t interval of the mean log ratio")
              + ", exponentiated (geometric mean of the ratios)") if interval else est.method
    return claims.Estimate(math.exp(est.value), interval, est.n, method, tuple(np.exp(log_ratio).tolist()))
