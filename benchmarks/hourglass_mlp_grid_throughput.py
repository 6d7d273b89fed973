"""Grid throughput of the Hourglass MLP search on CPU: shape-runs per minute.

One training job of the search (``HourglassGrid``) trains every shape of the grid side by side
for one (task, learning rate, seed). This script times the bare training step of such a job
(augmentation, degradation, forward, backward, Adam; no Lightning, no validation) for a figure's
config at a scale, per family and for the whole grid, and turns it into

* ms per step,
* shape-runs per minute: shapes × 60 / (ms per step × max_steps / 1000), i.e. how many single
  architectures of the grid are trained to the full budget per minute of one core,
* the estimated wall time of the figure's jobs on ``--cores`` cores (step time × max_steps ×
  jobs / cores, plus ``--startup`` seconds per job for python + torch + Lightning start-up).

    python benchmarks/hourglass_mlp_grid_throughput.py [--figure pareto_denoise] [--scale default]
                                                       [--steps 30] [--threads 1] [--cores 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from replicate import config as C
from replicate.papers.hourglass_mlp.data import RestorationData
from replicate.papers.hourglass_mlp.module import HourglassGrid


def build(figure: str, scale: str, families: list[str] | None):
    cfg = C.compose(f"hourglass_mlp/{figure}", "cpu", scale)
    run = C.run_config(cfg, 0).run
    module_kw = {k: v for k, v in OmegaConf.to_container(run.module, resolve=True).items() if k != "_target_"}
    if families is not None:
        module_kw["grid"] = {f: module_kw["grid"][f] for f in families}
    data_kw = {k: v for k, v in OmegaConf.to_container(run.data, resolve=True).items() if k != "_target_"}
    dm = RestorationData(**data_kw)
    dm.setup()
    return cfg, HourglassGrid(**module_kw), dm


def step_ms(module: HourglassGrid, dm: RestorationData, steps: int) -> float:
    opt = module.configure_optimizers()["optimizer"]
    loader = iter(dm.train_dataloader())
    times = []
    for i in range(steps + 5):
        batch = next(loader)
        t0 = time.perf_counter()
        opt.zero_grad()
        module.training_step(batch, i).backward()
        opt.step()
        if i >= 5:  # warm-up
            times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figure", default="pareto_denoise")
    parser.add_argument("--scale", default="default")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--startup", type=float, default=4.0, help="seconds of process start-up per job")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, whole, dm = build(args.figure, args.scale, None)
    max_steps, jobs = cfg.figure.run.trainer.max_steps, len(C.points(cfg))
    print(f"hourglass_mlp/{args.figure} at {args.scale}: {jobs} jobs x {max_steps} steps, batch {dm.batch_size}, "
          f"{args.threads} thread(s)")
    print(f"{'grid part':<22}{'shapes':>8}{'ms/step':>10}{'shape-runs/min':>16}")
    rows = [(family, *build(args.figure, args.scale, [family])[1:]) for family in whole.hparams.grid]
    for name, module, data in [*rows, ("whole grid (one job)", whole, dm)]:
        ms = step_ms(module, data, args.steps)
        per_min = len(module.shapes) * 60 / (ms * max_steps / 1000)
        print(f"{name:<22}{len(module.shapes):>8}{ms:>10.1f}{per_min:>16.1f}")
    job_s = ms * max_steps / 1000 + args.startup
    print(f"estimated figure time: {jobs} jobs x {job_s:.0f} s / {args.cores} cores = {jobs * job_s / args.cores / 60:.1f} min "
          f"(training steps + start-up; validation and the notebook not included)")


if __name__ == "__main__":
    main()
