"""`python -m replicate new-paper NAME`: what it writes, what it refuses, and that the new paper's
smoke figure runs end to end through Snakemake in a scratch copy of the repo."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from replicate import config as C
from replicate import scaffold
from replicate.claims import VERDICTS
from replicate.cli import main

COPIED = ("Snakefile", "configs", "notebooks", "replicate", "pyproject.toml", "schemas", "envs", "report")


@pytest.fixture
def fake_root(tmp_path):
    for d in ("configs/figure", "replicate/papers", "notebooks", "tests"):
        (tmp_path / d).mkdir(parents=True)
    return tmp_path


def test_it_writes_a_package_config_notebook_and_test_with_nothing_left_to_fill(fake_root):
    written = scaffold.new_paper("toy_paper", figure="headline", root=fake_root)
    rel = sorted(str(p.relative_to(fake_root)) for p in written)
    assert rel == ["configs/figure/toy_paper/headline.yaml", "notebooks/toy_paper/headline.ipynb",
                   "replicate/papers/toy_paper/__init__.py", "replicate/papers/toy_paper/data.py",
                   "replicate/papers/toy_paper/measures.py", "replicate/papers/toy_paper/module.py",
                   "tests/test_toy_paper.py"]
    for path in written:
        text = path.read_text()
        assert not re.search(r"\{\{\w+\}\}", text), f"{path}: a placeholder is left"
        if path.suffix == ".py":
            ast.parse(text)  # valid Python
    module = (fake_root / "replicate/papers/toy_paper/module.py").read_text()
    assert "class ToyPaperModule(L.LightningModule)" in module
    assert '"train_loss"' in module and '"val_loss"' in module and "TEMPLATE" in module

    cfg = yaml.safe_load((fake_root / "configs/figure/toy_paper/headline.yaml").read_text())
    assert cfg["run"]["module"]["_target_"] == "replicate.papers.toy_paper.module.ToyPaperModule"
    assert cfg["sweep"] and cfg["scales"]["smoke"] and len(cfg["claims"]) == 2
    assert all({"id", "kind", "statement", "paper_value", "source", "measured", "replicated"} <= set(c) for c in cfg["claims"])

    nb = json.loads((fake_root / "notebooks/toy_paper/headline.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    params = [c for c in code if "parameters" in c["metadata"]["tags"]]
    assert len(params) == 1 and 'figure = "toy_paper/headline"' in "".join(params[0]["source"])
    source = "".join("".join(c["source"]) for c in code)
    assert "FigureContext(" in source and "ctx.save(fig)" in source and "ctx.report(measurements)" in source
    assert "measures.headline(runs, ctx.cfg)" in source  # the claims' numbers come from measures.py
    measures = (fake_root / "replicate/papers/toy_paper/measures.py").read_text()
    assert "def headline(runs" in measures and "def run_table(" in measures
    test = (fake_root / "tests/test_toy_paper.py").read_text()
    assert "def test_headline_measures_on_a_hand_built_run_table" in test
    for claim in cfg["claims"]:  # every claim's measurement is computed by measures.py
        assert f'"{claim["measured"]}"' in measures
    for c in code:
        compile("".join(c["source"]), "cell", "exec")
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_it_refuses_to_overwrite_and_writes_nothing(fake_root):
    scaffold.new_paper("toy", root=fake_root)
    module = fake_root / "replicate/papers/toy/module.py"
    module.write_text("# my work")
    with pytest.raises(scaffold.ScaffoldError, match="paper name 'toy' is taken: replicate/papers/toy"):
        scaffold.new_paper("toy", figure="other", root=fake_root)
    assert module.read_text() == "# my work" and not (fake_root / "configs/figure/toy/other.yaml").exists()
    (fake_root / "tests" / "test_other.py").write_text("")  # a test module of that name would clash
    with pytest.raises(scaffold.ScaffoldError, match="tests/test_other.py"):
        scaffold.new_paper("other", root=fake_root)
    assert not (fake_root / "replicate/papers/other").exists()


@pytest.mark.parametrize("argv,message", [
    (["new-paper", "gated_attention"], "paper name 'gated_attention' is taken"),
    (["new-paper", "My-Paper"], "bad paper name 'My-Paper'"),
    (["new-paper", "2fast"], "bad paper name '2fast'"),
    (["new-paper", "a__b"], "bad paper name 'a__b'"),
    (["new-paper", "lambda"], "it is a Python keyword"),
    (["new-paper", "ok_name", "figure=Bad"], "bad figure name 'Bad'"),
    (["new-paper", "ok_name", "scale=smoke"], "new-paper takes only figure=<figure>"),
    (["new-paper"], "new-paper needs a name"),
])
def test_bad_or_taken_names_are_one_line_errors_with_exit_status_2(argv, message, capsys):
    before = sorted(p.name for p in (C.REPO_ROOT / "replicate" / "papers").iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in (C.REPO_ROOT / "replicate" / "papers").iterdir()) == before


def test_a_new_paper_runs_end_to_end_in_a_copy_of_the_repo(tmp_path):
    """What the README's "Add a paper" says: scaffold, see it in `snakemake -n all`, run its smoke
    figure, see it in the scorecard and report, run its tests."""
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    for name in COPIED:
        src = C.REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, repo / name)
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def run(*args, check=True):
        done = subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0 or not check, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    out = run("-m", "replicate", "new-paper", "throwaway").stdout
    assert "configs/figure/throwaway/main.yaml" in out and "snakemake -n all" in out
    assert run("-m", "replicate", "new-paper", "throwaway", check=False).returncode == 2

    dry = run("-m", "snakemake", "-n", "all", "--config", "scale=smoke", "hardware=cpu")
    assert "figures/throwaway/main.png" in dry.stdout and "runs/throwaway/" in dry.stdout

    smoke = ["--config", "scale=smoke", "hardware=cpu", f"out={tmp_path / 'out'}"]
    run("-m", "snakemake", str(tmp_path / "out/figures/throwaway/main.png"), "--cores", "2", *smoke)
    figures = tmp_path / "out" / "figures"
    for suffix in (".png", ".pdf", ".ipynb", ".json"):
        assert (figures / "throwaway" / f"main{suffix}").stat().st_size > 0
    record = json.loads((figures / "throwaway" / "main.json").read_text())
    assert record["scale"] == "smoke" and [c["id"] for c in record["claims"]] == ["recovers_weights", "reaches_noise_floor"]
    assert all(c["verdict"] in VERDICTS and isinstance(c["measured"], float) for c in record["claims"])

    run("-m", "replicate", "scorecard", f"out={tmp_path / 'out'}")
    run("-m", "replicate", "report", f"out={tmp_path / 'out'}")
    assert "recovers_weights" in (figures / "SCORECARD.md").read_text()
    assert 'src="throwaway/main.png"' in (figures / "index.html").read_text()

    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_throwaway.py")
    assert "4 passed" in tests.stdout
