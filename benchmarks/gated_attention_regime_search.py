"""Regime search for the Gated Attention figures: where does the baseline form an attention sink
in every seed, where does each variant break at large learning rates, and does any CPU-sized
setting grow massive activations (Sun et al. 2024: a few entries of the residual stream
thousands of times the median), within the CPU budget of the default scale?

    python benchmarks/gated_attention_regime_search.py            # every setting (~15 CPU-min)
    python benchmarks/gated_attention_regime_search.py --only sink
    python benchmarks/gated_attention_regime_search.py --only massive

A run replaces the records of the settings it trains and keeps every other record.

Each setting trains with a plain PyTorch loop over the package's own LightningModule
(``GatedAttentionLM``: same model, optimiser, schedule and loss) and datamodules, one torch
thread, and probes the model (``GatedAttentionLM.probe_metrics``) at the listed steps. The loop
is not the pipeline's Lightning trainer, so numbers can differ from the figures' runs in the
last digits; it exists to choose the regimes, not to judge claims. Results go to
``benchmarks/gated_attention_regime_search.json`` (one record per setting and seed), which the
``attention_sink`` and ``lr_stability`` notebooks show as the record of what was tried.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from replicate.data.bigram_backcopy import BigramBackcopyDataModule
from replicate.data.text import TextDataModule
from replicate.papers.gated_attention.module import GatedAttentionLM

OUT = Path(__file__).with_suffix(".json")
CHOSEN = {"sink": "d64-seq32-b32-lr1e-2", "lr": "text-seq64-150", "massive": "text-seq64-150"}  # the settings the configs train

BB_MODEL = dict(vocab_size=257, n_layer=1, d_model=128, n_head=1, mlp="relu", mlp_ratio=4.0,
                norm="layer", pos="learned", qk_norm=False, init="torch_default", bias=False,
                tie_embeddings=False)
TX_MODEL = dict(vocab_size=257, n_layer=2, d_model=64, n_head=4, mlp="swiglu", mlp_ratio=4.0,
                norm="rms", pos="rope", qk_norm=False, init="normal0.02", bias=False,
                tie_embeddings=False)

# (name, task, gate, lr, steps, model overrides, data overrides, probe steps, seeds)
SINK = [
    ("d64-seq32-b32-lr3e-3", "sink", "none", 3e-3, 800, {"d_model": 64}, {"seq_len": 32, "batch_size": 32},
     (100, 200, 300, 400, 600, 800), range(5)),
    ("d64-seq32-b32-lr3e-3", "sink", "headwise", 3e-3, 800, {"d_model": 64}, {"seq_len": 32, "batch_size": 32},
     (100, 200, 300, 400, 600, 800), range(5)),
    ("d64-seq32-b32-lr1e-2", "sink", "none", 1e-2, 600, {"d_model": 64}, {"seq_len": 32, "batch_size": 32},
     (200, 400, 600), range(10)),
]
LR = [
    ("text-seq128-300", "lr", gate, lr, 300, {}, {}, (300,), range(1))
    for gate in ("none", "headwise", "elementwise") for lr in (0.1, 0.3, 1.0)
] + [
    ("text-seq64-300", "lr", "none", lr, 300, {}, {"seq_len": 64}, (300,), range(1))
    for lr in (1e-3, 4e-3, 1.6e-2, 0.25, 0.5, 1.0)
] + [
    # the shipped length: where does each variant stop training (0.03-1.0)?
    ("text-seq64-150", "lr", gate, lr, 150, {}, {"seq_len": 64}, (150,), range(2))
    for gate in ("none", "headwise", "elementwise") for lr in (0.03, 0.06, 0.12, 0.25, 0.5)
]
# Massive activations (baseline only): longer training, wider, deeper, larger lr than the shipped
# text regime; each records max |hidden| and median |hidden| per layer.
MASSIVE = [
    (name, "massive", "none", lr, steps, model, {"seq_len": 64}, (steps,), range(1))
    for name, lr, steps, model in (
        ("text-seq64-150", 4e-3, 150, {}),
        ("text-seq64-150", 3e-2, 150, {}),
        ("text-seq64-600", 4e-3, 600, {}),
        ("text-d128-300", 4e-3, 300, {"d_model": 128}),
        ("text-4layer-300", 4e-3, 300, {"n_layer": 4}),
    )
]


def train(task: str, gate: str, seed: int, lr: float, steps: int, model: dict, data: dict,
          probe_at) -> dict:
    torch.manual_seed(seed)
    if task == "sink":
        d = {**dict(seq_len=64, batch_size=64, max_steps=steps, seed=seed, val_batches=4), **data}
        m = dict(BB_MODEL, **model, max_len=d["seq_len"] + 1)
        o = dict(lr=lr, betas=(0.9, 0.99), weight_decay=1e-4, warmup_steps=0, schedule="constant",
                 max_steps=steps)
        dm = BigramBackcopyDataModule(**d)
    else:
        d = {**dict(source="stdlib", seq_len=128, batch_size=16, max_steps=steps, seed=seed,
                    val_batches=8, max_bytes=4_000_000), **data}
        m = dict(TX_MODEL, **model, max_len=d["seq_len"])
        o = dict(lr=lr, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=10, schedule="constant",
                 max_steps=steps)
        dm = TextDataModule(**d)
    module = GatedAttentionLM(dict(m, gate=gate), o)
    dm.setup("fit")
    opts = module.configure_optimizers()
    opt, sched = opts["optimizer"], opts["lr_scheduler"]["scheduler"]
    loader = DataLoader(dm.train_dataset(offset=0), batch_size=d["batch_size"], drop_last=True)
    train_loss, probes, status, t0 = [], {}, "finished", time.process_time()
    for step, (x, y) in enumerate(loader, 1):
        loss = module._loss((x, y))
        if not math.isfinite(loss.item()):
            status = "diverged"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 5 == 0:
            train_loss.append(loss.item())
        if step in probe_at:
            p = module.probe_metrics(dm)
            probes[step] = {k: p.get(k) for k in ("val_loss", "first_token_attention_mean",
                                                  "max_abs_hidden", "median_abs_hidden", "gate_mean")}
        if step >= steps:
            break
    return {"status": status, "cpu_seconds": time.process_time() - t0, "train_loss": train_loss,
            "probes": probes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("sink", "lr", "massive"))
    ap.add_argument("--new", action="store_true", help="train only settings without a record")
    args = ap.parse_args()
    torch.set_num_threads(1)
    key = lambda r: (r["setting"], r["figure"], r["gate"], r["lr"], r["steps"], r["seed"])  # noqa: E731
    old = json.loads(OUT.read_text())["records"] if OUT.exists() else []
    done = {key(r): r for r in old}
    for name, task, gate, lr, steps, model, data, probe_at, seeds in MASSIVE + LR + SINK:
        if args.only not in (None, task):
            continue
        for seed in seeds:
            k = (name, task, gate, lr, steps, seed)
            if args.new and k in done:
                continue
            r = train(task.replace("massive", "lr"), gate, seed, lr, steps, model, data, probe_at)
            done[k] = {"setting": name, "figure": task, "gate": gate, "lr": lr, "steps": steps, "seed": seed, **r}
            print(json.dumps({k: v for k, v in done[k].items() if k != "train_loss"}), flush=True)
            note = "written by benchmarks/gated_attention_regime_search.py; cpu_seconds are process CPU time"
            OUT.write_text(json.dumps({"note": note, "chosen": CHOSEN, "records": list(done.values())},
                                      indent=1) + "\n")


if __name__ == "__main__":
    main()
