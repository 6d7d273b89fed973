"""The one place that builds a Lightning Trainer and trains a run.

``prepare(run_cfg)`` checks a run before anything is written: ``max_steps`` positive, the data
present, the module and its optimiser built from their ``_target_`` configs (each failure one
line naming the part). ``fit(run_cfg, run_dir)`` then trains to ``trainer.max_steps`` with a
checkpoint after every validation, written inside the run folder (temporary file, fsync,
rename), and returns the run's metrics. A checkpoint carries the training code's hash and the
random states (torch, numpy, ``random``), so a run resumed from ``checkpoints/last.ckpt`` after
a kill continues bit-identically, and one written by other code, or already at ``max_steps``
without metrics (a forced rerun), is moved aside and the run retrained with a line saying so.
SIGTERM or SIGINT (and the death of the Snakemake process that started the job) end training
at the next step with a checkpoint and :class:`replicate.runs.Interrupted`. The metrics:

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
    code_sha256       hash of the training code (replicate.runs.run_code_sha256)
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from replicate import hardware
from replicate import runs
from replicate.pipeline import process_alive


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
    """Rewrite ``last.ckpt`` after every validation (atomically, see :class:`RunFolderCheckpointIO`:
    a kill mid-write leaves the previous checkpoint intact), so a resumed run has its full
    validation history."""

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
        trainer.save_checkpoint(self.path, weights_only=False)  # full state: resumable
        self.saved_step = trainer.global_step


class RunFolderCheckpointIO(TorchCheckpointIO):
    """Checkpoints written next to their target (a temporary file in the run folder, fsync,
    ``os.replace``), never through ``$TMPDIR``; a write that fails (a full disk, a read-only
    folder) removes the temporary file and names the checkpoint in its error."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise runs.naming(err, path) from None


class RunIdentity(Callback):
    """What a checkpoint needs beyond Lightning's state: the hash of the code that trained it and
    the random states (torch CPU and CUDA, numpy, ``random``) at the moment it was written, which
    are restored before the first step after a resume (so dropout masks continue the same stream)."""

    def __init__(self, code_sha256: str):
        self.code_sha256 = code_sha256
        self._restore: dict | None = None

    def state_dict(self):
        return {"code_sha256": self.code_sha256, "rng": rng_states()}

    def load_state_dict(self, state_dict):
        self._restore = state_dict.get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._restore is not None:
            set_rng_states(self._restore)
            self._restore = None


def rng_states() -> dict[str, Any]:
    """The global random states, in types a ``weights_only`` checkpoint load accepts."""
    key, words, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [key, words.tolist(), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    key, words, pos, has_gauss, gauss = states["numpy"]
    torch.set_rng_state(states["torch"])
    np.random.set_state((key, np.asarray(words, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class StopOnSignal(Callback):
    """SIGTERM and SIGINT end training at the next step boundary with a checkpoint there and
    :class:`replicate.runs.Interrupted` (after the step's validation when one is due, so the
    checkpoint is one an uninterrupted run passes through). Under Snakemake (the job's process
    group leader is a ``snakemake`` process) the leader's death does the same, so a killed
    workflow leaves no orphan training process. Installed when training starts, after
    Lightning's own handlers; Lightning restores the previous handlers when fit ends."""

    LEADER_CHECK_SECONDS = 2.0

    def __init__(self, checkpoint: CheckpointAfterValidation, max_steps: int):
        self.checkpoint, self.max_steps = checkpoint, max_steps
        self.signum: int | None = None
        self.why = ""
        self.leader = snakemake_leader()
        self._leader_checked = time.monotonic()

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._record)

    def _record(self, signum, frame):
        self.signum = self.signum or signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._check_leader()
        step = trainer.global_step
        if self.signum and step < self.max_steps and step % trainer.val_check_batch:
            self.stop(trainer)

    def on_validation_end(self, trainer, pl_module):  # after CheckpointAfterValidation's save
        if self.signum and not trainer.sanity_checking and trainer.global_step < self.max_steps:
            self.stop(trainer)

    def _check_leader(self):
        if self.leader is None or time.monotonic() - self._leader_checked < self.LEADER_CHECK_SECONDS:
            return
        self._leader_checked = time.monotonic()
        if not process_alive(self.leader) and not self.signum:
            self.signum, self.why = signal.SIGTERM, f"the snakemake process {self.leader} is gone"

    def stop(self, trainer):
        self.checkpoint.save(trainer)
        raise runs.Interrupted(self.signum, trainer.global_step, self.checkpoint.path, self.why)


def snakemake_leader() -> int | None:
    """The pid of this process's group leader when it is a ``snakemake`` process (a job that
    Snakemake started locally runs in its group), else None."""
    leader = os.getpgid(0)
    if leader == os.getpid():
        return None
    try:
        cmdline = Path(f"/proc/{leader}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return leader if any(Path(part.decode(errors="replace")).name.startswith("snakemake")
                         for part in cmdline[:3]) else None


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


def build_trainer(run_cfg: DictConfig, run_dir: Path, callbacks: list[Callback]) -> L.Trainer:
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
        callbacks=[*callbacks, progress_callback(t)],
        enable_progress_bar=sys.stderr.isatty(),  # else LogProgress writes plain lines
        logger=CSVLogger(run_dir, name="logs", version=attempt_name(run_dir / "logs")),
        default_root_dir=run_dir,
        enable_checkpointing=False,  # CheckpointAfterValidation does it
        enable_model_summary=False,
        plugins=[RunFolderCheckpointIO()],
    )


def run_callbacks(run_cfg: DictConfig, run_dir: Path, code_sha256: str
                  ) -> tuple[RunRecorder, CheckpointAfterValidation, list[Callback]]:
    """The callbacks of a training run, in hook order: loss history, code hash and random states,
    the checkpoint after each validation, and the signal handling that saves one at a stop."""
    recorder = RunRecorder(run_cfg.run.trainer.log_every_n_steps)
    checkpoint = CheckpointAfterValidation(run_dir / "checkpoints" / "last.ckpt")
    stop = StopOnSignal(checkpoint, run_cfg.run.trainer.max_steps)
    return recorder, checkpoint, [recorder, RunIdentity(code_sha256), checkpoint, stop]


@dataclass
class Prepared:
    """A run's module and data, built and checked before its folder exists."""

    module: L.LightningModule
    datamodule: L.LightningDataModule


def prepare(run_cfg: DictConfig) -> Prepared:
    """Check everything a run needs before any of it is written or a model is built: a positive
    ``max_steps``, the data (its files present), then the module (seeded) and its optimiser.
    Each failure is a one-line :class:`~replicate.config.ConfigError` naming the part."""
    from replicate.config import ConfigError

    max_steps = run_cfg.run.trainer.max_steps
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ConfigError(f"{run_cfg.paper}: run.trainer.max_steps must be a positive integer, got {max_steps!r}")
    hardware.configure_process(run_cfg.hardware)
    quiet_lightning()
    L.seed_everything(run_cfg.run.seed, workers=True, verbose=False)
    datamodule = build(run_cfg, "data")
    check_data(run_cfg, datamodule)
    L.seed_everything(run_cfg.run.seed, workers=True, verbose=False)  # the module's init draws from here
    module = build(run_cfg, "module")
    check_optimiser(run_cfg, module)
    return Prepared(module, datamodule)


def fit(run_cfg: DictConfig, run_dir: Path, prepared: Prepared | None = None,
        code_sha256: str | None = None) -> dict[str, Any]:
    """Train one run (resuming from a checkpoint this code wrote) and return its metrics."""
    prepared = prepared or prepare(run_cfg)
    code_sha256 = code_sha256 or runs.run_code_sha256(run_cfg)
    hw, max_steps = run_cfg.hardware, run_cfg.run.trainer.max_steps
    module, datamodule = prepared.module, prepared.datamodule
    recorder, checkpoint, callbacks = run_callbacks(run_cfg, run_dir, code_sha256)
    last = checkpoint.path
    last.parent.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(run_cfg, run_dir, callbacks)
    resume_from = last if resumable(last, code_sha256, max_steps) else None
    print(f"training {max_steps} steps on {hw.accelerator} ({hw.precision})"
          + (f", resuming from {resume_from}" if resume_from else ""), file=sys.stderr, flush=True)
    try:
        trainer.fit(compile_submodules(module) if hw.compile else module, datamodule=datamodule,
                    ckpt_path=resume_from)
        checkpoint.save(trainer)
    except OSError as err:
        raise runs.naming(err, run_dir) from None
    return {**_metrics(recorder, module, datamodule, trainer), "code_sha256": code_sha256}


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


def check_data(run_cfg: DictConfig, datamodule) -> None:
    """Read (or check) the run's data before any training state exists: a local dataset that is
    missing (``FileNotFoundError``, e.g. ``data.path`` of a full-scale corpus) is a one-line
    :class:`ConfigError` naming the part, the target and the path."""
    from replicate.config import ConfigError

    try:
        datamodule.prepare_data()
    except FileNotFoundError as err:
        raise ConfigError(f"{run_cfg.paper}: run.data ({run_cfg.run.data.get('_target_', '?')}): "
                          f"{err}") from None


def check_optimiser(run_cfg: DictConfig, module: L.LightningModule) -> None:
    """Build the module's optimiser (and scheduler) once, before training: a value it rejects
    (``optim.lr=fast``) is a one-line :class:`ConfigError`, not a traceback from inside ``fit``.
    The optimiser built here is discarded; Lightning builds its own."""
    from replicate.config import ConfigError

    try:
        module.configure_optimizers()
    except (TypeError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{run_cfg.paper}: the optimiser of run.module ({run_cfg.run.module.get('_target_', '?')}) "
                          f"cannot be built from its config: {type(err).__name__}: {first}") from None


def resumable(path: Path, code_sha256: str, max_steps: int) -> bool:
    """Whether ``path`` is a checkpoint to resume from: readable, written by this training code,
    and short of ``max_steps``. Any other checkpoint is moved aside (``last.ckpt.corrupt-<time>``,
    ``last.ckpt.code-<its code hash>``, ``last.ckpt.complete``) and the run starts from scratch,
    with a line in the log saying so. A checkpoint at ``max_steps`` without metrics.json is a
    forced rerun (Snakemake deletes the metrics first) or a kill before the metrics were written:
    either way the run is trained again rather than "resumed" through zero steps."""
    if not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any unreadable file: truncated zip, empty file, pickle error
        set_aside(path, f"corrupt-{time.strftime('%Y%m%dT%H%M%S')}", f"cannot be read ({type(err).__name__})")
        return False
    recorded = (state.get("callbacks", {}).get(RunIdentity.__qualname__) or {}).get("code_sha256")
    if recorded != code_sha256:
        set_aside(path, f"code-{(recorded or 'unknown')[:12]}",
                  f"was written by {'code ' + recorded[:12] if recorded else 'code of unknown hash'}, "
                  f"not by the training code now ({code_sha256[:12]})")
        return False
    if state.get("global_step", 0) >= max_steps:
        set_aside(path, "complete", f"is at step {state['global_step']} of {max_steps} but the run has no "
                  "metrics.json (a forced rerun, or a kill before they were written)")
        return False
    return True


def set_aside(path: Path, suffix: str, why: str) -> None:
    aside = path.with_name(f"{path.name}.{suffix}")
    os.replace(path, aside)
    print(f"checkpoint {path} {why}; moved to {aside.name}, training from scratch", file=sys.stderr, flush=True)


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
