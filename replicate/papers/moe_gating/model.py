"""Gaussian mixture of linear experts with softmax-family gates, batched over many fits.

The model of both papers (Nguyen, Akbarian, Yan & Ho, ICLR 2024, "Statistical Perspective of
Top-K Sparse Softmax Gating Mixture of Experts", Eq. (1); Nguyen, Akbarian & Ho, ICML 2024, "Is
Temperature Sample Efficient for Softmax Gaussian Mixture of Experts?", Sec. 2), in one input
dimension (d = 1, as in the sister paper's simulations):

    Y | X = x  ~  sum_i g_i(x) N(a_i x + b_i, var_i)

with gate logits s_i(x) and gates g(x) = softmax(s(x)) over

* ``softmax``:     s_i = w1_i x + w0_i                                  (dense softmax)
* ``topk``:        s_i = w1_i x + w0_i, softmax over the K largest s_i, the others get g_i = 0
                   (ICLR 2024, Eq. (2): TopK keeps the K largest logits, the rest are -inf)
* ``temperature``: s_i = (w1_i x + w0_i) / tau                          (ICML 2024, dense-to-sparse)
* ``activation``:  s_i = tanh(w1_i x + w0_i) / tau                      (ICML 2024, activation gate)

Identifiability (our choice, as the papers do by assumption): the last expert's gate parameters
are fixed at 0, which removes the softmax's translation invariance. The temperature gate keeps a
scaling invariance: (w1, w0, tau) -> (c w1, c w0, c tau) leaves every logit unchanged, so the
raw parameters are identified only up to that ray. Its identifiable form divides by ||w1||
(``identifiable_temperature``); tanh breaks the invariance, so the activation gate's raw
parameters are identifiable. (The papers' exact gate form could not be confirmed from stored
copies; this is the form we state and test.)

Batching: ``B`` fits (replicates x sample sizes) share one flat array of points; ``fit[n]`` says
which fit point ``n`` belongs to, so a fit's sufficient statistics are ``index_add_`` sums and
every sample size is fitted in the same tensor operations. Parameters are a dict of float64
tensors ``w1, w0, a, b, var`` of shape (B, k) and ``tau`` of shape (B,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GATES = ("softmax", "topk", "temperature", "activation")
PARAM_KEYS = ("w1", "w0", "a", "b", "var", "tau")
LOG_2PI = math.log(2 * math.pi)
VAR_FLOOR = 1e-8


@dataclass(frozen=True)
class Gate:
    """A gate family and, for ``topk``, how many experts it activates."""

    kind: str
    top_k: int | None = None

    def __post_init__(self):
        if self.kind not in GATES:
            raise ValueError(f"gate={self.kind!r}; expected one of {', '.join(GATES)}")
        if self.kind == "topk" and (self.top_k is None or self.top_k < 1):
            raise ValueError(f"gate=topk needs top_k >= 1, got {self.top_k}")

    @property
    def has_tau(self) -> bool:
        return self.kind in ("temperature", "activation")

    def n_free(self, k: int) -> int:
        """Free gate parameters per fit: (w1, w0) of the first k-1 experts, plus tau."""
        return 2 * (k - 1) + int(self.has_tau)


# --------------------------------------------------------------------------- the density
def gate_logits(gate: Gate, p: dict, x: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """s(x) of every point under its own fit's parameters, shape (N, k)."""
    u = p["w1"][fit] * x[:, None] + p["w0"][fit]
    if gate.kind == "temperature":
        return u / p["tau"][fit, None]
    if gate.kind == "activation":
        return torch.tanh(u) / p["tau"][fit, None]
    return u


def log_gates(gate: Gate, logits: torch.Tensor) -> torch.Tensor:
    """log g(x), shape (N, k); -inf for the experts a top-K gate switches off."""
    if gate.kind == "topk" and gate.top_k < logits.shape[-1]:
        kth = logits.topk(gate.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.log_softmax(logits, dim=-1)


def log_experts(p: dict, x: torch.Tensor, y: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """log N(y | a_i x + b_i, var_i) for every point and expert, shape (N, k)."""
    const = -0.5 * (LOG_2PI + p["var"].log())
    resid = y[:, None] - p["a"][fit] * x[:, None] - p["b"][fit]
    return const[fit] - 0.5 * resid ** 2 / p["var"][fit]


def joint_log(gate: Gate, p: dict, x, y, fit) -> torch.Tensor:
    """log g_i(x) + log N(y | expert i), shape (N, k)."""
    return log_gates(gate, gate_logits(gate, p, x, fit)) + log_experts(p, x, y, fit)


def per_fit_sum(values: torch.Tensor, fit: torch.Tensor, n_fits: int) -> torch.Tensor:
    """Sum of ``values`` (N, ...) within each fit, shape (B, ...)."""
    out = values.new_zeros((n_fits, *values.shape[1:]))
    return out.index_add_(0, fit, values)


def loglik(gate: Gate, p: dict, x, y, fit, n_fits: int) -> torch.Tensor:
    """Observed log-likelihood of each fit, shape (B,)."""
    ll = torch.logsumexp(joint_log(gate, p, x, y, fit), dim=-1)
    ll = per_fit_sum(ll, fit, n_fits)
    if gate.has_tau:
        ll = torch.where(p["tau"] > 0, ll, -math.inf)
    return ll


# --------------------------------------------------------------------------- sampling
def sample(gate: Gate, p: dict, x: torch.Tensor, fit: torch.Tensor, generator: torch.Generator):
    """Draw y | x from the MoE (one expert by its gate, then its Gaussian)."""
    g = log_gates(gate, gate_logits(gate, p, x, fit)).exp()
    u = torch.rand(x.shape[0], 1, generator=generator, dtype=x.dtype)
    expert = (u > g.cumsum(-1)).sum(-1).clamp(max=g.shape[-1] - 1)
    f = fit, expert
    noise = torch.randn(x.shape[0], generator=generator, dtype=x.dtype)
    return p["a"][f] * x + p["b"][f] + p["var"][f].sqrt() * noise


# --------------------------------------------------------------------------- gate parameters
def gate_vector(gate: Gate, p: dict) -> torch.Tensor:
    """The free gate parameters of each fit as one vector, shape (B, n_free)."""
    k = p["w1"].shape[1]
    parts = [p["w1"][:, : k - 1], p["w0"][:, : k - 1]]
    if gate.has_tau:
        parts.append(p["tau"][:, None])
    return torch.cat(parts, dim=1)


def with_gate_vector(gate: Gate, p: dict, theta: torch.Tensor) -> dict:
    """A copy of ``p`` whose free gate parameters are ``theta`` (the last expert stays at 0)."""
    k = p["w1"].shape[1]
    zero = theta.new_zeros(theta.shape[0], 1)
    out = dict(p)
    out["w1"] = torch.cat([theta[:, : k - 1], zero], dim=1)
    out["w0"] = torch.cat([theta[:, k - 1: 2 * (k - 1)], zero], dim=1)
    if gate.has_tau:
        out["tau"] = theta[:, -1]
    return out


def logit_jacobian(gate: Gate, p: dict, x: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """d s_i / d theta for the k-1 free logits of each point, shape (N, k-1, n_free).

    The last logit is the constant 0 under every gate, so it has no row."""
    k = p["w1"].shape[1]
    m = k - 1
    u = p["w1"][fit, :m] * x[:, None] + p["w0"][fit, :m]
    scale = torch.ones_like(u)
    if gate.kind == "activation":
        scale = 1 - torch.tanh(u) ** 2
    if gate.has_tau:
        scale = scale / p["tau"][fit, None]
    jac = x.new_zeros(x.shape[0], m, gate.n_free(k))
    rows = torch.arange(m)
    jac[:, rows, rows] = scale * x[:, None]
    jac[:, rows, m + rows] = scale
    if gate.has_tau:
        s = torch.tanh(u) if gate.kind == "activation" else u
        jac[:, :, -1] = -s / p["tau"][fit, None] ** 2
    return jac
