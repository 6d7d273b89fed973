"""How far a bit-level change in float reductions moves a Gated Attention run (issue 13 / 19).

    python benchmarks/gated_attention_determinism.py RUN_DIR [RUN_DIR ...]

For each finished run directory (its ``config.yaml``), train the same config again in a fresh
temporary directory twice: once exactly as configured (1 torch thread on CPU), once with 2 torch
threads (a different summation order inside matrix products and reductions: the smallest
perturbation a different machine, BLAS build or thread count introduces). Prints, per run, the
stored final validation loss, the 1-thread rerun's (must be bit-identical: training is
deterministic for a fixed config, seed and environment) and the 2-thread rerun's, with the
relative difference. At a stable learning rate the 2-thread difference stays in the last digits;
at the learning rates where the baseline breaks, training is chaotic and the same rounding
difference grows to a different final loss: a rerun on another machine or torch build can differ
by tens of percent there while every stable point agrees.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from replicate import train


def rerun(cfg, threads: int) -> float:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.hardware.threads_per_job = threads
    with tempfile.TemporaryDirectory() as tmp:
        return float(train.fit(cfg, Path(tmp))["final_val_loss"])


def main(dirs: list[str]) -> None:
    out = []
    for d in dirs:
        cfg = OmegaConf.load(Path(d) / "config.yaml")
        stored = json.loads((Path(d) / "metrics.json").read_text())["final_val_loss"]
        one, two = rerun(cfg, 1), rerun(cfg, 2)
        out.append({"run": Path(d).name, "gate": cfg.run.module.model.gate,
                    "lr": cfg.run.module.optim.lr, "seed": cfg.run.seed, "stored": stored,
                    "rerun_1_thread": one, "rerun_2_threads": two,
                    "identical_1_thread": one == stored,
                    "relative_change_2_threads": abs(two - stored) / abs(stored)})
        print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
