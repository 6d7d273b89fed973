"""The trainer: determinism, reuse, resume after a kill, divergence recorded as a result."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from replicate import config as C
from replicate import runs
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
