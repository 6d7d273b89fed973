"""Stein's two-stage seed design: the pilot's spread sets n, the final interval keeps its level."""

import math

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from replicate import claims, seeds
from replicate import config as C
from replicate.notebook import seed_decision_markdown


def figure(seeds_block=None, claims_list=None, seed_list=tuple(range(12))):
    fig = {"paper": "toy", "name": "demo", "sweep": {"module.width": [8], "seed": list(seed_list)},
           "claims": claims_list or [
               {"id": "gain", "kind": "paper", "measured": "gain", "replicated": ">= 0.1", "partial": "> 0"},
               {"id": "cut", "kind": "paper", "measured": "cut", "replicated": ">= 3", "partial": ">= 1.5"},
               {"id": "ablation", "kind": "control", "measured": "gain", "replicated": "> 0"}]}
    if seeds_block is not None:
        fig["seeds"] = seeds_block
    return OmegaConf.create({"figure": fig})


def test_policy_reads_and_validates_the_settings():
    assert seeds.policy(figure().figure) is None
    rules = seeds.policy(figure({"pilot": 3, "half_width": 0.5}).figure)
    assert rules == {"pilot": 3, "half_width": 0.5, "max": 12, "key": "seed", "seeds": list(range(12))}
    for bad, message in [({"pilot": 1, "half_width": 0.5}, "pilot = 1"), ({"pilot": 3, "half_width": 0},
                         "half_width = 0"), ({"pilot": 3, "half_width": 0.5, "max": 4}, "unknown key")]:
        with pytest.raises(ValueError, match=message):
            seeds.policy(figure(bad).figure)


def test_margin_is_the_distance_between_the_bars():
    assert seeds.margin({"replicated": ">= 0.1", "partial": "> 0"}, log=False) == pytest.approx(0.1)
    assert seeds.margin({"replicated": ">= 3", "partial": ">= 1.5"}, log=True) == pytest.approx(math.log(2))
    two_sided = {"replicated": "in [-0.65, -0.35]", "partial": "in [-0.8, -0.25]"}
    assert seeds.margin(two_sided, log=False) == pytest.approx(0.1)
    assert seeds.margin({"replicated": "> 1"}, log=True) is None


def test_decide_takes_steins_n_per_claim_and_the_largest():
    cfg = figure({"pilot": 3, "half_width": 0.5})
    pilot = {"gain": claims.mean_interval([0.10, 0.14, 0.12]),  # sd 0.02
             "cut": claims.log_mean_interval([2.0, 2.0 * math.e ** 0.3, 2.0 * math.e ** 0.6])}  # log sd 0.3
    decision = seeds.decide(cfg, pilot)
    t = stats.t.ppf(0.975, 2)
    gain_n = max(3, math.ceil((t * 0.02 / (0.5 * 0.1)) ** 2))
    cut_n = min(12, math.ceil((t * 0.3 / (0.5 * math.log(2))) ** 2))
    assert decision["claims"]["gain"]["n"] == gain_n and decision["claims"]["cut"]["n"] == cut_n
    assert decision["n"] == max(gain_n, cut_n) and decision["seeds"] == list(range(decision["n"]))
    assert "ablation" not in decision["claims"]  # controls do not drive n
    assert decision["max_reached"] == (cut_n == 12)


def test_decide_ignores_the_pilot_mean():
    cfg = figure({"pilot": 3, "half_width": 0.5})
    low = seeds.decide(cfg, {"gain": claims.mean_interval([0.0, 0.1, 0.2]), "cut": 5.0})
    high = seeds.decide(cfg, {"gain": claims.mean_interval([5.0, 5.1, 5.2]), "cut": 5.0})
    assert low["n"] == high["n"] and "plain number" in low["claims"]["cut"]["why"]


def test_finalize_gives_the_stein_interval_of_every_t_estimate():
    units = [1.0, 1.4, 1.1, 1.3, 0.9, 1.2]
    out = seeds.finalize({"gain": claims.mean_interval(units), "share": claims.proportion(2, 6), "x": 1.0}, 3)
    half = stats.t.ppf(0.975, 2) * np.std(units[:3], ddof=1) / math.sqrt(6)
    assert out["gain"].interval == pytest.approx((np.mean(units) - half, np.mean(units) + half))
    assert out["gain"].estimator["name"] == "stein_t_mean" and out["share"].estimator["name"] == "wilson"
    assert out["x"] == 1.0


def test_with_seeds_keeps_every_run_config():
    cfg = C.compose("gated_attention/attention_sink", hardware="cpu", scale="default")
    key, listed = seeds.seed_axis(cfg.figure)
    fewer = seeds.with_seeds(cfg, listed[:2])
    kept = {C.run_hash(r) for r in C.run_configs(fewer)}
    assert kept and kept <= {C.run_hash(r) for r in C.run_configs(cfg)}
    assert len(C.points(fewer)) == len(C.points(cfg)) * 2 // len(listed)


def test_the_notebook_states_the_decision_and_each_claims_n():
    decision = {"pilot": 3, "max": 12, "n": 12, "seeds": list(range(12)), "max_reached": True,
                "claims": {"gain": {"n": 12, "margin": 0.1, "scale": "linear"},
                           "share": {"n": None, "why": "no smallest effect of interest to set a margin"}}}
    line = seed_decision_markdown(decision)
    assert "a pilot of 3 seeds, then 12 of the 12 listed (the cap: some claim asked for more)" in line
    assert "`gain` 12; `share`: no smallest effect of interest" in line and "2 degrees of freedom" in line
    assert "the cap" not in seed_decision_markdown({**decision, "n": 5, "max_reached": False})


def test_a_sweep_of_several_grids_shares_one_seed_axis():
    grids = [{"module.variant": ["base"], "module.streams": [1], "seed": [0, 1, 2, 3]},
             {"module.variant": ["a", "b"], "seed": [0, 1, 2, 3]}]
    cfg = OmegaConf.create({"figure": {"paper": "toy", "name": "demo", "sweep": grids}})
    assert seeds.seed_axis(cfg.figure) == ("seed", [0, 1, 2, 3])
    fewer = seeds.with_seeds(cfg, [0, 1])
    assert [list(g["seed"]) for g in fewer.figure.sweep] == [[0, 1], [0, 1]]
    assert [g["module.variant"] for g in fewer.figure.sweep] == [["base"], ["a", "b"]]
    assert list(cfg.figure.sweep[0]["seed"]) == [0, 1, 2, 3]  # the original is untouched
    uneven = OmegaConf.create({"figure": {"paper": "toy", "name": "demo",
                                          "sweep": [grids[0], {**grids[1], "seed": [0, 1]}]}})
    with pytest.raises(ValueError, match="same seed key and list in every sweep grid"):
        seeds.seed_axis(uneven.figure)
    unseeded = OmegaConf.create({"figure": {"paper": "toy", "name": "demo",
                                            "sweep": [grids[0], {"module.variant": ["a"]}]}})
    with pytest.raises(ValueError, match="one `seed` axis in each sweep grid"):
        seeds.seed_axis(unseeded.figure)


def test_the_plan_asks_for_the_pilot_then_the_decided_seeds(tmp_path):
    from types import SimpleNamespace

    from replicate.pipeline import Plan

    plan = Plan(hardware="cpu", scale="smoke", out=str(tmp_path))
    name = "gated_attention/attention_sink"
    fig = plan.figures[name]
    key, listed = "seed", sorted({run["run"]["seed"] for run in fig.runs})
    assert len(listed) >= 1
    rules = {"pilot": 1, "half_width": 0.5, "max": len(listed), "key": key, "seeds": listed}
    plan._two_stage[name] = rules
    pilot = plan.run_metrics(name)
    assert pilot and len(pilot) == len(plan._needs[name]) // len(listed)
    decided = tmp_path / "decided.json"
    decided.write_text('{"seeds": %s}' % listed)
    assert plan.run_metrics(name, str(decided)) == plan._needs[name]

    class Checkpoint:
        def get(self, **wildcards):
            return SimpleNamespace(output=[f"decision of {wildcards['paper']}/{wildcards['figure']}"])

    w = SimpleNamespace(paper="gated_attention", figure="attention_sink")
    assert plan.seeds_decision(Checkpoint(), w) == f"decision of {name}"
    plan._two_stage[name] = None
    assert plan.seeds_decision(Checkpoint(), w) is None and plan.run_metrics(name) == plan._needs[name]


def test_a_two_stage_figure_runs_end_to_end_in_a_copy_of_the_repo(tmp_path):
    """The scaffold's toy figure with a two-stage design: the dry run plans the pilot and the
    checkpoint; the run trains the pilot, decides, trains the rest, and reports Stein intervals."""
    import json
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Snakefile", "configs", "notebooks", "replicate", "pyproject.toml", "schemas", "envs", "report", "profiles"):
        src = C.REPO_ROOT / name
        if not src.exists():
            continue
        copy = shutil.copytree if src.is_dir() else shutil.copy2
        copy(src, repo / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    env = {**__import__("os").environ, "PYTHONPATH": str(repo)}

    def run(*args):
        done = subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    run("-m", "replicate", "new-paper", "twostage")
    config = repo / "configs" / "figure" / "twostage" / "main.yaml"
    text = config.read_text().replace("sweep: {seed: [0]}", "sweep: {module.lr: [0.1], seed: [0, 1, 2, 3, 4]}")
    config.write_text(text + "\nseeds: {pilot: 2, half_width: 0.05}\n")
    smoke = ["--config", "scale=smoke", "hardware=cpu", f"out={tmp_path / 'out'}"]
    dry = run("-m", "snakemake", "-n", str(tmp_path / "out/figures/twostage/main.png"), *smoke)
    assert "seeds" in dry and dry.count("rule train") == 2  # the pilot's two runs, then the checkpoint
    run("-m", "snakemake", str(tmp_path / "out/figures/twostage/main.png"), "--cores", "2", *smoke)
    record = json.loads((tmp_path / "out/figures/twostage/main.json").read_text())
    decision = record["seeds"]
    assert decision["pilot"] == 2 and 2 <= decision["n"] <= 5 and decision["seeds"] == list(range(decision["n"]))
    assert len(record["runs"]) == decision["n"]
    weight = record["measurements"]["weight_error"]
    assert weight["estimator"] == {"name": "stein_t_mean", "level": 0.95, "unit": "seeds", "pilot": 2}
    assert len(weight["units"]) == decision["n"]
    executed = (tmp_path / "out/figures/twostage/main.ipynb").read_text()
    assert "Stein's two-stage design): a pilot of 2 seeds, then" in executed
