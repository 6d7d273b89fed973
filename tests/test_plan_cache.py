"""The plan cache under the out dir: a cached plan is the cold plan, and it cannot go stale.

Most tests compose a small config tree of their own (three figures of two papers sharing a
training config and, for two of them, a part), so an edit's expected reach is known by
construction: a figure config reaches its figure, a part the figures that include it, a training,
scale or hardware file every figure that reads it.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from replicate import config as C
from replicate.pipeline import Plan

TRAINING = """\
seed: 0
module:
  _target_: argparse.Namespace  # any keyword: the keys below are this tree's own
  width: 8
  lr: 0.01
data:
  _target_: argparse.Namespace
  seed: ${figure.run.seed}
  threads: ${hardware.threads_per_job}
trainer: {max_steps: 10, val_check_interval: 5}
"""
PART = "sweep:\n  module.width: [8, 16]\n  seed: [0, 1]\n"
FIGURE = """\
defaults:
  - /training/toy/run@run
{part}  - _self_
title: {title}
source: {{arxiv: "2505.06708", where: "Table 1"}}
regime: a toy regime
measure: {{scale_note: "${{scale.description}}"}}
claims: []
{extra}"""
FIGURES = {
    "toy/a": FIGURE.format(part="  - /parts/toy/widths@_here_\n", title="Toy A",
                           extra="run: {trainer: {max_steps: 5}}\n"),
    "toy/b": FIGURE.format(part="  - /parts/toy/widths@_here_\n", title="Toy B", extra=""),
    "other/c": FIGURE.format(part="", title="Other C", extra="sweep: {seed: [0, 1, 2]}\n"),
}


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """A config tree of three figures (the repository's own config.yaml, hardware and scales)."""
    root = tmp_path / "configs"
    root.mkdir()
    shutil.copy(C.CONFIG_DIR / "config.yaml", root / "config.yaml")
    for group in ("hardware", "scale"):
        shutil.copytree(C.CONFIG_DIR / group, root / group)
    files = {"training/toy/run.yaml": TRAINING, "parts/toy/widths.yaml": PART,
             **{f"figure/{name}.yaml": text for name, text in FIGURES.items()}}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setattr(C, "CONFIG_DIR", root)
    monkeypatch.setattr(C, "FIGURE_DIR", root / "figure")
    return root


@pytest.fixture
def composed_cold(monkeypatch):
    """The figures composed from their config files (not read from the cache) since the last call."""
    names = []
    compose = C._compose

    def recording(figure, *args, **kwargs):
        names.append(figure)
        return compose(figure, *args, **kwargs)

    monkeypatch.setattr(C, "_compose", recording)

    def since_last_call():
        found = sorted(names)
        names.clear()
        return found
    return since_last_call


def snapshot(plan: Plan) -> dict:
    """Everything the Snakefile reads of a plan, per figure."""
    return {name: {"sha256": plan.figure_sha256(name), "runs": plan.run_metrics(name),
                   "caption": plan.caption(name), "figure": fig.figure, "run_configs": fig.runs}
            for name, fig in plan.figures.items()}


def cold_plan(tmp_path, scale="smoke") -> dict:
    """The plan composed from scratch: every figure composed, no cache to read."""
    fresh = tmp_path / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    plan = Plan(hardware="cpu", scale=scale, out=str(fresh))
    return {name: {**value, "runs": [r.replace(str(fresh), str(tmp_path / "out")) for r in value["runs"]]}
            for name, value in snapshot(plan).items()}


def test_the_cached_plan_is_the_cold_plan_and_composes_nothing(configs, tmp_path, composed_cold):
    out = str(tmp_path / "out")
    first = snapshot(Plan(hardware="cpu", scale="smoke", out=out))
    assert composed_cold() == sorted(FIGURES)
    again = snapshot(Plan(hardware="cpu", scale="smoke", out=out))
    assert composed_cold() == []
    assert again == first
    a = again["toy/a"]
    assert len(a["runs"]) == 4 and a["run_configs"][3]["run"]["module"]["width"] == 16  # widths x seeds
    assert a["run_configs"][3]["run"]["data"] == {"_target_": "argparse.Namespace", "seed": 1, "threads": 1}
    assert a["run_configs"][0]["run"]["trainer"]["max_steps"] == 5  # the figure's own value beats the training's


EDITS = {  # file -> (old text, new text, figures that read it)
    "figure/toy/a.yaml": ("max_steps: 5", "max_steps: 6", ["toy/a"]),
    "parts/toy/widths.yaml": ("[8, 16]", "[8, 32]", ["toy/a", "toy/b"]),
    "training/toy/run.yaml": ("lr: 0.01", "lr: 0.02", ["other/c", "toy/a", "toy/b"]),
    "scale/smoke.yaml": ("description: ", "description: edited ", ["other/c", "toy/a", "toy/b"]),
    "hardware/cpu.yaml": ("threads_per_job: 1", "threads_per_job: 2", ["other/c", "toy/a", "toy/b"]),
}


@pytest.mark.parametrize("edited", sorted(EDITS))
def test_an_edit_recomposes_the_figures_that_read_the_file_and_gives_the_cold_plan(
        edited, configs, tmp_path, composed_cold):
    old, new, readers = EDITS[edited]
    out = str(tmp_path / "out")
    before = snapshot(Plan(hardware="cpu", scale="smoke", out=out))
    composed_cold()
    path = configs / edited
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    after = snapshot(Plan(hardware="cpu", scale="smoke", out=out))
    assert composed_cold() == readers
    assert after == cold_plan(tmp_path)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == readers  # every edit here changes what each of its readers plans


def test_a_figure_broken_by_an_edit_is_reported_and_the_others_still_come_from_the_cache(
        configs, tmp_path, composed_cold):
    out = str(tmp_path / "out")
    Plan(hardware="cpu", scale="smoke", out=out)
    composed_cold()
    path = configs / "figure" / "toy" / "b.yaml"
    path.write_text(path.read_text().replace("claims: []", "claims: [}"))
    plan = Plan(hardware="cpu", scale="smoke", out=out)
    assert composed_cold() == ["toy/b"] and sorted(plan.figures) == ["other/c", "toy/a"]
    assert "YAML syntax error" in plan.broken["toy/b"]


def test_a_new_figure_is_composed_and_a_damaged_cache_file_is_recomposed(configs, tmp_path, composed_cold):
    out = tmp_path / "out"
    Plan(hardware="cpu", scale="smoke", out=str(out))
    composed_cold()
    (configs / "figure" / "toy" / "d.yaml").write_text(FIGURES["toy/b"].replace("Toy B", "Toy D"))
    (out / C.PLAN_CACHE / "cpu-smoke" / "other" / "c.json").write_text('{"key": ')
    plan = Plan(hardware="cpu", scale="smoke", out=str(out))
    assert composed_cold() == ["other/c", "toy/d"]
    assert snapshot(plan) == cold_plan(tmp_path)


def test_a_figure_reading_the_environment_is_never_cached(configs, tmp_path, composed_cold, monkeypatch):
    path = configs / "figure" / "toy" / "b.yaml"
    path.write_text(path.read_text().replace("regime: a toy regime", "regime: ${oc.env:TOY_REGIME}"))
    monkeypatch.setenv("TOY_REGIME", "first")
    Plan(hardware="cpu", scale="smoke", out=str(tmp_path / "out"))
    monkeypatch.setenv("TOY_REGIME", "second")
    plan = Plan(hardware="cpu", scale="smoke", out=str(tmp_path / "out"))
    assert composed_cold() == sorted([*FIGURES, "toy/b"])
    assert plan.figures["toy/b"].figure["regime"] == "second"


def test_each_scale_and_hardware_has_its_own_cache(configs, tmp_path, composed_cold):
    out = str(tmp_path / "out")
    smoke, default = (snapshot(Plan(hardware="cpu", scale=s, out=out)) for s in ("smoke", "default"))
    assert composed_cold() == sorted([*FIGURES, *FIGURES])
    assert smoke["other/c"]["sha256"] != default["other/c"]["sha256"]  # the scale's description
    assert snapshot(Plan(hardware="cpu", scale="default", out=out)) == default
    assert composed_cold() == []


@pytest.mark.parametrize("figure", ["mist/runtime", "hypernet_mip/convergence"])
def test_the_sources_of_a_figure_are_its_whole_defaults_list(figure):
    """The files recorded while composing are those of Hydra's own defaults list."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    _, sources = C._compose(figure, "cpu", "smoke", (), with_sources=True)
    with initialize_config_dir(config_dir=str(C.CONFIG_DIR), version_base="1.3"):
        defaults = GlobalHydra.instance().config_loader().compute_defaults_list(
            "config", [f"figure={figure}", "hardware=cpu", "scale=smoke"], RunMode.RUN).defaults
    assert sources == sorted(f"{d.config_path}.yaml" for d in defaults
                             if (C.CONFIG_DIR / f"{d.config_path}.yaml").is_file())
    paper, name = figure.split("/")
    assert {"config.yaml", "hardware/cpu.yaml", "scale/smoke.yaml", f"figure/{figure}.yaml"} < set(sources)
    assert any(s.startswith(f"parts/{paper}/") for s in sources) and any(s.startswith("training/") for s in sources)


def test_every_shipped_figure_read_from_the_cache_equals_it_composed(tmp_path, composed_cold):
    """Run hashes and config hashes read back from the cache are those composed (the run store
    and the shipped figures are keyed by them); the smoke scale's are checked end to end by
    tests/test_pipeline.py, whose run store is keyed by the plan's hashes."""
    cold = Plan(hardware="cpu", scale="default", out=str(tmp_path))
    assert composed_cold() == sorted(cold.all_figures)
    warm = Plan(hardware="cpu", scale="default", out=str(tmp_path))
    assert composed_cold() == sorted(cold.broken)  # a broken figure is never cached
    assert snapshot(warm) == snapshot(cold) and sorted(warm.figures) == sorted(cold.figures)
    name = "gated_attention/attention_sink"
    assert warm.figures[name].run_hashes == [C.run_hash(r) for r in C.run_configs(C.compose(name, "cpu", "default"))]


def test_run_hash_and_config_sha256_are_those_the_run_store_is_keyed_by():
    """Known answers (computed before the cache existed): a change here orphans every run."""
    run = C.OmegaConf.create({
        "paper": "toy", "hardware": {"name": "cpu", "accelerator": "cpu", "threads_per_job": 1, "num_workers": 3},
        "run": {"seed": 0, "module": {"_target_": "m.M", "lr": 0.01},
                "trainer": {"max_steps": 5, "keep_checkpoints": "last"}}})
    assert C.run_hash(run) == C.run_hash(C.OmegaConf.to_container(run)) == "1ac4b2206b3c3d37"
    cfg = C.OmegaConf.create({"figure": {"title": "T", "run": {"trainer": {"max_steps": 5, "keep_checkpoints": "none"}}}})
    assert C.config_sha256(cfg) == "516613bae14f5029cec8b455cd137f92e18c24bcc105f4c5e03f6a5357b34c7c"


def test_a_job_finds_its_run_in_the_cache(configs, tmp_path, composed_cold):
    out = tmp_path / "out"
    wanted = C.run_config(C.compose("toy/b", "cpu", "smoke"), 2)
    composed_cold()
    assert C.find_run("toy", C.run_hash(wanted), "cpu", "smoke", out) == wanted
    assert composed_cold() == ["toy/a", "toy/b"]  # the paper's figures, once
    assert C.find_run("toy", C.run_hash(wanted), "cpu", "smoke", out) == wanted
    assert composed_cold() == []
    with pytest.raises(C.ConfigError, match="no sweep point of paper 'toy' has run hash 0123456789abcdef"):
        C.find_run("toy", "0123456789abcdef", "cpu", "smoke", out)


def test_the_plan_imports_no_torch_lightning_or_pandas(configs, tmp_path):
    """The Snakefile builds a plan in every Snakemake process: it must stay cheap to import."""
    code = ("import sys; from replicate.pipeline import Plan; Plan(hardware='auto', scale='smoke', out=sys.argv[1]); "
            "print(sorted({'torch', 'lightning', 'pandas'} & set(sys.modules)))")
    env = {**os.environ, "REPLICATE_ROOT": str(configs.parent)}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    heavy = json.loads(result.stdout.replace("'", '"'))
    assert heavy == (["torch"] if C._torch_built_for_gpu() else [])  # a GPU build asks torch for a device


def test_auto_hardware_reads_the_torch_build_without_importing_it():
    import torch

    assert C._torch_built_for_gpu() == (torch.version.cuda is not None or torch.version.hip is not None)
    assert C.resolve_hardware_name("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
