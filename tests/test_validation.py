"""Typos are caught before any job: a ``--config`` key outside schemas/config.schema.yaml, a run
key that no ``_target_`` constructor takes, and a target that lacks the ``out=`` folder, each one
line naming what is wrong.

The Snakemake tests run in a scratch copy of the repository whose only figure is the scaffolded
toy paper, so that planning costs a second.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replicate import config as C
from replicate.cli import main
from replicate.pipeline import out_prefix_hint, outside_out_pattern


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    shutil.copytree(C.REPO_ROOT / "replicate", root / "replicate",
                    ignore=shutil.ignore_patterns("__pycache__", "papers"))
    (root / "replicate" / "papers").mkdir()
    shutil.copy2(C.REPO_ROOT / "replicate" / "papers" / "__init__.py", root / "replicate" / "papers")
    shutil.copytree(C.REPO_ROOT / "configs", root / "configs", ignore=shutil.ignore_patterns("figure"))
    (root / "configs" / "figure").mkdir()
    for name in ("Snakefile", "profiles", "schemas", "envs", "report"):
        src = C.REPO_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    (root / "notebooks").mkdir()
    (root / "tests").mkdir()
    assert run(root, "replicate", "new-paper", "toy").returncode == 0
    return root


def run(root: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "REPLICATE_ROOT": str(root)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The last stderr line of a run that failed with exit status 2 before any job ran."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "rule train" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def test_a_misspelt_config_key_is_one_line_before_planning(repo):
    last = one_line_error(run(repo, "snakemake", "-n", "all", "--config", "scal=smoke"))
    assert "'scal' was unexpected" in last and "hardware, scale and out" in last


def test_the_schemas_keys_plan_as_before(repo, tmp_path):
    done = run(repo, "snakemake", "-n", "all", "--config", "scale=smoke", "hardware=cpu", f"out={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train" in done.stdout


def test_a_target_without_the_out_folder_names_the_path_meant(repo, tmp_path):
    done = run(repo, "snakemake", "-n", "figures/toy/main.png", "--config", "scale=smoke", f"out={tmp_path}")
    last = one_line_error(done)
    assert f"ask for {tmp_path}/figures/toy/main.png" in last


@pytest.mark.parametrize("target, wrong", [
    ("figures/toy/main.png", True),
    ("elsewhere/runs/toy/0123456789abcdef/metrics.json", True),
    ("/scratch/out/figures/toy/main.png", False),  # under out
    ("/scratch/out/runs/toy/0123456789abcdef/metrics.json", False),
    ("notebooks/toy/main.ipynb", False),  # an input of the figure rule
    ("replicate/papers/toy/module.py", False),
])
def test_the_out_prefix_pattern_matches_only_paths_outside_out(target, wrong):
    import re

    assert bool(re.fullmatch(outside_out_pattern("/scratch/out"), target)) == wrong


def test_the_hint_keeps_the_path_below_the_figures_folder():
    assert out_prefix_hint("elsewhere/figures/a/b.png", "/o").endswith("ask for /o/figures/a/b.png")


def test_a_run_key_no_constructor_takes_is_one_line_naming_key_and_class(tmp_path):
    with pytest.raises(C.ConfigError) as err:
        C.compose("moe_gating/topk_exact", "cpu", "smoke", ["+figure.run.module.optimizer.lr=0.1"])
    message = str(err.value)
    assert "'run.module.optimizer' is not a parameter of replicate.papers.moe_gating.module.BatchedEM" in message
    assert "\n" not in message and "truth" in message  # the parameters it does take are listed


def test_a_missing_required_parameter_is_named():
    with pytest.raises(C.ConfigError, match="'run.module' lacks 'truth', a required parameter"):
        C.compose("moe_gating/topk_exact", "cpu", "smoke", ["~figure.run.module.truth"])


def test_nested_targets_are_checked_with_their_full_key():
    nested = {"_target_": "fractions.Fraction", "numerator": {"_target_": "fractions.Fraction", "numerater": 1}}
    with pytest.raises(C.ConfigError, match=r"'run.module.numerator.numerater' is not a parameter of fractions.Fraction"):
        C._check_target_keys(nested, "run.module", Path("figure.yaml"))
    C._check_target_keys({"_target_": "fractions.Fraction", "numerator": 3, "_convert_": "all"}, "run.module",
                         Path("figure.yaml"))  # Hydra's own keys are not parameters


def test_a_target_that_cannot_be_imported_is_named():
    with pytest.raises(C.ConfigError, match="_target_ replicate.nowhere.Model cannot be loaded"):
        C._check_target_keys({"_target_": "replicate.nowhere.Model"}, "run.module", Path("figure.yaml"))


def test_every_configured_figure_passes_the_constructor_check():
    for figure in C.list_figures():
        C.compose(figure, "cpu", "smoke")  # raises ConfigError naming the key otherwise


def test_constructor_parameters_read_from_source_equal_the_imported_signature():
    import importlib
    import inspect

    targets = {line.split("_target_:")[1].strip() for path in (C.REPO_ROOT / "configs").rglob("*.yaml")
               for line in path.read_text().splitlines() if "_target_:" in line}
    assert len(targets) >= 10
    for target in sorted(targets):
        module, _, name = target.rpartition(".")
        signature = inspect.signature(getattr(importlib.import_module(module), name))
        named = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        imported = (None if takes_any else frozenset(p.name for p in named),
                    frozenset(p.name for p in named if p.default is p.empty))
        assert C._init_parameters_from_source(target) == imported, target
    assert C._init_parameters_from_source("fractions.Fraction") is None  # not ours: imported instead


def test_a_cold_compose_of_every_figure_imports_neither_torch_nor_lightning():
    code = ("import sys; from replicate import config as C\n"
            "[C.compose(f, 'cpu', 'default') for f in C.list_figures()]\n"
            "print(sorted(m for m in ('torch', 'lightning', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=C.REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_run_key_typo_through_the_cli_leaves_no_run_folder(tmp_path, capsys):
    argv = ["run", "moe_gating/topk_exact", "point=0", "scale=smoke", "hardware=cpu", f"out={tmp_path}",
            "+figure.run.module.optimizer.lr=0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.module.optimizer" in err[0]
    assert not (tmp_path / "runs").exists()


def test_lint_is_clean_with_an_out_folder(repo, tmp_path):
    """With out= set the out dir prefixes every output: no param may hold it as a plain string."""
    done = run(repo, "snakemake", "--lint", "--config", "scale=smoke", f"out={tmp_path}")
    assert done.returncode == 0 and "Lints for" not in done.stdout + done.stderr, done.stdout[-3000:]


def test_a_yaml_key_typo_stops_snakemake_before_any_job(repo, tmp_path):
    figure = repo / "configs" / "figure" / "toy" / "main.yaml"
    original = figure.read_text()
    assert "\n    optimizer: " in original
    figure.write_text(original.replace("\n    optimizer: ", "\n    optimiser: "))
    try:
        done = run(repo, "snakemake", "-n", "all", "--config", "scale=smoke", "hardware=cpu", f"out={tmp_path}")
    finally:
        figure.write_text(original)
    last = one_line_error(done)
    assert "main.yaml: 'run.module.optimiser' is not a parameter of replicate.papers.toy.module.ToyModule" in last
