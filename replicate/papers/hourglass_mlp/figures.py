"""What the hourglass_mlp notebooks share: the family labels and colours, the per-shape table
of a figure's runs, the frontier measurements and the Pareto panel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from replicate.papers.hourglass_mlp.pareto import (compare_frontiers, frontier, select_learning_rate,
                                                   shape_table)
from replicate.plotting import PALETTE

LABELS = {"hourglass": "Hourglass (fixed $W_{in}$)", "hourglass_trained": "Hourglass (trained $W_{in}$)",
          "conventional": "conventional", "conventional_head": "conventional + head"}
_palette = sns.color_palette(PALETTE)
COLORS = {"hourglass": _palette[3], "hourglass_trained": _palette[4], "conventional": _palette[0],
          "conventional_head": _palette[2]}
BASELINES = {"plain": "conventional", "head": "conventional_head"}


def family_key(row) -> str:
    return "hourglass_trained" if row["family"] == "hourglass" and row["train_lift"] else row["family"]


def selected_shapes(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per shape at its validation-selected learning rate, with a ``key`` column naming
    the family (trained-lift Hourglass shapes as their own family)."""
    table = select_learning_rate(shape_table(runs))
    return table.assign(key=table.apply(family_key, axis=1))


def pareto_measurements(table: pd.DataFrame) -> dict:
    """Hourglass (fixed lift) frontier vs each conventional baseline's, plus context numbers."""
    hourglass = table[table.key == "hourglass"]
    out = {}
    for name, family in BASELINES.items():
        c = compare_frontiers(hourglass, table[table.key == family])
        out.update({f"win_fraction_vs_{name}": c["win_fraction"], f"mean_gap_db_vs_{name}": c["mean_gap"],
                    f"min_gap_db_vs_{name}": c["min_gap"], f"matched_budgets_vs_{name}": c["n_budgets"]})
    for key, rows in table.groupby("key"):
        out[f"best_psnr_{key}"] = float(rows["test_psnr"].max())
        best = frontier(rows)
        out[f"train_minus_test_db_{key}"] = float((best["train_psnr"] - best["test_psnr"]).mean())
    out["median_seed_sd_db"] = float(np.nanmedian(table["test_sd"])) if table["test_sd"].notna().any() else float("nan")
    out["diverged_shape_runs"] = int(table["diverged"].sum())
    return out


def pareto_panel(ax, table: pd.DataFrame, keys) -> None:
    """Every shape faint, each family's Pareto frontier bold (a step: best PSNR within budget)."""
    for key in keys:
        rows = table[table.key == key]
        if rows.empty:
            continue
        ax.scatter(rows["trainable"], rows["test_psnr"], s=18, alpha=0.3, color=COLORS[key], edgecolor="none")
        best = frontier(rows)
        ax.step(best["trainable"], best["test_psnr"], where="post", color=COLORS[key], lw=2.2,
                label=f"{LABELS[key]} ({len(rows)} shapes)")
        ax.scatter(best["trainable"], best["test_psnr"], s=34, color=COLORS[key], edgecolor="k", lw=0.6, zorder=3)
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters", ylabel="test PSNR (dB)")
    ax.legend(fontsize=8, loc="lower right")
