"""One generalised-EM iteration for every fit at once (maximum-likelihood estimation of the MoE in
model.py), for any input dimension d.

The papers estimate by maximum likelihood and, in their simulations, compute it with EM started
near the truth (the sister paper, NeurIPS 2023 App. E: EM with an IRLS gate step). One iteration:

1. E-step: responsibilities r_ni = g_i(x_n) N(y_n | expert i) / p(y_n | x_n).
2. Expert M-step, exact: weighted least squares of y on (x, 1) for (a_i, b_i) and the weighted
   residual variance for var_i (closed form from per-fit sufficient statistics). An expert with
   less than d + 2 points of weight keeps its values and is *reported* (``starved``).
3. Gate step: one Gauss-Newton (Fisher-scoring) step on the gate part of the EM objective,
   sum_n sum_i r_ni log g_i(x_n), with a ridge, then backtracking on the OBSERVED log-likelihood
   (the largest step in {s, s/2, ...} that does not lower it, else none; s adapts per fit). The
   Jacobian of the gate's effective logits (after the top-K mask or its smoothing) is taken by
   forward-mode autodiff, so every gate of model.py, in any d, uses the same step.
4. Top-K only (``compass``): a compass search on the observed log-likelihood over the free gate
   parameters (each coordinate +-h, accepted if the likelihood rises; h halves after a sweep
   without gain). Why: under a hard top-K gate the likelihood jumps wherever a switching boundary
   crosses a data point, and the Gauss-Newton step sees only the smooth part (the softmax among
   the selected experts), so on its own it never moves a boundary (a review saw fits stall 67 to
   2435 nats below the truth). The compass search moves boundaries; a fit is converged only when
   its log-likelihood change is below tol *and* h is below ``h_min`` (no coordinate move of size
   h_min raises the likelihood).

Every step never lowers the observed log-likelihood of the gate it is taken under (monotone).
Everything is float64 and vectorised over fits; point-wise Jacobians are reduced in chunks so
memory stays bounded at large n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp

from replicate.papers.moe_gating import model as M


@dataclass(frozen=True)
class EMOptions:
    backtracks: int = 4  # trials per iteration: s, s/2, ..., s 2^-(backtracks-1), then no step
    min_step: float = 2.0 ** -20  # the smallest first trial step
    ridge: float = 1e-8  # relative ridge on the Gauss-Newton matrix (trace-scaled)
    chunk: int = 1 << 16  # points per chunk when reducing Jacobians
    min_gain: float = 1e-9  # nats: a gate step predicted to gain less is not tried
    h0: float = 0.25  # compass search: first step size (top-K only)
    h_min: float = 1e-4  # compass search: converged below this step size
    min_weight: float | None = None  # experts with less weight are starved (default d + 2)


def e_step(gate: M.Gate, p: dict, x, y, fit, n_fits: int, smooth=None):
    """Responsibilities (N, k), gates (N, k) and the observed log-likelihood per fit (B,)."""
    log_g = M.log_gates(gate, p, x, fit, smooth)
    joint = log_g + M.log_experts(p, x, y, fit)
    point_ll = torch.logsumexp(joint, dim=-1)
    resp = (joint - point_ll[:, None]).exp()
    return resp, log_g.exp(), M.per_fit_sum(point_ll, fit, n_fits)


def expert_features(x, y) -> torch.Tensor:
    """Per-point features whose responsibility-weighted sums are the experts' sufficient
    statistics, with z = (x, 1): (vec(z z^T), z y, y^2), shape (N, (d+1)^2 + d + 2)."""
    z = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    outer = (z[:, :, None] * z[:, None, :]).flatten(1)
    return torch.cat([outer, z * y[:, None], (y * y)[:, None]], dim=1)


def expert_m_step(p: dict, resp, features, bounds: list[tuple[int, int]], opts=None):
    """Weighted least squares per expert and fit. Returns (parameters, starved (B, k) bool):
    experts with less than ``min_weight`` (default d + 2) points of weight keep their values.

    ``bounds`` are each fit's [start, end) in the flat arrays (points are sorted by fit)."""
    b_, k, d = M.dims(p)
    q = d + 1
    stats = torch.stack([resp[lo:hi].T @ features[lo:hi] for lo, hi in bounds])  # (B, k, F)
    szz = stats[..., : q * q].reshape(b_, k, q, q)
    szy = stats[..., q * q: q * q + q]
    syy = stats[..., -1]
    s0 = szz[..., -1, -1]
    floor = (opts.min_weight if opts is not None and opts.min_weight is not None else d + 2)
    eye = torch.eye(q, dtype=szz.dtype, device=szz.device)
    scale = szz.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    coef = torch.linalg.solve(szz + 1e-10 * scale[..., None, None] * eye, szy[..., None])[..., 0]
    rss = syy - 2 * (coef * szy).sum(-1) + torch.einsum("bki,bkij,bkj->bk", coef, szz, coef)
    ok = s0 >= floor
    a = torch.where(ok[..., None], coef[..., :d], p["a"])
    b = torch.where(ok, coef[..., d], p["b"])
    var = torch.where(ok, (rss / s0.clamp_min(1e-300)).clamp_min(M.VAR_FLOOR), p["var"])
    return {**p, "a": a, "b": b, "var": var}, ~ok


def fit_bounds(fit: torch.Tensor, n_fits: int) -> list[tuple[int, int]]:
    """[start, end) of every fit in flat arrays sorted by fit id."""
    if fit.numel() > 1 and bool((fit[1:] < fit[:-1]).any()):
        raise ValueError("points must be sorted by fit id")
    ends = torch.bincount(fit, minlength=n_fits).cumsum(0).tolist()
    return list(zip([0] + ends[:-1], ends))


def effective_logits(gate: M.Gate, p: dict, theta, x, fit, smooth=None) -> torch.Tensor:
    """The logits the softmax sees (after top-K masking or smoothing) as a function of theta."""
    q = M.with_gate_vector(gate, p, theta)
    logits = M.gate_logits(gate, q, x, fit)
    if not gate.sparse(logits.shape[-1]):
        return logits
    return M.masked_logits(gate, logits, M.rank_scores(gate, q, logits, x, fit), smooth)


def logit_jacobian(gate: M.Gate, p: dict, x, fit, smooth=None) -> torch.Tensor:
    """d u_i / d theta of the effective logits of every point, shape (N, k, n_free), by one
    forward-mode pass per free parameter (each point depends on its own fit's theta only).
    Entries of switched-off experts (u = -inf) are 0."""
    theta = M.gate_vector(gate, p)
    cols, u = [], None
    for j in range(theta.shape[1]):
        tangent = torch.zeros_like(theta)
        tangent[:, j] = 1.0
        u, du = jvp(lambda t: effective_logits(gate, p, t, x, fit, smooth), (theta,), (tangent,))
        cols.append(du)
    jac = torch.stack(cols, dim=-1)
    return torch.where(torch.isfinite(u)[..., None], jac, torch.zeros_like(jac)).nan_to_num(0.0)


def gate_direction(gate: M.Gate, p: dict, resp, gates, x, fit, n_fits: int, opts: EMOptions, smooth=None):
    """Gauss-Newton direction on sum r log g for each fit's free gate parameters, (B, n_free),
    and its predicted gain (half the Newton decrement, nats), (B,)."""
    q = M.gate_vector(gate, p).shape[1]
    hess = x.new_zeros(n_fits, q, q)
    grad = x.new_zeros(n_fits, q)
    for lo in range(0, x.shape[0], opts.chunk):
        sl = slice(lo, lo + opts.chunk)
        sm = None if smooth is None else smooth[sl]
        jac = logit_jacobian(gate, p, x[sl], fit[sl], sm)
        g = gates[sl]
        weight = torch.diag_embed(g) - g[:, :, None] * g[:, None, :]
        hess.index_add_(0, fit[sl], jac.transpose(1, 2) @ weight @ jac)
        grad.index_add_(0, fit[sl], torch.einsum("nip,ni->np", jac, resp[sl] - g))
    scale = hess.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
    eye = torch.eye(q, dtype=x.dtype, device=x.device)
    step = torch.linalg.solve(hess + opts.ridge * scale[:, None, None] * eye, grad[..., None])[..., 0]
    return step, 0.5 * (step * grad).sum(-1)


def points_of(fits: torch.Tensor, bounds: list[tuple[int, int]], device) -> torch.Tensor:
    """Indices of the points of the given fits."""
    idx = fits.tolist()
    if not idx:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat([torch.arange(*bounds[f], device=device) for f in idx])


def _ll_rows(gate, p, x, y, fit, bounds, n_fits, pending, smooth):
    rows = points_of(pending.nonzero()[:, 0], bounds, x.device)
    sm = None if smooth is None else smooth[rows]
    return M.loglik(gate, p, x[rows], y[rows], fit[rows], n_fits, sm)


def backtrack(gate: M.Gate, p: dict, direction, gain, reference_ll, first_step, x, y, fit, bounds,
              opts: EMOptions, smooth=None, active=None):
    """Per fit, the largest of first_step * {1, 1/2, ...} that does not lower the observed
    log-likelihood (else no step). Returns (parameters, log-likelihood, next first step): a fit
    that accepted step s starts the next iteration at min(1, 2 s); one that accepted nothing
    starts at its smallest trial (floored at ``opts.min_step``). Fits whose predicted gain (nats)
    is below ``opts.min_gain`` take no step; each trial evaluates only the fits still pending."""
    n_fits = reference_ll.shape[0]
    theta = M.gate_vector(gate, p)
    best, best_ll = theta.clone(), reference_ll.clone()
    pending = gain > opts.min_gain
    if active is not None:
        pending &= active
    step = first_step.clone()
    next_step = torch.where(pending, first_step, torch.ones_like(first_step))
    for _ in range(opts.backtracks):
        if not pending.any():
            break
        trial = theta + step[:, None] * direction
        ll = _ll_rows(gate, M.with_gate_vector(gate, p, trial), x, y, fit, bounds, n_fits, pending, smooth)
        accept = pending & (ll >= reference_ll)
        best[accept], best_ll[accept] = trial[accept], ll[accept]
        next_step[accept] = (2 * step[accept]).clamp(max=1.0)
        pending &= ~accept
        step = torch.where(pending, step / 2, step)
    next_step[pending] = step[pending].clamp(min=opts.min_step)
    return M.with_gate_vector(gate, p, best), best_ll, next_step


def compass(gate: M.Gate, p: dict, ll, h, x, y, fit, bounds, active, gain: float = 1e-9):
    """One compass sweep on the observed (hard) log-likelihood over the free gate parameters of
    the ``active`` fits: coordinate j moves by +h, else -h, when that raises the likelihood by more
    than ``gain`` nats. Fits with no accepted move halve h. Returns (parameters, ll, h)."""
    n_fits = ll.shape[0]
    theta = M.gate_vector(gate, p).clone()
    ll = ll.clone()
    moved = torch.zeros_like(active)
    if gate.has_tau:  # tau is a scale: the compass moves the linear gate parameters only
        coords = range(theta.shape[1] - 1)
    else:
        coords = range(theta.shape[1])
    for j in coords:
        for sign in (1.0, -1.0):
            pending = active.clone()
            if not pending.any():
                break
            trial = theta.clone()
            trial[:, j] += sign * h
            t_ll = _ll_rows(gate, M.with_gate_vector(gate, p, trial), x, y, fit, bounds, n_fits, pending, None)
            accept = pending & (t_ll > ll + gain)
            theta[accept], ll[accept] = trial[accept], t_ll[accept]
            moved |= accept
    h = torch.where(active & ~moved, h / 2, h)
    return M.with_gate_vector(gate, p, theta), ll, h


def em_iteration(gate: M.Gate, p: dict, x, y, fit, n_fits: int, opts: EMOptions = EMOptions(),
                 first_step=None, features=None, bounds=None, smooth=None, active=None):
    """One EM iteration (E-step, expert M-step, Gauss-Newton gate step) for every fit.

    Returns (new parameters, log-likelihood before, log-likelihood after, next first gate step,
    starved experts (B, k)). ``smooth`` (per point, 0 = hard) smooths a top-K gate; ``active``
    (B,) bool: the others keep their parameters. ``features`` and ``bounds`` (expert_features,
    fit_bounds) are recomputed when not given."""
    features = expert_features(x, y) if features is None else features
    bounds = fit_bounds(fit, n_fits) if bounds is None else bounds
    first_step = x.new_ones(n_fits) if first_step is None else first_step
    resp, gates, ll_before = e_step(gate, p, x, y, fit, n_fits, smooth)
    new, starved = expert_m_step(p, resp, features, bounds, opts)
    if active is not None:
        new = {k: torch.where(active.view(-1, *[1] * (v.dim() - 1)), v, p[k]) for k, v in new.items()}
    direction, gain = gate_direction(gate, new, resp, gates, x, fit, n_fits, opts, smooth)
    reference = M.loglik(gate, new, x, y, fit, n_fits, smooth)
    new, ll_after, next_step = backtrack(gate, new, direction, gain, reference, first_step, x, y, fit,
                                         bounds, opts, smooth, active)
    return new, ll_before, ll_after, next_step, starved
