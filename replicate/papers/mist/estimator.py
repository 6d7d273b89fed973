"""``estimate(x, y)``: MI (nats) and its quantiles from trained MIST / MIST-QR networks.

Usage::

    from replicate.papers.mist import estimate, describe
    print(describe())                      # which weights, from which commit/config, trained ranges
    r = estimate(x, y)                     # x (n, d_x), y (n, d_y): {"mi": ..., "quantiles": {...}}
    rs = estimate([x1, x2], [y1, y2])      # a list of datasets (sizes may differ): a list of dicts
    rs = estimate(xb, yb)                  # a (B, n, d) batch: a list of dicts

Datasets of the same (n, d_x, d_y) go through the network together (``batch`` at a time), so a
list of many datasets costs far less per dataset than one call each.

Ranges (the documented rule). A checkpoint records the ranges it was trained on
(``provenance["trained"]``: n_range, d_range, d_max). Then

* d_x or d_y above d_max, or outside d_range: ``ValueError`` (one line). The network has no input
  for more than d_max dimensions, and a dimension it never saw is not an estimate it was trained
  to give.
* n outside n_range: ``ValueError`` (one line) by default (``outside="error"``); with
  ``outside="warn"`` a ``UserWarning`` names the range and the estimate is returned (an
  extrapolation: its error is unmeasured here). n < 2 is always an error.

Where the weights come from (no silent fallback: without trained weights it raises):

* ``checkpoint=None``: the copies shipped in this package, ``replicate/papers/mist/checkpoints/
  {mse,quantile}.pt``, written by the ``mist/error_vs_n`` notebook at the default (or full) scale
  from the two runs of the run store; each records its provenance (``checkpoint.py``: config
  hash, git commit, weights sha256, verified on load, trained ranges).
* ``checkpoint=<dir>``: a folder holding ``mse.pt`` and/or ``quantile.pt`` in that format, or a
  finished run directory of the run store (``config.yaml`` + ``checkpoints/last.ckpt``).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from replicate.papers.mist.checkpoint import CHECKPOINT_DIR, import_net, load_net
from replicate.papers.mist.model import MISTNet

_CACHE: dict[str, dict[str, MISTNet]] = {}
OUTSIDE = ("error", "warn")


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


def trained_ranges(net: MISTNet) -> dict:
    """The n and d ranges a network was trained on (its provenance; d_max alone if unrecorded)."""
    trained = (getattr(net, "provenance", None) or {}).get("trained") or {}
    return {"n_range": tuple(trained.get("n_range", (2, None))),
            "d_range": tuple(trained.get("d_range", (1, net.d_max))), "d_max": int(net.d_max)}


def describe(checkpoint: str | Path | None = None) -> str:
    """One line per loaded network: objective, config hash, git commit, weights sha256 (verified),
    trained n and d ranges, scale and steps."""
    lines = []
    for objective, net in load_estimators(checkpoint).items():
        p = getattr(net, "provenance", {}) or {}
        r = trained_ranges(net)
        lines.append(f"{objective}: config {p.get('config_hash', '?')}, commit {str(p.get('git_commit', '?'))[:12]}, "
                     f"weights sha256 {str(p.get('weights_sha256', '?'))[:12]}, scale {p.get('scale', '?')}, "
                     f"{p.get('steps', '?')} steps; trained n {r['n_range'][0]}..{r['n_range'][1]}, "
                     f"d_x, d_y {r['d_range'][0]}..{r['d_range'][1]}")
    return "\n".join(lines)


def _as_array(v, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite (n,) or (n, d) array, got shape {a.shape}")
    return a


def check_ranges(n: int, dx: int, dy: int, ranges: dict, outside: str) -> None:
    """Apply the documented range rule (module docstring) to one dataset."""
    if outside not in OUTSIDE:
        raise ValueError(f"outside={outside!r}; expected one of {OUTSIDE}")
    lo, hi = ranges["d_range"]
    for name, d in (("d_x", dx), ("d_y", dy)):
        if d > ranges["d_max"] or not lo <= d <= hi:
            raise ValueError(f"{name}={d} is outside the trained dimensions {lo}..{hi} of this checkpoint")
    n_lo, n_hi = ranges["n_range"]
    if n < 2:
        raise ValueError(f"need at least 2 samples, got n={n}")
    if n < n_lo or (n_hi is not None and n > n_hi):
        message = f"n={n} is outside the trained sample sizes {n_lo}..{n_hi} of this checkpoint"
        if outside == "error":
            raise ValueError(message + " (pass outside='warn' to extrapolate)")
        warnings.warn(message + ": the estimate is an extrapolation", UserWarning, stacklevel=3)


@torch.no_grad()
def estimate(x, y, checkpoint: str | Path | None = None, quantiles=(0.05, 0.5, 0.95), outside: str = "error",
             batch: int = 64):
    """MI in nats of one dataset (x (n,) or (n, d_x), y (n,) or (n, d_y)): ``{"mi": MIST's estimate
    (MIST-QR's median if only that network exists), "quantiles": {τ: MIST-QR's q̂_τ}}`` (quantiles
    only with a MIST-QR network). A list of datasets, or a (B, n, d) array, gives a list of such
    dicts, computed in batches of same-shaped datasets. ``outside``: the range rule (module
    docstring)."""
    single = not isinstance(x, (list, tuple)) and np.ndim(x) <= 2
    xs = [x] if single else list(x)
    ys = [y] if single else list(y)
    if len(xs) != len(ys):
        raise ValueError(f"got {len(xs)} x datasets and {len(ys)} y datasets")
    xs = [_as_array(v, "x") for v in xs]
    ys = [_as_array(v, "y") for v in ys]
    for a, b in zip(xs, ys):
        if len(a) != len(b):
            raise ValueError(f"x and y need the same number of samples, got {len(a)} and {len(b)}")
    nets = load_estimators(checkpoint)
    for net in nets.values():
        ranges = trained_ranges(net)
        for a, b in zip(xs, ys):
            check_ranges(len(a), a.shape[1], b.shape[1], ranges, outside)
    levels = sorted({0.5, *map(float, quantiles)})
    groups = defaultdict(list)
    for i, (a, b) in enumerate(zip(xs, ys)):
        groups[(a.shape, b.shape)].append(i)
    out = [{} for _ in xs]
    for idx in groups.values():
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            xt = torch.from_numpy(np.stack([xs[i] for i in chunk]))
            yt = torch.from_numpy(np.stack([ys[i] for i in chunk]))
            q = nets["quantile"](xt, yt, tau=torch.tensor(levels)).tolist() if "quantile" in nets else None
            m = nets["mse"](xt, yt).tolist() if "mse" in nets else None
            for j, i in enumerate(chunk):
                if q is not None:
                    out[i]["quantiles"] = dict(zip(levels, q[j]))
                out[i]["mi"] = m[j] if m is not None else out[i]["quantiles"][0.5]
    return out[0] if single else out
