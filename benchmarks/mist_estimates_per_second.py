"""MI estimates per second: MIST (batched and one dataset at a time) vs KSG (k = 5), at several n.

The MIST network has the architecture of the ``mist/runtime`` figure's run at the chosen scale
(its cost does not depend on the weights, so an untrained network of that shape is timed; no
checkpoint is needed). Inputs are correlated Gaussians with d_x = d_y = --dim. Each number is
the median over --repeats calls after a warm-up call; the table is printed, then its JSON.

    python benchmarks/mist_estimates_per_second.py [--scale default] [--n 10 50 100 200 500]
        [--dim 2] [--batch 64] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from omegaconf import OmegaConf

from replicate import config as C
from replicate.papers.mist.analysis import seconds_per_call
from replicate.papers.mist.baselines import ksg
from replicate.papers.mist.model import MISTNet


def network(scale: str) -> MISTNet:
    run = C.run_config(C.compose("mist/runtime", "cpu", scale), 0).run
    return MISTNet("mse", **OmegaConf.to_container(run.module.model, resolve=True)).eval()


def measure(net: MISTNet, n: int, dim: int, batch: int, repeats: int) -> dict:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((batch, n, dim)).astype(np.float32)
    y = (0.7 * x + rng.standard_normal(x.shape)).astype(np.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        batched = seconds_per_call(lambda: net(xt, yt), repeats) / batch
        single = seconds_per_call(lambda: net(xt[:1], yt[:1]), repeats)
    knn = seconds_per_call(lambda: ksg(x[0], y[0], 5), repeats)
    return {"n": n, "mist_batched_per_s": 1 / batched, "mist_single_per_s": 1 / single,
            "ksg_per_s": 1 / knn, "batched_over_ksg": knn / batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default")
    parser.add_argument("--n", type=int, nargs="+", default=[10, 50, 100, 200, 500])
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = network(args.scale)
    rows = [measure(net, n, args.dim, args.batch, args.repeats) for n in args.n]
    print(f"{'n':>6} {'MIST batched/s':>15} {'MIST single/s':>14} {'KSG/s':>9} {'batched/KSG':>12}")
    for r in rows:
        print(f"{r['n']:>6} {r['mist_batched_per_s']:>15.0f} {r['mist_single_per_s']:>14.0f} "
              f"{r['ksg_per_s']:>9.0f} {r['batched_over_ksg']:>11.2f}x")
    print(json.dumps({"scale": args.scale, "dim": args.dim, "batch": args.batch, "threads": args.threads,
                      "params": sum(p.numel() for p in net.parameters()), "rows": rows}))


if __name__ == "__main__":
    main()
