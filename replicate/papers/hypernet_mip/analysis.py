"""Measurements the MIP figure notebooks share: the proportionality probe at initialisation,
steps to a loss threshold, log-log slopes, and the effective setting of a run.

``init_probe`` builds fresh ``HypernetMIP`` modules (one per init seed) and measures, at each γ:
``theta_norm`` ‖θ(γ)‖, ``delta_norm`` ‖θ(γ) − θ₀‖ (the hypernetwork's predicted term; equal to
‖θ‖ when θ₀ = 0), ``theta_var`` the variance of θ's entries, ``logit_std`` the std of the primary
network's logits on a fixed batch of clean images, and ``grad_norm`` ‖∂L/∂ω‖ of the task loss
(with the fixed validation noise) over all hypernetwork parameters (θ₀ included).

Claim estimates (each returns a ``replicate.claims.Estimate`` over its independent units):
``steps_ratio`` (paired bootstrap over seeds of mean steps default ÷ variant), ``final_gain``
(t over paired seed differences of the final loss), ``cell_fraction`` (Wilson interval over
ablation cells) and ``slope_over_seeds`` (t interval over init seeds of a per-seed log-log slope).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from replicate import claims


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


# --------------------------------------------------------------------------- claim estimates


def seed_table(runs: pd.DataFrame, threshold: Mapping[str, float] | float, max_steps: int,
               regime_of=None) -> pd.DataFrame:
    """One row per run: regime, variant, seed, ``steps`` to the threshold (NaN = never),
    ``steps_censored`` (never -> ``max_steps``, so a ratio involving it is a lower bound),
    ``reached`` and ``final`` (the final validation loss; +inf for a diverged run).

    ``threshold`` is one number or ``{regime: number}``; ``regime_of(run_dir)`` gives a run's
    regime (default: the task kind of its effective config)."""
    regime_of = regime_of or (lambda d: run_effective(d)["task"]["kind"])
    rows = []
    for r in runs.itertuples():
        regime = regime_of(r.run_dir)
        thr = threshold[regime] if isinstance(threshold, Mapping) else threshold
        ok = r.status == "finished" and math.isfinite(float(r.final_val_loss))
        steps = steps_to_threshold(r.val, thr) if ok else float("nan")
        rows.append({"regime": regime, "variant": r.variant, "seed": int(r.seed), "steps": steps,
                     "steps_censored": max_steps if math.isnan(steps) else steps,
                     "reached": not math.isnan(steps),
                     "final": float(r.final_val_loss) if ok else float("inf")})
    return pd.DataFrame(rows)


def _paired(table: pd.DataFrame, regime: str, a: str, b: str, col: str) -> pd.DataFrame:
    """Seeds present for both variants ``a`` and ``b`` in ``regime``: columns a, b (values of col)."""
    d = table[table.regime == regime].pivot_table(index="seed", columns="variant", values=col,
                                                   aggfunc="first")
    if a not in d or b not in d:
        return pd.DataFrame(columns=[a, b])
    return d[[a, b]].dropna()


def steps_ratio(table: pd.DataFrame, regime: str, variant: str = "mip",
                baseline: str = "default") -> claims.Estimate:
    """mean over seeds of the baseline's censored steps-to-threshold ÷ the variant's, with a
    percentile bootstrap over paired seeds (same seed = same init stream and data)."""
    d = _paired(table, regime, baseline, variant, "steps_censored")
    if not len(d):
        return claims.Estimate(float("nan"), None, 0, "no paired seeds")
    return claims.ratio_of_means(d[baseline].to_numpy(), d[variant].to_numpy())


def final_gain(table: pd.DataFrame, regime: str, variant: str = "mip",
               baseline: str = "default") -> claims.Estimate:
    """Mean over seeds of baseline − variant final validation loss (nats; > 0: variant better),
    with a t interval over the paired seed differences. A diverged run's +inf makes it infinite."""
    d = _paired(table, regime, baseline, variant, "final")
    if not len(d):
        return claims.Estimate(float("nan"), None, 0, "no paired seeds")
    return claims.paired_difference(d[baseline].to_numpy(), d[variant].to_numpy())


def reached_fraction(table: pd.DataFrame, regime: str, variant: str) -> float:
    """Share of a variant's seeds that reached the threshold (a precondition of a steps ratio)."""
    d = table[(table.regime == regime) & (table.variant == variant)]
    return float(d.reached.mean()) if len(d) else float("nan")


def cell_fraction(flags: Iterable[bool]) -> claims.Estimate:
    """Share of ablation cells for which ``flags`` holds, with a Wilson interval over the cells
    (NaN flags, cells that say nothing, are dropped)."""
    x = [bool(f) for f in flags if not (isinstance(f, float) and math.isnan(f))]
    return claims.proportion(sum(x), len(x), unit="cells")


def slope_over_seeds(init: pd.DataFrame, variant: str, quantity: str, absolute: bool = False,
                     x: str = "gamma") -> claims.Estimate:
    """Log-log slope of ``quantity`` against ``x`` fitted per init seed of ``variant`` (rows of
    the ``init_probe`` table with a ``seed`` column), with a t interval over the seeds."""
    d = init[init.variant == variant]
    per_seed = [loglog_slope(g[x], g[quantity]) for _, g in d.groupby("seed")]
    if absolute:
        per_seed = [abs(v) for v in per_seed]
    return claims.mean_interval(per_seed, unit="init seeds")


# --------------------------------------------------------------------------- hyperlight's split init


@torch.no_grad()
def split_output_init_(hyper, spec, generator: torch.Generator | None = None) -> dict[str, float]:
    """Re-initialise the hypernetwork's output weight as hyperlight's current default does
    (``HyperNet._init_output_split`` in JJGO/hyperlight, after its commit b23eae3 "split init for
    last dense"; read, not copied): each primary tensor's block of rows, shape (numel, width), is
    Kaiming normal with fan-out = numel and the hypernetwork activation's gain, so block b has
    std gain / sqrt(numel_b). Biases are left as they are (zero). Returns each block's std.

    Notebook-only: the trained variants keep the one-block init of ``model.HyperNet``
    (``init: hyperlight``, std 1/sqrt(P)); this shows what the paper's library would start from."""
    from replicate.papers.hypernet_mip.model import kaiming_gain_name

    # as torch.nn.init.kaiming_normal_ computes it (its default a = 0: LeakyReLU's gain is sqrt(2))
    gain = torch.nn.init.calculate_gain(kaiming_gain_name(hyper.activation), 0)
    stds, offset = {}, 0
    for name, size in zip(spec.shapes, spec.sizes):
        std = gain / math.sqrt(size)
        block = hyper.out.weight[offset:offset + size]
        block.copy_(torch.randn(block.shape, generator=generator) * std)
        stds[name], offset = std, offset + size
    return stds
