"""The shared causal LM with its residual connections replaced by n-stream connections.

``HyperConnectedLM`` keeps the shared LM's parts and names (``tok_emb``, ``pos_emb``, ``blocks``
with their ``norm1``/``attn``/``norm2``/``mlp``, ``norm_f``, ``lm_head``; replicate/nn/transformer.py)
and does only the stream expansion, the width/depth mixing and the final reduction:

* expansion: the token embedding h_0 is copied into every stream, x_0 = (h_0, ..., h_0)
  (HC Sec. 2: H^0 = (h^0 ... h^0)^T);
* every block's two sub-layers, ``attn(norm1(.))`` and ``mlp(norm2(.))``, are wrapped by one
  connection each (connections.py), so a model with L blocks has 2L mixing matrices (mHC Fig. 3
  counts attention and FFN as separate layers too);
* reduction: the streams are summed, h_L = sum_i x_{L,i} (HC Sec. 2), then ``norm_f`` and the head.

``attention_gate`` installs a gate of Gated Attention (Qiu et al. 2025, arXiv 2505.06708, its G1
gate Y' = Y ⊙ sigma(X W_theta) after SDPA; replicate/papers/gated_attention/model.py) in every
attention layer, for the suite's cross-paper figure: ``none`` (the papers' models), ``headwise``
or ``elementwise``. The gate reads the attention's own input, the normed mixed stream.

With ``variant="residual"`` (one stream) the model computes exactly the shared ``CausalLM``'s
function on the same weights: its state dict loads into it unchanged (a test checks both).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from replicate.nn.transformer import Block, LMConfig, init_normal_002, make_norm
from replicate.papers.gated_attention.model import make_gate
from replicate.papers.hyper_connections.connections import VARIANTS, StreamConnection, make_connection

ATTENTION_GATES = ("none", "headwise", "elementwise")


@dataclass
class ConnectionConfig:
    """variant         one of connections.VARIANTS
    streams         expansion rate n (1 for ``residual``)
    dynamic         HC only: input-dependent terms on top of the static matrices
    sinkhorn_iters  mHC only: Sinkhorn-Knopp iterations t_max (the paper's 20)
    scale_init      initial gating factors (HC's s_alpha, s_beta; mHC's alpha)"""

    variant: str = "mhc"
    streams: int = 4
    dynamic: bool = True
    sinkhorn_iters: int = 20
    scale_init: float = 0.01

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"connection.variant={self.variant!r}; expected one of {VARIANTS}")

    @classmethod
    def from_dict(cls, d: dict) -> "ConnectionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TypeError(f"unknown connection keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class HyperConnectedLM(nn.Module):
    def __init__(self, cfg: LMConfig, connection: ConnectionConfig, attention_gate: str = "none"):
        super().__init__()
        if attention_gate not in ATTENTION_GATES:
            raise ValueError(f"attention_gate={attention_gate!r}; expected one of {ATTENTION_GATES}")
        self.cfg, self.connection = cfg, connection
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.init == "normal0.02":
            self.apply(init_normal_002)  # before the connections: they keep their own init
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.connections = nn.ModuleList(
            make_connection(connection.variant, connection.streams, cfg.d_model, k, connection.dynamic,
                            connection.sinkhorn_iters, connection.scale_init)
            for k in range(2 * cfg.n_layer))
        for block in self.blocks:  # after the LM's init: the gate keeps Gated Attention's N(0, 0.02)
            if attention_gate != "none":
                hook, gate = make_gate(attention_gate, cfg)
                setattr(block.attn, hook, gate)

    @property
    def streams(self) -> int:
        return self.connection.streams

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab)."""
        if idx.shape[1] > self.cfg.max_len:
            raise ValueError(f"sequence length {idx.shape[1]} > max_len {self.cfg.max_len}")
        h = self.tok_emb(idx)
        if self.pos_emb is not None:
            h = h + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        h = self.drop(h)
        x = h[..., None, :].expand(*h.shape[:-1], self.streams, h.shape[-1])
        for k, block in enumerate(self.blocks):
            x = self.connections[2 * k](x, lambda u, b=block: b.drop(b.attn(b.norm1(u))))
            x = self.connections[2 * k + 1](x, lambda u, b=block: b.drop(b.mlp(b.norm2(u))))
        return self.lm_head(self.norm_f(x.sum(dim=-2)))


class recording:
    """``with recording(model) as conns:`` every connection keeps its latest ``H_res`` (and the
    logits before the projection) in ``conn.last`` during the forward passes inside the block."""

    def __init__(self, model: HyperConnectedLM):
        self.connections: list[StreamConnection] = list(model.connections)

    def __enter__(self) -> list[StreamConnection]:
        for conn in self.connections:
            conn.recording = True
        return self.connections

    def __exit__(self, *exc) -> None:
        for conn in self.connections:
            conn.recording, conn.last = False, {}


def connection_parameters(model: HyperConnectedLM) -> dict[str, int]:
    """Parameter counts: ``total``; ``connections`` (every mapping's parameters); ``residual_mixing``
    (what produces H_res: the rows of phi that make its coefficients, their bias, for HC the
    static A_r and the rows of W_alpha that make it)."""
    n = model.streams
    total = sum(p.numel() for p in model.parameters())
    conns = sum(p.numel() for c in model.connections for p in c.parameters())
    mixing = 0
    for c in model.connections:
        if hasattr(c, "phi"):
            mixing += c.phi.in_features * c.n_coefficients + c.b_res.numel()
        elif hasattr(c, "static_alpha"):
            mixing += n * n + (c.w_alpha.in_features * n if c.dynamic else 0)
    return {"total": total, "connections": conns, "residual_mixing": mixing}
