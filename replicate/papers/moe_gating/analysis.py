"""Notebook-side helpers: the runs' per-fit probes as one table, slopes per setting, log-log panels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from replicate.papers.moe_gating.metrics import loglog_slope

SCALAR_SKIP = ("cells", "params")


def fits_frame(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per fit of every run: the run's ``keys`` columns plus every scalar probe, and
    ``ll_gap`` = log-likelihood of the truth minus that of the fit (nats; <= 0 at the MLE)."""
    rows = []
    for run in runs.itertuples():
        per_fit = run.probes["per_fit"]
        scalars = {k: v for k, v in per_fit.items() if k not in SCALAR_SKIP}
        frame = pd.DataFrame(scalars)
        for key in keys:
            frame[key] = getattr(run, key)
        frame["steps"] = run.steps
        rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    out["ll_gap"] = out["ll_truth"] - out["ll_fit"]
    return out


def slopes(frame: pd.DataFrame, metrics: list[str], by: list[str], window, n_boot: int,
           seed: int = 0) -> pd.DataFrame:
    """Log-log slope of the mean of each metric against n, with a 95% bootstrap interval over
    replicates, for every group of ``by``: columns by..., metric, slope, lower, upper, intercept."""
    rows = []
    for group, part in frame.groupby(by, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        for metric in metrics:
            table = part.pivot(index="replicate", columns="n", values=metric).sort_index(axis=1)
            if not np.isfinite(table.to_numpy()).all() or (table.to_numpy() <= 0).any():
                rows.append({**dict(zip(by, group)), "metric": metric, "slope": np.nan,
                             "lower": np.nan, "upper": np.nan, "intercept": np.nan})
                continue
            s, lo, hi, c = loglog_slope(table.columns.to_numpy(), table.to_numpy(), window, n_boot, seed)
            rows.append({**dict(zip(by, group)), "metric": metric, "slope": s, "lower": lo,
                         "upper": hi, "intercept": c})
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
