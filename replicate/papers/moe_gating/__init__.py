"""MoE gating theory by simulation: "Statistical Perspective of Top-K Sparse Softmax Gating
Mixture of Experts" (Nguyen, Akbarian, Yan, Ho; ICLR 2024) and "Is Temperature Sample Efficient
for Softmax Gaussian Mixture of Experts?" (Nguyen, Akbarian, Ho; ICML 2024).

fit.py       the estimator for any input dimension: ``fit_moe`` (public), data-driven starts,
             continuation for top-K gates, the main loop and its convergence rule
model.py     the Gaussian MoE of linear experts and its gates (softmax, top-K, temperature, activation)
problem.py   the true model, the fits (replicates x sample sizes), simulated data, initialisation
em.py        one batched generalised-EM iteration and the top-K compass search
metrics.py   Voronoi losses, per-parameter errors, Hellinger distance, log-log slopes
module.py    the Lightning data module and the two estimators (BatchedEM, GradientMLE)
analysis.py  notebook helpers (per-fit tables, slopes per setting, reference lines)
"""

from replicate.papers.moe_gating.fit import fit_moe, loglik_of
from replicate.papers.moe_gating.model import GATES, Gate
from replicate.papers.moe_gating.module import BatchedEM, GradientMLE, MoESimulation

__all__ = ["GATES", "BatchedEM", "Gate", "GradientMLE", "MoESimulation", "fit_moe", "loglik_of"]
