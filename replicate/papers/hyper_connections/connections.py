"""Residual-stream connections: the residual connection, HC, mHC, mHC-lite, KromHC and sHC.

Every connection wraps one sub-layer ``F`` (attention or MLP, with its own pre-norm) of the shared
causal LM and acts on ``n`` residual streams ``x`` of shape (..., n, C) (the expansion rate ``n``)::

    u      = H_pre · x                          (..., C)     the sub-layer's input
    x_next = H_res x + H_post^T F(u)            (..., n, C)

with ``H_pre``, ``H_post`` in R^n and ``H_res`` in R^{n x n} (the notation of mHC, Xie et al.
2025, arXiv 2512.24880, Eq. 3; HC writes the same layer as the matrix [[0, B], [A_m, A_r]] with
``H_pre = A_m``, ``H_post = B``, ``H_res = A_r^T``, Zhu et al. 2025, arXiv 2409.19606, Eqs. 1-5).

The variants differ only in how they compute the three mappings:

``residual``  n = 1, H_pre = H_post = H_res = 1: x + F(x), the plain pre-norm transformer.
``hc``        Hyper-Connections (Zhu et al., Eqs. 10-13): static A_m = e_{k mod n}, A_r = I,
              B = 1 (k = the sub-layer's index) plus, when ``dynamic``, input-dependent terms
              s_a * tanh(norm(x) W_a) and s_b * tanh(norm(x) W_b) per stream (W = 0, s = 0.01 at
              initialisation): H_res is unconstrained.
``mhc``       Manifold-Constrained HC (Xie et al., Eqs. 7-9): from x' = RMSNorm(vec(x)) (nC wide),
              H~ = alpha * (x' phi) + b per mapping; H_pre = sigmoid(H~_pre), H_post =
              2 sigmoid(H~_post), H_res = Sinkhorn-Knopp(H~_res) with ``sinkhorn_iters`` steps
              M_t = T_r(T_c(M_{t-1})) from M_0 = exp(H~_res) (the paper uses 20).
``mhc_lite``  mHC-lite: H_res = sum_k a_k P_k over the n! permutation matrices P_k with
              a = softmax(alpha * x' phi + b): doubly stochastic exactly (Birkhoff-von Neumann).
``kromhc``    KromHC (code: wz1119/KromHC): n = prod_k i_k (prime factors: 2 x 2 for n = 4);
              H_res = U_1 (x) U_2 (x) ... (Kronecker product), each U_k a softmax-weighted
              mixture of the i_k! permutation matrices of size i_k: exact, with sum_k i_k!
              coefficients per token instead of n!.
``shc``       Spectral-sphere-constrained HC (Liu, Zhang, Li 2026, arXiv 2603.20896): H_res =
              H~_res / ||H~_res||_2 with H~_res = alpha * mat(x' phi) + b: spectral norm exactly 1,
              negative entries allowed. Pre/post mappings as in mHC.

Initialisation of mHC, mHC-lite, KromHC (as the KromHC repository's code; the papers do not state
it): phi = 0, alpha = 0.01, b_pre = b_post = -1 except +1 at stream k mod n, residual
coefficients 0 for the identity and -8 elsewhere, so H_res starts at (almost) I. sHC starts at
b_res = I (our choice: H_res = I exactly). ``docs/papers/hyper_connections.md`` lists every
choice the papers leave open.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

VARIANTS = ("residual", "hc", "mhc", "mhc_lite", "kromhc", "shc")
OFF_IDENTITY_LOGIT = -8.0  # initial logit of every non-identity residual coefficient


# --------------------------------------------------------------------------- projections
def sinkhorn_knopp(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """mHC Eq. 9: M_0 = exp(logits), then ``iters`` times M <- T_r(T_c(M)) (columns, then rows,
    rescaled to sum to 1). The logits are first shifted by their largest entry per matrix (a
    common factor of M_0, which T_c removes: the same iterates, no overflow). After any
    ``iters >= 1`` the rows sum to 1; the columns only approach 1 as ``iters`` grows."""
    if iters < 1:
        raise ValueError(f"sinkhorn_iters={iters}; expected at least 1")
    m = torch.exp(logits - logits.detach().amax(dim=(-2, -1), keepdim=True))
    for _ in range(iters):
        m = m / m.sum(dim=-2, keepdim=True)  # T_c: columns sum to 1
        m = m / m.sum(dim=-1, keepdim=True)  # T_r: rows sum to 1
    return m


def permutation_matrices(n: int) -> torch.Tensor:
    """All n! permutation matrices of size n, shape (n!, n, n); the identity first."""
    index = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
    return torch.eye(n)[index]


def permutation_mixture(logits: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """mHC-lite: sum_k softmax(logits)_k P_k, logits (..., K) over the K matrices ``perms``."""
    return torch.einsum("...k,kij->...ij", logits.softmax(dim=-1), perms.to(logits.dtype))


def prime_factors(n: int) -> list[int]:
    """The prime factors of n in ascending order (KromHC's factor sizes i_k)."""
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


def kronecker(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched Kronecker product of (..., p, q) and (..., r, s) -> (..., p r, q s)."""
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    return out.reshape(*out.shape[:-4], a.shape[-2] * b.shape[-2], a.shape[-1] * b.shape[-1])


def kronecker_mixture(logits: torch.Tensor, factor_perms: list[torch.Tensor]) -> torch.Tensor:
    """KromHC: U_1 (x) U_2 (x) ..., U_k = permutation_mixture of its slice of ``logits``
    (..., sum_k i_k!), the factors' permutation matrices given in ``factor_perms``."""
    out, start = None, 0
    for perms in factor_perms:
        u = permutation_mixture(logits[..., start:start + len(perms)], perms)
        start += len(perms)
        out = u if out is None else kronecker(out, u)
    return out


def spectral_sphere(matrix: torch.Tensor) -> torch.Tensor:
    """sHC: ``matrix / ||matrix||_2`` (largest singular value), batched over leading dims."""
    return matrix / torch.linalg.matrix_norm(matrix, ord=2)[..., None, None]


# --------------------------------------------------------------------------- connections
class StreamConnection(nn.Module):
    """Base class: ``forward(streams, branch)`` applies x_next = H_res x + H_post^T F(H_pre x).

    Subclasses implement ``mappings(streams) -> (pre (..., n), post (..., n), res (..., n, n))``.
    While ``recording`` is True, ``last`` keeps the detached ``res`` (and ``res_logits``, the
    pre-projection logits where the variant has them) of the latest forward pass for probes.
    """

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.recording = False
        self.last: dict[str, torch.Tensor] = {}

    def mappings(self, streams: torch.Tensor):
        raise NotImplementedError

    def forward(self, streams: torch.Tensor, branch) -> torch.Tensor:
        pre, post, res = self.mappings(streams)
        u = torch.einsum("...i,...ic->...c", pre, streams)
        y = branch(u)
        return torch.einsum("...ij,...jc->...ic", res, streams) + post[..., None] * y[..., None, :]

    def keep(self, **tensors: torch.Tensor) -> None:
        if self.recording:
            self.last = {k: v.detach() for k, v in tensors.items()}


class ResidualConnection(StreamConnection):
    """x + F(x) on one stream: the shared LM's pre-norm residual block, exactly."""

    def __init__(self):
        super().__init__(1)

    def forward(self, streams: torch.Tensor, branch) -> torch.Tensor:
        x = streams[..., 0, :]
        self.keep(res=torch.ones(*x.shape[:-1], 1, 1, dtype=x.dtype, device=x.device))
        return (x + branch(x))[..., None, :]


class HyperConnection(StreamConnection):
    """HC (Zhu et al. 2025, Eqs. 1-5 static, Eqs. 10-13 dynamic); see the module docstring."""

    def __init__(self, n: int, d_model: int, layer_index: int, dynamic: bool = True,
                 scale_init: float = 0.01, norm: nn.Module | None = None):
        super().__init__(n)
        static_alpha = torch.cat([torch.eye(n)[:, layer_index % n, None], torch.eye(n)], dim=1)
        self.static_alpha = nn.Parameter(static_alpha)  # [A_m | A_r], (n, n + 1)
        self.static_beta = nn.Parameter(torch.ones(n))  # B
        self.dynamic = dynamic
        if dynamic:
            self.norm = norm if norm is not None else nn.RMSNorm(d_model)
            self.w_alpha = nn.Linear(d_model, n + 1, bias=False)
            self.w_beta = nn.Linear(d_model, 1, bias=False)
            nn.init.zeros_(self.w_alpha.weight)
            nn.init.zeros_(self.w_beta.weight)
            self.s_alpha = nn.Parameter(torch.tensor(float(scale_init)))
            self.s_beta = nn.Parameter(torch.tensor(float(scale_init)))

    def mappings(self, streams: torch.Tensor):
        alpha, beta = self.static_alpha, self.static_beta
        if self.dynamic:
            normed = self.norm(streams)  # per stream, (..., n, C)
            alpha = self.s_alpha * torch.tanh(self.w_alpha(normed)) + alpha  # (..., n, n + 1)
            beta = self.s_beta * torch.tanh(self.w_beta(normed))[..., 0] + beta  # (..., n)
        pre, res = alpha[..., 0], alpha[..., 1:].transpose(-1, -2)  # H_res = A_r^T
        self.keep(res=res)
        return pre, beta, res


class ConstrainedConnection(StreamConnection):
    """The shared parametrisation of mHC, mHC-lite, KromHC and sHC (mHC Eq. 7):
    x' = RMSNorm(vec(x)); [H~_pre, H~_post, coefficients] = alpha_* (x' phi) + b;
    H_pre = sigmoid(H~_pre), H_post = 2 sigmoid(H~_post) (Eq. 8); ``residual(coefficients)``
    gives H_res (each subclass's projection)."""

    def __init__(self, n: int, d_model: int, layer_index: int, n_coefficients: int,
                 res_bias: torch.Tensor, scale_init: float = 0.01):
        super().__init__(n)
        self.n_coefficients = n_coefficients
        self.norm = nn.RMSNorm(n * d_model)
        self.phi = nn.Linear(n * d_model, 2 * n + n_coefficients, bias=False)
        nn.init.zeros_(self.phi.weight)
        self.alpha = nn.Parameter(torch.full((3,), float(scale_init)))  # pre, post, res
        own = torch.full((n,), -1.0)
        own[layer_index % n] = 1.0
        self.b_pre = nn.Parameter(own.clone())
        self.b_post = nn.Parameter(own.clone())
        self.b_res = nn.Parameter(res_bias.reshape(n_coefficients).clone())

    def residual(self, coefficients: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mappings(self, streams: torch.Tensor):
        n = self.n
        projected = self.phi(self.norm(streams.flatten(-2)))
        projected = projected.to(torch.promote_types(projected.dtype, torch.float32))  # mHC Eqs. 10-19
        pre = torch.sigmoid(self.alpha[0] * projected[..., :n] + self.b_pre)
        post = 2 * torch.sigmoid(self.alpha[1] * projected[..., n:2 * n] + self.b_post)
        coefficients = self.alpha[2] * projected[..., 2 * n:] + self.b_res
        res = self.residual(coefficients)
        self.keep(res=res, res_logits=coefficients)
        return pre, post, res


def _identity_logits(n_coefficients: int) -> torch.Tensor:
    """0 for the first coefficient (the identity), OFF_IDENTITY_LOGIT for the others."""
    logits = torch.full((n_coefficients,), OFF_IDENTITY_LOGIT)
    logits[0] = 0.0
    return logits


class SinkhornConnection(ConstrainedConnection):
    """mHC: H_res = Sinkhorn-Knopp(mat(coefficients)) with ``sinkhorn_iters`` iterations (Eq. 9)."""

    def __init__(self, n: int, d_model: int, layer_index: int, sinkhorn_iters: int = 20, **kw):
        bias = torch.full((n, n), OFF_IDENTITY_LOGIT).fill_diagonal_(0.0)
        super().__init__(n, d_model, layer_index, n * n, bias, **kw)
        if sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters={sinkhorn_iters}; expected at least 1")
        self.sinkhorn_iters = sinkhorn_iters

    def residual(self, coefficients: torch.Tensor) -> torch.Tensor:
        logits = coefficients.unflatten(-1, (self.n, self.n))
        return sinkhorn_knopp(logits, self.sinkhorn_iters)


class PermutationConnection(ConstrainedConnection):
    """mHC-lite: H_res = sum_k softmax(coefficients)_k P_k over all n! permutations."""

    def __init__(self, n: int, d_model: int, layer_index: int, **kw):
        perms = permutation_matrices(n)
        super().__init__(n, d_model, layer_index, len(perms), _identity_logits(len(perms)), **kw)
        self.register_buffer("perms", perms, persistent=False)

    def residual(self, coefficients: torch.Tensor) -> torch.Tensor:
        return permutation_mixture(coefficients, self.perms)


class KroneckerConnection(ConstrainedConnection):
    """KromHC: H_res = U_1 (x) U_2 (x) ..., one permutation mixture per prime factor of n."""

    def __init__(self, n: int, d_model: int, layer_index: int, **kw):
        self.factors = prime_factors(n)
        perms = [permutation_matrices(f) for f in self.factors]
        bias = torch.cat([_identity_logits(len(p)) for p in perms])
        super().__init__(n, d_model, layer_index, len(bias), bias, **kw)
        for k, p in enumerate(perms):
            self.register_buffer(f"perms_{k}", p, persistent=False)

    def residual(self, coefficients: torch.Tensor) -> torch.Tensor:
        perms = [getattr(self, f"perms_{k}") for k in range(len(self.factors))]
        return kronecker_mixture(coefficients, perms)


class SpectralConnection(ConstrainedConnection):
    """sHC: H_res = H~_res / ||H~_res||_2, H~_res = mat(coefficients) (b_res = I at start)."""

    def __init__(self, n: int, d_model: int, layer_index: int, **kw):
        super().__init__(n, d_model, layer_index, n * n, torch.eye(n), **kw)

    def residual(self, coefficients: torch.Tensor) -> torch.Tensor:
        return spectral_sphere(coefficients.unflatten(-1, (self.n, self.n)))


def make_connection(variant: str, n: int, d_model: int, layer_index: int, dynamic: bool = True,
                    sinkhorn_iters: int = 20, scale_init: float = 0.01) -> StreamConnection:
    """The connection of one sub-layer (``layer_index`` counts attention and MLP sub-layers)."""
    if variant not in VARIANTS:
        raise ValueError(f"connection variant {variant!r}; expected one of {VARIANTS}")
    if variant == "residual":
        if n != 1:
            raise ValueError(f"the residual variant has one stream; got streams={n}")
        return ResidualConnection()
    if n < 2:
        raise ValueError(f"variant {variant!r} needs at least 2 streams; got streams={n}")
    if variant == "hc":
        return HyperConnection(n, d_model, layer_index, dynamic=dynamic, scale_init=scale_init)
    if variant == "mhc":
        return SinkhornConnection(n, d_model, layer_index, sinkhorn_iters, scale_init=scale_init)
    if variant == "mhc_lite" and math.factorial(n) > 40320:
        raise ValueError(f"mhc_lite with streams={n} needs {math.factorial(n)} permutation matrices")
    kinds = {"mhc_lite": PermutationConnection, "kromhc": KroneckerConnection, "shc": SpectralConnection}
    return kinds[variant](n, d_model, layer_index, scale_init=scale_init)
