"""MIST: Mutual Information via Supervised Training (Gritsai et al. 2025, arXiv 2511.18945):
meta-dataset families with closed-form MI, the set model, its LightningModule, baselines and
``estimate(x, y)``.

The public names are loaded on first use (``__getattr__``), so importing the training module
(``replicate.papers.mist.module``) does not import the estimator, the baselines or the notebook
helpers: those can change without retraining (the pipeline retrains a paper's runs when a file
of their static import closure changes).
"""

from importlib import import_module

_NAMES = {"estimate": "estimator", "load_estimators": "estimator", "describe": "estimator",
          "MISTNet": "model", "pinball_loss": "model", "MISTModule": "module"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
