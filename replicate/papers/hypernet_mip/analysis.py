"""The statistics behind the MIP claims (``measures`` turns them into each figure's measurements):
the proportionality probe at initialisation, steps to a loss threshold, log-log slopes, and the
effective setting of a run.

``init_probe`` builds fresh ``HypernetMIP`` modules (one per init seed) and measures, at each γ:
``theta_norm`` ‖θ(γ)‖, ``delta_norm`` ‖θ(γ) − θ₀‖ (the hypernetwork's predicted term; equal to
‖θ‖ when θ₀ = 0), ``theta_var`` the variance of θ's entries, ``logit_std`` the std of the primary
network's logits on a fixed batch of clean images, and ``grad_norm`` ‖∂L/∂ω‖ of the task loss
(with the fixed validation noise) over all hypernetwork parameters (θ₀ included).

Every run trains several seeds side by side (``module.HypernetMIP(seeds=...)``);
``expand_seeds`` turns the run table into one row per (run, seed), labelled by the run's
effective config (``variant_label``: ``default``, ``default_scaled``, ``default_oneblock`` ...),
which it derives from the figure config and the run's swept values, never from sweep position.

Claim estimates (each returns a ``replicate.claims.Estimate`` over its independent units):
``steps_ratio`` (per-seed ratios default ÷ variant, geometric mean with a t interval on the logs),
``final_gain`` (t over paired seed differences of the final loss), ``cell_fraction`` (Wilson
interval over ablation cells, each cell judged on its seed means with a tie tolerance by
``cell_outcomes``), ``gain_over_seeds`` (t over seeds of the mean gain across cells) and
``slope_over_seeds`` (t interval over init seeds of a per-seed log-log slope).
"""

from __future__ import annotations

import functools
import json
import math
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


def variant_label(effective: Mapping[str, Any]) -> str:
    """A run's variant, suffixed by its hypernetwork init unless it is hyperlight's default:
    ``default``, ``mip``, ``default_scaled``, ``encoding_scaled``, ``default_oneblock`` ..."""
    init = effective["hyper"]["init"]
    return effective["variant"] + ("" if init == "hyperlight" else f"_{init}")


SWEPT_KEYS = ("module.variant", "module.setting")


def figure_module(cfg) -> dict[str, Any]:
    """The figure's run module config (resolved), after checking that its sweep varies only the
    keys a row of the run table carries back (``module.variant``, ``module.setting``)."""
    from omegaconf import OmegaConf

    from replicate import config as C

    other = sorted({key for point in C.points(cfg) for key in point} - set(SWEPT_KEYS))
    if other:
        raise ValueError(f"{cfg.figure.paper}/{cfg.figure.name}: the sweep varies {other}; the MIP measures "
                         f"read runs by {list(SWEPT_KEYS)} only")
    return OmegaConf.to_container(C.run_config(cfg, 0).run.module, resolve=True)


def run_effective(module: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """The effective module config of one run: the figure's module config with the run's swept
    ``variant`` and ``setting`` (columns of the run table) in place of the module's own."""
    from replicate.papers.hypernet_mip.module import effective_config

    swept = {k: row[k] for k in ("variant", "setting") if k in row}
    kwargs = {**{k: v for k, v in module.items() if k not in ("_target_", "seed", "seeds")}, **swept}
    return effective_config(**kwargs)


def expand_seeds(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """One row per (run, seed) of a figure's run table (``FigureContext.runs()``): the run's
    columns, with ``seed``, ``status``, ``val``, ``final_val_loss``, ``diverged_at_step`` and
    ``probes`` replaced by that seed's (``probe_metrics()["per_seed"]``), ``variant`` by
    ``variant_label`` of the run's effective config (``effective``, from the figure config and the
    run's swept values), ``regime`` its task kind, and ``n_seeds`` the seeds the run trained. A run
    that ended because every seed diverged records no probes: each of its seeds is a diverged row."""
    module = figure_module(cfg)
    rows = []
    for r in runs.to_dict("records"):
        eff = run_effective(module, r)
        probes = r.get("probes") or {}
        per_seed = probes.get("per_seed") or [
            {"seed": int(s), "status": "diverged", "diverged_at_step": r.get("diverged_at_step"), "val": [],
             "final_val_loss": float("nan")} for s in module["seeds"]]
        shared = {k: v for k, v in probes.items() if k != "per_seed"}
        for p in per_seed:
            rows.append({**r, "variant": variant_label(eff), "base_variant": eff["variant"],
                         "init": eff["hyper"]["init"], "regime": eff["task"]["kind"], "effective": eff, "seed": int(p["seed"]),
                         "status": p["status"], "val": p["val"], "final_val_loss": p["final_val_loss"],
                         "diverged_at_step": p.get("diverged_at_step"), "probes": {**shared, **p},
                         "n_seeds": len(per_seed)})
    return pd.DataFrame(rows)


def effective_setting(effective: Mapping[str, Any]) -> dict[str, Any]:
    """The ablated fields of a run's effective config as flat columns."""
    return {"optimizer": effective["optim"]["name"], "lr": effective["optim"]["lr"],
            "activation": effective["hyper"]["activation"], "input_dim": effective["task"]["input_dim"],
            "norm": effective["hyper"]["norm"], "arch": effective["primary"]["arch"],
            "task": effective["task"]["kind"], "variant": effective["variant"],
            "init": effective["hyper"]["init"]}


def base_setting(cfg) -> dict[str, Any]:
    """:func:`effective_setting` of the figure's base cell (its module config, no ``setting``)."""
    return effective_setting(run_effective(figure_module(cfg), {"setting": {}}))


def build_module(module_cfg: Mapping[str, Any], seed: int, **overrides):
    """A freshly initialised single-seed ``HypernetMIP`` from a run's module config (``_target_``
    dropped), with keyword overrides (``variant=...``, ``setting=...``), its one hypernetwork
    initialised from ``seed`` (``seeds=[seed]``; ``torch.manual_seed(seed)`` too)."""
    from replicate.papers.hypernet_mip.module import HypernetMIP

    kwargs = {k: v for k, v in dict(module_cfg).items() if k != "_target_"}
    kwargs.update(seed=seed, seeds=[seed])
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


PROBE_VARIANTS = {  # label -> overrides of the run's module config, for the probes at initialisation
    "default": {"variant": "default"},
    "default, PyTorch init": {"variant": "default", "setting": {"hyper": {"init": "torch"}}},
    "default, one-block init": {"variant": "default", "setting": {"hyper": {"init": "oneblock"}}},
    "default, scaled init": {"variant": "default", "setting": {"hyper": {"init": "scaled"}}},
    "encoding only": {"variant": "encoding"},
    "residual only": {"variant": "residual"},
    "MIP": {"variant": "mip"},
}
DIMS_VARIANTS = ("default", "MIP")


def init_probes(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The probes at initialisation of the figure's hypernetwork (``run.module`` of its first
    point), with the parameters ``figure.measure`` (``init_seeds``, ``gammas``, ``input_dims``,
    ``random_gammas``):

    ``init``  :func:`init_probe` rows of every ``PROBE_VARIANTS`` label and init seed (1000 + s)
              on the ``gammas`` grid, on the clean validation digits; columns ``variant``, ``seed``;
    ``dims``  :func:`random_gamma_norms` of ``DIMS_VARIANTS`` at ``random_gammas`` random γ per
              input dimension k and init seed (2000 + s); columns ``variant``, ``k``, ``seed``.

    Computed once per configuration (cached: the figure's notebook draws what its measures read)."""
    from omegaconf import OmegaConf

    from replicate import config as C

    run = C.run_config(cfg, 0).run
    key = json.dumps({"module": OmegaConf.to_container(run.module, resolve=True),
                      "data": OmegaConf.to_container(run.data, resolve=True),
                      "measure": OmegaConf.to_container(cfg.figure.measure, resolve=True)}, sort_keys=True)
    init, dims = _init_probes(key)
    return init.copy(), dims.copy()


@functools.lru_cache(maxsize=4)
def _init_probes(key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from replicate.papers.hypernet_mip.data import SeedStackedDigits

    spec = json.loads(key)
    module_cfg, measure = spec["module"], spec["measure"]
    data = SeedStackedDigits(**{k: v for k, v in spec["data"].items() if k != "_target_"})
    data.setup()
    x, y = next(iter(data.val_dataloader()))
    rows = [{"variant": label, "seed": s, **r}
            for label, overrides in PROBE_VARIANTS.items() for s in range(measure["init_seeds"])
            for r in init_probe(build_module(module_cfg, seed=1000 + s, **overrides), measure["gammas"], x, y)]
    generator = torch.Generator().manual_seed(0)
    dims = [random_gamma_norms(build_module(module_cfg, seed=2000 + s, **{**PROBE_VARIANTS[label],
                                                                          "setting": {"task": {"input_dim": k}}}),
                               measure["random_gammas"], generator).assign(variant=label, k=k, seed=s)
            for label in DIMS_VARIANTS for k in measure["input_dims"] for s in range(measure["init_seeds"])]
    return pd.DataFrame(rows), pd.concat(dims, ignore_index=True)


SLOPE_QUANTITIES = ("theta_norm", "delta_norm", "theta_var", "logit_std", "grad_norm")


def pooled_slopes(init: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope against γ of every ``SLOPE_QUANTITIES`` column of the ``init`` probe table,
    per variant (rows, in table order), fitted to all init seeds' points together."""
    return pd.DataFrame({q: {v: loglog_slope(g["gamma"], g[q]) for v, g in init.groupby("variant", sort=False)}
                         for q in SLOPE_QUANTITIES})


def trained_norms(per_seed: pd.DataFrame) -> pd.DataFrame:
    """The trained runs' probes at the end of training (rows of :func:`expand_seeds`, finished
    seeds): one row per (variant, seed, γ) with ``theta_norm``, ``delta_norm`` and ``val_loss``."""
    return pd.DataFrame([{"variant": r.variant, "seed": r.seed, "gamma": g, "theta_norm": t, "delta_norm": d,
                          "val_loss": v}
                         for r in per_seed.itertuples() if r.status == "finished"
                         for g, t, d, v in zip(r.probes["gammas"], r.probes["theta_norm"], r.probes["delta_norm"],
                                               r.probes["val_loss_by_gamma"])],
                        columns=["variant", "seed", "gamma", "theta_norm", "delta_norm", "val_loss"])


# --------------------------------------------------------------------------- claim estimates


def seed_table(per_seed: pd.DataFrame, threshold: Mapping[str, float] | float, max_steps: int) -> pd.DataFrame:
    """One row per run and seed (rows of :func:`expand_seeds`): regime, variant, seed, ``steps`` to
    the threshold (NaN = never), ``steps_censored`` (never -> ``max_steps``, so a ratio involving it
    is a lower bound), ``reached`` and ``final`` (the final validation loss; +inf when diverged).

    ``threshold`` is one number or ``{regime: number}`` (``regime``: the run's task kind)."""
    rows = []
    for r in per_seed.itertuples():
        thr = threshold[r.regime] if isinstance(threshold, Mapping) else threshold
        ok = r.status == "finished" and math.isfinite(float(r.final_val_loss))
        steps = steps_to_threshold(r.val, thr) if ok else float("nan")
        rows.append({"regime": r.regime, "variant": r.variant, "seed": int(r.seed), "steps": steps,
                     "steps_censored": max_steps if math.isnan(steps) else steps,
                     "reached": not math.isnan(steps),
                     "final": float(r.final_val_loss) if ok else float("inf")})
    return pd.DataFrame(rows, columns=["regime", "variant", "seed", "steps", "steps_censored", "reached", "final"])


def _paired(table: pd.DataFrame, regime: str, a: str, b: str, col: str) -> pd.DataFrame:
    """Seeds present for both variants ``a`` and ``b`` in ``regime``: columns a, b (values of col)."""
    d = table[table.regime == regime].pivot_table(index="seed", columns="variant", values=col,
                                                   aggfunc="first")
    if a not in d or b not in d:
        return pd.DataFrame(columns=[a, b])
    return d[[a, b]].dropna()


def steps_ratio(table: pd.DataFrame, regime: str, variant: str = "mip",
                baseline: str = "default") -> claims.Estimate:
    """The baseline's censored steps-to-threshold ÷ the variant's on each seed (a seed fixes the
    init stream and the data of both), their geometric mean over seeds with a t interval on the
    logs (``claims.ratio_interval``)."""
    d = _paired(table, regime, baseline, variant, "steps_censored")
    return claims.ratio_interval(d[baseline].to_numpy(float), d[variant].to_numpy(float), unit="seeds")


def final_gain(table: pd.DataFrame, regime: str, variant: str = "mip",
               baseline: str = "default") -> claims.Estimate:
    """Mean over seeds of baseline − variant final validation loss (nats; > 0: variant better),
    with a t interval over the paired seed differences. A diverged run's +inf makes it infinite."""
    d = _paired(table, regime, baseline, variant, "final")
    return claims.paired_difference(d[baseline].to_numpy(float), d[variant].to_numpy(float), unit="seeds")


def reached_fraction(table: pd.DataFrame, regime: str, variant: str) -> float:
    """Share of a variant's seeds that reached the threshold (a precondition of a steps ratio)."""
    d = table[(table.regime == regime) & (table.variant == variant)]
    return float(d.reached.mean()) if len(d) else float("nan")


CELL_KEYS = ("optimizer", "lr", "activation", "input_dim", "norm", "arch")


def cell_outcomes(table: pd.DataFrame, tie: float, max_steps: int,
                  keys: Iterable[str] = CELL_KEYS) -> pd.DataFrame:
    """One row per ablation cell from a ``seed_table``-like frame with the cell's ``keys`` as
    columns (one row per run and seed: variant ``default`` | ``mip``, ``final`` (+inf when
    diverged), ``steps`` (NaN = never)). Per cell and variant: the mean final loss and the mean
    censored steps over seeds (never = ``max_steps``), seeds that reached the threshold; then

    ``gain``        mean default − mean MIP final loss (+inf when only the default diverged)
    ``mip_better``  gain > ``tie`` (a tie, |gain| <= tie, is not a win; a diverged MIP never wins)
    ``mip_worse``   gain < −``tie``
    ``mip_first``   MIP's mean steps <= the default's, where either reached the threshold (else NaN)
    ``speedup``     default ÷ MIP mean steps
    """
    keys = list(keys)
    d = table.assign(steps_censored=table.steps.fillna(max_steps))
    agg = d.groupby(keys + ["variant"]).agg(loss=("final", "mean"), steps=("steps_censored", "mean"),
                                            reached=("steps", lambda s: int(s.notna().sum())),
                                            seeds=("seed", "nunique")).unstack("variant")
    cells = pd.DataFrame({f"{q}_{v}": agg[(q, v)] for q in ("loss", "steps", "reached", "seeds")
                          for v in ("default", "mip")}).reset_index()
    with np.errstate(invalid="ignore"):
        gain = cells.loss_default - cells.loss_mip
    gain = gain.where(~(np.isinf(cells.loss_default) & np.isinf(cells.loss_mip)), np.nan)
    cells["gain"] = gain
    cells["mip_better"] = np.isfinite(cells.loss_mip) & (gain > tie)
    cells["mip_worse"] = np.isfinite(cells.loss_default) & ((gain < -tie) | np.isinf(cells.loss_mip))
    either = (cells.reached_default + cells.reached_mip) > 0
    cells["mip_first"] = np.where(either, cells.steps_mip <= cells.steps_default, np.nan)
    cells["speedup"] = cells.steps_default / cells.steps_mip
    return cells


def gain_over_seeds(table: pd.DataFrame, keys: Iterable[str] = CELL_KEYS) -> claims.Estimate:
    """Per seed, the mean over ablation cells of default − MIP final loss (cells where either
    diverged are left out), with a t interval over the seeds."""
    keys = list(keys)
    d = table.pivot_table(index=keys + ["seed"], columns="variant", values="final", aggfunc="first")
    diff = (d["default"] - d["mip"]).replace([np.inf, -np.inf], np.nan).dropna()
    per_seed = diff.groupby(level="seed").mean()
    return claims.mean_interval(per_seed.to_numpy(), unit="seeds")


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




def ablation_table(per_seed: pd.DataFrame, threshold: float, max_steps: int) -> pd.DataFrame:
    """``seed_table`` of an ablation figure's runs (rows of :func:`expand_seeds`) with each cell's
    effective settings (``CELL_KEYS``) as columns: the input of ``cell_outcomes``."""
    table = seed_table(per_seed, threshold, max_steps)
    settings = pd.DataFrame([effective_setting(e) for e in per_seed["effective"]])
    return pd.concat([table.reset_index(drop=True), settings[list(CELL_KEYS)]], axis=1)
