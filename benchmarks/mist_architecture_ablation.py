"""MIST architecture ablation: the official row self-attention block and dropout,
measured against variants without them, at an equal short budget on one CPU thread.

Each variant is a change of the official architecture (``OFFICIAL``), trained with plain MSE (not
the shipped weighted loss) on the default-scale meta-distribution
(``configs/training/mist/meta.yaml``: families, n in 10..200, d_x, d_y in 1..8, MI prior with mass
at 0) for ``--steps`` steps of 64 datasets, with the default schedule (AdamW, warm-up, cosine),
all from the same seed and the same meta-batches, then evaluated on fixed held-out sets:

* in-meta-distribution datasets (MI ~ U(0, 2)), MSE per true-MI stratum (<= 0.3, 0.3-1, > 1);
* independent pairs (MI = 0) at n = 200, d <= 4: the mean estimate;
* the external Gaussian-copula split (marginals no training family uses, MI ~ U(0, 0.6)): MSE
  beside KSG's on the same datasets, overall and at MI <= 0.3.

One training run per variant (one seed): the differences are indicative, not intervals over
seeds. Results are written as JSON and quoted in docs/papers/mist.md (section 5).

    nice -n 5 python benchmarks/mist_architecture_ablation.py --steps 1200 --out /tmp/mist_ablation.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from replicate.config import REPO_ROOT
from replicate.papers.mist.data import MetaBatchStream, check_prior
from replicate.papers.mist.model import MISTNet
from replicate.papers.mist.module import MISTModule
from replicate.papers.mist.analysis import predict as predict_batched
from replicate.papers.mist.baselines import ksg
from replicate.papers.mist.testsets import copula_sets, evaluation_sets, independence_sets

# The official architecture (standardised columns, dropout 0.1 / 0.3, no cross products); every
# variant is a change of it, whatever configs/training/mist/meta.yaml ships.
OFFICIAL = {"marginals": "standardise", "products": False, "row_dropout": 0.3, "embed_dropout": 0.1}
NO_DROPOUT = {"row_dropout": 0.0, "embed_dropout": 0.0}
VARIANTS = {
    "official (row SAB x2, dropout 0.3 / 0.1)": {},
    "no row SAB": {"row_layers": 0},
    "no dropout": NO_DROPOUT,
    "normal scores (copula transform)": {"marginals": "ranks"},
    "normal scores, no dropout": {"marginals": "ranks", **NO_DROPOUT},
    "normal scores, no dropout, lr 2e-3": {"marginals": "ranks", **NO_DROPOUT, "optim": {"lr": 2e-3}},
    "normal scores, no dropout, no row SAB": {"marginals": "ranks", **NO_DROPOUT, "row_layers": 0},
    "normal scores, cross products, no dropout": {"marginals": "ranks", "products": True, **NO_DROPOUT},
    "normal scores, cross products, no dropout, P(MI=0) 0.3": {
        "marginals": "ranks", "products": True, **NO_DROPOUT, "mi_prior": {"zero": 0.3, "low": 0.2}},
}


def load_default() -> tuple[dict, dict, dict]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO_ROOT / "configs" / "training" / "mist" / "meta.yaml")
    model = {k: v for k, v in OmegaConf.to_container(cfg.module.model).items() if k != "d_max"}
    data = cfg.data
    spec = {"families": tuple(data.train_families), "n_range": tuple(data.n_range), "d_range": tuple(data.d_range),
            "datasets": int(data.datasets_per_step), "mi_prior": check_prior(OmegaConf.to_container(data.mi_prior)),
            "equal_dims": float(data.equal_dims)}
    return model, spec, {"d_max": int(data.d_max), **OmegaConf.to_container(cfg.module.optim)}


@torch.no_grad()
def predict(net: MISTNet, sets) -> np.ndarray:
    net.eval()
    return predict_batched(net, sets)


def train(variant: dict, model: dict, spec: dict, optim: dict, steps: int, seed: int = 0) -> tuple[MISTNet, float]:
    torch.manual_seed(seed)
    d_max = optim.pop("d_max")
    variant = dict(variant)
    optim_override = variant.pop("optim", {})
    spec = {**spec, "mi_prior": check_prior({**spec["mi_prior"], **variant.pop("mi_prior", {})})}
    module = MISTModule("mse", seed=seed, max_steps=steps, model={**model, **OFFICIAL, **variant, "d_max": d_max},
                        optim={**optim, **optim_override, "warmup_steps": min(optim["warmup_steps"], steps // 10)})
    optim["d_max"] = d_max
    opt = module.configure_optimizers()
    opt, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    stream = MetaBatchStream(spec, seed, steps)
    net = module.net.train()
    t0 = time.process_time()
    for step in range(steps):
        batch = stream[step]
        loss = ((net(batch["x"], batch["y"]) - batch["mi"]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    return net, time.process_time() - t0


def copula_errors(est: np.ndarray, mi: np.ndarray, ksg_sq: np.ndarray) -> dict:
    sq, low = (est - mi) ** 2, mi <= 0.3
    return {"mse_copula": float(sq.mean()), "mse_copula_mi_low": float(sq[low].mean()),
            "ksg_over_mist_copula": float(ksg_sq.mean() / sq.mean()),
            "ksg_over_mist_copula_mi_low": float(ksg_sq[low].mean() / sq[low].mean())}


def tuning_sets() -> dict:
    """The datasets this ablation scores candidates on (the default, empty test-set salt: never
    a figure's held-out set; tests/test_mist.py checks that none is byte-identical to one)."""
    return {"in": evaluation_sets("in", [50, 100, 200], [1, 2, 4, 8], 1, unequal=[(2, 6)]),
            "independent": independence_sets([200], [1, 2, 3, 4], 1),
            "copula": copula_sets([50, 100, 200], [1, 2, 4], 2, mi_max=0.6, unequal=[(2, 4)])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--out", default="mist_ablation.json")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, spec, optim = load_default()
    sets = tuning_sets()
    held_in, indep, copula = sets["in"], sets["independent"], sets["copula"]
    mi = np.array([d.mi for d in held_in])
    strata = np.searchsorted([0.3, 1.0], mi, side="left")
    copula_mi = np.array([d.mi for d in copula])
    copula_low = copula_mi <= 0.3
    ksg_sq = (np.array([ksg(d.x, d.y) for d in copula]) - copula_mi) ** 2
    results = {"ksg": {"mse_copula": float(ksg_sq.mean()), "mse_copula_mi_low": float(ksg_sq[copula_low].mean()),
                       "copula_datasets": len(copula)}}
    print("ksg", json.dumps(results["ksg"]), flush=True)
    for name in args.variants:
        net, cpu = train(VARIANTS[name], model, spec, dict(optim), args.steps)
        est = predict(net, held_in)
        sq = (est - mi) ** 2
        results[name] = {"steps": args.steps, "cpu_seconds": cpu, "params": sum(p.numel() for p in net.parameters()),
                         "mse_all": float(sq.mean()),
                         **{f"mse_mi_{s}": float(sq[strata == k].mean()) for k, s in enumerate(("low", "mid", "high"))},
                         "independent_mean_n200_d4": float(predict(net, indep).mean()),
                         **copula_errors(predict(net, copula), copula_mi, ksg_sq),
                         "datasets": len(held_in), "independent_datasets": len(indep)}
        print(name, json.dumps(results[name]), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
