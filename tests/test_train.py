"""The trainer: determinism, reuse, resume after a kill, divergence recorded as a result."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from replicate import config as C
from replicate import runs
from replicate.cli import main
from replicate.train import fit

FIG = "gated_attention/attention_sink"


def smoke_run(**trainer):
    overrides = [f"figure.run.trainer.{k}={v}" for k, v in trainer.items()]
    return C.run_config(C.compose(FIG, "cpu", "smoke", overrides), 1)  # headwise gate, seed 0


def test_same_config_and_seed_give_bit_identical_metrics(tmp_path):
    a = runs.read_metrics(runs.ensure(smoke_run(), tmp_path / "a"))
    b = runs.read_metrics(runs.ensure(smoke_run(), tmp_path / "b"))
    for key in ("train", "val", "probes", "final_val_loss", "params"):
        assert a[key] == b[key], key
    assert a["status"] == "finished" and a["steps"] == 20


def test_finished_run_is_reused_not_recomputed(tmp_path, monkeypatch):
    directory = runs.ensure(smoke_run(), tmp_path)
    monkeypatch.setattr("replicate.train.fit", lambda *a: pytest.fail("a finished run was retrained"))
    assert runs.ensure(smoke_run(), tmp_path) == directory


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    settings = ["max_steps=80", "val_check_interval=10"]
    args = [sys.executable, "-m", "replicate", "run", FIG, "point=1", "hardware=cpu", "scale=smoke",
            *[f"figure.run.trainer.{s}" for s in settings]]
    reference = subprocess.run([*args, f"out={tmp_path / 'ref'}"], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, f"out={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not list(out.glob("runs/*/*/checkpoints/last.ckpt")):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint before the run ended"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = next(out.glob("runs/*/*"))
    assert not runs.is_finished(run_dir)
    step_at_kill = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < step_at_kill < 80

    resumed = subprocess.run([*args, f"out={out}"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "checkpoints/last.ckpt" in resumed.stderr
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["attempt_1", "attempt_2"]  # both logs kept
    a = runs.read_metrics(next((tmp_path / "ref").glob("runs/*/*")))
    b = runs.read_metrics(run_dir)
    assert b["steps"] == 80
    assert a["val"] == b["val"] and a["train"] == b["train"]


class NanAfter(L.LightningModule):
    """A regression model whose loss turns NaN at a given step (a divergence on demand)."""

    def __init__(self, nan_at: int):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.nan_at = nan_at

    def training_step(self, batch, batch_idx):
        loss = self.lin(batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step >= self.nan_at else loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.lin(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Noise(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(400, 2)), batch_size=4)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)


def test_nonfinite_loss_ends_the_run_as_diverged(tmp_path):
    cfg = OmegaConf.create({
        "paper": "test", "hardware": OmegaConf.to_container(C.load_hardware("cpu")),
        "run": {"seed": 0, "module": {"_target_": f"{__name__}.NanAfter", "nan_at": 7},
                "data": {"_target_": f"{__name__}.Noise"},
                "trainer": {"max_steps": 50, "val_check_interval": 5, "limit_val_batches": 1,
                            "gradient_clip_val": None, "log_every_n_steps": 1}}})
    metrics = fit(cfg, tmp_path)
    assert metrics["status"] == "diverged"
    assert metrics["diverged_at_step"] == 8  # the 8th optimizer step produced the first NaN
    assert metrics["steps"] < 50
    assert math.isnan(metrics["final_val_loss"])
    json.dumps(metrics)  # recorded, serialisable


def test_a_run_records_the_hash_of_its_training_code(tmp_path):
    run_cfg = smoke_run()
    directory = runs.ensure(run_cfg, tmp_path)
    code = runs.run_code_sha256(run_cfg)
    assert runs.read_metrics(directory)["code_sha256"] == code
    assert "replicate/papers/gated_attention/module.py" in runs.code_files(run_cfg)
    state = torch.load(directory / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["callbacks"]["RunIdentity"]["code_sha256"] == code


def test_a_run_finished_by_other_code_is_retrained_from_scratch(tmp_path, monkeypatch, capsys):
    directory = runs.ensure(smoke_run(), tmp_path)
    before = runs.read_metrics(directory)
    monkeypatch.setattr(runs, "run_code_sha256", lambda run_cfg: "e" * 64)  # the code was edited
    assert runs.ensure(smoke_run(), tmp_path) == directory
    err = capsys.readouterr().err
    assert f"the training code is now {'e' * 12}: retraining" in err
    assert "training from scratch" in err and "resuming" not in err
    aside = directory / "checkpoints" / f"last.ckpt.code-{before['code_sha256'][:12]}"
    assert aside.is_file()
    after = runs.read_metrics(directory)
    assert after["code_sha256"] == "e" * 64 and after["steps"] == 20
    assert after["val"] == before["val"]  # the same code really ran: same numbers
    assert math.isfinite(after["step_seconds"])  # steps were taken, none "resumed" through


def test_a_legacy_run_without_a_code_hash_is_retrained(tmp_path, capsys):
    directory = runs.ensure(smoke_run(), tmp_path)
    metrics = runs.read_metrics(directory)
    del metrics["code_sha256"]
    runs.write_json_atomic(directory / "metrics.json", metrics)
    assert "recorded no code hash" in runs.stale_code(directory, runs.run_code_sha256(smoke_run()))
    runs.ensure(smoke_run(), tmp_path)
    assert "recorded no code hash" in capsys.readouterr().err
    assert "code_sha256" in runs.read_metrics(directory)


def test_a_checkpoint_at_max_steps_without_metrics_is_retrained_not_resumed(tmp_path, capsys):
    """`snakemake --forcerun train` deletes metrics.json and keeps the finished checkpoint."""
    directory = runs.ensure(smoke_run(), tmp_path)
    before = runs.read_metrics(directory)
    (directory / "metrics.json").unlink()
    runs.ensure(smoke_run(), tmp_path)
    err = capsys.readouterr().err
    assert "is at step 20 of 20 but the run has no metrics.json" in err and "resuming" not in err
    after = runs.read_metrics(directory)
    assert (directory / "checkpoints" / "last.ckpt.complete").is_file()
    assert after["val"] == before["val"] and math.isfinite(after["step_seconds"])


def test_a_shipped_run_without_its_checkpoint_is_trained_again_when_a_notebook_needs_its_weights(tmp_path, capsys):
    directory = runs.ensure(smoke_run(), tmp_path)
    weights = runs.load_module(directory).state_dict()
    metrics = runs.read_metrics(directory)
    shutil.rmtree(directory / "checkpoints")  # what a clone has: metrics.json and config.yaml
    again = runs.load_module(directory).state_dict()
    assert "training it again" in capsys.readouterr().err
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert runs.read_metrics(directory)["val"] == metrics["val"]


def test_zero_max_steps_is_refused_before_a_run_folder_exists(tmp_path):
    with pytest.raises(C.ConfigError, match="max_steps must be a positive integer, got 0"):
        runs.ensure(smoke_run(max_steps=0), tmp_path)
    assert not (tmp_path / "runs").exists()


def test_an_optimiser_value_of_the_wrong_type_is_one_line_before_a_run_folder_exists(tmp_path):
    run_cfg = C.run_config(C.compose(FIG, "cpu", "smoke", ["figure.run.module.optim.lr=fast"]), 1)
    with pytest.raises(C.ConfigError, match=r"the optimiser of run\.module .*GatedAttentionLM.*TypeError") as err:
        runs.ensure(run_cfg, tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch, capsys, code):
    def no_space(*args, **kwargs):
        raise OSError(code, os.strerror(code))  # a failed write names no file

    monkeypatch.setattr(torch, "save", no_space)
    status = main(["run", FIG, "point=1", "hardware=cpu", "scale=smoke", f"out={tmp_path}"])
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # beside progress lines
    assert status == 2 and errors == [err.splitlines()[-1]] and "Traceback" not in err, err
    assert "checkpoints/last.ckpt" in errors[0] and os.strerror(code) in errors[0]
    assert not list(tmp_path.glob("runs/*/*/checkpoints/.last.ckpt.*"))  # no temporary file left


def test_checkpoints_are_written_in_the_run_folder_not_through_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_such_tmpdir"))
    directory = runs.ensure(smoke_run(), tmp_path / "out")
    assert (directory / "checkpoints" / "last.ckpt").is_file()


def test_resume_under_dropout_is_bit_identical(tmp_path):
    """The random states (dropout masks) ride in the checkpoint: kill -9 after a validation and
    resume gives the uninterrupted run's losses exactly."""
    args = [sys.executable, "-m", "replicate", "run", FIG, "point=1", "hardware=cpu", "scale=smoke",
            "+figure.run.module.model.dropout=0.1", "figure.run.trainer.max_steps=60",
            "figure.run.trainer.val_check_interval=10"]
    reference = subprocess.run([*args, f"out={tmp_path / 'ref'}"], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, f"out={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not list(out.glob("runs/*/*/checkpoints/last.ckpt")):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint before the run ended"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = next(out.glob("runs/*/*"))
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert 0 < state["global_step"] < 60

    without_rng = tmp_path / "without_rng" / run_dir.relative_to(out)  # the same checkpoint, minus its RNG
    shutil.copytree(run_dir, without_rng)
    del state["callbacks"]["RunIdentity"]["rng"]
    torch.save(state, without_rng / "checkpoints" / "last.ckpt")

    for where in (out, tmp_path / "without_rng"):
        resumed = subprocess.run([*args, f"out={where}"], capture_output=True, text=True)
        assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-2000:]
    a = runs.read_metrics(next((tmp_path / "ref").glob("runs/*/*")))
    b, c = runs.read_metrics(run_dir), runs.read_metrics(without_rng)
    assert a["train"] == b["train"] and a["val"] == b["val"]
    assert a["train"] != c["train"]  # without the saved states the dropout masks differ
