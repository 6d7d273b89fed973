"""One look for every figure: a seaborn theme, a palette per method, save(fig, path), and
layout_problems(fig): what matplotlib can tell of a figure a reader cannot read (tick labels or
text labels drawn over each other, a legend drawn over data)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.transforms import Bbox

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


OVERLAP_PX = 1.0  # labels may touch; an overlap deeper than this (in pixels, both ways) is reported


def layout_problems(fig: plt.Figure) -> list[str]:
    """One line per unreadable spot of the drawn figure: tick labels of one axis overlapping each
    other, annotation/text labels of one panel overlapping each other, or a legend box that
    covers a plotted point (of a line or a scatter) of its panel."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    problems = []
    for k, ax in enumerate(fig.axes):
        name = f"panel {k + 1}" + (f" '{ax.get_title()}'" if ax.get_title() else "")
        for what, texts in (("x tick labels", ax.get_xticklabels()), ("y tick labels", ax.get_yticklabels()),
                            ("text labels", ax.texts)):
            pairs = _overlapping(texts, renderer)
            if pairs:
                problems.append(f"{name}: {len(pairs)} pair(s) of {what} overlap, e.g. '{pairs[0][0]}' and '{pairs[0][1]}'")
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            covered = _points_under(legend.get_window_extent(renderer), ax)
            if covered:
                problems.append(f"{name}: the legend covers {covered} plotted point(s)")
    return problems


def _overlapping(texts, renderer) -> list[tuple[str, str]]:
    shown = [t for t in texts if t.get_visible() and t.get_text().strip()]
    return [(a.get_text(), b.get_text()) for a, b in itertools.combinations(shown, 2) if _overlap(a, b, renderer)]


def _overlap(a, b, renderer) -> bool:
    """Whether two texts' glyph boxes overlap. Texts turned by the same slanted angle (rotated
    tick labels) are parallel strips: they overlap when their centres are closer than a line
    height across the strips (their axis-aligned extents overlap even when the glyphs do not)."""
    box_a, box_b = a.get_window_extent(renderer), b.get_window_extent(renderer)
    angle = a.get_rotation() % 180
    if angle % 90 and b.get_rotation() % 180 == angle:
        theta = np.deg2rad(angle)
        across = np.array([-np.sin(theta), np.cos(theta)])
        gap = abs(np.dot(np.subtract(box_a.get_points().mean(0), box_b.get_points().mean(0)), across))
        height = max(a.get_fontsize(), b.get_fontsize()) * a.figure.dpi / 72
        return gap < height - OVERLAP_PX
    width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
    height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
    return width > OVERLAP_PX and height > OVERLAP_PX


def _points_under(box: Bbox, ax) -> int:
    """How many data points of the panel's lines and scatters lie inside ``box`` (display units)."""
    points = [line.get_xydata() for line in ax.get_lines() if line.get_visible() and len(line.get_xydata())]
    points += [c.get_offsets() for c in ax.collections if c.get_visible() and len(c.get_offsets())
               and c.get_offset_transform() == ax.transData]
    if not points:
        return 0
    xy = ax.transData.transform(np.concatenate([np.asarray(p, dtype=float) for p in points]))
    xy = xy[np.isfinite(xy).all(axis=1)]
    inside = (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
    return int(inside.sum())
