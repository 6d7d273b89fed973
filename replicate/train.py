"""The one place that builds a Lightning Trainer and trains a run.

``fit(run_cfg, run_dir)`` seeds everything, instantiates the run's LightningModule and
LightningDataModule from their ``_target_`` configs, trains to ``trainer.max_steps`` with a
checkpoint after every validation (resuming from ``checkpoints/last.ckpt`` when a
previous attempt was killed), and returns the run's metrics:

    status            "finished" | "diverged" (a non-finite loss ends the run; it is a result)
    diverged_at_step  step of the first non-finite loss, else None
    steps, params     optimizer steps taken, trainable parameters
    train             [{"step", "train_loss"}] every log_every_n_steps
    val               [{"step", "val_loss"}] at every validation
    final_val_loss    last validation loss (nan when diverged)
    step_seconds      median wall time of a training step (validation excluded)
    wall_seconds      wall time of the whole run, summed over resumed attempts
    probes            module.probe_metrics(datamodule) when the module defines it
    data              datamodule.provenance (corpus sha256 ...) when the datamodule has it
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from replicate import hardware


class RunRecorder(Callback):
    """Loss history, divergence detection and step timing; its state rides in the checkpoint
    so a resumed run reports one continuous history."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.state: dict[str, Any] = {"train": [], "val": [], "diverged_at_step": None,
                                      "step_seconds": [], "wall_seconds": 0.0}
        self._t_step = self._t_fit = 0.0

    def on_fit_start(self, trainer, pl_module):
        self._t_fit = time.perf_counter()

    def wall_seconds(self) -> float:
        """Wall time of this attempt plus that of the attempts before a resume."""
        return self.state["wall_seconds"] + time.perf_counter() - self._t_fit

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t_step = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.state["step_seconds"].append(time.perf_counter() - self._t_step)
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        step = trainer.global_step
        if not math.isfinite(loss):
            self._diverge(trainer, step)
        if step % self.log_every == 0 or not math.isfinite(loss):
            self.state["train"].append({"step": step, "train_loss": loss})

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics["val_loss"])
        self.state["val"].append({"step": trainer.global_step, "val_loss": loss})
        if not math.isfinite(loss):
            self._diverge(trainer, trainer.global_step)

    def _diverge(self, trainer, step):
        if self.state["diverged_at_step"] is None:
            self.state["diverged_at_step"] = step
        trainer.should_stop = True

    def state_dict(self):
        saved = {k: v for k, v in self.state.items() if k != "step_seconds"}
        return {**saved, "wall_seconds": self.wall_seconds()}

    def load_state_dict(self, state_dict):
        self.state.update(state_dict)


class CheckpointAfterValidation(Callback):
    """Rewrite ``last.ckpt`` after every validation (atomically: a kill mid-write leaves the
    previous checkpoint intact), so a resumed run has its full validation history."""

    def __init__(self, path: Path):
        self.path = path
        self.saved_step: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.save(trainer)

    def save(self, trainer):
        """Write the checkpoint unless this step's is already written (the final validation)."""
        if trainer.global_step == self.saved_step:
            return
        tmp = self.path.with_suffix(".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # full state: resumable
        os.replace(tmp, self.path)
        self.saved_step = trainer.global_step


class TrainProgress(TQDMProgressBar):
    """The training bar only: validation bars would bury it in the job's log."""

    def init_validation_tqdm(self):
        return Tqdm(disable=True)


class LogProgress(Callback):
    """Progress for a log file (stderr is not a terminal): one line per tenth of the run."""

    def __init__(self, max_steps: int):
        self.every = max(1, max_steps // 10)
        self.max_steps = max_steps

    def on_train_start(self, trainer, pl_module):
        self.first_step, self.started = trainer.global_step, time.perf_counter()  # after a resume too

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every and step != self.max_steps:
            return
        losses = "  ".join(f"{k} {float(v):.4f}" for k, v in trainer.callback_metrics.items()
                           if k in ("train_loss", "val_loss"))
        rate = (step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
        print(f"step {step:>6}/{self.max_steps} ({100 * step // self.max_steps:3d}%)  {losses}  "
              f"{rate:.1f} steps/s", file=sys.stderr, flush=True)


def progress_callback(trainer_cfg: DictConfig) -> Callback:
    """A live bar in a terminal (refreshed every ``log_every_n_steps``), plain lines in a job's log."""
    if sys.stderr.isatty():
        return TrainProgress(refresh_rate=max(1, trainer_cfg.log_every_n_steps))
    return LogProgress(trainer_cfg.max_steps)


def quiet_lightning() -> None:
    """Keep a job's log to what a reader needs: no Lightning banners, tips or upstream deprecations."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def attempt_name(logs: Path) -> str:
    """The CSV log folder of this attempt: ``attempt_1``, then ``attempt_2`` after a resume
    (a resumed run keeps the earlier attempt's log instead of overwriting it)."""
    return f"attempt_{len(list(logs.glob('attempt_*'))) + 1}"


def build_trainer(run_cfg: DictConfig, run_dir: Path, recorder: RunRecorder,
                  checkpoint: CheckpointAfterValidation) -> L.Trainer:
    t = run_cfg.run.trainer
    return L.Trainer(
        **hardware.trainer_kwargs(run_cfg.hardware),
        max_steps=t.max_steps,
        max_epochs=-1,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        callbacks=[recorder, checkpoint, progress_callback(t)],
        enable_progress_bar=sys.stderr.isatty(),  # else LogProgress writes plain lines
        logger=CSVLogger(run_dir, name="logs", version=attempt_name(run_dir / "logs")),
        default_root_dir=run_dir,
        enable_checkpointing=False,  # CheckpointAfterValidation does it
        enable_model_summary=False,
    )


def fit(run_cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one run (resuming if a checkpoint exists) and return its metrics."""
    hw = run_cfg.hardware
    hardware.configure_process(hw)
    quiet_lightning()
    L.seed_everything(run_cfg.run.seed, workers=True, verbose=False)
    module = build(run_cfg, "module")
    datamodule = build(run_cfg, "data")
    prepare(run_cfg, datamodule)
    recorder = RunRecorder(run_cfg.run.trainer.log_every_n_steps)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = CheckpointAfterValidation(last)
    trainer = build_trainer(run_cfg, run_dir, recorder, checkpoint)
    resume_from = last if usable_checkpoint(last) else None
    print(f"training {run_cfg.run.trainer.max_steps} steps on {hw.accelerator} ({hw.precision})"
          + (f", resuming from {resume_from}" if resume_from else ""), file=sys.stderr, flush=True)
    trainer.fit(compile_submodules(module) if hw.compile else module, datamodule=datamodule,
                ckpt_path=resume_from)
    checkpoint.save(trainer)
    return _metrics(recorder, module, datamodule, trainer)


def compile_submodules(module: L.LightningModule) -> L.LightningModule:
    """``torch.compile`` (in place, ``nn.Module.compile``) every submodule the LightningModule calls:
    its direct children, and the items of a child ModuleList / ModuleDict. Compiling the
    LightningModule itself makes Lightning compile ``training_step``
    too, and dynamo cannot trace ``self.log`` there (torch 2.13, Lightning 2.6: every run with
    ``compile: true`` failed at its first step). In place, so state_dict keys and checkpoints are
    unchanged."""
    from torch import nn

    def visit(parent: nn.Module) -> None:
        for child in parent.children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                visit(child)
            else:
                child.compile()

    visit(module)
    return module


def build(run_cfg: DictConfig, part: str):
    """Instantiate ``run.<part>`` (module or data); a config the constructor rejects (a wrong key,
    a value of the wrong type) is a one-line :class:`ConfigError` naming the part and target."""
    from hydra.errors import InstantiationException

    from replicate.config import ConfigError

    node = run_cfg.run[part]
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ConfigError(f"{run_cfg.paper}: run.{part} ({node.get('_target_', '?')}) cannot be built "
                          f"from its config: {type(cause).__name__}: {first}") from None


def prepare(run_cfg: DictConfig, datamodule) -> None:
    """Read (or check) the run's data before any training state exists: a local dataset that is
    missing (``FileNotFoundError``, e.g. ``data.path`` of a full-scale corpus) is a one-line
    :class:`ConfigError` naming the part, the target and the path, so no run directory is left."""
    from replicate.config import ConfigError

    try:
        datamodule.prepare_data()
    except FileNotFoundError as err:
        raise ConfigError(f"{run_cfg.paper}: run.data ({run_cfg.run.data.get('_target_', '?')}): "
                          f"{err}") from None


def usable_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint to resume from. One that cannot be read (a kill during a
    save by an older version, a full disk) is moved aside to ``last.ckpt.corrupt-<time>`` and the
    run starts from scratch, with a line in the log saying so."""
    if not path.is_file():
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception as err:  # any unreadable file: truncated zip, empty file, pickle error
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        print(f"checkpoint {path} cannot be read ({type(err).__name__}); moved to {aside.name}, "
              "training from scratch", file=sys.stderr, flush=True)
        return False


def _metrics(recorder: RunRecorder, module, datamodule, trainer: L.Trainer) -> dict[str, Any]:
    state = recorder.state
    diverged = state["diverged_at_step"] is not None
    val = state["val"]
    probes = {}
    if hasattr(module, "probe_metrics") and not diverged:
        with torch.no_grad():
            probes = module.probe_metrics(datamodule)
    return {
        "status": "diverged" if diverged else "finished",
        "diverged_at_step": state["diverged_at_step"],
        "steps": trainer.global_step,
        "params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "train": state["train"],
        "val": val,
        "final_val_loss": val[-1]["val_loss"] if val and not diverged else float("nan"),
        "step_seconds": statistics.median(state["step_seconds"]) if state["step_seconds"] else float("nan"),
        "wall_seconds": recorder.wall_seconds(),
        "probes": probes,
        "data": getattr(datamodule, "provenance", {}),
    }
