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
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from replicate import config as C

METRICS = "metrics.json"


def run_dir(out: str | Path, run_cfg: DictConfig) -> Path:
    return Path(out) / "runs" / run_cfg.paper / C.run_hash(run_cfg)


def is_finished(directory: Path) -> bool:
    return (directory / METRICS).is_file()


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write strict JSON through a temporary file and a rename: readers never see half a file.

    Non-finite numbers (a diverged loss) are written as null and listed under ``non_finite``
    (``replicate.claims.strict_payload``), so strict parsers and ``jq`` read every file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = strict_payload(payload) if isinstance(payload, dict) else strict(payload)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(clean, fh, indent=1, allow_nan=False)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for every reader
    os.replace(tmp, path)


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
    """Train the run unless an identical one has finished; return its directory.

    The directory is locked while it trains (``.lock``, an advisory file lock): a second process
    asking for the same run, from this checkout or another sharing the run store, is refused
    with one line naming the holder. A run whose module or data cannot be built from its config
    leaves no directory behind.
    """
    directory = run_dir(out, run_cfg)
    if is_finished(directory):
        return directory
    from replicate.train import fit

    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with RunLock(directory):
            if is_finished(directory):  # another process finished it while we waited for the lock
                return directory
            (directory / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg))
            write_json_atomic(directory / METRICS, fit(run_cfg, directory))
            drop_checkpoints(run_cfg, directory)
    except C.ConfigError:
        if created and not (directory / "checkpoints" / "last.ckpt").exists():
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def drop_checkpoints(run_cfg: DictConfig, directory: Path) -> None:
    """Delete a finished run's checkpoints when ``trainer.keep_checkpoints`` is ``none`` (metrics.json
    is already written, so the run stays finished and is reused without them)."""
    if run_cfg.run.trainer.get("keep_checkpoints", "last") != "none" or not is_finished(directory):
        return
    shutil.rmtree(directory / "checkpoints", ignore_errors=True)


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run dir>/.lock`` holding the holder's pid and host."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".lock"
        self.fh = None

    def __enter__(self) -> "RunLock":
        import fcntl
        import socket

        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise C.ConfigError(f"run {self.path.parent} is being trained by {holder}; wait for it "
                                "to finish (or stop that process)") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()  # closing releases the lock; the file stays (harmless, tiny)


def figure_runs(cfg: DictConfig, out: str | Path, train_missing: bool = False) -> pd.DataFrame:
    """One row per sweep point of a figure: its swept values, run directory and metrics.

    Columns: ``point``, the last component of every swept key (``gate``, ``seed``, ``lr`` ...),
    ``run_dir``, ``status``, and every key of the run's metrics.json.
    """
    rows = []
    for k, (values, run_cfg) in enumerate(zip(C.points(cfg), C.run_configs(cfg))):
        directory = run_dir(out, run_cfg)
        if not is_finished(directory):
            if not train_missing:
                raise FileNotFoundError(f"run for {cfg.figure.paper}/{cfg.figure.name} point={k} "
                                        f"has not finished: {directory} (run the pipeline first)")
            directory = ensure(run_cfg, out)
        swept = {key.rsplit(".", 1)[-1]: value for key, value in values.items()}
        rows.append({"point": k, **swept, "run_dir": str(directory), **read_metrics(directory)})
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
        raise FileNotFoundError(f"run {directory} has no checkpoint (its trainer.keep_checkpoints is {kept}): "
                                "set run.trainer.keep_checkpoints: last in the figure's scale block and "
                                "delete the run directory to retrain it")
    module = instantiate(run_cfg.run.module, _convert_="all")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    return module.eval()


def load_datamodule(directory: str | Path):
    """The run's LightningDataModule, set up for validation."""
    from hydra.utils import instantiate

    run_cfg = OmegaConf.load(Path(directory) / "config.yaml")
    datamodule = instantiate(run_cfg.run.data, _convert_="all")
    datamodule.setup("validate")
    return datamodule
