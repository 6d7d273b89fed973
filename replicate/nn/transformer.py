"""A small decoder-only causal language model, shared by the LM papers.

One readable file in the spirit of nanoGPT: token embedding (+ learned absolute positions, or
RoPE inside attention), ``n_layer`` pre-norm blocks ``x + attn(norm(x))``, ``x + mlp(norm(x))``,
a final norm and a linear head. Byte-level by default: ``vocab_size = 257`` = 256 bytes + BOS
(token 256), and every sequence carries BOS at position 0.

Variants plug in without copying the model; each attention layer has two hook points:

* ``attn.gate``        ``gate(x_normed, y) -> y'`` on the per-head attention output ``y`` of shape
                       (B, T, H, d_head), after scaled dot-product attention and before the heads
                       are concatenated and passed through ``o_proj``;
* ``attn.value_gate``  ``value_gate(x_normed, v) -> v'`` on the value projection (B, T, H, d_head)
                       before attention mixes it.

``x_normed`` is the block's input after its attention norm (the current token's hidden state).
A hook module may define ``last_score`` and a boolean ``keep_score``; while recording (below) the
attention sets ``keep_score`` and collects ``last_score`` so probes can read gate values.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``. Inside
``record(model)`` it instead computes ``softmax(QK^T / sqrt(d) + mask) V`` explicitly and keeps the
attention probabilities, value states and gate scores of every layer for probes (the two paths
agree to float rounding; a test checks it).

``Block.forward(x, positions=None, attn_mask=None)`` accepts explicit positions (used by RoPE) and
a boolean attention mask (True = may attend) that replaces the causal mask, so a block can be run
on a subset of tokens (Mixture-of-Recursions); ``causal_mask(positions)`` builds the mask that
keeps causality among such a subset. ``CausalLM.forward(..., return_hidden=True)`` also returns
the residual stream after each block.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

BOS = 256  # token id of the beginning-of-sequence marker (bytes are 0..255)


@dataclass
class LMConfig:
    """Shape of the causal LM. Every field is a plain value so Hydra configs map onto it.

    vocab_size    257 = 256 bytes + BOS
    n_layer       number of blocks
    d_model       residual width
    n_head        attention heads (d_model must divide by n_head)
    mlp           "swiglu" (down(silu(gate(x)) * up(x))) or "relu" (down(relu(up(x))))
    mlp_ratio     hidden width = mlp_ratio * d_model for relu; for swiglu 2/3 of that, rounded up
                  to a multiple of 8, so both have about the same parameter count
    d_ff          explicit hidden width; overrides mlp_ratio when set
    max_len       longest sequence (positions 0..max_len-1; the input length incl. BOS)
    norm          "rms" (RMSNorm) or "layer" (LayerNorm with weight and bias)
    pos           "rope" (rotary, rotate-half convention as in LLaMA/Qwen) or "learned"
    rope_base     RoPE base frequency
    qk_norm       RMSNorm over d_head on queries and keys before RoPE (Qwen3 style)
    init          "normal0.02": every Linear/Embedding weight ~ N(0, 0.02), biases 0;
                  "torch_default": PyTorch's own initialisation (Embedding N(0, 1), Linear
                  Kaiming-uniform), as in Guo et al. 2024
    bias          biases in the Linear layers (norms always keep their own parameters)
    tie_embeddings  share the token embedding with the output head
    dropout       dropout on attention probabilities and residual branches (0 = off)
    norm_eps      epsilon of the norms
    """

    vocab_size: int = 257
    n_layer: int = 2
    d_model: int = 128
    n_head: int = 4
    mlp: str = "swiglu"
    mlp_ratio: float = 4.0
    d_ff: int | None = None
    max_len: int = 128
    norm: str = "rms"
    pos: str = "rope"
    rope_base: float = 10000.0
    qk_norm: bool = False
    init: str = "normal0.02"
    bias: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        for name, allowed in (("mlp", ("swiglu", "relu")), ("norm", ("rms", "layer")),
                              ("pos", ("rope", "learned")), ("init", ("normal0.02", "torch_default"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LMConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def hidden_dim(self) -> int:
        if self.d_ff is not None:
            return int(self.d_ff)
        hidden = self.mlp_ratio * self.d_model
        if self.mlp == "swiglu":
            hidden = 8 * math.ceil(2 * hidden / 3 / 8)
        return int(hidden)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        """Build from a dict, naming any key that is not a field (a typo fails loudly)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TypeError(f"unknown LMConfig keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def make_norm(cfg: LMConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    if cfg.norm == "rms":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


# --------------------------------------------------------------------------- positions


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, shape positions.shape + (head_dim,).

    Pair i of a head (dims i and i + head_dim/2, "rotate-half") turns by position * base^(-2i/d).
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., d/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (B, T, H, d) by angles given as (T, d) or (B, T, d)."""
    if cos.dim() == 2:
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def causal_mask(positions: torch.Tensor) -> torch.Tensor:
    """Boolean mask (..., 1, T, T), True where key position <= query position.

    For a subset of tokens given by their original positions (B, T) or (T,), this keeps
    causality among them; pass it as ``attn_mask`` to ``Block.forward``.
    """
    mask = positions[..., None, :] <= positions[..., :, None]
    return mask.unsqueeze(-3)


# --------------------------------------------------------------------------- attention


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with gate hooks (see the module docstring)."""

    def __init__(self, cfg: LMConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        d_attn = cfg.n_head * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, d_attn, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, d_attn, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, d_attn, bias=cfg.bias)
        self.o_proj = nn.Linear(d_attn, cfg.d_model, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)
        self.gate: nn.Module | None = None  # gate(x_normed, y) on (B, T, H, d_head)
        self.value_gate: nn.Module | None = None  # value_gate(x_normed, v) on (B, T, H, d_head)
        # set by record(): a dict this layer fills with "attn", "v", "gate", "value_gate"
        self.recording: dict | None = None

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.n_head, self.head_dim
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, H, D)
        v = self.v_proj(x).view(B, T, H, D)
        if self.value_gate is not None:
            v = self.value_gate(x, v)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.cfg.pos == "rope":
            if positions is None:
                positions = torch.arange(T, device=x.device)
            cos, sin = rope_angles(positions, D, self.cfg.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        p_drop = self.cfg.dropout if self.training else 0.0

        if self.recording is None:
            y = F.scaled_dot_product_attention(q, k, vh, attn_mask=attn_mask, dropout_p=p_drop,
                                               is_causal=attn_mask is None)
        else:
            probs = self.attention_probs(q, k, attn_mask)
            self.recording["attn"] = probs.detach()
            self.recording["v"] = v.detach()
            y = F.dropout(probs, p_drop, self.training).to(vh.dtype) @ vh

        y = y.transpose(1, 2)  # (B, T, H, D)
        if self.gate is not None:
            y = self.gate(x, y)
        if self.recording is not None:
            for name in ("gate", "value_gate"):
                hook = getattr(self, name)
                score = getattr(hook, "last_score", None) if hook is not None else None
                self.recording[name] = None if score is None else score.detach()
        return self.o_proj(y.reshape(B, T, H * D))

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor,
                        attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + mask) in float32, shape (B, H, T, T).

        ``attn_mask`` is boolean (True = may attend) or additive; None means causal.
        """
        T, S = q.shape[-2], k.shape[-2]
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if attn_mask is None:
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
        return scores.softmax(dim=-1)


# --------------------------------------------------------------------------- MLP and block


class MLP(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = cfg.hidden_dim
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.gate = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.relu(self.up(x)))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then + mlp(norm2(.))."""

    def __init__(self, cfg: LMConfig, layer_idx: int = 0):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), positions=positions, attn_mask=attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


# --------------------------------------------------------------------------- model


class CausalLM(nn.Module):
    def __init__(self, cfg: LMConfig | dict):
        super().__init__()
        cfg = LMConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.init == "normal0.02":
            self.apply(init_normal_002)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @property
    def attentions(self) -> list[CausalSelfAttention]:
        return [b.attn for b in self.blocks]

    def embed(self, idx: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            if positions is None:
                positions = torch.arange(idx.shape[1], device=idx.device)
            x = x + self.pos_emb(positions)
        return self.drop(x)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, return_hidden: bool = False):
        """Logits (B, T, vocab); with return_hidden also the list of residual streams after
        each block (n_layer tensors of shape (B, T, d_model))."""
        if idx.shape[1] > self.cfg.max_len:
            raise ValueError(f"sequence length {idx.shape[1]} > max_len {self.cfg.max_len}")
        x = self.embed(idx, positions)
        hidden = []
        for block in self.blocks:
            x = block(x, positions=positions, attn_mask=attn_mask)
            if return_hidden:
                hidden.append(x)
        logits = self.lm_head(self.norm_f(x))
        return (logits, hidden) if return_hidden else logits

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def init_normal_002(module: nn.Module) -> None:
    """Weights ~ N(0, 0.02), biases 0 (Qwen / GPT-2 style, no depth scaling)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@contextlib.contextmanager
def record(model: CausalLM) -> Iterator[list[dict]]:
    """Record attention internals: yields one dict per layer that the next forward fills with

    attn        attention probabilities (B, H, T, T), float32, rows sum to 1
    v           value states after any value gate (B, T, H, d_head)
    gate        output-gate scores (broadcastable to (B, T, H, d_head)) or None
    value_gate  value-gate scores or None

    Attention uses the explicit softmax path while recording (slower; for probes only).
    """
    attns = model.attentions
    records: list[dict] = [{} for _ in attns]
    hooks = []
    for attn, rec in zip(attns, records):
        attn.recording = rec
        for hook in (attn.gate, attn.value_gate):
            if hook is not None and hasattr(hook, "keep_score"):
                hook.keep_score = True
                hooks.append(hook)
    try:
        yield records
    finally:
        for attn in attns:
            attn.recording = None
        for hook in hooks:
            hook.keep_score = False
            hook.last_score = None
