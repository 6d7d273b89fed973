"""Forward and forward+backward time of vanilla, recursive and MoR models (Bae et al. 2025).

Models take the `mixture_of_recursions/isoflop` training config's shape at the chosen scale
(default: 8 block applications, d 64, batch 16 x 64 bytes). "vanilla (equal params)" has as
many unique blocks as the N_r = 2 recursive models (1 + 3 + 1 = 5), so it matches their unique
parameters; "vanilla" has 8 blocks and matches their block applications. Steps are timed in a
bare loop, interleaved across models in rounds after warm-up; reported are median milliseconds
of a forward pass (no grad) and of forward + backward, with the FLOPs counter's training FLOPs
per step. MoR-EC trains on gathered top-k tokens; MoR-TC and the causal rule run the masked
path (whole sequence computed, keys restricted), so their wall time does not shrink with FLOPs.
MoR-EC models use the training config's router (the paper's auxiliary loss) unless named: the
random router (no router, no auxiliary loss) and the detached-BCE control are the isoFLOP
figure's controls; a run's wall time is about its steps times its fwd+bwd time.

    python benchmarks/mixture_of_recursions_step_time.py [--scale default] [--steps 20] [--rounds 3] [--threads 1]

Reference (2026-11-25, 2-core CPU VM shared with other jobs, 1 thread, default scale) is in the
mixture_of_recursions report; rerun on a quiet machine for clean numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from replicate import config as C
from replicate.papers.mixture_of_recursions.flops import train_flops_per_step
from replicate.papers.mixture_of_recursions.model import RecursiveLM, lm_config_for, unique_params

MODELS = {
    "vanilla": {"variant": "vanilla"},
    "vanilla (equal params)": {"variant": "vanilla", "n_layer": 5},
    "recursive N_r=2": {"variant": "recursive", "n_rec": 2},
    "MoR-EC N_r=2 (top-k)": {"variant": "mor_ec", "n_rec": 2},
    "MoR-EC N_r=2 (causal rule)": {"variant": "mor_ec", "n_rec": 2, "rule": "threshold"},
    "MoR-TC N_r=2": {"variant": "mor_tc", "n_rec": 2},
    "MoR-EC N_r=3 (top-k)": {"variant": "mor_ec", "n_rec": 3},
    "MoR-EC N_r=3 +KV share": {"variant": "mor_ec", "n_rec": 3, "kv_share": True},
    "MoR-EC N_r=2 random router": {"variant": "mor_ec", "n_rec": 2, "rand_router": True},
    "MoR-EC N_r=2 detached aux 0.1": {"variant": "mor_ec", "n_rec": 2, "aux_mode": "detached", "aux_coef": 0.1},
}


def build(scale: str):
    cfg = C.compose("mixture_of_recursions/isoflop", "cpu", scale)
    run = OmegaConf.to_container(C.run_config(cfg, 0).run, resolve=True)
    base, data = run["module"]["model"], run["data"]
    x = torch.randint(0, 256, (data["batch_size"], data["seq_len"]), generator=torch.Generator().manual_seed(0))
    models = {}
    for name, spec in MODELS.items():
        spec = dict(spec)
        rule = spec.pop("rule", "topk")
        lm, mor = lm_config_for({**base, **spec})
        torch.manual_seed(0)
        models[name] = (RecursiveLM(lm, mor), rule, train_flops_per_step(lm, mor, data["seq_len"], data["batch_size"]))
    return models, x


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="default")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models, x = build(args.scale)

    def forward(m, rule):
        with torch.no_grad():
            m(x, rule=rule)

    def train_step(m, rule):
        logits, routing = m(x, rule=rule, return_routing=True)
        (F.cross_entropy(logits.flatten(0, 1), x.flatten()) + m.router_loss(routing)[0]).backward()

    for m, rule, _ in models.values():  # warm-up
        forward(m, rule), train_step(m, rule)
    fwd = {name: [] for name in models}
    step = {name: [] for name in models}
    for _ in range(args.rounds):
        for _ in range(args.steps):
            for name, (m, rule, _) in models.items():
                fwd[name].append(timed(lambda: forward(m, rule)))
                step[name].append(timed(lambda: train_step(m, rule)))
    rows = [{"model": name, "unique_params": unique_params(m), "train_gflops_per_step": flops / 1e9,
             "forward_ms": 1e3 * statistics.median(fwd[name]), "fwd_bwd_ms": 1e3 * statistics.median(step[name])}
            for name, (m, _, flops) in models.items()]
    print(json.dumps(rows, indent=1))
    print(f"\n{'model':30s} {'params':>9s} {'GFLOP/step':>11s} {'fwd ms':>8s} {'fwd+bwd ms':>11s}")
    for r in rows:
        print(f"{r['model']:30s} {r['unique_params']:9d} {r['train_gflops_per_step']:11.3f} "
              f"{r['forward_ms']:8.2f} {r['fwd_bwd_ms']:11.2f}")


if __name__ == "__main__":
    main()
