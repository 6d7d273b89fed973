"""The run store: one finished training run = one directory.

    <out>/runs/<paper>/<run_hash>/
        config.yaml        the resolved run config + hardware (what the hash is of)
        checkpoints/       last.ckpt, rewritten after every validation (the resume point);
                           deleted once metrics.json is written when the run's
                           trainer.keep_checkpoints is none (the default at scale full)
        logs/              Lightning CSV logs
        metrics.json       written last and atomically: its presence means "finished"

A run whose directory already holds metrics.json is reused, never recomputed; the hash is of
the resolved config (replicate.config.run_hash), so any figure asking for the same run shares it.
A result is also bound to the code that computed it: metrics.json and every checkpoint carry
``code_sha256`` (:func:`code_sha256` of the paper's training-code closure), and a run finished
by other code (or by a version that did not record it) is retrained, not reused.

Writers sharing one run store wait for each other: a process asking for a run another process
is training blocks on the run's lock (a line in its log every minute) for at most
``REPLICATE_RUN_LOCK_TIMEOUT`` seconds (default one day), then is refused with one line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from replicate import config as C

if TYPE_CHECKING:
    import pandas

METRICS = "metrics.json"
LOCK_TIMEOUT_ENV = "REPLICATE_RUN_LOCK_TIMEOUT"
LOCK_TIMEOUT_DEFAULT = 24 * 3600.0
LOCK_PROGRESS_EVERY = 60.0


class Interrupted(Exception):
    """Training stopped by a signal (SIGTERM, SIGINT) or by the loss of the Snakemake process that
    started it, after writing a checkpoint: a rerun resumes from it. ``exit_status`` is the
    shell's convention for death by that signal (128 + its number: 143, 130)."""

    def __init__(self, signum: int, step: int, checkpoint: Path, why: str = ""):
        self.signum, self.step, self.checkpoint = int(signum), int(step), Path(checkpoint)
        self.exit_status = 128 + self.signum
        name = signal.Signals(self.signum).name
        super().__init__(f"interrupted at step {step} ({why or name}); rerun to resume from {checkpoint}")


def run_dir(out: str | Path, run_cfg: DictConfig) -> Path:
    return Path(out) / "runs" / run_cfg.paper / C.run_hash(run_cfg)


def is_finished(directory: Path) -> bool:
    return (directory / METRICS).is_file()


def code_files(run_cfg: DictConfig) -> list[str]:
    """The paper's source files the run's training imports (repository-relative): the paper
    package and the modules its ``_target_`` s name, with their imports inside the package
    (the same closure as the pipeline's train-job inputs, ``Plan.training_code``)."""
    from replicate.pipeline import _import_closure, _targets

    package = f"replicate.papers.{run_cfg.paper}"
    modules = sorted({target.rsplit(".", 1)[0] for target in _targets(OmegaConf.to_container(run_cfg.run))})
    return _import_closure([package, *modules], package)


def code_sha256(files: list[str]) -> str:
    """sha256 over the repository-relative path and the bytes of every file in ``files``."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((C.REPO_ROOT / name).read_bytes()).digest())
    return digest.hexdigest()


def run_code_sha256(run_cfg: DictConfig) -> str:
    """The code identity of a run: :func:`code_sha256` of its :func:`code_files`."""
    return code_sha256(code_files(run_cfg))


def stale_code(directory: Path, code: str) -> str | None:
    """Why the finished run in ``directory`` is not this code's result (None when it is)."""
    recorded = read_metrics(directory).get("code_sha256")
    if recorded == code:
        return None
    was = f"code {recorded[:12]}" if recorded else "a version that recorded no code hash"
    return f"run {directory} was trained by {was}; the training code is now {code[:12]}"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write strict JSON through a temporary file and a rename: readers never see half a file.

    Non-finite numbers (a diverged loss) are written as null and listed under ``non_finite``
    (``replicate.claims.strict_payload``), so strict parsers and ``jq`` read every file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = strict_payload(payload) if isinstance(payload, dict) else strict(payload)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(clean, fh, indent=1, allow_nan=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for every reader
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise naming(err, path) from None


def naming(err: OSError, path: Path) -> OSError:
    """``err`` with ``path`` as its file name when it has none (a write that hit a full disk
    reports no file), so the one-line error names what could not be written."""
    if err.filename is not None:
        return err
    return type(err)(err.errno or errno.EIO, err.strerror or str(err), str(path))


def strict(obj: Any, notes: dict[str, str] | None = None, path: str = "") -> Any:
    """``obj`` with every non-finite float replaced by None and ``notes[path] = 'nan'|'inf'|'-inf'``.

    Objects with ``to_dict`` (claims.Estimate) become dicts, numpy values plain numbers, tuples lists.
    """
    notes = {} if notes is None else notes
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        notes[path or "."] = str(obj)
        return None
    if isinstance(obj, Mapping):
        return {str(k): strict(v, notes, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v, notes, f"{path}[{i}]") for i, v in enumerate(obj)]
    return obj


def strict_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A dict for ``json.dump(..., allow_nan=False)``: non-finite numbers become null and are listed
    under ``non_finite`` (path -> 'nan' / 'inf'), so nothing is lost silently."""
    notes: dict[str, str] = {}
    clean = strict({k: v for k, v in payload.items() if k != "non_finite"}, notes)
    notes = {**(payload.get("non_finite") or {}), **notes}
    return {**clean, "non_finite": notes} if notes else clean


def read_json(path: Path) -> Any:
    """A json written by :func:`write_json_atomic`, with its ``non_finite`` values restored as floats."""
    payload = json.loads(Path(path).read_text())
    for where, text in (payload.get("non_finite") or {}).items() if isinstance(payload, dict) else ():
        _set_path(payload, where, float(text))
    return payload


def _set_path(obj: Any, where: str, value: float) -> None:
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", where)]
    for key in keys[:-1]:
        obj = obj[key]
    obj[keys[-1]] = value


def read_metrics(directory: Path) -> dict:
    return read_json(directory / METRICS)


def ensure(run_cfg: DictConfig, out: str | Path) -> Path:
    """Train the run unless this code has finished it; return its directory.

    The config is checked first (data paths, module, optimiser, ``max_steps``: a one-line
    :class:`~replicate.config.ConfigError`), before the run directory exists. The directory is
    then locked while it trains (:class:`RunLock`): a second process asking for the same run,
    from this checkout or another sharing the run store, waits for it and reuses its result.
    A run finished by other training code loses its metrics.json and is retrained.
    """
    directory = run_dir(out, run_cfg)
    code = run_code_sha256(run_cfg)
    if is_finished(directory) and not stale_code(directory, code):
        return directory
    from replicate.train import fit, prepare

    prepared = prepare(run_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    with RunLock(directory):
        if is_finished(directory):  # another process may have finished it while we waited
            reason = stale_code(directory, code)
            if reason is None:
                return directory
            print(f"{reason}: retraining", file=sys.stderr, flush=True)
            (directory / METRICS).unlink()
        (directory / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg))
        write_json_atomic(directory / METRICS, fit(run_cfg, directory, prepared, code))
        drop_checkpoints(run_cfg, directory)
    return directory


def drop_checkpoints(run_cfg: DictConfig, directory: Path) -> None:
    """Delete a finished run's checkpoints when ``trainer.keep_checkpoints`` is ``none`` (metrics.json
    is already written, so the run stays finished and is reused without them)."""
    if run_cfg.run.trainer.get("keep_checkpoints", "last") != "none" or not is_finished(directory):
        return
    shutil.rmtree(directory / "checkpoints", ignore_errors=True)


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.lock`` holding the holder's pid and host.

    A lock held by another process is waited for, with a line on stderr when the wait starts
    and every ``LOCK_PROGRESS_EVERY`` seconds; after ``timeout`` seconds (``REPLICATE_RUN_LOCK_TIMEOUT``,
    default one day) the wait ends with a one-line :class:`~replicate.config.ConfigError` naming
    the holder. A failed job is never the outcome of a wait, so a workflow manager has no reason
    to delete the holder's output.
    """

    def __init__(self, directory: Path, timeout: float | None = None, shared: bool = False):
        self.path = Path(directory) / ".lock"
        self.timeout = lock_timeout() if timeout is None else timeout
        self.shared = shared  # a reader: waits for the trainer, writes nothing
        self.fh = None

    def __enter__(self) -> "RunLock":
        import socket

        self.fh = open(self.path, "r" if self.shared else "a+")
        try:
            self._wait()
        except BaseException:
            self.fh.close()
            raise
        if self.shared:
            return self
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.fh.flush()
        return self

    def _wait(self) -> None:
        import fcntl

        started, last_line = time.monotonic(), None
        while True:
            try:
                fcntl.flock(self.fh, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if waited >= self.timeout:
                raise C.ConfigError(f"run {self.path.parent} is still being trained by {self.holder()} "
                                    f"after {waited:.0f} s of waiting ({LOCK_TIMEOUT_ENV}); wait for it to "
                                    "finish (or stop that process)")
            if last_line is None or time.monotonic() - last_line >= LOCK_PROGRESS_EVERY:
                print(f"run {self.path.parent} is being trained by {self.holder()}; waiting for it "
                      f"({waited / 60:.0f} of at most {self.timeout / 60:.0f} min)", file=sys.stderr, flush=True)
                last_line = time.monotonic()
            time.sleep(min(1.0, max(self.timeout - waited, 0.01)))

    def holder(self) -> str:
        self.fh.seek(0)
        return self.fh.read().strip() or "another process"

    def __exit__(self, *exc) -> None:
        self.fh.close()  # closing releases the lock; the file stays (harmless, tiny)


def lock_timeout() -> float:
    """Seconds to wait for a run another process trains (``REPLICATE_RUN_LOCK_TIMEOUT``)."""
    text = os.environ.get(LOCK_TIMEOUT_ENV, "")
    try:
        return float(text) if text else LOCK_TIMEOUT_DEFAULT
    except ValueError:
        raise C.ConfigError(f"{LOCK_TIMEOUT_ENV}={text!r} is not a number of seconds") from None


def wait_for_writer(directory: Path) -> None:
    """Return once no process is training the run in ``directory`` (at once when none is)."""
    if (directory / ".lock").is_file():
        with RunLock(directory, shared=True):
            pass


def figure_runs(cfg: DictConfig, out: str | Path, train_missing: bool = False) -> "pandas.DataFrame":
    """One row per sweep point of a figure: its swept values, run directory and metrics.

    Columns: ``point``, the last component of every swept key (``gate``, ``seed``, ``lr`` ...),
    ``run_dir``, ``status``, and every key of the run's metrics.json.
    A run another process is training is waited for; a run finished by other training code
    counts as missing.
    """
    rows = []
    for k, (values, run_cfg) in enumerate(zip(C.points(cfg), C.run_configs(cfg))):
        directory = run_dir(out, run_cfg)
        if train_missing:
            directory = ensure(run_cfg, out)
        else:
            wait_for_writer(directory)
            if not is_finished(directory):
                raise FileNotFoundError(f"run for {cfg.figure.paper}/{cfg.figure.name} point={k} "
                                        f"has not finished: {directory} (run the pipeline first)")
            reason = stale_code(directory, run_code_sha256(run_cfg))
            if reason:
                raise FileNotFoundError(f"{reason}: retrain it (delete {directory / METRICS} and rerun "
                                        "the pipeline)")
        swept = {key.rsplit(".", 1)[-1]: value for key, value in values.items()}
        rows.append({"point": k, **swept, "run_dir": str(directory), **read_metrics(directory)})
    import pandas as pd  # here, not at import: a training job never needs it

    return pd.DataFrame(rows)


def load_module(directory: str | Path):
    """The trained LightningModule of a finished run (weights of its last checkpoint), in eval mode."""
    import torch
    from hydra.utils import instantiate

    directory = Path(directory)
    run_cfg = OmegaConf.load(directory / "config.yaml")
    checkpoint = directory / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        kept = run_cfg.run.trainer.get("keep_checkpoints", "last")
        if kept == "none":
            raise FileNotFoundError(f"run {directory} has no checkpoint (its trainer.keep_checkpoints is {kept}): "
                                    "set run.trainer.keep_checkpoints: last in the figure's scale block and "
                                    "delete the run directory to retrain it")
        restore_weights(directory, run_cfg)
    module = instantiate(run_cfg.run.module, _convert_="all")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    return module.eval()


def restore_weights(directory: Path, run_cfg: DictConfig) -> None:
    """Train again a finished run whose checkpoint is not here (a clone ships each run's metrics
    and config, not its weights): the same config and code give the same weights on the same
    machine (deterministic training); its metrics.json is rewritten from the new run."""
    from replicate.train import fit, prepare

    print(f"run {directory}: its weights are not here (the run store ships results, not "
          "checkpoints): training it again", file=sys.stderr, flush=True)
    prepared = prepare(run_cfg)
    with RunLock(directory):
        if not (directory / "checkpoints" / "last.ckpt").is_file():
            write_json_atomic(directory / METRICS, fit(run_cfg, directory, prepared, run_code_sha256(run_cfg)))


def load_datamodule(directory: str | Path):
    """The run's LightningDataModule, set up for validation."""
    from hydra.utils import instantiate

    run_cfg = OmegaConf.load(Path(directory) / "config.yaml")
    datamodule = instantiate(run_cfg.run.data, _convert_="all")
    datamodule.setup("validate")
    return datamodule
