"""Synthetic joint distributions with closed-form mutual information (MIST's meta-dataset).

MIST (Gritsai et al. 2025, arXiv 2511.18945, Sec. 3 "meta-dataset") trains on samples from the
families of the "Beyond Normal" benchmark (Czyż et al. 2023, the ``bmi`` package): a base
distribution with known MI, then a coordinate-wise bijection of X and of Y, which leaves MI
unchanged. A family is named ``<base>-<structure>-<transform>``:

bases / structures (d_x and d_y may differ; m = min(d_x, d_y))
  ``normal-dense``   X, Y ~ N(0, Σ): within-block equicorrelation a, every X_i–Y_j correlated
                     (one canonical correlation ρ), MI = -½ log(1 - ρ²).
  ``normal-sparse``  k ~ U{1..m} disjoint pairs (X_i, Y_π(i)) with correlation ρ, the other
                     coordinates independent: MI = -(k/2) log(1 - ρ²).
  ``normal-2pair``   the same with k = min(2, m) (bmi's "2-pair").
  ``normal-lvm``     latent Z ~ N(0, I_k), k ~ U{1..m}: X = A Z + σ ε, Y = B Z + σ η (A, B Gaussian).
  For every Gaussian: MI = ½ (log det Σ_xx + log det Σ_yy - log det Σ)  (``gaussian_mi``).
  ``student-*``      the same dispersion Σ, multivariate Student-t with ν ~ U{ν_min..ν_max}
                     degrees of freedom: MI = the Gaussian MI of Σ + a term that depends only on
                     (ν, d_x, d_y) (``student_correction``; it is the difference of the entropies'
                     digamma/log-gamma parts, from the multivariate-t entropy).
  ``additive-noise`` X ~ U(0,1)^{d_x}; the first m coordinates of Y are X_i + U(-ε, ε), the
                     others independent U(0,1) + U(-ε, ε); per noisy pair MI = ε - log 2ε for
                     ε ≤ ½, 1/(4ε) otherwise (``uniform_noise_mi``).
Independence (target MI = 0): every family has an independent member with the same marginals
(ρ = 0; for the LVM, Y's loadings drawn for an independent latent; for additive noise, Y built
from an independent copy of X). The meta-distribution puts real prior mass on it (``data.py``).
transforms (bijections applied to every coordinate of X and of Y)
  ``base`` (identity), ``halfcube`` sign(x)|x|^{3/2}, ``asinh``, ``wiggly`` x + 0.4 sin x +
  0.2 sin 2.5x (derivative ≥ 0.1 > 0), ``normcdf`` Φ(x) (never used in training: out-of-meta-
  distribution only).

Strength: the caller gives a target MI m (``data.py`` draws it from the meta-distribution's MI
prior) and the family sets its strength parameter to hit it (closed form for dense/sparse/2-pair/
additive, bisection on the noise level for the LVM); for Student-t the target applies to the total
MI (the Gaussian part is m minus the ν-correction, at least 0, so a Student-t pair is never
independent: its MI is at least the correction, which the recorded MI includes). The recorded MI is
always recomputed from the drawn parameters by the formulas above. Deviation from the paper: its
strength priors are bmi's task parameters; ours target an explicit MI prior.

``sample_dataset(family, n, d_x, d_y, rng, mi)`` → (x (n, d_x), y (n, d_y), true MI) in float64.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from scipy.stats import norm

TRANSFORMS = ("base", "halfcube", "asinh", "wiggly", "normcdf")
STRUCTURES = {"normal": ("dense", "sparse", "2pair", "lvm"), "student": ("dense", "sparse", "2pair", "lvm"),
              "additive": ("noise",)}
STUDENT_DOF = (2, 10)


# --------------------------------------------------------------------------- closed-form MI
def gaussian_mi(cov: np.ndarray, dx: int) -> float:
    """MI of a jointly Gaussian (X, Y) with covariance ``cov`` (X the first ``dx`` coordinates)."""
    logdet = lambda m: np.linalg.slogdet(m)[1]
    return 0.5 * float(logdet(cov[:dx, :dx]) + logdet(cov[dx:, dx:]) - logdet(cov))


def _student_entropy_part(nu: float, d: int) -> float:
    """The part of a d-dim multivariate-t entropy that is not ½ log det Σ + (d/2) log νπ."""
    half = (nu + d) / 2
    return float(special.gammaln(nu / 2) - special.gammaln(half)
                 + half * (special.digamma(half) - special.digamma(nu / 2)))


def student_correction(nu: float, dx: int, dy: int) -> float:
    """MI(Student-t) - MI(Gaussian with the same Σ) = h'(d_x) + h'(d_y) - h'(d_x + d_y) ≥ 0."""
    f = lambda d: _student_entropy_part(nu, d)
    return f(dx) + f(dy) - f(dx + dy)


def uniform_noise_mi(eps: float) -> float:
    """MI of X ~ U(0,1) and X + U(-ε, ε), one coordinate (nats)."""
    return float(eps - np.log(2 * eps)) if eps <= 0.5 else float(1 / (4 * eps))


def uniform_noise_eps(mi: float) -> float:
    """The ε giving one coordinate MI ``mi`` (inverse of ``uniform_noise_mi``; mi > 0)."""
    if mi <= 0.5:
        return 1 / (4 * mi)
    lo, hi = 1e-12, 0.5  # ε - log 2ε decreases on (0, ½]
    for _ in range(100):
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if uniform_noise_mi(mid) > mi else (lo, mid)
    return float(np.sqrt(lo * hi))


# --------------------------------------------------------------------------- covariances
def _rho_for(mi: float, pairs: int) -> float:
    """Correlation of each of ``pairs`` independent pairs so that their total MI is ``mi``."""
    return float(np.sqrt(-np.expm1(-2 * mi / pairs)))


def dense_cov(d: int, rho: float, a: float, dy: int | None = None) -> np.ndarray:
    """Equicorrelated blocks (1 - a) I + a 11ᵀ (sizes d and dy, dy = d by default) and a cross
    block c 11ᵀ scaled so that the one canonical correlation is ρ."""
    dy = d if dy is None else dy
    block = lambda k: (1 - a) * np.eye(k) + a * np.ones((k, k))
    c = rho * np.sqrt((1 + (d - 1) * a) * (1 + (dy - 1) * a) / (d * dy))
    cross = c * np.ones((d, dy))
    return np.block([[block(d), cross], [cross.T, block(dy)]])


def pairs_cov(d: int, rho: float, pairs: int, rng: np.random.Generator, dy: int | None = None) -> np.ndarray:
    """Identity with ``pairs`` disjoint (X_i, Y_π(i)) correlations ρ at random coordinates."""
    dy = d if dy is None else dy
    cov = np.eye(d + dy)
    xs, ys = rng.permutation(d)[:pairs], rng.permutation(dy)[:pairs]
    cov[xs, d + ys] = cov[d + ys, xs] = rho
    return cov


def lvm_cov(a: np.ndarray, b: np.ndarray, noise_var: float) -> np.ndarray:
    load = np.vstack([a, b])
    return load @ load.T + noise_var * np.eye(len(load))


def lvm_cov_for(mi: float, d: int, rng: np.random.Generator, dy: int | None = None) -> np.ndarray:
    """An LVM covariance whose MI is ``mi``: MI falls monotonically as the noise variance grows,
    so bisect on log σ². MI = 0: X and Y load on independent latents (block-diagonal)."""
    dy = d if dy is None else dy
    k = int(rng.integers(1, min(d, dy) + 1))
    a, b = rng.standard_normal((d, k)), rng.standard_normal((dy, k))
    if mi <= 0:
        cov = lvm_cov(a, b, 1.0)
        cov[:d, d:] = cov[d:, :d] = 0.0
        return cov
    lo, hi = -12.0, 12.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_mi(lvm_cov(a, b, np.exp(mid)), d) > mi else (lo, mid)
    return lvm_cov(a, b, np.exp((lo + hi) / 2))


def structured_cov(structure: str, d: int, mi: float, rng: np.random.Generator,
                   dy: int | None = None) -> np.ndarray:
    """A (d + dy, d + dy) covariance of the given structure whose Gaussian MI is ``mi`` (≥ 0)."""
    dy = d if dy is None else dy
    m = min(d, dy)
    if structure == "dense":
        return dense_cov(d, _rho_for(mi, 1), float(rng.uniform(0.0, 0.5)), dy)
    if structure == "sparse":
        pairs = int(rng.integers(1, m + 1))
        return pairs_cov(d, _rho_for(mi, pairs), pairs, rng, dy)
    if structure == "2pair":
        pairs = min(2, m)
        return pairs_cov(d, _rho_for(mi, pairs), pairs, rng, dy)
    if structure == "lvm":
        return lvm_cov_for(mi, d, rng, dy)
    raise ValueError(f"unknown structure {structure!r}; expected one of {STRUCTURES['normal']}")


# --------------------------------------------------------------------------- transforms
def transform(name: str, v: np.ndarray) -> np.ndarray:
    """A strictly increasing map applied to every coordinate (MI-preserving)."""
    if name == "base":
        return v
    if name == "halfcube":
        return np.sign(v) * np.abs(v) ** 1.5
    if name == "asinh":
        return np.arcsinh(v)
    if name == "wiggly":
        return v + 0.4 * np.sin(v) + 0.2 * np.sin(2.5 * v)
    if name == "normcdf":
        return norm.cdf(v)
    raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")


# --------------------------------------------------------------------------- sampling
def parse_family(family: str) -> tuple[str, str, str]:
    parts = family.split("-")
    if len(parts) != 3 or parts[0] not in STRUCTURES or parts[1] not in STRUCTURES[parts[0]] \
            or parts[2] not in TRANSFORMS:
        raise ValueError(f"unknown family {family!r}: expected <base>-<structure>-<transform> with "
                         f"base/structure in {STRUCTURES} and transform in {TRANSFORMS}")
    return parts[0], parts[1], parts[2]


def _gaussian(cov: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((n, cov.shape[0])) @ np.linalg.cholesky(cov).T


def _sample_base(base: str, structure: str, n: int, dx: int, dy: int, mi: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    if base == "additive":
        m = min(dx, dy)
        eps = uniform_noise_eps(max(mi, 1e-3) / m)
        x = rng.uniform(0.0, 1.0, (n, dx))
        source = x[:, :m] if mi > 0 else rng.uniform(0.0, 1.0, (n, m))  # MI = 0: an independent copy
        parts = [source + rng.uniform(-eps, eps, (n, m))]
        if dy > m:
            parts.append(rng.uniform(0.0, 1.0, (n, dy - m)) + rng.uniform(-eps, eps, (n, dy - m)))
        return x, np.hstack(parts), (m * uniform_noise_mi(eps) if mi > 0 else 0.0)
    if base == "normal":
        cov = structured_cov(structure, dx, mi, rng, dy)
        xy = _gaussian(cov, n, rng)
        return xy[:, :dx], xy[:, dx:], max(gaussian_mi(cov, dx), 0.0)
    nu = float(rng.integers(STUDENT_DOF[0], STUDENT_DOF[1] + 1))
    extra = student_correction(nu, dx, dy)
    cov = structured_cov(structure, dx, max(mi - extra, 0.0), rng, dy)
    xy = _gaussian(cov, n, rng) / np.sqrt(rng.chisquare(nu, (n, 1)) / nu)
    return xy[:, :dx], xy[:, dx:], max(gaussian_mi(cov, dx), 0.0) + extra


def sample_dataset(family: str, n: int, dx: int, dy: int, rng: np.random.Generator,
                   mi: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One dataset (x (n, dx), y (n, dy), true MI in nats) of ``family`` whose MI is the target
    ``mi`` (Student-t: at least its ν-correction); see the module docstring."""
    if n < 2 or dx < 1 or dy < 1:
        raise ValueError(f"need n >= 2 samples and d >= 1 dimensions, got n={n}, d_x={dx}, d_y={dy}")
    base, structure, tname = parse_family(family)
    x, y, true_mi = _sample_base(base, structure, n, dx, dy, float(mi), rng)
    return transform(tname, x), transform(tname, y), true_mi
