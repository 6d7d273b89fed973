"""Every figure's numbers come from one tested package call: the notebook calls
``measures.<figure>(runs, cfg)``, reports what it returns, and computes no claim's number itself."""

import json
import re

import pytest

from replicate import config as C

FIGURES = C.list_figures()


def code_of(figure: str) -> str:
    nb = json.loads((C.REPO_ROOT / "notebooks" / f"{figure}.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("figure", FIGURES)
def test_the_notebook_reports_what_its_measures_function_returns(figure):
    paper, name = figure.split("/")
    code = code_of(figure)
    calls = re.findall(rf"(\w+)\s*=\s*measures\.{name}\(", code)
    assert len(calls) == 1, f"{figure}: expected one `<var> = measures.{name}(runs, ctx.cfg)` call"
    assert re.search(rf"ctx\.report\(\s*{calls[0]}\s*\)", code), f"{figure}: ctx.report({calls[0]}) missing"
    assert not re.search(rf"{calls[0]}\s*\[[^\]]+\]\s*=|{calls[0]}\.update\(", code), (
        f"{figure}: the notebook edits the measurements")
    assert not re.search(r"claims\.(mean_interval|paired_difference|ratio_interval|ratio_of_means|"
                         r"log_mean_interval|proportion|bootstrap|exact|Estimate)\(", code), (
        f"{figure}: the notebook builds an interval itself")


@pytest.mark.parametrize("figure", FIGURES)
def test_every_measures_function_has_a_unit_test(figure):
    paper, name = figure.split("/")
    tests = (C.REPO_ROOT / "tests" / f"test_{paper}.py").read_text()
    assert re.search(rf"measures\.{name}\(", tests), f"tests/test_{paper}.py never calls measures.{name}"
