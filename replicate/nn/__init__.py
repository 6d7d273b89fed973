"""Building blocks shared by several paper packages."""

from replicate.nn.transformer import (BOS, Block, CausalLM, CausalSelfAttention, LMConfig, MLP,
                                      apply_rope, causal_mask, record, rope_angles)

__all__ = ["BOS", "Block", "CausalLM", "CausalSelfAttention", "LMConfig", "MLP", "apply_rope",
           "causal_mask", "record", "rope_angles"]
