"""The numbers behind the claims of the Hyper-Connections figures, one function per figure.

Every number a claim reads is computed here, never in a notebook cell, so that each is
unit-tested on hand-built runs (tests/test_hyper_connections.py). A figure's notebook reports
what its function returns, called with ``ctx.runs()`` and the composed config (``measures.<figure>
(runs, ctx.cfg, ...)``): :func:`stability`, :func:`loss`, :func:`exactness`, :func:`identity`,
:func:`gate_and_streams`;
:func:`run_table` (one row per run) is shared with the plots.

Units: the training seeds (each seed: its own initialisation and batches; the variants of one
seed share both, so differences between variants are paired by seed); timings are over timing
rounds; random-logit draws over draws. A notebook-only module: no training code imports it.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from replicate import claims
from replicate.papers.hyper_connections import probes
from replicate.papers.hyper_connections.connections import sinkhorn_knopp

HYPER = ("hc", "mhc", "mhc_lite", "kromhc", "shc")  # every variant with n streams
EXACT = ("mhc_lite", "kromhc")  # doubly stochastic by construction
POLYTOPE = ("mhc", "mhc_lite", "kromhc")  # H_res in the Birkhoff polytope
LABEL = {"residual": "residual", "hc": "HC", "mhc": "mHC", "mhc_lite": "mHC-lite", "kromhc": "KromHC",
         "shc": "sHC"}


def run_table(runs: pd.DataFrame, final_vals: int) -> pd.DataFrame:
    """One row per training run (``runs`` is ``FigureContext.runs()``).

    Columns: ``variant``, ``gate`` (the attention gate: ``none`` unless swept), ``seed``,
    ``status``, ``final_loss`` (mean of the last ``final_vals``
    validation losses), ``seconds``; from the probes at the end of training: ``gain`` (the
    composite mapping's Amax gain through all layers, the larger of forward and backward),
    ``composite_ds_error``, ``composite_spectral_norm``, ``identity_distance`` and
    ``negative_share`` (means over the layers' own matrices), ``mixing_params``; ``history``
    (the gains over training), ``sinkhorn`` (mHC's sweep, else None), ``layers`` (probes.py's
    per-layer table, for the plots) and ``val`` (the validation curve: step, val_loss).
    """
    rows = []
    for row in runs.itertuples():
        p = row.probes
        layers = p["layers"]
        rows.append({
            "variant": p["variant"], "gate": getattr(row, "attention_gate", "none"), "seed": row.seed,
            "status": row.status,
            "final_loss": float(np.mean([v["val_loss"] for v in row.val[-final_vals:]])),
            "seconds": float(row.wall_seconds),
            "gain": max(layers["composite_gain_forward"][-1], layers["composite_gain_backward"][-1]),
            "composite_ds_error": layers["composite_ds_error"][-1],
            "composite_spectral_norm": layers["composite_spectral_norm"][-1],
            "identity_distance": float(np.mean(layers["layer_identity_distance"])),
            "negative_share": float(np.mean(layers["layer_negative_share"])),
            "mixing_params": p["parameters"]["residual_mixing"],
            "history": p["history"], "sinkhorn": p.get("sinkhorn"), "layers": layers, "val": row.val,
        })
    return pd.DataFrame(rows)


def by_layer(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Long table for plots: one row per (run, layer) with ``variant`` (its label), ``seed``,
    ``layer`` (1-based) and the per-layer probes ``keys`` (names of probes.layer_table)."""
    rows = [{"variant": LABEL[r.variant], "seed": r.seed, "layer": l + 1, **{k: r.layers[k][l] for k in keys}}
            for r in table.itertuples() for l in range(len(r.layers[keys[0]]))]
    return pd.DataFrame(rows)


def _finished(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """The run table of the runs that did not diverge (``measure.final_vals``, default 2)."""
    measure = cfg.figure.get("measure") or {}
    table = run_table(runs, int(measure.get("final_vals", 2)))
    return table[table["status"] != "diverged"]


def _by_seed(table: pd.DataFrame, variant: str, column: str) -> pd.Series:
    return table[table["variant"] == variant].set_index("seed")[column].sort_index()


def _paired(table: pd.DataFrame, a: str, b: str, column: str) -> claims.Estimate:
    """Mean over seeds of column(a) - column(b), the seeds both variants finished."""
    left, right = _by_seed(table, a, column), _by_seed(table, b, column)
    seeds = left.index.intersection(right.index)
    return claims.paired_difference(left[seeds], right[seeds])


def _history_growth(history: list[dict]) -> float:
    """Composite gain at the last validation over the gain at the first (max of fwd, bwd)."""
    gain = [max(h["gain_forward"], h["gain_backward"]) for h in history]
    return gain[-1] / gain[0] if len(gain) >= 2 else float("nan")


# --------------------------------------------------------------------------- figures
def stability(runs: pd.DataFrame, cfg) -> dict:
    """Figure ``stability`` (mHC Sec. 3.1, Fig. 3; Sec. 4.1): the composite mapping's gain.

    ``gain_<variant>``: mean over seeds of the gain through all layers at the end of training;
    ``gain_growth_hc``: HC's gain at the last validation over its gain at the first, per seed;
    ``exact_gain_error``: the largest |gain - 1| over every mHC-lite and KromHC run (exact:
    no interval, an identity); ``shc_spectral_norm``: the largest spectral norm of sHC's composite
    mapping over its runs (<= 1 by construction); ``runs_finished``.
    """
    done = _finished(runs, cfg)
    out = {f"gain_{v}": claims.mean_interval(_by_seed(done, v, "gain")) for v in HYPER}
    out["gain_growth_hc"] = claims.mean_interval(done[done["variant"] == "hc"]["history"].map(_history_growth))
    exact = done[done["variant"].isin(EXACT)]
    out["exact_gain_error"] = claims.exact(float((exact["gain"] - 1).abs().max()),
                                           "largest over every mHC-lite and KromHC run")
    shc = done[done["variant"] == "shc"]["composite_spectral_norm"]
    out["shc_spectral_norm"] = claims.exact(float(shc.max()), "largest over every sHC run")
    out["runs_finished"] = int(len(done))
    return out


def loss_at_step(val: list[dict], step: float) -> float:
    """The validation loss at ``step``, linearly interpolated between validations (the first or
    last validation's loss outside their range)."""
    return float(np.interp(step, [v["step"] for v in val], [v["val_loss"] for v in val]))


def equal_time_gains(table: pd.DataFrame, step_seconds: pd.DataFrame, variant: str) -> pd.Series:
    """Per seed: the residual baseline's final validation loss minus ``variant``'s loss at the step
    it reaches in the baseline's training time (final step x baseline step time / its step time,
    mean step times of ``step_seconds``)."""
    speed = step_seconds["residual"].mean() / step_seconds[variant].mean()
    base = table[table["variant"] == "residual"].set_index("seed")
    other = table[table["variant"] == variant].set_index("seed")
    seeds = base.index.intersection(other.index)
    final_step = {s: base.loc[s, "val"][-1]["step"] for s in seeds}
    return pd.Series({s: base.loc[s, "final_loss"] - loss_at_step(other.loc[s, "val"], final_step[s] * speed)
                      for s in seeds}, dtype=float).sort_index()


def loss(runs: pd.DataFrame, cfg, step_seconds: pd.DataFrame | None = None) -> dict:
    """Figure ``loss``: validation loss at equal steps, step time, parameter counts.

    ``loss_gain_<variant>``: final loss of the residual baseline minus the variant's (positive:
    the variant is better), paired over seeds; ``loss_gap_<variant>_vs_mhc``: mHC's final loss
    minus the variant's (positive: better than mHC); ``speedup_<variant>_vs_mhc``: mHC's mean
    step time over the variant's (``step_seconds``: one row per timing round, one column per
    variant, from :func:`step_times`), an interval over paired rounds (``claims.ratio_of_means``);
    ``mixing_params_kromhc_over_mhc_lite``: KromHC's count of residual-mixing parameters over
    mHC-lite's (exact); ``loss_gain_equal_time_<variant>``: the gain at equal training time
    (:func:`equal_time_gains`), a t interval over seeds (the step-time ratio taken as fixed).
    Without ``step_seconds`` (the seeds checkpoint, which measures the pilot's runs only) the
    timing measurements are left out.
    """
    done = _finished(runs, cfg)
    out = {f"loss_gain_{v}": _paired(done, "residual", v, "final_loss") for v in HYPER}
    for v in ("mhc_lite", "kromhc", "shc"):
        out[f"loss_gap_{v}_vs_mhc"] = _paired(done, "mhc", v, "final_loss")
    if step_seconds is None:
        return out
    for v in HYPER:
        out[f"loss_gain_equal_time_{v}"] = claims.mean_interval(equal_time_gains(done, step_seconds, v))
    for v in ("mhc_lite", "kromhc", "shc"):
        out[f"speedup_{v}_vs_mhc"] = claims.ratio_of_means(step_seconds["mhc"], step_seconds[v], unit="timing rounds")
    params = done.groupby("variant")["mixing_params"].first()
    out["mixing_params_kromhc_over_mhc_lite"] = claims.exact(
        params["kromhc"] / params["mhc_lite"], "parameter counts of the built models")
    return out


def exactness(runs: pd.DataFrame, cfg, random_errors: np.ndarray) -> dict:
    """Figure ``exactness`` (mHC-lite claim (i)): how far from doubly stochastic each H_res is.

    ``sk_composite_error``: the doubly stochastic error of the composite of the trained mHC's
    Sinkhorn-Knopp matrices at its largest iteration count, through all layers, over seeds;
    ``sk_layer_error``: the same for the worst single layer; ``exact_composite_error``: the
    largest composite error over every mHC-lite and KromHC run (exact); ``sk_error_random_logits``:
    the composite error on random logits (``random_errors`` from :func:`sinkhorn_on_random_logits`),
    over draws.
    """
    done = _finished(runs, cfg)
    mhc = done[done["variant"] == "mhc"]
    out = {
        "sk_composite_error": claims.mean_interval([s["composite"][-1][-1] for s in mhc["sinkhorn"]]),
        "sk_layer_error": claims.mean_interval([max(s["layer"][-1]) for s in mhc["sinkhorn"]]),
        "exact_composite_error": claims.exact(
            float(done[done["variant"].isin(EXACT)]["composite_ds_error"].max()),
            "largest over every mHC-lite and KromHC run"),
        "sk_error_random_logits": claims.mean_interval(random_errors, unit="random draws"),
    }
    return out


def identity(runs: pd.DataFrame, cfg) -> dict:
    """Figure ``identity`` (sHC's identity degeneration and subtractive mixing).

    ``identity_distance_<variant>``: mean over the layers of ||H_res - I||_F, over seeds;
    ``identity_ratio_shc_over_mhc``: sHC's mean distance over mHC's, a bootstrap over paired
    seeds; ``negative_share_shc``: share of negative entries of sHC's matrices, over seeds;
    ``negative_share_polytope``: the largest share over every polytope run (exact: 0 by
    construction).
    """
    done = _finished(runs, cfg)
    out = {f"identity_distance_{v}": claims.mean_interval(_by_seed(done, v, "identity_distance"))
           for v in HYPER}
    shc, mhc = _by_seed(done, "shc", "identity_distance"), _by_seed(done, "mhc", "identity_distance")
    seeds = shc.index.intersection(mhc.index)
    out["identity_ratio_shc_over_mhc"] = claims.ratio_of_means(shc[seeds], mhc[seeds])
    out["negative_share_shc"] = claims.mean_interval(_by_seed(done, "shc", "negative_share"))
    out["negative_share_polytope"] = claims.exact(
        float(done[done["variant"].isin(POLYTOPE)]["negative_share"].max()), "largest over every polytope run")
    return out


# --------------------------------------------------------------------------- measured here
def sinkhorn_on_random_logits(n: int, layers: int, scale: float, iters: int, draws: int,
                              seed: int = 0) -> np.ndarray:
    """Composite doubly stochastic error, one per draw, of ``layers`` Sinkhorn-Knopp matrices
    (``iters`` iterations, float32 as in the model) from logits ~ N(0, scale^2)."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(draws, layers, n, n, generator=g)
    res = [sinkhorn_knopp(logits[:, k], iters) for k in range(layers)]
    final = probes.composite(res)[-1]
    rows = (final.sum(-1) - 1).abs().amax(-1)
    cols = (final.sum(-2) - 1).abs().amax(-1)
    return torch.maximum(rows, cols).double().numpy()


def timing_setup(cfg, seed: int = 0) -> tuple[dict, tuple]:
    """For :func:`step_times`: each variant's module built from its run config at ``seed`` (name
    -> module, fresh weights) and the first training batch of that run's data."""
    from hydra.utils import instantiate

    from replicate import config as C

    modules, batch = {}, None
    for point, run_cfg in zip(C.points(cfg), C.run_configs(cfg)):
        if point.get("seed") != seed:
            continue
        torch.manual_seed(seed)
        modules[point["module.connection.variant"]] = instantiate(run_cfg.run.module, _convert_="all")
        if batch is None:
            data = instantiate(run_cfg.run.data, _convert_="all")
            data.prepare_data()
            data.setup("fit")
            batch = next(iter(data.train_dataloader()))
    return modules, batch


def step_times(modules: dict, batch, steps: int, rounds: int) -> pd.DataFrame:
    """Seconds per training step (forward, backward, AdamW update) of each module in ``modules``
    (name -> LightningModule), timed in interleaved turns so that all share the machine's state:
    one row per round, one column per name, each the mean over ``steps`` steps."""
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in modules.items()}
    rows = []
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        spent = dict.fromkeys(modules, 0.0)
        for _ in range(steps):
            for name, module in modules.items():
                t0 = time.perf_counter()
                loss = module._loss(batch)
                optims[name].zero_grad(set_to_none=True)
                loss.backward()
                optims[name].step()
                spent[name] += time.perf_counter() - t0
        rows.append({k: v / steps for k, v in spent.items()})
    return pd.DataFrame(rows[1:])


def gate_and_streams(runs: pd.DataFrame, cfg) -> dict:
    """Figure ``gate_and_streams`` (the suite's own): Gated Attention's head-wise gate and mHC's
    streams in one LM, a 2 x 2 design paired by seed.

    With L(variant, gate) a seed's final validation loss: ``gate_gain_residual`` = L(residual,
    none) - L(residual, headwise); ``gate_gain_mhc`` = L(mhc, none) - L(mhc, headwise);
    ``streams_gain_gated`` = L(residual, headwise) - L(mhc, headwise); ``streams_gain_plain`` =
    L(residual, none) - L(mhc, none); ``gate_streams_interaction`` = gate_gain_residual -
    gate_gain_mhc per seed (0 when the gains add; positive when the gate gains less with the
    streams). Each a mean over the seeds whose four runs finished, with a t interval.
    """
    done = _finished(runs, cfg)
    cells = {(v, g): done[(done["variant"] == v) & (done["gate"] == g)].set_index("seed")["final_loss"]
             for v in ("residual", "mhc") for g in ("none", "headwise")}
    seeds = sorted(set.intersection(*(set(c.index) for c in cells.values())))
    res, res_g, mhc, mhc_g = (cells[k][seeds].to_numpy() for k in
                              [("residual", "none"), ("residual", "headwise"), ("mhc", "none"), ("mhc", "headwise")])
    return {
        "gate_gain_residual": claims.paired_difference(res, res_g),
        "gate_gain_mhc": claims.paired_difference(mhc, mhc_g),
        "streams_gain_gated": claims.paired_difference(res_g, mhc_g),
        "streams_gain_plain": claims.paired_difference(res, mhc),
        "gate_streams_interaction": claims.paired_difference(res - res_g, mhc - mhc_g),
        "seeds_complete": len(seeds),
    }
