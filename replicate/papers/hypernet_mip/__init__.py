"""Magnitude Invariant Parametrizations for hypernetworks (Ortiz, Guttag, Dalca, ICLR 2024,
arXiv 2304.07645): hypernetwork, primary networks, encodings, the LightningModule."""

from replicate.papers.hypernet_mip.model import (ENCODINGS, VARIANTS, HyperModel, HyperNet,
                                                 PrimaryModule, PrimaryNet, encode)
from replicate.papers.hypernet_mip.module import HypernetMIP

__all__ = ["ENCODINGS", "VARIANTS", "HyperModel", "HyperNet", "HypernetMIP", "PrimaryModule",
           "PrimaryNet", "encode"]
