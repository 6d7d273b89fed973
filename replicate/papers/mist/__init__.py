"""MIST: Mutual Information via Supervised Training (Gritsai et al. 2025, arXiv 2511.18945):
meta-dataset families with closed-form MI, the set model, its LightningModule, baselines and
``estimate(x, y)``."""

from replicate.papers.mist.estimator import estimate, load_estimators
from replicate.papers.mist.model import MISTNet, pinball_loss
from replicate.papers.mist.module import MISTModule

__all__ = ["MISTModule", "MISTNet", "estimate", "load_estimators", "pinball_loss"]
