"""Step-time overhead of training a network through a hypernetwork vs training it directly.

Both loops train the *same* primary network on the same batches with the same optimiser
(the `convergence` figure's config at the chosen scale):

* primary alone  ``PrimaryModule``: the primary's parameters are trained directly (θ₀'s init);
* hypernetwork   ``HypernetMIP`` (variant from --variant): one γ per step, the hypernetwork
                 predicts every primary weight, functional forward, backward into ω.

Both use the same task loss (noise-conditioned: input noise of std noise_scale·γ), so the only
difference is the hypernetwork's forward, backward and its larger optimiser state. Steps are
timed in a bare loop (no Lightning), interleaved in rounds after warm-up; the report is the median
step time of each and their ratio.

    python benchmarks/hypernet_overhead.py [--scale default] [--steps 100] [--rounds 3] [--threads 1]
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
from replicate.data.digits import DigitsDataModule
from replicate.papers.hypernet_mip.model import PrimaryModule
from replicate.papers.hypernet_mip.module import HypernetMIP, band_sigma, step_generator


def setup(scale: str, variant: str):
    cfg = C.compose("hypernet_mip/convergence", "cpu", scale)
    run = C.run_config(cfg, 0).run
    module_kw = {k: v for k, v in OmegaConf.to_container(run.module, resolve=True).items() if k != "_target_"}
    module_kw.update(variant=variant, seeds=[0])  # one network: the overhead of one hypernetwork
    data_kw = {k: v for k, v in OmegaConf.to_container(run.data, resolve=True).items()
               if k not in ("_target_", "seeds")}
    torch.manual_seed(0)
    hyper = HypernetMIP(**module_kw)
    primary = PrimaryModule(hyper.spec, torch.Generator().manual_seed(0))
    o = hyper.config["optim"]
    make_opt = (lambda p: torch.optim.Adam(p, lr=o["lr"], betas=tuple(o["betas"]), fused=o["fused"])) \
        if o["name"] == "adam" else (lambda p: torch.optim.SGD(p, lr=o["lr"], momentum=o["momentum"], fused=o["fused"]))
    dm = DigitsDataModule(**data_kw)
    dm.setup()
    return hyper, primary, make_opt, dm


def timed_steps(step_fn, batches, n_warmup: int = 5) -> list[float]:
    times = []
    for i, (x, y) in enumerate(batches):
        t = time.perf_counter()
        step_fn(i, x, y)
        if i >= n_warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="default")
    ap.add_argument("--variant", default="mip")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hyper, primary, make_opt, dm = setup(args.scale, args.variant)
    opt_h, opt_p = make_opt(hyper.parameters()), make_opt(primary.parameters())
    noise_scale = hyper.config["task"]["noise_scale"]
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(args.steps + 5), loader)]

    def hyper_step(i, x, y):
        gamma, gen = hyper.train_gamma(i)
        loss, _ = hyper.task_loss(x, y, gamma, gen)
        opt_h.zero_grad(set_to_none=True)
        loss.backward()
        opt_h.step()

    def primary_step(i, x, y):  # same noise draw as the hypernetwork step, weights trained directly
        gen = step_generator(hyper.seed, i)
        gamma = torch.rand(hyper.input_dim, generator=gen)
        eps = torch.randn(x.shape, generator=gen)
        xn = x + band_sigma(gamma, x.shape[-2], noise_scale).view(1, 1, -1, 1) * eps
        loss = F.cross_entropy(primary(xn), y)
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()

    t_h, t_p = [], []
    for _ in range(args.rounds):
        t_p += timed_steps(primary_step, batches)
        t_h += timed_steps(hyper_step, batches)
    med_h, med_p = statistics.median(t_h), statistics.median(t_p)
    print(json.dumps({
        "scale": args.scale, "variant": args.variant, "threads": args.threads,
        "primary_params": hyper.spec.n_params,
        "hypernet_params": sum(p.numel() for p in hyper.parameters()),
        "optimizer": hyper.config["optim"]["name"], "fused": hyper.config["optim"]["fused"],
        "median_step_ms_primary": round(1e3 * med_p, 3), "median_step_ms_hypernet": round(1e3 * med_h, 3),
        "overhead_ratio": round(med_h / med_p, 2), "steps_timed_each": len(t_h),
    }, indent=1))


if __name__ == "__main__":
    main()
