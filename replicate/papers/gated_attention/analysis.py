"""The numbers behind the Gated Attention claims (Qiu et al. 2025, arXiv 2505.06708).

Notebook-only: the four figure notebooks call these functions; the training code never imports
this module. Every function takes the run table of ``FigureContext.runs()`` (one row per sweep
point: ``gate``, ``seed``, ``lr``, ``status``, ``final_val_loss``, ``probes``, ``train`` ...) or a
table derived from it, and returns either the per-unit table a claim is computed from or a
:class:`replicate.claims.Estimate` over every seed of the sweep (never one picked).

Diverged runs. A diverged run has no probes and a NaN final loss. Wherever a claim needs such a
number, the NaN propagates: the estimate is not finite and the claim is judged ``inconclusive``
("nothing finite was measured") instead of the notebook crashing. In the learning-rate figure a
failed run is a result of its own: it is counted as a failure (:func:`failure_share`,
:func:`failure_window`), and losses are compared only where both runs have one.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from replicate import claims

NAN = float("nan")


# --------------------------------------------------------------------------- shared helpers
def _probe(probes, key: str) -> float:
    """Mean over layers of ``probes[key]`` (a number or a per-layer list); NaN when absent."""
    if not isinstance(probes, dict) or probes.get(key) is None:
        return NAN
    value = probes[key]
    if isinstance(value, (list, tuple)):
        values = [v for v in value if v is not None]
        return float(np.mean(values)) if values else NAN
    return float(value)


def wide(table: pd.DataFrame, value: str, index: str = "seed", columns: str = "gate") -> pd.DataFrame:
    """``index`` x ``columns`` table of ``value``; a variant whose runs all diverged keeps its
    column of NaN (``pivot_table`` would drop it, which is how a diverged baseline used to crash
    the loss notebook with ``KeyError: 'none'``)."""
    out = table.groupby([index, columns], sort=True)[value].mean().unstack(columns)
    return out.reindex(columns=pd.unique(table[columns]))


def _column(frame: pd.DataFrame, key: str) -> pd.Series:
    return frame[key] if key in frame else pd.Series(NAN, index=frame.index, dtype=float)


# --------------------------------------------------------------------------- regime search
def regime_search(figure: str, path=None) -> pd.DataFrame:
    """The record of the regime search (``benchmarks/gated_attention_regime_search.json``) for
    ``figure`` ("sink", "lr" or "massive"): one row per setting, gate, lr and steps, with the
    per-seed results (sink: the final first-token attention per seed; lr: final validation loss,
    loss spikes; massive: max |hidden| over the median |hidden| of its layer, Sun et al. 2024)
    and whether it is the figure's chosen setting (``chosen`` in the json's ``chosen`` map)."""
    import json
    from pathlib import Path

    from replicate.config import REPO_ROOT

    path = Path(path) if path is not None else REPO_ROOT / "benchmarks" / "gated_attention_regime_search.json"
    data = json.loads(path.read_text())
    rows = []
    for r in data["records"]:
        if r["figure"] != figure:
            continue
        last = r["probes"][max(r["probes"], key=int)] if r["probes"] else {}
        top = int(np.argmax(last["max_abs_hidden"])) if last.get("max_abs_hidden") else None
        rows.append({"setting": r["setting"], "gate": r["gate"], "lr": r["lr"], "steps": r["steps"],
                     "seed": r["seed"], "status": r["status"],
                     "first_token": last.get("first_token_attention_mean", NAN),
                     "val_loss": last.get("val_loss", NAN),
                     "max_over_median": (last["max_abs_hidden"][top] / last["median_abs_hidden"][top]
                                         if top is not None and last.get("median_abs_hidden") else NAN),
                     "spikes": spikes([{"train_loss": v} for v in r["train_loss"]], 4, 0.25),
                     "cpu_seconds": r["cpu_seconds"]})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    keys = ["setting", "gate", "lr", "steps"]
    if figure == "sink":
        out = t.groupby(keys, sort=False).agg(
            seeds=("seed", "count"), first_token_per_seed=("first_token", lambda v: ", ".join(f"{x:.3f}" for x in v)),
            min_seed=("first_token", "min"), cpu_s_per_run=("cpu_seconds", "mean"))
    elif figure == "massive":
        out = t.groupby(keys, sort=False).agg(
            seeds=("seed", "count"), max_over_median=("max_over_median", lambda v: ", ".join(f"{x:.1f}" for x in v)),
            final_val_loss=("val_loss", "mean"), cpu_s_per_run=("cpu_seconds", "mean"))
    else:
        out = t.groupby(keys, sort=False).agg(
            seeds=("seed", "count"), final_val_loss=("val_loss", lambda v: ", ".join(f"{x:.3f}" for x in v)),
            spikes=("spikes", "sum"), cpu_s_per_run=("cpu_seconds", "mean"))
    chosen = data.get("chosen", {}).get(figure)
    out = out.reset_index()
    out["chosen"] = out["setting"] == chosen
    return out.round(3)


# --------------------------------------------------------------------------- attention_sink
def sink_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: first-token attention (mean over queries t >= 1 and layers, Qiu et al.
    Table 4), split by trigger / non-trigger query, BOS/other value-norm ratio, gate scores."""
    p = runs["probes"]
    return pd.DataFrame({
        "gate": runs["gate"], "seed": runs["seed"], "status": runs["status"],
        "val_loss": runs["final_val_loss"].astype(float),
        "first_token": p.map(lambda q: _probe(q, "first_token_attention_mean")),
        "first_token_non_trigger": p.map(lambda q: _probe(q, "first_token_attention_non_trigger")),
        "first_token_trigger": p.map(lambda q: _probe(q, "first_token_attention_trigger")),
        "value_norm_ratio": p.map(lambda q: _probe(q, "value_norm_ratio")),
        "gate_mean": p.map(lambda q: _probe(q, "gate_mean")),
        "gate_non_trigger": p.map(lambda q: _probe(q, "gate_mean_non_trigger")),
        "gate_trigger": p.map(lambda q: _probe(q, "gate_mean_trigger")),
        "seconds": runs["wall_seconds"] if "wall_seconds" in runs else NAN,
    }).reset_index(drop=True)


def sink_measurements(table: pd.DataFrame, threshold: float,
                      gates: Iterable[str] = ("headwise", "elementwise", "value", "input_independent"),
                      ) -> dict[str, claims.Estimate]:
    """Every sink measurement of the ``attention_sink`` figure from :func:`sink_table`.

    First-token attention is the mean attention probability on position 0 over queries t >= 1
    (Qiu et al. 2025, Table 4). ``baseline_first_token``: mean over seeds with a t interval;
    ``baseline_first_token_lower``: its lower end (NaN without an interval);
    ``baseline_first_token_min_seed``: the smallest seed; ``baseline_sink_seeds``: how many
    baseline seeds reach ``threshold`` (the preconditions "the sink is there throughout the
    interval and in every seed"); ``first_token_<g>``: mean and t interval per variant;
    ``sink_cut_<g>`` = mean(baseline) / mean(g) and ``<g>_over_headwise`` = mean(g) /
    mean(headwise), each a ratio of means over paired seeds with a delta-method t interval on
    the log (:func:`replicate.claims.ratio_of_means`).
    """
    ft = wide(table, "first_token")
    col = lambda g: _column(ft, g).to_numpy(float)  # noqa: E731
    base = col("none")
    base_est = claims.mean_interval(base)
    lower = base_est.interval[0] if base_est.interval is not None else NAN
    out: dict[str, claims.Estimate] = {
        "baseline_first_token": base_est,
        "baseline_first_token_lower": claims.exact(
            lower, f"lower end of the baseline's {base_est.method} (the sink must be there "
                   "throughout the interval)"),
        "baseline_first_token_min_seed": claims.exact(
            float(np.min(base)) if len(base) else NAN,
            f"smallest first-token attention of the baseline's {len(base)} seeds (every seed "
            "must form a sink)"),
        "baseline_sink_seeds": claims.exact(
            int((base >= threshold).sum()), f"baseline seeds (of {len(base)}) whose first-token "
                                             f"attention reaches the sink threshold {threshold:g}"),
    }
    for g in gates:
        out[f"first_token_{g}"] = claims.mean_interval(col(g))
        out[f"sink_cut_{g}"] = claims.ratio_of_means(base, col(g))
    for g in ("value", "input_independent"):
        out[f"{g}_over_headwise"] = claims.ratio_of_means(col(g), col("headwise"))
    return out


# --------------------------------------------------------------------------- lr_stability
def spikes(train: Sequence[dict], window: int, jump: float) -> int:
    """Loss spikes of one run: onsets of the smoothed training loss (rolling mean of ``window``
    logged values) rising more than ``jump`` above its running minimum; a run whose loss turned
    non-finite counts one more."""
    loss = pd.Series([p["train_loss"] for p in train], dtype=float)
    finite = loss[np.isfinite(loss)]
    smooth = finite.rolling(window).mean().dropna()
    above = smooth > smooth.cummin() + jump
    return int((above & ~above.shift(fill_value=False)).sum()) + int(len(finite) < len(loss))


def stability_table(runs: pd.DataFrame, failed_above: float, spike_window: int,
                    spike_jump: float) -> pd.DataFrame:
    """One row per run: lr, gate, seed, final loss (NaN for a diverged run), ``failed`` (diverged,
    or final validation loss not below ``failed_above``) and ``spikes`` (:func:`spikes`)."""
    t = runs[["gate", "lr", "seed", "status", "final_val_loss"]].copy().reset_index(drop=True)
    t["final_val_loss"] = t["final_val_loss"].astype(float)
    t["failed"] = (t["status"] == "diverged") | ~(t["final_val_loss"] < failed_above)
    t["spikes"] = [spikes(tr, spike_window, spike_jump) for tr in runs["train"]]
    return t


def failure_share(table: pd.DataFrame) -> pd.DataFrame:
    """lr x gate: the share of seeds whose run failed (a diverged run is a failure, never a loss)."""
    return table.pivot_table(index="lr", columns="gate", values="failed", aggfunc="mean")


def failure_window(table: pd.DataFrame) -> tuple[float, float, int]:
    """Where the runs of ``table`` go from all training to all failing, over its lr grid:
    (the largest lr at which every run trained, the smallest larger lr at which every run failed,
    how many grid lrs lie strictly between them). NaN ends and 0 lrs when the grid does not reach
    one of them; the window is what the stability claims compare inside (Qiu et al. Table 2: the
    baseline fails at an lr where the gated model still trains)."""
    share = table.groupby("lr")["failed"].mean().sort_index()
    trains = share.index[share == 0]
    if not len(trains):
        return NAN, NAN, 0
    low = float(trains.max())
    fails = share.index[(share == 1) & (share.index > low)]
    if not len(fails):
        return low, NAN, 0
    high = float(fails.min())
    return low, high, int(((share.index > low) & (share.index < high)).sum())


def failed_lrs_per_seed(table: pd.DataFrame) -> pd.DataFrame:
    """seed x gate: the number of grid lrs at which that seed's run failed."""
    return table.groupby(["seed", "gate"])["failed"].sum().unstack("gate").astype(float)


def survival_per_seed(table: pd.DataFrame, gated: str = "headwise") -> pd.Series:
    """Per seed: the number of learning rates at which the baseline failed and ``gated`` did not."""
    failed = table.pivot_table(index=["seed", "lr"], columns="gate", values="failed", aggfunc="any")
    failed = failed.astype(object).fillna(False).astype(bool)  # a (seed, lr) one variant lacks
    return (failed["none"] & ~failed[gated]).groupby(level="seed").sum().astype(float)


def spikes_per_seed(table: pd.DataFrame) -> pd.DataFrame:
    """seed x gate: loss spikes summed over the learning-rate grid."""
    return table.groupby(["seed", "gate"])["spikes"].sum().unstack("gate").astype(float)


def high_lr_gain_per_seed(table: pd.DataFrame, high_lr: float, gated: str) -> pd.Series:
    """Per seed: mean over the grid's learning rates >= ``high_lr`` at which both runs ended with a
    finite loss of baseline minus ``gated`` final loss (positive: the gated model degrades less).
    No loss is substituted for a diverged run (those lrs count in the failure claims instead);
    a seed with no such lr is NaN."""
    high = table[table["lr"] >= high_lr * (1 - 1e-9)]
    loss = high.pivot_table(index=["seed", "lr"], columns="gate", values="final_val_loss", dropna=False)
    seeds = sorted(table["seed"].unique())
    return (_column(loss, "none") - _column(loss, gated)).groupby(level="seed").mean().reindex(seeds)


def best_lr_per_seed(table: pd.DataFrame) -> pd.DataFrame:
    """seed x gate: the learning rate of the lowest finite final loss of that seed."""
    per_run = table.dropna(subset=["final_val_loss"]).set_index(["seed", "gate", "lr"])["final_val_loss"]
    best = per_run.groupby(level=["seed", "gate"]).idxmin().map(lambda key: key[2])
    return best.unstack("gate").reindex(columns=pd.unique(table["gate"]))


def best_loss_gain_per_seed(table: pd.DataFrame, gated: str = "headwise") -> pd.Series:
    """Per seed: the baseline's lowest final loss over the grid minus ``gated``'s (Qiu et al.
    Table 2 compares each model at its own best learning rate); the best learning rate is chosen
    within each seed, so the set statistic (a minimum over the grid) is a per-seed value."""
    best = table.groupby(["seed", "gate"])["final_val_loss"].min().unstack("gate")
    return (_column(best, "none") - _column(best, gated)).sort_index()


def best_lr_on_grid_edge(table: pd.DataFrame) -> int:
    """How many (variant, seed) pairs have their best lr (:func:`best_lr_per_seed`) at the grid's
    smallest or largest point: then the optimum is not bracketed and "best loss" means "best on
    this grid"."""
    lrs = sorted(table["lr"].unique())
    best = best_lr_per_seed(table).to_numpy(float).ravel()
    return int((np.isclose(best, lrs[0]) | np.isclose(best, lrs[-1])).sum())


def window_measurements(table: pd.DataFrame) -> dict[str, float]:
    """The failure window (:func:`failure_window`) over every variant together and per variant, as
    exact measurements: ``all_train_lr``, ``all_fail_lr``, ``lrs_between`` (and ``_<gate>``)."""
    out = {}
    for name, part in [("", table)] + [(f"_{g}", table[table.gate == g]) for g in pd.unique(table.gate)]:
        low, high, between = failure_window(part)
        who = "every variant" if not name else name[1:]
        out[f"all_train_lr{name}"] = claims.exact(low, f"largest grid lr at which every run of {who} trained")
        out[f"all_fail_lr{name}"] = claims.exact(high, f"smallest larger grid lr at which every run of {who} failed")
        out[f"lrs_between{name}"] = claims.exact(between, f"grid lrs strictly between those two ({who})")
    return out


def stability_measurements(table: pd.DataFrame, high_lr: float, gated: str = "headwise") -> dict:
    """Every measurement of the ``lr_stability`` figure from :func:`stability_table`: the failure
    window (:func:`window_measurements`), failure and spike counts over the grid (exact), and
    per-seed values (failed lrs of the baseline minus the gated model's, lrs where only the
    baseline failed, spike differences, the finite-loss gain at learning rates >= ``high_lr``,
    the gain at each model's best learning rate) with a t interval over seeds.

    ``best_lr_on_grid_edge`` counts every (variant, seed) of the table whose best lr is a grid
    edge: the best-loss comparison needs each optimum bracketed."""
    base = table[table.gate == "none"]
    spk, failed = spikes_per_seed(table), failed_lrs_per_seed(table)
    out = {
        **window_measurements(table),
        "baseline_failures": claims.exact(int(base["failed"].sum()),
                                          f"count of failed baseline runs over the whole grid ({len(base)} runs)"),
        "gated_failures": claims.exact(int(table[table.gate == gated]["failed"].sum()),
                                       f"count of failed {gated} runs over the whole grid"),
        f"failed_lrs_baseline_minus_{gated}": claims.paired_difference(_column(failed, "none"), _column(failed, gated)),
        "lrs_only_baseline_fails": claims.mean_interval(survival_per_seed(table, gated)),
        "spikes_baseline": claims.exact(int(base["spikes"].sum()), "count of baseline loss spikes over the grid"),
        "spikes_gated": claims.exact(int(table[table.gate == gated]["spikes"].sum()),
                                     f"count of {gated} loss spikes over the grid"),
        "spikes_baseline_minus_gated": claims.paired_difference(_column(spk, "none"), _column(spk, gated)),
        "best_loss_gain": claims.mean_interval(best_loss_gain_per_seed(table, gated)),
        "best_lr_on_grid_edge": claims.exact(best_lr_on_grid_edge(table),
                                             "how many (variant, seed) pairs have their best lr at a grid edge"),
    }
    for g in ("headwise", "elementwise"):
        if g in set(table.gate):
            out[f"high_lr_gain_{g}"] = claims.mean_interval(high_lr_gain_per_seed(table, high_lr, g))
    return out


# --------------------------------------------------------------------------- massive_activations
def activation_table(runs: pd.DataFrame, failed_above: float) -> pd.DataFrame:
    """One row per run: lr, gate, seed, status, ``trained`` (finished with a final validation loss
    below ``failed_above``), largest |hidden state| (max over layers; NaN for a diverged run), the
    median |hidden state| of that layer, and the mean gate score (mean over layers; NaN for the
    baseline)."""
    p = runs["probes"]

    def at_max(q, key: str) -> float:
        if not isinstance(q, dict) or not q.get("max_abs_hidden") or not q.get(key):
            return NAN
        return float(q[key][int(np.argmax(q["max_abs_hidden"]))])
    loss = runs["final_val_loss"].astype(float)
    return pd.DataFrame({"gate": runs["gate"], "lr": runs["lr"], "seed": runs["seed"],
                         "status": runs["status"],
                         "trained": ((runs["status"] == "finished") & (loss < failed_above)).to_numpy(),
                         "max_abs_hidden": p.map(lambda q: at_max(q, "max_abs_hidden")),
                         "median_abs_hidden": p.map(lambda q: at_max(q, "median_abs_hidden")),
                         "gate_mean": p.map(lambda q: _probe(q, "gate_mean"))}).reset_index(drop=True)


def trained_lrs(table: pd.DataFrame, gates: Sequence[str]) -> list[float]:
    """Learning rates at which every run of every one of ``gates`` trained (:func:`activation_table`)
    with a finite max |hidden|: activations of a run that failed are divergence, not a property
    of a trained model."""
    t = table[table.gate.isin(gates)]
    return [float(lr) for lr, d in t.groupby("lr")
            if set(gates) <= set(d.gate) and bool(d.trained.all()) and bool(np.isfinite(d.max_abs_hidden).all())]


def log_activation_ratio(table: pd.DataFrame, gated: str, lrs: Sequence[float]) -> pd.DataFrame:
    """seed x lr: log(max|h| of the baseline / max|h| of ``gated``), same seed and lr (no columns
    when ``lrs`` is empty)."""
    if not len(lrs):
        return pd.DataFrame(index=pd.Index(sorted(table.seed.unique()), name="seed"), dtype=float)
    t = table[table.lr.isin(lrs)]
    m = t.pivot_table(index=["seed", "lr"], columns="gate", values="max_abs_hidden")
    return np.log(m["none"] / m[gated]).unstack("lr")


def activation_cut(table: pd.DataFrame, gated: str) -> claims.Estimate:
    """The max-activation cut (Qiu et al. Table 4 compares max |hidden|): per seed the geometric
    mean over every lr at which both models trained (:func:`trained_lrs`) of baseline /
    ``gated``; the estimate is the geometric mean of these per-seed ratios over seeds with a t
    interval on their logs (never the lr where it is largest). No such lr: no seeds."""
    lrs = trained_lrs(table, ["none", gated])
    per_seed = np.exp(log_activation_ratio(table, gated, lrs).mean(axis=1)) if lrs else pd.Series(dtype=float)
    return claims.log_mean_interval(per_seed.to_numpy(float))


def massive_ratio(table: pd.DataFrame, gate: str = "none") -> claims.Estimate:
    """How massive the largest activation of ``gate`` is: per seed the geometric mean over the lrs
    at which every run of ``gate`` trained (:func:`trained_lrs`) of max |h| / median |h| (the
    median of the layer holding the max), then the geometric mean over seeds with a t interval on
    the logs. Sun et al. (2024, Sec. 2) call activations massive at thousands of times the median;
    a max only a few times the median is the tail of an ordinary distribution."""
    lrs = trained_lrs(table, [gate])
    t = table[(table.gate == gate) & table.lr.isin(lrs)]
    per_seed = np.exp(np.log(t.max_abs_hidden / t.median_abs_hidden).groupby(t.seed).mean())
    return claims.log_mean_interval(per_seed.to_numpy(float))


def gate_score_mean(table: pd.DataFrame, gated: str, lr: float) -> claims.Estimate:
    """Mean gate score of ``gated`` at ``lr``: mean over seeds of each run's mean score, t interval."""
    t = table[(table.gate == gated) & np.isclose(table.lr, lr)].sort_values("seed")
    return claims.mean_interval(t["gate_mean"].to_numpy(float))


# --------------------------------------------------------------------------- loss
QK = "+qk_norm"  # suffix of the QK-norm control's variants in :func:`loss_variants`


def loss_variants(runs: pd.DataFrame) -> pd.Series:
    """Per run: its gate, with ``+qk_norm`` appended for the QK-norm control's runs (a run table
    without a ``qk_norm`` column has none)."""
    qk = runs["qk_norm"] if "qk_norm" in runs else pd.Series(False, index=runs.index)
    qk = qk.astype(object).where(qk.notna(), False).astype(bool)
    return runs["gate"].where(~qk, runs["gate"] + QK)


def _loss_wide(runs: pd.DataFrame) -> pd.DataFrame:
    t = runs.assign(final_val_loss=runs["final_val_loss"].astype(float), variant_key=loss_variants(runs))
    return wide(t, "final_val_loss", columns="variant_key")


def loss_gain(runs: pd.DataFrame, gated: str, baseline: str = "none") -> claims.Estimate:
    """Baseline minus ``gated`` final validation loss, paired by seed (same seed = same batches
    and the same initial shared weights), with a t interval over the paired differences.
    ``gated``/``baseline`` name variants of :func:`loss_variants` (``headwise+qk_norm`` ...)."""
    loss = _loss_wide(runs)
    return claims.paired_difference(_column(loss, baseline), _column(loss, gated))


def paired_gains(runs: pd.DataFrame, baseline: str = "none") -> pd.DataFrame:
    """seed x gated variant: its baseline (``none``, or ``none+qk_norm`` for the QK-norm control)
    minus the gated final loss (NaN where either diverged)."""
    loss = _loss_wide(runs)
    out = {}
    for v in loss.columns:
        base = baseline + QK if v.endswith(QK) else baseline
        if v != base:
            out[v] = _column(loss, base) - loss[v]
    return pd.DataFrame(out, index=loss.index)


def loss_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant (:func:`loss_variants`): mean and sd of the final loss over the finished seeds,
    parameters, seeds, and how many runs diverged."""
    t = runs.assign(final_val_loss=runs["final_val_loss"].astype(float), variant_key=loss_variants(runs))
    return t.groupby("variant_key", sort=False).agg(
        val_loss=("final_val_loss", "mean"), sd=("final_val_loss", "std"), params=("params", "first"),
        seeds=("seed", "count"), diverged=("status", lambda s: int((s == "diverged").sum())))


def loss_measurements(runs: pd.DataFrame) -> dict[str, claims.Estimate]:
    """The loss claims' numbers: the baseline's final loss and every paired gain (``loss_gain_<g>``
    and, for the QK-norm control, ``loss_gain_<g>_qk_norm``), each a t interval over seeds. A
    diverged run makes its gain non-finite (the claim is inconclusive), never a crash."""
    loss = _loss_wide(runs)
    out = {"val_loss_baseline": claims.mean_interval(_column(loss, "none"))}
    for v in loss.columns:
        if v in ("none", "none" + QK):
            continue
        key = f"loss_gain_{v.replace(QK, '_qk_norm')}"
        out[key] = loss_gain(runs, v, "none+qk_norm" if v.endswith(QK) else "none")
    return out


def shown(values: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """A table of numbers for display, with every non-finite entry (a diverged run) as "diverged"."""
    return values.apply(lambda col: col.map(lambda v: f"{v:.{digits}f}" if np.isfinite(v) else "diverged"))


def _training_step(run_cfg):
    """A closure that runs one AdamW training step of ``run_cfg``'s module on one fixed training
    batch and returns its wall time in seconds (initial weights from ``torch.manual_seed(0)``)."""
    import time

    import torch
    from hydra.utils import instantiate

    torch.manual_seed(0)
    module = instantiate(run_cfg.run.module, _convert_="all")
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    data = instantiate(run_cfg.run.data, _convert_="all")
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))

    def step() -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(module(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start
    return step


def step_turns(runs: pd.DataFrame, cfg, gates: Sequence[str] = ("none", "headwise", "elementwise"),
               warmup: int = 5) -> pd.DataFrame:
    """Interleaved step times of ``gates`` (QK-norm off, the setting of the paper's overhead claim,
    Sec. 4.1), in this process on one thread: each turn runs one training step of every variant
    in turn (:func:`_training_step`, each variant's config from its first run in ``runs``), the
    order rotated by one variant each turn so that no variant always runs first or after the same
    one; ``cfg.figure.measure.timing_rounds`` rounds of ``timing_steps`` turns after ``warmup``
    turns. One row per turn: ``round`` and one column of seconds per variant."""
    import torch

    from replicate import config as C

    main = runs[loss_variants(runs).isin(gates)]
    points = {g: int(main[main.gate == g]["point"].iloc[0]) for g in gates if g in set(main.gate)}
    steps = {g: _training_step(C.run_config(cfg, k)) for g, k in points.items()}
    measure, threads = cfg.figure.measure, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(warmup):
            for step in steps.values():
                step()
        names, rows = list(steps), []
        for k in range(measure.timing_rounds):
            for t in range(measure.timing_steps):
                order = names[t % len(names):] + names[:t % len(names)]
                rows.append({"round": k, **{g: steps[g]() for g in order}})
        return pd.DataFrame(rows, columns=["round", *names])
    finally:
        torch.set_num_threads(threads)


def overhead_pct(turns: pd.DataFrame, gated: str, baseline: str = "none") -> claims.Estimate:
    """Step-time overhead (%) of ``gated``: per timing round the median over its turns of
    gated / baseline step time (adjacent steps, so slow drifts in load cancel) minus 1; the mean
    over rounds with a t interval (``turns``: one row per turn, a ``round`` column and one
    column of seconds per variant)."""
    per_round = (turns[gated] / turns[baseline]).groupby(turns["round"]).median()
    return claims.mean_interval(100 * (per_round.to_numpy(float) - 1), unit="timing rounds")
