"""Out-of-distribution families for a rank-invariant MI estimator (test sets only; no training
module imports this file).

MIST's network reads each column's normal scores (``model.normal_scores``), so a strictly
increasing map of a coordinate is invisible to it, and every Gaussian copula under any increasing
marginals is, for the network, a training family. The families here change the *copula* (the
joint law of the ranks), which no rank transform removes:

``clayton``  Clayton copula (lower-tail dependence), density
             c(u, v) = (1 + θ)(uv)^(-θ-1) (u^-θ + v^-θ - 1)^(-2-1/θ), θ > 0; sampled by
             Marshall–Olkin: V ~ Γ(1/θ), U_i = (1 + E_i/V)^(-1/θ), E_i ~ Exp(1).
``gumbel``   Gumbel copula (upper-tail dependence), C(u, v) = exp(-(s^θ + t^θ)^(1/θ)), s = -log u,
             t = -log v, θ >= 1; sampled by Marshall–Olkin with a positive α-stable frailty S
             (α = 1/θ, Kanter's representation, E exp(-λS) = exp(-λ^α)): U_i = exp(-(E_i/S)^α).
``tcop1``    a Student-t copula with ν = 1 (Cauchy; training uses ν in 2..10) on correlated pairs,
             each pair with its own χ² scale; MI per pair = -½ log(1 - ρ²) + the ν-correction of
             a bivariate t (``families.student_correction``).
``square``   Y = X² + σ ε, X, ε ~ N(0, 1): non-monotone dependence (rank correlation 0).
``sine``     Y = sin(2X) + σ ε: non-monotone, periodic.

Every family couples m = min(d_x, d_y) coordinate pairs (X_i, Y_i) independently (the others are
independent N(0, 1)), so MI = Σ_i MI_pair_i; each pair carries the target MI / m. Copula samples get
N(0, 1) marginals (their MI does not depend on the marginals; Gaussian marginals do not hurt KSG
or CCA). True MI per pair:

* copulas: MI(θ) = E[log c(U, V)], a Monte Carlo mean over 100 000 draws with common random
  numbers across θ (standard error about 0.01 nats), tabulated on a θ grid and inverted by
  interpolation (monotone: running maximum); the recorded MI is the table's value at the θ used.
* Y = g(X) + σε: MI(σ) = h(Y) - ½ log(2πe σ²), h(Y) by quadrature of p(y) = E_X φ_σ(y - g(X)) on
  a grid, tabulated on a σ grid and inverted the same way.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import special

from replicate.papers.mist.families import student_correction

OOD_COPULAS = ("clayton", "gumbel", "tcop1")
OOD_NONMONOTONE = ("square", "sine")
OOD_FAMILIES = OOD_COPULAS + OOD_NONMONOTONE
PAIR_MI_MAX = 2.5  # the tables cover per-pair MI up to this (nats)


# --------------------------------------------------------------------------- copula densities
def clayton_log_density(u: np.ndarray, v: np.ndarray, theta: float) -> np.ndarray:
    """log c(u, v) of the Clayton copula (module docstring), stable for large θ."""
    a, b = -theta * np.log(u), -theta * np.log(v)
    s = np.logaddexp(a, b)
    log_sum = s + np.log1p(-np.exp(-s))  # log(u^-θ + v^-θ - 1)
    return np.log1p(theta) - (theta + 1) * (np.log(u) + np.log(v)) - (2 + 1 / theta) * log_sum


def gumbel_log_density(u: np.ndarray, v: np.ndarray, theta: float) -> np.ndarray:
    """log c(u, v) of the Gumbel copula: c = C (uv)^-1 (st)^(θ-1) (s^θ + t^θ)^(1/θ - 2)
    (A + θ - 1), s = -log u, t = -log v, A = (s^θ + t^θ)^(1/θ) (c = 1 at θ = 1)."""
    s, t = -np.log(u), -np.log(v)
    log_w = np.logaddexp(theta * np.log(s), theta * np.log(t))  # log(s^θ + t^θ)
    big_a = np.exp(log_w / theta)
    return (-big_a + s + t + (theta - 1) * (np.log(s) + np.log(t)) + (1 / theta - 2) * log_w
            + np.log(big_a + theta - 1))


def _log_uniforms(family: str, theta: float, e: np.ndarray, frailty_u: np.ndarray,
                  frailty_w: np.ndarray) -> np.ndarray:
    """log U (n, 2) of copula draws from exponentials ``e`` (n, 2) and the frailty's uniforms
    (Clayton: Γ(1/θ) from ``frailty_u`` by its inverse cdf; Gumbel: Kanter's stable from
    ``frailty_u`` ~ U(0, 1) and ``frailty_w`` ~ Exp(1))."""
    if family == "clayton":
        v = special.gammaincinv(1.0 / theta, frailty_u)[:, None]
        return -np.log1p(e / np.maximum(v, 1e-300)) / theta
    alpha = 1.0 / theta
    if alpha >= 1.0:
        return -e
    ang = np.pi * frailty_u
    log_s = (np.log(np.sin(alpha * ang)) - np.log(np.sin(ang)) / alpha
             + (1 - alpha) / alpha * (np.log(np.sin((1 - alpha) * ang)) - np.log(frailty_w)))
    return -np.exp(alpha * (np.log(e) - log_s[:, None]))


def sample_copula_pair(family: str, theta: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) normal scores Φ⁻¹(U) of a Clayton or Gumbel copula with parameter θ."""
    e = rng.exponential(size=(n, 2))
    log_u = _log_uniforms(family, theta, e, rng.uniform(1e-12, 1 - 1e-12, n), rng.exponential(size=n))
    return special.ndtri_exp(np.minimum(log_u, -1e-16))


COPULA_THETAS = {"clayton": np.concatenate([[1e-4], np.geomspace(0.01, 60.0, 40)]),
                 "gumbel": 1.0 + np.concatenate([[1e-4], np.geomspace(0.005, 40.0, 40)])}
LOG_DENSITY = {"clayton": clayton_log_density, "gumbel": gumbel_log_density}


@lru_cache(maxsize=None)
def copula_mi_table(family: str, draws: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(θ grid, MI(θ)) for ``clayton`` or ``gumbel`` (module docstring); monotone in θ."""
    rng = np.random.default_rng(20261207)
    e = rng.exponential(size=(draws, 2))
    fu, fw = rng.uniform(1e-12, 1 - 1e-12, draws), rng.exponential(size=draws)
    values = []
    for theta in COPULA_THETAS[family]:
        log_u = np.minimum(_log_uniforms(family, float(theta), e, fu, fw), -1e-300)
        u = np.clip(np.exp(log_u), 1e-300, 1 - 1e-16)
        values.append(float(np.mean(LOG_DENSITY[family](u[:, 0], u[:, 1], float(theta)))))
    return COPULA_THETAS[family], np.maximum.accumulate(np.maximum(values, 0.0))


def copula_theta(family: str, mi: float) -> tuple[float, float]:
    """(θ, MI(θ)) with MI(θ) ≈ ``mi`` (interpolated in log(θ - θ_0) on the table)."""
    thetas, mis = copula_mi_table(family)
    theta = float(np.interp(mi, mis, thetas))
    return theta, float(np.interp(theta, thetas, mis))


# --------------------------------------------------------------------------- y = g(x) + noise
G = {"square": np.square, "sine": lambda x: np.sin(2.0 * x)}
SIGMAS = np.geomspace(0.03, 20.0, 32)


def noisy_function_mi(name, sigma: float, x_points: int = 6001) -> float:
    """MI of (X, g(X) + σε) by quadrature: h(Y) on a y grid minus ½ log(2πe σ²); ``name`` is a key
    of ``G`` or a function g."""
    x = np.linspace(-7.0, 7.0, x_points)
    w = np.exp(-0.5 * x * x)
    w /= w.sum()
    gx = (G[name] if isinstance(name, str) else name)(x)
    y = np.arange(gx.min() - 8 * sigma, gx.max() + 8 * sigma, sigma / 6)
    p = np.zeros_like(y)
    for start in range(0, len(x), 500):
        sl = slice(start, start + 500)
        p += (w[sl, None] * np.exp(-0.5 * ((y[None, :] - gx[sl, None]) / sigma) ** 2)).sum(0)
    p /= sigma * np.sqrt(2 * np.pi)
    dy = y[1] - y[0]
    ok = p > 0
    h_y = -float(np.sum(p[ok] * np.log(p[ok])) * dy)
    return max(h_y - 0.5 * np.log(2 * np.pi * np.e * sigma ** 2), 0.0)


@lru_cache(maxsize=None)
def noisy_function_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(σ grid, MI(σ)), MI decreasing in σ (running minimum)."""
    mis = np.minimum.accumulate([noisy_function_mi(name, float(s)) for s in SIGMAS])
    return SIGMAS, mis


def noise_sigma(name: str, mi: float) -> tuple[float, float]:
    """(σ, MI(σ)) with MI(σ) ≈ ``mi`` (log-σ interpolation on the table)."""
    sig, mis = noisy_function_table(name)
    log_s = float(np.interp(mi, mis[::-1], np.log(sig)[::-1]))
    return float(np.exp(log_s)), float(np.interp(log_s, np.log(sig), mis))


# --------------------------------------------------------------------------- datasets
def _pair(family: str, mi: float, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """One coupled pair (x (n,), y (n,), its MI) with MI ≈ ``mi``."""
    if family in ("clayton", "gumbel"):
        theta, true = copula_theta(family, mi)
        z = sample_copula_pair(family, theta, n, rng)
        return z[:, 0], z[:, 1], true
    if family == "tcop1":
        corr = student_correction(1.0, 1, 1)
        rho = float(np.sqrt(-np.expm1(-2.0 * max(mi - corr, 0.0))))
        g = rng.standard_normal((n, 2))
        g[:, 1] = rho * g[:, 0] + np.sqrt(1 - rho ** 2) * g[:, 1]
        t = g / np.sqrt(rng.chisquare(1.0, (n, 1)))
        return t[:, 0], t[:, 1], -0.5 * np.log1p(-rho ** 2) + corr
    if family in G:
        sigma, true = noise_sigma(family, mi)
        x = rng.standard_normal(n)
        return x, G[family](x) + sigma * rng.standard_normal(n), true
    raise ValueError(f"unknown OOD family {family!r}; expected one of {OOD_FAMILIES}")


def sample_ood(family: str, n: int, dx: int, dy: int, rng: np.random.Generator,
               mi: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(x (n, d_x), y (n, d_y), true MI): m = min(d_x, d_y) coupled pairs carrying ``mi``/m each
    (``tcop1``: at least its ν-correction per pair), other coordinates independent N(0, 1)."""
    m = min(dx, dy)
    x, y = rng.standard_normal((n, dx)), rng.standard_normal((n, dy))
    total = 0.0
    for i in range(m):
        x[:, i], y[:, i], pair_mi = _pair(family, min(mi / m, PAIR_MI_MAX), n, rng)
        total += pair_mi
    return x, y, total
