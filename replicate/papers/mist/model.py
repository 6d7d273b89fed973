"""The MIST set model (Gritsai et al. 2025, Sec. 4) built from Set Transformer blocks (Lee et al.
2019): MAB, SAB, ISAB, PMA, in the order of the official ``MISTSetTransformer``
(grgera/mist, ``src/mist_statinf/model/architecture.py``).

Input: a batch of datasets x (B, n, d_x), y (B, n, d_y) with an optional row mask (B, n) (True =
a real sample; padded rows never influence the output); d_x and d_y may differ, each at most
``d_max``. Input (``marginals``, ours: the paper's code feeds raw values): each column of each
dataset is replaced by its normal scores Φ⁻¹((rank - ½)/n) (``ranks``, the empirical copula
transform: MI is invariant to any strictly increasing map of a coordinate, and so is the estimate
then, by construction) or standardised with the masked mean and std (``standardise``); then
zero-padded to ``d_max`` features. Each row [x̃, ỹ, (x̃ ⊗ ỹ if ``products``), 1_x, 1_y] (the
cross products, ours: their mean over rows is the cross-correlation matrix of the scores; 1_x, 1_y
the feature masks) is embedded by an MLP (official: Linear → GELU → LN → Dropout → Linear → GELU
→ LN). Then, as in the official code:

    rows -> [SAB -> LN -> Dropout] x row_layers     (the official "feature interaction block")
         -> ISAB x encoder_blocks (m inducing points)
         -> PMA(seeds) -> decoder: SAB over the seeds -> PMA(1)
         -> concat [log n, d_x / d_max, d_y / d_max] -> head

The one addition to the decoder output is the 3 numbers [log n, d_x/d_max, d_y/d_max] (the head
sees the sample size and the dimensions explicitly; the official model must infer them from the
padded tokens). Attention runs across samples only, as in the official implementation. Every block
is permutation-equivariant over rows and the pooling is invariant, so the estimate does not depend
on the order of samples.

Non-negativity (ours): MI ≥ 0, so the estimate is clipped at 0 in eval mode only, for both
objectives; training regresses the raw output. For ``mse`` the optimum of the raw output is the
posterior mean, already ≥ 0. For ``quantile`` the raw pinball optimum is the conditional
τ-quantile of the (non-negative) target, so it is ≥ 0 too, and where the target has an atom at 0
(independent pairs, prior mass ``mi_prior.zero``) the optimum of the lower quantiles is exactly 0.
An earlier version took the pinball loss on max(q, 0) in training as well (a censored quantile
regression, zero gradient wherever q < 0); the MIST-QR trained with it collapsed to the
unconditional quantiles of the prior (rank correlation of its median with the true MI 0.03 at
the default scale; its pooled embedding was constant across datasets, std 3e-4 against 0.6 for
MIST, while its raw median sat at 0.34-0.38, not below 0). A same-seed 400-step pilot isolates the
clip: with it the embedding collapses again (std 2e-4, median rank correlation 0.06), with the
raw loss it does not (median rank correlation 0.44). The price of the raw
loss: on independent data the 5 % quantile hovers around 0 before the eval clip, so it is above
0 on part of the datasets (measured by the independence test, not assumed away).

Heads (``objective``):
  ``mse``       one number, the MI estimate (MIST).
  ``quantile``  a monotone quantile function q(τ) (MIST-QR). The paper concatenates τ to the
                pooled embedding before the head, which lets quantiles cross. Here the head
                outputs a median m and K non-negative increments δ_k = softplus(·) on the knots
                t_k = k/K, and q(τ) = m + Σ_k δ_k (r_k(τ) - r_k(½)) (clipped at 0 in eval mode) with the ramps
                r_k(τ) = clip((τ - t_k) K, 0, 1): a piecewise-linear, non-decreasing function of τ.
                Quantiles cannot cross by construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OBJECTIVES = ("mse", "quantile")


class MAB(nn.Module):
    """Multihead attention block: H = LN(Q + MHA(Q, K, K)); out = LN(H + rFF(H))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(q + self.attn(q, k, k, key_padding_mask=pad, need_weights=False)[0])
        return self.norm2(h + self.ff(h))


class SAB(nn.Module):
    """Self-attention block MAB(X, X) over rows, with an optional key padding mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mab = MAB(dim, heads)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.mab(x, x, pad)


class RowInteraction(nn.Module):
    """The official feature-interaction block: [SAB -> LayerNorm -> Dropout] x layers over rows."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.sabs = nn.ModuleList(SAB(dim, heads) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        for sab, norm in zip(self.sabs, self.norms):
            x = self.drop(norm(sab(x, pad)))
        return x


class ISAB(nn.Module):
    """Induced set attention: H = MAB(I, X); out = MAB(X, H), with m learned inducing points."""

    def __init__(self, dim: int, heads: int, inducing: int):
        super().__init__()
        self.points = nn.Parameter(torch.randn(1, inducing, dim) / math.sqrt(dim))
        self.to_points, self.to_rows = MAB(dim, heads), MAB(dim, heads)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        h = self.to_points(self.points.expand(x.shape[0], -1, -1), x, pad)
        return self.to_rows(x, h)


class PMA(nn.Module):
    """Pooling by multihead attention: MAB(S, rFF(X)) with k learned seed vectors."""

    def __init__(self, dim: int, heads: int, seeds: int):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, seeds, dim) / math.sqrt(dim))
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.mab = MAB(dim, heads)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), self.ff(x), pad)


def standardise(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Columns of v (B, n, d) to zero mean, unit std over the rows where mask (B, n) is True."""
    w = mask.unsqueeze(-1).to(v.dtype)
    count = w.sum(1, keepdim=True).clamp_min(1.0)
    mean = (v * w).sum(1, keepdim=True) / count
    var = ((v - mean) ** 2 * w).sum(1, keepdim=True) / count
    return (v - mean) / (var.sqrt() + 1e-6) * w


def normal_scores(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Columns of v (B, n, d) to their normal scores Φ⁻¹((r - ½)/m) over the m rows where mask
    (B, n) is True, r the within-column rank 1..m (the empirical copula transform; ties broken by
    row order). Any strictly increasing map of a column leaves the output unchanged, as it leaves
    the MI unchanged. Padded rows are 0."""
    w = mask.unsqueeze(-1)
    big = torch.finfo(v.dtype).max
    ranks = torch.where(w, v, torch.full_like(v, big)).argsort(1).argsort(1).to(v.dtype) + 1
    count = w.to(v.dtype).sum(1, keepdim=True).clamp_min(1.0)
    scores = torch.special.ndtri(((ranks - 0.5) / count).clamp(1e-6, 1 - 1e-6))
    return scores * w.to(v.dtype)


MARGINALS = {"standardise": standardise, "ranks": normal_scores}


def pad_features(v: torch.Tensor, d_max: int) -> torch.Tensor:
    if v.shape[-1] > d_max:
        raise ValueError(f"a dataset has {v.shape[-1]} dimensions but the model handles at most d_max={d_max}")
    return nn.functional.pad(v, (0, d_max - v.shape[-1]))


class QuantileHead(nn.Module):
    """Monotone piecewise-linear quantile function on K equal τ-bins (see the module docstring)."""

    def __init__(self, dim: int, hidden: int, knots: int):
        super().__init__()
        self.knots = knots
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, knots + 1))

    def ramps(self, tau: torch.Tensor) -> torch.Tensor:
        """r_k(τ) - r_k(½) for τ (..., T) -> (..., T, K)."""
        start = torch.arange(self.knots, dtype=tau.dtype, device=tau.device) / self.knots
        r = lambda t: ((t.unsqueeze(-1) - start) * self.knots).clamp(0.0, 1.0)
        return r(tau) - r(torch.full_like(tau, 0.5))

    def forward(self, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """z (B, dim), tau (B, T) or (T,) -> quantiles (B, T); clipped at 0 in eval mode only
        (training takes the pinball loss on the raw output, which has a gradient everywhere)."""
        out = self.net(z)
        median, steps = out[:, :1], nn.functional.softplus(out[:, 1:])
        tau = tau.expand(z.shape[0], -1) if tau.dim() == 1 else tau
        q = median + (self.ramps(tau) * steps.unsqueeze(1)).sum(-1)
        return q if self.training else q.clamp_min(0.0)


class MISTNet(nn.Module):
    """Set model over samples: f(x, y) -> MI estimate (``mse``) or quantiles (``quantile``)."""

    def __init__(self, objective: str = "mse", d_max: int = 8, dim: int = 64, heads: int = 4,
                 inducing: int = 16, encoder_blocks: int = 2, seeds: int = 4, head_hidden: int = 64,
                 knots: int = 20, row_layers: int = 2, row_dropout: float = 0.3, embed_dropout: float = 0.1,
                 marginals: str = "standardise", products: bool = False):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; expected one of {OBJECTIVES}")
        if marginals not in MARGINALS:
            raise ValueError(f"marginals={marginals!r}; expected one of {tuple(MARGINALS)}")
        self.objective, self.d_max, self.marginals, self.products = objective, d_max, marginals, bool(products)
        self.init_args = {"objective": objective, "d_max": d_max, "dim": dim, "heads": heads,
                          "inducing": inducing, "encoder_blocks": encoder_blocks, "seeds": seeds,
                          "head_hidden": head_hidden, "knots": knots, "row_layers": row_layers,
                          "row_dropout": row_dropout, "embed_dropout": embed_dropout, "marginals": marginals,
                          "products": bool(products)}
        tokens = 4 * d_max + (d_max * d_max if products else 0)
        self.embed = nn.Sequential(nn.Linear(tokens, 2 * dim), nn.GELU(), nn.LayerNorm(2 * dim),
                                   nn.Dropout(embed_dropout), nn.Linear(2 * dim, dim), nn.GELU(),
                                   nn.LayerNorm(dim))
        self.rows_block = RowInteraction(dim, heads, row_layers, row_dropout)
        self.encoder = nn.ModuleList(ISAB(dim, heads, inducing) for _ in range(encoder_blocks))
        self.pool = PMA(dim, heads, seeds)
        self.mix = SAB(dim, heads)  # decoder: SAB over the pooled seeds, then PMA(1)
        self.readout = PMA(dim, heads, 1)
        pooled = dim + 3
        if objective == "mse":
            self.head = nn.Sequential(nn.Linear(pooled, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
        else:
            self.head = QuantileHead(pooled, head_hidden, knots)

    def rows(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Row tokens [x̃, ỹ, 1_x, 1_y] (B, n, 4 d_max): columns standardised or replaced by their
        normal scores (``marginals``), padded, with feature masks; with ``products`` also the
        d_max² cross products x̃_i ỹ_j, whose mean over rows is the cross-correlation matrix."""
        parts = []
        for v in (x, y):
            parts.append(pad_features(MARGINALS[self.marginals](v, mask), self.d_max))
        if self.products:
            parts.append((parts[0].unsqueeze(-1) * parts[1].unsqueeze(-2)).flatten(-2))
        for v in (x, y):
            parts.append(pad_features(torch.ones_like(v), self.d_max).expand(*v.shape[:2], -1))
        return torch.cat(parts, -1)

    def embedding(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled dataset embedding (B, dim + 3)."""
        if x.dim() != 3 or y.dim() != 3 or x.shape[:2] != y.shape[:2]:
            raise ValueError(f"x and y must be (batch, n, d) with the same batch and n, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        pad = None if bool(mask.all()) else ~mask
        h = self.rows_block(self.embed(self.rows(x, y, mask)), pad)
        for block in self.encoder:
            h = block(h, pad)
        s = self.readout(self.mix(self.pool(h, pad)), None)[:, 0]
        n = mask.sum(1, keepdim=True).to(x.dtype)
        dims = torch.tensor([x.shape[-1], y.shape[-1]], dtype=x.dtype, device=x.device) / self.d_max
        return torch.cat([s, n.log(), dims.expand(x.shape[0], -1)], -1)

    def forward(self, x, y, mask=None, tau: torch.Tensor | None = None) -> torch.Tensor:
        """MI estimates (B,) for ``mse``; quantiles (B, T) at levels ``tau`` for ``quantile``."""
        z = self.embedding(x, y, mask)
        if self.objective == "mse":
            out = self.head(z).squeeze(-1)
            return out if self.training else out.clamp_min(0.0)
        if tau is None:
            raise ValueError("the quantile model needs tau (quantile levels in (0, 1))")
        return self.head(z, tau.to(z))


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Mean pinball (quantile) loss ρ_τ(u) = max(τ u, (τ - 1) u), u = target - pred (Koenker)."""
    u = target - pred
    return torch.maximum(tau * u, (tau - 1) * u).mean()
