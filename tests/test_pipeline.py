"""End to end: the Snakemake pipeline at smoke scale in a scratch copy of the repo.

One smoke run of every configured figure (train jobs + papermill notebooks + scorecard), then
what a user relies on: outputs per figure, computed verdicts, a no-op rerun, one config edit
rerunning one figure, a failing notebook leaving no stale figure.
"""

import html
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from replicate import config as C
from replicate.claims import VERDICTS

from fixtures import make_smoke_reference as smoke_reference

pytestmark = pytest.mark.slow
REFERENCE = Path(__file__).parent / "fixtures" / "smoke_reference.json"
REFERENCE_DIFFERS = smoke_reference.differs_from_here(REFERENCE)
COPIED = ("Snakefile", "configs", "notebooks", "replicate", "report", "benchmarks", "schemas", "envs")  # notebooks read benchmark records


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A scratch copy of the pipeline's sources; its own `replicate` is first on PYTHONPATH."""
    root = tmp_path_factory.mktemp("repo")
    for name in COPIED:
        src = C.REPO_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(
            src, root / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    return root


def snakemake(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--config", "scale=smoke", "hardware=cpu"],
                          cwd=repo, env=env, capture_output=True, text=True)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Counts per rule from a dry run's job table."""
    table = re.search(r"Job stats:\n(.*?)\n\n", result.stdout + result.stderr, re.S)
    if table is None:
        return {}
    rows = [line.split() for line in table.group(1).splitlines()[2:]]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[0] != "total"}


@pytest.fixture(scope="module")
def built(repo):
    result = snakemake(repo, "all", "--cores", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    return repo


def test_every_figure_has_png_pdf_notebook_and_claims(built):
    for figure in C.list_figures():
        for suffix in (".png", ".pdf", ".ipynb", ".json", ".html"):
            assert (built / "figures" / f"{figure}{suffix}").stat().st_size > 0, figure + suffix
        text = (built / "figures" / f"{figure}.json").read_text()
        record = json.loads(text, parse_constant=lambda c: pytest.fail(f"{figure}.json is not strict JSON: {c}"))
        assert record["scale"] == "smoke" and record["hardware"] == "cpu"
        assert record["wall_seconds"] > 0 and len(record["config_sha256"]) == 64
        assert record["environment"]["torch"] and record["environment"]["cpu_count"] >= 1
        assert record["environment"]["packages"]["torch"] and record["source"]["links"]
        assert record["claims"] and all(c["verdict"] in VERDICTS for c in record["claims"])
        assert all(c["kind"] in ("paper", "control", "sanity") and c["reason"] for c in record["claims"])


def test_each_executed_notebook_opens_with_its_answer_and_hides_its_code(built):
    for figure in C.list_figures():
        nb = json.loads((built / "figures" / f"{figure}.ipynb").read_text())
        answer = next(i for i, c in enumerate(nb["cells"]) if "answer" in c["metadata"].get("tags", []))
        assert answer <= 1 and "## The answer" in "".join(nb["cells"][answer]["source"])
        record = json.loads((built / "figures" / f"{figure}.json").read_text())
        for claim in record["claims"]:
            if claim["kind"] != "sanity":
                assert f"`{claim['id']}`" in "".join(nb["cells"][answer]["source"])
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(c["metadata"]["jupyter"]["source_hidden"] for c in code)
        params = "".join(next(c["source"] for c in code if "injected-parameters" in c["metadata"]["tags"]))
        assert f'figure_dir = "{built / "figures"}' not in params and "/." not in params, params


def test_every_figure_is_readable_as_drawn(built):
    """No tick labels or text labels drawn over each other and no legend over data, in any panel
    of any figure (plotting.layout_problems, recorded by the notebook in the json's ``layout``)."""
    problems = {figure: json.loads((built / "figures" / f"{figure}.json").read_text())["layout"]
                for figure in C.list_figures()}
    assert {figure: found for figure, found in problems.items() if found} == {}


def test_every_run_metrics_json_is_strict(built):
    for path in (built / "runs").glob("*/*/metrics.json"):
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} is not strict JSON: {c}"))


def test_scorecard_counts_match_the_jsons(built):
    claims = [c for p in (built / "figures").glob("*/*.json") for c in json.loads(p.read_text())["claims"]
              if c["kind"] == "paper"]
    text = (built / "figures" / "SCORECARD.md").read_text()
    assert f"**{len(claims)} claims**" in text
    for verdict in VERDICTS:
        n = sum(c["verdict"] == verdict for c in claims)
        assert f"{n} {verdict.replace('_', ' ')}" in text


def test_the_snakemake_report_holds_every_figure(built):
    result = snakemake(built, "--report", "report.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(built / "report.zip") as report:
        names = report.namelist()
        page = report.read(next(n for n in names if n.endswith(".html"))).decode()
    figures = C.list_figures()
    assert "caption=" not in page  # the caption is shown once, as the caption, not again as a job param
    assert sorted(n.rsplit("/", 1)[-1] for n in names if n.endswith(".png")) == sorted(
        f"{f.split('/')[1]}.png" for f in figures)
    for figure in figures:  # captioned with the title and the paper's arXiv id, under its paper
        fig = C.compose(figure, "cpu", "smoke").figure
        shown = json.dumps(fig.title)[1:-1]  # the report keeps captions as JSON (\u escapes)
        title = str(fig.title)  # or as the page writes it: raw, or HTML-escaped
        forms = {shown, title, html.escape(title), shown.replace("'", "\\u0027"), shown.replace("'", "&#x27;")}
        assert any(f in page for f in forms) and fig.source.arxiv in page and fig.paper in page, figure


@pytest.mark.skipif(bool(REFERENCE_DIFFERS), reason=f"not the reference's software: {REFERENCE_DIFFERS}")
def test_a_fresh_smoke_pipeline_reproduces_the_shipped_reference_exactly(built):
    """The same code, versions and CPU give the same numbers in a fresh process and out
    dir (timings excepted). The reference is tests/fixtures/smoke_reference.json (how to remake it:
    tests/fixtures/make_smoke_reference.py)."""
    reference = json.loads(REFERENCE.read_text())
    ours = smoke_reference.measurements(built / "figures")
    assert set(reference["figures"]) <= set(ours)
    differ = {f: sorted(k for k in expected if ours[f].get(k) != expected[k])
              for f, expected in reference["figures"].items()}
    assert {f: keys for f, keys in differ.items() if keys} == {}


def test_rerun_is_a_no_op(built):
    result = snakemake(built, "-n", "all")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_editing_one_figure_config_reruns_only_that_figure(built):
    path = built / "configs" / "figure" / "gated_attention" / "lr_stability.yaml"
    original = path.read_text()
    try:
        path.write_text(original.replace("spike_jump: 0.25", "spike_jump: 0.3"))  # notebook-only value
        result = snakemake(built, "-n", "all")
        assert planned_jobs(result) == {"all": 1, "figure": 1, "scorecard": 1}, result.stdout[-3000:]
        assert "figure=lr_stability" in result.stdout and "figure=loss" not in result.stdout

        budget = "    run: {trainer: {max_steps: 12}}\n"  # the training budget, under the scales.smoke it has
        path.write_text(original.replace("\nscales:\n  smoke:\n", "\nscales:\n  smoke:\n" + budget, 1))
        n_points = len(C.points(C.compose("gated_attention/lr_stability", "cpu", "smoke")))
        result = snakemake(built, "-n", "all")
        assert planned_jobs(result) == {"all": 1, "figure": 1, "scorecard": 1, "train": n_points}
    finally:
        path.write_text(original)


def test_failed_notebook_leaves_no_figure_and_keeps_the_traceback(built):
    notebook = built / "notebooks" / "gated_attention" / "loss.ipynb"
    original = notebook.read_text()
    nb = json.loads(original)
    nb["cells"].append({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                        "source": "raise RuntimeError('deliberate failure')"})
    notebook.write_text(json.dumps(nb))
    try:
        env = {**os.environ, "PYTHONPATH": str(built)}
        result = subprocess.run([sys.executable, "-m", "replicate", "notebook", "gated_attention/loss",
                                 "hardware=cpu", "scale=smoke"], cwd=built, env=env, capture_output=True, text=True)
        assert result.returncode != 0
        assert not (built / "figures" / "gated_attention" / "loss.png").exists()
        failed = built / "logs" / "notebooks" / "gated_attention" / "loss.ipynb"
        assert "deliberate failure" in failed.read_text()
        assert not list((built / "figures" / "gated_attention").glob(".loss.*"))  # no staging left
    finally:
        notebook.write_text(original)


def test_train_jobs_depend_on_what_training_imports_not_on_notebook_helpers(tmp_path):
    from replicate.pipeline import Plan

    plan = Plan(hardware="cpu", scale="smoke", out=str(tmp_path))
    code = plan.training_code("hypernet_mip")
    assert "replicate/papers/hypernet_mip/module.py" in code  # the run's _target_
    assert "replicate/papers/hypernet_mip/model.py" in code  # imported by module.py
    assert "replicate/papers/hypernet_mip/analysis.py" not in code  # notebooks only
    assert "replicate/papers/hypernet_mip/analysis.py" in plan.paper_code("hypernet_mip")  # figures: all


def test_machine_paths_are_relocated_whole():
    from replicate.pipeline import _relocate

    text = '"/tmp/x/out/figures/a.png" /tmp/x/outside /tmp/x/out\n/tmp/x/out/.a.123/b'
    paths = {"/tmp/x/out": ".", "/tmp/x/out/.a.123": "figures/p"}
    assert _relocate(text, paths) == '"./figures/a.png" /tmp/x/outside .\nfigures/p/b'
