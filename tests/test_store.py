"""The shipped run store: files dated by the commits that made them, so a fresh clone plans only
what its history says is out of date (replicate/store.py), end to end through Snakemake."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from replicate import config as C
from replicate import store

T_CODE, T_FIGURE, T_RUN = 1_700_000_000, 1_700_000_600, 1_700_001_200


def git(repo, *args, when=None):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    if when is not None:
        env.update(GIT_AUTHOR_DATE=f"{when} +0000", GIT_COMMITTER_DATE=f"{when} +0000")
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def commit(repo, paths, when):
    git(repo, "add", "-f", *paths)
    git(repo, "commit", "-q", "-m", f"at {when}", when=when)


@pytest.fixture
def history(tmp_path):
    """Code, then a figure reading run A, then the run store (A, and B which no figure read)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    commit(repo, ["code.py"], T_CODE)
    for run in ("a", "b"):
        (repo / "runs" / "toy" / run).mkdir(parents=True)
        (repo / "runs" / "toy" / run / "metrics.json").write_text(json.dumps({"loss": run}))
        (repo / "runs" / "toy" / run / "config.yaml").write_text(f"run: {run}\n")
    sha_a = hashlib.sha256((repo / "runs/toy/a/metrics.json").read_bytes()).hexdigest()
    (repo / "figures" / "toy").mkdir(parents=True)
    (repo / "figures" / "toy" / "main.json").write_text(json.dumps({"runs": [{"run": "a", "metrics_sha256": sha_a}]}))
    commit(repo, ["figures"], T_FIGURE)
    commit(repo, ["runs"], T_RUN)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    return clone


def mtime(path):
    return int(path.stat().st_mtime)


def test_a_clone_is_dated_by_its_history_with_runs_no_later_than_the_figure_that_read_them(history):
    (history / "code.py").write_text("x = 2\n")  # a user's edit keeps its own time
    edited = mtime(history / "code.py")
    assert store.date_by_history(history) == 5
    assert mtime(history / "figures/toy/main.json") == T_FIGURE
    assert mtime(history / "runs/toy/a/metrics.json") == mtime(history / "runs/toy/a/config.yaml") == T_FIGURE
    assert mtime(history / "runs/toy/b/metrics.json") == T_RUN  # no figure read it
    assert mtime(history / "code.py") == edited
    assert (history / store.STAMP).read_text().strip() == git(history, "rev-parse", "HEAD").strip()
    os.utime(history / "figures/toy/main.json", (1, 1))
    assert store.date_by_history(history) == 0  # once per HEAD
    assert mtime(history / "figures/toy/main.json") == 1


def test_a_file_written_before_its_commit_keeps_its_time(history):
    """Dating never moves a file forward: code edited, a run trained, then the code committed must
    not look newer than the run."""
    os.utime(history / "code.py", (T_CODE - 100, T_CODE - 100))
    store.date_by_history(history)
    assert mtime(history / "code.py") == T_CODE - 100


def test_a_figure_output_left_unchanged_by_a_later_execution_is_dated_with_its_json(history):
    (history / "figures/toy/main.png").write_bytes(b"png")
    git(history, "add", "figures/toy/main.png")
    git(history, "commit", "-q", "-m", "png", when=T_CODE + 1)  # older than the json's commit
    store.date_by_history(history)
    assert mtime(history / "figures/toy/main.png") == mtime(history / "figures/toy/main.json") == T_FIGURE


def test_a_run_whose_metrics_differ_from_what_the_figure_read_keeps_its_commit_date(history):
    (history / "runs/toy/a/metrics.json").write_text(json.dumps({"loss": "other"}))
    git(history, "commit", "-q", "-am", "retrained", when=T_RUN + 600)
    store.date_by_history(history)
    assert mtime(history / "runs/toy/a/metrics.json") == T_RUN + 600
    assert mtime(history / "runs/toy/a/config.yaml") == T_RUN  # not capped: the figure read other metrics


def test_a_copy_without_git_is_left_alone(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    os.utime(tmp_path / "f.txt", (5, 5))
    assert store.date_by_history(tmp_path) == 0 and mtime(tmp_path / "f.txt") == 5


def test_the_store_lists_exactly_the_runs_the_figures_read(history):
    assert [p.relative_to(history).as_posix() for p in store.shipped_run_files(history)] == [
        "runs/toy/a/config.yaml", "runs/toy/a/metrics.json"]


def test_the_store_lists_a_seed_decision_only_when_it_is_the_one_the_figure_recorded(tmp_path):
    decision = {"pilot": 2, "n": 3, "seeds": [0, 1, 2]}
    (tmp_path / "figures" / "toy").mkdir(parents=True)
    (tmp_path / "figures" / "toy" / "main.json").write_text(json.dumps({"runs": [], "seeds": decision}))
    path = tmp_path / ".replicate" / "seeds" / "toy" / "main.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(decision))
    assert store.shipped_run_files(tmp_path) == [path]
    path.write_text(json.dumps({**decision, "n": 2}))  # decided again since: not what the figure used
    assert store.shipped_run_files(tmp_path) == []


COPIED = ("Snakefile", "configs", "notebooks", "replicate", "pyproject.toml", "schemas", "envs", "report")


def test_a_fresh_clone_plans_only_what_changed_since_its_shipped_results(tmp_path):
    """Scaffold a paper in a scratch git repo (its figure with a two-stage seed design), run its
    smoke figure into the repo, commit the figure with the run store and its seed decision, clone:
    the clone plans nothing for it; a claims edit plans the figure alone; a training-code edit
    plans its runs and the seeds checkpoint again."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in COPIED:
        src = C.REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, repo / name)
    shutil.copy2(C.REPO_ROOT / ".gitignore", repo / ".gitignore")
    for other in (repo / "configs" / "figure").iterdir():  # plan the new paper alone: a fast plan
        shutil.rmtree(other)

    def run(cwd, *args):
        done = subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(cwd)},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    run(repo, "-m", "replicate", "new-paper", "throwaway")
    config = repo / "configs" / "figure" / "throwaway" / "main.yaml"
    text = config.read_text().replace("sweep: {seed: [0]}", "sweep: {module.lr: [0.1], seed: [0, 1, 2, 3]}")
    config.write_text(text + "\nseeds: {pilot: 2, half_width: 0.05}\n")
    git(repo, "init", "-q")
    commit(repo, ["."], T_CODE)
    smoke = ["--config", "scale=smoke", "hardware=cpu"]
    run(repo, "-m", "snakemake", "figures/throwaway/main.png", "--cores", "2", *smoke)
    shipped = run(repo, "-m", "replicate", "store").split()
    assert ".replicate/seeds/throwaway/main.json" in shipped  # without it a clone could not rerun the figure
    assert all(p.startswith("runs/throwaway/") for p in shipped if not p.startswith(".replicate/"))
    commit(repo, ["figures", *shipped], T_FIGURE)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)

    def planned(*edits):
        for path, old, new in edits:
            (clone / path).write_text((clone / path).read_text().replace(old, new, 1))
        dry = run(clone, "-m", "snakemake", "-n", "figures/throwaway/main.png", *smoke)
        return {line.split()[1].rstrip(":") for line in dry.splitlines() if line.startswith(("rule ", "localrule ", "checkpoint "))}

    assert planned() == set()
    assert planned(("configs/figure/throwaway/main.yaml", "TEMPLATE: SGD", "TEMPLATE: edited, SGD")) == {"figure"}
    assert planned(("replicate/papers/throwaway/module.py", '"""', '"""Edited. ')) == {"figure", "train", "seeds"}
