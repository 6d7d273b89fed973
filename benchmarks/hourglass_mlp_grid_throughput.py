"""Grid throughput of the Hourglass MLP search on CPU: shape-runs per minute.

One training job of the search (``HourglassGrid``) trains every shape of the grid at every
learning rate of its family side by side for one (task, seed). This script times the bare
training step of such a job (degradation, forward, backward, the per-copy fused Adam; no
Lightning, no validation) for a figure's config at a scale, per family and for the whole grid,
as *CPU* time of this process (``time.process_time``: meaningful on a shared, loaded machine,
where wall time is not), and turns it into

* ms of CPU per step,
* shape-runs per minute: shape × rate copies × 60 / (ms per step × max_steps / 1000), i.e. how
  many single (architecture, rate) runs are trained to the full budget per CPU-minute,
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
from hydra.utils import instantiate

from replicate.papers.hourglass_mlp.module import HourglassGrid


def build(figure: str, scale: str, families: list[str] | None):
    cfg = C.compose(f"hourglass_mlp/{figure}", "cpu", scale)
    run = C.run_config(cfg, 0).run
    module_kw = {k: v for k, v in OmegaConf.to_container(run.module, resolve=True).items() if k != "_target_"}
    if families is not None:
        module_kw["grid"] = {f: module_kw["grid"][f] for f in families}
    dm = instantiate(OmegaConf.to_container(run.data, resolve=True), _convert_="all")
    dm.setup()
    return cfg, HourglassGrid(**module_kw), dm


def copies(module: HourglassGrid) -> int:
    return sum(net.copies for net in module.nets)


def step_ms(module: HourglassGrid, dm, steps: int) -> float:
    opt = module.configure_optimizers()["optimizer"]
    loader = iter(dm.train_dataloader())
    times = []
    for i in range(steps + 5):
        batch = next(loader)
        t0 = time.process_time()
        opt.zero_grad()
        module.training_step(batch, i).backward()
        opt.step()
        if i >= 5:  # warm-up
            times.append(time.process_time() - t0)
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
    print(f"{'grid part':<22}{'copies':>8}{'CPU ms/step':>12}{'shape-runs/CPU-min':>20}")
    rows = [(family, *build(args.figure, args.scale, [family])[1:]) for family in whole.hparams.grid]
    for name, module, data in [*rows, ("whole grid (one job)", whole, dm)]:
        ms = step_ms(module, data, args.steps)
        per_min = copies(module) * 60 / (ms * max_steps / 1000)
        print(f"{name:<22}{copies(module):>8}{ms:>12.1f}{per_min:>20.1f}")
    job_s = ms * max_steps / 1000 + args.startup
    print(f"estimated idle-machine time: {jobs} jobs x {job_s:.0f} CPU-s / {args.cores} cores = "
          f"{jobs * job_s / args.cores / 60:.1f} min (training steps + start-up; evaluation and the notebook not included)")


if __name__ == "__main__":
    main()
