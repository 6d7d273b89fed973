"""Training FLOPs of vanilla, recursive and MoR models (Bae et al. 2025, Sec. 3 isoFLOP setup).

A multiply-add is 2 FLOPs; backward costs twice the forward, so training = 3 x forward. Counted
per sequence of T tokens, only for the tokens active at each block application:

* a block on n active tokens: ``2 n (4 d^2 + mlp)`` for the Q, K, V, O and MLP matrices
  (mlp = 3 d h for SwiGLU, 2 d h for ReLU) plus attention ``2 * 2 d * n (n + 1) / 2``
  (QK^T and AV; the i-th active query sees exactly i active keys under causal masking,
  whatever the active subset is);
* with recursive KV sharing, recursions r >= 1 skip the K and V projections and their queries
  attend to every earlier token's recursion-0 K/V: ``n (T + 1) / 2`` key pairs on average
  (active tokens spread evenly over the sequence);
* routers: ``2 d`` per ranked token per expert-choice step (twice under aux_mode "detached"
  or "separate": the BCE's logits are a second router pass; none under random routing), ``2 d N_r`` per token for
  token-choice; the output head ``2 T d V``; embeddings and norms are not counted.

Active tokens per recursion: expert-choice keeps ``max(1, floor(c_r T))``; token-choice is
counted at the balanced split its balancing loss aims for (the same counts); the recursive
models (plain and fixed-gate) run every token ``N_r`` times; the fixed-gate vanilla model counts
as vanilla (the gate's elementwise scaling is not counted, like norms).
"""

from __future__ import annotations

from replicate.nn.transformer import LMConfig
from replicate.papers.mixture_of_recursions.model import MoRConfig, middle_layers


def block_matmul_params(lm: LMConfig) -> int:
    mlp = (3 if lm.mlp == "swiglu" else 2) * lm.d_model * lm.hidden_dim
    return 4 * lm.d_model ** 2 + mlp


def block_forward_flops(lm: LMConfig, n: int, seq_len: int | None = None, shared_kv: bool = False) -> float:
    """Forward FLOPs of one block applied to n active tokens (see the module docstring)."""
    d = lm.d_model
    matmul = block_matmul_params(lm) - (2 * d * d if shared_kv else 0)
    pairs = n * (seq_len + 1) / 2 if shared_kv else n * (n + 1) / 2
    return 2 * n * matmul + 4 * d * pairs


def active_counts(mor: MoRConfig, seq_len: int) -> list[int]:
    """Tokens active at each recursion (see the module docstring)."""
    if mor.variant in ("mor_ec", "mor_tc"):
        return [max(1, int(c * seq_len)) for c in mor.capacities()]
    return [seq_len] * mor.n_rec


def forward_flops(lm: LMConfig, mor: MoRConfig, seq_len: int, counts: list[int] | None = None) -> float:
    """Forward FLOPs of one sequence of seq_len tokens."""
    head = 2 * seq_len * lm.d_model * lm.vocab_size
    if mor.variant in ("vanilla", "vanilla_gated"):  # the gate's elementwise scaling is not counted
        return lm.n_layer * block_forward_flops(lm, seq_len) + head
    m = middle_layers(lm.n_layer, mor.n_rec)
    counts = counts if counts is not None else active_counts(mor, seq_len)
    total = 2 * block_forward_flops(lm, seq_len) + head
    for r, n in enumerate(counts):
        total += m * block_forward_flops(lm, n, seq_len, shared_kv=mor.kv_share and r > 0)
    if mor.variant == "mor_ec":
        scored = [seq_len, *counts[:-1]]
        routers = 0 if mor.rand_router else (1 if mor.aux_mode == "logits" else 2)  # a second pass: detached / separate
        total += routers * sum(2 * lm.d_model * n for n in scored)
    elif mor.variant == "mor_tc":
        total += 2 * lm.d_model * mor.n_rec * seq_len
    return total


def train_flops_per_step(lm: LMConfig, mor: MoRConfig, seq_len: int, batch_size: int) -> float:
    """Forward + backward FLOPs of one optimizer step (3 x forward)."""
    return 3.0 * batch_size * forward_flops(lm, mor, seq_len)


def steps_for_budget(lm: LMConfig, mor: MoRConfig, seq_len: int, batch_size: int, budget: float) -> int:
    """Optimizer steps that spend ``budget`` training FLOPs (rounded to the nearest step)."""
    return max(1, round(budget / train_flops_per_step(lm, mor, seq_len, batch_size)))
