"""How far a bit-level change in float reductions moves a Gated Attention run (issue 13 / 19).

    python benchmarks/gated_attention_determinism.py RUN_DIR [RUN_DIR ...]

For each finished run directory (its ``config.yaml``), train the same config again in a fresh
temporary directory: once exactly as configured (1 torch thread on CPU; must be bit-identical:
training is deterministic for a fixed config, seed and environment), once with 2 torch threads,
and once (plain loop over the same module and batches, ``perturbed``) with one weight of the
initial model moved by one float32 ulp: the size of rounding difference another BLAS build,
CPU kernel path or torch version introduces. (At this model size 2 threads do not change the
summation order, so the ulp perturbation is the informative one.) Prints, per run, the stored
final validation loss, the reruns', the plain loop's without and with the perturbation, and
the relative differences (the ulp one against the unperturbed plain loop). At a stable learning rate the 2-thread difference stays in the last digits;
at the learning rates where the baseline breaks, training is chaotic and the same rounding
difference grows to a different final loss: a rerun on another machine or torch build can differ
by tens of percent there while every stable point agrees.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from replicate import train


def rerun(cfg, threads: int) -> float:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.hardware.threads_per_job = threads
    with tempfile.TemporaryDirectory() as tmp:
        return float(train.fit(cfg, Path(tmp))["final_val_loss"])


def perturbed(cfg, ulp: bool = True) -> float:
    """Final validation loss of a plain training loop over the run's module and batches, with
    one initial weight moved by one ulp (float32) when ``ulp``."""
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    torch.manual_seed(cfg.run.seed)
    module = instantiate(cfg.run.module, _convert_="all")
    dm = instantiate(cfg.run.data, _convert_="all")
    dm.setup("fit")
    with torch.no_grad():
        w = module.model.blocks[0].attn.q_proj.weight
        if ulp:
            w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    opts = module.configure_optimizers()
    opt, sched = opts["optimizer"], opts["lr_scheduler"]["scheduler"]
    loader = DataLoader(dm.train_dataset(offset=0), batch_size=dm.batch_size, drop_last=True)
    for step, (x, y) in enumerate(loader, 1):
        loss = module._loss((x, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= cfg.run.trainer.max_steps:
            break
    module.eval()
    with torch.no_grad():
        losses = [float(module._loss(b)) for b in dm.val_dataloader()]
    return sum(losses) / len(losses)


def main(dirs: list[str]) -> None:
    out = []
    for d in dirs:
        cfg = OmegaConf.load(Path(d) / "config.yaml")
        stored = json.loads((Path(d) / "metrics.json").read_text())["final_val_loss"]
        one, two = rerun(cfg, 1), rerun(cfg, 2)
        plain, ulp = perturbed(cfg, ulp=False), perturbed(cfg)
        out.append({"run": Path(d).name, "gate": cfg.run.module.model.gate,
                    "lr": cfg.run.module.optim.lr, "seed": cfg.run.seed, "stored": stored,
                    "rerun_1_thread": one, "rerun_2_threads": two,
                    "identical_1_thread": one == stored,
                    "relative_change_2_threads": abs(two - stored) / abs(stored),
                    "plain_loop": plain, "one_ulp_perturbed": ulp,
                    "relative_change_one_ulp": abs(ulp - plain) / abs(plain)})
        print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
