"""Training-step cost through the suite's Lightning Trainer vs a bare PyTorch loop.

Same model (the `loss` figure's text LM at the chosen scale), same batches, same optimiser,
scheduler and gradient clipping; the Trainer run uses replicate.train.build_trainer with all its
callbacks (recorder, code hash and random states, checkpoint, signals, progress bar) but no
validation. Reports the median step time of each and their ratio (goal <= 1.05).

    python benchmarks/trainer_overhead.py [--steps 200] [--scale default] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from replicate import config as C
from replicate import hardware
from replicate.train import build_trainer, run_callbacks


def setup(scale: str, steps: int):
    cfg = C.compose("gated_attention/loss", "cpu", scale, [f"figure.run.trainer.max_steps={steps}",
                                                          f"figure.run.trainer.val_check_interval={steps}",
                                                          "figure.run.trainer.limit_val_batches=0"])
    run_cfg = C.run_config(cfg, 0)
    hardware.configure_process(run_cfg.hardware)
    return run_cfg


def trainer_steps(run_cfg) -> tuple[list[float], float]:
    """Per-step times (batch-start to batch-end hooks) and the whole fit's seconds per step."""
    L.seed_everything(0, verbose=False)
    module = instantiate(run_cfg.run.module, _convert_="all")
    data = instantiate(run_cfg.run.data, _convert_="all")
    with tempfile.TemporaryDirectory() as tmp:
        recorder, _, callbacks = run_callbacks(run_cfg, Path(tmp), code_sha256="benchmark")
        trainer = build_trainer(run_cfg, Path(tmp), callbacks)
        t = time.perf_counter()
        trainer.fit(module, datamodule=data)
        total = time.perf_counter() - t
    return recorder.state["step_seconds"], total / trainer.global_step


def bare_steps(run_cfg) -> tuple[list[float], float]:
    """Per-step times and the whole loop's seconds per step (data loading included)."""
    L.seed_everything(0, verbose=False)
    module = instantiate(run_cfg.run.module, _convert_="all")
    data = instantiate(run_cfg.run.data, _convert_="all")
    data.setup("fit")
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    clip = run_cfg.run.trainer.gradient_clip_val
    times = []
    module.train()
    start = time.perf_counter()
    for x, y in data.train_dataloader():
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(module(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t)
    return times, (time.perf_counter() - start) / len(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--scale", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run_cfg = setup(args.scale, args.steps)
    ms = {"trainer_step": [], "bare_step": [], "trainer_loop": [], "bare_loop": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        for name, fn in (("trainer", trainer_steps), ("bare", bare_steps)):
            steps, loop = fn(run_cfg)
            ms[f"{name}_step"].append(1e3 * statistics.median(steps[5:]))
            ms[f"{name}_loop"].append(1e3 * loop)
    result = {"scale": args.scale, "steps": args.steps, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "lightning": L.__version__,
              **{f"{k}_ms": round(statistics.median(v), 3) for k, v in ms.items()}}
    result["ratio_step"] = result["trainer_step_ms"] / result["bare_step_ms"]
    result["ratio_loop"] = result["trainer_loop_ms"] / result["bare_loop_ms"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
