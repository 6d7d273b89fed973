"""The front page of `snakemake --report`: the scorecard's totals and one row per paper, counted
from the shipped figures' claims json (paper claims only, as the scorecard counts them)."""

import json
from collections import Counter

from docutils.core import publish_parts

from replicate import config as C
from replicate import workflow_report
from replicate.claims import VERDICTS

FIGURES = C.REPO_ROOT / "figures"


def table_rows(rst: str) -> dict[str, list[str]]:
    """The list-table's rows by their first cell."""
    rows, row = {}, None
    for line in rst.splitlines():
        if line.startswith("   * - "):
            row = [line[len("   * - "):]]
            rows[row[0]] = row
        elif line.startswith("     - ") and row is not None:
            row.append(line[len("     - "):])
    return rows


def test_each_papers_row_counts_its_claims_verdicts():
    rst = workflow_report.summary_rst(FIGURES)
    rows = table_rows(rst)
    assert rows["paper"] == ["paper", *workflow_report.COLUMNS]
    everything = Counter()
    for paper_dir in sorted(p for p in FIGURES.iterdir() if p.is_dir()):
        records = [json.loads(p.read_text()) for p in sorted(paper_dir.glob("*.json"))]
        claims = [c for r in records for c in r["claims"] if c["kind"] == "paper"]
        verdicts = Counter(c["verdict"] for c in claims)
        everything.update(verdicts)
        assert rows[paper_dir.name][1:3 + len(VERDICTS)] == [str(len(records)), str(len(claims)),
                                                            *(str(verdicts[v]) for v in VERDICTS)]
    assert rows["all"][3:3 + len(VERDICTS)] == [str(everything[v]) for v in VERDICTS]
    assert rst.startswith(f"{sum(everything.values())} claims: {everything['replicated']} replicated")


def test_the_summary_is_valid_restructuredtext():
    html = publish_parts(workflow_report.summary_rst(FIGURES), writer="html",
                         settings_overrides={"halt_level": 2})["body"]
    assert "<table" in html and "Verdicts per paper" in html
