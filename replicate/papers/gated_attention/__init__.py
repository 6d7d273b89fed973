"""Gated Attention for LLMs (Qiu et al. 2025, arXiv 2505.06708): gates, module, probes."""

from replicate.papers.gated_attention.model import GATES, build_gated_lm, make_gate
from replicate.papers.gated_attention.module import GatedAttentionLM

__all__ = ["GATES", "GatedAttentionLM", "build_gated_lm", "make_gate"]
