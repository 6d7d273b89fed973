"""How far a fit is from the truth: Voronoi losses, per-parameter errors, Hellinger distance,
and the log-log slope of an error against n with a bootstrap interval.

Voronoi cells (ICLR 2024, Sec. 3; NeurIPS 2023 sister paper, Eq. (5)): each fitted atom belongs
to the cell A_j of its nearest true expert. Our choice of "nearest": Euclidean distance in the
expert parameters (a, b, var); the gate slope is left out because a temperature gate's raw
slope is only identified up to scale. Vectors (w1, a in R^d) enter by their Euclidean norm
|.|. A fit whose atoms come in another order than the truth's (a data-driven start) is first
permuted and its gate re-referenced to the atom of the truth's last expert (:func:`align`). The
losses, with e_i = exp(w0_i) and the last expert's gate fixed at 0 in both fit and truth:

    D = sum_j | sum_{i in A_j} e_i - exp(w0*_j) |
        + sum_j sum_{i in A_j} e_i ( |dw1_i|^r + |db_i|^r + |da_i|^(r/2) + |dvar_i|^(r/2) )

with r = 1 and r/2 replaced by 1 in cells holding one atom (D1, exact-specified, ICLR 2024
Theorem 1) and r = rbar(|A_j|) in cells holding several (D2, Theorem 3), rbar(2) = 4,
rbar(3) = 6 (the solvability exponents of the system of polynomial equations in Ho & Nguyen
2016, used by both papers). Parameter estimates in a cell of two atoms are then expected at
n^(-1/(2 rbar)) = n^-1/8 for w1, b and n^(-1/rbar) = n^-1/4 for a, var.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from replicate.papers.moe_gating import model as M

RBAR = {1: 1, 2: 4, 3: 6}
EXPERT_KEYS = ("a", "b", "var")


def _expert_vectors(p: dict) -> torch.Tensor:
    return torch.cat([p["a"], p["b"][..., None], p["var"][..., None]], dim=-1)  # (B, k, d + 2)


def assign_cells(p: dict, truth: dict) -> torch.Tensor:
    """Index of the nearest true expert of every fitted atom, shape (B, k)."""
    return torch.cdist(_expert_vectors(p), _expert_vectors(truth)).argmin(-1)


def align(p: dict, truth: dict, shift_invariant: bool = True) -> dict:
    """``p`` with its atoms permuted to best match the truth's experts (exact-specified fits:
    the permutation minimising the summed distance in (a, b, var)) and its gate re-referenced to
    the atom matched to the truth's last expert (w -> w - w_last; the softmax, temperature and
    top-K gates are invariant to that shift, the activation gate is not, so its fits are never
    re-referenced: ``shift_invariant=False`` permutes nothing)."""
    k = p["w0"].shape[1]
    if not shift_invariant or k != truth["w0"].shape[1]:
        return p
    import itertools

    cost = torch.cdist(_expert_vectors(p), _expert_vectors(truth))  # (B, k fitted, k true)
    perms = torch.tensor(list(itertools.permutations(range(k))), device=cost.device)  # (P, k)
    # perm[j] = fitted atom for true expert j
    total = cost[:, perms, torch.arange(k, device=cost.device)].sum(-1)  # (B, P)
    order = perms[total.argmin(1)]  # (B, k)
    out = {}
    for key, v in p.items():
        if key == "tau":
            out[key] = v
        elif v.dim() == 3:
            out[key] = v.gather(1, order[..., None].expand(-1, -1, v.shape[2]))
        else:
            out[key] = v.gather(1, order)
    out["w1"] = out["w1"] - out["w1"][:, -1:]
    out["w0"] = out["w0"] - out["w0"][:, -1:]
    return out


def _cell_sizes(cells: torch.Tensor, k_star: int) -> torch.Tensor:
    """|A_j| of each fitted atom's own cell, shape (B, k)."""
    counts = torch.nn.functional.one_hot(cells, k_star).sum(1)  # (B, k*)
    return counts.gather(1, cells)


def atom_errors(p: dict, truth: dict, cells: torch.Tensor) -> dict[str, torch.Tensor]:
    """|fitted - true| (Euclidean norm for vectors) of every atom against its cell's true expert, each (B, k)."""
    out = {}
    for key in ("w1", "a", "b", "var"):
        if p[key].dim() == 3:
            true = truth[key].gather(1, cells[..., None].expand(-1, -1, p[key].shape[2]))
            out[key] = (p[key] - true).norm(dim=-1)
        else:
            out[key] = (p[key] - truth[key].gather(1, cells)).abs()
    return out


def weight_error(p: dict, truth: dict, cells: torch.Tensor) -> torch.Tensor:
    """sum_j |sum_{i in A_j} exp(w0_i) - exp(w0*_j)|, shape (B,)."""
    mass = torch.zeros_like(truth["w0"]).scatter_add_(1, cells, p["w0"].exp())
    return (mass - truth["w0"].exp()).abs().sum(1)


def voronoi_loss(p: dict, truth: dict, cells: torch.Tensor) -> torch.Tensor:
    """D1 where every cell holds one atom, D2 otherwise (module docstring), shape (B,)."""
    sizes = _cell_sizes(cells, truth["w0"].shape[1])
    if int(sizes.max()) > max(RBAR):
        raise ValueError(f"a Voronoi cell holds {int(sizes.max())} atoms; rbar is known for <= {max(RBAR)}")
    r = torch.tensor([RBAR[int(s)] for s in sizes.flatten()], dtype=p["w0"].dtype,
                     device=sizes.device).view_as(sizes)
    half = torch.where(sizes > 1, r / 2, torch.ones_like(r))
    err = atom_errors(p, truth, cells)
    per_atom = err["w1"] ** r + err["b"] ** r + err["a"] ** half + err["var"] ** half
    return weight_error(p, truth, cells) + (p["w0"].exp() * per_atom).sum(1)


def parameter_errors(p: dict, truth: dict, cells: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-parameter errors summed over atoms, all atoms and only atoms in split cells, (B,) each."""
    sizes = _cell_sizes(cells, truth["w0"].shape[1])
    split = (sizes > 1).to(p["w0"].dtype)
    out = {"weight": weight_error(p, truth, cells)}
    for key, err in atom_errors(p, truth, cells).items():
        out[key] = err.sum(1)
        out[f"split_{key}"] = (err * split).sum(1)
    out["n_split_atoms"] = split.sum(1)
    return out


def temperature_errors(p: dict, truth: dict) -> dict[str, torch.Tensor]:
    """Gate errors of a temperature or activation gate (free experts; atoms in truth order), (B,) each.

    raw:        |dw1| + |dw0| + |dtau|                 (what the paper's parameters are)
    effective:  |d(w1/tau)| + |d(w0/tau)|              (the logit coefficients: always identified)
    identified: |d(w1/||w1||)| + |d(w0/||w1||)| + |d(tau/||w1||)|   (invariant to (w, tau) -> c (w, tau))
    (sums of absolute differences over every free entry; ||w1|| over all free gate slopes)
    """
    k = p["w1"].shape[1]

    def parts(q, form):
        w1 = q["w1"][:, : k - 1].flatten(1)
        w0, tau = q["w0"][:, : k - 1], q["tau"][:, None]
        norm = {"raw": torch.ones_like(tau), "effective": tau,
                "identified": w1.norm(dim=1, keepdim=True)}[form]
        pieces = [w1 / norm, w0 / norm] + ([] if form == "effective" else [tau / norm])
        return torch.cat(pieces, dim=1)

    return {f"gate_{form}": (parts(p, form) - parts(truth, form)).abs().sum(1)
            for form in ("raw", "effective", "identified")}


def x_grid(d: int, nx: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Quadrature points for X ~ U(0, 1)^d: the nx-point midpoint grid for d = 1, else the first
    nx points of a scrambled Sobol sequence (fixed seed), shape (nx, d)."""
    if d == 1:
        return ((torch.arange(nx, dtype=dtype, device=device) + 0.5) / nx)[:, None]
    engine = torch.quasirandom.SobolEngine(d, scramble=True, seed=0)
    return engine.draw(nx, dtype=dtype).to(device)


def hellinger(gate: M.Gate, p: dict, truth_gate: M.Gate, truth: dict, nx: int = 1024,
              ny: int = 160, fits_per_chunk: int = 8) -> torch.Tensor:
    """Hellinger distance between fitted and true conditional densities, averaged over
    X ~ Uniform(0, 1)^d: sqrt(E_X[1 - int sqrt(p(y|X) p*(y|X)) dy]), by quadrature on nx x-points
    (:func:`x_grid`; nx is large so top-K switching boundaries are resolved) and ny midpoints in
    y, shape (B,)."""
    dtype, device = p["w0"].dtype, p["w0"].device
    d = p["w1"].shape[2]
    sd = truth["var"].sqrt().max()
    corners = torch.tensor(list(__import__("itertools").product([0.0, 1.0], repeat=d)), dtype=dtype, device=device)
    means = torch.einsum("bkd,cd->bkc", truth["a"], corners) + truth["b"][..., None]
    lo, hi = float(means.min() - 8 * sd), float(means.max() + 8 * sd)
    xs = x_grid(d, nx, dtype, device)
    ys = lo + (hi - lo) * (torch.arange(ny, dtype=dtype, device=device) + 0.5) / ny
    gx = xs.repeat_interleave(ny, dim=0)
    gy = ys.repeat(nx)
    out = []
    for start in range(0, p["w0"].shape[0], fits_per_chunk):
        sub = {key: v[start: start + fits_per_chunk] for key, v in p.items()}
        sub_true = {key: v[start: start + fits_per_chunk] for key, v in truth.items()}
        m = sub["w0"].shape[0]
        fit = torch.arange(m, device=device).repeat_interleave(gx.shape[0])
        x, y = gx.repeat(m, 1), gy.repeat(m)
        log_p = torch.logsumexp(M.joint_log(gate, sub, x, y, fit), -1)
        log_q = torch.logsumexp(M.joint_log(truth_gate, sub_true, x, y, fit), -1)
        affinity = (0.5 * (log_p + log_q)).exp().view(m, nx * ny).sum(1) * (hi - lo) / ny / nx
        out.append((1 - affinity).clamp_min(0).sqrt())
    return torch.cat(out)


def loglog_slope(n, errors, window=(0, math.inf), n_boot: int = 2000, seed: int = 0):
    """Slope of log(mean error) on log n inside ``window`` (inclusive), and a 95% bootstrap
    interval over replicates. ``errors`` is (replicates, len(n)).

    Returns (slope, lower, upper, intercept); the intercept is of the point estimate's line."""
    n, errors = np.asarray(n, float), np.asarray(errors, float)
    inside = (n >= window[0]) & (n <= window[1])
    if inside.sum() < 2:
        raise ValueError(f"window {window} holds {int(inside.sum())} sample sizes; a slope needs >= 2")
    logn = np.log(n[inside])
    design = np.stack([logn, np.ones_like(logn)], 1)
    pinv = np.linalg.pinv(design)
    slope, intercept = pinv @ np.log(errors[:, inside].mean(0))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, errors.shape[0], size=(n_boot, errors.shape[0]))
    boot = (pinv @ np.log(errors[rows][:, :, inside].mean(1)).T)[0]
    lower, upper = np.percentile(boot, [2.5, 97.5])
    return float(slope), float(lower), float(upper), float(intercept)
