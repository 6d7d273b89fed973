"""Batched EM (every replicate x sample size in one set of tensor ops) vs a per-fit loop.

    python benchmarks/moe_gating_batched_em.py [--replicates 8] [--iterations 10] [--threads 1]

Prints seconds per EM iteration for both and their ratio, at a small-n and a large-n grid, for
the top-K truth of the moe_gating figures (float64, CPU). Both paths run the identical algorithm
(replicate/papers/moe_gating/em.py); the loop calls it once per fit. Timings on a shared machine
are inflated by contention: compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from replicate.papers.moe_gating import em
from replicate.papers.moe_gating.problem import Design, Truth, initialise, simulate

TRUTH = dict(gate="topk", top_k=2, w1=[1.0, 4.0, 0.0], w0=[2.0, -2.0, 0.0], a=[-4.0, 4.0, 1.0],
             b=[2.0, -2.5, -1.0], sigma=[0.3, 0.35, 0.35])
GRIDS = {"small n (200..3200)": [200, 400, 800, 1600, 3200],
         "large n (1e3..1e5)": [1000, 4642, 21544, 100000]}


def batched(truth, design, data, iterations):
    p = initialise(truth, [0, 1, 2], design, 0.1, 0.083)
    features, bounds = em.expert_features(data["x"], data["y"]), em.fit_bounds(data["fit"], design.n_fits)
    step = None
    start = time.perf_counter()
    for _ in range(iterations):
        p, _, _, step = em.em_iteration(truth.spec, p, data["x"], data["y"], data["fit"], design.n_fits,
                                        first_step=step, features=features, bounds=bounds)
    return (time.perf_counter() - start) / iterations


def looped(truth, design, data, iterations):
    start_params = initialise(truth, [0, 1, 2], design, 0.1, 0.083)
    fits = []
    for fid, (lo, hi) in enumerate(em.fit_bounds(data["fit"], design.n_fits)):
        x, y = data["x"][lo:hi], data["y"][lo:hi]
        zero = torch.zeros(hi - lo, dtype=torch.long)
        fits.append(({k: v[fid: fid + 1] for k, v in start_params.items()}, x, y, zero,
                     em.expert_features(x, y), [(0, hi - lo)]))
    start = time.perf_counter()
    for p, x, y, zero, features, bounds in fits:
        step = None
        for _ in range(iterations):
            p, _, _, step = em.em_iteration(truth.spec, p, x, y, zero, 1, first_step=step,
                                            features=features, bounds=bounds)
    return (time.perf_counter() - start) / iterations


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    truth = Truth(**TRUTH)
    print(f"{'grid':22s} {'fits':>5s} {'points':>9s} {'batched s/it':>13s} {'loop s/it':>10s} {'loop/batched':>13s}")
    for name, grid in GRIDS.items():
        design = Design(grid, args.replicates, seed=0)
        data = simulate(truth, design)
        t_batch = batched(truth, design, data, args.iterations)
        t_loop = looped(truth, design, data, args.iterations)
        print(f"{name:22s} {design.n_fits:5d} {data['x'].shape[0]:9d} {t_batch:13.4f} {t_loop:10.4f} "
              f"{t_loop / t_batch:13.2f}")


if __name__ == "__main__":
    main()
