"""The run store: one finished training run = one directory.

    <out>/runs/<paper>/<run_hash>/
        config.yaml        the resolved run config + hardware (what the hash is of)
        checkpoints/       last.ckpt, rewritten after every validation (the resume point)
        logs/              Lightning CSV logs
        metrics.json       written last and atomically: its presence means "finished"

A run whose directory already holds metrics.json is reused, never recomputed; the hash is of
the resolved config (replicate.config.run_hash), so any figure asking for the same run shares it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from replicate import config as C

METRICS = "metrics.json"


def run_dir(out: str | Path, run_cfg: DictConfig) -> Path:
    return Path(out) / "runs" / run_cfg.paper / C.run_hash(run_cfg)


def is_finished(directory: Path) -> bool:
    return (directory / METRICS).is_file()


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1, allow_nan=True)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for every reader
    os.replace(tmp, path)


def read_metrics(directory: Path) -> dict:
    return json.loads((directory / METRICS).read_text())


def ensure(run_cfg: DictConfig, out: str | Path) -> Path:
    """Train the run unless an identical one has finished; return its directory."""
    directory = run_dir(out, run_cfg)
    if is_finished(directory):
        return directory
    from replicate.train import fit

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg))
    write_json_atomic(directory / METRICS, fit(run_cfg, directory))
    return directory


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
    module = instantiate(run_cfg.run.module, _convert_="all")
    state = torch.load(directory / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    return module.eval()


def load_datamodule(directory: str | Path):
    """The run's LightningDataModule, set up for validation."""
    from hydra.utils import instantiate

    run_cfg = OmegaConf.load(Path(directory) / "config.yaml")
    datamodule = instantiate(run_cfg.run.data, _convert_="all")
    datamodule.setup("validate")
    return datamodule
