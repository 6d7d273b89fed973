"""LightningModule of the Hyper-Connections family (HC, mHC, mHC-lite, KromHC, sHC; model.py).

``HyperConnectionsLM(model: dict, connection: dict, optim: dict, probe: dict, attention_gate: str)``
takes plain dicts (Hydra ``instantiate`` with ``_convert_="all"``):

model       every ``LMConfig`` field of the shared LM (replicate/nn/transformer.py)
connection  every ``ConnectionConfig`` field: variant, streams, dynamic, sinkhorn_iters, scale_init
optim       lr, betas, eps, weight_decay, warmup_steps, max_steps, min_lr_ratio: AdamW, linear
            warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``. Weight decay on
            the Linear and Embedding weights of the LM (not on norms, nor on any connection
            parameter: the mappings' static parts are their biases)
probe       batches (validation batches the final probes read), sinkhorn_iters (the iteration
            counts of the Sinkhorn-Knopp sweep)
attention_gate  ``none``, or Gated Attention's ``headwise`` / ``elementwise`` gate in every
            attention layer (model.py; the cross-paper figure)

Loss: next-token cross-entropy over every position. Logs ``train_loss`` and ``val_loss``. At every
validation after the sanity check, the composite mapping of the first validation batch is
measured (``history``: its forward/backward Amax gain and its distance from I) and kept in the
checkpoint, so a resumed run keeps its history. ``probe_metrics`` returns the per-layer table of
probes.py, for ``mhc`` the Sinkhorn-Knopp sweep on the logits it projects, the parameter counts
and the history.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from replicate.nn.transformer import LMConfig
from replicate.papers.hyper_connections import probes
from replicate.papers.hyper_connections.model import (ConnectionConfig, HyperConnectedLM,
                                                      connection_parameters, recording)

OPTIM_DEFAULTS = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                  "warmup_steps": 0, "max_steps": 1000, "min_lr_ratio": 0.1}
PROBE_DEFAULTS = {"batches": 2, "sinkhorn_iters": [1, 2, 3, 5, 10, 20]}


def cosine_lr(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _merged(given: dict, defaults: dict, what: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"unknown {what} keys {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


class HyperConnectionsLM(L.LightningModule):
    def __init__(self, model: dict, connection: dict, optim: dict | None = None, probe: dict | None = None,
                 attention_gate: str = "none"):
        super().__init__()
        self.save_hyperparameters()
        self.lm_config = LMConfig.from_dict(dict(model))
        self.connection_config = ConnectionConfig.from_dict(dict(connection))
        self.model = HyperConnectedLM(self.lm_config, self.connection_config, attention_gate)
        self.optim = _merged(optim or {}, OPTIM_DEFAULTS, "optim")
        self.optim["betas"] = tuple(self.optim["betas"])
        self.probe = _merged(probe or {}, PROBE_DEFAULTS, "probe")
        self.history: list[dict] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def _loss(self, batch) -> torch.Tensor:
        logits = self.model(batch[0])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[1].flatten())

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0 and not self.trainer.sanity_checking:
            with recording(self.model) as conns:
                loss = self._loss(batch)
                final = probes.composite([c.last["res"] for c in conns])[-1]
            fwd, bwd = probes.amax_gain(final)
            self.history.append({"step": int(self.global_step), "gain_forward": fwd, "gain_backward": bwd,
                                 "identity_distance": probes.identity_distance(final)})
        else:
            loss = self._loss(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gain_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("gain_history", []))

    def configure_optimizers(self):
        o = self.optim
        conn = {id(p) for p in self.model.connections.parameters()}
        decay = {id(m.weight) for m in self.model.modules()
                 if isinstance(m, (nn.Linear, nn.Embedding)) and id(m.weight) not in conn}
        params = dict(self.model.named_parameters())  # de-duplicates tied weights
        groups = [{"params": [p for p in params.values() if id(p) in decay], "weight_decay": o["weight_decay"]},
                  {"params": [p for p in params.values() if id(p) not in decay], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=o["betas"], eps=o["eps"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_lr(s, o["warmup_steps"], o["max_steps"], o["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def probe_metrics(self, datamodule) -> dict:
        """Probes of the trained model on the first ``probe.batches`` validation batches (eval mode)."""
        datamodule.setup("validate")
        was_training = self.model.training
        self.model.eval()
        res: list[list[torch.Tensor]] = []
        logits: list[list[torch.Tensor]] = []
        with recording(self.model) as conns:
            for i, batch in enumerate(datamodule.val_dataloader()):
                if i >= self.probe["batches"]:
                    break
                self.model(batch[0].to(self.device))
                res.append([c.last["res"].flatten(0, -3).cpu() for c in conns])
                if self.connection_config.variant == "mhc":
                    logits.append([c.last["res_logits"].flatten(0, -2).cpu() for c in conns])
        self.model.train(was_training)
        per_layer = [torch.cat(layer) for layer in zip(*res)]
        out = {"variant": self.connection_config.variant, "streams": self.connection_config.streams,
               "layers": probes.layer_table(per_layer), "parameters": connection_parameters(self.model),
               "history": list(self.history)}
        if logits:
            n = self.connection_config.streams
            layer_logits = [torch.cat(layer).unflatten(-1, (n, n)) for layer in zip(*logits)]
            out["sinkhorn"] = probes.sinkhorn_sweep(layer_logits, list(self.probe["sinkhorn_iters"]))
        return out
