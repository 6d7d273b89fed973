"""The Hyper-Connections family: HC (Zhu et al., ICLR 2025, arXiv 2409.19606), mHC (Xie et al.
2025, arXiv 2512.24880), mHC-lite, KromHC and sHC (Liu et al. 2026, arXiv 2603.20896).

n residual streams mixed by learnable width/depth connections around the sub-layers of the shared
causal LM (replicate/nn/transformer.py): connections.py (the mappings of every variant),
model.py (the LM), probes.py (gains, errors, distances of the mixing matrices), module.py (the
LightningModule), measures.py (the numbers behind each figure's claims). The data is the shared
byte-level text module (replicate/data/text.py).
"""

from replicate.papers.hyper_connections.model import ConnectionConfig, HyperConnectedLM
from replicate.papers.hyper_connections.module import HyperConnectionsLM

__all__ = ["ConnectionConfig", "HyperConnectedLM", "HyperConnectionsLM"]
