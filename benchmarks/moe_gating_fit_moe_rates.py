"""The full check of the public estimator: ``fit_moe(init="data")`` on a d = 2, K = 3
softmax-gated truth and on the same truth with a top-2 gate, n = 1e3 .. 3e4, 12 replicates.

    python benchmarks/moe_gating_fit_moe_rates.py [--replicates 12] [--threads 1] [--truth both]

Prints JSON per truth: the D1 slope with its 95% bootstrap interval over replicates (pass:
inside [-0.65, -0.35]), the number of fits ending below the truth's log-likelihood (pass: 0),
the smallest gap fit - truth (nats), converged share, never-selected experts, iterations per n,
CPU seconds. GPU when there is one (the fits are float64 either way). The truths are
replicate/papers/moe_gating/check.py's D2_DENSE and D2_TOP2 (not the figures' template).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from replicate.papers.moe_gating.check import D2_DENSE, D2_TOP2, rate_check

N_GRID = [1000, 1778, 3162, 5623, 10000, 17783, 30000]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-starts", type=int, default=4)
    parser.add_argument("--truth", choices=["both", "softmax", "top2"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    truths = {"softmax": D2_DENSE, "top2": D2_TOP2}
    for name, truth in truths.items():
        if args.truth not in ("both", name):
            continue
        cpu, wall = time.process_time(), time.perf_counter()
        check = rate_check(truth, N_GRID, args.replicates, n_starts=args.n_starts)
        lo, hi = check["interval"]
        print(json.dumps({
            "truth": name, "d": 2, "k": 3, "n_grid": N_GRID, "replicates": args.replicates,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "d1_slope": round(check["slope"], 4), "d1_interval": [round(lo, 4), round(hi, 4)],
            "slope_pass": bool(-0.65 <= lo and hi <= -0.35),
            "fits_below_truth": check["below_truth"], "min_gap_nats": round(float(check["gap"].min()), 3),
            "converged_share": float(check["converged"].mean()),
            "never_selected": int(check["never_selected"].sum()), "iterations": check["iterations"],
            "cpu_seconds": round(time.process_time() - cpu, 1), "wall_seconds": round(time.perf_counter() - wall, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
