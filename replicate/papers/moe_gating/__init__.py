"""MoE gating theory by simulation: "Statistical Perspective of Top-K Sparse Softmax Gating
Mixture of Experts" (Nguyen, Akbarian, Yan, Ho; ICLR 2024) and "Is Temperature Sample Efficient
for Softmax Gaussian Mixture of Experts?" (Nguyen, Akbarian, Ho; ICML 2024).

model.py     the Gaussian MoE of linear experts and its gates (softmax, top-K, temperature, activation)
problem.py   the true model, the fits (replicates x sample sizes), simulated data, initialisation
em.py        one batched EM iteration for every fit at once
metrics.py   Voronoi losses, per-parameter errors, Hellinger distance, log-log slopes
module.py    the Lightning data module and the two estimators (BatchedEM, GradientMLE)
analysis.py  notebook helpers (per-fit tables, slopes per setting, reference lines)
"""

from replicate.papers.moe_gating.model import GATES, Gate
from replicate.papers.moe_gating.module import BatchedEM, GradientMLE, MoESimulation

__all__ = ["GATES", "BatchedEM", "Gate", "GradientMLE", "MoESimulation"]
