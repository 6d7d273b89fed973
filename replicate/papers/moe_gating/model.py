"""Gaussian mixture of linear experts with softmax-family gates, for any input dimension d,
batched over many fits.

The model of both papers (Nguyen, Akbarian, Yan & Ho, ICLR 2024, "Statistical Perspective of
Top-K Sparse Softmax Gating Mixture of Experts", Eq. (1); Nguyen, Akbarian & Ho, ICML 2024, "Is
Temperature Sample Efficient for Softmax Gaussian Mixture of Experts?", Sec. 2), x in R^d:

    Y | X = x  ~  sum_i g_i(x) N(a_i^T x + b_i, var_i)

with gate logits s_i(x) and gates g(x) = softmax(s(x)) over

* ``softmax``:     s_i = w1_i^T x + w0_i                                 (dense softmax)
* ``topk``:        softmax over the K selected experts, g_i = 0 for the others. ICLR 2024 Eq. (1)
                   writes the gate as Softmax(TopK((beta_1i)^T x, K; beta_0i)) with
                   TopK(v_i, K; beta_0i) = v_i + beta_0i if v_i is among the K largest of
                   v = (beta_1j^T x)_j, else -inf: the paper **ranks by beta_1^T x alone and adds
                   beta_0 after selection** (our reading of arXiv 2309.13850 v2, Eq. (1); the stored
                   copy could not be re-read this session). ``rank="slope"`` is that gate.
                   ``rank="logit"`` (the default, and the gate of our template truth) ranks by the
                   full logit beta_1^T x + beta_0, as top-K routers in practice do: with x in (0, 1)
                   and d = 1 the paper's ranking would never switch (beta_1i x keeps its order for
                   x > 0). Both are stated in every config that uses them.
* ``temperature``: s_i = (w1_i^T x + w0_i) / tau                         (ICML 2024, dense-to-sparse)
* ``activation``:  s_i = tanh(w1_i^T x + w0_i) / tau                     (ICML 2024, activation gate)

Identifiability (our choice, as the papers do by assumption): the last expert's gate parameters
are fixed at 0, which removes the softmax's translation invariance. The temperature gate keeps a
scaling invariance: (w1, w0, tau) -> (c w1, c w0, c tau) leaves every logit unchanged, so the
raw parameters are identified only up to that ray (metrics.temperature_errors).

Smoothed top-K (the continuation used by the estimator, em.py): with ``smooth = T > 0`` the hard
mask is replaced by log sigmoid((r_i - t) / T), r_i the ranking score and t the midpoint of the
K-th and (K+1)-th largest scores; T -> 0 is the hard top-K gate, T -> inf a dense softmax.

Batching: ``B`` fits share one flat array of points; ``fit[n]`` says which fit point ``n``
belongs to. x has shape (N, d). Parameters are a dict of float64 tensors ``w1`` (B, k, d),
``w0`` (B, k), ``a`` (B, k, d), ``b`` (B, k), ``var`` (B, k) and ``tau`` (B,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GATES = ("softmax", "topk", "temperature", "activation")
RANKS = ("logit", "slope")
PARAM_KEYS = ("w1", "w0", "a", "b", "var", "tau")
LOG_2PI = math.log(2 * math.pi)
VAR_FLOOR = 1e-8


@dataclass(frozen=True)
class Gate:
    """A gate family; for ``topk`` how many experts it activates and what it ranks by."""

    kind: str
    top_k: int | None = None
    rank: str = "logit"

    def __post_init__(self):
        if self.kind not in GATES:
            raise ValueError(f"gate={self.kind!r}; expected one of {', '.join(GATES)}")
        if self.kind == "topk" and (self.top_k is None or self.top_k < 1):
            raise ValueError(f"gate=topk needs top_k >= 1, got {self.top_k}")
        if self.rank not in RANKS:
            raise ValueError(f"rank={self.rank!r}; expected one of {', '.join(RANKS)}")

    @property
    def has_tau(self) -> bool:
        return self.kind in ("temperature", "activation")

    def sparse(self, k: int) -> bool:
        """Whether some expert is switched off at some x (top-K with K < k)."""
        return self.kind == "topk" and self.top_k < k

    def n_free(self, k: int, d: int) -> int:
        """Free gate parameters per fit: (w1, w0) of the first k-1 experts, plus tau."""
        return (k - 1) * (d + 1) + int(self.has_tau)


def dims(p: dict) -> tuple[int, int, int]:
    """(fits, experts, input dimension) of a parameter dict."""
    return tuple(p["w1"].shape)


# --------------------------------------------------------------------------- the density
def linear(w: torch.Tensor, c: torch.Tensor, x: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """w_i^T x + c_i of every point under its own fit's (w, c), shape (N, k)."""
    return torch.einsum("nkd,nd->nk", w[fit], x) + c[fit]


def gate_logits(gate: Gate, p: dict, x: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """s(x) of every point under its own fit's parameters, shape (N, k)."""
    u = linear(p["w1"], p["w0"], x, fit)
    if gate.kind == "temperature":
        return u / p["tau"][fit, None]
    if gate.kind == "activation":
        return torch.tanh(u) / p["tau"][fit, None]
    return u


def rank_scores(gate: Gate, p: dict, logits: torch.Tensor, x: torch.Tensor, fit: torch.Tensor):
    """What a top-K gate ranks experts by: the logits, or beta_1^T x (ICLR 2024 Eq. (1))."""
    if gate.rank == "slope":
        return torch.einsum("nkd,nd->nk", p["w1"][fit], x)
    return logits


def masked_logits(gate: Gate, logits: torch.Tensor, scores: torch.Tensor, smooth=None) -> torch.Tensor:
    """Logits after the top-K selection: -inf for the unselected (hard), or + log sigmoid((r - t)/T)
    (smoothed; ``smooth`` = T per point, shape (N,), where T <= 0 means hard)."""
    k = logits.shape[-1]
    if not gate.sparse(k):
        return logits
    top = scores.topk(gate.top_k + 1, dim=-1).values
    hard = logits.masked_fill(scores < top[:, gate.top_k - 1: gate.top_k], -math.inf)
    if smooth is None:
        return hard
    t = 0.5 * (top[:, gate.top_k - 1] + top[:, gate.top_k])
    soft = logits + torch.nn.functional.logsigmoid((scores - t[:, None]) / smooth.clamp_min(1e-12)[:, None])
    return torch.where((smooth > 0)[:, None], soft, hard)


def log_gates(gate: Gate, p: dict, x, fit, smooth=None) -> torch.Tensor:
    """log g(x), shape (N, k); -inf for the experts a hard top-K gate switches off.

    ``smooth``: None (hard), or the smoothing temperature per point (N,) (0 = hard)."""
    logits = gate_logits(gate, p, x, fit)
    scores = rank_scores(gate, p, logits, x, fit) if gate.sparse(logits.shape[-1]) else logits
    return torch.log_softmax(masked_logits(gate, logits, scores, smooth), dim=-1)


def selected(gate: Gate, p: dict, x, fit) -> torch.Tensor:
    """Which experts the (hard) gate selects at every point, bool (N, k)."""
    return log_gates(gate, p, x, fit) > -math.inf


def log_experts(p: dict, x: torch.Tensor, y: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """log N(y | a_i^T x + b_i, var_i) for every point and expert, shape (N, k)."""
    const = -0.5 * (LOG_2PI + p["var"].log())
    resid = y[:, None] - linear(p["a"], p["b"], x, fit)
    return const[fit] - 0.5 * resid ** 2 / p["var"][fit]


def joint_log(gate: Gate, p: dict, x, y, fit, smooth=None) -> torch.Tensor:
    """log g_i(x) + log N(y | expert i), shape (N, k)."""
    return log_gates(gate, p, x, fit, smooth) + log_experts(p, x, y, fit)


def per_fit_sum(values: torch.Tensor, fit: torch.Tensor, n_fits: int) -> torch.Tensor:
    """Sum of ``values`` (N, ...) within each fit, shape (B, ...)."""
    out = values.new_zeros((n_fits, *values.shape[1:]))
    return out.index_add_(0, fit, values)


def loglik(gate: Gate, p: dict, x, y, fit, n_fits: int, smooth=None) -> torch.Tensor:
    """Observed log-likelihood of each fit, shape (B,)."""
    ll = torch.logsumexp(joint_log(gate, p, x, y, fit, smooth), dim=-1)
    ll = per_fit_sum(ll, fit, n_fits)
    if gate.has_tau:
        ll = torch.where(p["tau"] > 0, ll, -math.inf)
    return ll


# --------------------------------------------------------------------------- sampling
def sample(gate: Gate, p: dict, x: torch.Tensor, fit: torch.Tensor, generator: torch.Generator):
    """Draw y | x from the MoE (one expert by its gate, then its Gaussian)."""
    g = log_gates(gate, p, x, fit).exp()
    u = torch.rand(x.shape[0], 1, generator=generator, dtype=x.dtype)
    expert = (u > g.cumsum(-1)).sum(-1).clamp(max=g.shape[-1] - 1)
    f = fit, expert
    noise = torch.randn(x.shape[0], generator=generator, dtype=x.dtype)
    mean = (p["a"][f] * x).sum(-1) + p["b"][f]
    return mean + p["var"][f].sqrt() * noise


# --------------------------------------------------------------------------- gate parameters
def gate_vector(gate: Gate, p: dict) -> torch.Tensor:
    """The free gate parameters of each fit as one vector, shape (B, n_free):
    w1 of experts 0..k-2 (row-major), then their w0, then tau."""
    b, k, d = dims(p)
    parts = [p["w1"][:, : k - 1].reshape(b, (k - 1) * d), p["w0"][:, : k - 1]]
    if gate.has_tau:
        parts.append(p["tau"][:, None])
    return torch.cat(parts, dim=1)


def with_gate_vector(gate: Gate, p: dict, theta: torch.Tensor) -> dict:
    """A copy of ``p`` whose free gate parameters are ``theta`` (the last expert stays at 0)."""
    b, k, d = dims(p)
    m = (k - 1) * d
    out = dict(p)
    out["w1"] = torch.cat([theta[:, :m].reshape(b, k - 1, d), theta.new_zeros(b, 1, d)], dim=1)
    out["w0"] = torch.cat([theta[:, m: m + k - 1], theta.new_zeros(b, 1)], dim=1)
    if gate.has_tau:
        out["tau"] = theta[:, -1]
    return out


def select(p: dict, rows) -> dict:
    """The parameters of the fits ``rows`` (index or mask)."""
    return {key: v[rows] for key, v in p.items()}
