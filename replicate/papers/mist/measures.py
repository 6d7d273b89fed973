"""The numbers behind the MIST claims: one function per figure (:func:`error_vs_n`,
:func:`error_vs_dim`, :func:`calibration`, :func:`runtime`), each ``(runs, cfg) -> {key: Estimate
or number}``, and the estimators they use.

A notebook-only module: no training module imports it (editing it never retrains a run).

Units. The meta-training seed is the top-level unit of every interval: each claim's statistic
(an MSE ratio against the best baseline, a share of bins won, a coverage, an interval score, a
mean estimate on independent pairs) is computed once per seed on the same held-out test sets,
and the interval is a t interval over the seeds (on the log scale for ratios). The test sets are
fixed and shared by the seeds, so the interval measures how a retrained network would do on
these test sets; the per-seed values and, for a dataset-level view, each seed's own interval over
datasets are in the json. Timings (:func:`speedup`) are over timing repeats.

Baselines. Every MSE comparison is against the best of the paper's baselines in that stratum
(:func:`best_baseline_ratio`): KSG, KSG on normal scores, the Gaussian closed form (CCA) on the raw
sample and on the shrunk normal-score correlation, and InfoNCE, MINE (DV) and NWJ on their
stratified quarter of the datasets (each baseline compared on the datasets where it has an
estimate; one with fewer than ``MIN_BASELINE_DATASETS`` there is left out of that stratum).
Choosing the best baseline on the test sets favours the baselines: MIST's claims are conservative.

Input: the estimates table of :func:`replicate.papers.mist.analysis.evaluate` (one row per
dataset: ``split``, ``family``, ``n``, ``d``, ``dy``, true ``mi``, one column per baseline and
``mist@<seed>``, ``mist_qr@<seed>``, ``q_<τ>@<seed>`` per network; ``<seed>`` = ``shipped`` for the
shipped checkpoints).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from replicate import claims
from replicate.papers.mist import baselines

MI_STRATA = (0.3, 1.0)  # MI <= 0.3, 0.3 < MI <= 1, MI > 1 (nats)
STRATUM_NAMES = ("low", "mid", "high")
BASELINES = ("ksg", "ksg_ranks", "cca", "cca_ns", "infonce", "mine", "nwj")
BASELINE_LABELS = {"ksg": "KSG (k=5)", "ksg_ranks": "KSG on normal scores", "cca": "CCA (raw)",
                   "cca_ns": "CCA on normal scores (shrunk)", "infonce": "InfoNCE", "mine": "MINE (DV)",
                   "nwj": "NWJ"}
MIN_BASELINE_DATASETS = 10
ERROR_SPLITS = ("in", "out", "ood_copula", "ood_nonmonotone", "ood_high_mi", "ood_large_n")
OOD_SPLITS = ("ood_copula", "ood_nonmonotone", "ood_high_mi", "ood_large_n")
# the dependence structures no training family has (out of distribution for this rank-invariant
# model); the paper's "also on unseen joint distributions" is judged on the weaker of them
UNSEEN_FAMILIES = ("ood_copula", "ood_nonmonotone")
TAU_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


# --------------------------------------------------------------------------- strata and seeds
def mi_stratum(mi, edges=MI_STRATA) -> np.ndarray:
    """Stratum name per dataset: ``low`` (MI <= edges[0]), ``mid`` (<= edges[1]), ``high``."""
    mi = np.asarray(mi, dtype=float)
    return np.asarray(STRATUM_NAMES, dtype=object)[np.searchsorted(np.asarray(edges), mi, side="left")]


def stratum_label(name: str, edges=MI_STRATA) -> str:
    """``"MI <= 0.3"``, ``"0.3 < MI <= 1"``, ``"MI > 1"`` for ``low``, ``mid``, ``high``."""
    lo, hi = edges
    return {"low": f"MI <= {lo:g}", "mid": f"{lo:g} < MI <= {hi:g}", "high": f"MI > {hi:g}"}[name]


def seeds(table: pd.DataFrame, method: str = "mist") -> list:
    """The integer seed labels of ``<method>@<seed>`` columns, sorted (``shipped`` excluded)."""
    labels = [c.split("@", 1)[1] for c in table.columns if c.startswith(f"{method}@")]
    return sorted(int(s) for s in labels if s.lstrip("-").isdigit())


def seed_view(table: pd.DataFrame, seed) -> pd.DataFrame:
    """``table`` with one network's columns under plain names: ``mist``, ``mist_qr``, ``q_<τ>``
    from ``mist@<seed>``, ``mist_qr@<seed>``, ``q_<τ>@<seed>`` (those present)."""
    suffix = f"@{seed}"
    own = {c: c[: -len(suffix)] for c in table.columns if c.endswith(suffix)}
    base = table[[c for c in table.columns if "@" not in c]]
    return pd.concat([base, table[list(own)].rename(columns=own)], axis=1)


def over_seeds(values, log: bool = False) -> claims.Estimate:
    """Mean (``log``: geometric mean) of per-seed values with a t interval over the seeds."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return claims.exact(float(v[0]) if len(v) else math.nan, f"{len(v)} seed(s): too few for an interval")
    if log:
        if (v <= 0).any():
            return claims.exact(float(np.exp(np.mean(np.log(np.maximum(v, 1e-300))))), "a per-seed ratio <= 0")
        return claims.log_mean_interval(v, unit="seeds")
    return claims.mean_interval(v, unit="seeds")


def per_seed(table: pd.DataFrame, fn, method: str = "mist", log: bool = False) -> claims.Estimate:
    """``over_seeds`` of ``fn(seed_view(table, s))`` for every seed of ``method``."""
    return over_seeds([fn(seed_view(table, s)) for s in seeds(table, method)], log=log)


def weakest_split(table: pd.DataFrame, splits, fn, method: str = "mist", log: bool = False,
                  farthest_from: float | None = None) -> claims.Estimate:
    """Per seed, the weakest of ``fn(seed_view(<split's rows>, seed))`` over ``splits`` (the
    smallest value; with ``farthest_from``, the value farthest from it), then ``over_seeds``: a
    universal claim over several test splits judged on the split where it does worst, seed by seed
    (NaN for a seed that misses a split)."""
    parts = [table[table.split == split] for split in splits]
    if not parts or any(part.empty for part in parts):
        return over_seeds([math.nan] * len(seeds(table, method)), log=log)
    values = []
    for seed in seeds(table, method):
        per_split = np.array([fn(seed_view(part, seed)) for part in parts], dtype=float)
        if not np.isfinite(per_split).all():
            values.append(math.nan)
        elif farthest_from is None:
            values.append(float(per_split.min()))
        else:
            values.append(float(per_split[np.argmax(np.abs(per_split - farthest_from))]))
    return over_seeds(values, log=log)


# --------------------------------------------------------------------------- errors
def squared_error(table: pd.DataFrame, method: str) -> np.ndarray:
    """Per dataset (estimate - true MI)^2 of ``method``'s column (NaN where it is missing)."""
    return ((table[method] - table["mi"]) ** 2).to_numpy(dtype=float)


def mse(table: pd.DataFrame, method: str) -> float:
    """Mean squared error of ``method`` over the datasets that have its estimate (NaN if none)."""
    sq = squared_error(table, method)
    sq = sq[np.isfinite(sq)]
    return float(sq.mean()) if len(sq) else math.nan


def baseline_ratios(table: pd.DataFrame, method: str = "mist", candidates=BASELINES,
                    min_datasets: int = MIN_BASELINE_DATASETS) -> dict[str, float]:
    """{baseline: MSE(baseline) / MSE(method)} over the datasets where the baseline has an
    estimate (above 1: ``method`` is better), for every baseline with at least ``min_datasets``."""
    out = {}
    for b in candidates:
        if b not in table:
            continue
        sub = table[np.isfinite(table[b].to_numpy(dtype=float))]
        if len(sub) >= min_datasets:
            den = mse(sub, method)
            out[b] = mse(sub, b) / den if den > 0 else math.inf
    return out


def best_baseline_ratio(table: pd.DataFrame, method: str = "mist", candidates=BASELINES,
                        min_datasets: int = MIN_BASELINE_DATASETS) -> tuple[float, str]:
    """(the smallest ``baseline_ratios`` value, its baseline): MIST against the strongest
    competitor on these datasets; (NaN, "") when no baseline qualifies."""
    ratios = baseline_ratios(table, method, candidates, min_datasets)
    if not ratios:
        return math.nan, ""
    name = min(ratios, key=ratios.get)
    return ratios[name], name


def share_of_bins_beating_best(table: pd.DataFrame, by: str, method: str = "mist",
                               candidates=BASELINES, min_datasets: int = 3) -> float:
    """Share of the ``by`` bins in which ``method``'s MSE is below that of every baseline with at
    least ``min_datasets`` estimates in the bin (``best_baseline_ratio`` > 1)."""
    wins = [best_baseline_ratio(g, method, candidates, min_datasets)[0] > 1 for _, g in table.groupby(by)]
    return float(np.mean(wins)) if wins else math.nan


def slope_of_log_ratio(table: pd.DataFrame, by: str, numerator: str = "ksg", denominator: str = "mist") -> float:
    """Least-squares slope, against the ``by`` bin value, of log(MSE numerator / MSE denominator)
    per bin; NaN with fewer than 2 usable bins."""
    x, y = [], []
    for value, g in table.groupby(by, sort=True):
        a, b = mse(g, numerator), mse(g, denominator)
        if a > 0 and b > 0:
            x.append(float(value))
            y.append(math.log(a / b))
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else math.nan


def mse_with_interval(table: pd.DataFrame, method: str) -> claims.Estimate:
    """Mean squared error of a seed-independent method (a baseline) with a t interval over datasets."""
    sq = squared_error(table, method)
    return claims.mean_interval(sq[np.isfinite(sq)], unit="datasets")


def nonfinite_estimates(table: pd.DataFrame, prefix: str = "mist@") -> int:
    """How many datasets have a non-finite estimate in any ``prefix*`` column (a diverged network)."""
    cols = [c for c in table.columns if c.startswith(prefix)]
    values = table[cols].to_numpy(dtype=float)
    return int((~np.isfinite(values)).any(axis=1).sum()) if cols else 0


def spearman(a, b) -> float:
    """Spearman correlation of two sequences (0 when either is constant)."""
    from scipy.stats import rankdata

    a, b = rankdata(np.asarray(a, dtype=float)), rankdata(np.asarray(b, dtype=float))
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def formatted(frame: pd.DataFrame, spec: str = ".3g") -> pd.DataFrame:
    """``frame`` with every :class:`~replicate.claims.Estimate` cell written "value [lo, hi]"."""
    return frame.map(lambda v: format(v, spec) if isinstance(v, claims.Estimate) else v)


def mse_curves(table: pd.DataFrame, by: str, methods=("mist",) + BASELINES) -> pd.DataFrame:
    """Long table per (split, ``by`` bin, method): MSE with its interval (MIST: over seeds, the
    mean of per-seed MSEs; a baseline: over datasets), columns split, <by>, method, mse, lo, hi,
    datasets."""
    rows = []
    for (split, value), g in table.groupby(["split", by], sort=True):
        for m in methods:
            if m in ("mist", "mist_qr"):
                est = per_seed(g, lambda v, m=m: mse(v, m), "mist" if m == "mist" else "mist_qr")
                count = len(g)
            elif m in g and np.isfinite(g[m].to_numpy(dtype=float)).sum() >= 2:
                est = mse_with_interval(g, m)
                count = int(np.isfinite(g[m].to_numpy(dtype=float)).sum())
            else:
                continue
            lo, hi = est.interval or (est.value, est.value)
            rows.append({"split": split, by: value, "method": m, "mse": est.value, "lo": lo, "hi": hi,
                         "datasets": count})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- independence
def false_dependence_share(table: pd.DataFrame, lo: str = "q_0.05", threshold: float = 0.0) -> float:
    """Share of datasets whose lower quantile ``lo`` is above ``threshold`` (the rule "q̂_0.05 > 0"
    calls a pair dependent)."""
    q = table[lo].to_numpy(dtype=float)
    q = q[np.isfinite(q)]
    return float((q > threshold).mean()) if len(q) else math.nan


# --------------------------------------------------------------------------- intervals
def prior_quantile(prior: dict, tau: float) -> float:
    """τ-quantile of the training MI prior: 0 w.p. ``zero``, U(0, ``low_max``) w.p. ``low``, else
    U(0, ``max``) (``data.draw_mi``)."""
    zero, low, low_max, top = prior["zero"], prior["low"], prior["low_max"], prior["max"]
    cdf = lambda m: zero + low * min(m / low_max, 1.0) + (1 - zero - low) * min(m / top, 1.0)
    if tau <= zero:
        return 0.0
    lo, hi = 0.0, top
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < tau else (lo, mid)
    return 0.5 * (lo + hi)


def interval_score(lo, hi, truth, alpha: float = 0.1) -> np.ndarray:
    """Per dataset the interval score of a central (1 - α) interval (Gneiting & Raftery 2007,
    eq. 43): (hi - lo) + (2/α)(lo - x)·1{x < lo} + (2/α)(x - hi)·1{x > hi}. Lower is better."""
    lo, hi, x = (np.asarray(v, dtype=float) for v in (lo, hi, truth))
    return (hi - lo) + (2 / alpha) * np.maximum(lo - x, 0) + (2 / alpha) * np.maximum(x - hi, 0)


def coverage(table: pd.DataFrame, lo: str = "q_0.05", hi: str = "q_0.95") -> float:
    """Share of datasets with lo <= true MI <= hi (rows with an interval)."""
    ok = table[lo].notna() & table[hi].notna()
    t = table[ok]
    return float(((t[lo] <= t["mi"]) & (t["mi"] <= t[hi])).mean()) if len(t) else math.nan


def calibration_gap(table: pd.DataFrame, tau=TAU_GRID) -> float:
    """Mean over the τ grid of |share of datasets with MI <= q̂_τ - τ|."""
    return float(np.mean([abs(float((table["mi"] <= table[f"q_{t:g}"]).mean()) - t) for t in tau]))


def crossing_share(table: pd.DataFrame, tau=TAU_GRID) -> float:
    """Share of datasets whose quantiles decrease anywhere along the τ grid."""
    q = table[[f"q_{t:g}" for t in tau]].to_numpy()
    return float((np.diff(q, axis=1) < -1e-9).any(axis=1).mean())


def interval_score_ratio_prior(table: pd.DataFrame, prior_lo: float, prior_hi: float, alpha: float = 0.1) -> float:
    """Mean interval score of the prior's fixed interval over MIST-QR's (above 1: MIST-QR is better)."""
    qr = interval_score(table["q_0.05"], table["q_0.95"], table["mi"], alpha).mean()
    pr = interval_score(np.full(len(table), prior_lo), np.full(len(table), prior_hi), table["mi"], alpha).mean()
    return float(pr / qr) if qr > 0 else math.inf


def nominal_gap_difference(table: pd.DataFrame, nominal: float = 0.9) -> float:
    """|coverage of the bootstrap interval - nominal| - |coverage of MIST-QR's - nominal| on the
    datasets with a bootstrap interval (above 0: MIST-QR is closer to nominal)."""
    t = table[table["boot_lo"].notna()]
    return abs(coverage(t, "boot_lo", "boot_hi") - nominal) - abs(coverage(t, "q_0.05", "q_0.95") - nominal)


# --------------------------------------------------------------------------- timing
def timing_repeats(fns: dict, repeats: int) -> pd.DataFrame:
    """Wall seconds of every ``fns[name]()`` per repeat, after one warm-up call each; within a
    repeat the methods run back to back, so repeat ``r`` of two methods is a pair (same machine
    load)."""
    for fn in fns.values():
        fn()
    rows = []
    for r in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            rows.append({"repeat": r, "method": name, "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)


def runtime_repeats(net, spec: dict, neural: dict, ksg_k: int = 5) -> pd.DataFrame:
    """Seconds per estimate for MIST (batched: per dataset of a batch; one at a time), KSG, CCA on
    normal scores and InfoNCE at its fixed step budget, at each n of ``spec`` (columns n, repeat,
    method, seconds), on Gaussian data with d = ``spec["d"]`` (the cost does not depend on the
    distribution)."""
    import torch

    frames = []
    infonce = f"InfoNCE ({neural['steps']} steps)"
    for n in spec["n_grid"]:
        rng = np.random.default_rng(int(n))
        x = rng.standard_normal((spec["batch"], n, spec["d"])).astype(np.float32)
        y = (0.7 * x + rng.standard_normal(x.shape)).astype(np.float32)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def batched():
            with torch.no_grad():
                net(xt, yt)

        def single():
            with torch.no_grad():
                net(xt[:1], yt[:1])

        fns = {"MIST (batched)": batched, "MIST (one at a time)": single,
               f"KSG (k={ksg_k})": lambda: baselines.ksg(x[0], y[0], ksg_k),
               "CCA on normal scores": lambda: baselines.cca_normal_scores(x[0], y[0]),
               infonce: lambda: baselines.infonce(x[0], y[0], neural["steps"], neural["lr"], neural["hidden"],
                                                  neural["embed"])}
        frame = timing_repeats(fns, spec["repeats"])
        frame.loc[frame.method == "MIST (batched)", "seconds"] /= spec["batch"]
        frames.append(frame.assign(n=int(n)))
    return pd.concat(frames, ignore_index=True)[["n", "repeat", "method", "seconds"]]


def speedup(times: pd.DataFrame, slow: str, fast: str) -> claims.Estimate:
    """seconds(slow) / seconds(fast) as the geometric mean of the per-repeat ratios, with a t
    interval over repeats on the log scale (``times``: columns repeat, method, seconds, one n)."""
    wide = times.pivot(index="repeat", columns="method", values="seconds")
    return claims.ratio_interval(wide[slow].to_numpy(dtype=float), wide[fast].to_numpy(dtype=float),
                                 unit="timing repeats")


# --------------------------------------------------------------------------- figures
def _measure(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.figure.measure, resolve=True)


def estimates(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """The estimates table of a figure's runs on every held-out split (cached, shared by the MIST
    figures): :func:`replicate.papers.mist.analysis.evaluate`."""
    from replicate.papers.mist.analysis import evaluate

    return evaluate(runs, _measure(cfg))[0]


def _stratum_rows(table: pd.DataFrame, edges) -> dict:
    return {name: table[mi_stratum(table["mi"], edges) == name] for name in STRATUM_NAMES}


def _best_name(views: list[pd.DataFrame], method: str = "mist") -> str:
    names = [best_baseline_ratio(v, method)[1] for v in views]
    names = [n for n in names if n]
    return max(set(names), key=names.count) if names else ""


def error_vs_n(runs: pd.DataFrame, cfg, table: pd.DataFrame | None = None) -> dict:
    """Error vs sample size (Gritsai et al. 2025, Sec. 5, error-vs-n figure). Per split (in, the
    official test_oomd ``out``, and the four OOD splits) and per true-MI stratum: the MSE ratio of
    the best baseline over MIST (``mse_ratio_best_over_mist_<split>[_mi_<stratum>]``) and over
    MIST-QR's median, the ratio over KSG alone, the share of n bins in which MIST beats every
    baseline; on every independent set MIST's mean estimate and MIST-QR's rate of q̂_0.05 > 0.
    Each over the meta-training seeds; baselines' MSEs with intervals over datasets; the shipped
    checkpoints' values as plain numbers. ``table``: :func:`estimates` when already at hand."""
    table = estimates(runs, cfg) if table is None else table
    measure = _measure(cfg)
    edges, need = tuple(measure["mi_strata"]), int(measure.get("min_datasets", 30))
    out = {"mist_nonfinite_estimates": nonfinite_estimates(table, "mist@"),
           "mistqr_nonfinite_estimates": nonfinite_estimates(table, "mist_qr@"),
           "seeds_mist": len(seeds(table, "mist")), "seeds_mistqr": len(seeds(table, "mist_qr")),
           "min_datasets": need}
    for split in ERROR_SPLITS:
        t = table[table.split == split]
        if not len(t):
            continue
        groups = {"": t, **{f"_mi_{k}": v for k, v in _stratum_rows(t, edges).items()}}
        for suffix, g in groups.items():
            key = f"{split}{suffix}"
            out[f"datasets_{key}"] = len(g)
            if not len(g):
                out[f"mse_ratio_best_over_mist_{key}"] = claims.exact(math.nan, "no datasets in this stratum")
                continue
            views = [seed_view(g, s) for s in seeds(g, "mist")]
            out[f"mse_ratio_best_over_mist_{key}"] = over_seeds([best_baseline_ratio(v)[0] for v in views], log=True)
            out[f"best_baseline_{key}"] = _best_name(views)
            out[f"mse_ratio_ksg_over_mist_{key}"] = over_seeds([mse(v, "ksg") / mse(v, "mist") for v in views], log=True)
            out[f"mse_mist_{key}"] = over_seeds([mse(v, "mist") for v in views])
            for b in BASELINES:
                out[f"mse_{b}_{key}"] = mse(g, b)
            if "mist@shipped" in g:
                out[f"mse_ratio_best_over_shipped_mist_{key}"] = best_baseline_ratio(seed_view(g, "shipped"))[0]
        qr_views = [seed_view(t, s) for s in seeds(t, "mist_qr")]
        out[f"mse_ratio_best_over_mistqr_{split}"] = over_seeds(
            [best_baseline_ratio(v, "mist_qr")[0] for v in qr_views], log=True)
        out[f"frac_n_bins_mist_beats_best_{split}"] = per_seed(t, lambda v: share_of_bins_beating_best(v, "n"))
    out["datasets_ood_unseen"] = min(int((table.split == split).sum()) for split in UNSEEN_FAMILIES)
    out["mse_ratio_best_over_mist_ood_unseen"] = weakest_split(
        table, UNSEEN_FAMILIES, lambda v: best_baseline_ratio(v)[0], log=True)
    indep = table[table.split == "independent"]
    out.update({"datasets_independent": len(indep),
                "mean_mist_independent": per_seed(indep, lambda v: float(v["mist"].mean())),
                "false_dependence_rate_independent": per_seed(indep, false_dependence_share, "mist_qr"),
                **{f"mean_{b}_independent": float(indep[b].mean()) for b in ("ksg", "ksg_ranks", "cca", "cca_ns")}})
    if "mist@shipped" in indep:
        out["mean_shipped_mist_independent"] = float(indep["mist@shipped"].mean())
    out["qr_median_rank_correlation_in"] = per_seed(
        table[table.split == "in"], lambda v: spearman(v["mi"], v["mist_qr"]), "mist_qr")
    return out


def error_vs_dim(runs: pd.DataFrame, cfg, table: pd.DataFrame | None = None) -> dict:
    """Error vs dimension (Gritsai et al. 2025, Sec. 5): on the d_x = d_y cells of the in and out
    splits and of the rank-breaking OOD splits, the share of d bins in which MIST beats every
    baseline, the best-baseline/MIST MSE ratio at the largest d and on the d_x != d_y cells, and
    the slope of log(KSG MSE / MIST MSE) on d; each over the meta-training seeds."""
    table = estimates(runs, cfg) if table is None else table
    measure = _measure(cfg)
    d_grid = sorted(measure["eval"]["d_grid"])
    out = {"mist_nonfinite_estimates": nonfinite_estimates(table, "mist@"), "seeds_mist": len(seeds(table, "mist"))}
    for split in ("in", "out", "ood_copula", "ood_nonmonotone"):
        part = table[table.split == split]
        if not len(part):
            continue
        t, u = part[part.d == part.dy], part[part.d != part.dy]
        top = t[t.d == t.d.max()]
        out.update({
            f"frac_d_bins_mist_beats_best_{split}": per_seed(t, lambda v: share_of_bins_beating_best(v, "d")),
            f"mse_ratio_best_over_mist_top_d_{split}": per_seed(top, lambda v: best_baseline_ratio(v)[0], log=True),
            f"top_d_{split}": int(t.d.max()), f"datasets_top_d_{split}": len(top),
            f"log_ratio_slope_ksg_per_d_{split}": per_seed(t, lambda v: slope_of_log_ratio(v, "d")),
            f"datasets_unequal_{split}": len(u)})
        if len(u):
            out[f"mse_ratio_best_over_mist_unequal_{split}"] = per_seed(u, lambda v: best_baseline_ratio(v)[0], log=True)
        for d in sorted(t.d.unique()):
            g = t[t.d == d]
            out[f"datasets_d{d}_{split}"] = len(g)
            out[f"mse_ratio_best_over_mist_d{d}_{split}"] = per_seed(g, lambda v: best_baseline_ratio(v)[0], log=True)
    equal = table[table.d == table.dy]
    out["frac_d_bins_mist_beats_best_ood_unseen"] = weakest_split(
        equal, UNSEEN_FAMILIES, lambda v: share_of_bins_beating_best(v, "d"))
    out["d_grid"] = d_grid
    return out


def calibration_table(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """:func:`estimates` with the percentile-bootstrap interval of KSG (``boot_lo``, ``boot_hi``)
    on a per-(split, n, d) subset of the in and out splits (cached like the estimates)."""
    from replicate.papers.mist import analysis

    measure = _measure(cfg)
    table, sets = analysis.evaluate(runs, measure)
    key = analysis.cache_key("calibration-v2", sorted(str(d) for d in runs.run_dir), measure["bootstrap"],
                             measure["ksg_k"], measure.get("test_salt"), measure["eval"])
    return analysis.cached(analysis.cache_folder(runs), key, lambda: analysis.add_bootstrap(
        table, sets, measure["bootstrap"], measure["ksg_k"]))


def training_prior(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.figure.run.data.mi_prior, resolve=True)


def calibration(runs: pd.DataFrame, cfg, table: pd.DataFrame | None = None) -> dict:
    """Calibration of MIST-QR (Gritsai et al. 2025, Sec. 5), each over the meta-training seeds:
    coverage of [q̂_0.05, q̂_0.95] per split, per true-MI stratum and per n; the calibration error
    over the τ grid; the interval score of MIST-QR against the training prior's own 90 % interval
    (a data-blind control); |coverage_boot - 0.9| - |coverage_QR - 0.9| against KSG's bootstrap
    interval on the same datasets; the crossing rate; the rank correlation of the median with the
    truth; the rate of q̂_0.05 > 0 on every independent set."""
    table = calibration_table(runs, cfg) if table is None else table
    measure = _measure(cfg)
    edges, prior = tuple(measure["mi_strata"]), training_prior(cfg)
    lo, hi = prior_quantile(prior, 0.05), prior_quantile(prior, 0.95)
    out = {"prior_q05": lo, "prior_q95": hi, "seeds_mistqr": len(seeds(table, "mist_qr")),
           "quantile_nonfinite_estimates": nonfinite_estimates(table, "q_"),
           "crossing_rate": max(crossing_share(seed_view(table, s)) for s in seeds(table, "mist_qr"))}
    for split in ("in", "out") + OOD_SPLITS:
        t = table[table.split == split]
        if not len(t):
            continue
        out.update({f"datasets_{split}": len(t),
                    f"coverage_qr_{split}": per_seed(t, coverage, "mist_qr"),
                    f"coverage_prior_{split}": float(((t.mi >= lo) & (t.mi <= hi)).mean()),
                    f"calibration_error_{split}": per_seed(t, calibration_gap, "mist_qr"),
                    f"interval_score_ratio_prior_over_qr_{split}": per_seed(
                        t, lambda v: interval_score_ratio_prior(v, lo, hi), "mist_qr", log=True),
                    f"interval_score_qr_{split}": per_seed(
                        t, lambda v: float(interval_score(v["q_0.05"], v["q_0.95"], v["mi"]).mean()), "mist_qr"),
                    f"interval_score_prior_{split}": float(interval_score(np.full(len(t), lo), np.full(len(t), hi),
                                                                         t["mi"]).mean())})
        for name, g in _stratum_rows(t, edges).items():
            out[f"datasets_{split}_mi_{name}"] = len(g)
            if len(g):
                out[f"coverage_qr_{split}_mi_{name}"] = per_seed(g, coverage, "mist_qr")
                out[f"interval_score_ratio_prior_over_qr_{split}_mi_{name}"] = per_seed(
                    g, lambda v: interval_score_ratio_prior(v, lo, hi), "mist_qr", log=True)
            else:
                out[f"coverage_qr_{split}_mi_{name}"] = claims.exact(math.nan, "no datasets in this stratum")
        for n, g in t.groupby("n"):
            out[f"coverage_qr_n{n}_{split}"] = per_seed(g, coverage, "mist_qr")
    out["datasets_ood_unseen"] = min(int((table.split == split).sum()) for split in UNSEEN_FAMILIES)
    out["coverage_qr_ood_unseen"] = weakest_split(table, UNSEEN_FAMILIES, coverage, "mist_qr", farthest_from=0.9)
    main = table[table.split.isin(["in"])]
    boot = main[main.boot_lo.notna()] if "boot_lo" in main else main.iloc[:0]
    out.update({"datasets_bootstrap_subset_in": len(boot),
                "coverage_boot_in": coverage(boot, "boot_lo", "boot_hi") if len(boot) else math.nan,
                "coverage_gap_difference_boot_minus_qr_in": per_seed(boot, nominal_gap_difference, "mist_qr")
                if len(boot) else claims.exact(math.nan, "no bootstrap subset"),
                "width_qr_in": per_seed(main, lambda v: float((v["q_0.95"] - v["q_0.05"]).mean()), "mist_qr"),
                "width_prior": hi - lo})
    indep = table[table.split == "independent"]
    out.update({"datasets_independent": len(indep),
                "false_dependence_rate_independent": per_seed(indep, false_dependence_share, "mist_qr"),
                "qr_median_rank_correlation_in": per_seed(table[table.split == "in"],
                                                          lambda v: spearman(v["mi"], v["mist_qr"]), "mist_qr")})
    if "q_0.05@shipped" in table:
        shipped = seed_view(table[table.split == "in"], "shipped")
        out.update({"coverage_qr_shipped_in": coverage(shipped),
                    "interval_score_ratio_prior_over_shipped_qr_in": interval_score_ratio_prior(shipped, lo, hi)})
    return out


def runtime_table(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    """Every timing repeat of every method at every n of ``measure.timing``, the MIST network
    being the seed-0 (lowest seed) MSE run."""
    from replicate.papers.mist.analysis import trained_nets

    measure = _measure(cfg)
    nets = trained_nets(runs)
    net = nets[min(k for k in nets if k[0] == "mse")]
    return runtime_repeats(net, measure["timing"], measure["neural"], measure["ksg_k"])


def runtime(runs: pd.DataFrame, cfg, timing: pd.DataFrame | None = None) -> dict:
    """Runtime (Gritsai et al. 2025, Sec. 5): at ``measure.timing.reference_n``, InfoNCE's, KSG's
    and normal-score CCA's seconds per estimate over MIST's, batched and one at a time (geometric
    mean of the per-repeat ratios, t interval on the logs over repeats); the median seconds of
    every method at every n."""
    timing = runtime_table(runs, cfg) if timing is None else timing
    measure = _measure(cfg)
    at_ref = timing[timing.n == measure["timing"]["reference_n"]]
    methods = list(timing.method.unique())
    infonce = next(m for m in methods if m.startswith("InfoNCE"))
    ksg = next(m for m in methods if m.startswith("KSG"))
    out = {f"speedup_{name}_over_mist_{kind}": speedup(at_ref, slow, f"MIST ({label})")
           for name, slow in (("infonce", infonce), ("ksg", ksg), ("cca", "CCA on normal scores"))
           for kind, label in (("batched", "batched"), ("single", "one at a time"))}
    out.update({"infonce_steps": int(measure["neural"]["steps"]), "timing_repeats": int(timing.repeat.nunique())})
    medians = timing.groupby(["method", "n"]).seconds.median()
    out.update({f"seconds_{method}_n{n}": float(s) for (method, n), s in medians.items()})
    return out
