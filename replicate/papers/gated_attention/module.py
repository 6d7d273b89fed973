"""LightningModule for the Gated Attention experiments (Qiu et al. 2025).

``GatedAttentionLM(model: dict, optim: dict)`` takes plain dicts (Hydra ``instantiate`` with
``_convert_="all"``):

model   every ``LMConfig`` field (vocab_size, n_layer, d_model, n_head, mlp, mlp_ratio, d_ff,
        max_len, norm, pos, rope_base, qk_norm, init, bias, tie_embeddings, dropout, norm_eps)
        plus ``gate`` ("none" | "headwise" | "elementwise" | "value" | "input_independent") and
        ``gate_init`` ("normal0.02" as the official code | "model").
optim   lr, betas, eps, weight_decay, warmup_steps, schedule ("constant" | "cosine"), max_steps,
        min_lr_ratio (cosine floor as a fraction of lr, default 0).

Loss: next-token cross-entropy over every position (BOS at position 0 predicts the first token).
Logs ``train_loss`` (every step, progress bar) and ``val_loss`` (epoch mean over the val set).
A non-finite loss is logged and returned like any other: the trainer's divergence callback
decides to stop; nothing here raises.

Optimiser: AdamW. Weight decay applies to the weight matrices of Linear and Embedding layers
(attention, MLP, gate projections — the official gate lives inside q_proj, which is decayed — token
and position embeddings, head), not to norm weights, biases or the free parameters of the
input-independent gate (common practice, as nanoGPT). Schedule: linear warmup from lr/warmup to
lr over ``warmup_steps``, then constant or cosine to ``min_lr_ratio * lr`` at ``max_steps``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from replicate.nn.transformer import LMConfig
from replicate.papers.gated_attention.model import build_gated_lm
from replicate.papers.gated_attention.probes import probe

OPTIM_DEFAULTS = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                  "warmup_steps": 0, "schedule": "constant", "max_steps": 1000, "min_lr_ratio": 0.0}


def lr_lambda(step: int, warmup_steps: int, schedule: str, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    params = dict(model.named_parameters())  # de-duplicates tied weights
    with_decay = [p for p in params.values() if id(p) in decay]
    without = [p for p in params.values() if id(p) not in decay]
    return [{"params": with_decay, "weight_decay": weight_decay},
            {"params": without, "weight_decay": 0.0}]


class GatedAttentionLM(L.LightningModule):
    def __init__(self, model: dict, optim: dict):
        super().__init__()
        self.save_hyperparameters()
        model = dict(model)
        self.gate = model.pop("gate", "none")
        self.gate_init = model.pop("gate_init", "normal0.02")
        self.lm_config = LMConfig.from_dict(model)
        self.model = build_gated_lm(self.lm_config, self.gate, self.gate_init)
        unknown = sorted(set(optim) - set(OPTIM_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown optim keys {unknown}; known: {sorted(OPTIM_DEFAULTS)}")
        self.optim = {**OPTIM_DEFAULTS, **optim}
        self.optim["betas"] = tuple(self.optim["betas"])
        if self.optim["schedule"] not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule={self.optim['schedule']!r}; expected constant or cosine")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def _loss(self, batch) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(param_groups(self.model, o["weight_decay"]), lr=o["lr"],
                                betas=o["betas"], eps=o["eps"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, o["warmup_steps"], o["schedule"], o["max_steps"], o["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def probe_metrics(self, datamodule, n_batches: int | None = None) -> dict:
        """Probes (probes.py) on the datamodule's fixed validation batches, eval mode, no grad.

        On Bigram-Backcopy (a datamodule with ``trigger_mask``) attention and gate statistics are
        also split by trigger / non-trigger query positions.
        """
        datamodule.setup("validate")
        batches = []
        for i, batch in enumerate(datamodule.val_dataloader()):
            if n_batches is not None and i >= n_batches:
                break
            batches.append((batch[0], batch[1]))
        out = probe(self.model, batches, getattr(datamodule, "trigger_mask", None))
        out["gate"] = self.gate
        return out
