"""What the MIST notebooks measure: batched predictions, the evaluation table, error summaries,
calibration, and the export of trained weights for :func:`replicate.papers.mist.estimate`.

Notebook-only: no training module imports this file (the pipeline's training closure is
``module``, ``model``, ``data``, ``families``), so editing it never retrains a run."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from replicate.papers.mist import baselines
from replicate.papers.mist.checkpoint import CHECKPOINT_DIR, export_net, git_commit, import_net, load_net  # noqa: F401
from replicate.papers.mist.model import MISTNet
from replicate.papers.mist.testsets import EvalDataset, figure_sets
TAU_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


# --------------------------------------------------------------------------- predictions
@torch.no_grad()
def predict(net: MISTNet, datasets: list[EvalDataset], tau=None, batch: int = 64) -> np.ndarray:
    """Estimates (N,) for an MSE net, quantiles (N, T) at ``tau`` for a quantile net; datasets
    of the same (n, d) are stacked into batches (no padding needed)."""
    groups = defaultdict(list)
    for i, ds in enumerate(datasets):
        groups[(ds.x.shape, ds.y.shape)].append(i)
    tau_t = None if tau is None else torch.tensor(tau, dtype=torch.float32)
    out = np.zeros((len(datasets),) if tau is None else (len(datasets), len(tau)))
    for idx in groups.values():
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            x = torch.from_numpy(np.stack([datasets[i].x for i in chunk])).float()
            y = torch.from_numpy(np.stack([datasets[i].y for i in chunk])).float()
            out[chunk] = net(x, y, tau=tau_t).numpy()
    return out


BASELINES = ("ksg", "ksg_ranks", "cca", "cca_ns", "infonce", "mine", "nwj")
NEURAL = ("infonce", "mine", "nwj")


def baseline_columns(datasets: list[EvalDataset], ksg_k: int = 5) -> pd.DataFrame:
    """Per dataset the classical baselines, each clipped at 0 as MIST is (MI >= 0; a projection
    onto the support can only lower a squared error): KSG, KSG on normal scores (``ksg_ranks``),
    the Gaussian closed form on the raw sample (``cca``) and on the Ledoit–Wolf-shrunk
    normal-score correlation (``cca_ns``)."""
    clip = lambda v: max(float(v), 0.0)
    return pd.DataFrame({"ksg": [clip(baselines.ksg(ds.x, ds.y, ksg_k)) for ds in datasets],
                         "ksg_ranks": [clip(baselines.ksg_normal_scores(ds.x, ds.y, ksg_k)) for ds in datasets],
                         "cca": [clip(baselines.gaussian_mi_estimate(ds.x, ds.y)) for ds in datasets],
                         "cca_ns": [baselines.cca_normal_scores(ds.x, ds.y) for ds in datasets]})


def network_columns(datasets: list[EvalDataset], nets: dict, tau=TAU_GRID) -> pd.DataFrame:
    """Per dataset and network, keyed ``(objective, label)`` (label: the meta-training seed, or
    ``shipped``): ``mist@<label>`` for an MSE network, ``q_<τ>@<label>`` and its median
    ``mist_qr@<label>`` for a quantile network."""
    cols = {}
    for (objective, label), net in sorted(nets.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        if objective == "mse":
            cols[f"mist@{label}"] = predict(net, datasets)
        else:
            q = predict(net, datasets, tau=tau)
            for j, t in enumerate(tau):
                cols[f"q_{t:g}@{label}"] = q[:, j]
            cols[f"mist_qr@{label}"] = q[:, list(tau).index(0.5)] if 0.5 in tau else predict(net, datasets, tau=(0.5,))[:, 0]
    return pd.DataFrame(cols)


def estimates_table(sets: dict[str, list[EvalDataset]], nets: dict, ksg_k: int = 5, neural: dict | None = None,
                    tau=TAU_GRID) -> pd.DataFrame:
    """One row per test dataset: split, family, n, d, dy, true MI, the baselines
    (``baseline_columns``; InfoNCE, MINE and NWJ on ``neural_subset`` when ``neural`` is given,
    NaN elsewhere) and every network's estimates (``network_columns``)."""
    rows = []
    for split, datasets in sets.items():
        info = pd.DataFrame({"split": split, "family": [ds.family for ds in datasets],
                             "n": [ds.n for ds in datasets], "d": [ds.d for ds in datasets],
                             "dy": [ds.dy for ds in datasets], "mi": [ds.mi for ds in datasets]})
        rows.append(pd.concat([info, baseline_columns(datasets, ksg_k), network_columns(datasets, nets, tau)], axis=1))
    table = pd.concat(rows, ignore_index=True)
    if neural:
        table = add_neural(table, sets, neural)
    return table


def neural_subset(table: pd.DataFrame, every: int, skip=("independent",)) -> pd.Index:
    """A stratified 1/``every`` of the datasets: within every (split, n) group, in order of true
    MI, every ``every``-th dataset (so each sample size and the whole MI range are represented);
    splits in ``skip`` are left out."""
    picked = []
    for _, g in table[~table.split.isin(skip)].groupby(["split", "n"], sort=True):
        picked.extend(g.sort_values("mi", kind="stable").index[::every])
    return pd.Index(sorted(picked))


def dataset_of(table: pd.DataFrame, sets: dict[str, list[EvalDataset]], row: int) -> EvalDataset:
    """The evaluation dataset behind row ``row`` of an ``estimates_table`` (splits in order)."""
    split = table.at[row, "split"]
    return sets[split][row - int(np.flatnonzero(table.split.to_numpy() == split)[0])]


def add_neural(table: pd.DataFrame, sets: dict[str, list[EvalDataset]], spec: dict) -> pd.DataFrame:
    """Columns ``infonce``, ``mine``, ``nwj`` (clipped at 0) on ``neural_subset`` (NaN elsewhere):
    each estimate is a critic trained for ``spec["steps"]`` steps."""
    table = table.copy()
    for name in NEURAL:
        table[name] = np.nan
    for row in neural_subset(table, spec["every"]):
        ds = dataset_of(table, sets, row)
        for name in NEURAL:
            value = baselines.neural_estimate(ds.x, ds.y, name, spec["steps"], spec["lr"], spec["hidden"], spec["embed"])
            table.at[row, name] = max(value, 0.0)
    return table


def subset_per_bin(table: pd.DataFrame, per_bin: int, splits=("in", "out")) -> pd.Index:
    """Row labels of the first ``per_bin`` datasets of every (split, n, d) bin (families in turn),
    for the splits in ``splits``."""
    picked = []
    for _, group in table[table.split.isin(splits)].groupby(["split", "n", "d"], sort=True):
        picked.extend(group.index[:: max(1, len(group) // per_bin)][:per_bin])
    return pd.Index(picked)


def add_bootstrap(table: pd.DataFrame, sets: dict[str, list[EvalDataset]], spec: dict, ksg_k: int,
                  seed: int = 0, splits=("in",)) -> pd.DataFrame:
    """Columns ``boot_lo``/``boot_hi``: percentile bootstrap interval of KSG on a per-(split, n, d)
    subset of ``splits`` (NaN elsewhere)."""
    table = table.copy()
    table["boot_lo"] = table["boot_hi"] = np.nan
    rng = np.random.default_rng(seed)
    estimator = lambda x, y: baselines.ksg(x, y, ksg_k)
    for row in subset_per_bin(table, spec["per_bin"], splits):
        ds = dataset_of(table, sets, row)
        lo, hi = baselines.bootstrap_interval(ds.x, ds.y, rng, spec["resamples"], spec["levels"], estimator)
        table.at[row, "boot_lo"], table.at[row, "boot_hi"] = lo, hi
    return table


def error_summary(table: pd.DataFrame, by: str, methods: dict[str, str]) -> pd.DataFrame:
    """Long table: split, ``by``, method (label), MSE and count over the rows with an estimate."""
    out = []
    for column, label in methods.items():
        sq = (table[column] - table["mi"]) ** 2
        grouped = table.assign(sq=sq).dropna(subset=["sq"]).groupby(["split", by])["sq"]
        frame = grouped.agg(["mean", "count"]).rename(columns={"mean": "mse"}).reset_index()
        out.append(frame.assign(method=label))
    return pd.concat(out, ignore_index=True)


# --------------------------------------------------------------------------- calibration
def calibration_curve(table: pd.DataFrame, tau=TAU_GRID) -> pd.DataFrame:
    """Empirical P(true MI ≤ q̂_τ) per split and τ."""
    return pd.DataFrame([{"split": split, "tau": t, "empirical": float((g["mi"] <= g[f"q_{t:g}"]).mean())}
                         for split, g in table.groupby("split") for t in tau])


def crossing_rate(table: pd.DataFrame, tau=TAU_GRID) -> float:
    """Fraction of datasets whose quantiles decrease anywhere along the τ grid."""
    q = table[[f"q_{t:g}" for t in tau]].to_numpy()
    return float((np.diff(q, axis=1) < -1e-9).any(axis=1).mean())


def coverage(table: pd.DataFrame, lo: str, hi: str) -> pd.Series:
    """Per row: 1 if lo <= true MI <= hi, NaN where the interval is missing."""
    inside = ((table[lo] <= table["mi"]) & (table["mi"] <= table[hi])).astype(float)
    return inside.where(table[lo].notna())


# --------------------------------------------------------------------------- timing
def seconds_per_call(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# --------------------------------------------------------------------------- notebooks
def trained_nets(runs: pd.DataFrame) -> dict[tuple[str, int], MISTNet]:
    """{(objective, seed): trained network} from a figure's runs table (every seed of every
    objective)."""
    seeds = runs["seed"] if "seed" in runs else pd.Series(0, index=runs.index)
    return {(r.objective, int(s)): load_net(r.run_dir) for r, s in zip(runs.itertuples(), seeds)}


def shipped_nets(folder: Path = CHECKPOINT_DIR) -> dict[tuple[str, str], MISTNet]:
    """{(objective, "shipped"): network} of the checkpoints shipped with the package (one
    meta-training each, the larger network; a reference beside the seeds, not a unit)."""
    return {(p.stem, "shipped"): import_net(p) for p in (Path(folder) / "mse.pt", Path(folder) / "quantile.pt")
            if p.is_file()}


CACHE_SOURCES = ("analysis.py", "testsets.py", "ood.py", "families.py", "data.py", "baselines.py", "model.py",
                 "checkpoint.py")


def cache_key(*parts) -> str:
    """sha256 of ``parts`` (JSON) and of the source of every module an evaluation depends on."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    here = Path(__file__).resolve().parent
    for name in CACHE_SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:20]


def cached(folder: Path | None, key: str, compute):
    """``compute()``, stored as ``folder/<key>.pkl`` and read back on the next call with the same key
    (the key covers the runs, the specs and the code: a pure-function cache shared by the MIST
    notebooks, which evaluate the same networks on the same datasets). ``folder=None``: no cache."""
    import os
    import pickle

    if folder is None:
        return compute()
    path = Path(folder) / f"{key}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(value))
    tmp.replace(path)  # atomic: notebooks running at once never read half a file
    return value


def cache_folder(runs: pd.DataFrame) -> Path | None:
    """``<out>/cache/mist`` of the run store holding ``runs`` (``<out>/runs/mist/<hash>``)."""
    dirs = [Path(d) for d in runs.run_dir]
    return dirs[0].parents[2] / "cache" / "mist" if dirs else None


def baselines_table(measure: dict, folder: Path | None) -> pd.DataFrame:
    """The held-out datasets of ``measure`` (``testsets.figure_sets``) with every baseline's
    estimate (``estimates_table`` without networks), cached under ``folder``: it depends on the
    test sets and the code only, not on the trained networks."""
    spec = {k: measure.get(k) for k in ("eval", "ood", "independent", "test_salt", "ksg_k", "neural")}
    return cached(folder, cache_key("baselines-v2", spec),
                  lambda: estimates_table(figure_sets(measure), {}, measure["ksg_k"], measure.get("neural")))


def evaluate(runs: pd.DataFrame, measure: dict, shipped: bool = True) -> tuple[pd.DataFrame, dict]:
    """(estimates table, test sets) of a figure's runs on every held-out split of ``measure``:
    ``baselines_table`` and every network's columns (``network_columns``; with ``shipped``, the
    shipped checkpoints' too), both cached so that the MIST notebooks compute them once."""
    sets = figure_sets(measure)
    folder = cache_folder(runs)
    base = baselines_table(measure, folder)
    spec = {k: measure.get(k) for k in ("eval", "ood", "independent", "test_salt")}
    key = cache_key("networks-v2", sorted(Path(d).name for d in runs.run_dir), spec, shipped)

    def compute():
        nets = {**trained_nets(runs), **(shipped_nets() if shipped else {})}
        return network_columns([ds for split in sets.values() for ds in split], nets)

    nets = cached(folder, key, compute)
    return pd.concat([base.reset_index(drop=True), nets.reset_index(drop=True)], axis=1), sets


def export_checkpoints(runs: pd.DataFrame, scale: str, folder: Path = CHECKPOINT_DIR) -> pd.DataFrame:
    """Write every run's network to ``folder/<objective>.pt`` with its provenance (config hash,
    git commit, trained ranges; the weights' sha256 is added on export); one row per file."""
    rows = []
    for r in runs.drop_duplicates("objective").itertuples():
        net = load_net(r.run_dir)
        record = {**net.provenance, "scale": scale, "git_commit": git_commit()}
        path = export_net(net, Path(folder) / f"{r.objective}.pt", record)
        saved = import_net(path).provenance
        rows.append({"file": path.name, "config hash": saved["config_hash"], "git commit": saved["git_commit"][:12],
                     "weights sha256": saved["weights_sha256"][:16], "kB": round(path.stat().st_size / 1024)})
    return pd.DataFrame(rows)
