"""The shipped figures/ as a reader finds them: every figure's outputs, the answer first, a
code-free page, no trace of the machine that made them, the paper linked, the lock's versions."""

import json
import re
import subprocess

import pytest

from replicate import config as C
from replicate import scorecard as S
from replicate.claims import CLAIM_CONTRACT
from replicate.environment import read_lock

FIGURES = C.REPO_ROOT / "figures"
SHIPPED = [f for f in C.list_figures() if (FIGURES / f"{f}.json").is_file()]
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|Users|private|var/folders)/")
OUTSIDE_NOTES = "shared/" + "PAPERS"  # the lead's research notes live outside the repository


def test_every_configured_figure_is_shipped_with_all_its_outputs():
    assert SHIPPED == C.list_figures()
    for figure in SHIPPED:
        for suffix in (".png", ".pdf", ".ipynb", ".json", ".html"):
            assert (FIGURES / f"{figure}{suffix}").is_file(), f"{figure}{suffix}"


@pytest.mark.parametrize("figure", SHIPPED)
def test_the_executed_notebook_opens_with_its_answer_and_leaks_nothing(figure):
    text = (FIGURES / f"{figure}.ipynb").read_text()
    nb = json.loads(text)
    first = [c for c in nb["cells"][:2] if "answer" in c["metadata"].get("tags", [])]
    assert first, f"{figure}: the generated answer is not among the first two cells"
    answer = "".join(first[0]["source"])
    assert "arxiv.org/abs/" in answer and "Rerun this figure: `snakemake" in answer
    assert all(c["metadata"].get("jupyter", {}).get("source_hidden") for c in nb["cells"] if c["cell_type"] == "code")
    for bad in (MACHINE_PATH.search(text), "findfont" in text, OUTSIDE_NOTES in text):
        assert not bad, f"{figure}: {bad}"


@pytest.mark.parametrize("figure", SHIPPED)
def test_the_page_has_no_code_and_the_json_names_the_paper(figure):
    page = (FIGURES / f"{figure}.html").read_text()
    assert 'highlight hl-ipython3' not in page and "The answer" in page  # no code cell's input
    record = json.loads((FIGURES / f"{figure}.json").read_text())
    assert record["source"]["links"] and record["source"]["where"]


def test_shipped_figures_were_made_from_commits_with_the_locked_versions():
    """Figures of the current claim contract (older ones are stale and flagged, not judged)."""
    lock = read_lock()
    records = {f: json.loads((FIGURES / f"{f}.json").read_text()) for f in SHIPPED}
    current = {f: r for f, r in records.items() if r.get("claim_contract") == CLAIM_CONTRACT}
    flagged = {f: S.provenance_warnings(r, lock) for f, r in current.items()}
    assert {f: w for f, w in flagged.items() if w} == {}


def test_no_tracked_file_cites_notes_outside_the_repository():
    found = subprocess.run(["git", "grep", "-l", OUTSIDE_NOTES], cwd=C.REPO_ROOT, capture_output=True, text=True)
    assert found.stdout == ""
