"""One EM iteration for every fit at once (maximum-likelihood estimation of the MoE in model.py).

The papers estimate by maximum likelihood and, in their simulations, compute it with EM started
near the truth (the sister paper, NeurIPS 2023 App. E: EM with an IRLS gate step). One iteration:

1. E-step: responsibilities r_ni = g_i(x_n) N(y_n | expert i) / p(y_n | x_n).
2. Expert M-step, exact: weighted least squares for (a_i, b_i) and the weighted residual
   variance for var_i (closed form from per-fit sufficient statistics).
3. Gate step: one Gauss-Newton (IRLS / Fisher-scoring) step on the gate part of the EM objective,
   sum_n sum_i r_ni log g_i(x_n), with a ridge, then backtracking (halving) on the OBSERVED
   log-likelihood: the largest step in {s, s/2, ..., s 2^-(backtracks-1)} that does not lower it,
   else no step, where s adapts per fit (twice the last accepted step, at most 1): near a top-K
   switching boundary the likelihood has kinks (a boundary crossing a point changes its density
   discontinuously) and only small gate steps are accepted. Deviation from textbook EM, and why: under a top-K gate the EM objective is -inf
   as soon as a switching boundary moves past a point with r_ni > 0, which freezes the top-K
   boundaries at their initial place (a feasibility probe saw the fit's log-likelihood end 130
   nats below the truth's at n = 1e5); the observed likelihood has no such wall. For the dense
   softmax gate the step is the exact Newton (IRLS) step. The iteration never lowers the observed
   log-likelihood (monotone, as EM).

Everything is float64 and vectorised over fits; point-wise Jacobians are reduced in chunks so
memory stays bounded at large n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from replicate.papers.moe_gating import model as M


@dataclass(frozen=True)
class EMOptions:
    backtracks: int = 4  # trials per iteration: s, s/2, ..., s 2^-(backtracks-1), then no step
    min_step: float = 2.0 ** -20  # the smallest first trial step
    ridge: float = 1e-8  # relative ridge on the Gauss-Newton matrix (trace-scaled)
    chunk: int = 1 << 17  # points per chunk when reducing Jacobians
    min_gain: float = 1e-9  # nats: a gate step predicted to gain less is not tried


def e_step(gate: M.Gate, p: dict, x, y, fit, n_fits: int):
    """Responsibilities (N, k), gates (N, k) and the observed log-likelihood per fit (B,)."""
    log_g = M.log_gates(gate, M.gate_logits(gate, p, x, fit))
    joint = log_g + M.log_experts(p, x, y, fit)
    point_ll = torch.logsumexp(joint, dim=-1)
    resp = (joint - point_ll[:, None]).exp()
    return resp, log_g.exp(), M.per_fit_sum(point_ll, fit, n_fits)


def expert_features(x, y) -> torch.Tensor:
    """Per-point features whose responsibility-weighted sums are the experts' sufficient
    statistics: (1, x, x^2, y, x y, y^2), shape (N, 6)."""
    return torch.stack([torch.ones_like(x), x, x * x, y, x * y, y * y], dim=1)


def expert_m_step(p: dict, resp, features, bounds: list[tuple[int, int]]) -> dict:
    """Weighted least squares per expert and fit; experts with no weight keep their values.

    ``bounds`` are each fit's [start, end) in the flat arrays (points are sorted by fit)."""
    stats = torch.stack([resp[lo:hi].T @ features[lo:hi] for lo, hi in bounds])  # (B, k, 6)
    s0, sx, sxx, sy, sxy, syy = stats.unbind(-1)
    det = s0 * sxx - sx ** 2
    ok = (s0 > 1e-6) & (det > 1e-12 * s0 ** 2)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    a = torch.where(ok, (s0 * sxy - sx * sy) / safe_det, p["a"])
    b = torch.where(ok, (sxx * sy - sx * sxy) / safe_det, p["b"])
    rss = syy - 2 * a * sxy - 2 * b * sy + a ** 2 * sxx + 2 * a * b * sx + b ** 2 * s0
    var = torch.where(ok, (rss / s0.clamp_min(1e-300)).clamp_min(M.VAR_FLOOR), p["var"])
    return {**p, "a": a, "b": b, "var": var}


def fit_bounds(fit: torch.Tensor, n_fits: int) -> list[tuple[int, int]]:
    """[start, end) of every fit in flat arrays sorted by fit id."""
    if fit.numel() > 1 and bool((fit[1:] < fit[:-1]).any()):
        raise ValueError("points must be sorted by fit id")
    ends = torch.bincount(fit, minlength=n_fits).cumsum(0).tolist()
    return list(zip([0] + ends[:-1], ends))


def gate_direction(gate: M.Gate, p: dict, resp, gates, x, fit, n_fits: int, opts: EMOptions):
    """Gauss-Newton direction on sum r log g for each fit's free gate parameters, (B, n_free),
    and its predicted gain (half the Newton decrement, nats), (B,)."""
    k = p["w1"].shape[1]
    q = gate.n_free(k)
    hess = x.new_zeros(n_fits, q, q)
    grad = x.new_zeros(n_fits, q)
    for lo in range(0, x.shape[0], opts.chunk):
        sl = slice(lo, lo + opts.chunk)
        jac = M.logit_jacobian(gate, p, x[sl], fit[sl])
        g = gates[sl, : k - 1]
        weight = torch.diag_embed(g) - g[:, :, None] * g[:, None, :]
        hess.index_add_(0, fit[sl], jac.transpose(1, 2) @ weight @ jac)
        grad.index_add_(0, fit[sl], torch.einsum("nip,ni->np", jac, resp[sl, : k - 1] - g))
    scale = hess.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
    eye = torch.eye(q, dtype=x.dtype, device=x.device)
    step = torch.linalg.solve(hess + opts.ridge * scale[:, None, None] * eye, grad[..., None])[..., 0]
    return step, 0.5 * (step * grad).sum(-1)


def _points_of(fits: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
    """Indices of the points of the given fits."""
    return torch.cat([torch.arange(*bounds[f], device=fits.device) for f in fits.tolist()])


def backtrack(gate: M.Gate, p: dict, direction, gain, reference_ll, first_step, x, y, fit, bounds,
              opts: EMOptions):
    """Per fit, the largest of first_step * {1, 1/2, ...} that does not lower the observed
    log-likelihood (else no step). Returns (parameters, log-likelihood, next first step): a fit
    that accepted step s starts the next iteration at min(1, 2 s); one that accepted nothing
    starts at its smallest trial (floored at ``opts.min_step``). Fits whose predicted gain (nats)
    is below ``opts.min_gain`` take no step; each trial evaluates only the fits still pending."""
    n_fits = reference_ll.shape[0]
    theta = M.gate_vector(gate, p)
    best, best_ll = theta.clone(), reference_ll.clone()
    pending = gain > opts.min_gain
    step = first_step.clone()
    next_step = torch.where(pending, first_step, torch.ones_like(first_step))
    for _ in range(opts.backtracks):
        if not pending.any():
            break
        rows = _points_of(pending.nonzero()[:, 0], bounds)
        trial = theta + step[:, None] * direction
        ll = M.loglik(gate, M.with_gate_vector(gate, p, trial), x[rows], y[rows], fit[rows], n_fits)
        accept = pending & (ll >= reference_ll)
        best[accept], best_ll[accept] = trial[accept], ll[accept]
        next_step[accept] = (2 * step[accept]).clamp(max=1.0)
        pending &= ~accept
        step = torch.where(pending, step / 2, step)
    next_step[pending] = step[pending].clamp(min=opts.min_step)
    return M.with_gate_vector(gate, p, best), best_ll, next_step


def em_iteration(gate: M.Gate, p: dict, x, y, fit, n_fits: int, opts: EMOptions = EMOptions(),
                 first_step=None, features=None, bounds=None):
    """One EM iteration for every fit.

    Returns (new parameters, log-likelihood before, log-likelihood after, next first gate step).
    ``first_step`` (B,) defaults to 1; ``features`` and ``bounds`` (expert_features, fit_bounds)
    are recomputed when not given."""
    features = expert_features(x, y) if features is None else features
    bounds = fit_bounds(fit, n_fits) if bounds is None else bounds
    first_step = x.new_ones(n_fits) if first_step is None else first_step
    resp, gates, ll_before = e_step(gate, p, x, y, fit, n_fits)
    p = expert_m_step(p, resp, features, bounds)
    direction, gain = gate_direction(gate, p, resp, gates, x, fit, n_fits, opts)
    reference = M.loglik(gate, p, x, y, fit, n_fits)
    p, ll_after, next_step = backtrack(gate, p, direction, gain, reference, first_step, x, y, fit,
                                       bounds, opts)
    return p, ll_before, ll_after, next_step
