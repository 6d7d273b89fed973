"""``estimate(x, y)``: MI and its quantiles from trained MIST / MIST-QR networks.

Where the weights come from (no silent fallback: without trained weights it raises):

* ``checkpoint=None``: the copies shipped in this package, ``replicate/papers/mist/checkpoints/
  {mse,quantile}.pt``. They are written by the ``mist/error_vs_n`` notebook when it runs at the
  default (or full) scale, from the two runs of the run store (``runs/mist/<hash>/``); each file
  is < 1 MB at the default scale and records its run and scale under ``provenance``.
* ``checkpoint=<dir>``: a folder holding ``mse.pt`` and/or ``quantile.pt`` in that format, or a
  finished run directory of the run store (``config.yaml`` + ``checkpoints/last.ckpt``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from replicate.papers.mist.analysis import CHECKPOINT_DIR, import_net, load_net
from replicate.papers.mist.model import MISTNet

_CACHE: dict[str, dict[str, MISTNet]] = {}


def load_estimators(checkpoint: str | Path | None = None) -> dict[str, MISTNet]:
    """{objective: network} from ``checkpoint`` (see the module docstring)."""
    folder = Path(checkpoint) if checkpoint is not None else CHECKPOINT_DIR
    key = str(folder.resolve())
    if key in _CACHE:
        return _CACHE[key]
    if (folder / "config.yaml").is_file() and (folder / "checkpoints" / "last.ckpt").is_file():
        net = load_net(folder)
        nets = {net.objective: net}
    else:
        nets = {p.stem: import_net(p) for p in (folder / "mse.pt", folder / "quantile.pt") if p.is_file()}
    if not nets:
        raise FileNotFoundError(
            f"no trained MIST weights in {folder}: run `snakemake figures/mist/error_vs_n.png --cores 2` "
            "(default scale; it trains both networks and exports them there) or pass checkpoint=<run dir>")
    _CACHE[key] = nets
    return nets


def _as_batch(v, name: str) -> torch.Tensor:
    a = np.asarray(v, dtype=np.float32)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite (n,) or (n, d) array, got shape {a.shape}")
    return torch.from_numpy(a).unsqueeze(0)


@torch.no_grad()
def estimate(x, y, checkpoint: str | Path | None = None, quantiles=(0.05, 0.5, 0.95)) -> dict:
    """MI of the sample (x, y) in nats: ``{"mi": MIST's estimate (MIST-QR's median if only that
    network exists), "quantiles": {τ: MIST-QR's q̂_τ}}`` (quantiles only with a MIST-QR network)."""
    xt, yt = _as_batch(x, "x"), _as_batch(y, "y")
    if xt.shape[1] != yt.shape[1] or xt.shape[1] < 2:
        raise ValueError(f"x and y need the same number (>= 2) of samples, got {xt.shape[1]} and {yt.shape[1]}")
    nets = load_estimators(checkpoint)
    out = {}
    if "quantile" in nets:
        levels = sorted({0.5, *map(float, quantiles)})
        q = nets["quantile"](xt, yt, tau=torch.tensor(levels))[0].tolist()
        out["quantiles"] = dict(zip(levels, q))
    out["mi"] = float(nets["mse"](xt, yt)[0]) if "mse" in nets else out["quantiles"][0.5]
    return out
