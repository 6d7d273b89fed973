"""LightningModule for the Mixture-of-Recursions experiments (Bae et al. 2025).

``MoRLM(model: dict, optim: dict)`` takes plain dicts (Hydra ``instantiate`` with
``_convert_="all"``):

model   every ``LMConfig`` field of the shared LM plus the ``MoRConfig`` fields (variant, n_rec,
        alpha, kv_share, aux_coef, aux_mode, router_temp, cap_warmup_steps, balance_coef,
        z_coef, rand_router, ec_z_coef); see ``model.py``. The training step passes ``global_step`` to the model for
        the capacity warm-up.
optim   lr, betas, eps, weight_decay, warmup_steps, max_steps, min_lr_ratio: AdamW, linear
        warm-up then cosine decay to ``min_lr_ratio * lr`` at ``max_steps`` (every isoFLOP run
        completes its own schedule, as in the paper's isoFLOP protocol).

Loss: next-token cross-entropy over every position plus the router's auxiliary losses
(expert-choice BCE; token-choice balancing + z-loss). ``train_loss`` and ``val_loss`` log the
cross-entropy alone (validation uses the training rule, top-k). Weight decay applies to Linear
and Embedding weights (routers included), not to norms. ``probe_metrics`` (``probes.py``)
evaluates both routing rules on the validation set after training.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from replicate.papers.mixture_of_recursions.flops import train_flops_per_step
from replicate.papers.mixture_of_recursions.model import RecursiveLM, lm_config_for
from replicate.papers.mixture_of_recursions.probes import probe

OPTIM_DEFAULTS = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                  "warmup_steps": 0, "max_steps": 1000, "min_lr_ratio": 0.1}


def cosine_lr(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decayed_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    params = dict(model.named_parameters())
    return [{"params": [p for p in params.values() if id(p) in decay], "weight_decay": weight_decay},
            {"params": [p for p in params.values() if id(p) not in decay], "weight_decay": 0.0}]


class MoRLM(L.LightningModule):
    def __init__(self, model: dict, optim: dict):
        super().__init__()
        self.save_hyperparameters()
        self.lm_config, self.mor_config = lm_config_for(dict(model))
        self.model = RecursiveLM(self.lm_config, self.mor_config)
        unknown = sorted(set(optim) - set(OPTIM_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown optim keys {unknown}; known: {sorted(OPTIM_DEFAULTS)}")
        self.optim = {**OPTIM_DEFAULTS, **optim}
        self.optim["betas"] = tuple(self.optim["betas"])

    def forward(self, idx: torch.Tensor, rule: str = "topk") -> torch.Tensor:
        return self.model(idx, rule=rule)

    def _losses(self, batch, step: int | None = None):
        x, y = batch[0], batch[1]
        logits, routing = self.model(x, return_routing=True, step=step)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        aux, parts = self.model.router_loss(routing)
        return ce, aux, parts

    def training_step(self, batch, batch_idx):
        ce, aux, parts = self._losses(batch, step=self.global_step)
        self.log("train_loss", ce, on_step=True, on_epoch=False, prog_bar=True)
        for name, value in parts.items():
            self.log(name, value, on_step=True, on_epoch=False)
        return ce + aux

    def validation_step(self, batch, batch_idx):
        ce, _, _ = self._losses(batch)
        self.log("val_loss", ce, on_step=False, on_epoch=True, prog_bar=True)
        return ce

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(decayed_groups(self.model, o["weight_decay"]), lr=o["lr"],
                                betas=o["betas"], eps=o["eps"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_lr(s, o["warmup_steps"], o["max_steps"], o["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def probe_metrics(self, datamodule) -> dict:
        """Both routing rules on the validation set, plus the run's training FLOPs."""
        datamodule.setup("validate")
        batches = [(b[0].to(self.device), b[1].to(self.device)) for b in datamodule.val_dataloader()]
        self.model.eval()
        out = probe(self.model, batches)
        seq_len, batch_size = batches[0][0].shape[1], datamodule.batch_size
        per_step = train_flops_per_step(self.lm_config, self.mor_config, seq_len, batch_size)
        out.update(variant=self.mor_config.variant, n_rec=self.mor_config.n_rec,
                   kv_share=self.mor_config.kv_share, aux_mode=self.mor_config.aux_mode,
                   aux_coef=self.mor_config.aux_coef, rand_router=self.mor_config.rand_router,
                   flops_per_step=per_step,
                   train_flops=per_step * self.optim["max_steps"])
        return out
