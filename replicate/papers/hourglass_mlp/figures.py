"""What the hourglass_mlp notebooks share: the family labels and colours, the per-shape table
of a figure's runs, and the Pareto panel (frontiers picked on validation, drawn at test PSNR)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from replicate.papers.hourglass_mlp.analysis import BASELINES, per_shape, val_frontier
from replicate.papers.hourglass_mlp.pareto import shape_table
from replicate.plotting import PALETTE

__all__ = ["BASELINES", "COLORS", "LABELS", "curve_panel", "param_axis", "pareto_panel", "photo_panel", "run_table",
           "selected_shapes"]

LABELS = {"hourglass": "Hourglass (fixed $W_{in}$)", "hourglass_trained": "Hourglass (trained $W_{in}$)",
          "conventional": "conventional", "conventional_head": "conventional + head"}
_palette = sns.color_palette(PALETTE)
COLORS = {"hourglass": _palette[3], "hourglass_trained": _palette[4], "conventional": _palette[0],
          "conventional_head": _palette[2]}


def param_axis(ax) -> None:
    """A log x-axis of parameter counts labelled 100k, 200k, 500k, 1M (ticks at 1, 2, 5 per decade)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, shape): every seed and learning rate (the units the intervals resample)."""
    return shape_table(runs)


def selected_shapes(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per shape at its validation-selected learning rate (mean over all seeds)."""
    return per_shape(run_table(runs))


def pareto_panel(ax, table: pd.DataFrame, keys, total: bool = True, lines: dict | None = None) -> None:
    """Every shape faint (test PSNR at its selected lr); each family's frontier bold: the shapes
    picked on validation PSNR, drawn at their test PSNR (a step: the pick within each budget).
    ``total``: the fixed-lift Hourglass frontier is drawn again, thin and dashed with hollow
    markers, at its *total* parameters (trainable + the fixed lift's d_x d_z). ``lines``:
    ``{label: PSNR}`` of baselines drawn as horizontal lines (the degraded input, a classical
    filter). The legend sits outside the axes, below them, so it hides no line."""
    for key in keys:
        rows = table[table.key == key]
        if rows.empty:
            continue
        ax.scatter(rows["trainable"], rows["test_psnr"], s=18, alpha=0.3, color=COLORS[key], edgecolor="none")
        best = val_frontier(rows)
        ax.step(best["trainable"], best["test_psnr"], where="post", color=COLORS[key], lw=2.2,
                label=f"{LABELS[key]} ({len(rows)} shapes, {len(best)} on the frontier)")
        ax.scatter(best["trainable"], best["test_psnr"], s=34, color=COLORS[key], edgecolor="k", lw=0.6, zorder=3)
        if total and key == "hourglass" and (best["fixed"] > 0).any():
            at = best["trainable"] + best["fixed"]
            ax.step(at, best["test_psnr"], where="post", color=COLORS[key], lw=1, ls="--",
                    label=f"{LABELS[key]} at total parameters (incl. fixed lift)")
            ax.scatter(at, best["test_psnr"], s=30, facecolor="none", edgecolor=COLORS[key], lw=1, zorder=3)
    for (label, value), style in zip((lines or {}).items(), (":", "-.", "--")):
        ax.axhline(value, color="0.35", ls=style, lw=1.3, label=f"{label} ({value:.2f} dB)")
    param_axis(ax)
    ax.set(xlabel="trainable parameters" + (" (dashed, hollow: Hourglass at trainable + fixed lift $d_x d_z$)" if total else ""),
           ylabel="test PSNR (dB)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def curve_panel(ax, curve, label: str = "frontier gap (dB)") -> None:
    """A per-seed statistic at every validation check (records ``{step, seed, value}``), one line
    per seed and their mean, with T/2 and T marked (the convergence precondition compares them)."""
    frame = pd.DataFrame(curve)
    if frame.empty:
        return
    for seed, rows in frame.groupby("seed"):
        ax.plot(rows["step"], rows["value"], "o-", ms=3, lw=1, alpha=0.6, label=f"seed {seed}")
    mean = frame.groupby("step")["value"].mean()
    ax.plot(mean.index, mean.to_numpy(), color="k", lw=2, label="mean over seeds")
    steps = sorted(frame["step"].unique())
    half = steps[int(np.argmin(np.abs(np.asarray(steps, float) - steps[-1] / 2)))]
    for step, name in ((half, "T/2"), (steps[-1], "T")):
        ax.axvline(step, color="0.6", ls=":", lw=1)
        ax.annotate(name, (step, 0.02), xycoords=("data", "axes fraction"), ha="right", va="bottom", fontsize=8,
                    xytext=(-2, 0), textcoords="offset points", color="0.4")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set(xlabel="training step", ylabel=label)
    ax.legend(fontsize=8, loc="best")


def photo_panel(ax, units, names, label: str) -> None:
    """One point per held-out photo (its value, mean over seeds) and their mean."""
    y = np.arange(len(names))
    ax.scatter(units, y, color="k", zorder=3)
    ax.axvline(float(np.mean(units)), color="C3", lw=1.5, label=f"mean over photos {np.mean(units):+.2f}")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, [n.rsplit(".", 1)[0] for n in names])
    ax.set(xlabel=label)
    ax.legend(fontsize=8, loc="best")


def data_label(data: dict) -> str:
    """A short name of the images, for titles: "16×16 patches of photos" or the dataset."""
    side = (data.get("image_shape") or [0, 0, 0])[-1]
    if data.get("source") == "skimage":
        return f"{side}×{side} patches of scikit-image's photos"
    return {"digits": "8×8 digits", "mnist": "MNIST 28×28", "imagenet32": "ImageNet 32×32"}.get(data.get("source"), "images")


def data_markdown(data: dict) -> str:
    """Where the images come from (the provenance the json records), as one paragraph."""
    if data.get("source") == "skimage":
        ph = data["photos"]
        return (f"**Data.** Grey {data['patch']}×{data['patch']} patches of the photos shipped inside the "
                f"`{data['package']}` {data['version']} wheel (`skimage/data`, read from the installed package, no "
                f"download; colour converted with {data['grey']}). Training patches are cut on the fly from "
                f"{len(ph['train'])} photos ({', '.join(ph['train'])}); validation: {data['n_val_selection']} fixed "
                f"patches of {', '.join(ph['val'])}; test: {data['n_test']} fixed patches of {', '.join(ph['test'])} "
                "(equal numbers per photo; whole photos held out; sha256 of every file in the json's `data`).")
    return (f"**Data.** {data_label(data)} (source `{data.get('source')}`): {data.get('n_val_selection')} validation "
            f"and {data.get('n_test')} test images from the held-out split.")
