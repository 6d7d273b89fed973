"""The scorecard's totals as reStructuredText, for the front page of ``snakemake --report``.

``python -m replicate.workflow_report <out>`` writes ``<out>/figures/SCORECARD.rst``: the verdict
totals of the papers' claims and one row per paper, counted by :func:`replicate.scorecard.counts`
from the figures' claims json (the same numbers as SCORECARD.md). ``report/workflow.rst``
includes it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from replicate import scorecard
from replicate.claims import VERDICTS

COLUMNS = ("figures", "paper claims", *(v.replace("_", " ") for v in VERDICTS), "stale")


def summary_rst(figures_dir: Path) -> str:
    """The totals line and a per-paper table of verdict counts (paper claims only)."""
    entries = scorecard.collect(figures_dir, compose=False)
    grouped = scorecard.papers(entries)
    rows = [_row(paper, group) for paper, group in grouped.items()] + [_row("all", entries)]
    total = scorecard.counts(entries)
    line = scorecard.summary_line(total).replace("**", "")
    table = ["   * - paper", *(f"     - {c}" for c in COLUMNS)]
    for row in rows:
        table += [f"   * - {row[0]}", *(f"     - {cell}" for cell in row[1:])]
    return "\n".join([f"{line}.", "", ".. list-table:: Verdicts per paper", "   :header-rows: 1", "",
                      *table, ""])


def _row(paper: str, group: list) -> list:
    count = scorecard.counts(group)
    return [paper, len(group), len(scorecard.kind_claims(group)), *(count[v] for v in VERDICTS), count["stale"]]


def write(out: str | Path) -> Path:
    figures_dir = Path(out) / "figures"
    target = figures_dir / "SCORECARD.rst"
    target.write_text(summary_rst(figures_dir))
    return target


if __name__ == "__main__":
    print(f"report summary written: {write(sys.argv[1])}")
