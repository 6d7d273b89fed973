"""Hourglass MLPs (Chen, Lee, Liao, Shiu, "Rethinking the shape convention of an MLP", MediaTek
Research 2025, arXiv 2510.01796): wide-narrow-wide residual MLPs with a fixed random lift vs
conventional narrow-wide-narrow MLPs, compared on parameter-matched Pareto frontiers."""

from replicate.papers.hourglass_mlp.model import (FAMILIES, ConventionalMLP, HourglassMLP, Shape, build,
                                                  count_parameters)
from replicate.papers.hourglass_mlp.module import HourglassGrid

__all__ = ["FAMILIES", "ConventionalMLP", "HourglassGrid", "HourglassMLP", "Shape", "build", "count_parameters"]
