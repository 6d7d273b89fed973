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
from replicate.papers.mist.testsets import (EvalDataset, copula_sets, evaluation_sets,  # noqa: F401
                                            independence_sets)
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


def eval_datasets(spec: dict, mi_max: float, extra: dict | None = None) -> dict[str, list[EvalDataset]]:
    """The in- and out-of-meta-distribution evaluation sets of a figure's ``measure.eval`` (plus
    ``unequal`` (d_x, d_y) cells), and, from ``extra`` (``measure.copula`` / ``measure.independent``
    when given), the external copula and independence splits."""
    unequal = [tuple(p) for p in spec.get("unequal", [])]
    sets = {split: evaluation_sets(split, spec["n_grid"], spec["d_grid"], spec["per_cell"], mi_max,
                                   unequal=unequal) for split in ("in", "out")}
    extra = extra or {}
    if extra.get("copula"):
        c = extra["copula"]
        sets["copula"] = copula_sets(c["n_grid"], c["d_grid"], c["per_cell"], c["mi_max"],
                                     [tuple(p) for p in c.get("unequal", [])])
    if extra.get("independent"):
        c = extra["independent"]
        sets["independent"] = independence_sets(c["n_grid"], c["d_grid"], c["per_cell"],
                                                [tuple(p) for p in c.get("unequal", [])])
    return sets


def estimates_table(sets: dict[str, list[EvalDataset]], nets: dict[str, MISTNet], ksg_k: int = 5,
                    tau=TAU_GRID) -> pd.DataFrame:
    """One row per evaluation dataset: split, family, n, d, true MI, the MIST estimate, MIST-QR's
    quantiles ``q_<τ>`` (its median is ``mist_qr``), KSG, KSG on normal scores (``ksg_ranks``) and the
    Gaussian (CCA) estimate."""
    rows = []
    for split, datasets in sets.items():
        table = pd.DataFrame({"split": split, "family": [ds.family for ds in datasets],
                              "n": [ds.n for ds in datasets], "d": [ds.d for ds in datasets],
                              "dy": [ds.dy for ds in datasets], "mi": [ds.mi for ds in datasets]})
        table["mist"] = predict(nets["mse"], datasets)
        quantiles = predict(nets["quantile"], datasets, tau=tau)
        for j, t in enumerate(tau):
            table[f"q_{t:g}"] = quantiles[:, j]
        table["mist_qr"] = (table["q_0.5"] if 0.5 in tau
                            else predict(nets["quantile"], datasets, tau=(0.5,))[:, 0])
        table["ksg"] = [baselines.ksg(ds.x, ds.y, ksg_k) for ds in datasets]
        table["ksg_ranks"] = [baselines.ksg_normal_scores(ds.x, ds.y, ksg_k) for ds in datasets]
        table["cca"] = [baselines.gaussian_mi_estimate(ds.x, ds.y) for ds in datasets]
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def subset_per_bin(table: pd.DataFrame, per_bin: int, splits=("in", "out")) -> pd.Index:
    """Row labels of the first ``per_bin`` datasets of every (split, n, d) bin (families in turn),
    for the splits in ``splits``."""
    picked = []
    for _, group in table[table.split.isin(splits)].groupby(["split", "n", "d"], sort=True):
        picked.extend(group.index[:: max(1, len(group) // per_bin)][:per_bin])
    return pd.Index(picked)


def dataset_of(table: pd.DataFrame, sets: dict[str, list[EvalDataset]], row: int) -> EvalDataset:
    """The evaluation dataset behind row ``row`` of an ``estimates_table`` (splits in order)."""
    split = table.at[row, "split"]
    return sets[split][row - int(np.flatnonzero(table.split.to_numpy() == split)[0])]


def add_infonce(table: pd.DataFrame, sets: dict[str, list[EvalDataset]], spec: dict) -> pd.DataFrame:
    """Column ``infonce`` on a per-bin subset (NaN elsewhere): neural estimators are slow."""
    table = table.copy()
    table["infonce"] = np.nan
    for row in subset_per_bin(table, spec["per_bin"]):
        ds = dataset_of(table, sets, row)
        table.at[row, "infonce"] = baselines.infonce(ds.x, ds.y, spec["steps"], spec["lr"], spec["hidden"],
                                                     spec["embed"])
    return table


def add_bootstrap(table: pd.DataFrame, sets: dict[str, list[EvalDataset]], spec: dict, ksg_k: int,
                  seed: int = 0) -> pd.DataFrame:
    """Columns ``boot_lo``/``boot_hi``: percentile bootstrap interval of KSG on a per-bin subset."""
    table = table.copy()
    table["boot_lo"] = table["boot_hi"] = np.nan
    rng = np.random.default_rng(seed)
    estimator = lambda x, y: baselines.ksg(x, y, ksg_k)
    for row in subset_per_bin(table, spec["per_bin"]):
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
def trained_nets(runs: pd.DataFrame) -> dict[str, MISTNet]:
    """{objective: trained network} from a figure's runs table (one run per objective)."""
    return {r.objective: load_net(r.run_dir) for r in runs.itertuples()}


CACHE_SOURCES = ("analysis.py", "testsets.py", "families.py", "data.py", "baselines.py", "model.py",
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


def evaluate(runs: pd.DataFrame, measure: dict, mi_max: float, extra_splits: bool = False,
             infonce: bool = False) -> tuple[pd.DataFrame, dict]:
    """(estimates table, evaluation sets) of a figure's runs on its ``measure.eval`` sets (and the
    copula and independence splits of ``measure`` when ``extra_splits``; the InfoNCE column when
    ``infonce``). The table is cached (``cached``) so that the MIST notebooks compute it once."""
    extra = {k: measure.get(k) for k in ("copula", "independent")} if extra_splits else None
    sets = eval_datasets(measure["eval"], mi_max, extra)
    key = cache_key("estimates", sorted(Path(d).name for d in runs.run_dir), measure["eval"], mi_max, extra,
                    measure["ksg_k"], measure["infonce"] if infonce else None)

    def compute():
        table = estimates_table(sets, trained_nets(runs), measure["ksg_k"])
        return add_infonce(table, sets, measure["infonce"]) if infonce else table

    return cached(cache_folder(runs), key, compute), sets


def export_checkpoints(runs: pd.DataFrame, scale: str, folder: Path = CHECKPOINT_DIR) -> pd.DataFrame:
    """Write every run's network to ``folder/<objective>.pt`` with its provenance (config hash,
    git commit, trained ranges; the weights' sha256 is added on export); one row per file."""
    rows = []
    for r in runs.itertuples():
        net = load_net(r.run_dir)
        record = {**net.provenance, "scale": scale, "git_commit": git_commit()}
        path = export_net(net, Path(folder) / f"{r.objective}.pt", record)
        saved = import_net(path).provenance
        rows.append({"file": path.name, "config hash": saved["config_hash"], "git commit": saved["git_commit"][:12],
                     "weights sha256": saved["weights_sha256"][:16], "kB": round(path.stat().st_size / 1024)})
    return pd.DataFrame(rows)
