"""The estimator: maximum likelihood for a Gaussian MoE of linear experts in any input dimension,
batched over fits, and its public entry point :func:`fit_moe`.

Stages (every fit of a batch runs them at once, float64, on x's device):

1. Starts. ``init="data"``: ``n_starts`` data-driven starts per fit (k-means++ seeds and three
   Lloyd steps on the standardised (x, y); experts by least squares on each cluster, gate
   intercepts from the cluster shares, gate slopes 0 for the first start and N(0, 2^2) for the
   others), no truth needed. ``init=<params>``: the
   given parameters (the papers' near-truth protocol).
2. Screening (``init="data"`` only): ``screen_iters`` EM iterations on all starts at once. A top-K
   gate is approached by continuation from a dense softmax: the smoothed gate of model.py with
   temperature T = ``smooth0`` * ``smooth_decay``^t (large T is a dense softmax), then hard. The
   start with the best hard observed log-likelihood wins per fit.
3. Main loop: EM iterations (em.em_iteration) plus, for a top-K gate, a compass search on the
   observed likelihood that moves switching boundaries (em.compass). A fit is **converged** when
   its observed log-likelihood changes by less than ``tol`` per point in an iteration and (top-K)
   the compass step is below ``h_min``; converged fits are frozen. ``max_iter`` caps the loop; a
   fit that did not converge says so (``converged`` False). Converged fits are frozen and only
   the points of the fits still running are computed (:meth:`Fitter.step`).
4. Selection repair (top-K, :func:`repair`): the hard top-K likelihood has local maxima where a
   switching boundary is pinned between points: a point lies on the wrong side (an expert the
   gate switches off there explains it far better than the selected ones, a "cliff" of tens of
   nats), and no small move of the boundary lets it cross without pushing a neighbouring point
   over its own cliff (compass and Gauss-Newton steps both stall). A repair takes one of the
   ``repair_points`` worst such points of a fit, asks that the expert most responsible for
   *every* point (at the cliff point: the excluded expert that explains it) be among the top K,
   and finds the smallest change of the gate parameters that does it: the ranking scores are
   linear in the gate parameters, so "z ranks above the K-th strongest other expert" is a linear
   inequality, solved as a squared-hinge least-squares problem and re-linearised a few times (a
   convex-concave procedure); where that leaves points unserved (a junction of boundaries, where
   the rival matters), each choice of rival for up to three of them is solved too. The best
   repaired gate is kept only when it raises the observed log-likelihood; the main loop then
   polishes it. Rounds repeat (``n_repairs``) while some fit gains. Monotone, truth-free, and a
   no-op at a fit with no improving repair.

Experts that no point selects (top-K) or that hold less than d + 2 points of weight are
reported (``never_selected``, ``starved``), never silently kept.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.func import jvp

from replicate.papers.moe_gating import em
from replicate.papers.moe_gating import model as M

DTYPE = torch.float64


def generator(*key) -> torch.Generator:
    """A CPU generator seeded by sha256 of ``key`` (independent streams per key)."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


@dataclass(frozen=True)
class FitOptions:
    max_iter: int = 500
    tol: float = 1e-8  # nats per point
    n_starts: int = 4
    n_hops: int = 0  # top-K: perturbation restarts of the gate after convergence (basin hopping)
    hop_scale: float = 1.0  # their noise: N(0, hop_scale^2) on beta1, N(0, (0.6 hop_scale)^2) on beta0
    screen_iters: int = 40
    smooth0: float = 4.0  # top-K continuation: first temperature of a data-driven start (~dense)
    smooth_near: float = 0.1  # ... and of a given (near-truth) start
    smooth_decay: float = 0.8  # T <- decay T every iteration ...
    smooth_min: float = 1e-5  # ... until below this, then the hard gate
    n_repairs: int = 4  # top-K: selection-repair rounds after the main loop (0: none)
    repair_points: int = 3  # ... worst points per fit tried per round (the best improving one wins)
    repair_margin: float = 1e-3  # ... how far (logits) a repaired point's expert must out-rank its competitor
    repair_ccp: int = 5  # ... re-linearisations of the ranking constraints per repair
    em: em.EMOptions = em.EMOptions()


# --------------------------------------------------------------------------- starts
def data_starts(gate: M.Gate, x, y, bounds, k: int, n_starts: int, seed) -> dict:
    """``n_starts`` data-driven starts per fit, fits-major: start s of fit f is row f * n_starts + s."""
    d = x.shape[1]
    rows = {key: [] for key in M.PARAM_KEYS}
    for f, (lo, hi) in enumerate(bounds):
        xf, yf = x[lo:hi].cpu(), y[lo:hi].cpu()
        z = torch.cat([xf, yf[:, None]], 1)
        z = (z - z.mean(0)) / z.std(0).clamp_min(1e-12)
        for s in range(n_starts):
            g = generator("start", seed, f, s)
            centres = [z[torch.randint(len(z), (1,), generator=g)]]
            for _ in range(1, k):  # k-means++ seeding
                dist = torch.cdist(z, torch.cat(centres)).min(1).values ** 2
                centres.append(z[torch.multinomial(dist / dist.sum(), 1, generator=g)])
            c = torch.cat(centres)
            for _ in range(3):
                label = torch.cdist(z, c).argmin(1)
                c = torch.stack([z[label == j].mean(0) if (label == j).any() else c[j] for j in range(k)])
            label = torch.cdist(z, c).argmin(1)
            onehot = torch.nn.functional.one_hot(label, k).to(DTYPE) * 0.9 + 0.1 / k
            base = {"w1": torch.zeros(1, k, d, dtype=DTYPE), "w0": torch.zeros(1, k, dtype=DTYPE),
                    "a": torch.zeros(1, k, d, dtype=DTYPE), "b": torch.zeros(1, k, dtype=DTYPE),
                    "var": torch.full((1, k), float(yf.var()), dtype=DTYPE),
                    "tau": torch.ones(1, dtype=DTYPE)}
            p, _ = em.expert_m_step(base, onehot, em.expert_features(xf, yf), [(0, hi - lo)])
            share = onehot.mean(0)
            p["w0"] = (share.log() - share[-1].log())[None]
            if s > 0:  # diverse gate starts: random slopes (start 0 keeps a flat gate)
                w1 = 2.0 * torch.randn(k, d, generator=g, dtype=DTYPE)
                p["w1"] = (w1 - w1[-1:])[None]
            for key in M.PARAM_KEYS:
                rows[key].append(p[key])
    return {key: torch.cat(v).to(x.device) for key, v in rows.items()}


def _repeat_data(x, y, bounds, n_starts):
    """Data of every fit repeated per start (fits-major), with the new fit ids and bounds."""
    xs, ys, fits, new_bounds, at = [], [], [], [], 0
    for f, (lo, hi) in enumerate(bounds):
        for s in range(n_starts):
            xs.append(x[lo:hi]), ys.append(y[lo:hi])
            fits.append(torch.full((hi - lo,), f * n_starts + s, dtype=torch.long, device=x.device))
            new_bounds.append((at, at + hi - lo))
            at += hi - lo
    return torch.cat(xs), torch.cat(ys), torch.cat(fits), new_bounds


def _smooth_per_point(t_fit: torch.Tensor, fit: torch.Tensor):
    return t_fit[fit]


def screen(gate: M.Gate, starts: dict, x, y, bounds, n_starts: int, opts: FitOptions) -> tuple[dict, int]:
    """Run every start ``opts.screen_iters`` EM iterations (top-K: continuation from a dense
    softmax, T from ``smooth0``) and keep the best start of each fit by its observed
    log-likelihood under the temperature reached. Returns (params, that temperature)."""
    n_fits = len(bounds)
    xs, ys, fs, bs = _repeat_data(x, y, bounds, n_starts)
    total = n_fits * n_starts
    features = em.expert_features(xs, ys)
    p, step = starts, xs.new_ones(total)
    sparse = gate.sparse(starts["w1"].shape[1])
    # start s of every fit begins its continuation at T_s, geometric from smooth0 (a dense
    # softmax) to smooth_near (already sparse): different paths to the hard gate
    frac = torch.linspace(0, 1, n_starts, dtype=xs.dtype, device=xs.device) if n_starts > 1 else xs.new_zeros(1)
    temp = (opts.smooth0 ** (1 - frac) * opts.smooth_near ** frac).repeat(n_fits)  # (total,)
    for t in range(opts.screen_iters):
        smooth = temp[fs] if sparse else None
        p, _, _, step, _ = em.em_iteration(gate, p, xs, ys, fs, total, opts.em, step, features, bs, smooth)
        temp = temp * opts.smooth_decay
        temp = torch.where(temp >= opts.smooth_min, temp, torch.zeros_like(temp))
    ll = M.loglik(gate, p, xs, ys, fs, total).view(n_fits, n_starts)  # the hard gate decides
    ll = torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -math.inf))
    best = ll.argmax(1) + torch.arange(n_fits, device=x.device) * n_starts
    return M.select(p, best), temp[best]


def next_temperature(temp: float, opts: FitOptions) -> float:
    """The continuation schedule: T <- decay T, 0 (hard) once below ``smooth_min``."""
    temp = temp * opts.smooth_decay
    return temp if temp >= opts.smooth_min else 0.0


# --------------------------------------------------------------------------- main loop
class Fitter:
    """The main loop, one iteration at a time (the Lightning module calls :meth:`step` once per
    training step; :func:`run` loops). ``state``: dict of tensors (params and per-fit
    gate_step, h, ll, ll_change, done) so a checkpoint holds everything."""

    def __init__(self, gate: M.Gate, x, y, fit, n_fits: int, opts: FitOptions = FitOptions()):
        self.gate, self.x, self.y, self.fit, self.n_fits, self.opts = gate, x, y, fit, n_fits, opts
        self.bounds = em.fit_bounds(fit, n_fits)
        self.features = em.expert_features(x, y)
        self.sizes = torch.bincount(fit, minlength=n_fits).to(x.dtype)
        self._sub, self._sub_key = None, None  # the running fits' sub-batch (see step)

    def initial_state(self, p: dict, smooth=0.0) -> dict:
        """The state at parameters ``p``; a top-K gate starts its continuation at ``smooth``
        (a number or one per fit)."""
        b = self.n_fits
        ll = M.loglik(self.gate, p, self.x, self.y, self.fit, b)
        smooth = torch.as_tensor(smooth, dtype=self.x.dtype, device=self.x.device).expand(b).clone()
        if not self.gate.sparse(p["w1"].shape[1]):
            smooth.zero_()
        return {"params": p, "gate_step": self.x.new_ones(b), "h": self.x.new_full((b,), self.opts.em.h0),
                "smooth": smooth,
                "best": {k: v.clone() for k, v in p.items()}, "best_ll": ll.clone(),
                "ll": ll, "ll_change": self.x.new_full((b,), math.inf),
                "done": torch.zeros(b, dtype=torch.bool, device=self.x.device),
                "starved": torch.zeros(*p["w0"].shape, dtype=torch.bool, device=self.x.device)}

    def step(self, state: dict) -> dict:
        """One main-loop iteration for every fit not yet converged. Converged fits are frozen, so
        only the points of the fits still running are computed: a sub-batch of them, rebuilt when
        the set of running fits changes (every per-fit quantity depends on that fit's own points
        only, so a running fit's iteration does not depend on which others run beside it)."""
        active = ~state["done"]
        if bool(active.all()) or not bool(active.any()):
            return self._step(state)
        idx = active.nonzero()[:, 0]
        key = tuple(idx.tolist())
        if self._sub_key != key:
            rows = em.points_of(idx, self.bounds, self.x.device)
            remap = torch.full((self.n_fits,), -1, dtype=torch.long, device=self.x.device)
            remap[idx] = torch.arange(len(idx), device=self.x.device)
            self._sub = Fitter(self.gate, self.x[rows], self.y[rows], remap[self.fit[rows]], len(idx), self.opts)
            self._sub_key = key
        return _put(state, idx, self._sub._step(_take(state, idx)))

    def _step(self, state: dict) -> dict:
        gate, o = self.gate, self.opts
        active = ~state["done"]
        sparse = gate.sparse(state["params"]["w1"].shape[1])
        temp = state["smooth"]
        smooth = temp[self.fit] if sparse and bool((temp > 0).any()) else None
        p, before, after, gstep, starved = em.em_iteration(
            gate, state["params"], self.x, self.y, self.fit, self.n_fits, o.em, state["gate_step"],
            self.features, self.bounds, smooth, active)
        h = state["h"]
        hard = temp <= 0
        if sparse:
            p, after, h = em.compass(gate, p, after, h, self.x, self.y, self.fit, self.bounds, active & hard)
        change = (after - before) / self.sizes
        converged = (change.abs() < o.tol) & hard
        if sparse:
            converged &= h < o.em.h_min
        next_temp = temp * o.smooth_decay
        next_temp = torch.where(next_temp >= o.smooth_min, next_temp, torch.zeros_like(next_temp))
        best, best_ll = state["best"], state["best_ll"]
        if sparse and bool((~hard).any()):
            # continuation: remember the best point of the HARD likelihood seen on the path (the
            # start included); entering the hard phase, a fit resumes from it if it beats the
            # path's end (the smoothed optimum need not be near the hard one)
            hard_ll = M.loglik(gate, p, self.x, self.y, self.fit, self.n_fits)
            better = active & ~hard & (hard_ll > best_ll)
            best = {k: torch.where(better.view(-1, *[1] * (v.dim() - 1)), v, best[k]) for k, v in p.items()}
            best_ll = torch.where(better, hard_ll, best_ll)
            entering = active & ~hard & (next_temp <= 0)
            if bool(entering.any()):
                p = {k: torch.where(entering.view(-1, *[1] * (v.dim() - 1)), best[k], v) for k, v in p.items()}
                still = next_temp[self.fit] if bool((next_temp > 0).any()) else None
                after = torch.where(entering, best_ll, M.loglik(gate, p, self.x, self.y, self.fit, self.n_fits, still))
                change = torch.where(entering, torch.full_like(change, math.inf), change)
        keep = lambda new, old: torch.where(active, new, old)  # noqa: E731
        return {"params": p, "gate_step": keep(gstep, state["gate_step"]), "h": keep(h, h),
                "smooth": keep(next_temp, temp), "best": best, "best_ll": best_ll,
                "ll": keep(after, state["ll"]), "ll_change": keep(change, state["ll_change"]),
                "done": state["done"] | (active & converged),
                "starved": torch.where(active[:, None], starved, state["starved"])}

    def run(self, state: dict, max_iter: int) -> tuple[dict, int]:
        it = 0
        while it < max_iter and not bool(state["done"].all()):
            state = self.step(state)
            it += 1
        return state, it


def _take(state: dict, idx) -> dict:
    return {k: (_take(v, idx) if isinstance(v, dict) else v[idx]) for k, v in state.items()}


def _put(state: dict, idx, part: dict) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out[k] = _put(v, idx, part[k])
        else:
            out[k] = v.clone()
            out[k][idx] = part[k]
    return out


def hop_once(fitter: Fitter, state: dict, opts: FitOptions, key) -> tuple[dict, int]:
    """One basin hop for every fit: perturb the gate of the current solution, run the main loop
    again (continuation from ``smooth_near``), keep whichever ends with the higher observed
    log-likelihood. The hard top-K likelihood has many local maxima (it jumps wherever a
    boundary crosses a point); a hop lets a fit leave a poor one."""
    p = state["params"]
    g = generator("hop", *key)
    noise1 = opts.hop_scale * torch.randn(p["w1"].shape, generator=g, dtype=DTYPE).to(p["w1"].device)
    noise0 = 0.6 * opts.hop_scale * torch.randn(p["w0"].shape, generator=g, dtype=DTYPE).to(p["w0"].device)
    noise1[:, -1] = 0
    noise0[:, -1] = 0
    trial = {**{k: v.clone() for k, v in p.items()}, "w1": p["w1"] + noise1, "w0": p["w0"] + noise0}
    new, used = fitter.run(fitter.initial_state(trial, opts.smooth_near), opts.max_iter)
    better = new["ll"] > state["ll"]
    out = {}
    for key_, v in state.items():
        if key_ in ("params", "best"):
            out[key_] = {k: torch.where(better.view(-1, *[1] * (x.dim() - 1)), new[key_][k], x) for k, x in v.items()}
        else:
            w = better.view(-1, *[1] * (v.dim() - 1))
            out[key_] = torch.where(w, new[key_], v)
    return out, used


# --------------------------------------------------------------------------- selection repair (top-K)
def rank_jacobian(gate: M.Gate, p: dict, x, fit) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-K ranking scores (N, k) and their derivatives in the free gate parameters
    (N, k, n_free). The scores (beta_1^T x + beta_0, or beta_1^T x) are linear in the gate
    parameters, so s(theta + delta) = s + J delta exactly."""
    theta = M.gate_vector(gate, p)

    def scores(t):
        q = M.with_gate_vector(gate, p, t)
        return M.rank_scores(gate, q, M.gate_logits(gate, q, x, fit), x, fit)

    cols, s = [], None
    for j in range(theta.shape[1]):
        tangent = torch.zeros_like(theta)
        tangent[:, j] = 1.0
        s, ds = jvp(scores, (theta,), (tangent,))
        cols.append(ds)
    return s, torch.stack(cols, dim=-1)


def _squared_hinge(g, h, base, mu: float, lam: float, iters: int = 30):
    """argmin_e  lam |base + e|^2 + sum_n max(0, mu - h_n - g_n . e)^2  (convex, piecewise
    quadratic) for one fit: semismooth Newton with Armijo backtracking. g (N, q), h (N,), base (q,)."""
    eye = torch.eye(g.shape[1], dtype=g.dtype, device=g.device)
    e = torch.zeros_like(base)

    def objective(e_):
        v = (mu - h - g @ e_).clamp_min(0)
        return float(lam * ((base + e_) ** 2).sum() + (v * v).sum()), v

    f0, v = objective(e)
    for _ in range(iters):
        active = v > 0
        grad = 2 * lam * (base + e) - 2 * g.T @ v
        hess = 2 * lam * eye + 2 * g[active].T @ g[active]
        step = -torch.linalg.solve(hess, grad)
        slope, t = float(grad @ step), 1.0
        for _ in range(20):
            f1, v1 = objective(e + t * step)
            if f1 <= f0 + 1e-4 * t * slope:
                break
            t /= 2
        else:
            break
        e, f0, v = e + t * step, f1, v1
        if float((t * step).abs().max()) < 1e-12:
            break
    return e


def _ccp(scores, jac, z, top_k: int, fixed: dict, opts: FitOptions, reach: float = 1.0):
    """The gate change (q,) that puts expert z[n] among the top K at every point of one fit:
    z[n] must out-rank a rival (the K-th strongest other expert, re-chosen after each solve, or
    ``fixed[n]``), a linear inequality in the gate parameters (a convex-concave procedure). Only
    points a change of norm ``reach`` could push below the margin enter each solve."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    delta = scores.new_zeros(jac.shape[-1])
    pinned = torch.tensor(list(fixed), dtype=torch.long, device=scores.device)
    rivals = torch.tensor(list(fixed.values()), dtype=torch.long, device=scores.device)
    for _ in range(opts.repair_ccp):
        s = scores + jac @ delta
        rival = s.scatter(-1, z[:, None], -math.inf).topk(top_k, dim=-1).indices[:, top_k - 1]
        rival[pinned] = rivals
        g, h = jac[rows, z] - jac[rows, rival], s[rows, z] - s[rows, rival]
        near = h < opts.repair_margin + reach * g.norm(dim=-1)
        e = _squared_hinge(g[near], h[near], delta, opts.repair_margin, 1e-6)
        delta = delta + e
        if float(e.abs().max()) < 1e-10:
            break
    return delta


def repair_trials(gate: M.Gate, p: dict, x, y, fit, bounds, opts: FitOptions) -> tuple[dict, torch.Tensor]:
    """The best repaired gate of every fit (module docstring, stage 4) and its observed
    log-likelihood (B,); -inf where the fit has no cliff point.

    Per fit, its ``repair_points`` worst cliff points (an expert the hard gate switches off
    explains y better than the selected mixture) are tried one at a time: z = the most
    responsible expert of every point, the cliff point's best excluded expert there, and the
    smallest gate change that ranks z among the top K everywhere (:func:`_ccp`). Where the
    linearisation leaves some points unserved (near a junction of boundaries the choice of rival
    matters), each choice of rival for up to three such points is solved too."""
    n_fits = len(bounds)
    theta = M.gate_vector(gate, p)
    log_g = M.log_gates(gate, p, x, fit)
    log_e = M.log_experts(p, x, y, fit)
    point_ll = torch.logsumexp(log_g + log_e, dim=-1)
    rescue = torch.where(torch.isinf(log_g), log_e, torch.full_like(log_e, -math.inf))
    cliff = rescue.max(-1).values - point_ll  # nats an excluded expert would explain better
    responsible = (log_g + log_e).argmax(-1)
    scores, jac = rank_jacobian(gate, p, x, fit)
    k = scores.shape[1]
    best = theta.clone()
    best_ll = torch.full((n_fits,), -math.inf, dtype=x.dtype, device=x.device)
    for f, (lo, hi) in enumerate(bounds):
        pf = M.select(p, slice(f, f + 1))
        xf, yf, ff = x[lo:hi], y[lo:hi], fit[lo:hi] - f
        s_f, j_f = scores[lo:hi], jac[lo:hi]

        def served(t):
            q = M.with_gate_vector(gate, pf, t[None])
            return M.loglik(gate, q, xf, yf, ff, 1)[0], ~torch.isinf(M.log_gates(gate, q, xf, ff))

        worst = cliff[lo:hi].topk(min(opts.repair_points, hi - lo)).indices
        for i in worst.tolist():
            if not bool(cliff[lo + i] > 0):
                break
            z = responsible[lo:hi].clone()
            z[i] = rescue[lo + i].argmax()
            delta = _ccp(s_f, j_f, z, gate.top_k, {}, opts)
            ll, on = served(theta[f] + delta)
            tried = [(ll, delta)]
            unserved = (~on[torch.arange(hi - lo, device=x.device), z]).nonzero()[:, 0].tolist()[:3]
            if unserved:
                options = [[r for r in range(k) if r != int(z[u])] for u in unserved]
                for choice in itertools.product(*options):
                    d = _ccp(s_f, j_f, z, gate.top_k, dict(zip(unserved, choice)), opts)
                    tried.append((served(theta[f] + d)[0], d))
            ll, delta = max(tried, key=lambda t: float(t[0]))
            if bool(ll > best_ll[f]):
                best[f], best_ll[f] = theta[f] + delta, ll
    return M.with_gate_vector(gate, p, best), best_ll


def repair(fitter: Fitter, state: dict, opts: FitOptions) -> tuple[dict, int]:
    """Selection-repair rounds (module docstring, stage 4) for every fit; returns the state and
    the main-loop iterations spent polishing repaired fits."""
    used = 0
    for _ in range(opts.n_repairs):
        trial, trial_ll = repair_trials(fitter.gate, state["params"], fitter.x, fitter.y, fitter.fit,
                                        fitter.bounds, opts)
        gained = trial_ll > state["ll"] + 1e-6
        if not bool(gained.any()):
            break
        new = fitter.initial_state(_merge(gained, trial, state["params"]), 0.0)
        new["done"] = ~gained
        new, it = fitter.run(new, opts.max_iter)
        used += it
        state = {key: (_merge(gained, new[key], v) if key in new else v) for key, v in state.items()}
    return state, used


def _merge(mask, new, old):
    if isinstance(old, dict):
        return {k: _merge(mask, new[k], v) for k, v in old.items()}
    return torch.where(mask.view(-1, *[1] * (old.dim() - 1)), new, old)


def never_selected(gate: M.Gate, p: dict, x, fit, n_fits: int) -> torch.Tensor:
    """(B, k) bool: experts the hard gate selects at no data point of their fit."""
    k = p["w1"].shape[1]
    if not gate.sparse(k):
        return torch.zeros(n_fits, k, dtype=torch.bool, device=x.device)
    chosen = M.per_fit_sum(M.selected(gate, p, x, fit).to(x.dtype), fit, n_fits)
    return chosen == 0


class Estimator:
    """The estimator's stages as a state machine that :func:`estimate` (hence :func:`fit_moe`) and
    the figures' Lightning module (module.BatchedEM, one :meth:`advance` per training step)
    both drive, so a figure's fit and a ``fit_moe`` fit of the same data are the same:

    1. :meth:`begin`: starts (data-driven, or the given parameters) and, for data-driven starts,
       the screening (module docstring, stages 1-2);
    2. :meth:`advance`: one main-loop iteration for every fit (stage 3); once every fit has
       converged or the loop has run ``opts.max_iter`` iterations, the same call runs the
       basin hops (``opts.n_hops``) and the selection repair (stage 4) of a top-K gate and
       marks the state ``finished``.

    The state is a dict of tensors (the :class:`Fitter` state plus ``loop_iterations``,
    ``extra_iterations`` (spent polishing after hops and repairs), ``screen_iterations`` and
    ``finished``), so a checkpoint of it resumes exactly."""

    def __init__(self, gate: M.Gate, x, y, fit, n_fits: int, k: int, init="data",
                 opts: FitOptions = FitOptions(), seed=0):
        self.gate, self.k, self.init, self.opts, self.seed = gate, k, init, opts, seed
        self.fitter = Fitter(gate, x, y, fit, n_fits, opts)

    def begin(self) -> dict:
        f = self.fitter
        screened = 0
        if isinstance(self.init, str):
            starts = data_starts(self.gate, f.x, f.y, f.bounds, self.k, self.opts.n_starts, self.seed)
            p, temp = screen(self.gate, starts, f.x, f.y, f.bounds, self.opts.n_starts, self.opts)
            screened = self.opts.screen_iters
        else:
            p, temp = {key: v.clone() for key, v in self.init.items()}, self.opts.smooth_near
        state = f.initial_state(p, temp)
        zero = torch.zeros((), dtype=torch.long, device=f.x.device)
        state.update(loop_iterations=zero.clone(), extra_iterations=zero.clone(),
                     screen_iterations=zero + screened, finished=torch.zeros((), dtype=torch.bool, device=f.x.device))
        return state

    def loop_done(self, state: dict) -> bool:
        return bool(state["done"].all()) or int(state["loop_iterations"]) >= self.opts.max_iter

    def advance(self, state: dict) -> dict:
        """One main-loop iteration (none once the loop is done); finishes (hops, repair) when the
        loop is done. A finished state is returned unchanged."""
        if bool(state["finished"]):
            return state
        extra = {key: state[key] for key in ("loop_iterations", "extra_iterations", "screen_iterations", "finished")}
        core = {key: v for key, v in state.items() if key not in extra}
        if not self.loop_done(state):
            core = self.fitter.step(core)
            extra["loop_iterations"] = extra["loop_iterations"] + 1
        if self.loop_done({**core, **extra}):
            core, used = self.finish(core)
            extra["extra_iterations"] = extra["extra_iterations"] + used
            extra["finished"] = torch.ones_like(extra["finished"])
        return {**core, **extra}

    def finish(self, core: dict) -> tuple[dict, int]:
        """Basin hops and the selection repair (top-K only); returns the state and the main-loop
        iterations they spent."""
        used = 0
        if self.gate.sparse(self.k):
            for hop in range(self.opts.n_hops):
                core, it = hop_once(self.fitter, core, self.opts, (self.seed, hop))
                used += it
            core, it = repair(self.fitter, core, self.opts)
            used += it
        return core, used

    def run(self) -> dict:
        state = self.begin()
        while not bool(state["finished"]):
            state = self.advance(state)
        return state


def estimate(gate: M.Gate, x, y, fit, n_fits: int, k: int, init="data", opts: FitOptions = FitOptions(),
             seed=0) -> dict:
    """The whole estimator (:class:`Estimator`) on flat batched data; returns the final state plus
    ``iterations`` (screening + main loop + polishing after hops and repairs), ``screen_iterations``
    and ``never_selected``."""
    state = Estimator(gate, x, y, fit, n_fits, k, init, opts, seed).run()
    state["iterations"] = int(state["screen_iterations"] + state["loop_iterations"] + state["extra_iterations"])
    state["screen_iterations"] = int(state["screen_iterations"])
    state["never_selected"] = never_selected(gate, state["params"], x, fit, n_fits)
    return state


# --------------------------------------------------------------------------- public API
def _as_array(name, v):
    try:
        arr = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {type(v).__name__}") from None
    return arr


def _init_params(init: dict, r: int, k: int, d: int, gate: M.Gate, device) -> dict:
    need = {"beta0": (k,), "beta1": (k, d), "a": (k, d), "b": (k,), "sigma2": (k,)}
    unknown = set(init) - set(need) - {"tau"}
    if unknown:
        raise ValueError(f"init: unknown key(s) {sorted(unknown)}; expected {', '.join(need)}, tau")
    out = {}
    for key, shape in need.items():
        if key not in init:
            raise ValueError(f"init: missing {key!r} (shape {shape})")
        arr = _as_array(f"init[{key!r}]", init[key])
        if key in ("beta1", "a") and d == 1 and arr.shape[-1:] != (1,) and arr.shape[-1:] == (k,):
            arr = arr[..., None]
        if arr.shape == shape:
            arr = np.broadcast_to(arr, (r, *shape))
        if arr.shape != (r, *shape):
            raise ValueError(f"init[{key!r}] has shape {arr.shape}; expected {shape} or {(r, *shape)}")
        out[key] = torch.tensor(np.array(arr), dtype=DTYPE, device=device)
    if (out["sigma2"] <= 0).any():
        raise ValueError("init['sigma2'] must be positive")
    tau = _as_array("init['tau']", init.get("tau", 1.0))
    p = {"w1": out["beta1"] - out["beta1"][:, -1:], "w0": out["beta0"] - out["beta0"][:, -1:],
         "a": out["a"], "b": out["b"], "var": out["sigma2"],
         "tau": torch.tensor(np.broadcast_to(tau, (r,)).copy(), dtype=DTYPE, device=device)}
    if gate.kind == "activation" and ((out["beta1"][:, -1] != 0).any() or (out["beta0"][:, -1] != 0).any()):
        raise ValueError("init: an activation gate needs the last expert's beta0, beta1 at 0 (tanh is not shift invariant)")
    return p


def fit_moe(x, y, n_experts: int, gate: str = "softmax", top_k: int | None = None,
            temperature: bool | None = None, activation: str | None = None, init="data",
            n_starts: int = 4, seed: int = 0, max_iter: int = 500, tol: float = 1e-8,
            rank: str = "logit", n_hops: int = 0, n_repairs: int = 4, device=None) -> dict:
    """Maximum-likelihood fit of a Gaussian mixture of linear experts (model.py) with any input
    dimension; batched over replicates.

    Args:
        x: (n, d) inputs, or (n,) for d = 1; (R, n, d) for R replicates fitted at once.
        y: (n,) responses, or (R, n).
        n_experts: K >= 1.
        gate: "softmax" (dense), "topk" (needs ``top_k``), "temperature" or "activation".
            ``temperature=True`` turns "softmax" into "temperature"; ``activation="tanh"`` into
            "activation" (tanh is the one activation implemented).
        top_k: experts the top-K gate activates, 1 <= top_k <= K.
        init: "data" (``n_starts`` data-driven starts, the best observed log-likelihood wins;
            no truth needed) or a dict ``beta0`` (K,), ``beta1`` (K, d), ``a`` (K, d), ``b`` (K,),
            ``sigma2`` (K,), optional ``tau``, each optionally with a leading R: the starting
            point (the papers' near-truth protocol). The last expert's gate is re-referenced to 0.
        rank: what a top-K gate ranks by: "logit" (beta_1^T x + beta_0) or "slope" (beta_1^T x
            alone, beta_0 added after selection: ICLR 2024 Eq. (1)).
        n_hops: top-K only: basin hops after convergence (perturb the gate, refit, keep the
            better); the hard top-K likelihood has many local maxima.
        n_repairs: top-K only: selection-repair rounds after the main loop (module docstring,
            stage 4: a boundary pinned with a point on the wrong side is moved by the smallest
            gate change that serves every point's most responsible expert, kept only if the
            observed log-likelihood rises); 0 turns them off.
        max_iter, tol: the main loop's cap and its convergence rule (change of the observed
            log-likelihood per point; top-K also needs the compass step below its minimum).
        device: torch device; default CUDA when available, else CPU.

    Returns a dict of numpy arrays (leading R when x had one): ``beta0`` (K,), ``beta1`` (K, d),
    ``a`` (K, d), ``b`` (K,), ``sigma2`` (K,), ``tau`` (scalar, 1 unless temperature/activation),
    the last expert's gate fixed at 0; ``loglik`` (mean per point), ``converged`` (bool),
    ``iterations`` (screening + main loop + the polishing after hops and repairs),
    ``never_selected`` (K,) bool: experts the top-K gate selects at no data point (their
    parameters are not determined by the data), ``starved`` (K,) bool: experts with too little
    weight to refit (kept at their last values).
    """
    if temperature and activation:
        raise ValueError("choose temperature=True or activation='tanh', not both")
    if temperature:
        gate = "temperature" if gate == "softmax" else gate
    if activation is not None:
        if activation != "tanh":
            raise ValueError(f"activation={activation!r}; only 'tanh' is implemented")
        gate = "activation" if gate in ("softmax", "temperature") else gate
    if not isinstance(n_experts, (int, np.integer)) or n_experts < 1:
        raise ValueError(f"n_experts must be an integer >= 1, got {n_experts!r}")
    k = int(n_experts)
    if gate == "topk":
        if top_k is None or not 1 <= int(top_k) <= k:
            raise ValueError(f"top_k must be in [1, n_experts={k}] for gate='topk', got {top_k!r}")
    elif top_k is not None:
        raise ValueError(f"top_k={top_k} needs gate='topk', got gate={gate!r}")
    spec = M.Gate(gate, None if top_k is None else int(top_k), rank)
    xa, ya = _as_array("x", x), _as_array("y", y)
    batched = ya.ndim == 2
    if ya.ndim not in (1, 2):
        raise ValueError(f"y must have shape (n,) or (R, n), got {ya.shape}")
    if not batched:
        ya = ya[None]
        xa = xa[None] if xa.ndim in (1, 2) else xa
    if xa.ndim == 2 and xa.shape == ya.shape:
        xa = xa[..., None]
    if xa.ndim != 3 or xa.shape[:2] != ya.shape:
        raise ValueError(f"x has shape {_as_array('x', x).shape} and y {_as_array('y', y).shape}: "
                         "expected x (n, d) or (n,) with y (n,), or x (R, n, d) with y (R, n)")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("x and y must be finite (found NaN or inf)")
    r, n, d = xa.shape
    if n < 2 * k:
        raise ValueError(f"{n} points cannot fit {k} experts")
    if max_iter < 1 or tol < 0 or n_starts < 1 or n_repairs < 0:
        raise ValueError(f"need max_iter >= 1, tol >= 0, n_starts >= 1, n_repairs >= 0; got {max_iter}, "
                         f"{tol}, {n_starts}, {n_repairs}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    xt = torch.tensor(xa.reshape(r * n, d), dtype=DTYPE, device=device)
    yt = torch.tensor(ya.reshape(r * n), dtype=DTYPE, device=device)
    fit = torch.arange(r, device=device).repeat_interleave(n)
    if isinstance(init, str):
        if init != "data":
            raise ValueError(f"init={init!r}; expected 'data' or a dict of starting parameters")
        start = "data"
    elif isinstance(init, dict):
        start = _init_params(init, r, k, d, spec, device)
    else:
        raise ValueError(f"init must be 'data' or a dict, got {type(init).__name__}")
    opts = FitOptions(max_iter=int(max_iter), tol=float(tol), n_starts=int(n_starts), n_hops=int(n_hops),
                      n_repairs=int(n_repairs))
    state = estimate(spec, xt, yt, fit, r, k, start, opts, seed)
    p = state["params"]
    out = {"beta0": p["w0"], "beta1": p["w1"], "a": p["a"], "b": p["b"], "sigma2": p["var"],
           "tau": p["tau"], "loglik": state["ll"] / n, "converged": state["done"],
           "never_selected": state["never_selected"], "starved": state["starved"]}
    out = {key: v.detach().cpu().numpy() for key, v in out.items()}
    if not batched:
        out = {key: v[0] for key, v in out.items()}
    out["iterations"] = int(state["iterations"])
    out["tau"] = out["tau"] if batched else float(out["tau"])
    out["converged"] = out["converged"] if batched else bool(out["converged"])
    out["loglik"] = out["loglik"] if batched else float(out["loglik"])
    return out


def loglik_of(params: dict, x, y, gate: str = "softmax", top_k=None, rank: str = "logit") -> np.ndarray:
    """Mean observed log-likelihood per point of ``params`` (fit_moe's keys) on (x, y); batched as fit_moe."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if ya.ndim == 1:
        ya, xa = ya[None], (xa[None] if xa.ndim in (1, 2) else xa)
    if xa.ndim == 2:
        xa = xa[..., None]
    r, n, d = xa.shape
    k = np.asarray(params["beta0"]).shape[-1]
    spec = M.Gate(gate, top_k, rank)
    p = _init_params({key: params[key] for key in ("beta0", "beta1", "a", "b", "sigma2")}
                     | {"tau": params.get("tau", 1.0)}, r, k, d, M.Gate("softmax"), "cpu")
    xt = torch.tensor(xa.reshape(r * n, d), dtype=DTYPE)
    yt = torch.tensor(ya.reshape(r * n), dtype=DTYPE)
    fit = torch.arange(r).repeat_interleave(n)
    return (M.loglik(spec, p, xt, yt, fit, r) / n).numpy()


__all__ = ["Estimator", "FitOptions", "Fitter", "estimate", "fit_moe", "loglik_of", "replace"]
