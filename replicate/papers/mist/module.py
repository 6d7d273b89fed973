"""LightningModule for MIST meta-training (Gritsai et al. 2025, Sec. 4).

``MISTModule(objective, model, optim, quantile)`` takes plain dicts (Hydra ``instantiate`` with
``_convert_="all"``):

objective ``mse`` (MIST: squared error of the MI estimate; with ``mse_weight_offset`` c the squared
          errors are weighted by w = 1/(MI + c), normalised over the batch, Σ w e² / Σ w — ours,
          see ``weighted_mse``) | ``quantile`` (MIST-QR: pinball loss
          at ``quantile.levels_per_dataset`` levels τ ~ U(0, 1) per dataset, drawn from a generator
          seeded by (seed, step), as the paper's τ ~ U(0, 1)).
model     kwargs of :class:`MISTNet` (d_max, dim, heads, inducing, encoder_blocks, seeds,
          head_hidden, knots, row_layers, row_dropout, embed_dropout).
optim     AdamW (the paper's optimiser): lr, weight_decay, warmup_steps (linear warm-up), then
          cosine decay to ``min_lr_ratio`` · lr at ``max_steps`` (our choice for a fixed step
          budget on a stream without epochs; the official checkpoint uses ReduceLROnPlateau on
          the training loss with patience 3 epochs, from lr 1.13e-4).

Logged: ``train_loss``; ``val_loss`` (the objective on the fixed validation meta-batches: MSE, or
the pinball loss averaged over the fixed τ grid ``quantile.val_levels``) and ``val_mse`` (MSE of
the estimate, MIST-QR's median).
"""

from __future__ import annotations

import hashlib
import math

import lightning as L
import torch

from replicate.papers.mist.model import MISTNet, pinball_loss

DEFAULT_OPTIM = {"lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 100, "min_lr_ratio": 0.1}
DEFAULT_QUANTILE = {"levels_per_dataset": 8, "val_levels": [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]}


def step_generator(seed: int, step: int) -> torch.Generator:
    digest = hashlib.sha256(f"mist:tau:{int(seed)}:{int(step)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, offset: float | None) -> torch.Tensor:
    """Σ w (pred - target)² / Σ w with w = 1/(target + offset); plain MSE when ``offset`` is None.

    Plain MSE is dominated by the high-MI datasets (their errors are largest), so the low-MI
    offset an estimator carries costs it almost nothing; w puts 1/c on MI = 0 against
    1/(2 + c) at 2 nats. Its minimiser given a sample is E[w·MI]/E[w] ≤ the posterior mean
    E[MI] (a shrinkage of Var/(E[MI] + c) to first order): lower on independent data, slightly
    lower at high MI."""
    if offset is None:
        return ((pred - target) ** 2).mean()
    if offset <= 0:
        raise ValueError(f"mse_weight_offset must be > 0 (or null for plain MSE), got {offset}")
    w = 1.0 / (target + offset)
    return (w * (pred - target) ** 2).sum() / w.sum()


class MISTModule(L.LightningModule):
    def __init__(self, objective: str = "mse", seed: int = 0, max_steps: int = 1000,
                 model: dict | None = None, optim: dict | None = None, quantile: dict | None = None,
                 mse_weight_offset: float | None = None):
        super().__init__()
        weighted_mse(torch.zeros(1), torch.zeros(1), mse_weight_offset)  # a bad offset fails here
        self.mse_weight_offset = mse_weight_offset
        self.save_hyperparameters()
        self.net = MISTNet(objective=objective, **(model or {}))
        self.objective, self.seed, self.max_steps = objective, int(seed), int(max_steps)
        self.optim = {**DEFAULT_OPTIM, **(optim or {})}
        self.quantile = {**DEFAULT_QUANTILE, **(quantile or {})}

    def training_step(self, batch, batch_idx):
        mi = batch["mi"]
        if self.objective == "mse":
            loss = weighted_mse(self.net(batch["x"], batch["y"]), mi, self.mse_weight_offset)
        else:
            g = step_generator(self.seed, self.global_step)
            tau = torch.rand((len(mi), self.quantile["levels_per_dataset"]), generator=g).to(mi.device)
            loss = pinball_loss(self.net(batch["x"], batch["y"], tau=tau), mi.unsqueeze(1), tau)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(mi))
        return loss

    def validation_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective, MSE of the point estimate) on one meta-batch; MIST-QR's point estimate is
        its median and its objective the pinball loss averaged over ``quantile.val_levels``."""
        mi = batch["mi"]
        if self.objective == "mse":
            pred = self.net(batch["x"], batch["y"])
            return weighted_mse(pred, mi, self.mse_weight_offset), ((pred - mi) ** 2).mean()
        levels = torch.tensor([*self.quantile["val_levels"], 0.5], device=mi.device)
        q = self.net(batch["x"], batch["y"], tau=levels)
        pinball = pinball_loss(q[:, :-1], mi.unsqueeze(1), levels[:-1])
        return pinball, ((q[:, -1] - mi) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        loss, mse = self.validation_losses(batch)
        size = len(batch["mi"])
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("val_mse", mse, on_step=False, on_epoch=True, batch_size=size)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to min_lr_ratio at max_steps."""
        o = self.optim
        if step < o["warmup_steps"]:
            return (step + 1) / o["warmup_steps"]
        progress = min(1.0, (step - o["warmup_steps"]) / max(1, self.max_steps - o["warmup_steps"]))
        return o["min_lr_ratio"] + (1 - o["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.optim["lr"], weight_decay=self.optim["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
