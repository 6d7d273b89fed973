"""What the hourglass_mlp notebooks share: the family labels and colours, the per-shape table
of a figure's runs, and the Pareto panel (frontiers picked on validation, drawn at test PSNR)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from replicate.papers.hourglass_mlp.analysis import BASELINES, per_shape, val_frontier
from replicate.papers.hourglass_mlp.pareto import shape_table
from replicate.plotting import PALETTE

__all__ = ["BASELINES", "COLORS", "LABELS", "pareto_panel", "run_table", "selected_shapes"]

LABELS = {"hourglass": "Hourglass (fixed $W_{in}$)", "hourglass_trained": "Hourglass (trained $W_{in}$)",
          "conventional": "conventional", "conventional_head": "conventional + head"}
_palette = sns.color_palette(PALETTE)
COLORS = {"hourglass": _palette[3], "hourglass_trained": _palette[4], "conventional": _palette[0],
          "conventional_head": _palette[2]}


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, shape): every seed and learning rate (the units the intervals resample)."""
    return shape_table(runs)


def selected_shapes(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per shape at its validation-selected learning rate (mean over all seeds)."""
    return per_shape(run_table(runs))


def pareto_panel(ax, table: pd.DataFrame, keys) -> None:
    """Every shape faint (test PSNR at its selected lr); each family's frontier bold: the shapes
    picked on validation PSNR, drawn at their test PSNR (a step: the pick within each budget)."""
    for key in keys:
        rows = table[table.key == key]
        if rows.empty:
            continue
        ax.scatter(rows["trainable"], rows["test_psnr"], s=18, alpha=0.3, color=COLORS[key], edgecolor="none")
        best = val_frontier(rows)
        ax.step(best["trainable"], best["test_psnr"], where="post", color=COLORS[key], lw=2.2,
                label=f"{LABELS[key]} ({len(rows)} shapes, {len(best)} on the frontier)")
        ax.scatter(best["trainable"], best["test_psnr"], s=34, color=COLORS[key], edgecolor="k", lw=0.6, zorder=3)
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (Hourglass: + a fixed lift of $d_x d_z$, not counted)",
           ylabel="test PSNR (dB)")
    ax.legend(fontsize=8, loc="lower right")
