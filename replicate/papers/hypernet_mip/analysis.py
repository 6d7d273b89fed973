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
``curve_table`` summarises each seed's validation curve (area, last-quarter final loss, plateau
drop, steps to each loss threshold); ``lr_selection`` picks a variant's learning rate on the
selection seeds; ``speedup_curve`` (per-threshold ratios of steps, baseline ÷ variant, and their
per-seed geometric mean over the thresholds, t intervals on the logs over seeds); ``paired_gain``
(t over paired seed differences); for ablation cells ``cell_outcomes`` (per cell paired t
intervals of the gain and of the speed-up, also at a simultaneous level), ``weakest_cell`` (the
cell a universal claim is judged on), ``tuned_lr_gain`` (each variant at its own best lr),
``gain_over_seeds`` and ``cell_fraction``; and ``slope_over_seeds`` (t interval over init seeds
of a per-seed log-log slope).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Iterable, Mapping, Sequence

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


SWEPT_KEYS = ("module.variant", "module.setting", "module.seeds")


def figure_module(cfg) -> dict[str, Any]:
    """The figure's run module config (resolved), after checking that its sweep varies only the
    keys a row of the run table carries back (``module.variant``, ``module.setting``, and
    ``module.seeds``, which each seed's probes record)."""
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


def curve_stats(val: Iterable[Mapping[str, float]], max_steps: int, final_frac: float = 0.25) -> dict[str, float]:
    """Summaries of one validation curve (``[{"step", "val_loss"}]``) over a run of ``max_steps``
    steps (T):

    ``auc``           the area under the curve divided by its span (trapezoids from the first to
                      the last validation): the mean loss over training, the lr-selection score;
    ``final``         the mean loss of the validations in the last ``final_frac`` of training,
                      steps in ((1 − f)·T, T] (a window, so one noisy validation does not decide);
    ``plateau_drop``  the mean loss over the window before it, ((1 − 2f)·T, (1 − f)·T], minus
                      ``final``: how much the curve still falls at the end (≈ 0 on a plateau).

    A non-finite loss anywhere makes all three +inf (a diverged run)."""
    pts = [(float(p["step"]), float(p["val_loss"])) for p in val]
    if not pts or not all(math.isfinite(v) for _, v in pts):
        return {"auc": math.inf, "final": math.inf, "plateau_drop": math.nan}
    steps, loss = np.array([s for s, _ in pts]), np.array([v for _, v in pts])
    span = steps[-1] - steps[0]
    auc = float(np.sum((loss[1:] + loss[:-1]) / 2 * np.diff(steps)) / span) if span > 0 else float(loss.mean())
    last = steps > (1 - final_frac) * max_steps
    before = (steps > (1 - 2 * final_frac) * max_steps) & ~last
    final = float(loss[last].mean()) if last.any() else float(loss[-1])
    drop = float(loss[before].mean()) - final if before.any() else math.nan
    return {"auc": auc, "final": final, "plateau_drop": drop}


def curve_table(per_seed: pd.DataFrame, thresholds: Mapping[str, Sequence[float]] | Sequence[float],
                max_steps: int, final_frac: float = 0.25) -> pd.DataFrame:
    """One row per run and seed (rows of :func:`expand_seeds`): ``regime``, ``variant``, ``lr``,
    ``seed``, ``status``, the :func:`curve_stats` (``auc``, ``final``, ``plateau_drop``), and at
    each loss threshold of the run's regime (``thresholds``: one list, or ``{regime: list}``,
    highest first) ``steps`` (a tuple: :func:`steps_to_threshold`, NaN = never) and
    ``steps_censored`` (never -> ``max_steps``, so a ratio involving it is a bound). ``reached``:
    every threshold reached. A diverged seed has ``final`` = +inf and no crossing."""
    rows = []
    for r in per_seed.itertuples():
        thr = list(thresholds[r.regime] if isinstance(thresholds, Mapping) else thresholds)
        ok = r.status == "finished" and math.isfinite(float(r.final_val_loss))
        stats = curve_stats(r.val, max_steps, final_frac) if ok else {"auc": math.inf, "final": math.inf,
                                                                       "plateau_drop": math.nan}
        steps = tuple(steps_to_threshold(r.val, t) if ok else math.nan for t in thr)
        rows.append({"regime": r.regime, "variant": r.variant, "lr": float(r.effective["optim"]["lr"]),
                     "seed": int(r.seed), "status": r.status if ok else "diverged", **stats,
                     "thresholds": tuple(thr), "steps": steps,
                     "steps_censored": tuple(max_steps if math.isnan(s) else s for s in steps),
                     "reached": not any(math.isnan(s) for s in steps)})
    return pd.DataFrame(rows, columns=["regime", "variant", "lr", "seed", "status", "auc", "final", "plateau_drop",
                                       "thresholds", "steps", "steps_censored", "reached"])


def _same_lr(a, b) -> bool:
    return bool(np.isclose(float(a), float(b), rtol=1e-6, atol=0.0))


def _at_lr(d: pd.DataFrame, lr: float) -> pd.DataFrame:
    return d[np.array([_same_lr(v, lr) for v in d.lr], dtype=bool)]


def lr_selection(table: pd.DataFrame, regime: str, variant: str, claim_lr: float,
                 selection_seeds: Iterable[int]) -> dict[str, Any]:
    """The learning-rate choice of one variant on validation, from the runs of ``table``
    (:func:`curve_table`) on the ``selection_seeds`` (seeds that no claim reads): per lr the mean
    over those seeds of ``auc`` (the mean validation loss over training; a diverged seed makes it
    +inf); ``best_lr`` the lowest; ``interior`` 1.0 when it is neither the smallest nor the largest
    lr of the grid (the grid brackets the optimum; NaN with fewer than three lrs); ``rel_gap`` the
    claim lr's score over the best minus 1 (0 when the claim lr is the best; NaN when absent)."""
    sel = set(int(s) for s in selection_seeds)
    d = table[(table.regime == regime) & (table.variant == variant) & table.seed.isin(sel)]
    scores = d.groupby("lr")["auc"].mean().sort_index()
    if scores.empty or not np.isfinite(scores.min()):
        return {"best_lr": math.nan, "interior": math.nan, "rel_gap": math.nan, "scores": scores.to_dict()}
    best = float(scores.idxmin())
    lrs = list(scores.index)
    interior = math.nan if len(lrs) < 3 else float(lrs[0] < best < lrs[-1])
    claim = [s for lr, s in scores.items() if _same_lr(lr, claim_lr)]
    rel_gap = float(claim[0] / scores.min() - 1) if claim else math.nan
    return {"best_lr": best, "interior": interior, "rel_gap": rel_gap,
            "scores": {float(k): float(v) for k, v in scores.items()}}


def evaluation_rows(table: pd.DataFrame, regime: str, variant: str, lr: float,
                    selection_seeds: Iterable[int]) -> pd.DataFrame:
    """The rows a claim reads: ``variant`` in ``regime`` at ``lr``, on the seeds that did not
    choose the lr (every seed but ``selection_seeds``), one per seed."""
    sel = set(int(s) for s in selection_seeds)
    d = table[(table.regime == regime) & (table.variant == variant) & ~table.seed.isin(sel)]
    return _at_lr(d, lr).drop_duplicates("seed").set_index("seed").sort_index()


def _pair(base: pd.DataFrame, var: pd.DataFrame) -> list[int]:
    return sorted(set(base.index) & set(var.index))


def speedup_curve(base: pd.DataFrame, var: pd.DataFrame) -> tuple[claims.Estimate, list[claims.Estimate]]:
    """The speed-up of ``var`` over ``base`` (rows of :func:`evaluation_rows`, paired by seed: a
    seed fixes the init stream and the data of both) along the loss thresholds: at each threshold
    the per-seed ratio of censored steps, baseline ÷ variant, as a geometric mean with a t interval
    on the logs (``claims.ratio_interval``); and the whole curve summarised per seed by the
    geometric mean of its ratios over the thresholds, then a t interval on the logs over seeds
    (``claims.log_mean_interval``)."""
    seeds = _pair(base, var)
    if not seeds:
        return claims.log_mean_interval([], unit="seeds"), []
    b = np.array([base.loc[s, "steps_censored"] for s in seeds], float)
    v = np.array([var.loc[s, "steps_censored"] for s in seeds], float)
    per_threshold = [claims.ratio_interval(b[:, k], v[:, k], unit="seeds") for k in range(b.shape[1])]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed = np.exp(np.log(b / v).mean(axis=1))
    return claims.log_mean_interval(per_seed, unit="seeds (each the geometric mean of its ratios over the thresholds)"), \
        per_threshold


def paired_gain(base: pd.DataFrame, var: pd.DataFrame, col: str = "final") -> claims.Estimate:
    """Mean over paired seeds of ``base`` − ``var`` (``col``, nats; > 0: the variant is lower), with
    a t interval over the paired differences. A diverged seed's +inf leaves no interval."""
    seeds = _pair(base, var)
    return claims.paired_difference([base.loc[s, col] for s in seeds], [var.loc[s, col] for s in seeds], unit="seeds")


# --------------------------------------------------------------------------- ablation cells

CELL_KEYS = ("optimizer", "lr", "activation", "input_dim", "norm", "arch")


def ablation_table(per_seed: pd.DataFrame, threshold: float, max_steps: int, final_frac: float,
                   diverged_loss: float) -> pd.DataFrame:
    """:func:`curve_table` of an ablation figure's runs at one loss ``threshold`` with each cell's
    effective settings (``CELL_KEYS``) as columns, ``diverged`` (bool) and ``final`` of a
    diverged seed set to ``diverged_loss`` (the loss of a uniform prediction, ln 10 for ten classes:
    a network that diverged is counted as no better than chance, so cell statistics stay finite)."""
    table = curve_table(per_seed, [threshold], max_steps, final_frac)
    settings = pd.DataFrame([effective_setting(e) for e in per_seed["effective"]])
    table = pd.concat([table.drop(columns=["lr"]).reset_index(drop=True), settings[list(CELL_KEYS)]], axis=1)
    table["diverged"] = ~np.isfinite(table["final"])
    table.loc[table.diverged, "final"] = float(diverged_loss)
    table["steps1"] = [s[0] for s in table.steps]
    return table


def cell_outcomes(table: pd.DataFrame, max_steps: int, keys: Iterable[str] = CELL_KEYS,
                  level: float = 0.95) -> pd.DataFrame:
    """One row per ablation cell from :func:`ablation_table` rows (variants ``default`` and
    ``mip``, paired by seed within the cell). Per cell: mean final loss of each variant
    (``loss_default``, ``loss_mip``), the paired gain default − MIP (``gain`` with its 95% t interval
    ``gain_lo``, ``gain_hi``, and the interval at ``level`` in ``sim_lo``, ``sim_hi``: pass a
    Bonferroni level 1 − α/cells for intervals that hold for every cell at once), ``status``
    (``MIP better``: the 95% interval above 0; ``MIP worse``: below 0, a consistent reversal;
    ``unresolved``), seeds that reached the threshold and diverged per variant, and the speed-up
    (``speedup``, ``speed_lo``, ``speed_hi``: steps to the threshold default ÷ MIP per seed,
    censored at the budget, seeds where neither reached it left out; NaN when no seed is left;
    ``speed_sim_lo``, ``speed_sim_hi`` at ``level``). ``gain_est``, ``sim_est``, ``speed_est`` and
    ``speed_sim_est`` hold the Estimates."""
    keys = list(keys)
    out = []
    for cell, d in table.groupby(keys, sort=True):
        pv = d.pivot_table(index="seed", columns="variant", values="final", aggfunc="first")
        st = d.pivot_table(index="seed", columns="variant", values="steps1", aggfunc="first")
        row = dict(zip(keys, cell if isinstance(cell, tuple) else (cell,)))
        paired = pv[["default", "mip"]].dropna() if {"default", "mip"} <= set(pv) else pd.DataFrame(
            columns=["default", "mip"])
        gain = claims.paired_difference(paired["default"], paired["mip"], unit="seeds")
        sim = claims.paired_difference(paired["default"], paired["mip"], level=level, unit="seeds")
        steps = st.reindex(index=paired.index, columns=["default", "mip"])
        either = steps.notna().any(axis=1)
        cens = steps[either].fillna(float(max_steps))
        speed = claims.ratio_interval(cens["default"], cens["mip"], unit="seeds")
        speed_sim = claims.ratio_interval(cens["default"], cens["mip"], level=level, unit="seeds")
        lo, hi = gain.interval or (math.nan, math.nan)
        row.update({
            "loss_default": float(paired["default"].mean()), "loss_mip": float(paired["mip"].mean()),
            "gain": gain.value, "gain_lo": lo, "gain_hi": hi,
            "sim_lo": (sim.interval or (math.nan, math.nan))[0], "sim_hi": (sim.interval or (math.nan, math.nan))[1],
            "status": "MIP better" if lo > 0 else ("MIP worse" if hi < 0 else "unresolved"),
            "n_seeds": int(len(paired)),
            "reached_default": int(steps["default"].notna().sum()), "reached_mip": int(steps["mip"].notna().sum()),
            "diverged_default": int(d[(d.variant == "default")].diverged.sum()),
            "diverged_mip": int(d[(d.variant == "mip")].diverged.sum()),
            "speedup": speed.value, "speed_lo": (speed.interval or (math.nan, math.nan))[0],
            "speed_hi": (speed.interval or (math.nan, math.nan))[1],
            "speed_sim_lo": (speed_sim.interval or (math.nan, math.nan))[0],
            "speed_sim_hi": (speed_sim.interval or (math.nan, math.nan))[1],
            "gain_est": gain, "sim_est": sim, "speed_est": speed, "speed_sim_est": speed_sim})
        out.append(row)
    return pd.DataFrame(out)


def weakest_cell(estimates: Sequence[claims.Estimate], bar: float) -> int | None:
    """The cell a universal claim ("in every cell the effect exceeds ``bar``") is judged on: among
    cells whose interval lies wholly below ``bar`` (consistent reversals), the one with the lowest
    upper end; if there is none, the cell with the lowest lower end. Its interval then decides the
    universal claim: above the replicated bar only if every cell's is, wholly below the bar if any
    cell's is. Cells without an interval are skipped; None when no cell has one."""
    with_iv = [(i, e.interval) for i, e in enumerate(estimates) if e.interval is not None]
    if not with_iv:
        return None
    reversed_ = [(hi, i) for i, (lo, hi) in with_iv if hi < bar]
    if reversed_:
        return min(reversed_)[1]
    return min((lo, i) for i, (lo, hi) in with_iv)[1]


def tuned_lr_gain(table: pd.DataFrame, optimizer: str, base: Mapping[str, Any],
                  keys: Iterable[str] = CELL_KEYS) -> dict[str, Any]:
    """Default vs MIP, each at its own best learning rate for ``optimizer``, from the cells of the
    optimiser × learning-rate block (every other key of ``keys`` at its ``base`` value): per variant
    the lr with the lowest seed-mean final loss (``best_lr_<v>``; ``interior_<v>`` 1.0 when it is
    not at an end of the grid, NaN with fewer than three lrs), and ``gain`` the paired difference
    over seeds of the default's final loss at its best lr minus MIP's at its own (t interval). The
    lr is chosen on the same seeds' validation loss that the gain reads (a mild optimism for both
    variants alike)."""
    others = [k for k in keys if k not in ("optimizer", "lr")]
    d = table[(table.optimizer == optimizer)]
    for k in others:
        d = d[d[k] == base[k]]
    out: dict[str, Any] = {}
    finals = {}
    for v in ("default", "mip"):
        dv = d[d.variant == v]
        means = dv.groupby("lr")["final"].mean().sort_index()
        if means.empty:
            out[f"best_lr_{v}"], out[f"interior_{v}"] = math.nan, math.nan
            continue
        best = float(means.idxmin())
        lrs = list(means.index)
        out[f"best_lr_{v}"] = best
        out[f"interior_{v}"] = math.nan if len(lrs) < 3 else float(lrs[0] < best < lrs[-1])
        finals[v] = _at_lr(dv, best).drop_duplicates("seed").set_index("seed")["final"]
    if len(finals) == 2:
        seeds = sorted(set(finals["default"].index) & set(finals["mip"].index))
        out["gain"] = claims.paired_difference(finals["default"][seeds], finals["mip"][seeds], unit="seeds")
    else:
        out["gain"] = claims.paired_difference([], [], unit="seeds")
    return out


def gain_over_seeds(table: pd.DataFrame, keys: Iterable[str] = CELL_KEYS) -> claims.Estimate:
    """Per seed, the mean over ablation cells of default − MIP final loss, with a t interval over
    the seeds (every cell counts equally; a diverged seed's loss is ``ablation_table``'s cap)."""
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
