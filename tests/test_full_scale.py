"""Every figure's ``scale=full`` config, proven runnable on a CPU before anyone spends a GPU on it.

1. Every figure composes at scale=full on both hardware profiles, every sweep point resolves, and
   every distinct model is constructed at full size on the ``meta`` device (shapes, no storage).
2. Full data is offline: no config downloads; every real dataset is read from a local path, and
   a missing one stops the run with one line naming the path (no run directory is left).
3. Checkpoints: ``keep_checkpoints`` resolves to ``none`` at scale full except for the figures
   whose notebooks reload weights (MoR, MIST: ``last``); a finished run without its checkpoint
   is still reused.
4. Training: for every figure, the largest model among its runs whose model no earlier figure's
   check has trained, is trained for two optimizer steps through the real pipeline
   (``runs.ensure``: Trainer, validation, checkpoint, probes, metrics.json) on tiny batches read
   from the local fixtures, with bf16 autocast on the CPU (``precision: bf16-mixed``); the
   smallest of those models also goes through ``torch.compile``. Sizes: every model at its full
   width and depth except where that does not fit a CPU test (``SHRINK``): the Hourglass grid
   keeps its full widths (d_x = 784, the widest d_z / d_h) at depth 1 with 2 of its side-by-side
   learning-rate copies (the full grid is 4.7B parameters), the hypernetwork keeps its full 784-128-128-128-10 primary net and hidden sizes
   with 2 of its side-by-side seeds, the MoE EM keeps its models with 2 replicates of the first 2
   sample sizes, and MoR models keep d_model 576 / 9 heads / d_ff 1536 with 4 (N_r = 2) or 5
   (N_r = 3, vanilla) block applications, except one full-depth model (the first MoR figure's).
   Sequences are 32 tokens (positions up to max_len exist; only the batch is short).
"""

from __future__ import annotations

import gc
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from replicate import config as C
from replicate import plan as P
from replicate import runs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
LOCAL = {"mnist": FIXTURES / "mnist_tiny", "fineweb_edu": FIXTURES / "tinystories" / "tiny.jsonl",
         "tinystories": FIXTURES / "tinystories" / "tiny.jsonl",
         "imagenet32": FIXTURES / "hourglass_imagenet32_tiny"}
EMBEDDED = {None, "stdlib", "digits", "skimage", "synthetic"}
NEEDS_WEIGHTS = {"mixture_of_recursions", "mist"}  # their notebooks reload trained weights
FACTS: dict = {}  # replicate.plan's model facts, shared by the tests of this file


@pytest.fixture(scope="module")
def full():
    """Every figure composed at scale=full on the cpu and gpu profiles, with its run configs."""
    composed = {}
    for figure in C.list_figures():
        cfg = C.compose(figure, "cpu", "full")
        C.compose(figure, "gpu", "full")  # the GPU profile composes too
        composed[figure] = (cfg, C.run_configs(cfg))
    return composed


# --------------------------------------------------------------------------- 1. compose + build
def test_every_full_model_builds_at_full_size_on_meta(full):
    cache = FACTS
    for figure, (cfg, run_cfgs) in full.items():
        assert run_cfgs, f"{figure}: no runs at scale full"
        for run_cfg in run_cfgs:
            job = P.job_cost(figure, run_cfg, P.DEVICES["gpu"], cache)
            assert job.train_flops > 0 and math.isfinite(job.memory_bytes), figure


# --------------------------------------------------------------------------- 2. offline data
def test_no_config_downloads():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "configs").rglob("*.yaml"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if "download: true" in line]
    assert hits == []


def test_full_data_is_read_from_a_local_path(full):
    for figure, (cfg, run_cfgs) in full.items():
        for run_cfg in run_cfgs:
            data = run_cfg.run.data
            assert data.get("download", False) is False, f"{figure}: data.download"
            source = data.get("source")
            if source in EMBEDDED:
                continue
            assert source in LOCAL, f"{figure}: data source {source!r} has no local fixture here"
            # text corpora need an explicit path (no streaming); image sets default to
            # $REPLICATE_CACHE/<name> in their loaders when data.path is null
            if data._target_.endswith("TextDataModule"):
                assert data.path, f"{figure}: text source {source} without data.path"
                assert data.max_bytes, f"{figure}: a full-scale corpus must be capped (max_bytes)"


def test_missing_full_data_is_one_line_and_leaves_no_run(tmp_path):
    for figure, source in (("gated_attention/loss", "fineweb_edu"), ("hypernet_mip/convergence", "mnist")):
        cfg = C.compose(figure, "cpu", "full")
        run_cfg = tiny(C.run_config(cfg, 0), figure)
        run_cfg.run.data.path = str(tmp_path / "nowhere")
        with pytest.raises(C.ConfigError) as err:
            runs.ensure(run_cfg, tmp_path / "out")
        message = str(err.value)
        assert "\n" not in message and "nowhere" in message, message
        assert not runs.run_dir(tmp_path / "out", run_cfg).exists()


# --------------------------------------------------------------------------- 3. checkpoints
def test_keep_checkpoints_defaults(full):
    for figure, (cfg, run_cfgs) in full.items():
        want = "last" if figure.split("/")[0] in NEEDS_WEIGHTS else "none"
        assert {r.run.trainer.keep_checkpoints for r in run_cfgs} == {want}, figure
    default = C.compose("gated_attention/loss", "cpu", "default")
    assert default.figure.run.trainer.keep_checkpoints == "last"


def test_keep_checkpoints_is_not_part_of_the_run_hash():
    cfg = C.compose("gated_attention/loss", "cpu", "smoke")
    run_cfg = C.run_config(cfg, 0)
    other = OmegaConf.create(OmegaConf.to_container(run_cfg))
    other.run.trainer.keep_checkpoints = "none"
    assert C.run_hash(other) == C.run_hash(run_cfg)
    override = C.compose("gated_attention/loss", "cpu", "smoke", ["++figure.run.trainer.keep_checkpoints=none"])
    assert C.config_sha256(override) == C.config_sha256(cfg)
    with pytest.raises(C.ConfigError, match="keep_checkpoints must be one of"):
        C.compose("gated_attention/loss", "cpu", "smoke", ["++figure.run.trainer.keep_checkpoints=some"])


def test_a_finished_run_without_checkpoint_is_reused(tmp_path):
    cfg = C.compose("gated_attention/attention_sink", "cpu", "smoke", ["++figure.run.trainer.keep_checkpoints=none"])
    run_cfg = C.run_config(cfg, 0)
    directory = runs.ensure(run_cfg, tmp_path)
    assert runs.is_finished(directory) and not (directory / "checkpoints").exists()
    metrics = (directory / runs.METRICS).read_text()
    assert runs.ensure(run_cfg, tmp_path) == directory  # reused, not retrained
    assert (directory / runs.METRICS).read_text() == metrics
    with pytest.raises(FileNotFoundError, match="keep_checkpoints is none"):
        runs.load_module(directory)


# --------------------------------------------------------------------------- 4. two steps each
def _set(node, key: str, value) -> None:
    if OmegaConf.select(node, key, default="__absent__") != "__absent__":
        OmegaConf.update(node, key, value, merge=False)


def _shrink_mor(module, keep_depth: bool) -> None:
    model = module.model
    if keep_depth:
        return
    model.n_layer = 5 if model.variant == "vanilla" or model.n_rec == 3 else 4


def _shrink_hourglass(module) -> None:
    for family, axes in module.grid.items():
        for axis, values in list(axes.items()):
            if not OmegaConf.is_list(values):
                continue
            if axis == "depth":
                axes[axis] = [1]
            elif axis in ("d_z", "d_h"):
                axes[axis] = [max(values)]
    for family, lrs in (module.get("lrs") or {}).items():
        module.lrs[family] = list(lrs)[:2]  # two side-by-side copies, not five


def tiny(run_cfg, figure: str, keep_depth: bool = False):
    """The run with its full-size model (shrunk only as ``SHRINK`` says), two steps, tiny batches,
    local fixture data, bf16 autocast on one CPU thread."""
    cfg = OmegaConf.create(OmegaConf.to_container(run_cfg))
    run, paper = cfg.run, cfg.paper
    run.trainer.max_steps = 2
    run.trainer.val_check_interval = 2
    run.trainer.limit_val_batches = 1
    run.trainer.log_every_n_steps = 1
    for key in ("module.max_steps", "module.optim.max_steps", "data.max_steps"):
        _set(run, key, 2)
    for key, value in (("data.batch_size", 2), ("data.seq_len", 32), ("data.datasets_per_step", 2),
                       ("data.num_workers", 0), ("data.n_val", 8), ("data.n_test", 8), ("data.val_batches", 1),
                       ("module.train_eval_images", 8), ("module.eval_batch", 8),
                       ("data.replicates", 2), ("module.replicates", 2)):
        _set(run, key, value)
    for key in ("data.n_grid", "module.n_grid"):
        if OmegaConf.select(run, key) is not None:
            OmegaConf.update(run, key, list(OmegaConf.select(run, key))[:2], merge=False)
    source = run.data.get("source")
    if source in LOCAL:
        run.data.path = str(LOCAL[source])
    if run.data._target_.endswith("TextDataModule"):
        run.data.val_fraction = 0.25  # the 40-record fixture: 5% would leave validation empty
    if paper == "mixture_of_recursions":
        _shrink_mor(run.module, keep_depth)
    if paper == "hourglass_mlp":
        _shrink_hourglass(run.module)
    if paper == "hypernet_mip":
        for key in ("module.seeds", "data.seeds"):
            if OmegaConf.select(run, key) is not None:
                OmegaConf.update(run, key, list(OmegaConf.select(run, key))[:2], merge=False)
    cfg.hardware.precision = "bf16-mixed"
    cfg.hardware.threads_per_job = 1
    cfg.hardware.compile = False
    return cfg


def chosen_runs(full) -> list[tuple[str, object, bool]]:
    """(figure, tiny run config, compile) per figure: the largest model not trained yet."""
    cache, trained, chosen = FACTS, set(), []
    first_mor = True
    for figure, (cfg, run_cfgs) in full.items():
        best = None
        for run_cfg in run_cfgs:
            key = structure(run_cfg)
            if key in trained:
                continue
            params = P.job_cost(figure, run_cfg, P.DEVICES["gpu"], cache).params
            if best is None or params > best[0]:
                best = (params, run_cfg, key)
        if best is None:
            continue  # every model of this figure was trained for an earlier figure
        trained.add(best[2])
        keep_depth = figure.startswith("mixture_of_recursions") and first_mor
        first_mor = first_mor and not figure.startswith("mixture_of_recursions")
        chosen.append((figure, tiny(best[1], figure, keep_depth), best[0]))
    smallest = min((c for c in chosen if c[2] > 0), key=lambda c: c[2])
    smallest[1].hardware.compile = True
    return [(figure, run_cfg, run_cfg.hardware.compile) for figure, run_cfg, _ in chosen]


def structure(run_cfg) -> str:
    """A model's identity for this test: its module config without seeds, schedules and rates."""
    drop = {"seed", "seeds", "lr", "lrs", "max_steps", "warmup_steps", "warmup_fraction", "betas",
            "weight_decay", "min_lr_ratio", "momentum"}

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in drop}
        return node

    module = strip(OmegaConf.to_container(run_cfg.run.module, resolve=True))
    return json.dumps([run_cfg.paper, module, run_cfg.run.data._target_, run_cfg.run.data.get("source")],
                      sort_keys=True, default=str)


def test_every_figure_trains_two_steps_at_full_size(full, tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATE_CACHE", str(tmp_path / "cache"))
    torch_threads = torch.get_num_threads()
    covered = []
    try:
        for figure, run_cfg, compiled in chosen_runs(full):
            directory = runs.ensure(run_cfg, tmp_path / "out")
            metrics = runs.read_metrics(directory)
            assert metrics["steps"] == 2, (figure, metrics["status"])
            assert metrics["status"] == "finished", figure
            assert all(math.isfinite(t["train_loss"]) for t in metrics["train"]), figure
            kept = (directory / "checkpoints" / "last.ckpt").is_file()
            assert kept == (run_cfg.run.trainer.keep_checkpoints == "last"), figure
            covered.append((figure, compiled))
            gc.collect()  # free the last full-size model (and its optimizer) before the next
    finally:
        torch.set_num_threads(torch_threads)
    papers = {figure.split("/")[0] for figure, _ in covered}
    assert papers == {f.split("/")[0] for f in full}
    assert sum(compiled for _, compiled in covered) == 1
    shutil.rmtree(tmp_path / "out", ignore_errors=True)  # ~1.2 GB of full-size checkpoints
