"""The public estimator's rate check: fit_moe from the data alone on replicates x sample sizes of a
known truth, its Voronoi loss D1 per fit and the fit - truth log-likelihood gaps.

Used by tests (small n) and benchmarks/moe_gating_fit_moe_rates.py (the full check, n = 1e3..3e4).
"""

from __future__ import annotations

import numpy as np
import torch

from replicate.papers.moe_gating import metrics
from replicate.papers.moe_gating.fit import fit_moe, loglik_of
from replicate.papers.moe_gating.problem import Design, Truth, simulate

D2_DENSE = dict(name="d2_dense", gate="softmax", w1=[[3.0, -2.0], [-2.0, 3.0], [0.0, 0.0]],
                w0=[-0.5, -0.5, 0.0], a=[[1.0, -1.0], [-1.0, 2.0], [0.5, 0.5]], b=[1.0, -1.0, -3.0],
                sigma=[0.2, 0.2, 0.2])
D2_TOP2 = dict(D2_DENSE, name="d2_top2", gate="topk", top_k=2)


def rate_check(truth_cfg: dict, n_grid, replicates: int, seed: int = 7, n_starts: int = 4,
               n_boot: int = 2000, device=None) -> dict:
    """Fit every (replicate, n) with ``fit_moe(init="data")``; returns D1 (replicates, len(n)),
    the gaps fit - truth in nats (same shape; >= 0 at the MLE), converged and never-selected
    flags, iterations per n, and the D1 slope with its bootstrap interval over replicates."""
    truth = Truth(**truth_cfg)
    true = truth.params(replicates)
    kw = dict(gate=truth.gate, top_k=truth.top_k, rank=truth.rank)
    truth_np = {"beta0": np.array(truth.w0), "beta1": np.array(truth._w1), "a": np.array(truth._a),
                "b": np.array(truth.b), "sigma2": np.array(truth.sigma) ** 2}
    shape = (replicates, len(n_grid))
    out = {"n": list(n_grid), "d1": np.zeros(shape), "gap": np.zeros(shape),
           "converged": np.zeros(shape, bool), "never_selected": np.zeros(shape, int), "iterations": []}
    for j, n in enumerate(n_grid):
        data = simulate(truth, Design([n], replicates, seed=seed))
        x = data["x"].view(replicates, n, truth.d).numpy()
        y = data["y"].view(replicates, n).numpy()
        fitted = fit_moe(x, y, truth.k, init="data", seed=(seed, n), n_starts=n_starts, device=device, **kw)
        out["gap"][:, j] = (fitted["loglik"] - loglik_of(truth_np, x, y, **kw)) * n
        out["converged"][:, j] = fitted["converged"]
        out["never_selected"][:, j] = fitted["never_selected"].sum(-1)
        out["iterations"].append(fitted["iterations"])
        p = {"w1": fitted["beta1"], "w0": fitted["beta0"], "a": fitted["a"], "b": fitted["b"],
             "var": fitted["sigma2"], "tau": fitted["tau"]}
        p = metrics.align({k: torch.as_tensor(v) for k, v in p.items()}, true)
        out["d1"][:, j] = metrics.voronoi_loss(p, true, metrics.assign_cells(p, true)).numpy()
    slope, lo, hi, _ = metrics.loglog_slope(n_grid, out["d1"], n_boot=n_boot)
    out.update(slope=slope, interval=(lo, hi), below_truth=int((out["gap"] < -1e-6).sum()))
    return out
