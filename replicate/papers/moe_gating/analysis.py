"""The numbers behind the MoE gating claims (Nguyen et al. ICLR 2024 top-K; ICML 2024 temperature).

Notebook-only: the three figure notebooks call these functions; the training code never imports
this module. The unit of every interval is the **replicate**: fit (replicate r, sample size n)
has its own independent sample (problem.py), and a replicate's row of fits over the n grid is
resampled whole.

Rates. A rate is the least-squares slope of log(mean error over replicates) on log n inside
the figure's pre-registered window (:func:`slope_estimate`); its interval is a 95% percentile
bootstrap over replicates of that fitted slope (the regression is refitted on every resample).

Preconditions. A rate says something about the MLE only if the optimiser reached it: every fit
must end at or above the truth's log-likelihood (the truth is a point of the fitted model, so
the MLE is at least as likely). :func:`fits_below_truth` counts the fits that do not; rate
claims require it to be 0, so an optimiser failure reads inconclusive, not as a slow rate.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from replicate import claims

SCALAR_SKIP = ("cells", "params")
LL_TOL = 1e-6  # nats: a fit counts as below the truth when ll_truth - ll_fit exceeds this


def fits_frame(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per fit of every run: the run's ``keys`` columns plus every scalar probe,
    ``ll_gap`` = log-likelihood of the truth minus that of the fit (nats; <= 0 at the MLE) and
    ``converged`` (the estimator's own rule, fit.py: the observed log-likelihood change per point
    below tol, for top-K also the compass step below its minimum; older runs: the last change
    below tol. A run stops only when all its fits converged or at max_steps, so False = stopped
    at the cap)."""
    rows = []
    for run in runs.itertuples():
        per_fit = run.probes["per_fit"]
        scalars = {k: v for k, v in per_fit.items() if k not in SCALAR_SKIP}
        frame = pd.DataFrame(scalars)
        for key in keys:
            frame[key] = getattr(run, key)
        frame["steps"] = run.steps
        tol = run.probes.get("tol", math.inf)
        if "converged" not in frame:
            frame["converged"] = frame["ll_change"] < tol if "ll_change" in frame else True
        rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    out["ll_gap"] = out["ll_truth"] - out["ll_fit"]
    return out


def error_table(frame: pd.DataFrame, metric: str, window) -> pd.DataFrame:
    """Replicate x n table of ``metric`` for the n inside ``window`` (inclusive)."""
    inside = frame[(frame.n >= window[0]) & (frame.n <= window[1])]
    return inside.pivot(index="replicate", columns="n", values=metric).sort_index(axis=1)


def _slope(n: np.ndarray, rows: np.ndarray) -> float:
    """Least-squares slope of log(mean over rows) on log n."""
    mean = rows.mean(0)
    if not np.all(mean > 0):
        return math.nan
    x = np.log(n) - np.log(n).mean()
    return float(x @ np.log(mean) / (x @ x))


def _intercept(n: np.ndarray, rows: np.ndarray) -> float:
    return float(np.polyfit(np.log(n), np.log(rows.mean(0)), 1)[1])


def _with_method(est: claims.Estimate, what: str) -> claims.Estimate:
    return dataclasses.replace(est, method=f"{est.method}; {what}")


def slope_estimate(frame: pd.DataFrame, metric: str, window, n_boot: int = 2000,
                   seed: int = 0) -> claims.Estimate:
    """Rate of ``metric``: slope of log mean error on log n over ``window``, with a 95%
    percentile bootstrap over replicates (rows of :func:`error_table`); units = per-replicate
    slopes (shown, not used for the interval). Not finite (a NaN or zero error): NaN."""
    table = error_table(frame, metric, window)
    if table.shape[1] < 2:
        raise ValueError(f"window {window} holds {table.shape[1]} sample sizes; a slope needs >= 2")
    n, rows = table.columns.to_numpy(float), table.to_numpy(float)
    if not np.isfinite(rows).all() or (rows <= 0).any():
        return claims.Estimate(math.nan, None, len(rows), f"{metric}: a non-finite or zero error")
    est = claims.bootstrap(rows, lambda u: _slope(n, u), resamples=n_boot, seed=seed, unit="replicates")
    per_replicate = tuple(_slope(n, r[None]) for r in rows)
    est = dataclasses.replace(est, units=per_replicate)
    return _with_method(est, f"slope of log mean error on log n over {len(n)} n in {list(window)}")


def slope_difference(frame_a: pd.DataFrame, frame_b: pd.DataFrame, metric: str, window,
                     n_boot: int = 2000, seed: int = 0) -> claims.Estimate:
    """slope(a) - slope(b) of ``metric`` with a paired bootstrap over replicates (the same
    replicate's data in both settings, e.g. two initialisation schedules)."""
    ta, tb = error_table(frame_a, metric, window), error_table(frame_b, metric, window)
    if not (ta.index.equals(tb.index) and ta.columns.equals(tb.columns)):
        raise ValueError("slope_difference: the two settings do not hold the same replicates x n")
    n, k = ta.columns.to_numpy(float), ta.shape[1]
    rows = np.concatenate([ta.to_numpy(float), tb.to_numpy(float)], 1)
    if not np.isfinite(rows).all() or (rows <= 0).any():
        return claims.Estimate(math.nan, None, len(rows), f"{metric}: a non-finite or zero error")
    est = claims.bootstrap(rows, lambda u: _slope(n, u[:, :k]) - _slope(n, u[:, k:]),
                           resamples=n_boot, seed=seed, unit="paired replicates")
    return _with_method(est, "difference of the two settings' slopes")


def excludes_zero(est: claims.Estimate) -> int:
    """1 when ``est``'s interval excludes 0, else 0; NaN without a finite interval."""
    if est.interval is None or not all(math.isfinite(x) for x in est.interval):
        return math.nan
    lo, hi = est.interval
    return int(lo > 0 or hi < 0)


def disagree(a: claims.Estimate, b: claims.Estimate) -> int:
    """1 when either estimate's value lies outside the other's interval (two settings, e.g. two
    initialisation schedules, give different rates), else 0; NaN without finite intervals.
    A paired difference (:func:`slope_difference`) is shown beside it, but it is not the test:
    when both schedules reach the same maximiser it is ~1e-4 with a tiny interval that can
    exclude 0 for a difference nobody would call a disagreement."""
    for est in (a, b):
        if est.interval is None or not all(math.isfinite(x) for x in (est.value, *est.interval)):
            return math.nan
    inside = lambda v, e: e.interval[0] <= v <= e.interval[1]  # noqa: E731
    return int(not (inside(a.value, b) and inside(b.value, a)))


def covers(est: claims.Estimate, value: float) -> int:
    """1 when ``est``'s interval contains ``value`` (e.g. a predicted exponent), else 0; NaN
    without a finite interval."""
    if est.interval is None or not all(math.isfinite(x) for x in est.interval):
        return math.nan
    return int(est.interval[0] <= value <= est.interval[1])


def fits_below_truth(frame: pd.DataFrame, tol: float = LL_TOL) -> int:
    """How many fits end below the truth's log-likelihood (ll_truth - ll_fit > tol nats)."""
    return int((frame["ll_gap"] > tol).sum())


def unconverged(frame: pd.DataFrame) -> int:
    """How many fits stopped at the iteration cap instead of converging."""
    return int((~frame["converged"].astype(bool)).sum())


def never_selected(frame: pd.DataFrame) -> int:
    """How many (fit, expert) pairs the fitted top-K gate selects at no data point."""
    return int(frame["never_selected"].sum()) if "never_selected" in frame else 0


def cap_share(frame: pd.DataFrame) -> claims.Estimate:
    """Share of fits that stopped at the iteration cap (not converged), Wilson interval over fits."""
    stopped = int((~frame["converged"].astype(bool)).sum())
    return claims.proportion(stopped, len(frame), unit="fits")


def slopes(frame: pd.DataFrame, metrics: list[str], by: list[str], window, n_boot: int,
           seed: int = 0) -> pd.DataFrame:
    """:func:`slope_estimate` for every metric and group of ``by``: columns by..., metric,
    slope, lower, upper, intercept, estimate (the Estimate itself)."""
    rows = []
    for group, part in frame.groupby(by, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        for metric in metrics:
            est = slope_estimate(part, metric, window, n_boot, seed)
            lo, hi = est.interval if est.interval else (math.nan, math.nan)
            table = error_table(part, metric, window)
            c = (_intercept(table.columns.to_numpy(float), table.to_numpy(float))
                 if math.isfinite(est.value) else math.nan)
            rows.append({**dict(zip(by, group)), "metric": metric, "slope": est.value, "lower": lo,
                         "upper": hi, "intercept": c, "estimate": est})
    return pd.DataFrame(rows)


def draw_fit(ax, row, window, color, label=True):
    """The fitted power law of a ``slopes`` row over its window, dashed."""
    n = np.geomspace(window[0], window[1], 20)
    ax.plot(n, np.exp(row.intercept) * n ** row.slope, ls="--", lw=1.2, color=color,
            label=f"slope {row.slope:.2f} [{row.lower:.2f}, {row.upper:.2f}]" if label else None)


def draw_reference(ax, n, anchor, slope, text, color="0.45"):
    """A reference power law through (n[0], anchor) with its slope written at the end."""
    n = np.asarray([min(n), max(n)], float)
    ax.plot(n, anchor * (n / n[0]) ** slope, ls=":", lw=1, color=color)
    ax.text(n[-1], anchor * (n[-1] / n[0]) ** slope, f" {text}", fontsize=8, color=color, va="center")
