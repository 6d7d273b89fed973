"""The workflow's conventions: `snakemake --lint` has nothing to say, every rule's software is
envs/replicate.yaml (the project's dependencies), failed jobs show their logs, and ruff passes
on the code this suite's own files make up."""

import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from replicate import config as C


def test_snakemake_lint_exits_0():
    done = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=C.REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Lints for" not in done.stdout + done.stderr


def test_the_rules_environment_states_the_projects_dependencies():
    project = tomllib.loads((C.REPO_ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((C.REPO_ROOT / "envs" / "replicate.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == project["dependencies"]
    assert f"python{project['requires-python']}" in env["dependencies"]


def test_every_rule_with_a_command_names_the_environment_and_a_log():
    text = (C.REPO_ROOT / "Snakefile").read_text()
    commands = text.count("    shell:\n")
    assert commands >= 4
    assert text.count('    conda:\n        "envs/replicate.yaml"\n') == commands
    assert text.count("    log:\n") == commands


def test_the_default_profile_shows_failed_logs():
    profile = yaml.safe_load((C.REPO_ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert profile["show-failed-logs"] is True


def test_ci_runs_ruff_before_the_tests():
    script = (C.REPO_ROOT / ".ci" / "run").read_text()
    assert script.index("ruff check .") < script.index("\npytest")


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_passes_on_the_suites_machinery():
    """The package outside the papers, the tests and the benchmarks (the papers' packages and
    notebooks are checked by `ruff check .` in .ci/run)."""
    done = subprocess.run(["ruff", "check", "replicate", "tests", "benchmarks", "--exclude", "replicate/papers"],
                          cwd=C.REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
