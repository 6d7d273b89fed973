"""Measurements the MIP figure notebooks share: the proportionality probe at initialisation,
steps to a loss threshold, log-log slopes, and the effective setting of a run.

``init_probe`` builds fresh ``HypernetMIP`` modules (one per init seed) and measures, at each γ:
``theta_norm`` ‖θ(γ)‖, ``delta_norm`` ‖θ(γ) − θ₀‖ (the hypernetwork's predicted term; equal to
‖θ‖ when θ₀ = 0), ``theta_var`` the variance of θ's entries, ``logit_std`` the std of the primary
network's logits on a fixed batch of clean images, and ``grad_norm`` ‖∂L/∂ω‖ of the task loss
(with the fixed validation noise) over all hypernetwork parameters (θ₀ included).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch


def steps_to_threshold(val: Iterable[Mapping[str, float]], threshold: float) -> float:
    """First step at which the validation loss is <= ``threshold``, linearly interpolated between
    the two validations around the crossing (the first validation itself when it is already
    below, since the loss before it is unknown); NaN when never reached (or the run diverged)."""
    prev = None
    for point in val:
        step, loss = float(point["step"]), float(point["val_loss"])
        if not math.isfinite(loss):
            return float("nan")
        if loss <= threshold:
            if prev is None or prev[1] == loss:
                return step
            s0, l0 = prev
            return s0 + (l0 - threshold) / (l0 - loss) * (step - s0)
        prev = (step, loss)
    return float("nan")


def loglog_slope(x: Iterable[float], y: Iterable[float]) -> float:
    """Least-squares slope of log y against log x (positive entries only)."""
    x, y = np.asarray(list(x), float), np.asarray(list(y), float)
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def effective_setting(effective: Mapping[str, Any]) -> dict[str, Any]:
    """The ablated fields of a run's effective config (``probes.effective``) as flat columns."""
    return {"optimizer": effective["optim"]["name"], "lr": effective["optim"]["lr"],
            "activation": effective["hyper"]["activation"], "input_dim": effective["task"]["input_dim"],
            "norm": effective["hyper"]["norm"], "arch": effective["primary"]["arch"],
            "task": effective["task"]["kind"], "variant": effective["variant"]}


def run_effective(run_dir: str | Path) -> dict[str, Any]:
    """The effective module config of a run in the run store (from its config.yaml, so it is
    there for diverged runs too, which record no probes)."""
    from omegaconf import OmegaConf

    from replicate.papers.hypernet_mip.module import effective_config

    module = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml").run.module, resolve=True)
    return effective_config(**{k: v for k, v in module.items() if k not in ("_target_", "seed")})


def build_module(module_cfg: Mapping[str, Any], seed: int, **overrides):
    """A freshly initialised ``HypernetMIP`` from a run's module config (``_target_`` dropped),
    with keyword overrides (``variant=...``, ``setting=...``), under ``torch.manual_seed(seed)``."""
    from replicate.papers.hypernet_mip.module import HypernetMIP

    kwargs = {k: v for k, v in dict(module_cfg).items() if k != "_target_"}
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return HypernetMIP(**kwargs)


def init_probe(module, gammas: Iterable[float], x: torch.Tensor, y: torch.Tensor,
               with_grad: bool = True) -> list[dict[str, float]]:
    """Rows of the measurements in the module docstring, one per γ (γ = g·1 for k > 1)."""
    rows = []
    k = module.input_dim
    for i, g in enumerate(gammas):
        gamma = torch.full((k,), float(g))
        with torch.no_grad():
            theta = module.model.flat_params(gamma).double()
            delta = module.model.hyper.delta(gamma).double()
            logits = module.spec(module.spec.unflatten(theta.float()), x)
        row = {"gamma": float(g), "gamma_norm": float(gamma.norm()),
               "theta_norm": float(theta.norm()), "delta_norm": float(delta.norm()),
               "theta_var": float(theta.var()), "logit_std": float(logits.std())}
        if with_grad:
            module.zero_grad(set_to_none=True)
            loss, _ = module.grid_losses(x, y, 0, [g])[0]
            loss.backward()
            grads = [p.grad.double().pow(2).sum() for p in module.parameters() if p.grad is not None]
            row["grad_norm"] = float(torch.stack(grads).sum().sqrt()) if grads else 0.0
            row["loss"] = loss.item()
            module.zero_grad(set_to_none=True)
        rows.append(row)
    return rows


def random_gamma_norms(module, n: int, generator: torch.Generator) -> pd.DataFrame:
    """‖θ‖ and ‖θ − θ₀‖ at ``n`` random γ ~ U(0, 1)^k (k = the module's input dimension)."""
    rows = []
    with torch.no_grad():
        for _ in range(n):
            gamma = torch.rand(module.input_dim, generator=generator)
            rows.append({"gamma_norm": float(gamma.norm()),
                         "theta_norm": float(module.model.flat_params(gamma).double().norm()),
                         "delta_norm": float(module.model.hyper.delta(gamma).double().norm())})
    return pd.DataFrame(rows)
