"""Classical and neural MI baselines the MIST paper compares against (Gritsai et al. 2025, Sec. 5),
written here on numpy/scipy/torch.

* ``ksg``: Kraskov-Stögbauer-Grassberger estimator 1 (Kraskov et al. 2004, eq. 8),
  I = ψ(k) + ψ(N) - ⟨ψ(n_x + 1) + ψ(n_y + 1)⟩, with max-norm distances, ε_i the distance to the
  k-th joint neighbour and n_x, n_y the marginal neighbours strictly closer than ε_i; KD-trees
  (scipy cKDTree), one vectorised radius count per marginal. Columns are standardised first (the
  usual practice; unlike the paper's code we use every column, not only the first).
* ``ksg_normal_scores``: KSG on each column's normal scores Φ⁻¹((rank - ½)/n) (the empirical
  copula transform MIST's network applies to its input, ``model.normal_scores``), so that it has
  the same invariance to increasing marginal maps: a control for how much of MIST's advantage
  under heavy-tailed marginals comes from that transform alone.
* ``gaussian_mi_estimate`` (CCA): the Gaussian closed form on the sample covariance,
  ½ (log det S_xx + log det S_yy - log det S) = -½ Σ log(1 - ρ̂_i²) over canonical correlations.
* ``cca_normal_scores`` (the simplest strong baseline for a rank-invariant estimator): the
  Gaussian closed form on the correlation matrix R of every column's normal scores, shrunk
  towards the identity with the Ledoit–Wolf intensity λ (Ledoit & Wolf 2004; sklearn's
  ``ledoit_wolf_shrinkage`` on the scores): R_λ = (1 - λ) R + λ I, I = ½ (log det R_λ,xx +
  log det R_λ,yy - log det R_λ). Exact for a Gaussian copula as n grows; has MIST's invariance.
* ``bootstrap_interval``: percentile interval of an estimator over row resamples with
  replacement (the paper: 50 resamples around KSG). Resampling duplicates rows, which biases
  nearest-neighbour estimators upwards; that is part of what the calibration figure measures.
* ``infonce``: the InfoNCE lower bound (van den Oord et al. 2018; Poole et al. 2019) with a
  separable critic f(x)ᵀg(y) (two MLPs). The rows are split in half at random (seeded): the
  critic is trained full-batch with Adam for at most ``steps`` steps on one half, and the
  estimate is the bound on the held-out half, log m + mean_i [s_ii - logsumexp_j s_ij] (m rows),
  at its best step (early stopping on the held-out half: optimistic for InfoNCE, since the same
  half selects the step and gives the estimate). It cannot exceed log m. Without the split a
  critic that memorises the pairs drives the bound to log n whatever the true MI (5.3 nats at
  n = 200); without early stopping the overfitted critic drives the held-out bound far below 0.
* ``mine`` and ``nwj``: the same protocol (separable critic, split halves, full-batch Adam, the
  best held-out value over the steps) with the Donsker–Varadhan bound E_P[T] - log E_Q[e^T]
  (MINE, Belghazi et al. 2018, here without its moving-average gradient correction) and the
  NWJ bound E_P[T] - e^-1 E_Q[e^T] (Nguyen, Wainwright & Jordan 2010; Poole et al. 2019), E_Q
  over the off-diagonal pairs (x_i, y_j), i ≠ j, of the half.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from scipy.stats import norm, rankdata
from torch import nn


def _standardise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    v = v.reshape(len(v), -1)
    return (v - v.mean(0)) / (v.std(0) + 1e-12)


def _check_pair(x: np.ndarray, y: np.ndarray, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y need the same number of samples, got {len(x)} and {len(y)}")
    if len(x) < min_n:
        raise ValueError(f"need at least {min_n} samples, got {len(x)}")
    return _standardise(x), _standardise(y)


def ksg(x: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """KSG estimator 1 of I(X; Y) in nats (see the module docstring)."""
    x, y = _check_pair(x, y, k + 1)
    n = len(x)
    eps = cKDTree(np.hstack([x, y])).query(np.hstack([x, y]), k=k + 1, p=np.inf)[0][:, -1]
    radius = np.nextafter(eps, 0)  # strictly closer than ε_i
    nx = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True)  # includes the point
    ny = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True)
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx) + digamma(ny)))


def normal_scores(v: np.ndarray) -> np.ndarray:
    """Each column of v (n, d) to Φ⁻¹((rank - ½)/n), average ranks for ties."""
    v = np.asarray(v, dtype=np.float64).reshape(len(v), -1)
    return norm.ppf((rankdata(v, axis=0) - 0.5) / len(v))


def ksg_normal_scores(x: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """KSG (``ksg``) on the normal scores of every column of x and y."""
    x, y = _check_pair(x, y, k + 1)
    return ksg(normal_scores(x), normal_scores(y), k)


def gaussian_mi_estimate(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> float:
    """The Gaussian (CCA) closed form on the sample covariance, in nats."""
    x, y = _check_pair(x, y, 2)
    cov = np.cov(np.hstack([x, y]), rowvar=False).reshape(x.shape[1] + y.shape[1], -1)
    cov = cov + ridge * np.eye(len(cov))
    logdet = lambda m: np.linalg.slogdet(m)[1]
    dx = x.shape[1]
    return float(0.5 * (logdet(cov[:dx, :dx]) + logdet(cov[dx:, dx:]) - logdet(cov)))


def cca_normal_scores(x: np.ndarray, y: np.ndarray) -> float:
    """Gaussian MI of the Ledoit–Wolf-shrunk correlation matrix of the normal scores (nats)."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    x, y = _check_pair(x, y, 3)
    z = _standardise(np.hstack([normal_scores(x), normal_scores(y)]))
    lam = float(ledoit_wolf_shrinkage(z, assume_centered=True))
    r = (1 - lam) * (z.T @ z) / len(z) + lam * np.eye(z.shape[1])
    logdet = lambda m: np.linalg.slogdet(m)[1]
    dx = x.shape[1]
    return float(max(0.5 * (logdet(r[:dx, :dx]) + logdet(r[dx:, dx:]) - logdet(r)), 0.0))


def bootstrap_interval(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, resamples: int = 50,
                       levels=(0.05, 0.95), estimator=ksg) -> np.ndarray:
    """Percentiles ``levels`` of ``estimator`` over ``resamples`` row resamples (with replacement)."""
    n = len(x)
    values = [estimator(x[idx], y[idx]) for idx in rng.integers(0, n, (resamples, n))]
    return np.quantile(values, levels)


class SeparableCritic(nn.Module):
    def __init__(self, dx: int, dy: int, hidden: int, embed: int):
        super().__init__()
        mlp = lambda d: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, embed))
        self.f, self.g = mlp(dx), mlp(dy)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores s_ij = f(x_i)ᵀ g(y_j), (n, n)."""
        return self.f(x) @ self.g(y).T


def infonce_bound(scores: torch.Tensor) -> torch.Tensor:
    """log n + mean_i [s_ii - logsumexp_j s_ij]."""
    n = scores.shape[0]
    return scores.diagonal().mean() - torch.logsumexp(scores, 1).mean() + np.log(n)


def _off_diagonal_logmeanexp(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[0]
    off = scores.masked_fill(torch.eye(n, dtype=torch.bool), -torch.inf)
    return torch.logsumexp(off.flatten(), 0) - np.log(n * (n - 1))


def dv_bound(scores: torch.Tensor) -> torch.Tensor:
    """Donsker–Varadhan (MINE): mean_i s_ii - log mean_{i≠j} exp(s_ij)."""
    return scores.diagonal().mean() - _off_diagonal_logmeanexp(scores)


def nwj_bound(scores: torch.Tensor) -> torch.Tensor:
    """NWJ: mean_i s_ii - e^-1 mean_{i≠j} exp(s_ij)."""
    return scores.diagonal().mean() - torch.exp(_off_diagonal_logmeanexp(scores) - 1.0)


BOUNDS = {"infonce": infonce_bound, "mine": dv_bound, "nwj": nwj_bound}


def mine(x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 5e-3, hidden: int = 64,
         embed: int = 32, seed: int = 0) -> float:
    """MINE (Donsker–Varadhan) estimate (nats), the protocol of ``infonce``."""
    return neural_estimate(x, y, "mine", steps, lr, hidden, embed, seed)


def nwj(x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 5e-3, hidden: int = 64,
        embed: int = 32, seed: int = 0) -> float:
    """NWJ estimate (nats), the protocol of ``infonce``."""
    return neural_estimate(x, y, "nwj", steps, lr, hidden, embed, seed)


def infonce(x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 5e-3, hidden: int = 64,
            embed: int = 32, seed: int = 0) -> float:
    """InfoNCE estimate (nats): the best held-out-half bound over ``steps`` full-batch Adam steps
    on the other half (see the module docstring)."""
    return neural_estimate(x, y, "infonce", steps, lr, hidden, embed, seed)


def neural_estimate(x: np.ndarray, y: np.ndarray, bound: str, steps: int = 300, lr: float = 5e-3,
                    hidden: int = 64, embed: int = 32, seed: int = 0) -> float:
    """The best held-out-half value of ``BOUNDS[bound]`` over ``steps`` full-batch Adam steps of a
    separable critic trained on the other half (module docstring)."""
    fn = BOUNDS[bound]
    x, y = _check_pair(x, y, 4)
    torch.manual_seed(seed)
    order = torch.randperm(len(x))
    xt, yt = torch.from_numpy(x).float()[order], torch.from_numpy(y).float()[order]
    half = len(x) // 2
    critic = SeparableCritic(x.shape[1], y.shape[1], hidden, embed)
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    best = -np.inf
    for _ in range(steps):
        loss = -fn(critic(xt[:half], yt[:half]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            best = max(best, float(fn(critic(xt[half:], yt[half:]))))
    return best
