"""Mixture-of-Recursions (Bae et al. 2025, arXiv 2507.10524): recursive LMs with per-token depth."""

from replicate.papers.mixture_of_recursions.model import MoRConfig, RecursiveLM
from replicate.papers.mixture_of_recursions.module import MoRLM

__all__ = ["MoRConfig", "MoRLM", "RecursiveLM"]
