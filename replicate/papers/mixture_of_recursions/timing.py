"""The throughput figure's decoding protocol (Bae et al. 2025, Sec. 4.2 and Fig. 4): KV-cache bytes
and generation timings of trained models, measured on the machine that runs it.

:func:`decode_runs` loads every run of the figure, decodes greedily with recursion-wise caching
(``decode.generate``, causal routing), and returns the run table with the measured columns that
``measures.throughput`` reads. The protocol:

1. One greedy generation per trained model (every seed) at the fixed batch (``measure.batch``)
   counts its KV-cache bytes per sequence (deterministic) and its mean recursion depth.
2. The memory budget is the same seed's vanilla cache at the fixed batch; each model's budget
   batch is the largest batch whose cache fits it.
3. After one short warm-up per (model, batch), every (model, batch) pair generates once per round,
   ``measure.repeats`` rounds, interleaved so that slow drifts of machine load fall on all pairs
   alike. Each round's seconds are kept: a speed-up is a ratio of rates within one round.

Notebook-only: no training module imports this one.
"""

from __future__ import annotations

import platform

import numpy as np
import pandas as pd
import torch

from replicate import runs as runs_lib
from replicate.papers.mixture_of_recursions.analysis import probe_label, run_seed
from replicate.papers.mixture_of_recursions.decode import generate

BOS = 256
WARMUP_TOKENS = 4


def decode_device(cfg) -> tuple[str, str]:
    """``(torch device, its name for the json)``: the GPU when the hardware config asks for one and
    there is one, else the CPU with one thread."""
    if cfg.hardware.accelerator == "gpu" and torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name()
    torch.set_num_threads(1)
    return "cpu", f"CPU ({platform.processor() or platform.machine()}), 1 thread"


def prompts(val: torch.Tensor, batch: int, prompt_len: int, device: str) -> torch.Tensor:
    """``batch`` prompts of ``prompt_len`` tokens: BOS, then bytes of evenly spaced validation windows."""
    starts = np.linspace(0, len(val) - prompt_len - 1, batch).astype(int)
    rows = [torch.cat([torch.tensor([BOS]), val[s: s + prompt_len - 1].long()]) for s in starts]
    return torch.stack(rows).to(device)


def decode_runs(runs: pd.DataFrame, cfg, device: str, device_name: str) -> pd.DataFrame:
    """``runs`` with, per run: ``label``, ``variant``, ``n_rec``, ``kv_share``, ``seed`` (from its probes),
    ``cache_kb_per_seq``, ``mean_depth``, ``batch`` (the fixed one), ``budget_batch``,
    ``seconds_fixed`` and ``seconds_budget`` (one generation's seconds per timing round),
    ``generated_per_seq`` (tokens each sequence generates) and ``device``: the protocol of the
    module docstring."""
    m = cfg.figure.measure
    table = runs.copy()
    table["label"] = [probe_label(p) for p in runs.probes]
    table["variant"] = [p["variant"] for p in runs.probes]
    table["n_rec"] = [int(p["n_rec"]) if p["variant"] != "vanilla" else 0 for p in runs.probes]
    table["kv_share"] = [bool(p["kv_share"]) for p in runs.probes]
    table["seed"] = [run_seed(r) for r in runs.itertuples()]
    vanilla_seeds = table.seed[table.variant == "vanilla"]
    if vanilla_seeds.duplicated().any() or not set(table.seed) <= set(vanilla_seeds):
        raise ValueError(f"decode_runs: the throughput protocol needs one vanilla run per seed; vanilla seeds "
                         f"{sorted(vanilla_seeds)}, seeds {sorted(set(table.seed))}")
    models = [runs_lib.load_module(d).model.to(device).eval() for d in table.run_dir]
    val = runs_lib.load_datamodule(table.run_dir.iloc[0]).corpus.val
    max_len = models[0].cfg.max_len
    ask = lambda batch: prompts(val, batch, m.prompt_len, device)  # noqa: E731
    fixed = [generate(model, ask(m.batch), max_len) for model in models]
    table["cache_kb_per_seq"] = [r["cache_bytes_per_seq"] / 1024 for r in fixed]
    table["mean_depth"] = [r["mean_depth"] for r in fixed]
    vanilla_kb = table[table.variant == "vanilla"].set_index("seed").cache_kb_per_seq
    table["batch"] = int(m.batch)
    table["budget_batch"] = [int(vanilla_kb[seed] * m.batch // kb) for seed, kb in zip(table.seed, table.cache_kb_per_seq)]
    pairs = sorted({(i, int(b)) for i in range(len(models)) for b in (m.batch, table.budget_batch.iloc[i])})
    for i, b in pairs:
        generate(models[i], ask(b), m.prompt_len + WARMUP_TOKENS)
    seconds = {pair: [] for pair in pairs}
    for _ in range(m.repeats):
        for i, b in pairs:
            seconds[(i, b)].append(generate(models[i], ask(b), max_len)["seconds"])
    table["seconds_fixed"] = [seconds[(i, int(m.batch))] for i in range(len(models))]
    table["seconds_budget"] = [seconds[(i, int(b))] for i, b in enumerate(table.budget_batch)]
    table["generated_per_seq"] = max_len - m.prompt_len
    table["device"] = device_name
    return table


def rate_table(decoded: pd.DataFrame) -> pd.DataFrame:
    """For display: per model (mean over its seeds), cache KB per sequence, mean depth, median tokens/s
    at the fixed and at the budget batch, and each rate over vanilla's (ratios of these means; the
    claims use per-seed ratios, ``measures.throughput``)."""
    rate = lambda batch, seconds: batch * decoded.generated_per_seq / seconds.map(np.median)  # noqa: E731
    per_run = pd.DataFrame({"cache KB / seq": decoded.cache_kb_per_seq.to_numpy(),
                            "mean depth": decoded.mean_depth.to_numpy(),
                            "tok/s @ fixed batch": rate(decoded.batch, decoded.seconds_fixed).to_numpy(),
                            "budget batch": decoded.budget_batch.to_numpy(),
                            "tok/s @ budget batch": rate(decoded.budget_batch, decoded.seconds_budget).to_numpy()},
                           index=decoded.label.to_numpy()).astype(float)
    table = per_run.groupby(level=0, sort=False).mean()
    table["seeds"] = per_run.groupby(level=0, sort=False).size()
    vanilla = table.loc[decoded.label[decoded.variant == "vanilla"].iloc[0]]
    table["speed-up @ fixed"] = table["tok/s @ fixed batch"] / vanilla["tok/s @ fixed batch"]
    table["speed-up @ budget"] = table["tok/s @ budget batch"] / vanilla["tok/s @ budget batch"]
    return table
