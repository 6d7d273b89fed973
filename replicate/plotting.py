"""One look for every figure: a seaborn theme, a palette per method, and save(fig, path)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = "colorblind"


def set_theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=1.0,
                  rc={"figure.dpi": 110, "savefig.dpi": 160, "axes.titleweight": "bold",
                      "axes.spines.top": False, "axes.spines.right": False,
                      "legend.frameon": False, "figure.constrained_layout.use": True})


def method_colors(names: list[str]) -> dict[str, tuple]:
    """A stable colour per method name (same order -> same colour in every panel)."""
    return dict(zip(names, sns.color_palette(PALETTE, len(names))))


def save(fig: plt.Figure, path: str | Path) -> list[Path]:
    """Write ``path`` as .png and .pdf (the suffix of ``path`` is ignored); return both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        target = path.with_suffix(suffix)
        fig.savefig(target, bbox_inches="tight")
        written.append(target)
    return written
