"""The numbers behind the MoE gating claims (Nguyen et al. ICLR 2024 top-K; ICML 2024 temperature).

Notebook-side: ``measures`` (one function per figure) calls these functions; the training code
never imports this module. The unit of every interval is the **replicate**: fit (replicate r,
sample size n) has its own independent sample (problem.py), so a replicate's row of fits over
the n grid is one unit.

Rates. A rate is a statistic over the set of sample sizes, so it is computed per replicate and
then averaged: replicate r's least-squares slope of log error on log n inside the figure's
pre-registered window (:func:`replicate_slopes`), and the rate is their mean with a Student-t
interval over replicates (:func:`slope_estimate`). The mean of the per-replicate slopes is the
slope of the mean log error (the regression is linear in its response), so the point estimate
lies inside its interval. The papers' rates (ICLR 2024 Theorem 1 and Sec. 4; the ICML 2024
temperature paper's main results) bound the error's order, which E[log error] and log E[error]
share when the error's spread scales with its level.

Preconditions. A rate says something about the MLE only if the optimiser reached it. The truth
is a point of the fitted model, so the MLE is at least as likely: :func:`fits_below_truth` counts
fits that end below the truth's log-likelihood. That cannot see a fit stuck above the truth but
below the MLE, so each run also refits the same data from the truth and from data-driven starts
(module.BatchedEM ``references``, the same estimator with its repair): :func:`off_mle` counts the
fits that end more than ``mle_tol`` nats below the best of their own fit and those references.
A rate also needs the asymptotic regime: :func:`window_drift` compares the slope over the last
sliding window of sample sizes with the slope over the whole window (paired over replicates).
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
    below tol; every fit of a run that stopped before the estimator finished counts as not
    converged) and ``mle_gap``: nats below the best of the fit's own log-likelihood and those of its
    references (``ll_ref_*``: refits of the same data from the truth, from the data)."""
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
        if run.probes.get("finished") is False:  # stopped before the estimator's loop, hops and repair ended
            frame["converged"] = False
        rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    out["ll_gap"] = out["ll_truth"] - out["ll_fit"]
    refs = [c for c in out.columns if c.startswith("ll_ref_")]
    best = out[["ll_fit", *refs]].max(axis=1, skipna=True)
    out["mle_gap"] = best - out["ll_fit"]  # nats below the best maximum found on the same data (>= 0)
    return out


def error_table(frame: pd.DataFrame, metric: str, window) -> pd.DataFrame:
    """Replicate x n table of ``metric`` for the n inside ``window`` (inclusive)."""
    inside = frame[(frame.n >= window[0]) & (frame.n <= window[1])]
    return inside.pivot(index="replicate", columns="n", values=metric).sort_index(axis=1)


def _with_method(est: claims.Estimate, what: str) -> claims.Estimate:
    return dataclasses.replace(est, method=f"{est.method}; {what}")


def replicate_slopes(frame: pd.DataFrame, metric: str, window) -> np.ndarray:
    """Each replicate's least-squares slope of log(``metric``) on log n over ``window`` (one
    number per replicate: its own sample at every n); NaN for a replicate with a non-finite or
    zero error."""
    table = error_table(frame, metric, window)
    if table.shape[1] < 2:
        raise ValueError(f"window {window} holds {table.shape[1]} sample sizes; a slope needs >= 2")
    rows = table.to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(rows) & (rows > 0), np.log(rows), np.nan)
    x = np.log(table.columns.to_numpy(float))
    x = x - x.mean()
    return logs @ x / (x @ x)


def slope_estimate(frame: pd.DataFrame, metric: str, window) -> claims.Estimate:
    """Rate of ``metric``: the mean over replicates of each replicate's slope of log error on
    log n inside ``window`` (equivalently, the slope of the mean log error), with a Student-t
    interval over the replicates (units = the per-replicate slopes). A NaN or zero error in some
    replicate makes its slope, and the rate, NaN (no interval)."""
    slopes_ = replicate_slopes(frame, metric, window)
    n_grid = error_table(frame, metric, window).shape[1]
    return _with_method(claims.mean_interval(slopes_, unit="replicates"),
                        f"per-replicate slope of log error on log n over {n_grid} n in {list(window)}")


def slope_difference(frame_a: pd.DataFrame, frame_b: pd.DataFrame, metric: str, window) -> claims.Estimate:
    """slope(a) - slope(b) of ``metric`` with a paired t interval over replicates (replicate r's
    data are the same in both settings, e.g. two initialisation schedules)."""
    ta, tb = error_table(frame_a, metric, window), error_table(frame_b, metric, window)
    if not (ta.index.equals(tb.index) and ta.columns.equals(tb.columns)):
        raise ValueError("slope_difference: the two settings do not hold the same replicates x n")
    a, b = replicate_slopes(frame_a, metric, window), replicate_slopes(frame_b, metric, window)
    return _with_method(claims.paired_difference(a, b, unit="replicates"),
                        "difference of the two settings' per-replicate slopes")


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


def off_mle(frame: pd.DataFrame, tol: float) -> int:
    """How many fits end more than ``tol`` nats below the best maximum found on their data (their
    own fit, and the refits from the truth and from the data: ``mle_gap`` of :func:`fits_frame`).
    A frame without references (no ``ll_ref_*`` probe) counts every fit: the check was not run."""
    if not any(c.startswith("ll_ref_") for c in frame.columns):
        return int(len(frame))
    return int((frame["mle_gap"] > tol).sum())


def sliding_windows(n_values, size: int) -> list[list[float]]:
    """Every run of ``size`` consecutive sample sizes of the sorted ``n_values``, as [lo, hi]
    windows (inclusive); the last one holds the largest n."""
    n = sorted(set(float(v) for v in n_values))
    if not 2 <= size <= len(n):
        raise ValueError(f"a sliding window of {size} sample sizes needs 2 <= size <= {len(n)}")
    return [[n[i], n[i + size - 1]] for i in range(len(n) - size + 1)]


def window_drift(frame: pd.DataFrame, metric: str, window, size: int) -> claims.Estimate:
    """Slope over the last sliding window of ``size`` consecutive n inside ``window`` minus the slope
    over the whole window, paired over replicates (t interval). Near 0 when the rate has settled
    (the asymptotic regime is reached); a rate still steepening or flattening at the largest n
    shows as a drift away from 0."""
    inside = frame[(frame.n >= window[0]) & (frame.n <= window[1])]
    last = sliding_windows(inside.n.unique(), size)[-1]
    a, b = replicate_slopes(frame, metric, last), replicate_slopes(frame, metric, window)
    return _with_method(claims.paired_difference(a, b, unit="replicates"),
                        f"slope over the last {size} n {last} minus the slope over {list(window)}")


def drift_bound(est: claims.Estimate) -> float:
    """The largest |drift| the 95% interval of :func:`window_drift` allows (NaN without one): a
    precondition ``<= b`` asks that the data locate the last window's slope within b of the whole's."""
    if est.interval is None or not all(math.isfinite(x) for x in est.interval):
        return math.nan
    return float(max(abs(est.interval[0]), abs(est.interval[1])))


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


def smallest_atom_weight(runs: pd.DataFrame, setting) -> pd.DataFrame:
    """One row per fit: ``setting(probes)`` of its run, n and the smallest gate weight exp(beta0)
    among the fit's atoms (an atom the top-K gate never selects ends with a small one)."""
    frames = [pd.DataFrame({"setting": setting(run.probes), "n": run.probes["per_fit"]["n"],
                            "smallest exp(w0)": np.exp(np.asarray(run.probes["per_fit"]["params"]["w0"])).min(1)})
              for run in runs.itertuples()]
    return pd.concat(frames, ignore_index=True)


def rate_table(frame: pd.DataFrame, metrics: list[str], by: str, window) -> dict[tuple[str, str], claims.Estimate]:
    """:func:`slope_estimate` of every metric in every group of the ``by`` column:
    ``{(group, metric): Estimate}``."""
    return {(group, metric): slope_estimate(part, metric, window)
            for group, part in frame.groupby(by, sort=False) for metric in metrics}


def draw_fit(ax, frame: pd.DataFrame, metric: str, est: claims.Estimate, window, color, label=True):
    """The fitted power law n^slope of ``est`` through the mean log error of ``frame``'s
    ``metric`` inside ``window`` (the least-squares line of the mean log error), dashed."""
    inside = frame[(frame.n >= window[0]) & (frame.n <= window[1])]
    level = float(np.log(inside[metric]).mean() - est.value * np.log(inside.n).mean())
    n = np.geomspace(inside.n.min(), inside.n.max(), 20)
    text = f"slope {est:.2f}" if label else None
    ax.plot(n, np.exp(level) * n ** est.value, ls="--", lw=1.2, color=color, label=text)


def draw_reference(ax, n, anchor, slope, text, color="0.45"):
    """A reference power law through (n[0], anchor) with its slope written at the end."""
    n = np.asarray([min(n), max(n)], float)
    ax.plot(n, anchor * (n / n[0]) ** slope, ls=":", lw=1, color=color)
    ax.text(n[-1], anchor * (n[-1] / n[0]) ** slope, f" {text}", fontsize=8, color=color, va="center")


def n_axis(ax, n_values):
    """A log-scale sample-size axis ticked at the design's n only, labelled plainly (250, 1k, 10k)
    with no minor labels, so tick labels never overlap."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ns = sorted(set(float(v) for v in n_values))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.set_xticklabels([n_label(v) for v in ns])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def n_label(n: float) -> str:
    """250 -> '250', 2000 -> '2k', 5623 -> '5.6k', 1e5 -> '100k'."""
    n = float(n)
    if n < 1000:
        return f"{n:g}"
    return f"{n / 1000:.2g}k" if n < 10000 else f"{n / 1000:.0f}k"
